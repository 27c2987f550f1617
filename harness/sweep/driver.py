"""Running a sweep: each variant a normal ``harness.run`` run, one after another.

Each variant's run uses harness.run's own steps (prepare -> evaluate -> finish) in its own
folder ``<sweep work dir>/<variant slug>/``, so every run has its summary, report and
predictions (``harness.compare`` works on any two) and resumes as any run does. The builds
are harness.build's, cached by option hash: a second sweep rebuilds nothing. One Ray instance
serves every variant (started here unless one is joined); decoded views never touch disk.

The audit's fp32 reference scores each audited video once per sweep, not once per variant:
its answers are kept in ``<sweep work dir>/_reference/`` (harness.reference_cache, keyed by the
reference model's content and the decoding), and a later variant with the same reference
reads them instead of waiting for the CPU again.

Resume: a variant whose run recorded every video and wrote a summary with its bench loops is
kept as it is (its summary.json is read, nothing runs); a half-done one resumes like a run.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from harness.errors import BuildError
from harness.sweep.measure import Thresholds, VariantResult, from_run, mark_pareto, recommend
from harness.sweep.variants import Variant

log = logging.getLogger("harness.sweep")

SWEEP_FILE = "sweep.json"
AUDIT_ALL = 2 ** 31 - 1      # --audit for "every evaluated video" (audit_indices takes them all)
# the reference answers every variant shares (harness.reference_cache); a leading "_" is no
# variant's folder (slug_of strips it)
REFERENCE_DIR = "_reference"


@dataclass(frozen=True)
class Plan:
    """A sweep resolved before any build: the base run's options, the variants, the verdict."""

    args: argparse.Namespace     # harness.run's options for every variant (the sweep's own too)
    variants: list[Variant]
    backend: str
    work: Path
    thresholds: Thresholds
    command: str                 # the sweep's own command line (for sweep.json and resume)
    base_command: list[str]      # harness.run's arguments every variant shares


def variant_args(base: argparse.Namespace, work: Path, variant: Variant) -> argparse.Namespace:
    """harness.run's options for ``variant``: the base ones, its options, its folder."""
    args = copy.copy(base)
    for key, value in variant.options.items():
        setattr(args, key, value)
    args.work_dir = str(work / variant.slug)
    return args


def variant_command(plan: Plan, variant: Variant) -> str:
    """The harness.run command that builds and runs ``variant`` on the whole list."""
    import shlex

    return "python -m harness.run " + shlex.join(plan.base_command + variant.flags())


def _complete(job) -> dict | None:
    """The run's summary when it already covers every video and its bench loops, else None."""
    from harness.results import SUMMARY_FILE

    path = job.work / SUMMARY_FILE
    if job.todo or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    whole = summary.get("videos_total") == len(job.entries)
    done = summary.get("bench") and not summary.get("interrupted") and not summary.get("stopped")
    return summary if whole and done else None


def run_variant(args: argparse.Namespace,
                reference_cache: Path | None = None) -> tuple[dict, bool]:
    """``(summary, kept)``: run one variant as harness.run does (prepare, evaluate, finish),
    or keep its finished run; its audit reads and adds to ``reference_cache``. Raises what
    harness.run raises (BuildError, RunStopped, ...)."""
    import dataclasses

    from harness import run

    job = run.prepare(args)
    job = dataclasses.replace(job, settings=dataclasses.replace(
        job.settings, reference_cache=reference_cache))
    try:
        kept = _complete(job)
        if kept is not None:
            log.info("kept: %s is finished (its summary.json)", job.work)
            return kept, True
        outcome = run.evaluate(job, run.make_runner(job))
        summary = run.finish(job, outcome)
    finally:
        job.lock.close()
    if outcome.stopped:
        raise run.RunStopped(outcome.stopped, lost=outcome.lost)
    return summary, False


def connect(plan: Plan) -> bool:
    """One Ray instance for the whole sweep; True when it was started here (to shut down)."""
    if plan.args.no_ray:
        return False
    from harness import cluster
    from harness.run import device_plan

    started, _ = cluster.connect(plan.args.address, plan.args.resources, device_plan(plan.args),
                                 plan.args.decoders, other_cpus=1)   # +1: the audit's reference
    return started


@dataclass
class Outcome:
    results: list[VariantResult]
    recommended: VariantResult | None
    interrupted: bool


def run_sweep(plan: Plan, on_variant: Callable[[VariantResult, bool], None] | None = None) -> Outcome:
    """Every variant in turn; sweep.json is rewritten after each (a killed sweep keeps them).
    Stops after a variant a first Ctrl-C interrupted; a second Ctrl-C raises KeyboardInterrupt."""
    from harness import results as hresults
    from harness.run import RunStopped

    lock = hresults.lock_work_dir(plan.work)
    results = [VariantResult(v.name, v.slug, v.options, str(plan.work / v.slug),
                             variant_command(plan, v), status="pending") for v in plan.variants]
    interrupted = False
    started = connect(plan)
    try:
        for variant, result in zip(plan.variants, results):
            kept = False
            try:
                summary, kept = run_variant(variant_args(plan.args, plan.work, variant),
                                            plan.work / REFERENCE_DIR)
            except BuildError as exc:      # this variant's options do not build: the others may
                result.status, result.error = "build failed", str(exc).splitlines()[0]
            except RunStopped as exc:
                if exc.lost:           # no later variant could run either: the sweep stops
                    raise
                result.status, result.error = "stopped", str(exc).splitlines()[0]
            else:
                result.status = "measured"
                if summary.get("interrupted"):
                    result.status, result.error = "interrupted", "resume the sweep to finish it"
                    interrupted = True
                from_run(result, summary, plan.thresholds)
            if result.status != "measured":
                result.passed, result.why_failed = False, [f"{result.status}: {result.error}"]
            write_sweep(plan, results, interrupted)
            if on_variant is not None:
                on_variant(result, kept)
            if interrupted:
                break
    finally:
        if started:
            import ray

            ray.shutdown()
        lock.close()
    return Outcome(results, recommend(results), interrupted)


def sweep_document(plan: Plan, results: list[VariantResult], interrupted: bool) -> dict:
    """sweep.json's content."""
    mark_pareto(results)
    best = recommend(results)
    a = plan.args
    videos = ({"subset": a.subset, "seed": a.seed, "method": "stratified by class"} if a.subset
              else {"limit": a.limit} if a.limit else {"all": True})
    return {
        "sweep": {"command": plan.command, "backend": plan.backend,
                  "devices": f"{a.npus or a.gpus or a.cpus} x {'npu' if a.npus else 'gpu' if a.gpus else 'cpu'}",
                  "videos": videos, "bench_loops": a.bench_loops,
                  "audit": "every evaluated video" if a.audit in (None, AUDIT_ALL) else a.audit,
                  "thresholds": asdict(plan.thresholds),
                  "speed": "videos_per_s: device throughput of the bench loops (the ranking);"
                           " ais_bench_videos_per_s: from the runtime's execute time, where it has"
                           " one; end_to_end_videos_per_s: the evaluation's wall clock",
                  "complete": not interrupted and all(r.status != "pending" for r in results),
                  "simulated_devices": any(r.simulated for r in results)},
        "variants": [asdict(r) for r in results],
        "recommended": None if best is None else {
            "name": best.name, "options": best.options, "command": best.command,
            "videos_per_s": best.videos_per_s, "top1_agreement": best.top1_agreement,
            "work_dir": best.work_dir},
    }


def write_sweep(plan: Plan, results: list[VariantResult], interrupted: bool) -> dict:
    """sweep.json and sweep.html, written whole each time (a reader never sees half)."""
    from harness.sweep.page import write_page

    document = sweep_document(plan, results, interrupted)
    path = plan.work / SWEEP_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    write_page(plan.work, document)
    return document
