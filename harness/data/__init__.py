"""Kinetics-400 lists, the reference test-time pipeline, and synthetic videos.

Imports neither torch nor mmengine: decode workers use this package on its own.
"""

from harness.data.decode import DecodeError, ViewDecoder, decode_views
from harness.data.filelist import ListError, VideoEntry, load_label_map, read_list

__all__ = ["VideoEntry", "read_list", "load_label_map", "ListError", "DecodeError",
           "ViewDecoder", "decode_views"]
