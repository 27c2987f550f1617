"""Batching across videos (issue 10 item 1): an actor whose session takes B videos per call
serves the calls queued at it B at a time, and every video's scores equal batch 1's."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from harness.backends import ModelSpec
from harness.stages import InferenceActor, _Batcher
from pipeline_support import CONFIG, concurrently, shared_inputs


class SlowDevice:
    """Doubles each video's views; one call at a time (asserted), 50 ms per call."""

    def __init__(self, bad: int | None = None) -> None:
        self.running, self.most_running, self.bad = 0, 0, bad
        self.lock = threading.Lock()

    def __call__(self, videos: list) -> list:
        with self.lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        time.sleep(0.05)
        with self.lock:
            self.running -= 1
        if self.bad is not None and any(int(v[0]) == self.bad for v in videos):
            raise ValueError(f"bad input {self.bad}")
        return [2 * v for v in videos]


def test_calls_are_served_b_at_a_time_one_device_call_at_once():
    device = SlowDevice()
    batcher = _Batcher(device, size=4)
    answers = concurrently(batcher.submit, [np.array([k]) for k in range(10)])
    assert [int(a[0]) for a in answers] == [2 * k for k in range(10)]   # each its own answer
    assert device.most_running == 1
    assert max(batcher.calls) == 4 and sum(batcher.calls) == 10
    assert len(batcher.calls) <= 5                 # batched: not 10 calls of one


def test_a_lone_call_does_not_wait_for_a_batch_to_fill():
    # a batcher that waited for 8 calls would never answer this one: it must, in a call of 1
    batcher = _Batcher(SlowDevice(), size=8)
    answer = concurrently(batcher.submit, [np.array([3])])[0]
    assert int(answer[0]) == 6 and batcher.calls == [1]


def test_a_bad_input_fails_alone_not_its_batch():
    batcher = _Batcher(SlowDevice(bad=5), size=4)
    answers = concurrently(batcher.submit, [np.array([k]) for k in range(8)])
    assert isinstance(answers[5], ValueError)
    assert [int(a[0]) for k, a in enumerate(answers) if k != 5] == [2 * k for k in range(8) if k != 5]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


def test_a_batch_4_session_scores_each_video_as_batch_1_does(inputs, tmp_path):
    from harness.build import build_artifact
    from harness.config import load_config
    from harness.data import ViewDecoder

    cfg = load_config(CONFIG)
    one = ModelSpec.from_artifact(inputs.artifact.directory, "onnxruntime")
    four = ModelSpec.from_artifact(build_artifact(cfg, inputs.checkpoint, build_dir=inputs.root / "build",
                                                  batch=4).directory, "onnxruntime")
    decoder = ViewDecoder.from_config(cfg)
    videos = [decoder(str(inputs.videos / line.split()[0]))
              for line in inputs.good_list.read_text().splitlines()[:6]]
    single, batched = InferenceActor(one, "cpu", metrics=False), InferenceActor(four, "cpu", metrics=False)
    assert (single.videos_per_call, batched.videos_per_call) == (1, 4)
    assert batched.describe()["videos_per_call"] == 4
    want = [single.infer(k, v)["scores"] for k, v in enumerate(videos)]
    got = concurrently(lambda k: batched.infer(k, videos[k], True), list(range(6)))
    assert max(batched._batcher.calls) > 1                        # several videos per call
    for k in range(6):
        assert got[k]["index"] == k
        np.testing.assert_allclose(got[k]["scores"], want[k], atol=1e-5)
        assert got[k]["logits"].shape[0] == videos[k].shape[0]   # its own views, no padding
