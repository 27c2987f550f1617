"""sweep.html: the sweep on one self-contained page (inline CSS and SVG, no scripts, no network).

The answer first (the recommended variant and its command), then the variants fastest first
with why each failing one failed, then a plot of device speed against top-1 agreement with
the fp32 reference: passing variants green, failing red, the Pareto front joined by a line,
the recommendation ringed. Drawn from sweep.json's content only.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from harness.sweep.measure import VariantResult, ranked, verdict

W, H, PAD = 640, 360, 56          # the plot, px; PAD: room for the axes' labels


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _n(value: float | None, fmt: str) -> str:
    return "&ndash;" if value is None else format(value, fmt)


def _numbers(variants: list[dict]) -> dict[str, int]:
    """Each variant's number: its place in the sweep (the table's # and the plot's labels)."""
    return {v["name"]: k + 1 for k, v in enumerate(variants)}


def _rows(variants: list[dict]) -> str:
    out, number = [], _numbers(variants)
    for v in ranked([VariantResult(**v) for v in variants]):
        ref = v.reference or {}
        ci = f" <span class=ci>[{v.top1_ci95[0]:.3f}, {v.top1_ci95[1]:.3f}]</span>" if v.top1_ci95 else ""
        word = verdict(v)
        why = "; ".join(_esc(w) for w in v.why_failed)     # (an interrupted one's says so)
        cell = ('<td class=ok>pass</td>' if word == "pass" else f"<td>{word}</td>" if word == "pending"
                else f"<td class=warn>FAIL: {why}</td>" if word == "FAIL" else f"<td class=warn>{why}</td>")
        out.append(
            f"<tr><td>{number[v.name]}</td><td>{_esc(v.name)}{' &#9733;' if v.pareto else ''}</td>"
            f"<td>{_n(v.videos_per_s, '.3f')}</td><td>{_n(v.ais_bench_videos_per_s, '.3f')}</td>"
            f"<td>{_n(v.end_to_end_videos_per_s, '.3f')}</td><td>{_n(v.top1, '.3f')}{ci}</td>"
            f"<td>{_n(v.top5, '.3f')}</td><td>{_n(v.top1_agreement, '.3f')}</td>"
            f"<td>{_n(v.max_abs_prob_diff, '.3g')}</td><td>{_n(ref.get('p_value'), '.3g')}</td>"
            f"{cell}<td><a href=\"{_esc(v.slug)}/report.html\">report</a></td></tr>")
    return "\n".join(out)


def _plot(variants: list[dict], recommended: str | None) -> str:
    points = [v for v in variants if v["videos_per_s"] is not None and v["top1_agreement"] is not None]
    if not points:
        return "<p>No variant has both a speed and an agreement yet.</p>"
    top = max(v["videos_per_s"] for v in points) * 1.1 or 1.0
    number = _numbers(variants)

    def xy(v: dict) -> tuple[float, float]:
        return (PAD + (W - 2 * PAD) * v["videos_per_s"] / top,
                H - PAD - (H - 2 * PAD) * v["top1_agreement"])

    parts = [f'<svg class="chart" width="{W}" height="{H}" viewBox="0 0 {W} {H}"'
             ' role="img" aria-label="device speed against'
             ' top-1 agreement">',
             f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#333"/>',
             f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#333"/>']
    for k in range(5):                       # ticks: 0 .. top on x, 0 .. 1 on y
        x, y = PAD + (W - 2 * PAD) * k / 4, H - PAD - (H - 2 * PAD) * k / 4
        parts += [f'<text x="{x:.1f}" y="{H - PAD + 16}" text-anchor="middle">{top * k / 4:.3g}</text>',
                  f'<text x="{PAD - 6}" y="{y + 4:.1f}" text-anchor="end">{k / 4:.2f}</text>',
                  f'<line x1="{PAD}" y1="{y:.1f}" x2="{W - PAD}" y2="{y:.1f}" stroke="#eee"/>']
    parts += [f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">device videos/s (bench loops)</text>',
              f'<text x="14" y="{H / 2}" text-anchor="middle" transform="rotate(-90 14 {H / 2})">'
              'top-1 agreement with fp32</text>']
    front = sorted((v for v in points if v["pareto"]), key=lambda v: v["videos_per_s"])
    if len(front) > 1:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(xy, front))
        parts.append(f'<polyline class="pareto" points="{path}" fill="none" stroke="#4e79a7"'
                     ' stroke-width="2" stroke-dasharray="6 3"/>')
    for v in points:
        x, y = xy(v)
        colour = "#2e7d32" if v["passed"] else "#c62828"
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}">'
                     f'<title>{_esc(v["name"])}</title></circle>')
        if v["name"] == recommended:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="11" fill="none" stroke="#333"'
                         ' stroke-width="2"/>')
        parts.append(f'<text x="{x + 9:.1f}" y="{y - 9:.1f}">#{number[v["name"]]}</text>')
    parts.append("</svg>")
    legend = ('<p class=meta><span class=ok>&#9679; passes</span> &middot; <span class=warn>&#9679;'
              ' fails</span> &middot; dashed line, &#9733;: the Pareto front (no variant both faster'
              ' and more agreeing) &middot; ringed: recommended</p>')
    return "\n".join(parts) + legend


def render(document: dict) -> str:
    sweep, variants, best = document["sweep"], document["variants"], document["recommended"]
    if best:
        answer = (f"<p class=answer>Recommended: <b>{_esc(best['name'])}</b>, the fastest that"
                  f" passes ({best['videos_per_s']:.3f} videos/s on the devices, top-1 agreement"
                  f" {best['top1_agreement']:.3f}).</p><pre>{_esc(best['command'])}</pre>")
    else:
        answer = ("<p class=warn>No variant passes the thresholds"
                  f"{'' if sweep['complete'] else ' yet'} (see why in the table).</p>")
    if not sweep["complete"]:
        answer += "<p class=warn>The sweep is not finished: resume it with the same command.</p>"
    simulated = ("<p class=warn>SIMULATED DEVICES (tests/doubles): these speeds and accuracies"
                 " are not an NPU's.</p>" if sweep.get("simulated_devices") else "")
    t, chosen = sweep["thresholds"], sweep["videos"]
    videos = (f"a subset stratified by class (up to {chosen['subset']}, seed {chosen['seed']})"
              if "subset" in chosen else f"the first {chosen['limit']}" if "limit" in chosen
              else "the whole list")
    evaluated = max((v["videos"] for v in variants), default=0)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Build-option sweep</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;background:#fff}}
h1{{font-size:1.5em}} h2{{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}}
table{{border-collapse:collapse;margin:.5em 0}} td,th{{border:1px solid #ddd;padding:.25em .6em;text-align:left}}
svg.chart text{{font-size:11px;fill:#333}} .meta{{color:#666;font-size:.85em}} .ci{{color:#666;font-size:.85em}}
.warn{{color:#b00020}} .ok{{color:#2e7d32}} .answer{{font-size:1.15em}}
pre{{background:#f4f4f4;padding:.6em;white-space:pre-wrap;word-break:break-all}}
</style></head><body>
<h1>Build-option sweep</h1>
<p class=meta>{_esc(sweep['command'])}<br>backend {_esc(sweep['backend'])} &middot;
{_esc(sweep['devices'])} &middot; {evaluated} videos: {_esc(videos)} &middot; audit:
{_esc(sweep['audit'])} against the fp32 reference &middot; {sweep['bench_loops']} bench loops</p>
{simulated}{answer}
<h2>Variants, fastest first</h2>
<table class=variants><tr><th>#</th><th>variant</th><th>videos/s (device)</th><th>ais_bench videos/s</th>
<th>end-to-end videos/s</th><th>top-1 [95% CI]</th><th>top-5</th><th>top-1 agreement</th>
<th>max |&Delta;prob|</th><th>McNemar p vs fp32</th><th>verdict</th><th>run</th></tr>
{_rows(variants)}
</table>
<p class=meta>Passes: top-1 agreement &ge; {t['min_top1_agreement']:g}, max |&Delta;prob| &le;
{t['max_prob_diff']:g}, and not less accurate than the fp32 reference with McNemar p &lt;
{t['alpha']:g}. {_esc(sweep['speed'])}.</p>
<h2>Speed against agreement</h2>
<p class=meta>Points are numbered as in the table.</p>
{_plot(variants, best['name'] if best else None)}
</body></html>
"""


def write_page(work_dir: str | Path, document: dict) -> Path:
    path = Path(work_dir) / "sweep.html"
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render(document), encoding="utf-8")
    tmp.replace(path)
    return path
