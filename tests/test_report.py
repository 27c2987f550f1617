"""report.html: content from a run's files, and rendering in a real headless browser."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.report import per_class_accuracy, top_confusions, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _fake_run(work_dir: Path, classes: int = 5, videos: int = 40) -> list[str]:
    """A work dir shaped like a run's: summary.json and a predictions dataset."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(videos):
        label = i % classes
        failed = i in (7, 13)
        pred = label if rng.random() < 0.7 else (label + 1) % classes
        top5 = [pred] + [c for c in range(classes) if c != pred][:4]
        rows.append(dict(index=i, path=f"v/{i}.mp4", label=label,
                         status="failed" if failed else "ok",
                         error="decode failed" if failed else None,
                         scores=None if failed else [0.1] * classes, top5=None if failed else top5,
                         device=f"cpu:{i % 2}", node="n1", finished_at=1.7e9 + 0.1 * i))
    (work_dir / "predictions.parquet").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), work_dir / "predictions.parquet" / "part-00000.parquet")
    summary = dict(top1=0.7, top5=1.0, mean_class_accuracy=0.69, videos_total=videos,
                   videos_ok=videos - 2, videos_failed=2, failures={"decode failed": 2},
                   wall_s=4.0, throughput_videos_per_s=10.0, backend="onnxruntime",
                   devices=[dict(kind="cpu", id="0", node="n1", videos=19)],
                   artifact=dict(hash="abc123", manifest="build/x/manifest.json"),
                   bench=dict(devices=[dict(device="cpu:0", mean_ms=5.0, p50_ms=5.0, p99_ms=6.0,
                                            throughput_videos_per_s=200.0)],
                              aggregate_videos_per_s=200.0, pipeline_efficiency=0.05))
    (work_dir / "summary.json").write_text(json.dumps(summary))
    return [f"class {chr(97 + c)} (sport)" for c in range(classes)]


def test_report_content(tmp_path):
    names = _fake_run(tmp_path)
    page = write_report(tmp_path, names).read_text()
    rows = pq.read_table(tmp_path / "predictions.parquet").to_pylist()
    accuracy = per_class_accuracy(rows)
    assert sum(n for _, n in accuracy.values()) == 38  # failed videos are not scored
    confusions = top_confusions(rows)
    assert all(t != p for t, p, _ in confusions)
    assert "class a (sport)" in page                       # names escaped, not dropped
    assert "decode failed" in page and "v/7.mp4" in page  # failures listed with reasons
    assert "cpu:0: 20 videos" in page and "cpu:1: 18 videos" in page  # ok videos, a line per device
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_many_classes_show_worst_and_best(tmp_path):
    names = _fake_run(tmp_path, classes=400, videos=800)
    page = write_report(tmp_path, names).read_text()
    assert "400 classes: the 15 worst and the 15 best" in page


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    names = _fake_run(tmp_path)
    report = write_report(tmp_path, names)
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append("request failed: " + r.url))
            page.goto(report.as_uri())
            assert page.title().startswith("Evaluation report")
            assert page.locator("svg.chart").count() == 2
            shot = page.screenshot(full_page=True, path=str(tmp_path / "report.png"))
        finally:
            browser.close()
    assert problems == []
    from io import BytesIO

    from PIL import Image

    pixels = np.asarray(Image.open(BytesIO(shot)).convert("L"))
    assert pixels.std() > 10, "the screenshot is blank"
    assert (pixels < 128).mean() > 0.01  # text and bars drawn, not an empty page
