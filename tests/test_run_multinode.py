"""A cluster of two Ray nodes on this machine, one (fake) NPU each: actors land on both."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from harness import results
from harness.run import execute, parse_args
from pipeline_support import (BROKEN, run_args, scores_by_index, shared_inputs,
                              use_fake_aclruntime, worker_pythonpath)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"NPU": 1}})
    cluster.add_node(num_cpus=1, resources={"NPU": 1})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}})
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_two_nodes_two_npus(inputs, two_nodes, tmp_path, monkeypatch):
    import ray

    monkeypatch.setenv("PATH", f"{inputs.atc.parent}{os.pathsep}{os.environ['PATH']}")
    use_fake_aclruntime()
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    summary = execute(parse_args(run_args(inputs, tmp_path / "ray", "--npus", "2")))
    nodes = {d["node"] for d in summary["sessions"]}
    assert len(nodes) == 2                                   # one inference actor per node
    assert summary["videos_total"] == 8 + len(BROKEN)
    assert summary["videos_failed"] == len(BROKEN)
    assert sum(d["videos"] for d in summary["devices"]) == summary["videos_ok"] == 8
    oracle = execute(parse_args(run_args(inputs, tmp_path / "oracle", "--npus", "1", "--no-ray")))
    got = scores_by_index(results.read_predictions(tmp_path / "ray"))
    want = scores_by_index(results.read_predictions(tmp_path / "oracle"))
    assert sorted(got) == sorted(want)
    for index in want:
        np.testing.assert_allclose(got[index], want[index], atol=1e-5)
    assert summary["top1"] == oracle["top1"] and summary["failures"] == oracle["failures"]
