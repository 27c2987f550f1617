"""From per-view logits to per-video scores, and the reference metrics.

Plain NumPy (no torch): inference actors on NPU hosts and the driver use it.
Definitions follow mmaction2 0.x (reference/protocol.md, "Metrics" and test_cfg).
"""

from __future__ import annotations

import numpy as np


def average_views(logits: np.ndarray, views: int, mode: str | None = "prob") -> np.ndarray:
    """Average per-view logits ``[B*V, C]`` into per-video scores ``[B, C]`` (float32).

    ``mode`` is ``test_cfg.average_clips``: 'prob' takes a softmax over classes per
    view, then the mean over views (the reference); 'score' and None take the mean of
    the raw logits (None leaves scores unnormalized, as mmaction2 does, and per-video
    ranking needs one row per video).
    """
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim != 2 or logits.shape[0] % views:
        raise ValueError(f"expected logits [B*{views}, C], got shape {logits.shape}")
    per_video = logits.reshape(-1, views, logits.shape[1])
    if mode == "prob":
        shifted = per_video - per_video.max(axis=2, keepdims=True)
        exp = np.exp(shifted)
        per_video = exp / exp.sum(axis=2, keepdims=True)
    elif mode not in ("score", None):
        raise ValueError(f"average_clips must be 'prob', 'score' or None, not {mode!r}")
    return per_video.mean(axis=1, dtype=np.float64).astype(np.float32)


def top_k(scores: np.ndarray, k: int = 5) -> np.ndarray:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[-1])
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of videos whose label is among their ``k`` highest scores."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    hits = (top_k(scores, k) == labels[:, None]).any(axis=1)
    return float(hits.mean())


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean over the classes present in ``labels`` of each class's top-1 accuracy."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    predicted = np.asarray(scores).argmax(axis=1)
    per_class = [float((predicted[labels == c] == c).mean()) for c in np.unique(labels)]
    return float(np.mean(per_class))
