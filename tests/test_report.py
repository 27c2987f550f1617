"""report.html: what it shows for hand-made rows with known counts, and rendering in a real
headless browser."""

import re

import pytest

from browser_support import assert_not_blank, headless_page, needs_chromium
from harness.report import per_class_accuracy, top_confusions, write_report


def _summary(videos: int, failed: int) -> dict:
    return dict(top1=0.7, top5=1.0, mean_class_accuracy=0.69, videos_total=videos,
                videos_ok=videos - failed, videos_failed=failed, failures={"decode failed": failed},
                wall_s=4.0, throughput_videos_per_s=10.0, backend="onnxruntime",
                devices=[dict(kind="cpu", id="0", node="n1", videos=19)],
                artifact=dict(hash="abc123", manifest="build/x/manifest.json"),
                bench=dict(devices=[dict(device="cpu:0", mean_ms=5.0, p50_ms=5.0, p99_ms=6.0,
                                         throughput_videos_per_s=200.0)],
                           aggregate_videos_per_s=200.0, pipeline_efficiency=0.05))


def _row(i: int, label: int, pred: int | None, classes: int, device: str = "cpu:0") -> dict:
    """A predictions row: ``pred`` None is a failed video."""
    top5 = None if pred is None else [pred] + [c for c in range(classes) if c != pred][:4]
    return dict(index=i, path=f"v/{i}.mp4", label=label, status="failed" if pred is None else "ok",
                error="decode failed" if pred is None else None,
                scores=None if pred is None else [0.1] * classes, top5=top5, device=device,
                node="n1", finished_at=1.7e9 + 0.1 * i)


# (label, top-1 prediction) pairs with known counts; None: the video failed.
# class 0: 4 videos, 3 right, 1 taken for class 1; class 1: 3 videos, 1 right, 2 taken for 2;
# class 2: 3 videos, 0 right, 3 taken for 0; plus 2 failures.
PAIRS = ([(0, 0)] * 3 + [(0, 1)] + [(1, 1)] + [(1, 2)] * 2 + [(2, 0)] * 3 + [(0, None), (1, None)])
NAMES = ["class a (sport)", "class b (sport)", "class c (sport)"]


def _rows(classes: int = 3) -> list[dict]:
    return [_row(i, label, pred, classes, device=f"cpu:{i % 2}") for i, (label, pred) in enumerate(PAIRS)]


def test_per_class_accuracy_and_confusions_from_hand_counted_rows():
    rows = _rows()
    assert per_class_accuracy(rows) == {0: (3, 4), 1: (1, 3), 2: (0, 3)}   # failures not scored
    assert top_confusions(rows) == [(2, 0, 3), (1, 2, 2), (0, 1, 1)]


def test_report_renders_the_confusion_counts_and_failures(tmp_path):
    page = write_report(tmp_path, _summary(len(PAIRS), 2), _rows(), NAMES).read_text()
    confusions = page.split("<h2>Top confusions</h2>")[1].split("<h2>")[0]
    cells = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", confusions)
    assert cells == [("class c (sport)", "class a (sport)", "3"),
                     ("class b (sport)", "class c (sport)", "2"),
                     ("class a (sport)", "class b (sport)", "1")]
    classes = page.split("<h2>Per-class top-1 accuracy</h2>")[1].split("<h2>")[0]
    assert ">0.75 (4)<" in classes and ">0.33 (3)<" in classes and ">0.00 (3)<" in classes
    assert "decode failed" in page and "v/10.mp4" in page and "v/11.mp4" in page
    # ok videos per device: even indices on cpu:0 (0,2,4,6,8), odd on cpu:1 (1,3,5,7,9)
    assert "cpu:0: 5 videos" in page and "cpu:1: 5 videos" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_the_report_shows_only_the_rows_it_is_given(tmp_path):
    """The caller passes the rows the summary was made from (e.g. --limit): nothing else."""
    page = write_report(tmp_path, _summary(4, 0), _rows()[:4], NAMES).read_text()
    confusions = page.split("<h2>Top confusions</h2>")[1].split("<h2>")[0]
    assert re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td><td>(.*?)</td></tr>", confusions) == [
        ("class a (sport)", "class b (sport)", "1")]


def test_many_classes_show_worst_and_best(tmp_path):
    rows = [_row(i, i % 400, (i + i // 400) % 400, 400) for i in range(800)]
    page = write_report(tmp_path, _summary(800, 0), rows, [f"c{k}" for k in range(400)]).read_text()
    assert "400 classes: the 15 worst and the 15 best" in page


@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    report = write_report(tmp_path, _summary(len(PAIRS), 2), _rows(), NAMES)
    with headless_page(report) as (page, problems):
        assert page.title().startswith("Evaluation report")
        assert page.locator("svg.chart").count() == 2
        # what a reader sees: the class names on the chart, a wall time people read
        chart = page.locator('svg[aria-label="per-class top-1 accuracy"]')
        assert sorted(chart.locator("text[text-anchor=end]").all_text_contents()) == NAMES
        assert page.locator(".card", has_text="wall time").inner_text().split() == ["wall", "time", "4.0", "s"]
        shot = page.screenshot(full_page=True, path=str(tmp_path / "report.png"))
    assert problems == []
    assert_not_blank(shot)


@pytest.mark.parametrize("seconds, shown", [
    (4.0, "4.0 s"), (2.156, "2.2 s"), (59.94, "59.9 s"), (59.96, "1 min 00 s"), (754, "12 min 34 s"),
    (3599.4, "59 min 59 s"), (3725, "1 h 02 min"), (9 * 3600 + 59 * 60 + 40, "10 h 00 min")])
def test_wall_time_is_shown_as_people_read_it(tmp_path, seconds, shown):
    page = write_report(tmp_path, {**_summary(4, 0), "wall_s": seconds}, _rows()[:4], NAMES).read_text()
    assert f'<div class="k">wall time</div><div class="v">{shown}</div>' in page


def test_pipeline_efficiency_says_what_it_means(tmp_path):
    from harness.bench import add_efficiency, format_bench

    def loops() -> dict:   # one device at 200 videos/s in the loops
        return dict(devices=[dict(device="cpu:0", node="n1", mean_ms=5.0, p50_ms=5.0, p99_ms=6.0,
                                  throughput_videos_per_s=200.0)], aggregate_videos_per_s=200.0)

    bench = add_efficiency(loops(), 10.0)      # 10 videos/s end to end
    meaning = ("end-to-end 10.000 videos/s: pipeline efficiency 0.05 of the loops' 200.000 (below 1,"
               " the devices waited for decoded clips or shared CPU cores with the decoders)")
    assert format_bench(bench).splitlines()[-1] == meaning
    page = write_report(tmp_path, {**_summary(4, 0), "bench": bench}, _rows()[:4], NAMES).read_text()
    assert f"<p>aggregate 200 videos/s; {meaning.replace(chr(39), '&#x27;')}</p>" in page
    # bench-only (no evaluation to compare with): no efficiency at all
    alone = add_efficiency(loops(), None)
    assert "efficiency" not in format_bench(alone)
