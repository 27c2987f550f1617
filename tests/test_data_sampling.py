"""Frame sampling: the reference (mmaction2 0.x) formula and the mmaction2 1.x option."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data import ViewDecoder
from harness.data.sampling import clip_offsets, frame_indices
from mmaction_ref import require_mmaction


def protocol_indices(num_frames, clip_len, frame_interval, num_clips):
    """Written from reference/protocol.md's text, independently of harness.data.sampling."""
    span = clip_len * frame_interval
    avg = (num_frames - span + 1) / num_clips
    if num_frames > span - 1:
        offsets = [int(k * avg + avg / 2) for k in range(num_clips)]
    else:
        offsets = [0] * num_clips
    return [(o + j * frame_interval) % num_frames for o in offsets for j in range(clip_len)]


def test_worked_example_300_frames():
    assert clip_offsets(300, 32, 2, 4).tolist() == [29, 88, 148, 207]
    inds = frame_indices(300, 32, 2, 4)
    assert inds.shape == (128,)
    assert inds[:3].tolist() == [29, 31, 33] and inds[-1] == 207 + 62


def test_reference_is_the_default_of_the_decoder():
    steps = [dict(type="DecordInit"),
             dict(type="SampleFrames", clip_len=32, frame_interval=2, num_clips=4, test_mode=True),
             dict(type="DecordDecode"), dict(type="FormatShape", input_format="NCTHW")]
    assert ViewDecoder(steps).frame_indices(300).reshape(4, 32)[:, 0].tolist() == [29, 88, 148, 207]
    assert ViewDecoder(steps, sampling="mmaction2-1.x").frame_indices(300)[0] == 0


def test_short_video_loops_from_zero():
    # 10 frames < span 64: every clip starts at 0 and wraps modulo 10
    inds = frame_indices(10, 32, 2, 4).reshape(4, 32)
    assert (inds == inds[0]).all()
    assert inds[0, :6].tolist() == [0, 2, 4, 6, 8, 0]
    assert frame_indices(1, 32, 2, 4).tolist() == [0] * 128


@settings(max_examples=300, deadline=None)
@given(num_frames=st.integers(1, 3000), clip_len=st.integers(1, 40), frame_interval=st.integers(1, 5),
       num_clips=st.integers(1, 12))
def test_reference_matches_protocol_text(num_frames, clip_len, frame_interval, num_clips):
    ours = frame_indices(num_frames, clip_len, frame_interval, num_clips)
    assert ours.tolist() == protocol_indices(num_frames, clip_len, frame_interval, num_clips)
    assert ours.min() >= 0 and ours.max() < num_frames


@settings(max_examples=200, deadline=None)
@given(num_frames=st.integers(1, 3000), clip_len=st.integers(2, 40), frame_interval=st.integers(1, 5),
       num_clips=st.integers(1, 12))
def test_mmaction1x_option_matches_mmaction2_1_2_0(num_frames, clip_len, frame_interval, num_clips):
    require_mmaction()
    from mmaction.datasets.transforms import SampleFrames

    ref = SampleFrames(clip_len=clip_len, frame_interval=frame_interval, num_clips=num_clips,
                       test_mode=True).transform(dict(total_frames=num_frames, start_index=0))
    ours = frame_indices(num_frames, clip_len, frame_interval, num_clips, sampling="mmaction2-1.x")
    assert ours.tolist() == ref["frame_inds"].tolist()


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="unknown sampling"):
        frame_indices(100, 8, 2, 2, sampling="uniform")
