"""Ray-distributed evaluation harness for Video Swin Transformer on Kinetics-400."""

from harness.errors import HarnessError

__all__ = ["HarnessError"]
__version__ = "0.1.0"
