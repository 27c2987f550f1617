"""report.html: one self-contained page per run (inline CSS and SVG, no scripts, no network).

Drawn from a run's summary and the predictions rows it was computed from:
headline metrics, per-class accuracy (worst and best classes when there are many),
top confusions, throughput over time per device, failures with reasons, benchmark loops,
the precision audit; every accuracy with its 95% interval, and a subset said to be one.
"""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.bench import efficiency_line

MAX_CLASS_BARS = 30     # beyond this, show the worst and best half each
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def duration(seconds: float) -> str:
    """A wall time as a person reads it: 2.2 s, 5 min 03 s, 1 h 02 min."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "n/a" if np.isnan(value) else f"{value:.{digits}g}" if abs(value) >= 10 else f"{value:.{digits}f}"
    return _esc(value)


def per_class_accuracy(rows: Sequence[dict]) -> dict[int, tuple[int, int]]:
    """label -> (correct top-1, videos) over the videos that were scored."""
    counts: dict[int, list[int]] = {}
    for row in rows:
        if row.get("status") != "ok":
            continue
        entry = counts.setdefault(int(row["label"]), [0, 0])
        entry[0] += int(row["top5"][0] == row["label"])
        entry[1] += 1
    return {label: (c, n) for label, (c, n) in sorted(counts.items())}


def top_confusions(rows: Sequence[dict], limit: int = 10) -> list[tuple[int, int, int]]:
    """(true label, predicted label, videos), the most frequent top-1 mistakes first."""
    pairs = Counter((int(r["label"]), int(r["top5"][0])) for r in rows
                    if r.get("status") == "ok" and r["top5"][0] != r["label"])
    return [(t, p, n) for (t, p), n in pairs.most_common(limit)]


def _class_bars(accuracy: dict[int, tuple[int, int]], names: Sequence[str]) -> str:
    items = [(c / n, label, n) for label, (c, n) in accuracy.items()]
    if not items:
        return "<p>No scored videos.</p>"
    items.sort()
    note = ""
    if len(items) > MAX_CLASS_BARS:
        half = MAX_CLASS_BARS // 2
        note = f"<p>{len(items)} classes: the {half} worst and the {half} best.</p>"
        items = items[:half] + items[-half:]
    bar_h, label_w, width = 18, 220, 420
    rows = []
    for i, (acc, label, n) in enumerate(items):
        y = i * bar_h
        name = names[label] if label < len(names) else str(label)
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_esc(name)}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{max(acc * width, 1):.1f}" height="{bar_h - 6}"'
            f' fill="{PALETTE[0] if acc >= 0.5 else PALETTE[2]}"/>'
            f'<text x="{label_w + acc * width + 4:.1f}" y="{y + 13}">{acc:.2f} ({n})</text>')
    height = len(items) * bar_h + 4
    return (note + f'<svg class="chart" width="{label_w + width + 80}" height="{height}"'
            f' role="img" aria-label="per-class top-1 accuracy">{"".join(rows)}</svg>')


def _throughput_chart(rows: Sequence[dict]) -> str:
    """Cumulative videos over time, one line per device (from the ``finished_at`` column).

    A resumed job shows its runs one after another, with the pause between them.
    """
    timed = [r for r in rows if r.get("finished_at") is not None and r.get("status") == "ok"]
    if not timed:
        return "<p>No timing recorded.</p>"
    t0 = min(float(r["finished_at"]) for r in timed)
    by_device: dict[str, list[float]] = {}
    for row in timed:
        by_device.setdefault(str(row.get("device") or "none"), []).append(float(row["finished_at"]) - t0)
    t_max = max(max(ts) for ts in by_device.values()) or 1.0
    n_max = max(len(ts) for ts in by_device.values())
    width, height, pad = 560, 220, 40
    lines, legend = [], []
    for i, (device, times) in enumerate(sorted(by_device.items())):
        times.sort()
        points = [(pad, height - pad)] + [
            (pad + t / t_max * (width - 2 * pad), height - pad - (k + 1) / n_max * (height - 2 * pad))
            for k, t in enumerate(times)]
        colour = PALETTE[i % len(PALETTE)]
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{x:.1f},{y:.1f}" for x, y in points) + '"/>')
        rate = len(times) / times[-1] if times[-1] > 0 else float("nan")
        legend.append(f'<span style="color:{colour}">&#9632; {_esc(device)}: {len(times)} videos,'
                      f" {_fmt(rate, 3)} videos/s</span>")
    axes = (f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#888"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="#888"/>'
            f'<text x="{width - pad}" y="{height - pad + 16}" text-anchor="end">{t_max:.1f} s</text>'
            f'<text x="{pad - 4}" y="{pad}" text-anchor="end">{n_max}</text>'
            f'<text x="{pad - 4}" y="{height - pad}" text-anchor="end">0</text>')
    return (f'<svg class="chart" width="{width}" height="{height}" role="img"'
            f' aria-label="videos done over time per device">{axes}{"".join(lines)}</svg>'
            f'<p class="legend">{" &nbsp; ".join(legend)}</p>')


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _with_interval(summary: dict, key: str) -> str:
    value, ci = summary.get(key), (summary.get("ci95") or {}).get(key)
    if value is None:
        return "n/a"
    text = f"{100 * value:.2f}%"
    return text + (f'<div class="ci">95% CI {100 * ci[0]:.2f} - {100 * ci[1]:.2f}%</div>' if ci else "")


def _audit_html(audit: dict | None, name) -> str:
    if not audit:
        return "<p>No audit in this run (<code>--audit N</code> scores N videos with an fp32 reference too).</p>"
    if "skipped" in audit:
        return f"<p>Audit skipped: {_esc(audit['skipped'])}</p>"
    head = (f"<p>{audit['videos_audited']} of {audit['videos_requested']} videos also scored by"
            f" {_esc(audit['reference'])}, from the same decoded views.</p>")
    if audit.get("top1_agreement") is None:
        return head + "<p>None paired yet.</p>"
    lo, hi = audit["top1_agreement_ci95"]
    verdict = ('<p class="ok">Within the thresholds.</p>' if audit["passed"] else
               "".join(f'<p class="warn">{_esc(w)}</p>' for w in audit["warnings"]))
    metrics = _table(["measure", "value"], [
        ("top-1 agreement", f"{100 * audit['top1_agreement']:.2f}% (95% CI {100 * lo:.1f} - {100 * hi:.1f}%)"),
        ("top-5 set agreement", f"{100 * audit['top5_set_agreement']:.2f}%"),
        ("max |Δprob| (averaged class probabilities)", audit["max_abs_prob_diff"]),
        ("mean |Δprob|", audit["mean_abs_prob_diff"]),
        ("max |Δlogit| (per view)", audit["max_abs_logit_diff"]),
        ("cosine similarity of the logits (min / mean)",
         f"{audit['cosine_similarity_min']:.6f} / {audit['cosine_similarity_mean']:.6f}")])
    differ = audit.get("top1_differs") or []
    differ_html = (_table(["index", "path", "true class", "device", "reference"],
                          [(d["index"], d["path"], d["label"], d["device"], d["reference"])
                           for d in differ]) if differ else "<p>Every audited video has the same top-1.</p>")
    return head + verdict + metrics + differ_html


def _unrecorded(summary: dict) -> int:
    """Videos of the job's list not recorded (an interrupted or stopped run)."""
    total = summary.get("videos_total") or 0
    return max(0, total - summary.get("videos_recorded", total))


def _unfinished_note(summary: dict) -> str:
    """Under the videos card: '634 of 1248 videos, interrupted'."""
    if not _unrecorded(summary):
        return ""
    how = "stopped" if summary.get("stopped") else "interrupted" if summary.get("interrupted") else "not finished"
    return (f'<div class="ci">{summary.get("videos_recorded")} of {summary.get("videos_total")}'
            f" videos recorded, {how}</div>")


def _unfinished_banner(summary: dict) -> str:
    """The run did not record its whole list: why, and what the numbers cover."""
    stopped, left = summary.get("stopped"), _unrecorded(summary)
    covers = (f" {summary.get('videos_recorded')} of {summary.get('videos_total')} videos recorded;"
              " every number here covers those only." if left else "")
    if stopped:
        return f'<p class="warn">This run stopped before the end of its list:{covers} {_esc(stopped)}</p>'
    if left:
        how = "was interrupted" if summary.get("interrupted") else "did not finish"
        return (f'<p class="warn">This run {how} before the end of its list:{covers} The same'
                " command resumes.</p>")
    return ""


def render_report(summary: dict, rows: Sequence[dict], class_names: Sequence[str] = ()) -> str:
    """The report page as a string."""
    names = list(class_names)

    def name(label: int) -> str:
        return names[label] if 0 <= label < len(names) else str(label)

    headline = [   # (name, HTML)
        ("top-1", _with_interval(summary, "top1")), ("top-5", _with_interval(summary, "top5")),
        ("mean class accuracy", _with_interval(summary, "mean_class_accuracy")),
        ("videos ok / total", _fmt(f"{summary.get('videos_ok')} / {summary.get('videos_total')}")
         + _unfinished_note(summary)),
        ("failed", _fmt(summary.get("videos_failed"))),
        ("throughput (videos/s)", _fmt(summary.get("throughput_videos_per_s"))),
        ("wall time", _esc(duration(summary["wall_s"])) if summary.get("wall_s") is not None else "n/a"),
        ("backend", _fmt(summary.get("backend"))),
    ]
    cards = "".join(f'<div class="card"><div class="k">{_esc(k)}</div><div class="v">{v}</div></div>'
                    for k, v in headline)
    subset = summary.get("subset")
    subset_html = (f'<p class="warn">A subset: {subset["videos"]} of the list\'s {subset["of"]} videos,'
                   f' {_esc(subset["method"])}, seed {subset["seed"]}. An estimate of the full'
                   ' list\'s accuracy (see the intervals), not the full result.</p>' if subset else "")
    simulated = summary.get("simulated_devices")
    if simulated:   # test doubles: no number here is an NPU's
        subset_html = f'<p class="warn">{_esc(simulated)}</p>' + subset_html
    subset_html = _unfinished_banner(summary) + subset_html   # before any number
    confusions = top_confusions(rows)
    confusion_html = (_table(["true class", "predicted", "videos"],
                             [(name(t), name(p), n) for t, p, n in confusions])
                      if confusions else "<p>No top-1 mistakes.</p>")
    failures = summary.get("failures") or {}
    failed_rows = [r for r in rows if r.get("status") == "failed"]
    failure_html = (_table(["reason", "videos"], sorted(failures.items(), key=lambda kv: -kv[1]))
                    + _table(["index", "path", "error"],
                             [(r["index"], r["path"], r.get("error")) for r in failed_rows[:100]])
                    if failures or failed_rows else "<p>No failures.</p>")
    devices = summary.get("devices") or []
    device_html = _table(["kind", "id", "node", "videos"],
                         [(d.get("kind"), d.get("id"), d.get("node"), d.get("videos")) for d in devices])
    bench = summary.get("bench") or {}
    execute = "aggregate_ais_bench_videos_per_s" in bench   # the runtime timed its execution
    bench_rows = [(d.get("device"), d.get("mean_ms"), d.get("p50_ms"), d.get("p99_ms"),
                   d.get("throughput_videos_per_s"),
                   *((d.get("execute_mean_ms"), d.get("ais_bench_videos_per_s")) if execute else ()))
                  for d in bench.get("devices", [])]
    bench_html = (_table(["device", "mean ms (call)", "p50 ms", "p99 ms", "videos/s",
                          *(("execute ms (sumary)", "ais_bench videos/s") if execute else ())],
                         bench_rows)
                  + f"<p>aggregate {_fmt(bench.get('aggregate_videos_per_s'))} videos/s"
                    + (f"; {_esc(efficiency_line(bench))}" if efficiency_line(bench) else "") + "</p>"
                  + ("<p>A call's time covers the host tensor, the copies and the execution; the"
                     " execute time is the chip's alone, from the runtime's own timer, and the"
                     " ais_bench column is computed from it as ais_bench computes its throughput:"
                     " that is the number to compare with ais_bench (and the Ascend guide's"
                     f" 0.607 videos/s). Aggregate {_fmt(bench.get('aggregate_ais_bench_videos_per_s'))}"
                     " videos/s.</p>" if execute else "")
                  if bench_rows else "<p>No benchmark loops in this run.</p>")
    artifact = summary.get("artifact") or {}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation report: {_esc(summary.get('config', 'run'))}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fff}}
h1{{font-size:1.5em}} h2{{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}}
.cards{{display:flex;flex-wrap:wrap;gap:.8em}}
.card{{border:1px solid #ccd;border-radius:6px;padding:.6em 1em;min-width:9em;background:#f7f8fb}}
.k{{font-size:.8em;color:#555}} .v{{font-size:1.4em;font-weight:600}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ddd;padding:.25em .6em;text-align:left}}
svg.chart text{{font-size:11px;fill:#333}} .legend{{font-size:.9em}} .meta{{color:#666;font-size:.85em}}
.ci{{font-size:.55em;font-weight:400;color:#555}} .warn{{color:#b00020;font-weight:600}} .ok{{color:#2e7d32}}
</style></head><body>
<h1>Video Swin evaluation report</h1>
<p class="meta">config {_esc(summary.get('config', ''))} &middot; artifact {_esc(artifact.get('hash', ''))}
 &middot; list {_esc(summary.get('ann_file', ''))}</p>
{subset_html}<div class="cards">{cards}</div>
<p class="meta">Intervals: {_esc((summary.get('ci95') or {}).get('method', 'none'))}.</p>
<h2>Per-class top-1 accuracy</h2>{_class_bars(per_class_accuracy(rows), names)}
<h2>Top confusions</h2>{confusion_html}
<h2>Throughput over time</h2>{_throughput_chart(rows)}
<h2>Devices</h2>{device_html}
<h2>Precision audit</h2>{_audit_html(summary.get("audit"), name)}
<h2>Benchmark loops</h2>{bench_html}
<h2>Failures</h2>{failure_html}
</body></html>
"""


def write_report(work_dir: str | Path, summary: dict, rows: Sequence[dict],
                 class_names: Sequence[str] = ()) -> Path:
    """Write ``<work_dir>/report.html`` from the run's summary and the rows it was computed
    from (``results.job_table``: the report never reads other rows than the summary); return
    its path."""
    work_dir = Path(work_dir)
    page = render_report(summary, rows, class_names)
    path = work_dir / "report.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
