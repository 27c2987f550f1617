"""Reading a video's bytes, local file or object alike: which failure is which reason
(harness.reasons), and which are tried again (harness.data.storage)."""

from __future__ import annotations

import errno

import pytest

from harness.data import storage
from harness.data.storage import StorageError, StorageOptions
from harness.reasons import Reason

FAST = StorageOptions(attempts=3, backoff_s=0.0)


def failing_open(monkeypatch, exc: OSError, times: int = 10**6) -> list:
    """``open`` in harness.data.storage raises ``exc`` ``times`` times, then opens for real."""
    calls = []
    real = open

    def fake(path, mode="r", *args, **kwargs):
        calls.append(path)
        if len(calls) <= times:
            raise exc
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(storage, "open", fake, raising=False)
    return calls


@pytest.mark.parametrize("exc, reason, tries", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory"), Reason.MISSING, 1),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory"), Reason.MISSING, 1),
    (IsADirectoryError(errno.EISDIR, "Is a directory"), Reason.MISSING, 1),
    (PermissionError(errno.EACCES, "Permission denied"), Reason.PERMISSION_DENIED, 1),
    (OSError(errno.EIO, "Input/output error"), Reason.READ_ERROR, 3),
    (OSError(errno.ESTALE, "Stale file handle"), Reason.READ_ERROR, 3),
    (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), Reason.READ_ERROR, 3),
])
def test_each_local_read_failure_has_its_reason(monkeypatch, tmp_path, exc, reason, tries):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"bytes")
    calls = failing_open(monkeypatch, exc)
    with pytest.raises(StorageError) as failed:
        storage.read_bytes(video, FAST)
    assert failed.value.reason is reason and len(calls) == tries
    assert reason.transient == (reason is Reason.READ_ERROR)   # what a rerun retries


def test_a_read_error_that_clears_is_read_on_the_next_try(monkeypatch, tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"video bytes")
    calls = failing_open(monkeypatch, OSError(errno.EIO, "Input/output error"), times=2)
    assert storage.read_bytes(video, FAST) == b"video bytes" and len(calls) == 3


def test_a_file_that_does_not_exist_is_missing_and_a_large_one_too_large(tmp_path):
    with pytest.raises(StorageError) as failed:
        storage.read_bytes(tmp_path / "nope.mp4", FAST)
    assert failed.value.reason is Reason.MISSING
    big = tmp_path / "big.mp4"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(StorageError) as failed:
        storage.read_bytes(big, FAST, limit=1024)
    assert failed.value.reason is Reason.TOO_LARGE and "max_video_mb" in str(failed.value)
    blob = storage.fetch(str(big), StorageOptions(max_video_mb=1))
    assert blob.data == b"x" * 2048
