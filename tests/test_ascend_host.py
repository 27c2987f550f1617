"""Ready for a real Ascend host (issue 18), on doubles as strict as the binding (tests/doubles):
one device thread per actor, the right physical chip on any CANN, any chip type and mixed
clusters, the runtime's own execute time, and simulated chips labelled as such."""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np
import pytest

from harness.backends import ModelSpec
from harness.backends.device_thread import DeviceThread
from harness.errors import ConfigError, DeviceError
from harness.run import execute, main, parse_args
from harness.stages import InferenceActor
from pipeline_support import (CONFIG, concurrently, run_args, shared_inputs, use_fake_aclruntime,
                              worker_pythonpath)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(autouse=True)
def fake_ascend(inputs, monkeypatch):
    monkeypatch.setenv("PATH", f"{inputs.atc.parent}{os.pathsep}{os.environ['PATH']}")
    for name in ("FAKE_ACL_SOC", "FAKE_ACL_BINDING", "FAKE_ACL_IGNORES_VISIBLE",
                 "ASCEND_RT_VISIBLE_DEVICES", "FAKE_ACL_EXEC_MS"):
        monkeypatch.delenv(name, raising=False)
    use_fake_aclruntime()


# ------------------------------------------------------------------ 1. one device thread

class ThreadRecordingSession:
    """A Session that notes the thread of every call (as a CUDA or ACL context would care)."""

    input_name, output_name, device = "x", "y", "cpu"
    input_shape, input_dtype = (1, 2, 3, 2, 4, 4), np.dtype(np.uint8)

    def __init__(self) -> None:
        self.threads = {threading.get_ident()}

    def run(self, x):
        self.threads.add(threading.get_ident())
        return np.zeros((x.shape[0] * x.shape[1], 3), np.float32)

    def close(self):
        self.threads.add(threading.get_ident())


def test_the_device_thread_opens_runs_and_closes_the_session_on_one_thread():
    device = DeviceThread(ThreadRecordingSession)
    session = device.session
    concurrently(lambda k: device.call(session.run, np.zeros((1, 2, 3, 2, 4, 4), np.uint8)), list(range(6)))
    device.close()
    assert session.threads == {device.ident} and device.ident != threading.get_ident()


def test_a_session_that_cannot_open_raises_in_the_caller():
    def broken():
        raise DeviceError("no chip")

    with pytest.raises(DeviceError, match="no chip"):
        DeviceThread(broken)


@pytest.mark.parametrize("binding", ["2023", "2024"])
def test_an_om_actor_calls_the_binding_from_one_thread_only(inputs, monkeypatch, binding):
    """Ray serves an actor's calls on up to 32 threads; the ACL context belongs to one."""
    from harness.config import load_config
    from harness.data import ViewDecoder

    monkeypatch.setenv("FAKE_ACL_BINDING", binding)
    actor = InferenceActor(ModelSpec.from_artifact(inputs.artifact.directory, "om"), "npu", 0,
                           metrics=False)
    decoder = ViewDecoder.from_config(load_config(CONFIG))
    views = [decoder(str(inputs.videos / line.split()[0]))
             for line in inputs.good_list.read_text().splitlines()[:4]]
    concurrently(lambda k: actor.infer(k, views[k]), list(range(4)))
    actor.bench(2)
    binding_session = actor.session._session
    used = set().union(*binding_session.threads.values())
    assert used == {actor._device.ident}                    # init, to_device, run, to_host
    assert binding_session.threads["run"] and threading.get_ident() not in used
    actor.close()


# ------------------------------------------------------------------ 2. the right chip

@pytest.mark.parametrize("ignores, visible, assigned, want", [
    (False, "1", "1", (0, "1")),     # CANN maps the variable: ordinal 0 is chip 1
    (True, "1", "1", (1, "1")),      # an older CANN shows every chip: open chip 1 itself
    (False, None, "1", (1, "1")),    # Ray told not to set the variable: every chip is visible
    (False, None, None, (0, "0")),   # no Ray (--no-ray): the ordinal is the chip
])
def test_the_chip_opened_is_the_one_ray_assigned(monkeypatch, ignores, visible, assigned, want):
    from harness.backends.om_backend import choose_chip

    if ignores:
        monkeypatch.setenv("FAKE_ACL_IGNORES_VISIBLE", "1")
    if visible is not None:
        monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", visible)
    assert choose_chip(0, assigned) == want


@pytest.fixture
def ray_npus(tmp_path):
    """``start(env)``: a local Ray with 2 declared NPUs, workers with ``env`` (a CANN that
    behaves so) and a record of every session opened; stopped after the test."""
    import ray

    records = tmp_path / "sessions"

    def start(env: dict | None = None):
        ray.init(address="local", num_cpus=3, resources={"NPU": 2}, include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath(),
                                           "FAKE_ACL_RECORD_DIR": str(records), **(env or {})}})
        return records

    yield start
    ray.shutdown()


def _opened(records) -> list[dict]:
    return [json.loads(p.read_text()) for p in records.glob("*.json")]


def test_two_chips_on_a_cann_that_ignores_the_visible_devices_variable(inputs, ray_npus, tmp_path):
    records = ray_npus({"FAKE_ACL_IGNORES_VISIBLE": "1"})
    summary = execute(parse_args(run_args(inputs, tmp_path / "w", "--npus", "2")))
    opened = _opened(records)
    assert sorted(o["physical_chip"] for o in opened) == [0, 1]        # two distinct chips
    assert sorted(d["id"] for d in summary["devices"]) == ["0", "1"]   # and reported so
    assert summary["videos_ok"] == 8


# ------------------------------------------------------------------ 3. chip types

def test_a_host_of_310p1_chips_builds_and_runs_without_soc_version(inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend310P1")
    summary = execute(parse_args(run_args(inputs, tmp_path / "w", "--npus", "1", "--no-ray")))
    manifest = json.loads(open(summary["artifact"]["manifest"]).read())
    assert manifest["soc_version"] == "Ascend310P1" and summary["videos_ok"] == 8


def test_an_om_for_another_chip_type_is_refused_before_the_run(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend910B")        # the artifact is for Ascend310P3
    code = main(["--config", str(CONFIG), "--om", str(inputs.artifact.om_path), "--npus", "1",
                 "--no-ray", "--ann-file", str(inputs.mixed_list), "--data-prefix",
                 str(inputs.videos), "--work-dir", str(tmp_path / "w"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "was built for Ascend310P3" in err and "Ascend910B" in err
    assert not (tmp_path / "w" / "predictions.parquet").exists()


def test_a_pinned_soc_version_other_than_the_chips_is_refused(inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend310P1")
    with pytest.raises(ConfigError, match="--soc-version Ascend310P3 was given.*Ascend310P1"):
        execute(parse_args(run_args(inputs, tmp_path / "w", "--npus", "1", "--no-ray",
                                    "--soc-version", "Ascend310P3")))


def test_the_binding_double_refuses_an_om_of_another_chip_type(inputs, monkeypatch):
    """What a user without the harness's check meets: the runtime's raw load error."""
    import aclruntime

    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend910B")
    with pytest.raises(RuntimeError):
        aclruntime.InferenceSession(str(inputs.artifact.om_path), 0, aclruntime.session_options())


@pytest.fixture
def mixed_cluster(monkeypatch):
    """Two Ray nodes on this machine: one Ascend310P3 chip and one Ascend910B chip. Ray reads
    each node's chip type from pyACL (the double) when the node starts."""
    import ray
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend310P3")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "resources": {"NPU": 1}, "env_vars": {"FAKE_ACL_SOC": "Ascend310P3"}})
    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend910B")
    cluster.add_node(num_cpus=1, resources={"NPU": 1}, env_vars={"FAKE_ACL_SOC": "Ascend910B"})
    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend310P3")     # the driver's host: the head
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_a_cluster_of_a_310p3_and_a_910b_node_uses_both_with_one_om_each(inputs, mixed_cluster,
                                                                         tmp_path):
    from harness.chips import node_socs

    assert sorted(node_socs().values()) == ["Ascend310P3", "Ascend910B"]
    build_dir = tmp_path / "build"
    summary = execute(parse_args(run_args(inputs, tmp_path / "w", "--npus", "2")
                                 + ["--build-dir", str(build_dir)]))
    assert summary["videos_ok"] == 8 and len({d["node"] for d in summary["devices"]}) == 2
    assert sum(d["videos"] for d in summary["devices"]) == 8
    socs = sorted(json.loads(m.read_text())["soc_version"] for m in build_dir.glob("*/manifest.json"))
    assert socs == ["Ascend310P3", "Ascend910B"]
    assert sorted(summary["artifact"]["by_soc"]) == ["Ascend310P3", "Ascend910B"]


# ------------------------------------------------------------------ 5. the runtime's execute time

def test_bench_reports_the_binding_execute_time_next_to_the_call_time(inputs, monkeypatch):
    from harness.bench import bench_stats

    monkeypatch.setenv("FAKE_ACL_EXEC_MS", "20")
    actor = InferenceActor(ModelSpec.from_artifact(inputs.artifact.directory, "om"), "npu", 0,
                           metrics=False)
    report = actor.bench(5)
    own = [end - start for start, end in actor.session._session.sumary().exec_time_list][-5:]
    np.testing.assert_allclose(report["execute_ms"], own)           # the double's own timer
    stats = bench_stats([report], 5)["devices"][0]
    assert stats["execute_mean_ms"] == pytest.approx(np.mean(own))
    assert stats["execute_mean_ms"] <= stats["mean_ms"]              # a call holds the execute
    videos_in_call = report["views_per_call"] / report["views_per_video"]
    assert stats["ais_bench_videos_per_s"] == pytest.approx(1000 * videos_in_call / np.mean(own))
    actor.close()


# ------------------------------------------------------------------ 7. simulated chips say so

def test_a_run_on_the_doubles_says_its_chips_are_simulated(inputs, tmp_path, capsys):
    work = tmp_path / "w"
    code = main(run_args(inputs, work, "--npus", "1", "--no-ray", "--bench-loops", "2"))
    err = capsys.readouterr().err
    assert code == 0 and "SIMULATED DEVICES" in err
    summary = json.loads((work / "summary.json").read_text())
    assert summary["simulated_devices"].startswith("SIMULATED DEVICES")
    assert "SIMULATED DEVICES" in (work / "report.html").read_text()


def test_a_cpu_run_is_not_labelled_simulated(inputs, tmp_path):
    summary = execute(parse_args(run_args(inputs, tmp_path / "w", "--cpus", "1", "--no-ray")))
    assert summary["simulated_devices"] is None
