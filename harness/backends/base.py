"""What every backend shares: the ``Session`` interface, the ``ModelSpec`` an actor opens,
and runtime type names.

A :class:`Session` owns one loaded model on one device and runs one call at a time.
It reports the input it wants (name, shape, dtype) as read from the loaded model
itself, so a prebuilt .om with float32 input works as well as the harness's own
uint8 artifact: the caller (the inference actor) normalizes on the host when the
session wants float32. This module imports no backend; ``harness.backends.open_session``
picks one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from harness.config import Normalization
from harness.errors import ConfigError

BACKENDS = ("om", "onnxruntime", "torch")
DEVICE_KINDS = ("npu", "gpu", "cpu")
_MODEL_FILE_KEY = {"om": "om", "onnxruntime": "onnx"}   # backend -> manifest key of its file


@runtime_checkable
class Session(Protocol):
    """A loaded model on one device."""

    input_name: str
    input_shape: tuple[int, ...]     # [batch, views_per_call, 3, T, H, W]; dynamic dims < 0
    input_dtype: np.dtype
    output_name: str
    device: str                      # "npu:1", "cuda:0", "cpu"

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits ``[batch*views_per_call, num_classes]`` for input ``x``."""

    def close(self) -> None:
        """Release the model and the device."""

    # Optional, where a runtime has them (harness.backends.om_backend):
    #   physical_id: str           the chip the session opened, for reports
    #   simulated: bool            the runtime is a test double (tests/doubles): not a real chip
    #   execute_ms() -> list[float]   the runtime's own execute time of each call since the
    #                              last ask (aclruntime's sumary().exec_time_list)


@dataclass(frozen=True)
class ModelSpec:
    """Everything an inference actor needs to open its session: plain, picklable data.

    Made by :meth:`from_artifact` (a harness build), :meth:`from_model_file` (an .om or
    .onnx given by the user) or :meth:`from_checkpoint` (the torch backend). ``path`` is the
    .om / .onnx file; the torch backend builds ``model_cfg`` and loads ``checkpoint`` instead.
    """

    backend: str
    path: str | None
    views_per_video: int
    average_clips: str | None
    norm: Normalization
    num_classes: int
    identity: str                    # artifact or file hash (reports, resume)
    manifest_path: str | None = None
    model_cfg: dict | None = None    # torch: the config's model section
    view_shape: tuple[int, int, int, int] | None = None   # torch: (3, T, H, W)
    checkpoint: str | None = None
    unsafe_load_checkpoint: bool = False
    # torch backend only (harness.torch in the config; TorchSession): arithmetic, compilation,
    # uint8 views normalized on the device, videos per call
    precision: str = "fp32"
    torch_compile: bool = False
    uint8_input: bool = False
    batch: int = 1
    # Set by the Ray runner for clusters of several nodes: the model file's bytes in the object
    # store, for nodes that cannot see ``model_file`` (harness.stages.local_model_file).
    file_sha256: str | None = None
    file_blob: Any = field(default=None, compare=False, repr=False)

    @property
    def model_file(self) -> str | None:
        """The file an actor reads: the .om / .onnx, or the torch backend's checkpoint."""
        return self.checkpoint if self.backend == "torch" else self.path

    def with_model_file(self, path: str) -> "ModelSpec":
        """The same spec reading ``path`` (a node-local copy of :attr:`model_file`)."""
        if self.backend == "torch":
            return dataclasses.replace(self, checkpoint=path, file_blob=None)
        return dataclasses.replace(self, path=path, file_blob=None)

    @classmethod
    def from_artifact(cls, directory: str | Path, backend: str, fp32: bool = False) -> "ModelSpec":
        """The model file of ``backend`` in a harness build directory, described by its manifest:
        for onnxruntime the float16 ONNX when the build made one, unless ``fp32`` (the audit's
        reference)."""
        from harness.build import load_manifest

        directory = Path(directory).resolve()
        manifest = load_manifest(directory)
        key, precision = _model_file_key(backend), "fp32"
        if key == "onnx" and manifest.get("onnx_fp16") and not fp32:
            key, precision = "onnx_fp16", "fp16"
        if not manifest.get(key):
            fix = (" (ATC was not found when it was built: source CANN's set_env.sh and build"
                   " again)" if key == "om" else "")
            raise ConfigError(f"the artifact in {directory} has no .{key} file{fix}")
        norm = manifest["normalization"]
        return cls(backend=backend, path=str(directory / manifest[key]),
                   views_per_video=int(manifest["views_per_video"]),
                   average_clips=manifest["average_clips"],
                   norm=Normalization(tuple(norm["mean"]), tuple(norm["std"]), bool(norm["to_bgr"])),
                   num_classes=int(manifest["num_classes"]), identity=str(manifest["hash"]),
                   manifest_path=str(directory / "manifest.json"), precision=precision)

    @classmethod
    def from_model_file(cls, path: str | Path, backend: str, cfg) -> "ModelSpec":
        """A user's .om / .onnx: its build manifest when it sits in a harness artifact
        directory, else the config says how to normalize and group views."""
        from harness import config
        from harness.build import sha256_file

        path = Path(path).resolve()
        if not path.is_file():
            raise ConfigError(f"model file not found: {path}")
        manifest = path.parent / "manifest.json"
        if manifest.is_file():
            try:
                files = json.loads(manifest.read_text())
            except (OSError, ValueError):
                files = {}
            if files.get(_model_file_key(backend)) == path.name:   # the build's own file, as given
                return cls.from_artifact(path.parent, backend, fp32=True)
            if backend == "onnxruntime" and files.get("onnx_fp16") == path.name:
                return cls.from_artifact(path.parent, backend)
        return cls(backend=backend, path=str(path), identity=sha256_file(path),
                   **_from_config(cfg, config))

    @classmethod
    def from_checkpoint(cls, cfg, checkpoint: str | Path, unsafe: bool = False, *,
                        precision: str = "fp32", compile: bool = False, uint8_input: bool = False,
                        batch: int = 1) -> "ModelSpec":
        """The torch backend: the config's model with the checkpoint's weights, run in
        ``precision`` (fp32, tf32, fp16, bf16), optionally compiled, ``batch`` videos per call."""
        from harness import config
        from harness.build import sha256_file

        checkpoint = Path(checkpoint).resolve()
        if not checkpoint.is_file():
            raise ConfigError(f"checkpoint file not found: {checkpoint}")
        fields = _from_config(cfg, config)
        model_cfg = config.model_section(cfg)
        view_shape = config.clip_geometry(cfg).view_shape()
        content = {"checkpoint": sha256_file(checkpoint), "model": model_cfg,
                   "view_shape": view_shape, "views": fields["views_per_video"],
                   "precision": precision, "compile": bool(compile)}
        key = json.dumps(content, sort_keys=True, default=str)
        return cls(backend="torch", path=None, identity=hashlib.sha256(key.encode()).hexdigest(),
                   model_cfg=model_cfg, view_shape=view_shape, checkpoint=str(checkpoint),
                   unsafe_load_checkpoint=unsafe, precision=precision, torch_compile=bool(compile),
                   uint8_input=bool(uint8_input), batch=int(batch), **fields)


def _model_file_key(backend: str) -> str:
    if backend not in _MODEL_FILE_KEY:
        raise ConfigError(f"the {backend} backend takes no model file")
    return _MODEL_FILE_KEY[backend]


def _from_config(cfg, config) -> dict:
    """The spec fields a config determines (for models without a manifest)."""
    return dict(views_per_video=config.clip_geometry(cfg).views,
                average_clips=config.average_clips(cfg), norm=config.normalization(cfg),
                num_classes=int(config.model_section(cfg)["cls_head"]["num_classes"]))


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
