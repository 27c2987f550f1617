"""One small session interface over the inference runtimes (om, onnxruntime, torch).

A :class:`Session` owns one loaded model on one device and runs one call at a time.
It reports the input it wants (name, shape, dtype) as read from the loaded model
itself, so a prebuilt .om with float32 input works as well as the harness's own
uint8 artifact: the caller (the inference actor) normalizes on the host when the
session wants float32. Runtimes are imported lazily, inside ``open_session``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from harness.errors import ConfigError

BACKENDS = ("om", "onnxruntime", "torch")
DEVICE_KINDS = ("npu", "gpu", "cpu")


@runtime_checkable
class Session(Protocol):
    """A loaded model on one device."""

    input_name: str
    input_shape: tuple[int, ...]     # [batch, views_per_call, 3, T, H, W]; dynamic dims < 0
    input_dtype: np.dtype
    output_name: str
    device: str                      # "npu:1", "cuda:0", "cpu"

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[batch*views_per_call, num_classes]`` for input ``x`` (float32)."""

    def close(self) -> None:
        """Release the model and the device."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything an inference actor needs to open its session: plain, picklable data.

    ``path`` is the model file for the backend (.om or .onnx); the torch backend
    builds the model from ``config_path`` and loads ``checkpoint`` instead.
    """

    backend: str
    path: str | None
    views_per_video: int
    average_clips: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    to_bgr: bool = False
    num_classes: int | None = None
    config_path: str | None = None
    checkpoint: str | None = None
    unsafe_load_checkpoint: bool = False
    identity: str = ""               # artifact or file hash (reports, resume)
    manifest_path: str | None = None
    extra: dict = field(default_factory=dict)


def open_session(backend: str, artifact_or_model_path, device_kind: str, device_index: int,
                 threads: int = 1) -> Session:
    """Open a session of ``backend`` on device ``device_kind:device_index``.

    ``artifact_or_model_path`` is a :class:`ModelSpec`, a harness.build ``Artifact``
    (anything with ``onnx_path``/``om_path``), an artifact directory holding
    manifest.json, or a model file (.onnx, .om). ``device_index`` is the ordinal the
    process sees (0 inside a Ray actor that holds one chip). ``threads`` bounds the
    runtime's CPU thread pool (the actor's CPU share).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if device_kind not in DEVICE_KINDS:
        raise ConfigError(f"unknown device kind {device_kind!r}; use one of {', '.join(DEVICE_KINDS)}")
    threads = max(1, int(threads))
    if backend == "om":
        from harness.backends.om_backend import OmSession
        return OmSession(_model_file(artifact_or_model_path, "om"), device_index)
    if backend == "onnxruntime":
        from harness.backends.onnxruntime_backend import OrtSession
        return OrtSession(_model_file(artifact_or_model_path, "onnx"), device_kind, device_index,
                          threads)
    from harness.backends.torch_backend import TorchSession
    return TorchSession(artifact_or_model_path, device_kind, device_index, threads)


def _model_file(source, kind: str) -> str:
    """The .om / .onnx file behind ``source`` (spec, Artifact, artifact dir or file)."""
    if isinstance(source, ModelSpec):
        if not source.path:
            raise ConfigError(f"no {kind} model file given for backend {source.backend!r}")
        return source.path
    attr = getattr(source, f"{kind}_path", None)
    if attr is not None or hasattr(source, "directory"):
        if attr is None:
            raise ConfigError(f"the artifact in {source.directory} has no .{kind} file"
                              + (" (ATC was not found when it was built; source CANN's set_env.sh"
                                 " and rebuild)" if kind == "om" else ""))
        return str(attr)
    path = Path(source)
    if path.is_dir():
        import json
        manifest = json.loads((path / "manifest.json").read_text())
        name = manifest.get(kind)
        if not name:
            raise ConfigError(f"the artifact in {path} has no .{kind} file")
        return str(path / name)
    if not path.exists():
        raise ConfigError(f"model file not found: {path}")
    return str(path)


def dtype_of(name) -> np.dtype:
    """A numpy dtype from a runtime's type name ('tensor(float)', 'dtype.float32', 'uint8', 0)."""
    if isinstance(name, (int, np.integer)):  # ACL data type codes
        codes = {0: "float32", 1: "float16", 2: "int8", 3: "int32", 4: "uint8", 9: "int64"}
        return np.dtype(codes[int(name)])
    text = str(getattr(name, "name", name)).lower()
    text = text.replace("tensor(", "").replace(")", "").split(".")[-1]
    aliases = {"float": "float32", "double": "float64", "half": "float16",
               "acl_float": "float32", "acl_uint8": "uint8", "acl_float16": "float16"}
    return np.dtype(aliases.get(text, text))
