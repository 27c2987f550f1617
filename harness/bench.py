"""Pure-inference loops on the live inference actors (the ``ais_bench --loop`` measurement):
the statistics and the terminal table.

The loops run on every actor (at the same time on Ray: ``Runner.bench``), on a
synthetic input of its session's shape and dtype, without reloading anything. Throughput in
videos/s counts the views one call covers (batch x views per call) against the views a video
needs; ``videos_per_call`` (the batch across videos) is reported with each device.

Two times per call. ``mean_ms`` is the harness's call: the host tensor, the copies to and
from the chip and the execution, as a run pays them. Where the runtime keeps its own timer
(aclruntime's ``sumary().exec_time_list``), ``execute_mean_ms`` is the model execution alone,
and ``ais_bench_videos_per_s`` is computed from it the way ais_bench computes its throughput
(1000 x batch / mean execute ms, the batch counted in videos): the number to compare with
the Ascend guide's 0.607 videos/s.
"""

from __future__ import annotations

import numpy as np


def bench_stats(reports: list[dict], loops: int) -> dict:
    """Per-device mean/p50/p99 latency (ms) and throughput, plus the aggregate."""
    devices = []
    for r in reports:
        lat = np.asarray(r["latencies_ms"], np.float64)
        mean = float(lat.mean()) if lat.size else float("nan")
        views_per_s = r["views_per_call"] / (mean / 1000.0) if lat.size and mean > 0 else 0.0
        devices.append({
            "device": r["device"], "node": r["node"], "loops": int(lat.size),
            "mean_ms": mean, "p50_ms": float(np.percentile(lat, 50)) if lat.size else None,
            "p99_ms": float(np.percentile(lat, 99)) if lat.size else None,
            "views_per_call": r["views_per_call"],
            "videos_per_call": r.get("videos_per_call", 1),
            "throughput_videos_per_s": views_per_s / r["views_per_video"],
            **_execute_stats(r),
        })
    out = {"loops": loops, "devices": devices,
           "aggregate_videos_per_s": float(sum(d["throughput_videos_per_s"] for d in devices))}
    if any("ais_bench_videos_per_s" in d for d in devices):
        out["aggregate_ais_bench_videos_per_s"] = float(sum(d.get("ais_bench_videos_per_s", 0.0)
                                                            for d in devices))
    return out


def _execute_stats(report: dict) -> dict:
    """The runtime's own execute times of the loops (``execute_ms``), where it keeps them."""
    executes = np.asarray(report.get("execute_ms") or [], np.float64)
    if not executes.size:
        return {}
    mean = float(executes.mean())
    videos_in_call = report["views_per_call"] / report["views_per_video"]
    return {"execute_mean_ms": mean, "execute_p50_ms": float(np.percentile(executes, 50)),
            "ais_bench_videos_per_s": 1000.0 * videos_in_call / mean if mean > 0 else 0.0}


def add_efficiency(bench: dict, end_to_end_videos_per_s: float | None) -> dict:
    """Pipeline efficiency = end-to-end throughput / the devices' summed pure throughput."""
    aggregate = bench.get("aggregate_videos_per_s") or 0.0
    bench["end_to_end_videos_per_s"] = end_to_end_videos_per_s
    bench["pipeline_efficiency"] = (end_to_end_videos_per_s / aggregate
                                    if end_to_end_videos_per_s and aggregate else None)
    return bench


def format_bench(bench: dict) -> str:
    """The bench table for the terminal (with the runtime's execute time where it has one)."""
    execute = "aggregate_ais_bench_videos_per_s" in bench
    extra = f" {'exec ms':>9} {'ais_bench':>9}" if execute else ""
    lines = [f"{'device':<12} {'node':<24} {'batch':>5} {'mean ms':>9} {'p50 ms':>9} {'p99 ms':>9}"
             f" {'videos/s':>9}{extra}"]
    for d in bench["devices"]:
        row = (f"{d['device']:<12} {str(d['node'])[:24]:<24} {d.get('videos_per_call', 1):>5}"
               f" {d['mean_ms']:9.2f} {d['p50_ms']:9.2f} {d['p99_ms']:9.2f}"
               f" {d['throughput_videos_per_s']:9.3f}")
        if execute:
            row += (f" {d['execute_mean_ms']:9.2f} {d['ais_bench_videos_per_s']:9.3f}"
                    if "execute_mean_ms" in d else f" {'-':>9} {'-':>9}")
        lines.append(row)
    total = f"{'all devices':<43} {'':>9} {'':>9} {'':>9} {bench['aggregate_videos_per_s']:9.3f}"
    if execute:
        total += f" {'':>9} {bench['aggregate_ais_bench_videos_per_s']:9.3f}"
    lines.append(total)
    if execute:
        lines.append("mean ms: the harness's call (host tensor, copies, execution); exec ms: the"
                     " chip's execution alone (sumary()); ais_bench: videos/s from exec ms, as"
                     " ais_bench reports it")
    if efficiency_line(bench):
        lines.append(efficiency_line(bench))
    return "\n".join(lines)


def efficiency_line(bench: dict) -> str | None:
    """The pipeline efficiency with what it means, for the terminal and the report (None
    without an evaluation to compare the loops with)."""
    if not bench.get("end_to_end_videos_per_s") or bench.get("pipeline_efficiency") is None:
        return None
    return (f"end-to-end {bench['end_to_end_videos_per_s']:.3f} videos/s: pipeline efficiency"
            f" {bench['pipeline_efficiency']:.2f} of the loops' {bench['aggregate_videos_per_s']:.3f}"
            " (below 1, the devices waited for decoded clips or shared CPU cores with the decoders)")
