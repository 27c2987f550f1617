"""Spatial transforms on uint8 frames, bit-exact with mmaction2/mmcv's test transforms.

Frames are RGB uint8 ``(N, H, W, 3)``. The arithmetic follows mmcv (rescale_size,
imresize with cv2.INTER_LINEAR) and mmaction (CenterCrop, ThreeCrop offsets and order),
but works once per *unique* decoded frame and writes the channel-first views with a few
array-wide copies instead of per-frame Python lists.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def rescale_size(width: int, height: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size within ``scale`` (a -1 side is unbounded).

    Returns ``(new_w, new_h)`` = ``int(side * factor + 0.5)``.
    """
    a, b = float(scale[0]), float(scale[1])
    if min(a, b) == -1:  # mmaction turns (-1, S) into (inf, S)
        a, b = math.inf, max(a, b)
    long_edge, short_edge = max(a, b), min(a, b)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(width * float(factor) + 0.5), int(height * float(factor) + 0.5)


def resize_frames(frames: np.ndarray, size: tuple[int, int], out: np.ndarray | None = None) -> np.ndarray:
    """Bilinear (cv2.INTER_LINEAR) resize of every frame to ``size=(w, h)``, uint8,
    into ``out`` when given."""
    w, h = size
    n = frames.shape[0]
    if frames.shape[1:3] == (h, w):  # cv2.resize to the same size is an exact copy
        if out is None:
            return frames
        out[...] = frames
        return out
    if out is None:
        out = np.empty((n, h, w, frames.shape[3]), dtype=np.uint8)
    for i in range(n):  # cv2 has no batched resize; dst= avoids an allocation per frame
        cv2.resize(frames[i], (w, h), dst=out[i], interpolation=cv2.INTER_LINEAR)
    return out


def three_crop_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
    """mmaction ThreeCrop offsets ``(x, y)`` in its order: left, right, middle (or top,
    bottom, middle when the width is the one that matches the crop)."""
    if crop_h == height:
        step = (width - crop_w) // 2
        return [(0, 0), (2 * step, 0), (step, 0)]
    if crop_w == width:
        step = (height - crop_h) // 2
        return [(0, 0), (0, 2 * step), (0, step)]
    raise ValueError(f"ThreeCrop({crop_w}x{crop_h}) needs one side of the resized frame"
                     f" ({width}x{height}) to equal the crop; resize the short side to the crop size")


def center_crop_offset(width: int, height: int, crop_w: int, crop_h: int) -> tuple[int, int]:
    """mmaction CenterCrop offset ``(x, y)``."""
    if crop_w > width or crop_h > height:
        raise ValueError(f"CenterCrop({crop_w}x{crop_h}) is larger than the resized frame"
                         f" ({width}x{height})")
    return (width - crop_w) // 2, (height - crop_h) // 2


def to_channel_first(frames: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(N, H, W, C)`` -> contiguous ``(C, N, H, W)`` (one blocked cv2 transpose),
    into ``out`` when given."""
    n, h, w, c = frames.shape
    if out is None:
        out = np.empty((c, n, h, w), dtype=frames.dtype)
    if n * h * w < 2**31:
        cv2.transpose(np.ascontiguousarray(frames).reshape(-1, c), dst=out.reshape(c, -1))
    else:
        out[...] = frames.transpose(3, 0, 1, 2)
    return out


def format_views(planes: np.ndarray, clip_rows: np.ndarray, offsets: list[tuple[int, int]],
                 crop_w: int, crop_h: int, out: np.ndarray | None = None) -> np.ndarray:
    """Assemble NCTHW views, crop-major (view = crop * num_clips + clip).

    ``planes``: ``(3, U, H, W)`` unique resized frames; ``clip_rows``: ``(num_clips, T)``
    rows of ``planes`` per sampled frame. Returns uint8 ``(crops*clips, 3, T, crop_h, crop_w)``.
    """
    num_clips, clip_len = clip_rows.shape
    shape = (len(offsets) * num_clips, planes.shape[0], clip_len, crop_h, crop_w)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    rows = [_as_index(r) for r in clip_rows]
    for c, (x, y) in enumerate(offsets):
        window = planes[:, :, y:y + crop_h, x:x + crop_w]
        for k in range(num_clips):
            out[c * num_clips + k] = window[:, rows[k]]
    return out


def _as_index(rows: np.ndarray) -> slice | np.ndarray:
    """A slice when ``rows`` are consecutive (the usual clip: each sampled frame once):
    basic indexing copies straight into the output, fancy indexing goes through a temporary."""
    if len(rows) and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        return slice(int(rows[0]), int(rows[0]) + len(rows))
    return rows
