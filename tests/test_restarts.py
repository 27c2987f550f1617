"""A chip is never lost to its own restart, end to end on the test doubles (issue 17).

Two (fake) NPUs on a local Ray; every session takes 10 s to load, as a large .om does on a
real chip, also when Ray restarts its actor; one chip call hangs, once. The hung actor is
killed and restarted, and while Ray restarts it the probes the scheduler sends fail with
"the actor is restarting": that is not a death. The restarted chip serves again until the end,
nobody is set aside, and every video is recorded once with the scores of ``--no-ray``.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

from harness import results
from harness.run import execute, parse_args
from pipeline_support import run_args, scores_by_index, shared_inputs, use_fake_aclruntime, worker_pythonpath

# a local Ray for a minute or more: with the heavy checks (`pytest -m slow`, run by CI)
pytestmark = pytest.mark.slow

LOAD_S = 10


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def slow_loading_npus(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("restarts")
    env = {"PYTHONPATH": worker_pythonpath(), "FAKE_ACL_LOAD_S": str(LOAD_S),
           "FAKE_ACL_HANG_ONCE": str(root / "hung-once"), "FAKE_ACL_DELAY_S": "0.5",
           "FAKE_ACL_RECORD_DIR": str(root / "sessions")}
    ray.init(address="local", num_cpus=4, resources={"NPU": 2}, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False, runtime_env={"env_vars": env})
    yield root
    ray.shutdown()


@pytest.fixture(autouse=True)
def fake_ascend_tools(inputs, monkeypatch):
    monkeypatch.setenv("PATH", f"{inputs.atc.parent}{os.pathsep}{os.environ['PATH']}")
    use_fake_aclruntime()


def test_a_hung_chip_is_restarted_and_serves_again_until_the_end(inputs, slow_loading_npus,
                                                                 tmp_path):
    root = slow_loading_npus
    videos = tmp_path / "list.txt"                              # 96 decodable videos
    good = [line for line in inputs.good_list.read_text().splitlines() if line.strip()]
    videos.write_text("\n".join(good * (96 // len(good))) + "\n")
    summary = execute(parse_args(run_args(inputs, tmp_path / "w", "--npus", "2", "--audit", "0",
                                          "--infer-timeout", "5", ann=videos)))
    faults = summary["faults"]
    assert faults["infer_timeouts"] == 1 and faults["actor_deaths"] == 1, faults
    assert faults["set_aside"] == []                            # no member retired

    # the hung chip (its process made the marker) served again after its restart
    hung_pid = int((root / "hung-once").read_text())
    sessions = [json.loads(p.read_text()) for p in (root / "sessions").glob("session-*.json")]
    chip = next(s["ASCEND_RT_VISIBLE_DEVICES"] for s in sessions if s["pid"] == hung_pid)
    reopened = [s for s in sessions if s["ASCEND_RT_VISIBLE_DEVICES"] == chip and s["pid"] != hung_pid]
    assert reopened, sessions                                   # Ray restarted its actor
    served = {d["id"]: d["videos"] for d in summary["devices"]}
    assert served[chip] >= 10, served                           # not 1 or 2: it came back

    table = results.read_predictions(tmp_path / "w")
    assert sorted(table.column("index").to_pylist()) == list(range(96))   # each video once
    oracle = execute(parse_args(run_args(inputs, tmp_path / "oracle", "--npus", "1", "--no-ray",
                                         "--audit", "0", ann=videos)))
    got, want = scores_by_index(table), scores_by_index(results.read_predictions(tmp_path / "oracle"))
    assert sorted(got) == sorted(want) == list(range(96))
    for index in want:
        np.testing.assert_allclose(got[index], want[index], atol=1e-5)
    assert summary["top1"] == oracle["top1"] and summary["top5"] == oracle["top5"]
