"""``python -m harness.run``: evaluate a Video Swin model over a video list on Ray.

    python -m harness.run --config configs/swin_small_k400.py --checkpoint swin_small.pth --npus 2

Builds (or reuses) the artifact, starts one inference actor per device and CPU decode
workers, streams the list through them, and writes predictions.parquet, summary.json and
report.html in the work dir (see docs/running.md). Exit status (also in ``--help``): 0 done;
1 videos failed under --strict (or the demo's self-check failed); 2 a user error (message on
stderr) or a run that stopped (the failure-rate breaker, a lost Ray instance); 130 stopped by
Ctrl-C or SIGTERM (what was recorded is kept: the same command resumes).

The steps, one function each: :func:`parse_args` -> :func:`prepare` (config, list, model,
work dir: everything that can fail before any device work) -> :func:`evaluate` on a runner
(Ray or this process, one interface: harness.runners) -> :func:`finish` (summary, report).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness import cli
from harness.backends import BACKENDS, ModelSpec
from harness.chips import ChipModels
from harness.cluster import DevicePlan
from harness.ray_link import RayLost
from harness.errors import ConfigError, DeviceError, HarnessError
from harness.limits import Timeouts
from harness.progress import Progress
from harness.scheduler import RunStats
from harness.stages import VideoResult

log = logging.getLogger("harness.run")

DEFAULT_BACKEND = {"npu": "om", "gpu": "onnxruntime", "cpu": "onnxruntime"}
_DESCRIPTION = __doc__.split("\n\n")[0].replace("``", "")


def _resources(text: str) -> dict:
    """argparse type for --resources: a JSON object of resource counts."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}); e.g. '{{\"NPU\": 2}}'") from None
    if not isinstance(value, dict) or not all(isinstance(v, (int, float)) for v in value.values()):
        raise argparse.ArgumentTypeError("a JSON object of counts, e.g. '{\"NPU\": 2}'")
    return value


# Short on purpose: argparse prints it above every refusal (the groups below list everything).
USAGE = """\
python -m harness.run CONFIG CHECKPOINT (--npus N | --gpus N | --cpus N) [options]
       python -m harness.run --config CFG (--checkpoint PTH | --om FILE | --onnx FILE |
                             --random-weights) (--npus N | --gpus N | --cpus N) [options]
       python -m harness.run --demo"""
EPILOG = """\
examples:
  python -m harness.run --demo
  python -m harness.run configs/swin_small_k400.py swin_small.pth --npus 2
  python -m harness.run --config configs/swin_small_k400.py --checkpoint swin_small.pth \\
      --cpus 2 --subset 200
  python -m harness.run --config configs/swin_small_k400.py --om swin_small_bs1.om --npus 2 \\
      --bench-loops 100
  Run the same command again to resume. Every option, in detail: docs/running.md.

exit status:
  0    done
  1    videos failed (or the audit's thresholds do not hold) under --strict, or the demo's
       self-check failed
  2    a user error (one line on stderr says what to fix), or a run that stopped: the
       failure-rate breaker, a lost Ray instance (its summary and report are written)
  130  stopped by Ctrl-C or SIGTERM: what was recorded is kept; the same command resumes
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.run", description=_DESCRIPTION, usage=USAGE,
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_version_argument(p)
    p.add_argument("--demo", action="store_true",
                   help="the embedded demo: a synthetic dataset (made once), the shipped tiny"
                   " checkpoint, 2 CPU actors, benchmark loops, and a self-check of the accuracy")
    cli.add_verbosity_arguments(p)

    weights = p.add_argument_group("model and weights")
    cli.add_positional_model(weights)
    cli.add_config_arguments(weights, required=False)
    model = weights.add_mutually_exclusive_group()
    model.add_argument("--checkpoint", metavar="PTH", help=".pth checkpoint to build the model from")
    model.add_argument("--om", metavar="FILE",
                       help="prebuilt .om (e.g. made by the Ascend guide); implies --backend om")
    model.add_argument("--onnx", metavar="FILE", help="prebuilt .onnx; implies --backend onnxruntime")
    model.add_argument("--random-weights", action="store_true",
                       help="build the config's model with random weights (predictions are"
                       " meaningless: for plumbing checks and benchmarks only)")

    hardware = p.add_argument_group("devices")
    devices = hardware.add_mutually_exclusive_group()
    count = cli.int_at_least(1)
    devices.add_argument("--npus", type=count, metavar="N",
                         help="one inference actor per NPU chip (aclruntime)")
    devices.add_argument("--gpus", type=count, metavar="N", help="one inference actor per GPU")
    devices.add_argument("--cpus", type=count, metavar="N", help="N CPU inference actors (one core each)")
    hardware.add_argument("--backend", choices=BACKENDS, help="default: om for NPUs, onnxruntime otherwise")
    hardware.add_argument("--decoders", type=cli.int_at_least(1), metavar="D",
                          help="CPU decode workers (default: one more than the devices to start"
                          " with, then more while the measured rates say the devices wait, up to"
                          " the free CPUs)")

    data = p.add_argument_group("data")
    data.add_argument("--ann-file", metavar="LIST",
                      help="the video list (default: the config's data.test.ann_file)")
    data.add_argument("--data-prefix", metavar="DIR",
                      help="the video folder (default: the config's data.test.data_prefix)")
    data.add_argument("--label-map", metavar="FILE",
                      help="class names, one per line in label order, for the report (default:"
                      " harness.label_map in the config, or configs/label_map_k400.txt for 400"
                      " classes)")
    data.add_argument("--limit", type=cli.int_at_least(1), metavar="K",
                      help="only the first K videos of the list")
    data.add_argument("--subset", type=cli.int_at_least(1), metavar="N",
                      help="a quick estimate: N videos of the list, stratified by class (as even as"
                      " the list allows), chosen by --seed; the report says it is a subset")
    data.add_argument("--seed", type=int, default=0, metavar="S",
                      help="which --subset (default 0; same seed, same videos)")

    output = p.add_argument_group("output and resume")
    output.add_argument("--work-dir", metavar="DIR",
                        help="results folder (default: work_dirs/<config name>); the same"
                        " command with the same work dir resumes")
    output.add_argument("--overwrite", action="store_true",
                        help="delete another run's results in the work dir instead of refusing")
    output.add_argument("--retry-failed", action="store_true",
                        help="on resume, retry every failed video (default: only transient failures:"
                        " read error, timeout, worker died, inference failed)")
    output.add_argument("--strict", action="store_true",
                        help="exit 1 if any video failed or the audit's thresholds do not hold")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("--flush-every", type=cli.int_at_least(1), default=32, metavar="N",
                        help="rows per predictions part file (default 32; a crash loses at most one part)")

    measure = p.add_argument_group("measurements besides the accuracy")
    measure.add_argument("--audit", type=cli.int_at_least(0), metavar="N",
                         help="N videos spread over the list are also scored by an fp32 reference on a"
                         " CPU (onnxruntime on the build's ONNX, or the checkpoint) from the same decoded"
                         " views: agreement and differences in the summary (default: 16 for --npus or"
                         " --gpus, 0 on CPUs; 0: off)")
    measure.add_argument("--bench-loops", type=cli.int_at_least(0), default=0, metavar="L",
                         help="pure-inference calls per device after the evaluation (default 0: none)")
    measure.add_argument("--bench-only", action="store_true", help="only the benchmark loops, no evaluation")

    ray = p.add_argument_group("Ray")
    ray.add_argument("--address", metavar="ADDR",
                     help="Ray cluster to join (default: $RAY_ADDRESS; without either, the"
                     " harness starts its own local instance, even if another cluster runs here)")
    ray.add_argument("--resources", type=_resources, metavar="JSON",
                     help="JSON resources to declare on the local instance the harness starts"
                     " (like ray start --resources), e.g. '{\"NPU\": 2}' on a host without pyACL")
    ray.add_argument("--no-ray", action="store_true",
                     help="run every stage in this process, one video at a time (debugging; the"
                     " tests' oracle)")

    guard = p.add_argument_group("fault handling: the guards of a long run (config: harness.run;"
                                 " docs/running.md)")
    guard.add_argument("--decode-timeout", type=cli.seconds, metavar="S",
                       help="seconds a video may take to decode before it is recorded 'timeout'"
                       f" and its reader abandoned (default {Timeouts.decode:g})")
    guard.add_argument("--infer-timeout", type=cli.seconds, metavar="S",
                       help="seconds a video may take on a device before its actor is restarted"
                       f" and the video retried (default: {Timeouts.infer_factor:g} x the median call,"
                       f" at least {Timeouts.infer_min:g}; {Timeouts.infer_first:g} until 3 calls)")
    guard.add_argument("--max-failure-rate", type=cli.fraction, metavar="F",
                       help="stop (exit 2) when more than this fraction of the videos failed, once"
                       " 50 finished (default 0.5; 1: never); all of the first 50 failing stops too")
    guard.add_argument("--max-retries", type=cli.int_at_least(0), default=2, metavar="R",
                       help="retries of a video whose worker or actor died (default 2)")
    guard.add_argument("--wait", type=cli.seconds, metavar="S",
                       help="seconds to wait for devices other jobs hold (default 600)")

    cli.add_build_arguments(p)
    torch_group = p.add_argument_group("the torch backend (config: harness.torch)")
    torch_group.add_argument("--precision", choices=("fp32", "tf32", "fp16", "bf16"),
                             help="what the torch session computes in (default fp32; tf32 on CUDA"
                             " only; fp16/bf16 by torch.autocast); audited by default when not fp32")
    torch_group.add_argument("--torch-compile", action="store_true", help="torch.compile the model")
    torch_group.add_argument("--uint8-input", action="store_true",
                             help="send uint8 views to the device and normalize there (4x fewer bytes)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: every refusal is argparse's one-line error and exit 2."""
    p = _parser()
    args = p.parse_args(argv)
    cli.merge_positional_model(p, args)
    other = next((f for f, given in (("--om", args.om), ("--onnx", args.onnx),
                                      ("--random-weights", args.random_weights)) if given), None)
    if args.checkpoint_path and other:   # (the flags themselves are exclusive in argparse)
        p.error(f"CHECKPOINT {args.checkpoint_path} and {other} are two models: give one")
    if not args.config and not args.demo:
        p.error("--config is required (or CONFIG first, or --demo)")
    if not args.demo and not (args.checkpoint or args.om or args.onnx or args.random_weights):
        p.error("say which weights to evaluate: --checkpoint PTH, --om FILE, --onnx FILE, or"
                " --random-weights (meaningless predictions, for plumbing checks)")
    given = [flag for flag in [*cli.BUILD_FLAGS, "--atc"] if getattr(args, flag[2:].replace("-", "_"))]
    if (args.om or args.onnx) and given:
        prebuilt = "--om" if args.om else "--onnx"
        p.error(f"{', '.join(given)}: build options have no effect on a prebuilt {prebuilt}")
    if args.bench_only and not args.bench_loops:
        p.error("--bench-only needs --bench-loops L")
    if args.subset and args.limit:
        p.error("--subset and --limit choose the videos two ways: give one")
    return args


# ------------------------------------------------------------------ prepare

@dataclass(frozen=True)
class Settings:
    """What the command line says about this invocation's evaluate and finish phases,
    resolved once by :func:`prepare` (no phase after it reads the raw arguments)."""

    bench_only: bool = False
    bench_loops: int = 0
    flush_every: int = 32
    progress: bool = True
    decoders: int | None = None
    limit: int | None = None
    ray: bool = True
    address: str | None = None
    resources: dict | None = None
    max_retries: int = 2
    label_map: str | None = None      # --label-map, else the config's harness.label_map
    # harness.sweep's: the audit's reference answers kept across its variants (reference_cache)
    reference_cache: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, label_map: str | None) -> "Settings":
        return cls(args.bench_only, args.bench_loops, args.flush_every,
                   not args.no_progress and not args.bench_only, args.decoders, args.limit,
                   not args.no_ray, args.address, args.resources, args.max_retries,
                   args.label_map or label_map)


@dataclass(frozen=True)
class Job:
    """One invocation's work, resolved before any device work starts."""

    cfg: Any
    plan: DevicePlan
    spec: ModelSpec
    artifact: dict              # summary.json's "artifact": manifest, hash, model file
    work: Path
    options: Any                # harness.config.HarnessOptions, with the command line's overrides
    settings: Settings
    lock: Any = None            # the work dir's lock, held while this process runs
    decoder: Any = None         # ViewDecoder; None for --bench-only
    entries: list = field(default_factory=list)   # this job's entries (after --limit)
    todo: list = field(default_factory=list)      # those not recorded yet
    ann_file: str | None = None
    data_prefix: str | None = None
    subset: dict | None = None  # --subset: how the entries were drawn
    audited: list = field(default_factory=list)   # the audit's entries (harness.audit)
    reference: ModelSpec | None = None            # what scores them in fp32
    reference_what: str = ""
    models: ChipModels | None = None   # om: the .om of each chip type (harness.chips)


def prepare(args: argparse.Namespace) -> Job:
    """Config, list, model and work dir; every user error surfaces here, as a HarnessError."""
    from harness import results
    from harness.config import config_name, evaluation_digest, harness_options, load_config

    cfg = load_config(args.config, args.cfg_options)
    options = harness_options(   # the config's options and the flags' overrides, resolved once
        cfg, run={"decode_timeout": args.decode_timeout, "infer_timeout": args.infer_timeout,
                  "max_failure_rate": args.max_failure_rate, "wait": args.wait, "audit": args.audit},
        torch={"precision": args.precision, "compile": args.torch_compile or None,
               "uint8_input": args.uint8_input or None})
    settings = Settings.from_args(args, options.label_map)
    label_names(cfg, settings.label_map)   # a label map of another model fails now, not in the report
    plan = device_plan(args)
    check_ascend_toolkit(args, plan)   # before the list, the build and Ray
    if not args.no_ray:                # a silent --address fails now, not after the build
        from harness.ray_link import check_reachable
        check_reachable(args.address)
    job_entries, ann_file, prefix, list_sha256 = [], None, None, ""
    if not args.bench_only:  # a bad list fails now, not after a long build
        ann_file, prefix, job_entries, list_sha256 = load_entries(cfg, args, options)
    work = Path(args.work_dir or Path("work_dirs") / config_name(cfg))
    lock = results.lock_work_dir(work)       # before the build: a second driver stops at once
    spec, models, artifact = resolve_model(cfg, args, plan, options)
    if args.bench_only:
        return Job(cfg, plan, spec, artifact, work, options, settings, lock, models=models)

    from harness.data import ViewDecoder, storage

    identity = results.RunIdentity(
        spec.identity, list_sha256, len(job_entries), backend=spec.backend,
        data_prefix=prefix.rstrip("/") if storage.is_uri(prefix) else str(Path(prefix).resolve()),
        config_digest=evaluation_digest(cfg))
    # after the identity: --limit 100 (or a --subset) then all of it resumes
    subset = None
    if args.limit is not None:
        job_entries = job_entries[: args.limit]
    elif args.subset is not None:
        from harness.data.filelist import stratified_subset

        subset = {"videos": min(args.subset, len(job_entries)), "of": len(job_entries),
                  "seed": args.seed, "method": "stratified by class: classes take turns, one"
                  " video each, drawn with the seed (harness.data.filelist.stratified_subset)"}
        job_entries = stratified_subset(job_entries, args.subset, args.seed)
    resumed = results.prepare_work_dir(work, identity, overwrite=args.overwrite)
    done = results.done_indices(work, args.retry_failed) if resumed else set()
    audited, reference, reference_what = plan_audit(options.run, spec, plan, job_entries)
    if audited and resumed:   # scored earlier without the audit's pair: score them again
        from harness import audit

        paired, scored = audit.recorded_indices(work), results.ok_indices(work)
        done -= {e.index for e in audited if e.index in scored and e.index not in paired}
    todo = [e for e in job_entries if e.index not in done]
    if done and todo:   # (none to do: execute says so)
        log.info("resuming: %d of %d videos already recorded in %s (%d to do)",
                 len(job_entries) - len(todo), len(job_entries), work, len(todo))
    return Job(cfg, plan, spec, artifact, work, options, settings, lock,
               ViewDecoder.from_config(cfg, options), job_entries, todo, ann_file, prefix, subset,
               audited, reference, reference_what, models)


def decoder_calls(data_prefix: str | None) -> int:
    """Calls a decode worker holds at once: READ_AHEAD when videos come from object storage."""
    from harness.data import storage
    from harness.stages import READ_AHEAD

    return READ_AHEAD if data_prefix and storage.is_uri(data_prefix) else 1


def plan_audit(options, spec: ModelSpec, plan: DevicePlan, entries: list):
    """(the audited entries, the reference's ModelSpec, what it is) for ``--audit``."""
    from harness import audit

    wanted = (options.audit if options.audit is not None
              else audit.default_videos(spec.backend, plan.kind, spec.precision))
    if not wanted:
        return [], None, ""
    reference, what = audit.reference_spec(spec, plan.kind)
    if reference is None:
        log.warning("audit skipped: %s", what)
        return [], None, what
    chosen = set(audit.audit_indices([e.index for e in entries], wanted))
    audited = [e for e in entries if e.index in chosen]
    log.info("audit: %d video(s) also scored by the reference (%s)", len(audited), what)
    return audited, reference, what


def device_plan(args) -> DevicePlan:
    for kind in ("npu", "gpu", "cpu"):
        count = getattr(args, kind + "s")
        if count is not None:
            return DevicePlan(kind, count)
    raise ConfigError("say which devices to use: --npus N, --gpus N or --cpus N")


def check_ascend_toolkit(args, plan: DevicePlan) -> None:
    """``--npus`` on a machine without CANN fails at once, saying what is missing: ATC, which
    builds the .om here (unless ``--om``), and aclruntime, which loads it in the actors when
    they run on this machine (``--no-ray`` or the harness's own instance; the nodes of a
    joined cluster answer for themselves when the actors start)."""
    import importlib.util
    import shutil

    backend = args.backend or ("om" if args.om else "onnxruntime" if args.onnx
                               else DEFAULT_BACKEND[plan.kind])
    if plan.kind != "npu" or backend != "om":
        return                       # (a mismatch is resolve_model's refusal)
    missing = []
    if not args.om and not args.atc and shutil.which("atc") is None:
        missing.append("ATC (no `atc` on PATH)")
    from harness.ray_link import cluster_address

    here = args.no_ray or cluster_address(args.address)[0] is None
    if here and importlib.util.find_spec("aclruntime") is None:
        missing.append("the aclruntime Python binding (ais_bench's wheel, with CANN's pyACL)")
    if missing:
        raise DeviceError(f"--npus needs Ascend's CANN toolkit, and this machine lacks"
                          f" {' and '.join(missing)}: on an Ascend host run `source"
                          " /usr/local/Ascend/ascend-toolkit/set_env.sh` first, or evaluate on"
                          " --cpus N or --gpus N instead")


def resolve_model(cfg, args, plan: DevicePlan, options):
    """``(spec, models, artifact)``: the ModelSpec the actors load (building the artifact if
    needed), for the om backend the model of each chip type (harness.chips.ChipModels: the
    first is for this host's chips, else --soc-version, else Ascend310P3), and the summary's
    ``artifact`` entry; ``options``: the resolved HarnessOptions."""
    backend = args.backend or ("om" if args.om else "onnxruntime" if args.onnx
                               else DEFAULT_BACKEND[plan.kind])
    if backend == "om" and plan.kind != "npu":
        raise ConfigError("the om backend runs on NPUs: use --npus N (or --backend onnxruntime/torch)")
    if backend != "om" and plan.kind == "npu":
        raise ConfigError(f"--npus needs --backend om (got {backend})")
    if args.om and backend != "om" or args.onnx and backend != "onnxruntime":
        raise ConfigError("--om needs --backend om and --onnx needs --backend onnxruntime")
    torch_flags = [f for f, given in (("--precision", args.precision), ("--torch-compile", args.torch_compile),
                                      ("--uint8-input", args.uint8_input)) if given]
    if torch_flags and backend != "torch":
        raise ConfigError(f"{', '.join(torch_flags)} apply to --backend torch; an ONNX's or .om's"
                          " precision is a build option (docs/build.md, \"Precision\")")
    if args.random_weights:
        log.warning("evaluating random weights (--random-weights): the predictions are meaningless")
    models = None
    if args.om or args.onnx:
        spec = ModelSpec.from_model_file(args.om or args.onnx, backend, cfg)
        if backend == "om":
            from harness.chips import ChipModels, om_soc

            soc = om_soc(spec.path)
            models = ChipModels(spec, soc, pinned=f"--om {args.om} was built for {soc}")
    elif backend == "torch":
        if not args.checkpoint:
            raise ConfigError("--backend torch needs --checkpoint (random weights would differ per actor)")
        o = options
        spec = ModelSpec.from_checkpoint(cfg, args.checkpoint, args.unsafe_load_checkpoint,
                                         precision=o.torch.precision, compile=o.torch.compile,
                                         uint8_input=o.torch.uint8_input,
                                         batch=args.batch or o.build.batch)
    else:
        from harness.build import build_artifact
        from harness.chips import DEFAULT_SOC, ChipModels, host_soc

        overrides = cli.build_overrides(args)

        def build(soc: str | None) -> ModelSpec:
            artifact = build_artifact(cfg, args.checkpoint, build_dir=args.build_dir, atc=args.atc,
                                      require_om=(backend == "om"),
                                      unsafe_load_checkpoint=args.unsafe_load_checkpoint,
                                      **{**overrides, "soc_version": soc})
            return ModelSpec.from_artifact(artifact.directory, backend)

        pinned = overrides.get("soc_version") or options.build.soc_version
        soc = (pinned or host_soc() or DEFAULT_SOC) if backend == "om" else None
        spec = build(soc)
        if backend == "om":
            models = ChipModels(spec, soc, build=None if pinned else build,
                                pinned=f"--soc-version {pinned} was given" if pinned else "")
    if models is not None:
        from harness.chips import host_soc

        chips = host_soc()
        if chips:                 # this host's chips: a wrong .om stops here, before Ray starts
            models.spec_for(chips, "this host")
    return spec, models, {"manifest": spec.manifest_path, "hash": spec.identity,
                          "model": spec.path or spec.checkpoint}


def load_entries(cfg, args, options):
    """(ann_file, data_prefix, entries, the list's sha256) with the command line's overrides;
    the list and the videos may be local or in object storage (harness.data.storage)."""
    import hashlib

    from harness.config import model_section, test_annotations
    from harness.data import storage
    from harness.data.filelist import parse_list, read_list_bytes

    ann_file, prefix = test_annotations(cfg)
    ann_file, prefix = args.ann_file or ann_file, args.data_prefix or prefix
    options = options.storage.resolved()
    content = (read_list_bytes(ann_file, options, given_by="--ann-file") if args.ann_file
               else read_list_bytes(ann_file, options))   # (the message names the config's key)
    entries = parse_list(content, ann_file, prefix, int(model_section(cfg)["cls_head"]["num_classes"]))
    if not entries:
        raise ConfigError(f"the video list {ann_file} has no videos (one '<path> <label>' a line);"
                          " make one with `python -m harness.data.filelist VIDEO_FOLDER --out LIST`")
    try:
        found = storage.kind(prefix, options)
    except storage.StorageError as exc:   # a store that refuses (credentials) or does not answer
        raise ConfigError(f"cannot read the video prefix {prefix}: {exc.detail}. Check the"
                          " endpoint ($AWS_ENDPOINT_URL or harness.storage.endpoint_url), the"
                          " credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws) and"
                          " the bucket name (docs/running.md, \"Object storage\")") from None
    if found != "directory":
        what = (f"no object exists under the video prefix {prefix} (a wrong bucket or prefix?)"
                if storage.is_uri(prefix) else f"the video folder {prefix} does not exist here")
        raise ConfigError(f"{what} (videos are read as"
                          " <data_prefix>/<path in the list>). Fix: --data-prefix or"
                          " data.test.data_prefix; on a cluster, run the driver where the videos"
                          " are mounted (e.g. `ray job submit`, docs/running.md)")
    return ann_file, prefix, entries, hashlib.sha256(content).hexdigest()


# ------------------------------------------------------------------ evaluate

@dataclass
class AuditOutcome:
    """What became of the precision audit in this invocation."""

    audited: list                 # the audited entries (none when the reference did not start)
    reference_what: str           # what the reference is, or why the audit was skipped
    incomplete: dict              # index -> why it has no pair (this run)


@dataclass
class Outcome:
    """What the devices did in this invocation."""

    stats: RunStats
    sessions: list[dict]
    wall_s: float
    processed: int
    bench: dict | None
    audit: AuditOutcome
    interrupted: bool = False
    stopped: str | None = None    # why the run stopped before the end of its list
    lost: bool = False            # ... because the Ray instance was lost (the same command resumes)


class RunStopped(HarnessError):
    """The run stopped before the end of its list (what was recorded is reported). ``lost``:
    the Ray instance was lost, so the same command resumes as it is."""

    def __init__(self, message: str, lost: bool = False) -> None:
        super().__init__(message)
        self.lost = lost


def make_runner(job: Job):
    from harness.runners import LocalRunner, RayRunner

    s = job.settings
    if not s.ray:
        return LocalRunner()
    return RayRunner(address=s.address, resources=s.resources, max_retries=s.max_retries,
                     options=job.options.run)


class Interrupts:
    """Stopping the driver by hand, at any stage (:func:`main` installs the handlers for the
    whole command; harness.cluster keeps them through Ray's init, which would replace
    SIGTERM's). Ctrl-C while videos are in flight: the first starts no new video and lets those
    finish (bounded by the timeouts) and be written; the second stops at once. Ctrl-C with
    nothing in flight (loading, building, connecting, starting the actors, the benchmark
    loops) and SIGTERM (``ray job stop``, which sends SIGKILL 3 s later) stop at once. Stopping
    at once still writes what was recorded; the same command resumes."""

    current: "Interrupts | None" = None   # the installed one: signal handlers are the process's

    def __init__(self) -> None:
        self.runner, self.count, self.previous, self.depth = None, 0, {}, 0

    def __enter__(self) -> "Interrupts":
        self.depth += 1
        if self.depth == 1 and threading.current_thread() is threading.main_thread():
            for sig, handler in ((signal.SIGINT, self._ctrl_c), (signal.SIGTERM, self._terminate)):
                self.previous[sig] = signal.signal(sig, handler)
            Interrupts.current = self
        return self

    @contextlib.contextmanager
    def in_flight(self, runner):
        """While ``runner`` evaluates, the first Ctrl-C lets its videos in flight finish."""
        self.runner = runner
        try:
            yield
        finally:
            self.runner = None

    def _ctrl_c(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1 or self.runner is None:
            raise KeyboardInterrupt
        print("\ninterrupted: starting no new video; finishing those in flight (Ctrl-C again to"
              " stop at once)", file=sys.stderr)
        self.runner.stop()

    def _terminate(self, signum, frame) -> None:
        self.count += 1
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        self.depth -= 1
        if self.depth == 0:
            for sig, handler in self.previous.items():
                signal.signal(sig, handler)
            self.previous = {}
            if Interrupts.current is self:
                Interrupts.current = None


def evaluate(job: Job, runner, on_result: Callable[[VideoResult], None] | None = None) -> Outcome:
    """Start the runner, stream the job's videos through it, run the benchmark loops;
    results are written as they arrive (and at least every few seconds), and the runner is
    always closed. A run that cannot go on (the circuit breaker, a pool with nobody left, a
    lost Ray instance) returns an outcome saying why it stopped, for the summary."""
    from harness import bench as benchmod
    from harness import results
    from harness.audit import Auditor
    from harness.breaker import CircuitBreaker
    from harness.runners import Deployment

    s = job.settings
    writer = None if s.bench_only else results.ResultWriter(job.work, batch_size=s.flush_every)
    # A fresh short list is judged at its length; a resume retrying a few failures is not
    # judged by them alone (they may well be the broken files, on --retry-failed).
    window = job.options.run.failure_window
    if len(job.todo) == len(job.entries):
        window = min(window, max(1, len(job.todo)))
    breaker = CircuitBreaker(window=window, max_rate=job.options.run.max_failure_rate,
                             scored_before=bool(results.ok_indices(job.work)))  # (its advice)
    progress = Progress(0, 0, enabled=False)   # the real bar starts once the devices are ready
    processed = 0
    auditor = (Auditor(job.work, job.audited, reference_cache(job))
               if job.audited and not s.bench_only else None)
    audit = AuditOutcome(job.audited, job.reference_what, auditor.incomplete if auditor else {})
    # audited videos whose reference answer an earlier run kept: the reference skips them, and
    # is not started when it would have nothing to do
    todo = {e.index for e in job.todo}
    to_pair = [e.index for e in job.audited if e.index in todo]
    cached = auditor.from_cache(to_pair) if auditor is not None else set()
    if cached:
        log.info("audit: %d of %d video(s) have their reference answer cached", len(cached),
                 len(to_pair))
    need_reference = auditor is not None and not set(to_pair) <= cached
    stats, stopped, sessions, wall, bench = RunStats(), None, [], 0.0, None
    lost = False

    def record(result: VideoResult) -> None:
        nonlocal processed
        processed += 1
        writer.add(result)
        if auditor is not None:
            auditor.device(result)
        progress.update(result)
        if on_result is not None:
            on_result(result)
        breaker.observe(result)

    def tick() -> None:
        writer.flush_if_due()

    interrupts = Interrupts.current or Interrupts()   # (main's, for the whole command)
    try:
        with interrupts:
            sessions = runner.start(Deployment(job.spec, job.plan, job.decoder, s.decoders,
                                               job.reference if need_reference else None,
                                               decoder_calls(job.data_prefix), job.models))
            if simulated_note(sessions):
                log.warning("%s", simulated_note(sessions))
            if auditor is not None and runner.reference_error:
                audit, auditor = AuditOutcome([], runner.reference_error, {}), None
            instance = getattr(runner, "instance", None)   # (Ray's; none in this process)
            if instance is not None:
                print(instance.describe(), file=sys.stderr)
            progress = Progress(len(job.entries), len(job.entries) - len(job.todo),
                                enabled=s.progress)
            start = time.perf_counter()
            on_side = (({e.index for e in audit.audited}, auditor.reference, cached)
                       if auditor else None)
            try:
                if not s.bench_only:
                    with interrupts.in_flight(runner):
                        stats = runner.evaluate(job.todo, record, tick, on_side)
            except (HarnessError, *_ray_errors()) as exc:   # breaker, nobody left, Ray lost
                stats, stopped, lost = runner.stats, str(exc), isinstance(exc, RayLost)
                log.error("the run stopped: %s", exc)
            wall = time.perf_counter() - start
            if writer is not None:
                writer.close()
            if s.bench_loops and not interrupts.count and stopped is None:
                bench = benchmod.bench_stats(runner.bench(s.bench_loops), s.bench_loops)
                if not s.bench_only:
                    benchmod.add_efficiency(bench, processed / wall if wall > 0 and processed else None)
    finally:
        progress.close()
        if writer is not None:
            writer.close()
        runner.close()
    return Outcome(stats, sessions, wall, processed, bench, audit,
                   interrupted=bool(interrupts.count), stopped=stopped, lost=lost)


def reference_cache(job: Job):
    """The sweep's cache of reference answers for this job's reference, or None."""
    if job.settings.reference_cache is None or job.reference is None:
        return None
    from harness.config import evaluation_digest
    from harness.reference_cache import ReferenceCache

    return ReferenceCache.for_reference(job.settings.reference_cache, job.reference,
                                        evaluation_digest(job.cfg))


def _ray_errors() -> tuple[type, ...]:
    """Ray's own errors (a lost GCS or raylet), when Ray is installed."""
    try:
        from ray.exceptions import RayError
    except ImportError:  # pragma: no cover - ray is a dependency
        return ()
    return (RayError,)


# ------------------------------------------------------------------ finish

# What an invocation measured, not what its rows say: kept when a rerun has nothing to do.
TIMING_FIGURES = ("wall_s", "throughput_videos_per_s", "videos_this_run", "bench", "sessions",
                  "simulated_devices", "faults")


def finish(job: Job, outcome: Outcome, timing: dict | None = None) -> dict:
    """summary.json and report.html from this job's rows; returns the summary. ``timing``: an
    earlier summary whose TIMING_FIGURES stay (a rerun that had nothing to do)."""
    from harness import results
    from harness.report import write_report

    if job.settings.bench_only:  # keep the evaluation's summary, add the loops
        path = job.work / results.SUMMARY_FILE
        summary = json.loads(path.read_text()) if path.exists() else {}
        summary["bench"] = outcome.bench
        summary["simulated_devices"] = simulated_note(outcome.sessions)
        summary["work_dir"] = str(job.work)   # (no earlier summary: the results line needs it)
        table = results.job_table(job.work, summary.get("limit"))
    else:
        table = results.job_table(job.work, indices=[e.index for e in job.entries])
        faults = outcome.stats.as_dict()
        open_gop = faults.pop("open_gop")     # (this invocation's files)
        summary = results.summarize(
            table, wall_s=outcome.wall_s, processed=outcome.processed, backend=job.spec.backend,
            artifact=artifact_section(job), bench=outcome.bench, videos_total=len(job.entries),
            extra={"faults": faults, "interrupted": outcome.interrupted, "stopped": outcome.stopped,
                   "decoding": {"seek": job.options.seek, "open_gop_files": open_gop},
                   "sessions": outcome.sessions,
                   "simulated_devices": simulated_note(outcome.sessions),
                   "work_dir": str(job.work), "ann_file": job.ann_file,
                   "data_prefix": job.data_prefix, "limit": job.settings.limit,
                   "ray": job.settings.ray,
                   "subset": job.subset, "audit": audit_section(job, outcome.audit),
                   "config": str(job.cfg.get("_harness_config_path"))})
    if timing:
        summary.update({key: timing[key] for key in TIMING_FIGURES if key in timing})
    results.write_summary(job.work, summary)
    try:
        rows = table.select([c for c in table.column_names if c != "scores"]).to_pylist()
        write_report(job.work, summary, rows, class_names(job))
    except OSError as exc:
        raise results.work_dir_error(job.work, exc) from exc
    return summary


def execute(args: argparse.Namespace,
            on_result: Callable[[VideoResult], None] | None = None) -> dict:
    """The whole run: prepare, evaluate, finish; returns the summary (also in the work dir).
    A run that stopped early still writes its summary and report, then raises RunStopped. With
    nothing left to do it starts nothing (only the loops, for --bench-loops)."""
    job = prepare(args)
    outcome = None
    try:
        if not job.todo and not job.settings.bench_only:   # a rerun of a finished run
            if not job.settings.bench_loops:
                return recorded_summary(job)               # no Ray, no actor
            log.info("%s", nothing_to_do(job, "running only the benchmark loops asked for"))
            job = dataclasses.replace(job, decoder=None, settings=dataclasses.replace(
                job.settings, bench_only=True, progress=False))
        outcome = evaluate(job, make_runner(job), on_result)
        summary = finish(job, outcome)
    finally:
        job.lock.close()      # (the kernel would release it with the process; a caller goes on)
    if outcome.stopped:
        raise RunStopped(f"{outcome.stopped}\n(the summary and report of what was recorded are"
                         f" in {job.work})", lost=outcome.lost)
    return summary


def nothing_to_do(job: Job, then: str) -> str:
    return (f"nothing to do: all {len(job.entries)} videos of the list are recorded in"
            f" {job.work}; {then} (to run them again: --overwrite; to retry the failed ones:"
            " --retry-failed)")


def recorded_summary(job: Job) -> dict:
    """Every video of the job is recorded: summary.json and report.html again from the rows,
    keeping the timing figures of the run that measured them (this invocation measured
    nothing, and a throughput of 0 would overwrite the measurement)."""
    from harness import results

    try:
        earlier = json.loads((job.work / results.SUMMARY_FILE).read_text())
    except (OSError, ValueError):   # none written (a killed driver): the rows still count
        earlier = {}
    log.info("%s", nothing_to_do(job, "the summary keeps the earlier run's timing"))
    idle = Outcome(RunStats(), earlier.get("sessions") or [], 0.0, 0, None,
                   AuditOutcome(job.audited, job.reference_what, {}))
    return finish(job, idle, timing=earlier)


def artifact_section(job: Job) -> dict:
    """summary.json's ``artifact``: the model, and the one of each chip type when several."""
    by_soc = job.models.specs() if job.models is not None else {}
    if len(by_soc) < 2:
        return job.artifact
    return {**job.artifact, "by_soc": {soc: {"hash": spec.identity, "model": spec.path}
                                       for soc, spec in by_soc.items()}}


SIMULATED = ("SIMULATED DEVICES: the chips of this run are test doubles (tests/doubles); its"
             " accuracy and speed are not an NPU's and must not be reported as such")


def simulated_note(sessions: list[dict]) -> str | None:
    """The warning a run on test doubles carries everywhere (terminal, summary, report)."""
    return SIMULATED if any(d.get("simulated") for d in sessions) else None


def audit_section(job: Job, audit: AuditOutcome) -> dict | None:
    """summary.json's ``audit`` (harness.audit), or None when the run audits nothing."""
    from harness.audit import audit_summary

    if not audit.audited:
        return {"skipped": audit.reference_what} if audit.reference_what else None
    o = job.options.run
    return audit_summary(job.work, [e.index for e in audit.audited], audit.reference_what,
                         o.audit_min_top1_agreement, o.audit_max_prob_diff,
                         class_names(job), audit.incomplete)


def class_names(job: Job) -> list[str]:
    """Class names for the report: --label-map, the config's harness.label_map, or K400's."""
    return label_names(job.cfg, job.settings.label_map)


def label_names(cfg, path: str | None) -> list[str]:
    """The label map at ``path`` (else K400's for a 400-class model, else none); a map whose
    length is not the model's class count is a ListError naming both."""
    from harness.config import LABEL_MAP_K400, model_section
    from harness.data import load_label_map

    num_classes = int(model_section(cfg)["cls_head"]["num_classes"])
    if path is None and num_classes == 400:
        path = LABEL_MAP_K400
    return load_label_map(path, num_classes) if path else []


def format_table(summary: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}%"

    def with_ci(key: str) -> str:
        ci = (summary.get("ci95") or {}).get(key)
        return pct(summary[key]) + (f"  (95% CI {pct(ci[0])} - {pct(ci[1])})" if ci else "")

    devices = ", ".join(f"{d['kind']}:{d['id']}@{d['node']} ({d['videos']})" for d in summary["devices"])
    rows = [("top-1", with_ci("top1")), ("top-5", with_ci("top5")),
            ("mean class accuracy", with_ci("mean_class_accuracy"))]
    subset = summary.get("subset")
    if subset:
        rows.append(("subset", f"{subset['videos']} of {subset['of']} videos, stratified by class,"
                               f" seed {subset['seed']}: an estimate, not the full list"))
    rows += [("videos", videos_line(summary)),
            ("failed", f"{summary['videos_failed']} {summary['failures'] or ''}".strip()),
            ("throughput", f"{summary['throughput_videos_per_s']:.3f} videos/s"
                           f" ({summary['videos_this_run']} in {summary['wall_s']:.1f} s)"),
            ("devices", devices or "-")]
    decoding = summary.get("decoding") or {}
    if decoding.get("open_gop_files"):
        rows.append(("open GOP", f"{decoding['open_gop_files']} file(s) decoded with"
                                 f" harness.seek={decoding['seek']!r}: there the reference's seek can"
                                 " return other frames (docs/decoding.md, \"Open GOP\")"))
    rows += audit_rows(summary.get("audit"))
    return "\n".join(f"{k:<20} {v}" for k, v in rows)


def videos_line(summary: dict) -> str:
    """'634 ok of 1,248', and how many the job has not recorded when it did not finish."""
    total = summary["videos_total"]
    line = f"{summary['videos_ok']:,} ok of {total:,}"
    left = total - summary.get("videos_recorded", total)
    if left <= 0:
        return line
    if summary.get("interrupted"):
        return line + f" (interrupted: {left:,} not recorded; the same command resumes)"
    if summary.get("stopped"):
        return line + f" (stopped: {left:,} not recorded; the message above says why and what to run)"
    return line + f" ({left:,} not recorded; the same command resumes)"


def audit_rows(audit: dict | None) -> list[tuple[str, str]]:
    """The terminal table's lines for the precision audit."""
    if not audit:
        return []
    if "skipped" in audit:
        return [("audit", f"skipped: {audit['skipped']}")]
    head = f"{audit['videos_audited']} of {audit['videos_requested']} videos vs {audit['reference']}"
    if audit.get("top1_agreement") is None:
        return [("audit", head + ": none paired yet")]
    lo, hi = audit["top1_agreement_ci95"]
    verdict = "ok" if audit["passed"] else "WARNING: " + "; ".join(audit["warnings"])
    return [("audit", head),
            ("  top-1 agreement", f"{100 * audit['top1_agreement']:.2f}% (95% CI {100 * lo:.1f}% -"
                                  f" {100 * hi:.1f}%); top-5 set {100 * audit['top5_set_agreement']:.1f}%"),
            ("  |Δprob| max/mean", f"{audit['max_abs_prob_diff']:.3g} / {audit['mean_abs_prob_diff']:.3g};"
                                   f" max |Δlogit| {audit['max_abs_logit_diff']:.3g};"
                                   f" cosine min {audit['cosine_similarity_min']:.6f}"),
            ("  verdict", verdict)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args)
    resume = "python -m harness.run " + shlex.join(sys.argv[1:] if argv is None else argv)
    # the demo replaces its results on every run (harness.demo.prepare): no resume to offer
    again = "the demo starts over on its next run" if args.demo else f"resume with: {resume}"
    try:
        with Interrupts():   # Ctrl-C and SIGTERM act at every stage, from here on
            if args.demo:
                from harness import demo
                demo.prepare(args)
            summary = execute(args)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, RayLost) or getattr(exc, "lost", False):
            print(f"what was recorded is kept; {again}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stopped. What was recorded is in the work dir; {again}", file=sys.stderr)
        return 130
    from harness.bench import format_bench

    if not args.bench_only:
        print(format_table(summary))
    if summary.get("bench"):
        print(format_bench(summary["bench"]))
    if summary.get("simulated_devices"):
        print(f"warning: {summary['simulated_devices']}", file=sys.stderr)
    work = Path(summary.get("work_dir", args.work_dir or "."))
    written = ("summary.json", "report.html") if args.bench_only else (   # only what was written
        "predictions.parquet", "summary.json", "report.html")
    print("results: " + ", ".join(str(work / name) for name in written))
    manifest = (summary.get("artifact") or {}).get("manifest")
    if manifest:
        print(f"model artifact: {Path(manifest).parent}")
    if summary.get("interrupted"):
        print(f"interrupted: {summary.get('videos_recorded')} of {summary.get('videos_total')}"
              f" videos recorded; {again}", file=sys.stderr)
        return 130
    if args.demo:
        from harness import demo
        if not demo.check(summary):
            return 1
    audit = summary.get("audit") or {}
    for warning in audit.get("warnings") or []:
        print(f"warning: audit: {warning}", file=sys.stderr)
    if args.strict and summary.get("videos_failed"):
        print(f"error: {summary['videos_failed']} video(s) failed (--strict)", file=sys.stderr)
        return 1
    if args.strict and audit.get("passed") is False:
        print("error: the audit's thresholds do not hold (--strict)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
