"""Inference sessions: one interface (``Session``) over aclruntime, onnxruntime and torch.

``open_session(spec, ...)`` opens the backend a :class:`ModelSpec` names; each runtime is
imported only there, so a process loads only the one it uses.
"""

from __future__ import annotations

from harness.backends.base import BACKENDS, DEVICE_KINDS, ModelSpec, Session, dtype_of
from harness.errors import ConfigError

__all__ = ["BACKENDS", "ModelSpec", "Session", "dtype_of", "open_session"]


def open_session(spec: ModelSpec, device_kind: str, device_index: int, threads: int = 1,
                 assigned: str | None = None) -> Session:
    """Open ``spec``'s model with its backend on device ``device_kind:device_index``.

    ``device_index`` is the ordinal the process sees (0 inside a Ray actor that holds one
    chip); ``assigned`` the physical id Ray gave the actor (an NPU session checks whether the
    runtime maps it to that ordinal). ``threads`` bounds the runtime's CPU thread pool.
    """
    if spec.backend not in BACKENDS:
        raise ConfigError(f"unknown backend {spec.backend!r}; use one of {', '.join(BACKENDS)}")
    if device_kind not in DEVICE_KINDS:
        raise ConfigError(f"unknown device kind {device_kind!r}; use one of {', '.join(DEVICE_KINDS)}")
    threads = max(1, int(threads))
    if spec.backend == "om":
        from harness.backends.om_backend import OmSession
        return OmSession(spec.path, device_index, assigned)
    if spec.backend == "onnxruntime":
        from harness.backends.onnxruntime_backend import OrtSession
        return OrtSession(spec.path, device_kind, device_index, threads)
    from harness.backends.torch_backend import TorchSession
    return TorchSession(spec, device_kind, device_index, threads, precision=spec.precision,
                        compile=spec.torch_compile, uint8_input=spec.uint8_input, batch=spec.batch)
