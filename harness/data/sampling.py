"""Test-time frame sampling (SampleFrames, test_mode=True, out_of_bound_opt='loop').

Two formulas (reference/protocol.md, "Sampling"):

- ``reference``: mmaction2 0.x, which produced the published 80.6 top-1. Clips sit at the
  centres of ``num_clips`` equal segments of the ``num_frames - L + 1`` valid starts.
- ``mmaction2-1.x``: mmaction2 1.2.0, clips spread evenly from the first to the last
  valid start. An explicit option for parity with 1.2.0, never the default.
"""

from __future__ import annotations

import numpy as np

SAMPLINGS = ("reference", "mmaction2-1.x")


def clip_offsets(num_frames: int, clip_len: int, frame_interval: int, num_clips: int,
                 sampling: str = "reference") -> np.ndarray:
    """First frame index of each clip, int64 ``(num_clips,)``."""
    span = clip_len * frame_interval
    if sampling == "reference":
        avg = (num_frames - span + 1) / float(num_clips)
        if num_frames > span - 1:
            return (np.arange(num_clips) * avg + avg / 2.0).astype(np.int64)  # truncates
        return np.zeros(num_clips, dtype=np.int64)
    if sampling == "mmaction2-1.x":
        # 1.2.0 measures the test span as (clip_len - 1) * frame_interval + 1.
        max_offset = max(num_frames - ((clip_len - 1) * frame_interval + 1), 0)
        if num_clips > 1:
            return np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1))).astype(np.int64)
        return np.array([max_offset // 2], dtype=np.int64)
    raise ValueError(f"unknown sampling {sampling!r}; use one of {SAMPLINGS}")


def frame_indices(num_frames: int, clip_len: int, frame_interval: int, num_clips: int,
                  sampling: str = "reference") -> np.ndarray:
    """Frame indices, int64 ``(num_clips * clip_len,)`` clip after clip, looped modulo
    ``num_frames`` (start_index 0)."""
    if num_frames < 1:
        raise ValueError("a video needs at least one frame")
    offsets = clip_offsets(num_frames, clip_len, frame_interval, num_clips, sampling)
    inds = offsets[:, None] + np.arange(clip_len)[None, :] * frame_interval
    return np.mod(inds, num_frames).reshape(-1)
