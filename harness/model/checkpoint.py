"""Load an original Video Swin checkpoint (``{'state_dict': {'backbone.…', 'cls_head.…'}}``).

A .pth is a pickle: it is read with ``weights_only=True`` unless the caller opts in to full
unpickling for a file they trust. Besides tensors and plain containers, the weights-only reader
accepts NumPy scalars and dtypes (mmcv-era training hooks store best scores as
``numpy.float64`` in ``meta``): rebuilding those runs no code. Keys and shapes must match exactly; the derived
``relative_position_index`` buffers may be present or absent.
"""

from __future__ import annotations

import contextlib
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from harness.errors import CheckpointError

_DERIVED_SUFFIX = ".relative_position_index"
_LIST_AT_MOST = 20


def _listing(title: str, items: list[str]) -> str:
    shown = items[:_LIST_AT_MOST]
    more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
    return f"  {title} ({len(items)}):\n" + "\n".join(f"    {k}" for k in shown) + more


def _numpy_safe_globals() -> list:
    """NumPy's scalar constructor and dtypes, under the names pickles made by NumPy 1.x
    (``numpy.core``) and 2.x (``numpy._core``) use. Arrays are not included."""
    import numpy as np

    scalar = np.array(0.0)[()].__reduce__()[0]          # numpy.(_)core.multiarray.scalar
    allowed: list = [np.dtype, (scalar, "numpy.core.multiarray.scalar"),
                     (scalar, "numpy._core.multiarray.scalar")]
    dtypes = getattr(np, "dtypes", None)                 # NumPy >= 1.25 pickles dtype classes
    if dtypes is not None:
        allowed += [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")]
    return allowed


def _numpy_scalars_allowed():
    """A context in which weights-only loading accepts NumPy scalars and dtypes
    (torch >= 2.5; older torch keeps its own allowlist)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_numpy_safe_globals()) if safe_globals else contextlib.nullcontext()


def read_state_dict(path: str | Path, unsafe: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict: 'state_dict' entry or the bare dict, 'module.' stripped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with _numpy_scalars_allowed():
            obj = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as exc:
        if unsafe:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        opt_in = ("Unpickling can run arbitrary code: only for a file you trust, load it with"
                  " unsafe=True (command line: --unsafe-load-checkpoint).")
        if found:
            raise CheckpointError(
                f"checkpoint {path} needs full unpickling: it holds an object of type {found.group(1)},"
                f" not only tensors and plain containers. {opt_in}") from exc
        detail = str(exc).split("WeightsUnpickler error:")[-1].split("Check the documentation")[0].strip()
        raise CheckpointError(
            f"cannot read checkpoint {path} as weights only ({detail}): the file is damaged, not a"
            f" torch checkpoint, or needs full unpickling. {opt_in}") from exc
    except Exception as exc:  # corrupt or not a torch file
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors"
                              " (expected a dict with 'state_dict', or a bare state dict)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_checkpoint(model: nn.Module, path: str | Path, unsafe: bool = False) -> None:
    """Load ``path`` into ``model`` with strict key and shape matching; raises CheckpointError."""
    state = {k: v for k, v in read_state_dict(path, unsafe).items() if not k.endswith(_DERIVED_SUFFIX)}
    expected = {k: v.shape for k, v in model.state_dict().items() if not k.endswith(_DERIVED_SUFFIX)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k])}"
        for k in set(state) & set(expected) if state[k].shape != expected[k]
    )
    if missing or unexpected or misshaped:
        parts = [_listing(title, items) for title, items in
                 (("missing keys", missing), ("unexpected keys", unexpected),
                  ("keys with the wrong shape", misshaped)) if items]
        if "backbone.norm3.weight" in unexpected and "backbone.norm.weight" in missing:
            parts.append("  (backbone.norm3 is mmaction2 1.x's name for the final norm: this looks like"
                         " a 1.x checkpoint; the harness loads the original layout)")
        raise CheckpointError(
            f"checkpoint {path} does not match the model built from the config"
            " (check that the config is the one the checkpoint was trained with):\n" + "\n".join(parts))
    model.load_state_dict(state, strict=True)
