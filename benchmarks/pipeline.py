"""Pipeline efficiency of the scheduler alone, with simulated devices (issue 4 item 7).

    python benchmarks/pipeline.py [--latency 0.1] [--per-device 50] [--json out.json]

A simulated device sleeps a fixed time per call (no host CPU) and returns deterministic
logits; it is a measuring instrument defined only here, never selectable in harness.run.
Real decode workers decode tiny synthetic videos (harness.data.synthetic) through the
real Scheduler, so decode capacity (2+ workers at a few ms per video) exceeds the
devices' demand.

Reports
- efficiency = end-to-end videos/s / (devices / latency) for 1, 2 and 4 devices
  (target >= 0.95);
- the driver's peak RSS for a 200- and a 2,000-entry list, each in a fresh process
  (target: growth < 50 MB);
- with ``--audit N`` (default 16), each efficiency row again with the precision audit on: N
  videos also scored by a real fp32 reference actor (onnxruntime on the tiny test model, random
  weights, one CPU) from the same decoded views, measured right after the row without it
  (target: within 0.02 of it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.backends import ModelSpec  # noqa: E402
from harness.config import Normalization  # noqa: E402
from harness.scheduler import Entry, Scheduler  # noqa: E402
from harness.stages import DecodeWorker, InferenceActor  # noqa: E402

CONFIG = REPO / "configs" / "swin_tiny_test.py"


class SleepSession:
    """A simulated device: ``latency_s`` per call, no host CPU, logits from the input's sum."""

    def __init__(self, latency_s: float, views_per_video: int, num_classes: int = 8) -> None:
        self.latency_s = latency_s
        self.input_name, self.output_name = "imgs", "logits"
        self.input_shape = (1, views_per_video, 3, 8, 64, 64)
        self.input_dtype = np.dtype(np.uint8)
        self.device = "sim"
        self.num_classes = num_classes

    def run(self, x: np.ndarray) -> np.ndarray:
        time.sleep(self.latency_s)
        rows = x.shape[0] * x.shape[1]
        seed = int(x.reshape(rows, -1)[:, ::997].sum()) % 1000
        return np.tile(np.arange(self.num_classes, dtype=np.float32) * (seed / 1000.0), (rows, 1))

    def close(self) -> None:
        pass


def make_videos(root: Path) -> list[str]:
    from harness.data.synthetic import make_dataset

    data = make_dataset(root, classes=4, per_class=2, seed=0, profile="tiny")
    return [str(data.videos / line.split()[0]) for line in data.val_list.read_text().splitlines()]


def start(num_devices: int, num_decoders: int, latency: float, decoder, views: int):
    import ray

    spec = ModelSpec(backend="simulated", path=None, views_per_video=views, average_clips="prob",
                     norm=Normalization((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), num_classes=8,
                     identity="simulated")
    actor_cls = ray.remote(InferenceActor)
    actors = [actor_cls.options(resources={"SIM": 1}, num_cpus=0)
              .remote(spec, "npu", k, False, SleepSession(latency, views))
              for k in range(num_devices)]
    decoders = [ray.remote(DecodeWorker).options(num_cpus=1).remote(decoder, False)
                for _ in range(num_decoders)]
    ray.get([a.describe.remote() for a in actors] + [d.probe.remote() for d in decoders])
    return actors, decoders


def start_reference(spec: ModelSpec):
    import ray

    handle = ray.remote(InferenceActor).options(num_cpus=1).remote(spec, "cpu", 0, False)
    ray.get(handle.describe.remote())
    return handle


def efficiency(num_devices: int, per_device: int, latency: float, decoders: int, videos, decoder,
               views: int, reference: ModelSpec | None = None, audit_videos: int = 0) -> dict:
    import ray

    from harness.audit import audit_indices
    from harness.scheduler import Audit

    actors, decs = start(num_devices, decoders, latency, decoder, views)
    entries = [Entry(i, videos[i % len(videos)], 0) for i in range(num_devices * per_device)]
    got, answers = [], []
    audit, references = None, []
    if reference is not None:
        references = [start_reference(reference)]
        chosen = frozenset(audit_indices([e.index for e in entries], audit_videos))
        audit = Audit(references[0], chosen, lambda index, out, error: answers.append(error))
    t0 = time.perf_counter()
    Scheduler(decs, actors, metrics=False, audit=audit).run(entries, got.append)
    wall = time.perf_counter() - t0
    for h in actors + decs + references:
        ray.kill(h)
    assert len(got) == len(entries) and all(r.status == "ok" for r in got)
    assert len(answers) == (audit_videos if audit else 0) and not any(answers), answers
    throughput = len(entries) / wall
    ideal = num_devices / latency
    return {"devices": num_devices, "videos": len(entries), "wall_s": round(wall, 3),
            "videos_per_s": round(throughput, 3), "device_capacity_videos_per_s": round(ideal, 3),
            "efficiency": round(throughput / ideal, 4), "audited": len(answers)}


def tiny_reference(root: Path) -> ModelSpec:
    """The tiny test model (random weights) as an ONNX: the audit's fp32 reference."""
    from harness.build import build_artifact
    from harness.config import load_config

    artifact = build_artifact(load_config(CONFIG), None, build_dir=root / "build")
    return ModelSpec.from_artifact(artifact.directory, "onnxruntime")


def memory_run(entries_count: int, videos: list[str], decoder, views: int) -> dict:
    """One driver over ``entries_count`` entries (4 fast simulated devices), writing results."""
    import ray

    from harness.results import ResultWriter, read_predictions, summarize

    ray.init(address="local", num_cpus=4, resources={"SIM": 4}, include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)
    actors, decs = start(4, 2, 0.002, decoder, views)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as work:
        writer = ResultWriter(work)
        entries = (Entry(i, videos[i % len(videos)], i % 8) for i in range(entries_count))
        t0 = time.perf_counter()
        Scheduler(decs, actors, metrics=False).run(entries, writer.add)
        writer.close()
        wall = time.perf_counter() - t0
        summary = summarize(read_predictions(work), wall_s=wall, processed=entries_count,
                            backend="simulated", artifact={})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ray.shutdown()
    assert summary["videos_ok"] == entries_count
    return {"entries": entries_count, "peak_rss_mb": round(peak / 1024, 1),
            "rss_before_run_mb": round(base / 1024, 1), "wall_s": round(wall, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.1, help="simulated seconds per call")
    p.add_argument("--per-device", type=int, default=50, help="videos per simulated device")
    p.add_argument("--decoders", type=int, default=2)
    p.add_argument("--audit", type=int, default=16,
                   help="also measure each row with N audited videos (0: skip)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)  # child process mode
    p.add_argument("--videos-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from harness.config import clip_geometry, load_config
    from harness.data import ViewDecoder

    cfg = load_config(CONFIG)
    decoder = ViewDecoder.from_config(cfg)
    views = clip_geometry(cfg).views
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.videos_dir or tmp)
        videos = make_videos(root / "data")
        if args.memory_run:
            print(json.dumps(memory_run(args.memory_run, videos, decoder, views)))
            return 0
        import ray

        ray.init(address="local", num_cpus=max(4, args.decoders), resources={"SIM": 4},
                 include_dashboard=False,
                 logging_level=logging.WARNING, log_to_driver=False)
        reference = tiny_reference(root) if args.audit else None
        rows, audited = [], []
        for n in (1, 2, 4):
            rows.append(efficiency(n, args.per_device, args.latency, args.decoders, videos,
                                   decoder, views))
            if reference is not None:
                audited.append(efficiency(n, args.per_device, args.latency, args.decoders, videos,
                                          decoder, views, reference, args.audit))
        ray.shutdown()
        memory = []
        for count in (200, 2000):
            out = subprocess.run([sys.executable, __file__, "--memory-run", str(count),
                                  "--videos-dir", str(root)], check=True, capture_output=True,
                                 text=True, cwd=REPO)
            memory.append(json.loads(out.stdout.strip().splitlines()[-1]))
    growth = memory[1]["peak_rss_mb"] - memory[0]["peak_rss_mb"]
    result = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "latency_s": args.latency, "decoders": args.decoders,
        "efficiency": rows, "efficiency_with_audit": audited,
        "memory": memory, "driver_memory_growth_mb": round(growth, 1),
        "targets": {"efficiency_min": 0.95, "memory_growth_max_mb": 50,
                    "audit_efficiency_loss_max": 0.02},
        "meets_targets": (all(r["efficiency"] >= 0.95 for r in rows) and growth < 50
                          and all(r["efficiency"] - a["efficiency"] <= 0.02
                                  for r, a in zip(rows, audited))),
    }
    print(f"{'devices':>7} {'videos':>6} {'wall s':>7} {'videos/s':>9} {'capacity':>9} {'efficiency':>10}")
    for r in rows + audited:
        print(f"{r['devices']:>7} {r['videos']:>6} {r['wall_s']:>7.2f} {r['videos_per_s']:>9.2f}"
              f" {r['device_capacity_videos_per_s']:>9.2f} {r['efficiency']:>10.3f}"
              + (f"   with --audit {r['audited']}" if r["audited"] else ""))
    for r, a in zip(rows, audited):
        print(f"audit cost at {r['devices']} device(s): {r['efficiency'] - a['efficiency']:+.3f}"
              " efficiency (target <= 0.02)")
    for m in memory:
        print(f"driver peak RSS, {m['entries']:>5} entries: {m['peak_rss_mb']:.1f} MB ({m['wall_s']} s)")
    print(f"driver memory growth 200 -> 2000 entries: {growth:.1f} MB;"
          f" targets met: {result['meets_targets']}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["meets_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
