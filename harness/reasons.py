"""Why a video failed: one vocabulary for every module that records, retries, resumes or
explains a failure.

Each :class:`Reason` carries what the rest of the harness needs to know about it:

- ``transient``: the video may well succeed on another try (a rerun of the same command
  retries it; ``--retry-failed`` retries the others too);
- ``location``: a corrected ``--data-prefix`` or list explains it (the video was not found
  or could not be read where the run looked): the breaker's advice leads with the corrected
  command, and messages quote such a path as the example of what was not found;
- ``fix``: the likely fix when the failure is systematic (the circuit breaker names it).

The value is the text written to predictions.parquet and summary.json.
"""

from __future__ import annotations

from enum import Enum

from harness.errors import HarnessError


class Reason(str, Enum):
    """A failure reason (its value is what predictions.parquet holds)."""

    # the file's own: reading it
    MISSING = "missing"
    PERMISSION_DENIED = "permission denied"
    TOO_LARGE = "too large"
    READ_ERROR = "read error"
    # the file's own: decoding it
    EMPTY = "empty"
    UNREADABLE_CONTAINER = "unreadable container"
    NO_VIDEO_STREAM = "no video stream"
    DECODE_FAILED = "decode failed"
    # the machinery's
    TIMEOUT = "timeout"
    WORKER_DIED = "worker died"
    INFERENCE_FAILED = "inference failed"

    def __str__(self) -> str:
        return self.value

    @property
    def transient(self) -> bool:
        """A rerun retries it: the video may succeed next time."""
        return self in _TRANSIENT

    @property
    def location(self) -> bool:
        """A corrected --data-prefix or list explains it."""
        return self in _LOCATION

    @property
    def fix(self) -> str:
        """The likely fix when many videos fail for this reason."""
        return _FIXES[self]

    @classmethod
    def parse(cls, text: str | None) -> "Reason | None":
        """The reason a recorded row names (None for a scored row or an unknown text)."""
        try:
            return cls(text)
        except ValueError:
            return None


_TRANSIENT = frozenset({Reason.READ_ERROR, Reason.TIMEOUT, Reason.WORKER_DIED,
                        Reason.INFERENCE_FAILED})
_LOCATION = frozenset({Reason.MISSING, Reason.READ_ERROR})

_FIXES = {
    Reason.MISSING: "the videos are not where the list says: check --data-prefix (or"
                    " data.test.data_prefix); a video is read as <data_prefix>/<path in the list>,"
                    " on the decode worker's node",
    Reason.PERMISSION_DENIED: "the files exist but the decode workers may not read them: make them"
                              " readable by the user Ray runs as (on every node), or copy them",
    Reason.TOO_LARGE: "the files are larger than harness.storage.max_video_mb: raise it if they"
                      " are videos",
    Reason.READ_ERROR: "reads fail (an I/O error of the disk, a network filesystem or the object"
                       " store): check the storage's health; for object storage the endpoint"
                       " ($AWS_ENDPOINT_URL or harness.storage.endpoint_url) and the credentials"
                       " on every node",
    Reason.EMPTY: "the video files are empty: an interrupted download or copy?",
    Reason.UNREADABLE_CONTAINER: "the files are not videos FFmpeg can open: a wrong folder or list?",
    Reason.NO_VIDEO_STREAM: "the files hold no video stream: a wrong folder or list?",
    Reason.DECODE_FAILED: "decoding fails everywhere: check the files, and the decode workers'"
                          " logs (ray logs)",
    Reason.TIMEOUT: "reads or device calls do not finish: a stalled network filesystem or object"
                    " store, or a hung device? (see --decode-timeout, --infer-timeout)",
    Reason.WORKER_DIED: "workers keep dying: out of memory? see `ray logs` and the dashboard",
    Reason.INFERENCE_FAILED: "the model session fails: check the model against the config (views"
                             " per video, input shape) and the actors' logs (ray logs)",
}


class VideoError(HarnessError):
    """A video (or a list) failed for ``reason``; ``path`` names it, ``detail`` says more.
    Reading raises harness.data.storage's StorageError, decoding harness.data's DecodeError."""

    def __init__(self, path, reason: Reason, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), Reason(reason), detail
        super().__init__(f"{path}: {self.reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):  # picklable across Ray workers
        return (type(self), (self.path, self.reason, self.detail))
