"""onnxruntime on a CPU: peak memory and time per call of the session options a CPU actor can use.

    python benchmarks/cpu_session.py --onnx build/<artifact>/model.onnx [--calls 4]

Each configuration loads the ONNX in a fresh process (peak RSS is per process), one intra-op
thread as a CPU actor has, and times ``--calls`` calls on random uint8 views; the first call
is a warm-up, the median of the others is reported with the peak RSS and the ratios to
onnxruntime's defaults (memory arena and memory pattern on). The configurations:

- defaults:        arena on, memory pattern on
- no-mem-pattern:  arena on, memory pattern off    (what harness CPU actors use)
- no-arena:        arena off, memory pattern off   (what the build's verification uses)

Full-size Swin-S: build one first, e.g. ``python -m harness.build --config
configs/swin_small_k400.py --views-per-call 4`` (the 12-view graph's default session needs
more than 24 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

CONFIGS = {"defaults": (True, True), "no-mem-pattern": (True, False), "no-arena": (False, False)}

_CHILD = r"""
import json, resource, sys, time
import numpy as np, onnxruntime as ort
path, arena, pattern, calls = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
o = ort.SessionOptions()
o.intra_op_num_threads, o.inter_op_num_threads = 1, 1
o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
o.enable_cpu_mem_arena, o.enable_mem_pattern = arena, pattern
s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).integers(0, 256, size=i.shape, dtype=np.uint8)
times = []
for _ in range(calls):
    t = time.perf_counter(); s.run(None, {i.name: x}); times.append(time.perf_counter() - t)
print(json.dumps({"peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "times": times}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="the ONNX to load (uint8 input)")
    p.add_argument("--calls", type=int, default=4, help="calls per configuration, the first a warm-up")
    args = p.parse_args(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    rows = {}
    for name, (arena, pattern) in CONFIGS.items():
        out = subprocess.run([sys.executable, "-c", _CHILD, args.onnx, str(int(arena)), str(int(pattern)),
                              str(args.calls)], capture_output=True, text=True, env=env, check=True)
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows[name] = {"peak_gb": got["peak_gb"], "s_per_call": statistics.median(got["times"][1:]),
                      "times": [round(t, 2) for t in got["times"]]}
    base = rows["defaults"]
    print(f"{platform.machine()}, {os.cpu_count()} CPUs; {args.onnx}; one thread; median of calls 2..{args.calls}")
    print(f"{'configuration':<16} {'peak GB':>8} {'s/call':>7} {'memory':>7} {'time':>6}   calls (s)")
    for name, r in rows.items():
        print(f"{name:<16} {r['peak_gb']:>8.2f} {r['s_per_call']:>7.1f} {r['peak_gb'] / base['peak_gb']:>7.2f}"
              f" {r['s_per_call'] / base['s_per_call']:>6.2f}   {r['times']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
