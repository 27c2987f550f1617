"""Per-video decode time: the harness vs mmaction2 1.2.0's transform chain, one core each.

    python benchmarks/decode.py [--videos 8] [--repeats 5] [--dir build/bench/k400_videos] [--cpu N]

On Kinetics-like synthetic videos (profile k400: 340x256, 10 s, 30 fps H.264, textured
motion) it times, interleaved, per video:

- harness:      ``ViewDecoder`` (configs/swin_small_k400.py: 4 clips x 3 crops x 32 frames)
- ref-uint8:    mmaction2 1.2.0 DecordInit -> (reference sampling) -> DecordDecode ->
                Resize(-1, 224) -> ThreeCrop(224) -> FormatShape('NCTHW'), made contiguous
- ref-float32:  the same chain with the 0.x Normalize (float32 copy + mmcv.imnormalize_ per
                frame, as the Ascend guide's preprocessing runs it) before FormatShape

and prints the median time per video and the per-video ratios (ref / harness), with their
medians over the videos. The views must be identical (uint8) and equal to the float32 chain
after normalization; otherwise the script fails. ``--check`` also fails when the targets
(>= 2.5x vs ref-float32, >= 1.0x vs ref-uint8) are missed.
Every library runs with one thread (OpenCV, decord num_threads=1, OpenMP/BLAS); ``--cpu N``
also pins the process to core N.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy/cv2 load their thread pools

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from harness.config import load_config, normalization, test_pipeline  # noqa: E402
from harness.data import ViewDecoder, read_list  # noqa: E402
from harness.data.synthetic import make_dataset  # noqa: E402

TARGET_FLOAT32, TARGET_UINT8 = 2.5, 1.0


class ReferenceChain:
    """mmaction2 1.2.0's transforms, fed the reference (0.x) frame indices."""

    def __init__(self, decoder: ViewDecoder, mean, std):
        from mmaction_ref import require_mmaction

        require_mmaction()
        import mmcv
        from mmaction.datasets import transforms as T

        plan = decoder.plan
        self.decoder, self.imnormalize_ = decoder, mmcv.imnormalize_
        self.clip_len, self.num_clips = plan.clip_len, plan.num_clips
        self.init, self.decode = T.DecordInit(num_threads=1), T.DecordDecode()
        self.resize = T.Resize(scale=(-1, int(plan.resize[2])))
        self.crop = T.ThreeCrop(crop_size=plan.crop[1])
        self.format = T.FormatShape("NCTHW")
        self.mean, self.std = np.array(mean, np.float64), np.array(std, np.float64)

    def __call__(self, path: str, float32: bool) -> np.ndarray:
        r = self.init.transform(dict(filename=path, start_index=0, modality="RGB"))
        r.update(frame_inds=self.decoder.frame_indices(r["total_frames"]).astype(np.int32),
                 clip_len=self.clip_len, num_clips=self.num_clips)
        r = self.crop.transform(self.resize.transform(self.decode.transform(r)))
        if float32:  # mmaction2 0.x Normalize, as in the reference repository
            imgs = r["imgs"]
            out = np.empty((len(imgs), *imgs[0].shape), dtype=np.float32)
            for i, img in enumerate(imgs):
                out[i] = img
            for img in out:
                self.imnormalize_(img, self.mean, self.std, False)
            r["imgs"] = out
        return np.ascontiguousarray(self.format.transform(r)["imgs"])


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process: all its threads, decord's included)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=str(REPO / "build" / "bench" / "k400_videos"))
    parser.add_argument("--config", default=str(REPO / "configs" / "swin_small_k400.py"))
    parser.add_argument("--cpu", type=int, default=None, help="pin to this core")
    parser.add_argument("--check", action="store_true", help="exit 1 if a speed target is missed")
    args = parser.parse_args(argv)

    cv2.setNumThreads(1)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    cfg = load_config(args.config)
    decoder = ViewDecoder(test_pipeline(cfg), sampling="reference")
    norm = normalization(cfg)
    ref = ReferenceChain(decoder, norm.mean, norm.std)
    ds = make_dataset(args.dir, classes=min(args.videos, 16), per_class=-(-args.videos // min(args.videos, 16)),
                      seed=0, profile="k400", train_per_class=0)
    paths = [e.path for e in read_list(ds.val_list, ds.videos)][: args.videos]

    # Correctness first (also warms caches): identical uint8 views, same float32 values.
    for path in paths:
        ours = decoder(path)
        if not np.array_equal(ours, ref(path, False)):
            print(f"FAIL: views differ from the reference chain for {path}")
            return 1
        if not np.allclose(norm.apply(ours, channel_axis=1), ref(path, True), atol=1e-5):
            print(f"FAIL: float32 chain differs after normalization for {path}")
            return 1

    runs = {"harness": (decoder,), "ref-uint8": (ref, False), "ref-float32": (ref, True)}
    times = {name: {p: [] for p in paths} for name in runs}
    cpu_times = {name: {p: [] for p in paths} for name in runs}
    order = list(runs)
    for rep in range(args.repeats):
        for i, path in enumerate(paths):
            k = (rep + i) % len(order)
            for name in order[k:] + order[:k]:  # rotate who goes first
                fn, *extra = runs[name]
                wall, cpu = timed(fn, path, *extra)
                times[name][path].append(wall)
                cpu_times[name][path].append(cpu)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible,"
          f" load average {os.getloadavg()[0]:.1f}, pinned={args.cpu}; {len(paths)} videos x"
          f" {args.repeats} interleaved runs, 340x256, 300 frames, medians per video")
    ok = True
    for label, table in (("wall", times), ("cpu", cpu_times)):
        med = {name: [statistics.median(table[name][p]) for p in paths] for name in runs}
        r_f32 = [f / h for f, h in zip(med["ref-float32"], med["harness"])]
        r_u8 = [u / h for u, h in zip(med["ref-uint8"], med["harness"])]
        print(f"\n{label} time  {'harness ms':>10s} {'ref-u8 ms':>10s} {'ref-f32 ms':>10s} {'x f32':>6s} {'x u8':>6s}")
        for j, path in enumerate(paths):
            print(f"{Path(path).parent.name[:10]:10s} {med['harness'][j] * 1e3:10.1f} {med['ref-uint8'][j] * 1e3:10.1f}"
                  f" {med['ref-float32'][j] * 1e3:10.1f} {r_f32[j]:6.2f} {r_u8[j]:6.2f}")
        f32, u8 = statistics.median(r_f32), statistics.median(r_u8)
        print(f"{label}: median ratio vs ref-float32 {f32:.2f}x (target >= {TARGET_FLOAT32}x),"
              f" vs ref-uint8 {u8:.2f}x (target >= {TARGET_UINT8}x)")
        ok = ok and f32 >= TARGET_FLOAT32 and u8 >= TARGET_UINT8
    print("views identical: yes")
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
