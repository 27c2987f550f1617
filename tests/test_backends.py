"""Sessions (onnxruntime, om through aclruntime, torch) and the inference actor, without Ray."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from harness.backends import ModelSpec, dtype_of, open_session
from harness.data import ViewDecoder
from harness.errors import DeviceError
from harness.pipeline import DecodeWorker, InferenceActor, call_layout
from pipeline_support import CONFIG, shared_inputs, use_fake_aclruntime


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def views(inputs):
    from harness.config import load_config
    decoder = ViewDecoder.from_config(load_config(CONFIG))
    path = inputs.videos / inputs.good_list.read_text().split()[0]
    return decoder(str(path))


def spec_for(artifact, backend: str, model_file) -> ModelSpec:
    m = artifact.manifest
    n = m["normalization"]
    return ModelSpec(backend=backend, path=str(model_file), views_per_video=m["views_per_video"],
                     average_clips=m["average_clips"], mean=tuple(n["mean"]), std=tuple(n["std"]),
                     to_bgr=n["to_bgr"], num_classes=m["num_classes"], identity=m["hash"],
                     config_path=str(CONFIG))


def test_onnxruntime_session_reports_the_models_input(inputs):
    session = open_session("onnxruntime", inputs.artifact, "cpu", 0, threads=1)
    manifest = inputs.artifact.manifest
    assert session.input_name == manifest["input"]["name"]
    assert list(session.input_shape) == manifest["input"]["shape"]
    assert session.input_dtype == np.uint8
    assert session.device == "cpu"
    x = np.zeros(session.input_shape, np.uint8)
    assert session.run(x).shape == tuple(manifest["output"]["shape"])


def test_om_session_through_fake_aclruntime_matches_onnxruntime(inputs, views):
    use_fake_aclruntime()
    om = open_session("om", inputs.artifact, "npu", 0)
    ort = open_session("onnxruntime", inputs.artifact, "cpu", 0)
    x = views[None]
    assert om.input_dtype == np.uint8 and om.device == "npu:0"
    np.testing.assert_allclose(om.run(x), ort.run(x), atol=1e-6)


def test_missing_aclruntime_says_how_to_install_it(inputs, monkeypatch):
    monkeypatch.setitem(sys.modules, "aclruntime", None)  # import fails
    with pytest.raises(DeviceError, match="set_env.sh.*aclruntime"):
        open_session("om", inputs.artifact, "npu", 0)


def test_float32_session_gets_host_normalized_views_in_several_calls(inputs, views):
    """An .om like the Ascend guide's (float32 input, fewer views per call) scores the same."""
    use_fake_aclruntime()
    uint8_actor = InferenceActor(spec_for(inputs.artifact, "onnxruntime", inputs.artifact.onnx_path),
                                 "cpu", metrics=False)
    f32 = inputs.artifact_f32
    f32_actor = InferenceActor(spec_for(f32, "om", f32.om_path), "npu", metrics=False)
    assert f32_actor.session.input_dtype == np.float32
    assert f32_actor.describe()["views_per_call"] == 2          # 6 views -> 3 calls
    a = uint8_actor.infer(0, views)["scores"]
    b = f32_actor.infer(0, views)["scores"]
    assert a.shape == (8,)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_torch_session_matches_the_exported_model(inputs, views):
    import dataclasses
    spec = spec_for(inputs.artifact, "torch", inputs.artifact.onnx_path)
    spec = dataclasses.replace(spec, path=None, checkpoint=str(inputs.checkpoint))
    torch_actor = InferenceActor(spec, "cpu", metrics=False)
    ort_actor = InferenceActor(spec_for(inputs.artifact, "onnxruntime", inputs.artifact.onnx_path),
                               "cpu", metrics=False)
    np.testing.assert_allclose(torch_actor.logits(views), ort_actor.logits(views), atol=1e-4)


def test_bench_times_the_requested_loops(inputs):
    actor = InferenceActor(spec_for(inputs.artifact, "onnxruntime", inputs.artifact.onnx_path),
                           "cpu", metrics=False)
    report = actor.bench(3)
    assert len(report["latencies_ms"]) == 3 and all(t > 0 for t in report["latencies_ms"])
    assert report["views_per_call"] == 6 and report["views_per_video"] == 6


def test_decode_worker_returns_a_failure_record_for_a_broken_video(inputs):
    from harness.config import load_config
    worker = DecodeWorker(ViewDecoder.from_config(load_config(CONFIG)), metrics=False)
    status, views = worker.decode(3, str(inputs.videos / "broken" / "empty.mp4"))
    assert views is None and not status["ok"] and status["reason"] == "empty"
    status, views = worker.decode(4, str(inputs.videos / "broken" / "missing.mp4"))
    assert status["reason"] == "missing"


def test_call_layout_and_dtype_names():
    assert call_layout((1, 12, 3, 32, 224, 224), 12) == (1, 12)
    assert call_layout((-1, 4, 3, 32, 224, 224), 12) == (1, 4)
    assert call_layout((2, -1, 3, 8, 64, 64), 6) == (2, 6)
    assert dtype_of("tensor(float)") == np.float32
    assert dtype_of("dtype.uint8") == np.uint8
    assert dtype_of(0) == np.float32
