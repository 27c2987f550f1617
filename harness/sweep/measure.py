"""What a sweep reports for each variant, whether it passes, and which one it recommends.

Every number comes from the variant's own run directory: ``summary.json`` (top-1 / top-5 with
Wilson intervals, end-to-end videos/s, the bench loops, the audit) and ``audit.parquet`` (the
device's and the fp32 reference's logits of each audited video, from the same decoded views).

- Speed: ``videos_per_s`` is the device throughput of the bench loops (the harness's call,
  every backend has it): what a build option changes, without the decoders in the way. The
  runtime's own execute time gives ``ais_bench_videos_per_s`` where the session has one
  (aclruntime's sumary()); ``end_to_end_videos_per_s`` is the evaluation's wall clock.
- Accuracy against the fp32 reference, on the audited videos: top-1 agreement and max
  |Δprob| (the audit's), and McNemar's exact test of the paired correctness
  (harness.compare, as for two runs).
- Pass: agreement >= the audit's minimum, max |Δprob| <= its maximum (config
  ``harness.run.audit_min_top1_agreement`` / ``audit_max_prob_diff``), and not significantly
  less accurate than the reference (McNemar p >= ``alpha``, when the reference is right on more).
- The recommendation: the fastest variant that passes; the Pareto front of speed against
  agreement is marked for the plot.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from harness.audit import NOTHING_TO_AUDIT

DEVICE_SPEED = "videos_per_s"
ALPHA = 0.05


@dataclass
class Thresholds:
    """When a variant passes (docs/build.md, "Choosing build options")."""

    min_top1_agreement: float
    max_prob_diff: float
    alpha: float = ALPHA        # McNemar: p below this, with the reference right more often, fails


@dataclass
class Reference:
    """McNemar's test of a variant against the fp32 reference on the audited videos."""

    videos: int                 # audited videos scored by both
    top1: float | None          # the reference's top-1 accuracy on them
    variant_top1: float | None  # the variant's, on the same videos
    right_only_variant: int
    right_only_reference: int
    p_value: float


@dataclass
class VariantResult:
    """One row of sweep.json's ``variants``."""

    name: str
    slug: str
    options: dict
    work_dir: str
    command: str                             # the harness.run command that builds and runs it
    status: str = "measured"                 # measured | build failed | stopped
    error: str | None = None                 # why it has no measurements (status not measured)
    videos: int = 0                          # evaluated (ok)
    videos_failed: int = 0
    videos_per_s: float | None = None        # device (bench loops): the ranking
    ais_bench_videos_per_s: float | None = None
    end_to_end_videos_per_s: float | None = None
    top1: float | None = None
    top1_ci95: list | None = None
    top5: float | None = None
    top5_ci95: list | None = None
    audited: int = 0
    audit_reference: str | None = None       # what the fp32 reference is (harness.audit)
    top1_agreement: float | None = None
    top1_agreement_ci95: list | None = None
    max_abs_prob_diff: float | None = None
    reference: dict | None = None            # Reference, as a dict
    passed: bool = False
    why_failed: list[str] = field(default_factory=list)
    pareto: bool = False                     # on the front of speed against agreement
    artifact_hash: str | None = None
    simulated: bool = False                  # test doubles: not an NPU's numbers


def from_run(result: VariantResult, summary: dict, thresholds: Thresholds) -> VariantResult:
    """Fill ``result`` from its run's summary and audit pairs, and judge it."""
    bench = summary.get("bench") or {}
    audit = summary.get("audit") or {}
    ci = summary.get("ci95") or {}
    result.videos, result.videos_failed = summary.get("videos_ok", 0), summary.get("videos_failed", 0)
    result.videos_per_s = bench.get("aggregate_videos_per_s")
    result.ais_bench_videos_per_s = bench.get("aggregate_ais_bench_videos_per_s")
    result.end_to_end_videos_per_s = summary.get("throughput_videos_per_s") or None
    result.top1, result.top5 = summary.get("top1"), summary.get("top5")
    result.top1_ci95 = _list(ci.get("top1"))
    result.top5_ci95 = _list(ci.get("top5"))
    result.audited = audit.get("videos_audited", 0)
    result.audit_reference = audit.get("reference") or audit.get("skipped")
    result.top1_agreement = audit.get("top1_agreement")
    result.top1_agreement_ci95 = _list(audit.get("top1_agreement_ci95"))
    result.max_abs_prob_diff = audit.get("max_abs_prob_diff")
    if audit.get("skipped") == NOTHING_TO_AUDIT:   # fp32 on a CPU: the variant is the reference
        result.audit_reference = "itself: the fp32 reference on a CPU"
        result.audited, result.top1_agreement, result.max_abs_prob_diff = result.videos, 1.0, 0.0
    result.artifact_hash = (summary.get("artifact") or {}).get("hash")
    result.simulated = bool(summary.get("simulated_devices"))
    reference = against_reference(Path(result.work_dir), audit)
    result.reference = asdict(reference) if reference else None
    result.why_failed = reasons(result, audit, reference, thresholds)
    result.passed = not result.why_failed
    return result


def _list(pair) -> list | None:
    return list(pair) if pair else None


def against_reference(work_dir: Path, audit: dict) -> Reference | None:
    """McNemar on the audited videos: the variant's top-1 and the reference's, each right or
    wrong against the label (harness.compare's test, the reference as run B)."""
    from harness import audit as haudit
    from harness.compare import Run, Video, compare
    from harness.scores import average_views

    if not audit.get("videos_audited"):
        return None
    pairs = haudit.read_pairs(work_dir)
    sides: dict[str, list] = {"device": [], "reference": []}
    for p in pairs:
        views = int(p["views"])
        for side in sides:
            logits = np.asarray(p[f"{side}_logits"], np.float32).reshape(views, -1)
            top1 = int(np.argmax(average_views(logits, views, "prob")[0]))
            # (the audit's path is the file read: the location too)
            sides[side].append(Video(p["index"], p["path"], p["path"], p["label"], True, top1))
    same = {"list_sha256": "audited videos"}      # paired by list index
    got = compare(Run(work_dir, same, sides["device"], None),
                  Run(work_dir, same, sides["reference"], None), None)
    return Reference(videos=got["in_common"], top1=got["top1_b"]["rate"],
                     variant_top1=got["top1_a"]["rate"],
                     right_only_variant=got["mcnemar"]["right_only_a"],
                     right_only_reference=got["mcnemar"]["right_only_b"],
                     p_value=got["mcnemar"]["p_value"])


def reasons(result: VariantResult, audit: dict, reference: Reference | None,
            thresholds: Thresholds) -> list[str]:
    """Why a measured variant fails, one short phrase each; empty: it passes."""
    if result.status != "measured":
        return [f"{result.status}: {result.error}"]
    if result.top1_agreement is None:
        why = audit.get("skipped") or "no audited video was scored by both"
        return [f"not audited ({why}): its accuracy cannot be vouched for"]
    out = []
    if result.top1_agreement < thresholds.min_top1_agreement:
        out.append(f"top-1 agreement {result.top1_agreement:.3g} < {thresholds.min_top1_agreement:g}")
    if result.max_abs_prob_diff is not None and result.max_abs_prob_diff > thresholds.max_prob_diff:
        out.append(f"max |Δprob| {result.max_abs_prob_diff:.3g} > {thresholds.max_prob_diff:g}")
    if (reference is not None and reference.right_only_reference > reference.right_only_variant
            and reference.p_value < thresholds.alpha):
        out.append(f"less accurate than the fp32 reference: McNemar p {reference.p_value:.2g}"
                   f" < {thresholds.alpha:g} ({reference.right_only_reference} videos right only"
                   f" under the reference, {reference.right_only_variant} only under this)")
    if result.videos_per_s is None:
        out.append("no device throughput (the bench loops did not run)")
    return out


def verdict(result: VariantResult) -> str:
    """One word for the table: pass, FAIL, or where an unfinished variant stands."""
    if result.status in ("pending", "interrupted"):
        return result.status
    return "pass" if result.passed else "FAIL"


def mark_pareto(results: list[VariantResult]) -> None:
    """``pareto``: no other variant is at least as fast and as agreeing, and better in one."""
    measured = [r for r in results if r.videos_per_s is not None and r.top1_agreement is not None]
    for r in results:
        r.pareto = r in measured and not any(
            o.videos_per_s >= r.videos_per_s and o.top1_agreement >= r.top1_agreement
            and (o.videos_per_s > r.videos_per_s or o.top1_agreement > r.top1_agreement)
            for o in measured)


def recommend(results: list[VariantResult]) -> VariantResult | None:
    """The fastest variant that passes (device videos/s), or None."""
    passing = [r for r in results if r.passed and r.videos_per_s is not None]
    return max(passing, key=lambda r: r.videos_per_s) if passing else None


def ranked(results: list[VariantResult]) -> list[VariantResult]:
    """Fastest first; variants without a speed last, in their order."""
    return sorted(results, key=lambda r: -(r.videos_per_s if r.videos_per_s is not None else -1))
