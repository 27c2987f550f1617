"""Random faults over many runs: does any video get lost or recorded twice?

    sudo python benchmarks/chaos.py [--runs 20] [--json out.json]

A loopback cluster (``ray start`` on this machine: a head and two worker nodes, one fake NPU
each, token auth; the NPU is the aclruntime test double, the model the tiny test config) runs
``python -m harness.run --npus 2`` over a 44-entry list (good videos, broken ones, one whose
reads never answer, through FUSE) again and again. During each run, 2 to 4 faults at random
moments: SIGKILL of an inference actor's process, of a decode worker's process, or of a whole
worker node (its process group; a fresh node replaces it for the next run). Each run must end
(a run that stops is resumed once, with the same command); then its predictions are checked:
every list index recorded exactly once. Prints runs, faults injected by kind, videos lost,
videos doubled, resumes needed, and the run times. Needs root (FUSE, mount namespaces).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from chaos_support import LoopbackCluster, StallingMount, can_inject, ray_env  # noqa: E402

STALLED = "stalled/never_answers.mp4"


def processes(title: str) -> list[int]:
    """PIDs whose process title (Ray names its workers ``ray::<Class>...``) starts with ``title``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if cmdline.decode(errors="replace").startswith(title):
                found.append(int(pid))
    return found


class Injector(threading.Thread):
    """Kills things at random moments while a run is going."""

    def __init__(self, rng: random.Random, workers: list, faults: int, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.rng, self.workers, self.faults, self.done = rng, workers, faults, done
        self.injected: Counter = Counter()
        self.node_killed = None

    def run(self) -> None:
        moments = sorted(self.rng.uniform(2.0, 14.0) for _ in range(self.faults))
        start = time.monotonic()
        for moment in moments:
            if self.done.wait(max(0.0, moment - (time.monotonic() - start))):
                return
            kinds = ["actor", "decoder"] + (["node"] if self.node_killed is None else [])
            kind = self.rng.choice(kinds)
            if kind == "node":
                self.node_killed = self.rng.choice(self.workers)
                self.node_killed.kill()
            else:
                pids = processes("ray::_RayInferenceActor" if kind == "actor" else "ray::DecodeWorker")
                if not pids:
                    continue
                try:
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                except ProcessLookupError:
                    continue
            self.injected[kind] += 1


def check(work: Path, total: int, resumed_at: float | None) -> tuple[int, int]:
    """(videos lost, videos recorded twice by one invocation) from a work dir's raw part files.
    A resume rewrites the first run's transient failures by design: rows are split by time."""
    import pyarrow.parquet as pq

    from harness import results

    if not (work / results.PREDICTIONS).is_dir():
        return total, 0
    rows = pq.read_table(work / results.PREDICTIONS, columns=["index", "finished_at"]).to_pylist()
    lost = total - len({r["index"] for r in rows})
    doubled = 0
    for part in (lambda r: resumed_at is None or r["finished_at"] < resumed_at,
                 lambda r: resumed_at is not None and r["finished_at"] >= resumed_at):
        counts = Counter(r["index"] for r in rows if part(r))
        doubled += sum(1 for n in counts.values() if n > 1)
    return lost, doubled


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    missing = can_inject()
    if missing:
        print(f"cannot inject faults here: {missing}")
        return 2
    from pipeline_support import BROKEN, CONFIG, make_inputs

    rng = random.Random(args.seed)
    rows, totals = [], Counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = make_inputs(root / "inputs")
        source = root / "videos"
        shutil.copytree(inputs.videos, source)
        (source / "stalled").mkdir()
        shutil.copy(source / inputs.good_list.read_text().split()[0], source / STALLED)
        good = inputs.good_list.read_text().splitlines()
        lines = good * 4 + [f"{rel} 0" for rel in BROKEN] + [f"{STALLED} 0"] + good
        (root / "list.txt").write_text("\n".join(lines) + "\n")
        env = ray_env({"HARNESS_CACHE_DIR": str(root / "cache")})
        cluster = LoopbackCluster(root, env)
        with StallingMount(source, root / "mnt", [STALLED]) as mounted:
            try:
                cluster.head(cpus=2, resources='{"NPU": 1}')
                workers = [cluster.worker(cpus=1, resources='{"NPU": 1}') for _ in range(2)]
                cluster.wait_for("NPU", 3)
                for n in range(args.runs):
                    work = root / f"run{n}"
                    argv = [sys.executable, "-m", "harness.run", "--config", str(CONFIG),
                            "--checkpoint", str(inputs.checkpoint), "--npus", "2",
                            "--build-dir", str(inputs.root / "build"), "--atc", str(inputs.atc),
                            "--ann-file", str(root / "list.txt"), "--data-prefix", str(mounted),
                            "--work-dir", str(work), "--no-progress", "-q", "--flush-every", "1",
                            "--address", cluster.address, "--decode-timeout", "5",
                            "--infer-timeout", "15", "--max-retries", "3",
                            "--cfg-options", "harness.run.startup_timeout=30"]
                    done = threading.Event()
                    injector = Injector(rng, workers, rng.randint(2, 4), done)
                    started = time.monotonic()
                    injector.start()
                    first = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                           timeout=900)
                    done.set()
                    injector.join()
                    resumed = first.returncode != 0
                    resumed_at = None
                    if resumed:   # e.g. every actor lost at once: the same command resumes
                        resumed_at = time.time()
                        subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                       timeout=900)
                    lost, doubled = check(work, len(lines), resumed_at)
                    row = {"run": n, "faults": dict(injector.injected), "lost": lost,
                           "doubled": doubled, "resumed": resumed, "first_exit": first.returncode,
                           "seconds": round(time.monotonic() - started, 1)}
                    if resumed:
                        row["first_error"] = first.stderr.strip().splitlines()[-1:]
                    rows.append(row)
                    totals.update(injector.injected)
                    print(json.dumps(row), flush=True)
                    if injector.node_killed is not None:   # a fresh node for the next run
                        workers.remove(injector.node_killed)
                        workers.append(cluster.worker(cpus=1, resources='{"NPU": 1}'))
                        cluster.wait_for("NPU", 3)
            finally:
                cluster.stop()
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "runs": len(rows), "faults": dict(totals), "faults_total": sum(totals.values()),
        "videos_lost": sum(r["lost"] for r in rows), "videos_doubled": sum(r["doubled"] for r in rows),
        "runs_resumed": sum(r["resumed"] for r in rows), "rows": rows,
    }
    print(f"runs {result['runs']}, faults injected {result['faults_total']} {result['faults']},"
          f" videos lost {result['videos_lost']}, videos doubled {result['videos_doubled']},"
          f" runs resumed once {result['runs_resumed']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["videos_lost"] == result["videos_doubled"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
