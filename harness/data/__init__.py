"""Kinetics-400 lists, the reference test-time pipeline, and synthetic videos.

Imports neither torch nor mmengine: decode workers use this package on its own. The names
below load on first use (PEP 562), so importing the package runs none of its modules: that
keeps ``python -m harness.data.filelist`` free of runpy's "found in sys.modules" warning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"VideoEntry": "filelist", "read_list": "filelist", "load_label_map": "filelist",
            "ListError": "filelist", "DecodeError": "decode", "ViewDecoder": "decode",
            "decode_views": "decode"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:   # submodules (``from harness.data import storage``) load as usual
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
