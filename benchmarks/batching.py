"""Videos per device call on a CPU: does batching across videos pay? (issue 10 item 6)

    python benchmarks/batching.py [--model tiny|small] [--batches 1 2 4] [--loops 10]
                                  [--repeats 3] [--threads 1] [--views-per-call N] [--json out.json]

For each batch size, the artifact the harness would build (`harness.build`, random weights,
onnxruntime, the config's uint8 input) is loaded in an inference actor on the CPU, and its
benchmark loop (the same ``InferenceActor.bench`` that ``--bench-loops`` runs) times calls of
B videos. The sizes are measured in turns (``--repeats`` rounds, each size once per round)
so a busy machine slows them alike; reports the median videos/s per size and its ratio to
batch 1. ``--model small`` is the full-size Swin-S (each build takes minutes and ~13 GB;
``--views-per-call 4`` builds it in ~5 GB a video, and a call then carries a third of each of
its videos: rates count videos as views / views per video).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {"tiny": REPO / "configs" / "swin_tiny_test.py", "small": REPO / "configs" / "swin_small_k400.py"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--loops", type=int, default=10, help="timed calls per measurement")
    p.add_argument("--repeats", type=int, default=3, help="rounds over the batch sizes")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads (one core: 1)")
    p.add_argument("--views-per-call", type=int, help="build option views_per_call (default: all)")
    p.add_argument("--build-dir", help="keep the builds here (default: a temporary folder)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)

    from harness.backends import ModelSpec
    from harness.build import build_artifact
    from harness.config import load_config
    from harness.stages import InferenceActor

    cfg = load_config(CONFIGS[args.model])
    with tempfile.TemporaryDirectory() as tmp:
        build_dir = Path(args.build_dir or tmp)
        actors = {}
        for batch in args.batches:
            artifact = build_artifact(cfg, None, build_dir=build_dir, batch=batch,
                                      views_per_call=args.views_per_call)
            actors[batch] = InferenceActor(ModelSpec.from_artifact(artifact.directory, "onnxruntime"),
                                           "cpu", 0, args.threads, metrics=False)
        rates: dict[int, list[float]] = {b: [] for b in args.batches}
        for _ in range(args.repeats):
            for batch, actor in actors.items():
                report = actor.bench(args.loops)
                mean_s = statistics.fmean(report["latencies_ms"]) / 1000.0
                videos = report["views_per_call"] / report["views_per_video"]   # per call
                rates[batch].append(videos / mean_s)
        for actor in actors.values():
            actor.close()
    base = statistics.median(rates[args.batches[0]])
    rows = [{"videos_per_call": b, "videos_per_s": float(f"{statistics.median(r):.4g}"),
             "runs": [float(f"{x:.4g}") for x in r], "ratio": round(statistics.median(r) / base, 3)}
            for b, r in rates.items()]
    result = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores,"
                         f" Python {platform.python_version()}",
              "model": args.model, "threads": args.threads, "loops": args.loops,
              "views_per_call": args.views_per_call, "rows": rows}
    print(f"{args.model} model, onnxruntime on {args.threads} CPU thread(s), medians of {args.repeats}"
          + (f", {args.views_per_call} views per video per call" if args.views_per_call else ""))
    print(f"{'videos/call':>11} {'videos/s':>9} {f'vs {args.batches[0]}':>7}")
    for r in rows:
        print(f"{r['videos_per_call']:>11} {r['videos_per_s']:>9.4g} {r['ratio']:>7.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
