"""The Video Swin model (torch): build from a config, load a checkpoint, average views.

Never imported by decode workers (it imports torch).
"""

from harness.model.build import build
from harness.model.checkpoint import load_checkpoint
from harness.model.swin3d import SwinTransformer3D, VideoSwin, shifted_window_attention_3d
from harness.scores import average_views

__all__ = ["build", "load_checkpoint", "average_views", "VideoSwin", "SwinTransformer3D",
           "shifted_window_attention_3d"]
