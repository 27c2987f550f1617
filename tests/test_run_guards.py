"""A long run's guards, end to end on the command line (runner-independent parts use
``--no-ray``): preflight, the circuit breaker, unwritable work dirs, resume rules, and one
driver per work dir. Each ends in one clear message and exit status 2, never a traceback,
and leaves what was written resumable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness import results, run
from harness.stages import VideoResult
from pipeline_support import BROKEN, CONFIG, REPO, run_args, shared_inputs, worker_pythonpath


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


def no_ray(inputs, work, *extra, ann=None):
    return run_args(inputs, work, "--cpus", "1", "--no-ray", *extra, ann=ann)


def refused(capsys, argv) -> str:
    assert run.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_an_empty_list_stops_before_any_work(inputs, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    err = refused(capsys, no_ray(inputs, tmp_path / "w", ann=empty))
    assert "has no videos" in err and "harness.data.filelist" in err
    assert not (tmp_path / "w").exists()


def test_a_missing_video_folder_stops_before_any_work(inputs, tmp_path, capsys):
    argv = no_ray(inputs, tmp_path / "w")
    argv[argv.index("--data-prefix") + 1] = str(tmp_path / "no_such_folder")
    err = refused(capsys, argv)
    assert "no_such_folder does not exist" in err and "--data-prefix" in err


def test_a_wrong_video_folder_trips_the_breaker_and_stays_resumable(inputs, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    wrong.mkdir()                                      # exists, holds none of the videos
    work = tmp_path / "w"
    argv = no_ray(inputs, work, ann=inputs.long_list)  # 160 entries
    argv[argv.index("--data-prefix") + 1] = str(wrong)
    err = refused(capsys, argv)
    first = inputs.long_list.read_text().split()[0]            # the full path tried, quoted
    assert "stopped: 50 of 50 videos failed" in err and f"'missing' (50; e.g. {wrong / first})" in err
    assert "--data-prefix" in err
    assert "this work dir accepts it" in err
    assert len(results.done_indices(work)) == 50      # recorded
    # the summary and the report say what was recorded, and that the run stopped
    summary = json.loads((work / results.SUMMARY_FILE).read_text())
    assert "50 of 50 videos failed" in summary["stopped"] and summary["videos_failed"] == 50
    assert summary["failures"] == {"missing": 50}
    # ... of how many: the list's 160 (issue 19)
    assert (summary["videos_total"], summary["videos_recorded"], summary["complete"]) == (160, 50, False)
    assert ("This run stopped before the end of its list: 50 of 160 videos recorded; every number"
            " here covers those only.") in (work / "report.html").read_text()
    # the corrected command is the same run: accepted, and it scores the videos
    fixed = no_ray(inputs, work, "--limit", "60", ann=inputs.long_list)
    assert run.main(fixed) == 0, capsys.readouterr().err
    summary = json.loads((work / results.SUMMARY_FILE).read_text())
    assert summary["stopped"] is None and summary["videos_total"] == 60
    assert "missing" not in (summary["failures"] or {})


def test_a_folder_of_non_videos_trips_the_breaker_and_its_advice_is_what_the_work_dir_accepts(
        inputs, tmp_path, capsys):
    # issue 19: a wrong --data-prefix whose files exist but are no videos fails them as
    # 'unreadable container', not 'missing'; the advice and the resume check must still agree
    wrong = tmp_path / "thumbnails"
    lines = [line.split() for line in inputs.good_list.read_text().splitlines() if line.strip()]
    for rel, _ in lines:
        (wrong / rel).parent.mkdir(parents=True, exist_ok=True)
        (wrong / rel).write_bytes(b"a thumbnail, not a video\n" * 20)
    work = tmp_path / "w"
    argv = no_ray(inputs, work, ann=inputs.good_list)
    argv[argv.index("--data-prefix") + 1] = str(wrong)
    err = refused(capsys, argv)
    assert f"'unreadable container' ({len(lines)}; e.g. {wrong / lines[0][0]})" in err
    assert "a corrected --data-prefix or list is accepted too, since none of this work dir's" \
           " videos was scored" in err
    fixed = no_ray(inputs, work, ann=inputs.good_list)          # as the advice says: accepted
    assert run.main(fixed) == 0, capsys.readouterr().err
    summary = json.loads((work / results.SUMMARY_FILE).read_text())
    assert summary["videos_ok"] == len(lines) and summary["failures"] == {}


def test_a_file_where_the_work_dir_should_be_is_one_message(inputs, tmp_path, capsys):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    err = refused(capsys, no_ray(inputs, blocker))
    assert f"cannot write results in {blocker}" in err and "Fix:" in err


def test_a_second_driver_on_a_work_dir_in_use_is_refused(inputs, tmp_path, capsys):
    held = results.lock_work_dir(tmp_path / "w")
    try:
        err = refused(capsys, no_ray(inputs, tmp_path / "w"))
        assert "in use by another harness.run" in err
    finally:
        held.close()


def _in_namespace(script: str) -> subprocess.CompletedProcess:
    if subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode:
        if os.environ.get("HARNESS_REQUIRE_UNSHARE") == "1":
            pytest.fail("unshare --mount is not permitted here, but CI needs this test to run")
        pytest.skip("needs `unshare --mount` (root)")
    env = dict(os.environ, PYTHONPATH=worker_pythonpath())
    return subprocess.run(["unshare", "--mount", "sh", "-c", script], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_a_full_disk_mid_run_is_one_message_and_what_was_written_stays(inputs, tmp_path):
    work = tmp_path / "small"
    work.mkdir()
    argv = " ".join(no_ray(inputs, work, "--flush-every", "1"))
    count = (f'{sys.executable} -c "from harness import results;'
             f" print('recorded', len(results.done_indices('{work}')))\"")
    # a 12 KiB tmpfs: run.json, the lock and one part fill it; the next part does not fit
    result = _in_namespace(f"mount -t tmpfs -o size=12k none {work} && {sys.executable} -m"
                           f" harness.run {argv}; echo exit=$?; {count}")
    assert "exit=2" in result.stdout, result.stdout + result.stderr
    assert f"error: cannot write results in {work}: " in result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    recorded = int(result.stdout.split("recorded ")[1].split()[0])
    assert 1 <= recorded < 8 + len(BROKEN)


def test_a_read_only_work_dir_is_one_message(inputs, tmp_path):
    work = tmp_path / "ro"
    work.mkdir()
    argv = " ".join(no_ray(inputs, work))
    result = _in_namespace(f"mount --bind -o ro {work} {work} && {sys.executable} -m harness.run"
                           f" {argv}; echo exit=$?")
    assert "exit=2" in result.stdout, result.stdout + result.stderr
    assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr


def test_a_resume_retries_transient_failures_and_keeps_the_files_own(inputs, tmp_path):
    work = tmp_path / "w"
    first = run.execute(run.parse_args(no_ray(inputs, work)))
    assert first["videos_failed"] == len(BROKEN)
    # as if two videos had failed transiently in that run
    writer = results.ResultWriter(work)
    for row in results.read_predictions(work).to_pylist()[:2]:
        writer.add(VideoResult(row["index"], row["path"], row["label"], "failed", "timeout", "stalled"))
    writer.close()
    assert results.read_predictions(work).to_pylist()[0]["error"] == "timeout"
    second = run.execute(run.parse_args(no_ray(inputs, work)))
    assert second["videos_this_run"] == 2                         # only the transient ones
    assert second["videos_ok"] == first["videos_ok"] and second["failures"] == first["failures"]
    third = run.execute(run.parse_args(no_ray(inputs, work, "--retry-failed")))
    assert third["videos_this_run"] == len(BROKEN)                # the file's own, on request


def test_a_changed_pipeline_is_refused_on_resume(inputs, tmp_path, capsys):
    work = tmp_path / "w"
    assert run.main(no_ray(inputs, work, "--limit", "2")) == 0
    err = refused(capsys, no_ray(inputs, work, "--cfg-options", "data.test.pipeline.1.frame_interval=1"))
    assert "holds results of another run (differs in: config_digest)" in err
    # the same file's content under another path is the same job
    copy = tmp_path / "copy.py"
    shutil.copy(CONFIG, copy)
    argv = no_ray(inputs, work)
    argv[argv.index("--config") + 1] = str(copy)
    assert run.main(argv) == 0


def test_a_video_whose_reads_fail_with_eio_is_a_read_error_and_scored_once_storage_recovers(
        inputs, tmp_path, capsys):
    """A flaky disk or NFS mount (FUSE, tests/fuse_stall.py): reads of one file fail with EIO
    until the storage recovers. The video is recorded 'read error' (transient), not a broken
    video; the same command afterwards scores it. A file that does not exist stays 'missing'."""
    from chaos_support import StallingMount, can_inject

    missing = can_inject()
    if missing:
        if os.environ.get("HARNESS_REQUIRE_UNSHARE") == "1":
            pytest.fail(f"the EIO test cannot run: {missing}")
        pytest.skip(missing)
    source = tmp_path / "videos"
    shutil.copytree(inputs.videos, source)
    good = [line for line in inputs.good_list.read_text().splitlines() if line.strip()]
    first, label = good[0].split()
    (source / "flaky").mkdir()
    shutil.copy(source / first, source / "flaky" / "eio.mp4")      # a real video: only reads fail
    ann = tmp_path / "list.txt"
    ann.write_text("\n".join(good + [f"flaky/eio.mp4 {label}", f"flaky/not_there.mp4 {label}"]) + "\n")
    recovered = tmp_path / "recovered"
    work = tmp_path / "w"
    with StallingMount(source, tmp_path / "mnt", ["flaky/eio.mp4"], eio_until=recovered) as mounted:
        argv = no_ray(inputs, work, "--cfg-options", "harness.storage.backoff_s=0.01", ann=ann)
        argv[argv.index("--data-prefix") + 1] = str(mounted)
        assert run.main(argv) == 0, capsys.readouterr().err
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in results.read_predictions(work).to_pylist()}
        assert (rows["eio.mp4"]["status"], rows["eio.mp4"]["error"]) == ("failed", "read error")
        assert "Input/output error" in rows["eio.mp4"]["message"]
        assert rows["not_there.mp4"]["error"] == "missing"
        recovered.touch()                                            # the storage is back
        assert run.main(argv) == 0, capsys.readouterr().err          # the same command
    after = {r["path"].rsplit("/", 1)[-1]: r for r in results.read_predictions(work).to_pylist()}
    assert after["eio.mp4"]["status"] == "ok"
    by_path = {r["path"]: r for r in results.read_predictions(work).to_pylist()}
    assert after["eio.mp4"]["scores"] == by_path[str(mounted / first)]["scores"]   # its twin's
    assert after["not_there.mp4"]["error"] == "missing"              # not retried: still missing
    summary = json.loads((work / results.SUMMARY_FILE).read_text())
    assert summary["videos_this_run"] == 1 and summary["failures"] == {"missing": 1}


def test_a_finished_run_rerun_has_nothing_to_do_and_keeps_its_timing(inputs, tmp_path, capsys,
                                                                     caplog, monkeypatch):
    # issue 19, item 5: no Ray, no actor; one line says so; summary.json keeps the measurement
    work = tmp_path / "w"
    argv = no_ray(inputs, work, ann=inputs.good_list)
    assert run.main(argv) == 0
    capsys.readouterr()
    first = json.loads((work / results.SUMMARY_FILE).read_text())
    assert first["videos_this_run"] == 8 and first["throughput_videos_per_s"] > 0
    monkeypatch.setattr(run, "make_runner", lambda job: pytest.fail("started a runner"))
    with caplog.at_level("INFO", logger="harness.run"):
        assert run.main(argv) == 0
    out = capsys.readouterr().out
    assert (f"nothing to do: all 8 videos of the list are recorded in {work}; the summary keeps"
            " the earlier run's timing (to run them again: --overwrite; to retry the failed ones:"
            " --retry-failed)") in caplog.messages
    assert not any(m.startswith("resuming:") for m in caplog.messages)
    again = json.loads((work / results.SUMMARY_FILE).read_text())
    for key in ("wall_s", "throughput_videos_per_s", "videos_this_run", "sessions", "top1",
                "videos_ok", "videos_total"):
        assert again[key] == first[key], key
    # the table is the earlier run's measurement, not "0.000 videos/s"
    assert (f"throughput           {first['throughput_videos_per_s']:.3f} videos/s (8 in"
            f" {first['wall_s']:.1f} s)") in out


def test_a_finished_run_rerun_with_bench_loops_runs_only_the_loops(inputs, tmp_path, caplog):
    work = tmp_path / "w"
    first = run.execute(run.parse_args(no_ray(inputs, work, ann=inputs.good_list)))
    with caplog.at_level("INFO", logger="harness.run"):
        again = run.execute(run.parse_args(no_ray(inputs, work, "--bench-loops", "2",
                                                  ann=inputs.good_list)))
    assert any(m.startswith("nothing to do: all 8 videos of the list are recorded in")
               and "running only the benchmark loops asked for" in m for m in caplog.messages)
    assert [d["loops"] for d in again["bench"]["devices"]] == [2]
    for key in ("wall_s", "throughput_videos_per_s", "videos_this_run", "top1"):
        assert again[key] == first[key], key
