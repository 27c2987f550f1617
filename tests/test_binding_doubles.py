"""The Ascend test doubles are as strict as the real binding (reference/ascend.md): a double
more forgiving than aclruntime would hide the bug a user meets first on a real host."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline_support import DOUBLES, shared_inputs, use_fake_aclruntime


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(autouse=True)
def binding(monkeypatch):
    for name in ("FAKE_ACL_SOC", "FAKE_ACL_BINDING", "FAKE_ACL_IGNORES_VISIBLE",
                 "ASCEND_RT_VISIBLE_DEVICES", "FAKE_ACL_EXEC_MS", "FAKE_ACL_DEVICE_COUNT"):
        monkeypatch.delenv(name, raising=False)
    use_fake_aclruntime()
    import aclruntime
    return aclruntime


def _open(acl, inputs):
    session = acl.InferenceSession(str(inputs.artifact.om_path), 0, acl.session_options())
    desc = session.get_inputs()[0]
    x = np.zeros(desc.shape, np.uint8)
    return session, x


def _run(acl, session, x):
    tensor = acl.Tensor(x)
    tensor.to_device(0)
    out = session.run([session.get_outputs()[0].name], [tensor])[0]
    out.to_host()
    return np.array(out)


def test_a_non_contiguous_array_is_refused(binding):
    with pytest.raises(ValueError, match="non-contiguous"):
        binding.Tensor(np.zeros((4, 6), np.float32)[:, ::2])


def test_a_tensor_on_the_device_cannot_become_an_array(binding, inputs):
    session, x = _open(binding, inputs)
    tensor = binding.Tensor(x)
    tensor.to_device(0)
    with pytest.raises(RuntimeError, match="tensor is in npu"):
        np.array(tensor)


def test_an_input_of_the_wrong_size_is_refused(binding, inputs):
    session, x = _open(binding, inputs)
    tensor = binding.Tensor(np.zeros(x.size // 2, np.uint8))
    tensor.to_device(0)
    with pytest.raises(RuntimeError, match="realsize"):
        session.run([session.get_outputs()[0].name], [tensor])


def test_2023_binding_run_on_a_thread_without_the_context_fails_107002(binding, inputs):
    session, x = _open(binding, inputs)
    tensor = binding.Tensor(x)
    tensor.to_device(0)                    # sets the context on this thread only
    errors = []

    def elsewhere():
        try:
            session.run([session.get_outputs()[0].name], [tensor])
        except RuntimeError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=elsewhere)
    t.start()
    t.join()
    assert errors and "107002" in errors[0]
    assert _run(binding, session, x).shape[0] > 0        # to_device and run on one thread: fine


def test_2024_binding_sets_the_context_in_run(binding, inputs, monkeypatch):
    monkeypatch.setenv("FAKE_ACL_BINDING", "2024")
    session, x = _open(binding, inputs)
    out = []
    t = threading.Thread(target=lambda: out.append(_run(binding, session, x)))
    t.start()
    t.join()
    assert out and out[0].shape[0] > 0


def test_free_resource_exists_only_in_the_2024_binding(binding, inputs, monkeypatch):
    session, _ = _open(binding, inputs)
    assert not hasattr(session, "free_resource")
    monkeypatch.setenv("FAKE_ACL_BINDING", "2024")
    assert callable(session.free_resource)


def test_timing_is_sumary_with_one_pair_per_run(binding, inputs):
    session, x = _open(binding, inputs)
    for _ in range(3):
        _run(binding, session, x)
    pairs = session.sumary().exec_time_list
    assert len(pairs) == 3 and all(end >= start for start, end in pairs)
    assert not hasattr(session, "summary")


def test_the_execute_holds_the_gil(binding, inputs, monkeypatch):
    """A Python thread cannot run while the chip executes: its timestamps show the hole."""
    monkeypatch.setenv("FAKE_ACL_EXEC_MS", "300")
    session, x = _open(binding, inputs)
    stamps, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.0005)

    t = threading.Thread(target=tick)
    t.start()
    while not stamps:            # the ticker runs before the call
        time.sleep(0.001)
    _run(binding, session, x)
    stop.set()
    t.join()
    start, end = (v / 1000.0 for v in session.sumary().exec_time_list[-1])
    inside = [s for s in stamps if start - 0.05 <= s <= end + 0.05]
    gaps = np.diff(inside) if len(inside) > 1 else np.array([end - start])
    assert gaps.max() >= 0.25


def test_an_om_loads_only_on_its_chip_type(binding, inputs, monkeypatch):
    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend910B")     # the artifact is for Ascend310P3
    with pytest.raises(RuntimeError, match="507018"):
        _open(binding, inputs)


@pytest.mark.parametrize("ignores, want_count, want_chip", [(False, 1, 1), (True, 2, 1)])
def test_visible_devices_honoured_or_ignored_like_an_older_cann(binding, inputs, monkeypatch,
                                                                ignores, want_count, want_chip):
    import acl

    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "1")
    if ignores:
        monkeypatch.setenv("FAKE_ACL_IGNORES_VISIBLE", "1")
    assert acl.rt.get_device_count() == (want_count, 0)
    ordinal = 0 if not ignores else 1
    session = binding.InferenceSession(str(inputs.artifact.om_path), ordinal, binding.session_options())
    assert session.physical_chip == want_chip


def _tiny_onnx(path: Path, opset: int) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["video"], ["logits"])], "g",
                              [helper.make_tensor_value_info("video", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


def test_the_atc_double_can_reject_opsets_above_a_limit(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "FAKE_ATC_MAX_OPSET": "13"}
    codes = {}
    for opset in (17, 11):
        model = tmp_path / f"m{opset}.onnx"
        _tiny_onnx(model, opset)
        done = subprocess.run([sys.executable, str(DOUBLES / "atc"), "--framework=5",
                               f"--model={model}", f"--output={tmp_path / f'out{opset}'}",
                               "--soc_version=Ascend310P3", "--input_shape=video:1,2"],
                              env=env, capture_output=True, text=True)
        codes[opset] = (done.returncode, done.stderr, (tmp_path / f"out{opset}.om").exists())
    assert codes[17][0] == 1 and "opset 17" in codes[17][1] and not codes[17][2]
    assert codes[11][0] == 0 and codes[11][2]
