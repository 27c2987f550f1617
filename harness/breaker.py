"""Stop a run whose failures are systematic, instead of recording 20,000 of them.

A wrong ``--data-prefix`` makes every video ``missing``; a broken session makes every call fail.
:class:`CircuitBreaker` watches the results as they are recorded: when the first ``window``
finished videos all failed, or more than ``max_rate`` of them has failed once ``window``
finished, it raises :class:`SystematicFailure` naming the dominant reason, its likely fix
(``Reason.fix``), one full path that failed for it, and what to run once it is fixed: the
advice follows harness.results.prepare_work_dir, which accepts a corrected ``--data-prefix``
or list in the same work dir while none of its videos was scored (``scored_before``: the
work dir held scored videos before this run). ``max_rate`` 1 never stops. What was recorded
stays on disk, and the run's summary and report say it stopped (harness.run).
"""

from __future__ import annotations

from collections import Counter

from harness.errors import HarnessError
from harness.reasons import Reason


class SystematicFailure(HarnessError):
    """Too many videos failed, for the same reason, to be a few broken files."""


class CircuitBreaker:
    """``observe(result)`` for every recorded video; raises SystematicFailure when tripped."""

    def __init__(self, window: int = 50, max_rate: float = 0.5, scored_before: bool = False) -> None:
        self.window, self.max_rate, self.scored_before = window, max_rate, scored_before
        self.finished = 0
        self.reasons: Counter = Counter()
        self.examples: dict[Reason, str] = {}    # reason -> the first full path that failed so

    def observe(self, result) -> None:
        self.finished += 1
        if result.status != "ok":
            self.reasons[Reason(result.error)] += 1
            self.examples.setdefault(Reason(result.error), str(result.path))
        if self.finished < self.window or self.max_rate >= 1:
            return
        failed = sum(self.reasons.values())
        if failed == self.finished or failed > self.max_rate * self.finished:
            raise SystematicFailure(self._message(failed))

    def _message(self, failed: int) -> str:
        reason, count = self.reasons.most_common(1)[0]
        limit = ("all of the first" if failed == self.finished
                 else f"more than {self.max_rate:.0%} of the")
        return (f"stopped: {failed} of {self.finished} videos failed ({limit} {self.finished});"
                f" most often '{reason}' ({count}; e.g. {self.examples[reason]}). Likely fix:"
                f" {reason.fix}. What was recorded"
                f" stays in the work dir, and its summary and report say the run stopped."
                f" {self._then(reason, failed)} (--max-failure-rate 1 never stops)")

    def _then(self, reason: Reason, failed: int) -> str:
        """What to run once the cause is fixed: true for this work dir's rows, by the rule of
        harness.results.prepare_work_dir (a changed location is accepted while none is scored)."""
        scored = self.scored_before or failed < self.finished
        if reason.location and not reason.transient:     # the fix is the command's
            if not scored:
                return ("Once fixed, run the corrected command (--data-prefix or the list): this"
                        " work dir accepts it, since none of its videos was scored.")
            return ("Once fixed, run the corrected command with --overwrite (or another"
                    " --work-dir): this work dir also holds scored videos of the old location.")
        same = ("the same command resumes and retries these videos" if reason.transient else
                "the same command resumes; add --retry-failed to retry these videos (a resume"
                " keeps failures of the file's own)")
        if reason.transient and not reason.location:     # the machinery's: not the folder's
            return f"Once fixed, {same}."
        moved = ("a corrected --data-prefix or list is accepted too, since none of this work"
                 " dir's videos was scored" if not scored else "a corrected --data-prefix or list"
                 " needs --overwrite (or another --work-dir), since this work dir holds scored videos")
        return f"Once fixed, {same}; {moved}."
