"""Inference sessions: one interface (``Session``) over aclruntime, onnxruntime and torch."""

from harness.backends.base import BACKENDS, ModelSpec, Session, dtype_of, open_session

__all__ = ["BACKENDS", "ModelSpec", "Session", "dtype_of", "open_session"]
