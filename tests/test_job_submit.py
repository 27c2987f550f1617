"""The driver need not live on a laptop: ``ray job submit`` runs harness.run on the cluster.

A head node with the dashboard (the Jobs API) and token auth, on this machine. The job gets
this checkout as its working dir (``--working-dir``: .gitignore'd folders such as .venv stay
behind) and writes to an absolute work dir on the head; ``ray job logs`` shows the progress;
``ray job stop`` (SIGTERM, then SIGKILL after 3 s) leaves resumable results, and submitting
the same command again finishes the list with every video once.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pyarrow.parquet as pq
import pytest

from chaos_support import REPO, LoopbackCluster, free_port, ray_env
from harness import results
from pipeline_support import gated_list, shared_inputs


# A real cluster for a minute or more: with the heavy checks (`pytest -m slow`, run by CI).
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("jobs")
    env = ray_env()
    cluster = LoopbackCluster(root, env)
    port = free_port()
    cluster.head(cpus=3, dashboard_port=port)
    try:
        yield env, f"http://127.0.0.1:{port}"
    finally:
        cluster.stop()


def ray_job(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ray", "job", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def status(env, address: str, job: str) -> str:
    """SUCCEEDED, FAILED, STOPPED, or what else ``ray job status`` says."""
    result = ray_job(env, "status", "--address", address, job)
    out = (result.stdout + result.stderr).lower()
    for words, state in (("was stopped", "STOPPED"), ("succeeded", "SUCCEEDED"), ("failed", "FAILED")):
        if f"job '{job.lower()}' {words}" in out:
            return state
    return out


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_a_submitted_run_logs_progress_stops_and_resumes(inputs, head, tmp_path):
    env, address = head
    work = tmp_path / "work"
    # 16 videos; the 13th is a gate the run waits at (pipeline_support.Gate): the job is
    # stopped while it waits there, after the 12 before it are recorded
    ann, prefix, gate = gated_list(inputs, tmp_path / "data")
    command = ["python", "-m", "harness.run", "--config", "configs/swin_tiny_test.py",
               "--checkpoint", str(inputs.checkpoint), "--build-dir", str(inputs.root / "build"),
               "--ann-file", str(ann), "--data-prefix", str(prefix),
               "--work-dir", str(work), "--cpus", "1", "--decoders", "1", "--flush-every", "2"]

    def submit() -> str:
        deadline = time.monotonic() + 90
        while True:  # right after start-up the head's agent may not take jobs yet
            result = ray_job(env, "submit", "--address", address, "--working-dir", str(REPO),
                             "--no-wait", "--", *command)
            if result.returncode == 0 or "try again later" not in result.stderr \
                    or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert result.returncode == 0, result.stdout + result.stderr
        return re.search(r"raysubmit_[A-Za-z0-9]+", result.stdout).group(0)

    job = submit()
    parts = work / results.PREDICTIONS
    wait_until(lambda: parts.is_dir() and len(results.done_indices(work)) == 12, 300,
               f"results of job {job}: {ray_job(env, 'logs', '--address', address, job).stdout[-2000:]}")
    logs = ray_job(env, "logs", "--address", address, job).stdout
    assert "/16" in logs and "video" in logs                  # the progress bar, in the job's log
    try:
        stop = ray_job(env, "stop", "--address", address, job)
        assert stop.returncode == 0, stop.stdout + stop.stderr
        wait_until(lambda: status(env, address, job) == "STOPPED", 60, "the job to stop")
    finally:
        gate.replace()
    done = results.done_indices(work)
    assert done == set(range(12))                             # what was recorded stays

    again = submit()                                          # the same command resumes
    wait_until(lambda: status(env, address, again) in ("SUCCEEDED", "FAILED"), 300, "the resumed job")
    logs = ray_job(env, "logs", "--address", address, again).stdout
    assert status(env, address, again) == "SUCCEEDED", logs
    indices = pq.read_table(parts).column("index").to_pylist()
    assert sorted(set(indices)) == list(range(16))
    summary = json.loads((work / results.SUMMARY_FILE).read_text())
    assert summary["videos_total"] == 16 and summary["videos_this_run"] == 4
