"""``python -m harness.run``: evaluate a Video Swin model over a video list on Ray.

    python -m harness.run --config configs/swin_small_k400.py --checkpoint swin_small.pth --npus 2

Builds (or reuses) the artifact, starts one inference actor per device and CPU decode
workers, streams the list through them, and writes predictions.parquet and
summary.json in the work dir (see docs/running.md). Exit status: 0 done, 1 videos
failed under --strict, 2 a user error (message on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from harness.backends.base import BACKENDS, ModelSpec
from harness.build import sha256_file
from harness.errors import ConfigError, DeviceError, HarnessError
from harness.pipeline import DevicePlan, Scheduler, VideoResult, evaluate_local, start_actors
from harness.report import write_report

log = logging.getLogger("harness.run")

REPO_DIR = Path(__file__).resolve().parents[1]
DEFAULT_BACKEND = {"npu": "om", "gpu": "onnxruntime", "cpu": "onnxruntime"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--demo", action="store_true",
                   help="the embedded demo: a synthetic dataset (made once), the shipped tiny"
                   " checkpoint, 2 CPU actors, benchmark loops, and a self-check of the accuracy")
    p.add_argument("--config", help="mmengine-style config (.py) or a name in configs/")
    model = p.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", help=".pth checkpoint (default: random weights)")
    model.add_argument("--om", help="prebuilt .om (e.g. made by the Ascend guide); implies --backend om")
    model.add_argument("--onnx", help="prebuilt .onnx")
    devices = p.add_mutually_exclusive_group()
    devices.add_argument("--npus", type=int, help="one inference actor per NPU chip (aclruntime)")
    devices.add_argument("--gpus", type=int, help="one inference actor per GPU")
    devices.add_argument("--cpus", type=int, help="N CPU inference actors (one core each)")
    p.add_argument("--backend", choices=BACKENDS, help="default: om for NPUs, onnxruntime otherwise")
    p.add_argument("--address", help="Ray cluster to attach to (default: $RAY_ADDRESS, else start one)")
    p.add_argument("--resources", help="JSON resources to declare on a locally started Ray"
                   " (like ray start --resources), e.g. '{\"NPU\": 2}' on a host without pyACL")
    p.add_argument("--work-dir", help="results folder (default: work_dirs/<config name>)")
    p.add_argument("--build-dir", default="build", help="artifact cache (default: build)")
    p.add_argument("--ann-file", help="override the config's test list")
    p.add_argument("--data-prefix", help="override the config's video folder")
    p.add_argument("--label-map", help="class names, one per line in label order, for the report"
                   " (default: harness.label_map in the config, or configs/label_map_k400.txt"
                   " for 400 classes)")
    p.add_argument("--limit", type=int, help="only the first K videos of the list")
    p.add_argument("--decoders", type=int, help="CPU decode workers (default: the free CPUs, >= 1)")
    p.add_argument("--bench-loops", type=int, default=0, help="pure-inference loops per device")
    p.add_argument("--bench-only", action="store_true", help="only the benchmark loops")
    p.add_argument("--strict", action="store_true", help="exit 1 if any video failed")
    p.add_argument("--no-ray", action="store_true", help="run every stage in this process")
    p.add_argument("--overwrite", action="store_true", help="replace another run's results")
    p.add_argument("--unsafe-load-checkpoint", action="store_true",
                   help="allow a checkpoint that needs full unpickling (trusted files only)")
    p.add_argument("--max-retries", type=int, default=2, help="retries of a video whose worker died")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--flush-every", type=int, default=32,
                   help="rows per predictions part file (a crash loses at most one part)")
    args = p.parse_args(argv)
    if not args.config and not args.demo:
        p.error("--config is required (or --demo)")
    if args.bench_only and not args.bench_loops:
        p.error("--bench-only needs --bench-loops L")
    return args


# ------------------------------------------------------------------ model and data

def resolve_model(cfg, args, plan: DevicePlan) -> tuple[ModelSpec, dict]:
    """The ModelSpec the actors load, and the summary's ``artifact`` entry."""
    from harness.config import average_clips, clip_geometry, model_section, normalization

    backend = args.backend or ("om" if args.om else "onnxruntime" if args.onnx else DEFAULT_BACKEND[plan.kind])
    if backend == "om" and plan.kind != "npu":
        raise ConfigError("the om backend runs on NPUs: use --npus N (or --backend onnxruntime/torch)")
    if backend != "om" and plan.kind == "npu":
        raise ConfigError(f"--npus needs --backend om (got {backend})")
    if args.om and backend != "om" or args.onnx and backend != "onnxruntime":
        raise ConfigError("--om needs --backend om and --onnx needs --backend onnxruntime")
    norm = normalization(cfg)
    config_path = cfg.get("_harness_config_path")
    base = dict(backend=backend, average_clips=average_clips(cfg), mean=norm.mean, std=norm.std,
                to_bgr=norm.to_bgr, num_classes=int(model_section(cfg)["cls_head"]["num_classes"]),
                config_path=config_path)
    given = args.om or args.onnx
    if given:
        path = Path(given).resolve()
        if not path.exists():
            raise ConfigError(f"model file not found: {path}")
        manifest_file = path.parent / "manifest.json"
        manifest = json.loads(manifest_file.read_text()) if manifest_file.exists() else None
        if manifest and manifest.get("om" if args.om else "onnx") == path.name:
            return _spec_from_manifest(manifest, manifest_file, str(path), base)
        identity = sha256_file(path)
        spec = ModelSpec(path=str(path), views_per_video=clip_geometry(cfg).views, identity=identity, **base)
        return spec, {"manifest": None, "hash": identity, "model": str(path)}
    if backend == "torch":
        if not args.checkpoint:
            raise ConfigError("--backend torch needs --checkpoint (random weights would differ per actor)")
        identity = hashlib.sha256((sha256_file(args.checkpoint) + sha256_file(config_path)).encode()).hexdigest()
        spec = ModelSpec(path=None, views_per_video=clip_geometry(cfg).views, identity=identity,
                         checkpoint=str(Path(args.checkpoint).resolve()),
                         unsafe_load_checkpoint=args.unsafe_load_checkpoint, **base)
        return spec, {"manifest": None, "hash": identity, "model": spec.checkpoint}
    from harness.build import build_artifact

    artifact = build_artifact(cfg, args.checkpoint, build_dir=args.build_dir,
                              require_om=(backend == "om"),
                              unsafe_load_checkpoint=args.unsafe_load_checkpoint)
    model_file = artifact.om_path if backend == "om" else artifact.onnx_path
    return _spec_from_manifest(artifact.manifest, Path(artifact.directory) / "manifest.json",
                               str(model_file), base)


def _spec_from_manifest(manifest: dict, manifest_file: Path, model_file: str, base: dict):
    norm = manifest.get("normalization") or {}
    fields = dict(base)
    fields.update(average_clips=manifest.get("average_clips", base["average_clips"]),
                  mean=tuple(norm.get("mean", base["mean"])), std=tuple(norm.get("std", base["std"])),
                  to_bgr=bool(norm.get("to_bgr", base["to_bgr"])),
                  num_classes=manifest.get("num_classes", base["num_classes"]))
    spec = ModelSpec(path=model_file, views_per_video=int(manifest["views_per_video"]),
                     identity=str(manifest["hash"]), manifest_path=str(manifest_file), **fields)
    return spec, {"manifest": str(manifest_file), "hash": manifest["hash"], "model": model_file}


def load_entries(cfg, args):
    """(ann_file, data_prefix, entries) with the CLI overrides and --limit."""
    from harness.config import model_section, test_annotations
    from harness.data import read_list

    ann_file, prefix = test_annotations(cfg)
    ann_file, prefix = args.ann_file or ann_file, args.data_prefix or prefix
    if not Path(ann_file).exists():
        raise ConfigError(f"video list not found: {ann_file} (set data.test.ann_file in the config"
                          " or pass --ann-file)")
    entries = read_list(ann_file, prefix, int(model_section(cfg)["cls_head"]["num_classes"]))
    return ann_file, prefix, entries


# ------------------------------------------------------------------ Ray

def _plan(args) -> DevicePlan:
    for kind in ("npu", "gpu", "cpu"):
        count = getattr(args, kind + "s")
        if count is not None:
            if count < 1:
                raise ConfigError(f"--{kind}s needs a count of at least 1")
            return DevicePlan(kind, count)
    raise ConfigError("say which devices to use: --npus N, --gpus N or --cpus N")


def _worker_env() -> dict[str, str]:
    """Workers get this checkout and the driver's PYTHONPATH in front of their own
    (Ray expands ``${PYTHONPATH}`` in the worker: what the node was started with stays)."""
    paths = [str(REPO_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join([*dict.fromkeys(paths), "${PYTHONPATH}"])}


def connect_ray(args, plan: DevicePlan) -> tuple[bool, str | None]:
    """Attach to or start Ray; returns (started_here, dashboard URL)."""
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): keep the caller's instance
        return False, None
    address = args.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": _worker_env()}
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address:
        context = ray.init(address=address, runtime_env=runtime_env, **quiet)
        return True, context.dashboard_url
    declared = json.loads(args.resources) if args.resources else None
    cores = os.cpu_count() or 1
    cpu_actors = plan.count if plan.kind == "cpu" else 0
    decoders = args.decoders or max(1, cores - cpu_actors)
    # Logical CPUs: the inference actors and the decoders must all run at once, even
    # when that asks for more than the cores (each is single-threaded; the OS shares).
    num_cpus = max(cores, cpu_actors + decoders)
    try:
        context = ray.init(num_cpus=num_cpus, resources=declared, include_dashboard=True,
                           dashboard_host="127.0.0.1", runtime_env=runtime_env, **quiet)
    except Exception as exc:
        raise DeviceError(f"could not start a local Ray instance: {exc}") from exc
    return True, context.dashboard_url


def print_dashboard(url: str | None) -> None:
    if not url:
        return
    if not url.startswith("http"):
        url = "http://" + url
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
    print(f"Ray dashboard: {url}  (token auth: the token is in {token_file}, or run"
          " `ray get-auth-token`; send 'Authorization: Bearer <token>', or set the browser"
          " cookie 'ray-authentication-token')", file=sys.stderr)


def check_cluster(plan: DevicePlan, decoders: int | None) -> int:
    """Fail before any work when the cluster lacks the devices; returns the decoder count."""
    import ray

    total = ray.cluster_resources()
    free = ray.available_resources()
    have = int(total.get(plan.ray_resource, 0))
    found = ", ".join(f"{k} {v:g}" for k, v in sorted(total.items())
                      if k in ("CPU", "GPU", "NPU") or k.startswith("accelerator_type"))
    fix = {
        "npu": "start Ray with the chips declared, e.g. `ray start --head --resources='{\"NPU\": %d}'`"
               " (or `--resources '{\"NPU\": %d}'` here when Ray starts locally), or ask for fewer"
               " with --npus, or use --cpus N / --gpus N",
        "gpu": "start Ray on GPU nodes (`ray start --num-gpus %d`), ask for fewer with --gpus,"
               " or use --cpus N%.0s",
        "cpu": "start Ray with more CPUs (`ray start --num-cpus %d`) or ask for fewer with"
               " --cpus%.0s",
    }[plan.kind]
    if have < plan.count:
        raise DeviceError(f"asked for {plan.count} {plan.ray_resource}(s) but the Ray cluster has"
                          f" {have} (found: {found or 'nothing'}). Fix: "
                          + fix % ((plan.count,) * 2))
    cpus_total = int(total.get("CPU", 0))
    cpu_actors = plan.count if plan.kind == "cpu" else 0
    if decoders is None:
        decoders = max(1, int(free.get("CPU", 0)) - cpu_actors)
    if cpu_actors + decoders > cpus_total:
        raise DeviceError(f"{cpu_actors} CPU inference actor(s) plus {decoders} decode worker(s)"
                          f" need {cpu_actors + decoders} CPUs; the cluster has {cpus_total}."
                          " Fix: fewer --decoders or --cpus, or `ray start --num-cpus N` with more")
    return decoders


# ------------------------------------------------------------------ the run

class Progress:
    """tqdm on stderr: done/total, videos/s, ETA, failures."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.failed = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm
            # In a log file (no terminal) a line every 10 s, not a redraw per video.
            self.bar = tqdm(total=total, initial=initial, unit="video", file=sys.stderr,
                            dynamic_ncols=True, smoothing=0.1,
                            mininterval=0.1 if sys.stderr.isatty() else 10.0)
            self.bar.set_postfix(failed=0)

    def update(self, result: VideoResult) -> None:
        if result.status != "ok":
            self.failed += 1
        if self.bar is not None:
            if result.status != "ok":
                self.bar.set_postfix(failed=self.failed, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _progress(args, entries: list, todo: list) -> Progress:
    return Progress(len(entries), len(entries) - len(todo),
                    enabled=not args.no_progress and not args.bench_only)


def execute(args: argparse.Namespace,
            on_result: Callable[[VideoResult], None] | None = None) -> dict:
    """Do the whole run; returns the summary (also written to the work dir)."""
    from harness import bench as benchmod
    from harness import results
    from harness.config import config_name, load_config

    cfg = load_config(args.config)
    plan = _plan(args)
    entries, todo, ann_file, prefix = [], [], None, None
    if not args.bench_only:  # a bad list fails now, not after a long build
        ann_file, prefix, entries = load_entries(cfg, args)
    spec, artifact_info = resolve_model(cfg, args, plan)
    work = Path(args.work_dir or Path("work_dirs") / config_name(cfg))
    if not args.bench_only:
        identity = results.RunIdentity.for_list(
            ann_file, len(entries), artifact_hash=spec.identity, data_prefix=str(Path(prefix).resolve()),
            backend=spec.backend, config=str(cfg.get("_harness_config_path")))
        if args.limit is not None:  # after the identity: --limit 100 then all of it resumes
            entries = entries[: args.limit]
        resumed = results.prepare_work_dir(work, identity, overwrite=args.overwrite)
        done = results.done_indices(work) if resumed else set()
        todo = [e for e in entries if e.index not in done]
        if done:
            log.info("resuming: %d of %d videos already recorded in %s", len(entries) - len(todo),
                     len(entries), work)
    else:
        work.mkdir(parents=True, exist_ok=True)

    use_ray = not args.no_ray
    started = False
    actors = decoders = None
    descriptions: list[dict] = []
    stats = None
    writer = results.ResultWriter(work, batch_size=args.flush_every) if not args.bench_only else None
    progress = Progress(0, 0, enabled=False)  # the real bar starts once the devices are ready
    start = time.perf_counter()
    processed = 0
    bench = None

    def record(result: VideoResult) -> None:
        nonlocal processed
        processed += 1
        writer.add(result)
        progress.update(result)
        if on_result is not None:
            on_result(result)

    try:
        decoder = None
        if not args.bench_only:
            from harness.data import ViewDecoder
            decoder = ViewDecoder.from_config(cfg)
        if use_ray:
            import ray
            started, url = connect_ray(args, plan)
            print_dashboard(url)
            num_decoders = check_cluster(plan, 0 if args.bench_only else args.decoders)
            actors, decoders, descriptions = start_actors(spec, plan, decoder, num_decoders)
            for d in descriptions:
                log.info("inference actor %s on %s: input %s %s", d["device"], d["node"],
                         d["input_shape"], d["input_dtype"])
            start = time.perf_counter()
            progress = _progress(args, entries, todo)
            if not args.bench_only:
                stats = Scheduler(decoders, actors, max_retries=args.max_retries).run(todo, record)
        else:
            from harness.pipeline import InferenceActor
            actors = [InferenceActor(spec, plan.kind, k, 1, metrics=False) for k in range(plan.count)]
            descriptions = [a.describe() for a in actors]
            start = time.perf_counter()
            progress = _progress(args, entries, todo)
            if not args.bench_only:
                stats = evaluate_local(todo, decoder, spec, plan, record, actors=actors)
        wall = time.perf_counter() - start
        if writer is not None:
            writer.close()
        if args.bench_loops:
            bench = benchmod.run_bench(actors, args.bench_loops, use_ray)
            if not args.bench_only:
                benchmod.add_efficiency(bench, processed / wall if wall > 0 and processed else None)
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        if use_ray:
            _release(actors, decoders, started)

    extra = {"retries": stats.retries if stats else 0,
             "actor_deaths": stats.actor_deaths if stats else 0,
             "sessions": descriptions, "work_dir": str(work), "ann_file": ann_file,
             "data_prefix": prefix, "ray": use_ray}
    if args.bench_only:
        summary_path = work / results.SUMMARY_FILE
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        summary["bench"] = bench
        results.write_summary(work, summary)
        write_report(work, class_names(cfg, args))
        return summary
    table = results.read_predictions(work)
    if args.limit is not None:  # rows an earlier, longer run recorded are not this job's
        import pyarrow.compute as pc
        table = table.filter(pc.is_in(table.column("index"),
                                      value_set=pa_array([e.index for e in entries])))
    extra["config"] = str(cfg.get("_harness_config_path"))
    summary = results.summarize(table, wall_s=wall, processed=processed,
                                backend=spec.backend, artifact=artifact_info, bench=bench, extra=extra)
    results.write_summary(work, summary)
    write_report(work, class_names(cfg, args))
    return summary


def class_names(cfg, args) -> list[str]:
    """Class names for the report: --label-map, the config's harness.label_map, or K400's."""
    from harness.config import LABEL_MAP_K400, harness_options, model_section
    from harness.data import load_label_map

    path = args.label_map or harness_options(cfg).label_map
    if path is None and int(model_section(cfg)["cls_head"]["num_classes"]) == 400:
        path = LABEL_MAP_K400
    return load_label_map(path) if path else []


def pa_array(values):
    import pyarrow as pa
    return pa.array(values, pa.int64())


def _release(actors, decoders, started: bool) -> None:
    import ray

    if not ray.is_initialized():
        return
    for handle in (actors or []) + (decoders or []):
        try:
            ray.kill(handle)
        except Exception:  # already gone
            pass
    if started:
        ray.shutdown()


def format_table(summary: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    devices = ", ".join(f"{d['kind']}:{d['id']}@{d['node']} ({d['videos']})" for d in summary["devices"])
    rows = [("top-1", pct(summary["top1"])), ("top-5", pct(summary["top5"])),
            ("mean class accuracy", pct(summary["mean_class_accuracy"])),
            ("videos", f"{summary['videos_ok']} ok / {summary['videos_total']}"),
            ("failed", f"{summary['videos_failed']} {summary['failures'] or ''}".strip()),
            ("throughput", f"{summary['throughput_videos_per_s']:.3f} videos/s"
                           f" ({summary['videos_this_run']} in {summary['wall_s']:.1f} s)"),
            ("devices", devices or "-")]
    return "\n".join(f"{k:<20} {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("harness").setLevel(logging.INFO)  # libraries stay at WARNING
    try:
        if args.demo:
            from harness import demo
            demo.prepare(args)
        summary = execute(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from harness.bench import format_bench

    if not args.bench_only:
        print(format_table(summary))
    if summary.get("bench"):
        print(format_bench(summary["bench"]))
    work = Path(summary.get("work_dir", args.work_dir or "."))
    print(f"results: {work / 'predictions.parquet'}, {work / 'summary.json'}, {work / 'report.html'}")
    manifest = (summary.get("artifact") or {}).get("manifest")
    if manifest:
        print(f"model artifact: {Path(manifest).parent}")
    if args.demo:
        from harness import demo
        if not demo.check(summary):
            return 1
    if args.strict and summary.get("videos_failed"):
        print(f"error: {summary['videos_failed']} video(s) failed (--strict)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
