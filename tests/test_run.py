"""``harness.run`` on one shared local Ray instance that declares two (fake) NPUs.

Compares the distributed runs with the ``--no-ray`` oracle: same scores within 1e-5,
identical metrics, broken videos counted, each video once.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness import results
from harness.errors import DeviceError
from harness.run import execute, main, parse_args
from pipeline_support import (BROKEN, CONFIG, REPO, gated_list, run_args, scores_by_index,
                              shared_inputs, use_fake_aclruntime, worker_pythonpath)

METRICS = ("top1", "top5", "mean_class_accuracy", "videos_total", "videos_ok", "videos_failed",
           "failures")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def cluster(inputs, tmp_path_factory):
    """A local Ray with 2 declared NPUs; workers see the fake aclruntime."""
    import ray

    records = tmp_path_factory.mktemp("acl-records")
    ray.init(address="local", num_cpus=4, resources={"NPU": 2}, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath(),
                                       "FAKE_ACL_RECORD_DIR": str(records)}})
    yield records
    ray.shutdown()


@pytest.fixture(autouse=True)
def fake_ascend_tools(inputs, monkeypatch):
    monkeypatch.setenv("PATH", f"{inputs.atc.parent}{os.pathsep}{os.environ['PATH']}")
    use_fake_aclruntime()


@pytest.fixture(scope="module")
def oracle(inputs, tmp_path_factory):
    """--no-ray over the mixed list (one process, no Ray)."""
    work = tmp_path_factory.mktemp("oracle")
    summary = execute(parse_args(run_args(inputs, work, "--cpus", "1", "--no-ray")))
    return summary, results.read_predictions(work)


def assert_same_as_oracle(work, summary, oracle):
    expected_summary, expected = oracle
    table = results.read_predictions(work)
    raw = pq.read_table(work / results.PREDICTIONS)
    assert raw.num_rows == table.num_rows, "a video was recorded twice"
    got, want = scores_by_index(table), scores_by_index(expected)
    assert sorted(got) == sorted(want)
    for index in want:
        np.testing.assert_allclose(got[index], want[index], atol=1e-5)
    for key in METRICS:
        assert summary[key] == expected_summary[key], key


def test_oracle_counts_the_broken_videos(oracle):
    summary, table = oracle
    assert summary["videos_total"] == 8 + len(BROKEN)
    assert summary["videos_failed"] == len(BROKEN)
    assert sum(summary["failures"].values()) == len(BROKEN)
    assert {f["path"].split("/broken/")[1] for f in summary["failed"]} == {
        p.split("/")[1] for p in BROKEN}


def test_cpus_2_with_onnxruntime_equals_no_ray(inputs, cluster, oracle, tmp_path):
    summary = execute(parse_args(run_args(inputs, tmp_path, "--cpus", "2")))
    assert_same_as_oracle(tmp_path, summary, oracle)
    assert summary["backend"] == "onnxruntime"
    assert {d["kind"] for d in summary["devices"]} == {"cpu"}
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["videos_failed"] == len(BROKEN)


def test_cpus_2_batching_4_videos_per_call_equals_batch_1(inputs, cluster, oracle, tmp_path):
    summary = execute(parse_args(run_args(inputs, tmp_path, "--cpus", "2", "--batch", "4")))
    assert_same_as_oracle(tmp_path, summary, oracle)
    assert {s["videos_per_call"] for s in summary["sessions"]} == {4}


def test_npus_2_each_actor_uses_its_own_chip(inputs, cluster, oracle, tmp_path):
    before = set(cluster.glob("*.json"))
    summary = execute(parse_args(run_args(inputs, tmp_path, "--npus", "2", "--bench-loops", "3")))
    assert_same_as_oracle(tmp_path, summary, oracle)
    assert summary["backend"] == "om"
    opened = [json.loads(p.read_text()) for p in set(cluster.glob("*.json")) - before]
    assert sorted(o["ASCEND_RT_VISIBLE_DEVICES"] for o in opened) == ["0", "1"]
    assert all(o["device_id"] == 0 for o in opened)           # the visible ordinal
    assert len({o["pid"] for o in opened}) == 2
    assert sorted(d["id"] for d in summary["devices"]) == ["0", "1"]   # physical ids reported
    assert sum(d["videos"] for d in summary["devices"]) == summary["videos_ok"]
    bench = summary["bench"]
    assert sorted(d["device"] for d in bench["devices"]) == ["npu:0", "npu:1"]
    assert all(d["loops"] == 3 and d["throughput_videos_per_s"] > 0 for d in bench["devices"])
    assert bench["pipeline_efficiency"] > 0


def test_npus_2_without_ray_gives_the_same_scores(inputs, oracle, tmp_path):
    summary = execute(parse_args(run_args(inputs, tmp_path, "--npus", "2", "--no-ray")))
    assert_same_as_oracle(tmp_path, summary, oracle)


def test_inference_actor_killed_mid_run(inputs, cluster, oracle, tmp_path):
    import ray

    seen = []

    def kill_one(result):
        seen.append(result.index)
        if len(seen) in (3, 6):   # an inference actor, then a decode worker; Ray restarts both
            prefix = "infer-cpu0" if len(seen) == 3 else "decode0"
            name = next(n for n in ray.util.list_named_actors() if n.startswith(prefix))
            ray.kill(ray.get_actor(name), no_restart=False)

    summary = execute(parse_args(run_args(inputs, tmp_path, "--cpus", "2")), on_result=kill_one)
    assert_same_as_oracle(tmp_path, summary, oracle)
    assert sorted(seen) == sorted(set(seen))                    # reported once each
    assert summary["faults"]["actor_deaths"] >= 1 and summary["faults"]["retries"] >= 1


def test_asking_for_npus_the_cluster_lacks(inputs, cluster, tmp_path, capsys):
    code = main(run_args(inputs, tmp_path, "--npus", "3"))
    err = capsys.readouterr().err
    assert code == 2
    assert "asked for 3 NPU" in err and "has 2" in err and "ray start" in err and "--resources" in err
    assert not (tmp_path / results.PREDICTIONS).exists() or not results.done_indices(tmp_path)


def _gated_driver(inputs, tmp_path, work):
    """A driver on a 16-video list whose 13th video is a gate (pipeline_support.Gate): the
    run records the 12 before it, then waits there until the test releases it."""
    import ray

    ann, prefix, gate = gated_list(inputs, tmp_path / "data")
    argv = run_args(inputs, work, "--cpus", "1", "--decoders", "1", "--flush-every", "4", ann=ann)
    argv[argv.index("--data-prefix") + 1] = str(prefix)
    env = dict(os.environ, PYTHONPATH=worker_pythonpath(), RAY_ADDRESS="")
    cmd = [sys.executable, "-m", "harness.run", *argv, "--address",
           ray.get_runtime_context().gcs_address]
    driver = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(driver.stderr), daemon=True).start()
    deadline = time.monotonic() + 300   # (a bound for a broken run, never a pass condition)
    while len(_recorded(work)) < 12:
        assert time.monotonic() < deadline and driver.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.05)
    return argv, driver, gate, lines


def _recorded(work) -> set[int]:
    return results.done_indices(work) if (work / results.PREDICTIONS).is_dir() else set()


def _wait_for_line(lines: list[str], driver, text: str) -> None:
    deadline = time.monotonic() + 120
    while not any(text in line for line in list(lines)):
        assert time.monotonic() < deadline and driver.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.01)


def test_resume_after_the_driver_is_killed(inputs, cluster, tmp_path):
    work = tmp_path / "work"
    argv, driver, gate, _ = _gated_driver(inputs, tmp_path, work)
    driver.send_signal(signal.SIGKILL)                          # while it waits at the gate
    driver.wait()
    assert _recorded(work) == set(range(12))                    # readable after the crash

    gate.replace()
    summary = execute(parse_args(argv))                         # the same command again
    assert summary["videos_this_run"] == 4
    whole = list(argv) + ["--no-ray"]
    whole[whole.index("--work-dir") + 1] = str(tmp_path / "whole")
    uninterrupted = execute(parse_args(whole))
    for key in METRICS:
        assert summary[key] == uninterrupted[key], key
    table = pq.read_table(work / results.PREDICTIONS)
    assert sorted(table.column("index").to_pylist()) == list(range(16))   # each video once


def test_decode_workers_never_import_torch(inputs, cluster):
    import ray

    from harness.backends import ModelSpec
    from harness.cluster import DevicePlan, start_actors
    from harness.config import load_config
    from harness.data import ViewDecoder

    spec = ModelSpec.from_artifact(inputs.artifact.directory, "onnxruntime")
    decoder = ViewDecoder.from_config(load_config(CONFIG))
    actors, decoders, _ = start_actors(lambda soc, where: spec, DevicePlan("cpu", 1), decoder, 1)
    try:
        path = str(inputs.videos / inputs.good_list.read_text().split()[0])
        status_ref, views_ref = decoders[0].decode.options(num_returns=2).remote(0, path)
        assert ray.get(status_ref).ok
        assert ray.get(decoders[0].__ray_call__.remote(lambda self: "torch" in sys.modules)) is False
    finally:
        for handle in actors + decoders:
            ray.kill(handle)


def test_strict_turns_failures_into_exit_1(inputs, tmp_path, capsys):
    assert main(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray", "--strict")) == 1
    assert "failed (--strict)" in capsys.readouterr().err
    assert main(run_args(inputs, tmp_path / "good", "--cpus", "1", "--no-ray", "--strict",
                         ann=inputs.good_list)) == 0


def test_limit_then_the_whole_list_resumes(inputs, oracle, tmp_path):
    first = execute(parse_args(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray", "--limit", "4")))
    assert first["videos_total"] == 4
    summary = execute(parse_args(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray")))
    assert summary["videos_this_run"] == oracle[0]["videos_total"] - 4
    assert_same_as_oracle(tmp_path, summary, oracle)


def test_ctrl_c_finishes_what_is_in_flight_and_says_how_to_resume(inputs, cluster, tmp_path):
    work = tmp_path / "work"
    argv, driver, gate, lines = _gated_driver(inputs, tmp_path, work)
    driver.send_signal(signal.SIGINT)
    _wait_for_line(lines, driver, "finishing those in flight")
    assert driver.poll() is None                                # the gate's video is in flight
    gate.release()                                              # ... and now finishes
    driver.wait(timeout=120)
    err = "".join(lines)
    assert driver.returncode == 130, err[-2000:]
    assert "resume with: python -m harness.run" in err
    assert _recorded(work) == set(range(13))                    # in flight finished; no new one
    gate.replace()
    summary = execute(parse_args(argv))                         # the same command resumes
    assert summary["videos_this_run"] == 3
    table = pq.read_table(work / results.PREDICTIONS)
    assert sorted(table.column("index").to_pylist()) == list(range(16))   # each video once


def test_a_second_ctrl_c_stops_at_once(inputs, cluster, tmp_path):
    work = tmp_path / "work"
    _, driver, gate, lines = _gated_driver(inputs, tmp_path, work)
    try:
        driver.send_signal(signal.SIGINT)
        # the second once the first was acted on (two signals before Python's handler runs
        # count once), while the gate's video is still in flight: it never finishes by itself
        _wait_for_line(lines, driver, "finishing those in flight")
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        gate.replace()                                          # (frees a worker still at it)
    err = "".join(lines)
    assert driver.returncode == 130 and "stopped. What was recorded" in err, err[-2000:]
    assert _recorded(work) == set(range(12))                    # what was recorded is on disk


def test_a_busy_cluster_is_waited_for_with_a_limit(inputs, cluster, tmp_path, caplog):
    import ray

    @ray.remote(resources={"NPU": 1}, num_cpus=0)
    class Holder:
        def ping(self):
            return 1

    holder = Holder.remote()
    ray.get(holder.ping.remote())                               # another job holds one of 2 NPUs
    try:
        with caplog.at_level(logging.WARNING, logger="harness.cluster"):
            with pytest.raises(DeviceError, match=r"waited \d+ s for 2 NPU \(1 free\).*--wait"):
                execute(parse_args(run_args(inputs, tmp_path, "--npus", "2", "--wait", "2")))
        assert "waiting for 2 NPU (1 free)" in caplog.text
    finally:
        ray.kill(holder)


def test_a_session_that_cannot_load_is_one_message(inputs, cluster, tmp_path, capsys):
    bogus = tmp_path / "broken.om"
    bogus.write_bytes(b"not an om file")
    argv = ["--config", str(CONFIG), "--om", str(bogus), "--npus", "2", "--ann-file",
            str(inputs.mixed_list), "--data-prefix", str(inputs.videos), "--work-dir",
            str(tmp_path / "w"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "is not a FAKE-OM v1 file" in err and "Traceback" not in err


def test_an_interrupted_run_says_so_in_the_table_summary_and_report(inputs, tmp_path, capsys,
                                                                    monkeypatch):
    # issue 19: Ctrl-C once the third of the good list's 8 videos is recorded (the event, not
    # a time): every output says 3 of 8, interrupted, and videos_total is the list's 8
    from harness import run

    def ctrl_c_at_the_third(result):
        if result.index == 2:
            os.kill(os.getpid(), signal.SIGINT)                 # the run's own handler takes it

    whole = run.execute
    monkeypatch.setattr(run, "execute", lambda args: whole(args, ctrl_c_at_the_third))
    assert main(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray", ann=inputs.good_list)) == 130
    out, err = capsys.readouterr()
    assert "videos               3 ok of 8 (interrupted: 5 not recorded; the same command resumes)" in out
    assert "interrupted: 3 of 8 videos recorded; resume with: python -m harness.run" in err
    summary = json.loads((tmp_path / results.SUMMARY_FILE).read_text())
    assert (summary["videos_total"], summary["videos_recorded"], summary["videos_ok"]) == (8, 3, 3)
    assert summary["complete"] is False and summary["interrupted"] is True
    page = (tmp_path / "report.html").read_text()
    assert "3 of 8 videos recorded, interrupted" in page
    assert ("This run was interrupted before the end of its list: 3 of 8 videos recorded; every"
            " number here covers those only. The same command resumes.") in page
    # the same command finishes the list: complete, and nothing says otherwise
    assert main(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray", ann=inputs.good_list)) == 0
    out = capsys.readouterr().out
    assert "videos               8 ok of 8\n" in out
    summary = json.loads((tmp_path / results.SUMMARY_FILE).read_text())
    assert (summary["videos_total"], summary["videos_recorded"], summary["complete"]) == (8, 8, True)
    assert "before the end of its list" not in (tmp_path / "report.html").read_text()


def test_bench_only_lists_only_the_files_it_wrote(inputs, tmp_path, capsys):
    # issue 19: --bench-only writes no predictions, so its results line does not name them
    assert main(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray", "--bench-only",
                         "--bench-loops", "1", ann=inputs.good_list)) == 0
    out = capsys.readouterr().out
    assert f"results: {tmp_path / 'summary.json'}, {tmp_path / 'report.html'}\n" in out
    assert "predictions.parquet" not in out and not (tmp_path / results.PREDICTIONS).exists()
