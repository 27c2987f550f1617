"""Model-only throughput of Video Swin on one device: batch x precision (x compile), and decode.

    python benchmarks/gpu.py [--model small|tiny] [--device cuda|cpu] [--batches 1 2 4 8]
        [--precisions fp32 tf32 fp16 bf16] [--inputs uint8 float32] [--compile]
        [--compile-batches 8] [--compile-precisions bf16 fp16] [--seconds S] [--json OUT]
        [--checkpoint PTH] [--decode [--decode-videos N] [--decode-procs P]]

Each cell (input kind, batch B, precision, compile) opens harness.backends.torch_backend's
``TorchSession`` on a model with the same weights (random, seeded; or ``--checkpoint``), feeds
it B random K400-shaped videos (Swin-S: 12 views of 3x32x224x224) per call, and reports:

- videos/s: B x calls / summed call time (a call includes the host->device copy, on-device
  normalization for uint8 input, the forward pass and the logits' copy back);
- p50 / p99 ms: latency per call (``--seconds`` per cell, at least ``--min-calls`` calls);
- peak GiB: ``torch.cuda.max_memory_allocated`` during the timed calls (CUDA only);
- max |Δprob|: the largest difference of softmax probabilities (any view, any class) from
  the eager fp32 session on the same input and batch; top-1 agree: fraction of views whose
  argmax matches fp32. With random weights the logits are nearly flat, so Δprob there is a
  smoke test: give ``--checkpoint`` (the real Swin-S weights) for numbers that mean something.

``--decode`` then times ``harness.data.decode.ViewDecoder`` (the Swin-S test pipeline) on
K400-like synthetic clips (340x256, 10 s, 30 fps; harness.data.synthetic): videos/s on one
core and on ``--decode-procs`` processes, or says why it is skipped (no decord/PyAV/cv2).

Needs only PyTorch and NumPy (plus cv2 and decord or PyAV for ``--decode``): no Ray, no
mmengine, no network. The model and pipeline are plain dicts below, kept equal to
configs/swin_small_k400.py and configs/swin_tiny_test.py by tests/test_gpu_benchmark.py.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")

# configs/swin_small_k400.py and configs/swin_tiny_test.py, as plain data (no mmengine here).
NORM = dict(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375), to_bgr=False)
SMALL_MODEL = dict(
    type="Recognizer3D",
    backbone=dict(type="SwinTransformer3D", patch_size=(2, 4, 4), embed_dim=96, depths=[2, 2, 18, 2],
                  num_heads=[3, 6, 12, 24], window_size=(8, 7, 7), mlp_ratio=4.0, qkv_bias=True,
                  qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, patch_norm=True),
    cls_head=dict(type="I3DHead", in_channels=768, num_classes=400, spatial_type="avg", dropout_ratio=0.5),
    test_cfg=dict(average_clips="prob", max_testing_views=4))
TINY_MODEL = dict(
    type="Recognizer3D",
    backbone=dict(type="SwinTransformer3D", patch_size=(2, 4, 4), embed_dim=24, depths=[2, 2, 2, 2],
                  num_heads=[1, 2, 3, 4], window_size=(4, 7, 7), mlp_ratio=2.0, qkv_bias=True,
                  qk_scale=None, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.1, patch_norm=True),
    cls_head=dict(type="I3DHead", in_channels=192, num_classes=8, spatial_type="avg", dropout_ratio=0.5),
    test_cfg=dict(average_clips="prob"))
SMALL_PIPELINE = [
    dict(type="DecordInit"),
    dict(type="SampleFrames", clip_len=32, frame_interval=2, num_clips=4, test_mode=True),
    dict(type="DecordDecode"),
    dict(type="Resize", scale=(-1, 224)),
    dict(type="ThreeCrop", crop_size=224),
    dict(type="Flip", flip_ratio=0),
    dict(type="Normalize", **NORM),
    dict(type="FormatShape", input_format="NCTHW"),
    dict(type="Collect", keys=["imgs", "label"], meta_keys=[]),
    dict(type="ToTensor", keys=["imgs"]),
]
MODELS = {  # name: (config file, model dict, views per video, view shape (3, T, H, W))
    "small": ("swin_small_k400.py", SMALL_MODEL, 12, (3, 32, 224, 224)),
    "tiny": ("swin_tiny_test.py", TINY_MODEL, 6, (3, 8, 64, 64)),
}


def model_spec(name: str, checkpoint: str | None):
    from harness.backends.base import ModelSpec
    from harness.config import Normalization

    _, model_cfg, views, view_shape = MODELS[name]
    return ModelSpec(backend="torch", path=None, views_per_video=views, average_clips="prob",
                     norm=Normalization(NORM["mean"], NORM["std"], NORM["to_bgr"]),
                     num_classes=model_cfg["cls_head"]["num_classes"], identity=f"bench-{name}",
                     model_cfg=model_cfg, view_shape=view_shape,
                     checkpoint=str(Path(checkpoint).resolve()) if checkpoint else None)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def machine(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "host": platform.node()}
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    else:
        info.update(gpu=None, threads=torch.get_num_threads())
    return info


class Bench:
    def __init__(self, args) -> None:
        import torch

        self.torch, self.args = torch, args
        self.kind = "gpu" if args.device == "cuda" else "cpu"
        self.spec = model_spec(args.model, args.checkpoint)
        rng = np.random.default_rng(0)
        self.pool = rng.integers(0, 256, size=(max(args.batches), self.spec.views_per_video,
                                               *self.spec.view_shape), dtype=np.uint8)
        self._host = None

    def videos(self, kind: str, batch: int) -> np.ndarray:
        if kind == "uint8":
            return self.pool[:batch]
        if self._host is None:  # what InferenceActor._prepare gives a float32 session
            self._host = self.spec.norm.apply(self.pool, channel_axis=2).astype(np.float32)
        return self._host[:batch]

    def open(self, precision: str, batch: int, kind: str, compile: bool):
        from harness.backends.torch_backend import TorchSession

        self.torch.manual_seed(self.args.seed)  # same random weights in every cell
        return TorchSession(self.spec, self.kind, 0, self.args.threads, precision=precision,
                            compile=compile, uint8_input=kind == "uint8", batch=batch)

    def free(self, session) -> None:
        session.close()
        gc.collect()
        if self.kind == "gpu":
            self.torch.cuda.empty_cache()
        if session.compiled:  # or the next compiled cell may hit dynamo's recompile limit
            self.torch._dynamo.reset()

    def cell(self, precision: str, batch: int, kind: str, compile: bool, reference,
             timed: bool = True) -> tuple[dict, np.ndarray | None]:
        """One row, and the cell's logits on its input (for fp32: the reference; not
        ``timed``: the logits only)."""
        torch, args = self.torch, self.args
        row = {"model": args.model, "device": args.device, "input": kind, "batch": batch,
               "precision": precision, "compile": compile}
        session = None
        try:
            start = time.perf_counter()
            session = self.open(precision, batch, kind, compile)
            row["open_s"] = round(time.perf_counter() - start, 2)  # compile included
            row["effective_precision"] = session.effective_precision
            x = self.videos(kind, batch)
            logits = session.run(x)
            if not timed:
                return row, logits
            for _ in range(args.warmup):
                session.run(x)
            if self.kind == "gpu":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            times: list[float] = []
            budget = time.perf_counter() + args.seconds
            while len(times) < args.min_calls or (time.perf_counter() < budget and len(times) < args.max_calls):
                t = time.perf_counter()
                last = session.run(x)
                times.append(time.perf_counter() - t)
            row.update(calls=len(times), videos_per_s=round(batch * len(times) / sum(times), 3),
                       p50_ms=round(float(np.percentile(times, 50)) * 1e3, 2),
                       p99_ms=round(float(np.percentile(times, 99)) * 1e3, 2),
                       peak_mem_gib=(round(torch.cuda.max_memory_allocated() / 2**30, 2)
                                     if self.kind == "gpu" else None))
            # fp32 (the reference): its last timed call against its first, run to run
            against = last if precision == "fp32" and not compile else reference
            if against is None:
                row["note"] = "no fp32 reference (its cell failed): no Δprob"
            else:
                p, q = softmax(logits), softmax(against)
                row["max_dprob"] = float(np.abs(p - q).max())
                row["top1_agree"] = float((logits.argmax(1) == against.argmax(1)).mean())
            return row, logits
        except Exception as exc:  # noqa: BLE001  one failing cell (OOM, compile) must not lose the table
            oom = type(exc).__name__ == "OutOfMemoryError"
            row["error"] = "out of memory" if oom else f"{type(exc).__name__}: {exc}"[:300]
            return row, None
        finally:
            if session is not None:
                self.free(session)

    def run(self) -> list[dict]:
        args, rows = self.args, []
        for kind in args.inputs:
            for batch in args.batches:
                fp32_row, reference = self.cell("fp32", batch, kind, False, None,
                                                timed="fp32" in args.precisions)
                if "fp32" in args.precisions or fp32_row.get("error"):
                    rows.append(fp32_row)
                    emit(fp32_row)
                # (the fp32 cell runs even when not listed: it is every cell's reference)
                cells = [(p, False) for p in args.precisions if p != "fp32"]
                if args.compile and batch in args.compile_batches:
                    cells += [(p, True) for p in args.precisions if p in args.compile_precisions]
                for precision, compile in cells:
                    row, _ = self.cell(precision, batch, kind, compile, reference)
                    rows.append(row)
                    emit(row)
        return rows


COLUMNS = [("input", "input", "{}"), ("batch", "B", "{}"), ("precision", "prec", "{}"),
           ("compile", "compile", "{}"), ("videos_per_s", "videos/s", "{:.2f}"),
           ("p50_ms", "p50 ms", "{:.1f}"), ("p99_ms", "p99 ms", "{:.1f}"),
           ("peak_mem_gib", "peak GiB", "{:.2f}"), ("max_dprob", "max|Δprob|", "{:.2e}"),
           ("top1_agree", "top1 agree", "{:.3f}"), ("calls", "calls", "{}"), ("open_s", "open s", "{:.1f}")]


def emit(row: dict) -> None:
    if row.get("error"):
        print(f"  {row['input']} B={row['batch']} {row['precision']} compile={row['compile']}: {row['error']}",
              flush=True)
        return
    print("  " + "  ".join(f"{label}={fmt.format(row[key]) if row.get(key) is not None else '-'}"
                           for key, label, fmt in COLUMNS), flush=True)


def table(rows: list[dict]) -> str:
    head = "| " + " | ".join(label for _, label, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for row in rows:
        if row.get("error"):
            cells = [str(row.get(k, "")) for k, _, _ in COLUMNS[:4]] + [row["error"]] + [""] * (len(COLUMNS) - 5)
        else:
            cells = [fmt.format(row[k]) if row.get(k) is not None else "-" for k, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- decode

def _decode_worker(args: tuple) -> tuple[int, float]:
    paths, seconds = args
    import cv2

    from harness.data.decode import ViewDecoder

    cv2.setNumThreads(1)
    decoder = ViewDecoder(SMALL_PIPELINE, sampling="reference")
    decoder(paths[0])  # warm
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done == 0:
        decoder(paths[done % len(paths)])
        done += 1
    return done, time.perf_counter() - start


def decode_bench(args) -> dict:
    """Decode videos/s on one core and on ``--decode-procs`` processes, or why skipped."""
    try:
        import cv2  # noqa: F401

        from harness.data.decode import ViewDecoder  # noqa: F401
        from harness.data.synthetic import make_dataset
    except ImportError as exc:
        return {"skipped": f"decoder not importable ({exc})"}
    try:
        import decord  # noqa: F401
    except ImportError:
        try:
            import av  # noqa: F401
        except ImportError:
            return {"skipped": "neither decord nor PyAV is installed"}
    n = args.decode_videos
    classes = min(n, 16)
    ds = make_dataset(args.decode_dir, classes=classes, per_class=-(-n // classes), seed=0,
                      profile="k400", train_per_class=0)
    paths = [str(ds.videos / line.split()[0]) for line in ds.val_list.read_text().splitlines()][:n]
    one, wall = _decode_worker((paths, args.decode_seconds))
    result = {"videos": len(paths), "clip": "340x256, 300 frames, 30 fps H.264",
              "per_core_videos_per_s": round(one / wall, 3)}
    procs = args.decode_procs
    if procs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(procs) as pool:
            # each process starts at another video, so they do not all read the same file
            jobs = [(paths[i % len(paths):] + paths[:i % len(paths)], args.decode_seconds)
                    for i in range(procs)]
            out = pool.map(_decode_worker, jobs)
        result.update(procs=procs, all_procs_videos_per_s=round(sum(d / w for d, w in out), 3))
    return result


# ---------------------------------------------------------------- main

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--inputs", nargs="+", choices=("uint8", "float32"), default=["uint8"],
                        help="uint8: views normalized on the device; float32: host-normalized")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd cells (--compile-batches x --compile-precisions)")
    parser.add_argument("--compile-batches", type=int, nargs="+", default=None,
                        help="default: the largest of --batches")
    parser.add_argument("--compile-precisions", nargs="+", choices=PRECISIONS, default=["bf16", "fp16"])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per cell")
    parser.add_argument("--min-calls", type=int, default=3)
    parser.add_argument("--max-calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after the first")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default=None, help="real weights (harness.model.load_checkpoint)")
    parser.add_argument("--json", default=None, help="write machine, arguments and rows here")
    parser.add_argument("--decode", action="store_true", help="also time decoding (needs cv2, decord or PyAV)")
    parser.add_argument("--decode-videos", type=int, default=8)
    parser.add_argument("--decode-seconds", type=float, default=20.0)
    parser.add_argument("--decode-procs", type=int, default=os.cpu_count())
    parser.add_argument("--decode-dir", default=str(REPO / "build" / "bench" / "k400_videos"))
    args = parser.parse_args(argv)
    if args.compile_batches is None:
        args.compile_batches = [max(args.batches)]
    if min(args.batches) < 1:
        parser.error("--batches must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"no CUDA device visible to torch {torch.__version__}; use --device cpu", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    info = machine(args.device)
    print(f"machine: {info.get('gpu') or info['cpu']}, torch {info['torch']}"
          + (f", CUDA {info['cuda']}, cuDNN {info['cudnn']}" if info.get("gpu") else
             f", {info['threads']} threads of {info['cores']} cores")
          + f"; model {args.model}, {MODELS[args.model][2]} views of {'x'.join(map(str, MODELS[args.model][3]))}"
          f" per video, weights {'from ' + args.checkpoint if args.checkpoint else 'random'}", flush=True)
    rows = Bench(args).run()
    print()
    print(table(rows))
    result = {"machine": info, "args": {k: v for k, v in vars(args).items()}, "rows": rows}
    if args.decode:
        result["decode"] = decode_bench(args)
        print("\ndecode:", json.dumps(result["decode"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 1 if any(row.get("error") for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
