"""The fault model, end to end: a run on a two-node cluster meets every fault at once and
still ends, in bounded time, with each list index recorded exactly once.

The cluster (``ray start`` twice on this machine, token auth, one fake NPU per node):
- node B runs in its own mount namespace with an empty tmpfs over the build dir: it cannot
  see the model artifact and must receive it through the object store;
- every session takes 10 s to load (a large .om), also when Ray restarts an actor;
- the head's NPU double hangs on its first chip call (once);
- the videos are read through FUSE, and one file's reads never answer (a stalled mount);
- the list holds broken videos (empty, not a video, missing);
- node B is killed whole (its process group) once a few results are in.

Pass: exit 0; every index once; the broken and the stalled files failed with their reasons
(``timeout`` for the stalled read); every good video's scores equal ``--no-ray``'s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from chaos_support import REPO, LoopbackCluster, StallingMount, can_inject, ray_env
from harness import results
from harness.run import execute, parse_args
from pipeline_support import BROKEN, CONFIG, shared_inputs, use_fake_aclruntime

STALLED = "stalled/never_answers.mp4"
RUN_LIMIT_S = 420


# A real cluster for a minute or more: with the heavy checks (`pytest -m slow`, run by CI).
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def chaos(inputs, tmp_path_factory):
    missing = can_inject()
    if missing:
        if os.environ.get("HARNESS_REQUIRE_UNSHARE") == "1":
            pytest.fail(f"the chaos test cannot run: {missing}")
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("chaos")
    source = root / "videos"
    shutil.copytree(inputs.videos, source)
    (source / "stalled").mkdir()
    first_good = inputs.good_list.read_text().split()[0]
    shutil.copy(source / first_good, source / STALLED)     # a real video: only its reads stall
    good = inputs.good_list.read_text().splitlines()
    broken = [f"{rel} {i % 4}" for i, rel in enumerate(BROKEN)]
    lines = good * 6 + broken + [f"{STALLED} 0"] + good * 2
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    build = inputs.root / "build"
    env = ray_env({"HARNESS_CACHE_DIR": str(root / "cache-head"), "FAKE_ACL_DELAY_S": "0.5",
                   "FAKE_ACL_LOAD_S": "10"})
    cluster = LoopbackCluster(root, env)
    with StallingMount(source, root / "mnt", [STALLED]) as mounted:
        try:
            # the head's chip hangs once: while Ray restarts its actor (10 s of loading), node
            # B is lost; the run must go on with the restarted chip, not retire it
            cluster.head(cpus=2, resources='{"NPU": 1}',
                         env={"FAKE_ACL_HANG_ONCE": str(root / "hung-once")})
            node_b = cluster.worker(cpus=2, resources='{"NPU": 1}', hide=[build],
                                    env={"HARNESS_CACHE_DIR": str(root / "cache-b")})
            cluster.wait_for("NPU", 2)
            yield dict(root=root, cluster=cluster, node_b=node_b, mounted=mounted, env=env,
                       list=root / "list.txt", lines=lines, build=build)
        finally:
            cluster.stop()


def test_a_run_survives_every_fault_at_once(inputs, chaos, tmp_path):
    work = tmp_path / "work"
    argv = ["--config", str(CONFIG), "--checkpoint", str(inputs.checkpoint), "--npus", "2",
            "--build-dir", str(chaos["build"]), "--atc", str(inputs.atc),
            "--ann-file", str(chaos["list"]),
            "--data-prefix", str(chaos["mounted"]), "--work-dir", str(work), "--no-progress",
            "--address", chaos["cluster"].address, "--flush-every", "1",
            "--decode-timeout", "5", "--infer-timeout", "10", "--max-retries", "3",
            "--cfg-options", "harness.run.startup_timeout=30"]
    driver = subprocess.Popen([sys.executable, "-m", "harness.run", *argv], cwd=REPO, env=chaos["env"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(driver.stderr), daemon=True)
    reader.start()
    started = time.monotonic()
    parts = work / results.PREDICTIONS

    def node_b_may_go() -> bool:
        """Some results are in, and the hung chip call's timeout was acted on (else losing
        node B could end the hang before the timeout does)."""
        return (parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 12
                and any("restarting it" in line for line in list(err_lines)))

    while driver.poll() is None and time.monotonic() - started < RUN_LIMIT_S and not node_b_may_go():
        time.sleep(0.2)
    assert driver.poll() is None, "the run ended before node B could be lost:\n" + "".join(err_lines)
    chaos["node_b"].kill()                                   # a whole worker node is lost
    try:
        driver.wait(timeout=max(10, RUN_LIMIT_S - (time.monotonic() - started)))
    except subprocess.TimeoutExpired:
        driver.kill()
        driver.wait()
        pytest.fail(f"the run did not end within {RUN_LIMIT_S} s:\n{''.join(err_lines)[-4000:]}")
    reader.join(10)
    out, err = driver.stdout.read(), "".join(err_lines)
    assert driver.returncode == 0, out[-2000:] + err[-4000:]

    raw = pq.read_table(work / results.PREDICTIONS).to_pylist()
    assert sorted(r["index"] for r in raw) == list(range(len(chaos["lines"])))   # each exactly once
    by_path = {}
    for r in raw:
        by_path.setdefault(r["path"].split(str(chaos["mounted"]))[1].lstrip("/"), []).append(r)
    assert {r["error"] for r in by_path[STALLED]} == {"timeout"}
    reasons = {rel: by_path[rel][0]["error"] for rel in BROKEN}
    assert reasons == {"broken/empty.mp4": "empty", "broken/not_a_video.mp4": "unreadable container",
                       "broken/missing.mp4": "missing"}
    good_rows = [r for rel, rows in by_path.items() if rel not in BROKEN and rel != STALLED for r in rows]
    assert all(r["status"] == "ok" for r in good_rows), [r for r in good_rows if r["status"] != "ok"]

    # the same list without faults, in one process: the same scores for every good video
    use_fake_aclruntime()
    oracle_list = tmp_path / "oracle.txt"
    oracle_list.write_text("\n".join(line for line in chaos["lines"] if STALLED not in line) + "\n")
    execute(parse_args(["--config", str(CONFIG), "--checkpoint", str(inputs.checkpoint),
                        "--npus", "1", "--no-ray", "--build-dir", str(chaos["build"]),
                        "--atc", str(inputs.atc),
                        "--ann-file", str(oracle_list), "--data-prefix", str(inputs.videos),
                        "--work-dir", str(tmp_path / "oracle"), "--no-progress"]))
    want = {}
    for row in results.read_predictions(tmp_path / "oracle").to_pylist():
        if row["status"] == "ok":
            want.setdefault(row["path"].split(str(inputs.videos))[1].lstrip("/"), row["scores"])
    for row in good_rows:
        rel = row["path"].split(str(chaos["mounted"]))[1].lstrip("/")
        np.testing.assert_allclose(row["scores"], want[rel], atol=1e-5)

    summary = json.loads((work / "summary.json").read_text())
    faults = summary["faults"]
    print("faults:", json.dumps(faults))
    assert faults["infer_timeouts"] >= 1                      # the chip call that hung
    assert faults["decode_timeouts"] >= 1                     # the stalled read
    assert faults["actor_deaths"] + len(faults["set_aside"]) >= 1   # node B's actor was lost
    # the head's chip (the one that hung) was restarted, not retired: at most node B's chip is
    # set aside, and the audit's reference too when Ray happened to place it on node B
    hung = int(re.search(r"no answer from inference actor (\d+) after", err).group(1))
    retired = [s["member"] for s in faults["set_aside"] if s["pool"] == "inference actor"]
    assert hung not in retired and len(retired) <= 1, err[-4000:]
    assert {s["pool"] for s in faults["set_aside"]} <= {"inference actor", "reference actor"}
    # node B could not see the build dir: it received the model through the object store
    assert list((chaos["root"] / "cache-b" / "artifacts").glob("*/model.om"))
