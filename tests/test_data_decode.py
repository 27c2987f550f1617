"""Decoding: broken inputs give DecodeError with a reason; pipelines the harness does not
implement are refused by name; no handles or threads are left behind."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import av
import numpy as np
import pytest

from harness.data import DecodeError, ViewDecoder
from harness.data.storage import StorageError
from harness.data.synthetic import class_specs, render_frames, write_video
from harness.errors import ConfigError, HarnessError


def steps(**sample):
    sample = {"clip_len": 4, "frame_interval": 2, "num_clips": 2, "test_mode": True, **sample}
    return [dict(type="DecordInit"), dict(type="SampleFrames", **sample), dict(type="DecordDecode"),
            dict(type="Resize", scale=(-1, 64)), dict(type="ThreeCrop", crop_size=64),
            dict(type="Flip", flip_ratio=0),
            dict(type="Normalize", mean=[1, 2, 3], std=[4, 5, 6], to_bgr=False),
            dict(type="FormatShape", input_format="NCTHW"), dict(type="Collect", keys=["imgs"]),
            dict(type="ToTensor", keys=["imgs"])]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    frames = render_frames(class_specs(1)[0], 112, 80, 20, seed=0)
    return write_video(tmp_path_factory.mktemp("dec") / "good.mp4", frames, fps=15)


def reason(path, error=DecodeError):
    with pytest.raises(error) as info:
        ViewDecoder(steps())(path)
    assert str(path) in str(info.value) and info.value.reason in str(info.value)
    return info.value.reason


def test_missing_file(tmp_path):
    assert reason(tmp_path / "nope.mp4", StorageError) == "missing"


def test_zero_byte_file(tmp_path):
    (tmp_path / "zero.mp4").touch()
    assert reason(tmp_path / "zero.mp4") == "empty"


def test_truncated_file(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "half.mp4").write_bytes(data[: len(data) // 2])
    assert reason(tmp_path / "half.mp4") == "unreadable container"


def test_truncated_index_is_decode_failure(tmp_path, good):
    # The container opens (FFmpeg sees a video stream) but decord cannot set it up.
    data = good.read_bytes()
    (tmp_path / "tail.mp4").write_bytes(data[:-100])
    assert reason(tmp_path / "tail.mp4") in ("decode failed", "unreadable container")


def test_random_bytes(tmp_path):
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 30000, dtype=np.uint8).tobytes())
    assert reason(tmp_path / "noise.mp4") == "unreadable container"


def test_text_named_mp4(tmp_path):
    (tmp_path / "notes.mp4").write_text("this is not a video\n" * 50)
    assert reason(tmp_path / "notes.mp4") == "unreadable container"


def test_audio_only_file(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert reason(path) == "no video stream"


def test_one_frame_video_loops(tmp_path):
    frames = render_frames(class_specs(2)[1], 112, 80, 1, seed=3)
    views = ViewDecoder(steps())(write_video(tmp_path / "one.mp4", frames))
    assert views.shape == (6, 3, 4, 64, 64)
    # every sampled frame is the only frame
    assert (views == views[:, :, :1]).all()


def test_decode_error_is_a_picklable_harness_error(tmp_path):
    err = pickle.loads(pickle.dumps(DecodeError(tmp_path / "x.mp4", "empty")))
    assert isinstance(err, HarnessError) and err.reason == "empty" and "x.mp4" in str(err)


def test_decoder_is_picklable_and_reports_its_shape(good):
    decoder = pickle.loads(pickle.dumps(ViewDecoder(steps())))
    assert decoder.views == 6 and decoder.view_shape == (3, 4, 64, 64)
    assert decoder(good).shape == (decoder.views, *decoder.view_shape)


def test_output_is_reused_only_once_the_caller_let_go(good, tmp_path):
    decoder = ViewDecoder(steps())
    other = write_video(tmp_path / "other.mp4", render_frames(class_specs(2)[1], 112, 80, 20, seed=1),
                        fps=15)
    first = decoder(good)
    kept = first.copy()
    second = decoder(other)              # ``first`` is still held: a new array
    assert second is not first and np.array_equal(first, kept)
    view = second[0]                     # a view keeps its base alive too
    del second
    third = decoder(good)
    assert np.array_equal(third, kept) and view.base is not None
    assert not np.shares_memory(third, view)
    address = third.__array_interface__["data"][0]
    del third, view                      # released: the next call may reuse the memory
    assert decoder(other).__array_interface__["data"][0] == address


@pytest.mark.parametrize("change, name", [
    (lambda s: s.__setitem__(5, dict(type="Flip", flip_ratio=0.5)), "Flip.flip_ratio"),
    (lambda s: s[1].update(twice_sample=True), "SampleFrames.twice_sample"),
    (lambda s: s[1].update(test_mode=False), "SampleFrames.test_mode"),
    (lambda s: s.insert(4, dict(type="ColorJitter")), "ColorJitter"),
    (lambda s: s[3].update(interpolation="bicubic"), "Resize.interpolation"),
    (lambda s: s[7].update(input_format="NCHW"), "FormatShape.input_format"),
    (lambda s: s[2].update(mode="efficient"), "DecordDecode.mode"),
    (lambda s: s[4].update(foo=1), "ThreeCrop.foo"),
])
def test_unimplemented_steps_and_parameters_are_named(change, name):
    pipeline = steps()
    change(pipeline)
    with pytest.raises(ConfigError, match=name.split(".")[-1]) as info:
        ViewDecoder(pipeline)
    assert name.split(".")[0] in str(info.value)


def test_crop_before_resize_is_refused():
    pipeline = steps()
    pipeline[3], pipeline[4] = pipeline[4], pipeline[3]
    with pytest.raises(ConfigError, match="order"):
        ViewDecoder(pipeline)


def test_no_handles_or_threads_left_behind(tmp_path, good):
    decoder = ViewDecoder(steps())
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good.read_bytes()[:-100])
    decoder(good)

    def counts():
        return len(os.listdir("/proc/self/fd")), len(os.listdir("/proc/self/task"))

    before = counts()
    for _ in range(5):
        decoder(good)
        with pytest.raises(DecodeError):
            decoder(bad)
    assert counts() == before


def test_import_does_not_load_torch_or_mmengine():
    code = ("import sys, harness.data, harness.data.synthetic, harness.data.filelist;"
            "bad = [m for m in ('torch', 'mmengine') if m in sys.modules]; print(bad); sys.exit(bool(bad))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_reference_repository_config_gives_twelve_views():
    from harness.config import load_config

    cfg = load_config("tests/fixtures/reference_configs/configs/recognition/swin/"
                      "swin_small_patch244_window877_kinetics400_1k.py")
    decoder = ViewDecoder.from_config(cfg)
    assert (decoder.views, decoder.view_shape, decoder.sampling) == (12, (3, 32, 224, 224), "reference")
    assert decoder.frame_indices(300).reshape(4, 32)[:, 0].tolist() == [29, 88, 148, 207]


def test_frames_beyond_the_indexed_packets_are_refused(good, monkeypatch):
    """decord can spin forever seeking past the frames a file holds when its container
    over-reports the count; the decoder refuses such indices instead of calling decord."""
    import harness.data.decode as decode

    monkeypatch.setattr(decode.frames, "decode_resized", lambda *a: None)  # decord's path
    monkeypatch.setattr(decode, "_indexed_frames", lambda reader: 5)
    with pytest.raises(DecodeError, match="holds 5") as info:
        ViewDecoder(steps())(good)
    assert info.value.reason == "decode failed"


def test_indexed_frame_count_matches_length_for_a_good_file(good):
    import decord

    from harness.data.decode import _indexed_frames

    assert _indexed_frames(decord.VideoReader(str(good), num_threads=1)) == 20
