"""Compare two builds of the `decord` module (decord 0.6.0 vs decord2) on the same videos.

Needs only numpy and decord, so it runs in a throwaway venv too:

    python -m venv /tmp/dv && /tmp/dv/bin/pip install decord==0.6.0 numpy
    /tmp/dv/bin/python benchmarks/decord_compare.py dump VIDEO_DIR /tmp/decord06.json
    /work/venv/bin/python benchmarks/decord_compare.py dump VIDEO_DIR /tmp/decord2.json
    python benchmarks/decord_compare.py compare /tmp/decord06.json /tmp/decord2.json

``dump`` decodes every video under VIDEO_DIR (one thread, as the reference) twice per
round: all frames in order, and the reference's 4x32 sampled frames (interval 2); it
records a SHA-256 of the frames (or the error) and the median CPU time per video.
``compare`` reports which videos decode to identical frames and the time ratios.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def sampled(n: int) -> list[int]:
    avg = (n - 64 + 1) / 4
    offsets = [int(k * avg + avg / 2) for k in range(4)] if n > 63 else [0] * 4
    return [(o + 2 * j) % n for o in offsets for j in range(32)]


def dump(video_dir: str, out: str, rounds: int = 5) -> None:
    import decord

    try:
        from importlib.metadata import version
        dist = next((f"{d} {version(d)}" for d in ("decord2", "decord") if _has(d)), "?")
    except Exception:  # pragma: no cover
        dist = "?"
    result = {"decord": dist, "videos": {}}
    paths = sorted(p for p in Path(video_dir).rglob("*") if p.suffix in (".mp4", ".mkv", ".webm", ".avi"))
    for path in paths:
        rec: dict = {}
        times: dict[str, list[float]] = {"all": [], "sampled": []}
        for _ in range(rounds):
            for mode in ("all", "sampled"):
                start = time.process_time()
                try:
                    vr = decord.VideoReader(str(path), num_threads=1)
                    n = len(vr)
                    inds = list(range(n)) if mode == "all" else sampled(n)
                    frames = vr.get_batch(inds).asnumpy()
                    del vr
                except Exception as exc:
                    rec[mode] = "error: " + str(exc).strip().splitlines()[-1][:120]
                    continue
                times[mode].append(time.process_time() - start)
                rec[mode] = hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()
                rec[f"{mode}_shape"] = list(frames.shape)
        for mode, ts in times.items():
            rec[f"{mode}_cpu_ms"] = statistics.median(ts) * 1e3 if ts else None
        result["videos"][str(path.relative_to(video_dir))] = rec
    Path(out).write_text(json.dumps(result, indent=1))
    print(f"{dist}: {len(paths)} videos -> {out}")


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version
    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def compare(a_path: str, b_path: str) -> None:
    a, b = json.loads(Path(a_path).read_text()), json.loads(Path(b_path).read_text())
    print(f"A = {a['decord']}, B = {b['decord']}")
    print(f"{'video':44s} {'frames':>7s} {'all A/B ms':>15s} {'sampled A/B ms':>16s}  identical")
    ratios_all, ratios_s = [], []
    for name, ra in a["videos"].items():
        rb = b["videos"].get(name, {})
        same = ra.get("all") == rb.get("all") and ra.get("sampled") == rb.get("sampled")
        status = "yes" if same and not str(ra.get("all")).startswith("error") else (
            "both fail" if str(ra.get("all")).startswith("error") and str(rb.get("all")).startswith("error")
            else f"NO ({ra.get('all', '')[:30]} | {rb.get('all', '')[:30]})")
        fa, fb = ra.get("all_cpu_ms"), rb.get("all_cpu_ms")
        sa, sb = ra.get("sampled_cpu_ms"), rb.get("sampled_cpu_ms")
        if fa and fb:
            ratios_all.append(fa / fb)
        if sa and sb:
            ratios_s.append(sa / sb)
        n = (ra.get("all_shape") or rb.get("all_shape") or ["-"])[0]
        fmt = lambda x: f"{x:7.1f}" if x else "      -"  # noqa: E731
        print(f"{name[:44]:44s} {n!s:>7s} {fmt(fa)}/{fmt(fb)} {fmt(sa)}/{fmt(sb)}  {status}")
    if ratios_all:
        print(f"median CPU time ratio A/B: all frames {statistics.median(ratios_all):.2f},"
              f" sampled frames {statistics.median(ratios_s):.2f} (>1: B faster)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "dump":
        dump(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        compare(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
