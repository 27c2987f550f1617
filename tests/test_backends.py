"""Sessions (onnxruntime, om through aclruntime, torch) and the inference actor, without Ray."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from harness.backends import ModelSpec, dtype_of, open_session
from harness.data import ViewDecoder
from harness.errors import DeviceError
from harness.stages import DecodeWorker, InferenceActor, call_layout
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


def spec_for(artifact, backend: str) -> ModelSpec:
    return ModelSpec.from_artifact(artifact.directory, backend)


def test_onnxruntime_session_reports_the_models_input(inputs):
    session = open_session(spec_for(inputs.artifact, "onnxruntime"), "cpu", 0, threads=1)
    manifest = inputs.artifact.manifest
    assert session.input_name == manifest["input"]["name"]
    assert list(session.input_shape) == manifest["input"]["shape"]
    assert session.input_dtype == np.uint8
    assert session.device == "cpu"
    x = np.zeros(session.input_shape, np.uint8)
    assert session.run(x).shape == tuple(manifest["output"]["shape"])
    # a CPU session plans no memory pattern: 0.59x the peak at the same speed (full size,
    # docs/performance.md "onnxruntime sessions on a CPU")
    assert session._session.get_session_options().enable_mem_pattern is False


def test_om_session_through_fake_aclruntime_matches_onnxruntime(inputs, views):
    use_fake_aclruntime()
    om = open_session(spec_for(inputs.artifact, "om"), "npu", 0)
    ort = open_session(spec_for(inputs.artifact, "onnxruntime"), "cpu", 0)
    x = views[None]
    assert om.input_dtype == np.uint8 and om.device == "npu:0"
    np.testing.assert_allclose(om.run(x), ort.run(x), atol=1e-6)


def test_missing_aclruntime_says_how_to_install_it(inputs, monkeypatch):
    monkeypatch.setitem(sys.modules, "aclruntime", None)  # import fails
    with pytest.raises(DeviceError, match="set_env.sh.*aclruntime"):
        open_session(spec_for(inputs.artifact, "om"), "npu", 0)


def test_float32_session_gets_host_normalized_views_in_several_calls(inputs, views):
    """An .om like the Ascend guide's (float32 input, fewer views per call) scores the same."""
    use_fake_aclruntime()
    uint8_actor = InferenceActor(spec_for(inputs.artifact, "onnxruntime"),
                                 "cpu", metrics=False)
    f32 = inputs.artifact_f32
    f32_actor = InferenceActor(spec_for(f32, "om"), "npu", metrics=False)
    assert f32_actor.session.input_dtype == np.float32
    assert f32_actor.describe()["views_per_call"] == 2          # 6 views -> 3 calls
    a = uint8_actor.infer(0, views)["scores"]
    b = f32_actor.infer(0, views)["scores"]
    assert a.shape == (8,)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_torch_session_matches_the_exported_model(inputs, views):
    from harness.config import load_config
    spec = ModelSpec.from_checkpoint(load_config(CONFIG), inputs.checkpoint)
    torch_actor = InferenceActor(spec, "cpu", metrics=False)
    ort_actor = InferenceActor(spec_for(inputs.artifact, "onnxruntime"),
                               "cpu", metrics=False)
    np.testing.assert_allclose(torch_actor.logits(views), ort_actor.logits(views), atol=1e-4)


def test_bench_times_the_requested_loops(inputs):
    actor = InferenceActor(spec_for(inputs.artifact, "onnxruntime"),
                           "cpu", metrics=False)
    report = actor.bench(3)
    assert len(report["latencies_ms"]) == 3 and all(t > 0 for t in report["latencies_ms"])
    assert report["views_per_call"] == 6 and report["views_per_video"] == 6


def test_decode_worker_returns_a_failure_record_for_a_broken_video(inputs):
    from harness.config import load_config
    worker = DecodeWorker(ViewDecoder.from_config(load_config(CONFIG)), metrics=False)
    status, views = worker.decode(3, str(inputs.videos / "broken" / "empty.mp4"))
    assert views is None and not status.ok and status.reason == "empty"
    status, views = worker.decode(4, str(inputs.videos / "broken" / "missing.mp4"))
    assert status.reason == "missing"


def test_call_layout_and_dtype_names():
    assert call_layout((1, 12, 3, 32, 224, 224), 12) == (1, 12)
    assert call_layout((-1, 4, 3, 32, 224, 224), 12) == (1, 4)
    assert call_layout((2, -1, 3, 8, 64, 64), 6) == (2, 6)
    assert dtype_of("tensor(float)") == np.float32
    assert dtype_of("dtype.uint8") == np.uint8
    assert dtype_of(0) == np.float32


def test_a_model_file_in_its_artifact_directory_is_described_by_the_manifest(inputs):
    from harness.config import load_config

    f32 = inputs.artifact_f32
    spec = ModelSpec.from_model_file(f32.om_path, "om", load_config(CONFIG))
    assert spec == ModelSpec.from_artifact(f32.directory, "om")
    assert spec.identity == f32.manifest["hash"] and spec.manifest_path.endswith("manifest.json")


def test_a_model_file_elsewhere_is_described_by_the_config(inputs, tmp_path):
    import hashlib
    import shutil

    from harness.config import load_config, normalization

    copy = tmp_path / "guide.om"
    shutil.copy(inputs.artifact_f32.om_path, copy)
    cfg = load_config(CONFIG)
    spec = ModelSpec.from_model_file(copy, "om", cfg)
    assert spec.path == str(copy) and spec.manifest_path is None
    assert spec.identity == hashlib.sha256(copy.read_bytes()).hexdigest()
    assert (spec.views_per_video, spec.num_classes, spec.average_clips) == (6, 8, "prob")
    assert spec.norm == normalization(cfg)


def test_an_artifact_without_an_om_says_how_to_get_one(inputs, tmp_path):
    import json
    import shutil

    from harness.errors import ConfigError

    onnx_only = tmp_path / "art"
    shutil.copytree(inputs.artifact.directory, onnx_only)
    manifest = json.loads((onnx_only / "manifest.json").read_text())
    manifest["om"] = None
    (onnx_only / "manifest.json").write_text(json.dumps(manifest))
    assert ModelSpec.from_artifact(onnx_only, "onnxruntime").path == str(onnx_only / "model.onnx")
    with pytest.raises(ConfigError, match="no .om file.*set_env.sh"):
        ModelSpec.from_artifact(onnx_only, "om")


def test_a_node_without_the_model_file_writes_the_received_bytes_once_verified(tmp_path, monkeypatch):
    import hashlib
    import types

    from harness.errors import DeviceError
    from harness.stages import local_model_file

    data = b"model bytes" * 1000
    digest = hashlib.sha256(data).hexdigest()
    fetched = []
    fake_ray = types.SimpleNamespace(get=lambda ref: fetched.append(ref) or ref,   # the blob: the bytes
                                     is_initialized=lambda: False)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    seen = tmp_path / "model.om"
    seen.write_bytes(data)
    assert local_model_file(str(seen), digest, data) == str(seen)          # visible: used as is
    assert fetched == []
    gone = "/nonexistent/build/art/model.om"
    cached = local_model_file(gone, digest, data)
    assert cached == str(tmp_path / "cache" / "artifacts" / digest / "model.om")
    assert open(cached, "rb").read() == data and len(fetched) == 1
    assert local_model_file(gone, digest, data) == cached and len(fetched) == 1   # once per node
    seen.write_bytes(b"another node's stale copy")
    assert local_model_file(str(seen), digest, data) == cached              # the driver's bytes
    with pytest.raises(DeviceError, match="sha256"):
        local_model_file("/nonexistent/other/model.om", "0" * 64, data)
    with pytest.raises(DeviceError, match="not on this node"):
        local_model_file(gone, None, None)


@pytest.mark.parametrize("nodes_on_this_host, expect_id", [(1, False), (2, True)])
def test_node_labels_stay_the_same_across_ray_instances(monkeypatch, nodes_on_this_host, expect_id):
    """A resumed run starts a new Ray instance (new node ids): one node per host is labelled by
    the hostname alone, so the summary lists each device once; several Ray nodes sharing a host
    keep their node id to tell them apart."""
    import socket
    import types

    from harness import stages

    host = socket.gethostname()
    nodes = [{"Alive": True, "NodeManagerHostname": host}] * nodes_on_this_host + \
        [{"Alive": True, "NodeManagerHostname": "elsewhere"}]
    context = types.SimpleNamespace(get_node_id=lambda: "abcdef0123456789")
    fake_ray = types.SimpleNamespace(is_initialized=lambda: True, nodes=lambda: nodes,
                                     get_runtime_context=lambda: context)
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    monkeypatch.setattr(stages, "_NODE_LABEL", None)
    assert stages.node_label() == (f"{host}:abcdef01" if expect_id else host)
