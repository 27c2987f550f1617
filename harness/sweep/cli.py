"""``python -m harness.sweep``: the command line, the plan it makes, and the terminal table.

Takes harness.run's options (the same model, data, device and Ray options: its own parser)
plus the sweep's: ``--vary KEY=V1,V2`` (repeatable: the cross product) or ``--variants FILE``,
``--all-videos``, ``--alpha``. Exit status: 0 a variant passes (the recommendation is
printed), 1 none passes, 2 a user error (one sentence on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from harness import cli
from harness.errors import ConfigError, HarnessError
from harness.sweep import variants as hvariants
from harness.sweep.driver import AUDIT_ALL, SWEEP_FILE, Plan, run_sweep, variant_args
from harness.sweep.measure import ALPHA, Thresholds, VariantResult, ranked, verdict

DEFAULT_SUBSET = 200
# harness.run options that say how the sweep measures, not what the recommended run is
SWEEP_SHAPED = {"work_dir", "subset", "limit", "seed", "audit", "bench_loops", "no_progress",
                "overwrite", "help", "verbose", "quiet"}
_DESCRIPTION = ("Which build options are fastest without losing accuracy: each variant built"
                " (cached), benchmarked and evaluated on the same videos with an fp32 audit;"
                " the fastest that passes is recommended (docs/build.md, \"Choosing build options\").")


def _parser() -> argparse.ArgumentParser:
    from harness import run

    p = run._parser()
    p.prog, p.description = "python -m harness.sweep", _DESCRIPTION
    p.usage = ("python -m harness.sweep CONFIG CHECKPOINT (--npus N | --gpus N | --cpus N)\n"
               "       (--vary KEY=V1,V2 ... | --variants FILE) [options]")
    p.epilog = (f"keys: {', '.join(hvariants.KNOWN_KEYS)} (a flag's words: --precision-mode is"
                " precision_mode). Outputs in the work dir: sweep.json, sweep.html, one run"
                " folder per variant")
    p.set_defaults(bench_loops=20)
    group = p.add_argument_group("the sweep")
    what = group.add_mutually_exclusive_group()
    what.add_argument("--vary", action="append", metavar="KEY=V1,V2",
                      help="an option and its values (repeatable: every combination), e.g."
                      " precision_mode=force_fp16,must_keep_origin_dtype")
    what.add_argument("--variants", metavar="FILE", help="named variants: a JSON or YAML list of"
                      " {\"name\": ..., \"options\": {KEY: VALUE}}")
    group.add_argument("--all-videos", action="store_true",
                       help=f"evaluate every video of the list (default: --subset {DEFAULT_SUBSET},"
                       " stratified by class)")
    group.add_argument("--alpha", type=cli.fraction, default=ALPHA,
                       help="a variant whose accuracy is below the fp32 reference's with McNemar"
                       f" p < alpha fails (default {ALPHA}); agreement and |Δprob| thresholds are"
                       " the audit's (harness.run.audit_min_top1_agreement, audit_max_prob_diff)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked: a refusal is argparse's one-line error and exit 2."""
    p = _parser()
    args = p.parse_args(argv)
    cli.merge_positional_model(p, args)     # CONFIG CHECKPOINT, as harness.run takes them
    for given, flag in ((args.demo, "--demo"), (args.om, "--om"), (args.onnx, "--onnx"),
                        (args.bench_only, "--bench-only")):
        if given:
            p.error(f"{flag} does not go with a sweep: it builds each variant from --checkpoint"
                    " (or --random-weights) and evaluates it")
    if not args.config:
        p.error("--config is required")
    if not (args.checkpoint or args.random_weights):
        p.error("say which weights to build: --checkpoint PTH (or --random-weights, for plumbing)")
    if not (args.vary or args.variants):
        p.error("say what to vary: --vary KEY=V1,V2 (repeatable) or --variants FILE; keys: "
                + ", ".join(hvariants.KNOWN_KEYS))
    if args.all_videos and (args.subset or args.limit):
        p.error("--all-videos, --subset and --limit choose the videos three ways: give one")
    if args.subset and args.limit:
        p.error("--subset and --limit choose the videos two ways: give one")
    if args.bench_loops < 1:
        p.error("--bench-loops must be at least 1: the sweep ranks variants by their speed there")
    if args.audit == 0:
        p.error("--audit must be at least 1: the sweep judges each variant by its audit"
                " (default: every evaluated video)")
    if not (args.subset or args.limit or args.all_videos):
        args.subset = DEFAULT_SUBSET
    if args.audit is None:
        args.audit = AUDIT_ALL
    return args


def base_command(args: argparse.Namespace) -> list[str]:
    """harness.run's arguments this sweep was given, less the ones that shape the sweep."""
    from harness import run

    out: list[str] = []
    for action in run._parser()._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in SWEEP_SHAPED or value in (None, action.default):
            continue
        flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
        if action.nargs == 0:
            out.append(flag)
        elif isinstance(value, dict) and action.dest == "cfg_options":
            out += [flag, *(f"{k}={v}" for k, v in value.items())]
        elif isinstance(value, dict):
            import json

            out += [flag, json.dumps(value)]
        else:
            out += [flag, str(value)]
    return out


def make_plan(args: argparse.Namespace, command: str) -> Plan:
    """The variants and what judges them, every user error found before any build."""
    from harness.config import config_name, harness_options, load_config
    from harness.run import DEFAULT_BACKEND, device_plan

    kind = device_plan(args).kind
    backend = args.backend or DEFAULT_BACKEND[kind]
    if args.vary:
        variants = hvariants.cross_product(hvariants.parse_vary(args.vary))
    else:
        variants = hvariants.load_variants(args.variants)
    fixed = {key: getattr(args, key) for key in hvariants.KNOWN_KEYS}
    hvariants.check_variants(variants, backend, fixed)
    cfg = load_config(args.config, args.cfg_options)
    work = Path(args.work_dir or Path("work_dirs") / f"{config_name(cfg)}-sweep")
    for variant in variants:     # the config's checks of each combination (ATC's rules)
        v = variant_args(args, work, variant)
        try:
            options = harness_options(cfg, torch={"precision": v.precision,
                                                  "compile": v.torch_compile or None,
                                                  "uint8_input": v.uint8_input or None},
                                      **cli.build_overrides(v))
        except ConfigError as exc:
            raise ConfigError(f"variant {variant.name!r}: {exc}") from None
    audit = options.run    # the audit's thresholds: the config's, the same for every variant
    return Plan(args, variants, backend, work,
                Thresholds(audit.audit_min_top1_agreement, audit.audit_max_prob_diff, args.alpha),
                command, base_command(args))


# ------------------------------------------------------------------ terminal output

def _num(value: float | None, fmt: str) -> str:
    """``value`` in ``fmt`` (e.g. '9.3f'); a dash as wide when there is none."""
    return format("-", ">" + fmt.split(".")[0]) if value is None else format(value, fmt)


def format_table(results: list[VariantResult]) -> str:
    """The variants, fastest first, with why each failing one failed."""
    width = max([len("variant")] + [len(r.name) for r in results])   # names whole, never cut
    lines = [f"{'variant':<{width}} {'videos/s':>9} {'ais_bench':>9} {'e2e':>7} {'top-1':>7}"
             f" {'agree':>7} {'max|Δp|':>9} {'McNemar p':>9}  verdict"]
    for r in ranked(results):
        ref = r.reference or {}
        lines.append(f"{r.name:<{width}} {_num(r.videos_per_s, '9.3f')} {_num(r.ais_bench_videos_per_s, '9.3f')}"
                     f" {_num(r.end_to_end_videos_per_s, '7.2f')} {_num(r.top1, '7.3f')}"
                     f" {_num(r.top1_agreement, '7.3f')} {_num(r.max_abs_prob_diff, '9.2g')}"
                     f" {_num(ref.get('p_value'), '9.2g')}  {verdict(r)}")
        lines += [f"{'':<{width + 2}}why: {why}" for why in r.why_failed]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from harness.ray_link import RayLost
    from harness.run import Interrupts

    args = parse_args(argv)
    cli.setup_logging(args)
    command = "python -m harness.sweep " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        plan = make_plan(args, command)
        print(f"sweep: {len(plan.variants)} variant(s) into {plan.work}", file=sys.stderr)

        def said(result: VariantResult, kept: bool) -> None:
            how = "kept (finished earlier)" if kept else result.status
            print(f"variant {result.name}: {how}", file=sys.stderr)

        with Interrupts():   # Ctrl-C and SIGTERM act while building and connecting too
            outcome = run_sweep(plan, said)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, RayLost) or getattr(exc, "lost", False):
            print(f"finished variants are kept; resume with: {command}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stopped. Finished variants are kept; resume with: {command}", file=sys.stderr)
        return 130
    print(format_table(outcome.results))
    if any(r.simulated for r in outcome.results):
        print("warning: SIMULATED DEVICES (tests/doubles): these speeds and accuracies are not an"
              " NPU's", file=sys.stderr)
    print(f"results: {plan.work / SWEEP_FILE}, {plan.work / 'sweep.html'}")
    if outcome.interrupted:
        print(f"interrupted: resume with: {command}", file=sys.stderr)
        return 130
    best = outcome.recommended
    if best is None:
        print("no variant passes the thresholds: see each one's 'why' above", file=sys.stderr)
        return 1
    print(f"recommended: {best.name} ({best.videos_per_s:.3f} videos/s on the devices, top-1"
          f" agreement {best.top1_agreement:.3f}): {best.command}")
    return 0
