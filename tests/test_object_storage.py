"""Videos and lists in S3-compatible object storage, against a real server (moto, tests/s3_support).

The views of a video read from the server equal those of the same file on disk, bit for bit
(fast path, decord fallback, open-GOP files, broken files' reasons); ``harness.run --cpus 2``
over ``s3://`` paths records exactly what the run over the local copies records; bad storage
inputs are one clear error (wrong credentials, a missing bucket) or a per-video reason
(missing object, too large, a server that stops), and a stopped run resumes once the server
is back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness import config as harness_config
from harness.data import ViewDecoder, storage
from harness.data.storage import StorageError, StorageOptions
from harness.run import main
from harness.stages import DecodeWorker
from pipeline_support import BROKEN, CONFIG, REPO, shared_inputs
from s3_support import CREDENTIALS, S3Server, free_port
from test_open_gop import OPEN_GOP, encode

BUCKET = "kinetics"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def server(inputs):
    """The test server with the pipeline inputs' videos (broken ones too) and lists."""
    with S3Server() as s3:
        s3.upload(inputs.videos, BUCKET, "val")
        for lst in (inputs.mixed_list, inputs.good_list):
            s3.put(f"{BUCKET}/lists/{lst.name}", lst.read_bytes())
        yield s3


@pytest.fixture
def aws_env(server, monkeypatch):
    """The standard AWS variables, as a user sets them: credentials and the endpoint."""
    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": server.endpoint}.items():
        monkeypatch.setenv(key, value)
    return {**os.environ}


def decoder(server, **options) -> ViewDecoder:
    return ViewDecoder(harness_config.test_pipeline(harness_config.load_config(CONFIG)),
                       storage=StorageOptions(endpoint_url=server.endpoint, **options))


def local_videos(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- bytes: the same views

def test_views_from_the_server_equal_the_files(inputs, server, aws_env):
    dec = decoder(server)
    names = local_videos(inputs.videos)
    assert len(names) >= 10
    worker = DecodeWorker(dec)
    for name in names:
        local, remote = inputs.videos / name, f"s3://{BUCKET}/val/{name}"
        status_local, views_local = worker.decode(0, str(local))
        status_remote, views_remote = worker.decode(0, remote)
        assert status_local.ok == status_remote.ok, (name, status_local, status_remote)
        if status_local.ok:
            assert np.array_equal(views_local, views_remote), name
            assert status_local.open_gop == status_remote.open_gop
        else:   # the broken files: the same reason from memory as from disk
            assert status_local.reason == status_remote.reason, name
    assert {"empty", "unreadable container"} <= {
        worker.decode(0, f"s3://{BUCKET}/val/{rel}")[0].reason for rel in BROKEN}


@pytest.mark.parametrize("seek", ["in-order", "reference"])
def test_an_open_gop_file_from_the_server_decodes_as_from_disk(server, tmp_path, seek):
    path = encode(tmp_path / "open.mp4", OPEN_GOP)
    uri = server.put(f"{BUCKET}/odd/open.mp4", path.read_bytes())
    from test_open_gop import decoder as open_gop_decoder

    dec = open_gop_decoder(seek)
    dec.storage = StorageOptions(endpoint_url=server.endpoint)
    local, info_local = dec.decode(path)
    local = local.copy()       # the decoder reuses its output array
    remote, info_remote = dec.decode(uri)
    assert info_local == info_remote == {"open_gop": True}
    assert np.array_equal(local, remote)


# ---------------------------------------------------------------- lists from a bucket

@pytest.mark.parametrize("layout", ["as is", "flat"])
def test_the_kinetics_csv_lists_a_bucket_as_a_folder(server, aws_env, tmp_path, capsys, layout):
    from test_kinetics_csv import EXPECTED, make_videos, write_csv

    from harness.data.filelist import main as filelist

    root = make_videos(tmp_path / "val", layout)       # keys with spaces, quotes, parentheses
    uri = server.upload(root, BUCKET, f"csv-{layout.replace(' ', '-')}")
    csv_path, lines = write_csv(tmp_path / "validate.csv", is_cc=True)
    out = tmp_path / "val_list.txt"
    assert filelist(["--kinetics-csv", str(csv_path), uri, "--out", str(out)]) == 0
    assert out.read_text().splitlines() == EXPECTED[layout]
    assert (tmp_path / "val_list.txt.missing.txt").read_text().splitlines() == [lines[0], lines[5], lines[7]]
    assert "2 entries have no video file" in capsys.readouterr().err


def test_listing_a_missing_prefix_is_one_error(server, aws_env, tmp_path, capsys):
    from harness.data.filelist import main as filelist

    assert filelist([f"s3://{BUCKET}/no/such/prefix", "--out", str(tmp_path / "l.txt")]) == 2
    assert f"video folder not found: s3://{BUCKET}/no/such/prefix" in capsys.readouterr().err


# ---------------------------------------------------------------- per-video failures

def test_a_missing_object_is_missing_and_a_large_one_too_large(inputs, server, aws_env):
    worker = DecodeWorker(decoder(server, max_video_mb=0.001))     # 1 kB
    status, views = worker.decode(0, f"s3://{BUCKET}/val/no/such/video.mp4")
    assert (status.ok, status.reason, views) == (False, "missing", None)
    name = next(n for n in local_videos(inputs.videos) if n.endswith(".mp4") and "broken" not in n)
    status, _ = worker.decode(0, f"s3://{BUCKET}/val/{name}")
    assert status.reason == "too large" and "max_video_mb" in status.message


def test_a_store_that_does_not_answer_is_a_read_error_after_the_tries(aws_env):
    dead = StorageOptions(endpoint_url=f"http://127.0.0.1:{free_port()}", attempts=3, backoff_s=0.2)
    worker = DecodeWorker(ViewDecoder(harness_config.test_pipeline(harness_config.load_config(CONFIG)), storage=dead))
    start = time.monotonic()
    status, _ = worker.decode(0, f"s3://{BUCKET}/val/a.mp4")
    waited = time.monotonic() - start
    assert status.reason == "read error" and "127.0.0.1" in status.message
    assert 0.2 + 0.4 <= waited < 30      # the two backoffs were waited, and no hang


def test_a_read_is_tried_again_after_a_transient_error(monkeypatch):
    calls = []

    def flaky(location, options):
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation")
        return FakeFS(), "bucket/key"

    class FakeFS:
        def open_input_file(self, path):
            import pyarrow as pa

            return pa.BufferReader(b"video bytes")

    monkeypatch.setattr(storage, "_filesystem", flaky)
    options = StorageOptions(attempts=3, backoff_s=0.1)
    assert storage.read_bytes("s3://bucket/key", options) == b"video bytes"
    assert len(calls) == 3 and calls[2] - calls[1] >= 0.2 - 0.01 and calls[1] - calls[0] >= 0.1 - 0.01
    calls.clear()
    with pytest.raises(StorageError) as failed:
        storage.read_bytes("s3://bucket/key", StorageOptions(attempts=2, backoff_s=0))
    assert failed.value.reason == "read error" and "NETWORK_CONNECTION" in str(failed.value)


# ---------------------------------------------------------------- read-ahead in a decode worker

class FarStore:
    """A decoder whose ``fetch`` waits (a store far away) and whose ``decode`` is busy (what
    DecodeWorker needs of a ViewDecoder). ``meet``: the read of the second video and the
    decode of the first wait for each other to have begun, so only a worker that reads one
    video while it decodes another gets through (else they give up, after ``patience``).
    It counts the decodes running at once."""

    def __init__(self, fetch_s: float = 0.0, decode_s: float = 0.0, hangs=(), meet=None,
                 patience: float = 30.0) -> None:
        self.fetch_s, self.decode_s, self.hangs = fetch_s, decode_s, set(hangs)
        self.meet, self.patience = meet, patience
        self.began = {"fetch": threading.Event(), "decode": threading.Event()}
        self.met = True
        self.decoding, self.most_decoding = 0, 0
        self.count = threading.Lock()
        self.hold: threading.Event | None = None     # decode of the first video waits for it

    def _rendezvous(self, mine: str, theirs: str) -> None:
        self.began[mine].set()
        self.met &= self.began[theirs].wait(self.patience)

    def fetch(self, path: str) -> str:
        if self.meet and path == self.meet[1]:
            self._rendezvous("fetch", "decode")
        time.sleep(3600 if path in self.hangs else self.fetch_s)
        return path

    def decode(self, video: str):
        with self.count:
            self.decoding += 1
            self.most_decoding = max(self.most_decoding, self.decoding)
        try:
            if self.meet and video == self.meet[0]:
                self._rendezvous("decode", "fetch")
            if self.hold is not None and video == self.meet[0]:
                self.hold.wait(self.patience)
            time.sleep(self.decode_s)
        finally:
            with self.count:
                self.decoding -= 1
        return np.zeros((1, 3, 1, 2, 2), np.uint8), {}


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_worker_reads_the_next_video_while_it_decodes_one_at_a_time(timeout):
    from concurrent.futures import ThreadPoolExecutor

    from harness.stages import READ_AHEAD

    paths = [f"s3://b/v{i}.mp4" for i in range(4)]
    store = FarStore(meet=(paths[0], paths[1]))
    worker = DecodeWorker(store, metrics=False)
    with ThreadPoolExecutor(READ_AHEAD) as calls:        # Ray's threads of a threaded actor
        statuses = [s for s, _ in calls.map(lambda p: worker.decode(0, p, timeout), paths)]
    assert all(s.ok for s in statuses)
    assert store.met                          # v1 was read while v0 was decoding
    assert store.most_decoding == 1           # and one decode at a time


def test_a_calls_seconds_leave_out_its_wait_for_another_calls_decode():
    from concurrent.futures import ThreadPoolExecutor

    paths = ["s3://b/v0.mp4", "s3://b/v1.mp4"]
    store = FarStore(meet=(paths[0], paths[1]))
    store.hold = threading.Event()           # v0's decode holds the lock until released
    worker = DecodeWorker(store, metrics=False)
    with ThreadPoolExecutor(2) as calls:
        first = calls.submit(worker.decode, 0, paths[0], 30.0)
        second = calls.submit(worker.decode, 1, paths[1], 30.0)
        assert store.began["fetch"].wait(30)     # v1 is read, then waits for v0's decode
        held = time.monotonic()
        time.sleep(1.0)
        store.hold.set()
        held = time.monotonic() - held
        (slow, _), (quick, _) = first.result(30), second.result(30)
    assert slow.ok and quick.ok
    # v0's own decode took the hold; v1's own work is instant: its wait for the lock is left out
    assert quick.seconds < held / 2 <= slow.seconds


def test_a_read_that_hangs_is_a_timeout_and_does_not_hold_up_the_other_call():
    from concurrent.futures import ThreadPoolExecutor

    store = FarStore(fetch_s=0.05, decode_s=0.05, hangs={"s3://b/stuck.mp4"})
    worker = DecodeWorker(store, metrics=False)
    with ThreadPoolExecutor(2) as calls:
        stuck = calls.submit(worker.decode, 0, "s3://b/stuck.mp4", 1.0)
        fine = calls.submit(worker.decode, 1, "s3://b/fine.mp4", 1.0)
        assert fine.result(timeout=5)[0].ok
        status, views = stuck.result(timeout=10)
    assert (status.reason, views) == ("timeout", None) and "s3://b/stuck.mp4" in status.message
    assert worker.decode(2, "s3://b/after.mp4", 1.0)[0].ok               # the worker goes on


# ---------------------------------------------------------------- one clear error

def _refused(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _run_argv(inputs, work, ann, prefix, *extra) -> list[str]:
    return ["--config", str(CONFIG), "--checkpoint", str(inputs.checkpoint), "--build-dir",
            str(inputs.root / "build"), "--ann-file", str(ann), "--data-prefix", str(prefix),
            "--work-dir", str(work), "--no-progress", "--cpus", "2", *extra]


def test_a_missing_bucket_or_list_is_one_clear_error(inputs, server, aws_env, tmp_path, capsys):
    err = _refused(capsys, _run_argv(inputs, tmp_path / "w", inputs.mixed_list, "s3://no-such-bucket/val"))
    assert "no object exists under the video prefix s3://no-such-bucket/val" in err
    err = _refused(capsys, _run_argv(inputs, tmp_path / "w", f"s3://{BUCKET}/lists/none.txt",
                                     f"s3://{BUCKET}/val"))
    assert f"video list not found: s3://{BUCKET}/lists/none.txt" in err


def test_wrong_credentials_are_one_clear_error_that_shows_no_secret(inputs, tmp_path, capsys, monkeypatch):
    with S3Server(check_credentials=True) as strict:
        for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": strict.endpoint}.items():
            monkeypatch.setenv(key, value)
        err = _refused(capsys, _run_argv(inputs, tmp_path / "w", inputs.mixed_list, f"s3://{BUCKET}/val"))
    assert f"cannot read the video prefix s3://{BUCKET}/val" in err and "ACCESS_DENIED" in err
    assert "credentials" in err and CREDENTIALS["AWS_SECRET_ACCESS_KEY"] not in err
    assert not (tmp_path / "w" / "run.json").exists()


# ---------------------------------------------------------------- harness.run end to end

def _harness_run(env, *argv, timeout=600) -> subprocess.CompletedProcess:
    """``python -m harness.run`` (a Ray instance of its own) with ``_run_argv(*argv)``."""
    return subprocess.run(_command(*argv), env=_run_env(env), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def _command(*argv) -> list[str]:
    return [sys.executable, "-m", "harness.run", *_run_argv(*argv)]


def _run_env(env: dict) -> dict:
    env = {k: v for k, v in env.items() if not k.startswith("RAY_")}
    return {**env, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)}


def _rows(work: Path) -> dict[int, dict]:
    return {r["index"]: r for r in pq.read_table(work / "predictions.parquet").to_pylist()}


@pytest.fixture(scope="module")
def local_run(inputs, tmp_path_factory):
    work = tmp_path_factory.mktemp("local-run")
    result = _harness_run(dict(os.environ), inputs, work, inputs.mixed_list, inputs.videos)
    assert result.returncode == 0, result.stderr[-3000:]
    return work


def test_a_run_on_object_storage_records_what_the_run_on_files_records(inputs, server, aws_env,
                                                                       local_run, tmp_path):
    work = tmp_path / "s3"
    result = _harness_run(aws_env, inputs, work, f"s3://{BUCKET}/lists/{inputs.mixed_list.name}",
                          f"s3://{BUCKET}/val")
    assert result.returncode == 0, result.stderr[-3000:]
    local, remote = _rows(local_run), _rows(work)
    assert sorted(local) == sorted(remote) and len(local) == len(inputs.mixed_list.read_text().split("\n")) - 1
    for index, row in local.items():
        other = remote[index]
        assert other["path"] == f"s3://{BUCKET}/val/" + os.path.relpath(row["path"], inputs.videos)
        assert (row["status"], row["error"], row["label"]) == (other["status"], other["error"], other["label"])
        assert row["scores"] == other["scores"], index          # exactly: the same views
    assert {r["error"] for r in remote.values()} == {None, "empty", "unreadable container", "missing"}


def test_a_server_that_stops_mid_run_loses_nothing_and_the_run_resumes(inputs, aws_env, local_run,
                                                                       tmp_path):
    port = free_port()
    s3 = S3Server(port).start()
    try:
        s3.upload(inputs.videos, BUCKET, "val")
        long = tmp_path / "long_list.txt"                 # the good videos, 8 times over
        long.write_text("".join(inputs.good_list.read_text().splitlines(keepends=True) * 8))
        env = {**aws_env, "AWS_ENDPOINT_URL": s3.endpoint}
        work = tmp_path / "w"
        # --max-failure-rate 1: the breaker never stops it (tests/test_breaker.py covers that),
        # so the run records every video, scored or failed, whenever the server stops
        argv = (inputs, work, long, f"s3://{BUCKET}/val", "--flush-every", "1",
                "--max-failure-rate", "1", "--cfg-options", "harness.storage.backoff_s=0.05")
        first = subprocess.Popen(_command(*argv), env=_run_env(env), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 300
        while not list((work / "predictions.parquet").glob("*.parquet")) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1][-3000:]
            time.sleep(0.05)
        s3.stop()                                         # mid-run: a few videos recorded
        _, err = first.communicate(timeout=300)           # ends: no hang
        recorded = _rows(work)
        assert first.returncode == 0, err[-3000:]
        assert len(recorded) == len(long.read_text().splitlines())     # every video, ok or failed
        print(f"first run: {len(recorded)} recorded")
        failed = [r for r in recorded.values() if r["status"] != "ok"]
        assert failed and {r["error"] for r in failed} == {"read error"}, err[-3000:]
        assert all("127.0.0.1" in r["message"] for r in failed)
        # back again (moto keeps nothing: the objects go up again); the same command resumes,
        # retrying the read errors, and ends with every video as the local files score it
        s3 = S3Server(port).start()
        s3.upload(inputs.videos, BUCKET, "val")
        second = _harness_run(env, *argv)
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        s3.stop()
    final = _rows(work)
    assert len(final) == 8 * len(inputs.good_list.read_text().splitlines())
    by_file = {os.path.relpath(r["path"], inputs.videos): r["scores"] for r in _rows(local_run).values()
               if r["status"] == "ok"}
    for row in final.values():
        assert row["status"] == "ok"
        assert row["scores"] == by_file[row["path"].split("/val/", 1)[1]]
