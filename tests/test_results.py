"""predictions.parquet, run identity (resume / refuse), and summary.json."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness import results
from harness.errors import ConfigError
from harness.stages import VideoResult


def _identity(**changes) -> results.RunIdentity:
    base = dict(artifact_hash="a" * 64, list_sha256="b" * 64, list_length=10, data_prefix="/data",
                backend="onnxruntime", config_digest="c" * 64)
    base.update(changes)
    return results.RunIdentity(**base)


def _ok(i: int, label: int, scores) -> VideoResult:
    return VideoResult(i, f"v{i}.mp4", label, "ok", scores=np.asarray(scores, np.float32),
                       device="npu:1", node="host")


def test_every_completed_batch_is_readable_while_writing(tmp_path):
    writer = results.ResultWriter(tmp_path, batch_size=2, flush_s=1e9)
    for i in range(5):
        writer.add(_ok(i, 0, [0.1, 0.9]))
    # two full batches written, one row pending: a crash now loses at most that row
    table = pq.read_table(tmp_path / results.PREDICTIONS)
    assert sorted(table.column("index").to_pylist()) == [0, 1, 2, 3]
    assert not list((tmp_path / results.PREDICTIONS).glob(".*"))   # no temp files left
    writer.close()
    assert results.done_indices(tmp_path) == {0, 1, 2, 3, 4}
    row = results.read_predictions(tmp_path).to_pylist()[0]
    assert row["top5"] == [1, 0] and row["status"] == "ok" and row["error"] is None


def test_duplicate_rows_across_parts_count_once(tmp_path):
    for _ in range(2):  # e.g. a crash between writing a part and the bookkeeping
        writer = results.ResultWriter(tmp_path, batch_size=10)
        writer.add(_ok(7, 1, [0.2, 0.8]))
        writer.add(VideoResult(8, "bad.mp4", 0, "failed", "empty", "bad.mp4: empty"))
        writer.close()
    assert len(list((tmp_path / results.PREDICTIONS).glob("part-*.parquet"))) == 2
    table = results.read_predictions(tmp_path)
    assert table.column("index").to_pylist() == [7, 8]
    summary = results.summarize(table, wall_s=1.0, processed=2, backend="om", artifact={})
    assert summary["videos_total"] == 2 and summary["videos_failed"] == 1


def test_same_identity_resumes_and_another_is_refused(tmp_path):
    assert results.prepare_work_dir(tmp_path, _identity()) is False
    writer = results.ResultWriter(tmp_path)
    writer.add(_ok(0, 0, [1.0, 0.0]))
    writer.close()
    assert results.prepare_work_dir(tmp_path, _identity()) is True
    with pytest.raises(ConfigError, match="artifact_hash.*--overwrite"):
        results.prepare_work_dir(tmp_path, _identity(artifact_hash="c" * 64))
    assert results.done_indices(tmp_path) == {0}          # refused: nothing deleted
    assert results.prepare_work_dir(tmp_path, _identity(list_length=11), overwrite=True) is False
    assert results.done_indices(tmp_path) == set()
    assert json.loads((tmp_path / results.RUN_FILE).read_text())["list_length"] == 11


# Five scored videos over six classes, with their metrics worked out by hand:
# top-1 hits v0, v3 -> 2/5; the label is in the top 5 except for v2 (its lowest score) -> 4/5;
# per class: 0 -> 1/1, 1 -> 1/2 (v1 miss, v3 hit), 2 -> 0/1, 5 -> 0/1 -> mean 0.375.
HAND = [  # (label, scores)
    (0, [0.90, 0.02, 0.02, 0.02, 0.02, 0.02]),
    (1, [0.50, 0.30, 0.10, 0.05, 0.03, 0.02]),
    (5, [0.30, 0.25, 0.20, 0.15, 0.10, 0.00]),
    (1, [0.10, 0.60, 0.10, 0.10, 0.05, 0.05]),
    (2, [0.12, 0.11, 0.10, 0.60, 0.05, 0.02]),
]


def test_summary_metrics_over_ok_videos_and_failures_by_reason(tmp_path):
    writer = results.ResultWriter(tmp_path, batch_size=2)
    for i, (label, scores) in enumerate(HAND):
        writer.add(_ok(i, label, scores))
    writer.add(VideoResult(5, "a.mp4", 0, "failed", "empty", "a.mp4: empty"))
    writer.add(VideoResult(6, "b.mp4", 0, "failed", "empty", "b.mp4: empty"))
    writer.add(VideoResult(7, "c.mp4", 0, "failed", "worker died", "c.mp4: died"))
    writer.close()
    summary = results.summarize(results.read_predictions(tmp_path), wall_s=4.0, processed=8,
                                backend="om", artifact={"manifest": "m.json", "hash": "h"})
    assert summary["top1"] == pytest.approx(0.4)
    assert summary["top5"] == pytest.approx(0.8)
    assert summary["mean_class_accuracy"] == pytest.approx(0.375)
    assert (summary["videos_total"], summary["videos_ok"], summary["videos_failed"]) == (8, 5, 3)
    assert summary["failures"] == {"empty": 2, "worker died": 1}
    assert [f["index"] for f in summary["failed"]] == [5, 6, 7]
    assert summary["throughput_videos_per_s"] == pytest.approx(2.0)
    assert summary["devices"] == [{"kind": "npu", "id": "1", "node": "host", "videos": 5}]
    path = results.write_summary(tmp_path, summary)
    assert json.loads(path.read_text())["artifact"]["hash"] == "h"


def test_job_table_keeps_one_row_per_index_and_the_limit(tmp_path):
    for _ in range(2):                                      # index 1 recorded twice
        writer = results.ResultWriter(tmp_path, batch_size=10)
        for i in (0, 1):
            writer.add(_ok(i, 0, [0.9, 0.1]))
        writer.close()
    writer = results.ResultWriter(tmp_path)
    for i in (2, 3):
        writer.add(_ok(i, 1, [0.9, 0.1]))                  # both wrong
    writer.close()
    assert results.job_table(tmp_path).column("index").to_pylist() == [0, 1, 2, 3]
    limited = results.job_table(tmp_path, limit=2)
    assert limited.column("index").to_pylist() == [0, 1]
    summary = results.summarize(limited, wall_s=1.0, processed=2, backend="om", artifact={})
    assert summary["videos_total"] == 2 and summary["top1"] == 1.0


def test_a_later_row_for_a_video_replaces_the_earlier_one(tmp_path):
    writer = results.ResultWriter(tmp_path, batch_size=1)
    writer.add(VideoResult(3, "c.mp4", 1, "failed", "timeout", "c.mp4: no frames"))   # run 1
    writer.add(_ok(3, 1, [0.2, 0.8]))                                                # resumed run
    writer.close()
    row = results.read_predictions(tmp_path).to_pylist()
    assert len(row) == 1 and row[0]["status"] == "ok"


def test_a_resume_retries_transient_failures_only_unless_asked(tmp_path):
    writer = results.ResultWriter(tmp_path)
    writer.add(_ok(0, 0, [1.0, 0.0]))
    for i, reason in enumerate(["worker died", "timeout", "inference failed", "missing", "empty",
                                "decode failed", "read error", "permission denied"], start=1):
        writer.add(VideoResult(i, f"v{i}.mp4", 0, "failed", reason, reason))
    writer.close()
    assert results.done_indices(tmp_path) == {0, 4, 5, 6, 8}     # the file's own failures stay
    assert results.done_indices(tmp_path, retry_failed=True) == {0}


def _failures(work, reasons) -> None:
    writer = results.ResultWriter(work)
    for i, reason in enumerate(reasons):
        if reason is None:
            writer.add(_ok(i, 0, [1.0, 0.0]))
        else:
            writer.add(VideoResult(i, f"v{i}.mp4", 0, "failed", reason, reason))
    writer.close()


def test_a_corrected_data_prefix_is_the_same_run_when_nothing_was_found(tmp_path):
    # a wrong --data-prefix: every recorded video 'missing' (the breaker stopped the run)
    results.prepare_work_dir(tmp_path, _identity(data_prefix="/wrong"))
    _failures(tmp_path, ["missing"] * 4 + ["read error"])
    assert results.prepare_work_dir(tmp_path, _identity()) is False      # accepted, fresh
    assert results.done_indices(tmp_path) == set()                      # the old rows are gone
    assert json.loads((tmp_path / results.RUN_FILE).read_text())["data_prefix"] == "/data"
    # a corrected list too (its sha256 and length change)
    results.prepare_work_dir(tmp_path, _identity(data_prefix="/wrong"), overwrite=True)
    _failures(tmp_path, ["missing"] * 3)
    assert results.prepare_work_dir(tmp_path, _identity(list_sha256="d" * 64, list_length=12)) is False
    # a wrong folder's files failing for their own reason: nothing was scored, nothing is lost
    results.prepare_work_dir(tmp_path, _identity(data_prefix="/wrong"), overwrite=True)
    _failures(tmp_path, ["missing", "empty", "unreadable container"])
    assert results.prepare_work_dir(tmp_path, _identity()) is False


def test_the_refusal_of_a_corrected_location_says_what_it_would_discard(tmp_path):
    results.prepare_work_dir(tmp_path, _identity(data_prefix="/wrong"))
    _failures(tmp_path, [None, "empty", "missing", None])     # v2.mp4: the first 'missing'
    with pytest.raises(ConfigError) as info:
        results.prepare_work_dir(tmp_path, _identity())
    assert str(info.value) == (
        f"{tmp_path} holds results of another run (differs in: data_prefix); 2 of its videos were"
        " scored at the old location, so the corrected one would discard them (e.g. v2.mp4:"
        " missing); use another --work-dir, or --overwrite to delete those results")


@pytest.mark.parametrize("recorded", [["missing", None, "missing"], [None, "empty"]])
def test_a_corrected_data_prefix_is_refused_when_some_videos_were_found(tmp_path, recorded):
    results.prepare_work_dir(tmp_path, _identity(data_prefix="/wrong"))
    _failures(tmp_path, recorded)
    with pytest.raises(ConfigError, match="differs in: data_prefix.*--overwrite"):
        results.prepare_work_dir(tmp_path, _identity())
    assert len(results.read_predictions(tmp_path)) == len(recorded)     # nothing deleted
    with pytest.raises(ConfigError, match="differs in: backend"):       # not a location change
        results.prepare_work_dir(tmp_path, _identity(data_prefix="/wrong", backend="om"))


def test_one_driver_per_work_dir_and_the_lock_dies_with_its_holder(tmp_path):
    import subprocess
    import sys

    held = results.lock_work_dir(tmp_path)
    code = ("import sys; from harness import results\n"
            "try:\n    results.lock_work_dir(sys.argv[1])\nexcept results.WorkDirError as e:\n"
            "    print(e); sys.exit(3)\n")
    other = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert other.returncode == 3 and "in use by another harness.run" in other.stdout
    assert f"pid {os.getpid()}" in other.stdout
    held.close()                                                  # (a dead process closes it too)
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path)]).returncode == 0


def test_an_unwritable_work_dir_is_one_clear_error(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the work dir should be")
    with pytest.raises(results.WorkDirError, match="cannot write results in .*results.*Fix"):
        results.prepare_work_dir(blocker, _identity())
    with pytest.raises(results.WorkDirError):
        results.ResultWriter(blocker)
