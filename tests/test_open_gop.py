"""Open-GOP H.264 (x264 open-gop=1): the reference's seek vs the harness's in-order decode.

decord numbers keyframes by file position; after an open-GOP keyframe the file holds frames
shown before it, so decord's frame-accurate seek onto it returns other frames (measured with
decord2 3.4.0: each frame after the seek is a later one, shifted by the keyframe's
leading frames, until the next keyframe). The harness decodes in order by default (the
right frames) and reproduces the reference with ``seek='reference'``.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from harness.data import ViewDecoder
from harness.data import frames as frames_mod
from harness.data.synthetic import class_specs, render_frames, write_video
from harness.errors import ConfigError
from mmaction_ref import require_mmaction
from test_data_parity import pipeline, reference_views

W, H, N = 160, 120, 64
SCALE, CROP = (-1, 96), ("ThreeCrop", 96)
# 8x3x3 over 64 frames: clips cross keyframes decord seeks to (10 of the 24 sampled frames
# come back wrong from the reference), and clips overlap, so fetching the unique indices in
# ascending order gives other frames (5) than the reference's own order does.
CLIP_LEN, INTERVAL, CLIPS = 8, 3, 3
# Fixed GOP and B-frame pattern, so every keyframe after the first has leading B-frames
# (with x264's adaptive B-frames whether one does depends on the content).
OPEN_GOP = "asm=0:open-gop=1:keyint=15:min-keyint=15:scenecut=0:b-adapt=0:bframes=3"


def encode(path, params: str):
    import av

    frames = render_frames(class_specs(2)[1], W, H, N, seed=7, textured=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=15)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "23", "preset": "medium", "x264-params": params}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def open_gop(tmp_path_factory):
    return encode(tmp_path_factory.mktemp("opengop") / "open.mp4",
                  OPEN_GOP)


@pytest.fixture(scope="module")
def closed_gop(tmp_path_factory):
    frames = render_frames(class_specs(2)[1], W, H, N, seed=7, textured=True)
    return write_video(tmp_path_factory.mktemp("closedgop") / "closed.mp4", frames, fps=15)


def decoder(seek="in-order"):
    return ViewDecoder(pipeline(clip_len=CLIP_LEN, frame_interval=INTERVAL, num_clips=CLIPS,
                                scale=SCALE, crop=CROP), seek=seek)


def in_order_frames(path) -> np.ndarray:
    """Every frame, decoded in file order with no seek (PyAV), RGB, in display order."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        decoded = {f.pts: f.to_ndarray(format="rgb24") for f in container.decode(stream)}
    return np.stack([decoded[p] for p in sorted(decoded)])


def views_of(frames: np.ndarray, inds) -> np.ndarray:
    """mmaction2 1.2.0's Resize/ThreeCrop/FormatShape on the given frames."""
    require_mmaction()
    from mmaction.datasets import transforms as T

    imgs = [frames[i] for i in inds]
    r = dict(imgs=imgs, original_shape=imgs[0].shape[:2], img_shape=imgs[0].shape[:2],
             clip_len=CLIP_LEN, num_clips=CLIPS, modality="RGB", start_index=0)
    r = T.Resize(scale=SCALE).transform(r)
    r = getattr(T, CROP[0])(crop_size=CROP[1]).transform(r)
    r = T.FormatShape("NCTHW").transform(r)
    return np.ascontiguousarray(r["imgs"])


@pytest.fixture(params=["pyav", "decord"])
def frame_path(request, monkeypatch):
    """Through the fast path (returns recorded), or forced onto decord's path."""
    import harness.data.decode as decode

    real, used = decode.frames.decode_resized, []

    def spy(*args):
        used.append(real(*args))
        return used[-1]

    monkeypatch.setattr(decode.frames, "decode_resized",
                        spy if request.param == "pyav" else lambda *a: None)
    return used


def test_the_file_is_open_gop_and_the_reference_differs_there(open_gop, closed_gop):
    """The premise, measured: the reference's views differ from an in-order decode on the
    open-GOP file (and not on x264's default closed GOPs)."""
    assert frames_mod.probe_open_gop(str(open_gop)) is True
    assert frames_mod.probe_open_gop(str(closed_gop)) is False
    inds = decoder().frame_indices(N)
    right = views_of(in_order_frames(open_gop), inds)
    ref = reference_views(open_gop, inds, CLIP_LEN, CLIPS, scale=SCALE, crop=CROP)
    assert not np.array_equal(ref, right)
    closed_inds = decoder().frame_indices(N)
    assert np.array_equal(views_of(in_order_frames(closed_gop), closed_inds),
                          reference_views(closed_gop, closed_inds, CLIP_LEN, CLIPS, scale=SCALE, crop=CROP))


def test_default_views_equal_an_in_order_decode(open_gop, frame_path):
    d = decoder()
    views, info = d.decode(open_gop)
    assert info == {"open_gop": True}
    assert np.array_equal(views, views_of(in_order_frames(open_gop), d.frame_indices(N)))
    assert np.array_equal(d(open_gop), views)
    assert all(got is not None for got in frame_path)   # the fast path did not fall back


def test_in_order_decord_path_in_small_chunks(open_gop, monkeypatch):
    """decord's path reads consecutive frames (no seek) for open-GOP files, chunk by chunk."""
    import harness.data.decode as decode

    monkeypatch.setattr(decode.frames, "decode_resized", lambda *a: None)
    monkeypatch.setattr(decode, "DECODE_CHUNK_BYTES", 5 * W * H * 3)
    d = decoder()
    assert np.array_equal(d(open_gop), views_of(in_order_frames(open_gop), d.frame_indices(N)))


@pytest.mark.parametrize("chunk_frames", [None, 3])
def test_seek_reference_equals_the_reference_chain(open_gop, monkeypatch, chunk_frames):
    import harness.data.decode as decode

    real, used = decode.frames.decode_resized, []
    monkeypatch.setattr(decode.frames, "decode_resized", lambda *a: used.append(real(*a)) or used[-1])
    if chunk_frames:
        monkeypatch.setattr(decode, "DECODE_CHUNK_BYTES", chunk_frames * W * H * 3)
    d = decoder("reference")
    views, info = d.decode(open_gop)
    assert info == {"open_gop": True}
    assert used == [None]                          # handed to decord
    ref = reference_views(open_gop, d.frame_indices(N), CLIP_LEN, CLIPS, scale=SCALE, crop=CROP)
    assert np.array_equal(views, ref)


@pytest.mark.parametrize("seek", ["in-order", "reference"])
def test_closed_gop_takes_the_fast_path_and_is_not_flagged(closed_gop, seek, frame_path):
    d = decoder(seek)
    views, info = d.decode(closed_gop)
    assert info == {"open_gop": False}
    ref = reference_views(closed_gop, d.frame_indices(N), CLIP_LEN, CLIPS, scale=SCALE, crop=CROP)
    assert np.array_equal(views, ref)
    assert all(got is not None for got in frame_path)


def test_seek_option_is_checked_and_survives_pickling():
    with pytest.raises(ConfigError, match="seek 'fast'"):
        decoder("fast")
    d = pickle.loads(pickle.dumps(decoder("reference")))
    assert d.seek == "reference" and "seek='reference'" in repr(d)
    assert decoder().seek == "in-order"


def test_the_decode_worker_flags_open_gop_files_and_a_run_counts_them(open_gop, closed_gop,
                                                                      tmp_path_factory, tmp_path):
    from harness.config import evaluation_digest, load_config
    from harness.run import execute, format_table, parse_args
    from harness.stages import DecodeWorker
    from pipeline_support import CONFIG, run_args, shared_inputs

    worker = DecodeWorker(decoder(), metrics=False)
    assert worker.decode(0, str(open_gop))[0].open_gop is True
    assert worker.decode(1, str(closed_gop), timeout=30)[0].open_gop is False
    # the config key reaches the decoder and the run's identity; a bad value is refused
    reference = load_config(CONFIG, {"harness.seek": "reference"})
    assert ViewDecoder.from_config(reference).seek == "reference"
    assert evaluation_digest(reference) != evaluation_digest(load_config(CONFIG))
    with pytest.raises(ConfigError, match="harness.seek"):
        from harness.config import harness_options
        harness_options(load_config(CONFIG, {"harness.seek": "sometimes"}))
    # a run counts the files that took that path
    inputs = shared_inputs(tmp_path_factory)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{open_gop.name} 0\n")
    args = run_args(inputs, tmp_path / "work", "--cpus", "1", "--no-ray", ann=listing)
    args[args.index("--data-prefix") + 1] = str(open_gop.parent)
    summary = execute(parse_args(args))
    assert summary["decoding"] == {"seek": "in-order", "open_gop_files": 1}
    assert "open GOP" in format_table(summary)
