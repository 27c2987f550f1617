"""One driver, many devices: where does the scheduler stop keeping up? (by simulation)

    python benchmarks/scale.py [--devices 8 32 64 128 256] [--latency 1.65] [--per-device 20]
                               [--nodes 4] [--json out.json]

What is real and what is simulated:
- real: a Ray cluster of ``--nodes`` nodes started with ``ray start`` on this machine (token
  auth), the driver's :class:`harness.scheduler.Scheduler` with its Ray calls, the results
  writer (predictions.parquet part files) and ``summarize``;
- simulated devices: each node hosts one asyncio actor that plays ``devices / nodes`` devices;
  a call sleeps ``--latency`` seconds (the 310P3's ~1.65 s per video) and uses no host CPU;
- simulated decoding, in every row: decode workers hand out the same cached tiny views
  (6 x 3 x 8 x 64 x 64 uint8, 590 KB; a real K400 video is 58 MB) instead of decoding, since
  2 cores cannot decode the ~155 videos/s that 256 such devices consume.

Each device count runs in a fresh driver process (for its peak RSS) over ``devices x
per-device`` list entries. Reports: efficiency (end-to-end videos/s / (devices / latency)),
the driver's CPU seconds per video and peak RSS, ray.wait calls per video, and the largest
device count at which efficiency stays >= 0.95.
"""

from __future__ import annotations

import argparse
import asyncio
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
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

VIEWS_SHAPE = (6, 3, 8, 64, 64)
CLASSES = 400


class SimDevices:
    """Simulated devices in one asyncio actor: a call sleeps ``latency``, one call at a time
    per device (the others queue, as on a chip)."""

    def __init__(self, latency: float, node: str) -> None:
        self.latency, self.node = latency, node
        self.busy: dict[int, asyncio.Lock] = {}
        self.calls: dict[int, list[tuple[float, float]]] = {}    # device -> (start, end)

    async def infer(self, device: int, index: int, views: np.ndarray) -> dict:
        async with self.busy.setdefault(device, asyncio.Lock()):
            start = time.monotonic()
            await asyncio.sleep(self.latency)
            self.calls.setdefault(device, []).append((start, time.monotonic()))
        scores = np.full(CLASSES, 1.0 / CLASSES, np.float32)
        scores[(index + int(views[0, 0, 0, 0, 0])) % CLASSES] += 0.5
        return {"index": index, "scores": scores, "device": f"sim:{device}", "node": self.node,
                "seconds": self.latency}

    async def probe(self) -> str:
        return self.node

    async def timing(self) -> dict:
        """Seconds per call as the devices saw them, and the idle gaps between a device's calls
        (a device idles when the driver did not keep its queue filled)."""
        durations, gaps, firsts, lasts = [], [], [], []
        for calls in self.calls.values():
            calls.sort()
            durations += [end - start for start, end in calls]
            gaps += [max(0.0, b[0] - a[1]) for a, b in zip(calls, calls[1:])]
            firsts.append(calls[0][0])
            lasts.append(calls[-1][1])
        return {"durations": durations, "gaps": gaps, "firsts": firsts, "lasts": lasts}


class CachedDecoder:
    """A decode worker that hands out the same views for every entry (no decoding)."""

    def __init__(self, node: str) -> None:
        self.views = np.random.default_rng(0).integers(0, 256, VIEWS_SHAPE, dtype=np.uint8)
        self.node = node

    def decode(self, index: int, path: str, timeout: float | None = None):
        from harness.stages import DecodeStatus

        return DecodeStatus(True, self.node, seconds=0.0, shape=VIEWS_SHAPE), self.views

    def probe(self) -> str:
        return self.node


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(v) for v in open("/proc/stat").readline().split()[1:]]
    idle = fields[3] + fields[4]                      # idle + iowait
    return sum(fields) - idle, sum(fields)


class _Remote:
    def __init__(self, call) -> None:
        self.remote = call


class DeviceProxy:
    """One simulated device as the scheduler sees an actor: ``.infer.remote`` / ``.probe.remote``."""

    def __init__(self, host, device: int) -> None:
        self.infer = _Remote(lambda index, views: host.infer.remote(device, index, views))
        self.probe = _Remote(lambda: host.probe.remote())


def driver_row(address: str, devices: int, nodes: int, latency: float, per_device: int,
               decoders_per_node: int) -> dict:
    """One device count, in this (fresh) process: the real scheduler, writer and summary."""
    import ray

    from harness.results import ResultWriter, read_predictions, summarize
    from harness.scheduler import Entry, Policy, RayCalls, Scheduler, Timeouts

    class CountingCalls(RayCalls):
        waits = 0

        def wait(self, refs, timeout):
            CountingCalls.waits += 1
            return super().wait(refs, timeout)

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    hosts, decoders = [], []
    for n in range(nodes):
        on_node = {"resources": {f"simnode{n}": 0.01}, "num_cpus": 0}
        count = devices // nodes + (1 if n < devices % nodes else 0)
        hosts.append((ray.remote(SimDevices).options(max_concurrency=max(4, 3 * count), **on_node)
                      .remote(latency, f"node{n}"), count))
        decoders += [ray.remote(CachedDecoder).options(**on_node).remote(f"node{n}")
                     for _ in range(decoders_per_node)]
    proxies = [DeviceProxy(host, k) for host, count in hosts for k in range(count)]
    ray.get([h.probe.remote() for h, _ in hosts] + [d.probe.remote() for d in decoders])
    entries = [Entry(i, f"v{i}.mp4", i % CLASSES) for i in range(devices * per_device)]
    with tempfile.TemporaryDirectory() as work:
        writer = ResultWriter(work)
        scheduler = Scheduler(decoders, proxies, Policy(timeouts=Timeouts(decode=600, infer=600)),
                              calls=CountingCalls(), metrics=False)
        before = resource.getrusage(resource.RUSAGE_SELF)
        machine_before = cpu_times()
        t0, mono0 = time.perf_counter(), time.monotonic()
        scheduler.run(entries, writer.add, writer.flush_if_due)
        writer.close()
        wall, mono1 = time.perf_counter() - t0, time.monotonic()
        machine_after = cpu_times()
        run_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # before the summary
        table = read_predictions(work)
        summary = summarize(table, wall_s=wall, processed=len(entries), backend="simulated",
                            artifact={})
        after = resource.getrusage(resource.RUSAGE_SELF)
        # where the time goes, seen from the devices (CLOCK_MONOTONIC is shared by the
        # processes of one machine): start-up until they start, idle gaps, the end
        timing = ray.get([h.timing.remote() for h, _ in hosts])
        durations = np.concatenate([t["durations"] for t in timing])
        gaps = np.concatenate([t["gaps"] for t in timing])
        firsts = np.sort(np.concatenate([t["firsts"] for t in timing])) - mono0
        lasts = np.sort(np.concatenate([t["lasts"] for t in timing])) - mono0
    assert summary["videos_ok"] == len(entries), summary["videos_failed"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    ideal = devices / latency
    return {"devices": devices, "videos": len(entries), "wall_s": round(wall, 2),
            "videos_per_s": round(len(entries) / wall, 2), "ideal_videos_per_s": round(ideal, 2),
            "efficiency": round(len(entries) / wall / ideal, 4),
            "driver_cpu_ms_per_video": round(1000 * cpu / len(entries), 3),
            "driver_cpu_share": round(cpu / wall, 3),
            "driver_peak_rss_mb": round(after.ru_maxrss / 1024, 1),
            "driver_peak_rss_during_run_mb": round(run_peak / 1024, 1),
            "machine_busy_share": round((machine_after[0] - machine_before[0])
                                        / (machine_after[1] - machine_before[1]), 3),
            "waits_per_video": round(CountingCalls.waits / len(entries), 3),
            "devices_started_median_s": round(float(np.median(firsts)), 2),
            "devices_started_max_s": round(float(firsts[-1]), 2),
            "devices_done_median_s": round(float(np.median(lasts)), 2),
            "devices_done_max_s": round(float(lasts[-1]), 2),
            "after_last_call_s": round(float(mono1 - mono0 - lasts[-1]), 2),
            "device_call_mean_s": round(float(durations.mean()), 4),
            "device_idle_share": round(float(gaps.sum() / (gaps.sum() + durations.sum())), 4),
            "decoders": len(decoders), "cached_views": True}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[8, 32, 64, 128, 256])
    p.add_argument("--latency", type=float, default=1.65, help="simulated seconds per call")
    p.add_argument("--per-device", type=int, default=20, help="list entries per device")
    p.add_argument("--nodes", type=int, default=4, help="Ray nodes on this machine")
    p.add_argument("--decoders-per-node", type=int, default=4)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--row", type=int, help=argparse.SUPPRESS)        # child process mode
    p.add_argument("--address", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.row:
        print(json.dumps(driver_row(args.address, args.row, args.nodes, args.latency,
                                    args.per_device, args.decoders_per_node)))
        return 0

    from chaos_support import LoopbackCluster, ray_env

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = ray_env()
        cluster = LoopbackCluster(Path(tmp), env)
        try:
            cluster.head(cpus=1, resources='{"simnode0": 1}')
            for n in range(1, args.nodes):
                cluster.worker(cpus=1, resources=f'{{"simnode{n}": 1}}')
            cluster.wait_for(f"simnode{args.nodes - 1}", 1)
            for devices in args.devices:
                out = subprocess.run(
                    [sys.executable, __file__, "--row", str(devices), "--address", cluster.address,
                     "--nodes", str(args.nodes), "--latency", str(args.latency),
                     "--per-device", str(args.per_device),
                     "--decoders-per-node", str(args.decoders_per_node)],
                    env=env, capture_output=True, text=True, cwd=REPO, timeout=3600)
                if out.returncode:
                    print(out.stderr[-3000:])
                    return 1
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
        finally:
            cluster.stop()
    good = [r["devices"] for r in rows if r["efficiency"] >= 0.95]
    result = {"machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores,"
                         f" Python {platform.python_version()}",
              "latency_s": args.latency, "per_device": args.per_device, "nodes": args.nodes,
              "rows": rows, "largest_devices_at_0.95": max(good) if good else None}
    print(f"{'devices':>7} {'videos':>6} {'wall s':>7} {'videos/s':>9} {'ideal':>7} {'eff':>6}"
          f" {'cpu ms/v':>8} {'driver':>6} {'machine':>7} {'rss MB':>7} {'waits/v':>7}"
          f" {'dev idle':>8} {'call s':>7}")
    for r in rows:
        print(f"{r['devices']:>7} {r['videos']:>6} {r['wall_s']:>7.1f} {r['videos_per_s']:>9.2f}"
              f" {r['ideal_videos_per_s']:>7.2f} {r['efficiency']:>6.3f}"
              f" {r['driver_cpu_ms_per_video']:>8.2f} {100 * r['driver_cpu_share']:>5.0f}%"
              f" {100 * r['machine_busy_share']:>6.0f}% {r['driver_peak_rss_mb']:>7.0f}"
              f" {r['waits_per_video']:>7.2f} {100 * r['device_idle_share']:>7.1f}%"
              f" {r['device_call_mean_s']:>7.3f}")
    print(f"largest device count with efficiency >= 0.95: {result['largest_devices_at_0.95']}"
          " (simulated devices and cached views; see the docstring)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
