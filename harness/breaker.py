"""Stop a run whose failures are systematic, instead of recording 20,000 of them.

A wrong ``--data-prefix`` makes every video ``missing``; a broken session makes every call fail.
:class:`CircuitBreaker` watches the results as they are recorded: when the first ``window``
finished videos all failed, or more than ``max_rate`` of them has failed once ``window``
finished, it raises :class:`SystematicFailure` naming the dominant reason and a likely fix.
What was recorded stays on disk; after the fix, the same command resumes.
"""

from __future__ import annotations

from collections import Counter

from harness.errors import HarnessError

# The likely fix for the usual systematic causes, by failure reason.
FIXES = {
    "missing": "the videos are not where the list says: check --data-prefix (or data.test.data_prefix);"
               " a video is read as <data_prefix>/<path in the list>, on the decode worker's node",
    "empty": "the video files are empty: an interrupted download or copy?",
    "unreadable container": "the files are not videos FFmpeg can open: a wrong folder or list?",
    "no video stream": "the files hold no video stream: a wrong folder or list?",
    "decode failed": "decoding fails everywhere: check the files, and the decode workers' logs (ray logs)",
    "storage error": "the object store does not answer or refuses: check the endpoint ($AWS_ENDPOINT_URL or"
                     " harness.storage.endpoint_url), the credentials on every node, and the store's health",
    "too large": "the objects are larger than harness.storage.max_video_mb: raise it if they are videos",
    "timeout": "reads do not finish: a stalled network filesystem or object store? (see --decode-timeout)",
    "inference failed": "the model session fails: check the model against the config (views per video,"
                        " input shape) and the actors' logs (ray logs)",
    "worker died": "workers keep dying: out of memory? see `ray logs` and the dashboard",
}


class SystematicFailure(HarnessError):
    """Too many videos failed, for the same reason, to be a few broken files."""


class CircuitBreaker:
    """``observe(result)`` for every recorded video; raises SystematicFailure when tripped."""

    def __init__(self, window: int = 50, max_rate: float = 0.5) -> None:
        self.window, self.max_rate = window, max_rate
        self.finished = 0
        self.reasons: Counter = Counter()

    def observe(self, result) -> None:
        self.finished += 1
        if result.status != "ok":
            self.reasons[result.error] += 1
        if self.finished < self.window:
            return
        failed = sum(self.reasons.values())
        if failed == self.finished or (self.max_rate < 1 and failed > self.max_rate * self.finished):
            raise SystematicFailure(self._message(failed))

    def _message(self, failed: int) -> str:
        reason, count = self.reasons.most_common(1)[0]
        fix = FIXES.get(reason, "see the failures in predictions.parquet")
        limit = ("all of the first" if failed == self.finished
                 else f"more than {self.max_rate:.0%} of the")
        return (f"stopped: {failed} of {self.finished} videos failed ({limit} {self.finished});"
                f" most often {reason!r} ({count}). Likely fix: {fix}. What was recorded stays in the"
                " work dir: the same command resumes (--max-failure-rate 1 never stops)")
