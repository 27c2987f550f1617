"""One state object per stage (decode, infer, the audit's reference): its members, its budget,
and what it does when one of its calls ends (answered, raised, lost, timed out).

What is the same for every stage (submitting, a member's death, probes, retirement) lives
in :class:`harness.scheduler.Scheduler`; what differs lives here, so no code asks which stage
a call belongs to.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import Any

from harness.reasons import Reason
from harness.scheduler.members import Call, Member, Members, Work
from harness.scheduler.run_state import RunState
from harness.stages import DecodeStatus, VideoResult

log = logging.getLogger("harness.scheduler")

DECODE_GRACE_S = 30.0        # beyond the worker's own decode timeout, before the driver acts
STALL_REPORT_S = 30.0        # how often a long-running video is named in the log


@dataclass(eq=False)
class Clip:
    """A decoded video waiting for an inference actor: its views' reference and its maker."""

    work: Work
    views: Any
    maker: tuple[Member, int]        # the decode worker and the process of it that made it


class StageState:
    """The members of one stage and its handling of calls that end; subclasses say how."""

    kind = "member"

    def __init__(self, scheduler) -> None:
        self.s = scheduler           # the harness.scheduler.core.Scheduler it belongs to
        self.members = Members(self.kind)

    @property
    def handles(self) -> list:
        return self.members.handles

    def budget(self, run: RunState, member: Member) -> float:
        """Seconds one running call may take."""
        raise NotImplementedError

    def on_value(self, run: RunState, call: Call, value) -> None:
        raise NotImplementedError

    def on_task_error(self, run: RunState, call: Call, message: str) -> None:
        raise NotImplementedError

    def on_lost(self, run: RunState, call: Call, charged: bool, why: str) -> None:
        """The call's process died or was killed. ``charged``: it was running (rule 5)."""
        if charged:
            self.s.retry(run, call.work, why)
        else:
            self.s.requeue(run, call.work)

    def on_views_lost(self, run: RunState, call: Call, message: str) -> None:
        """The object the call returns or takes was lost with its node."""
        self.s.died(run, self, call.member, call.incarnation, f"{call.member} lost its node: {message}")

    def on_timed_out(self, run: RunState, member: Member, expired: list[Call], waited: float) -> None:
        raise NotImplementedError

    def running_too_long(self, run: RunState) -> list[tuple[Member, Call, float]]:
        """(member, call, since) for each work call running unusually long (the stall report)."""
        return []


class DecodeStage(StageState):
    """Decode workers: a list entry -> the video's views (a separate object) and a status."""

    kind = "decode worker"

    def budget(self, run: RunState, member: Member) -> float:
        # the worker times the read and the decode itself; its concurrent calls decode in turn
        return self.s.policy.timeouts.decode * member.concurrency + DECODE_GRACE_S

    def submit(self, run: RunState, member: Member, work: Work) -> None:
        status, views = self.s.calls.decode(member.handle, work.entry, self.s.policy.timeouts.decode)
        self.s.submit(run, self, member, Call(member, member.incarnation, status, work,
                                              self.s.calls.clock(), views=views))

    def on_value(self, run: RunState, call: Call, status: DecodeStatus) -> None:
        if status.seconds is not None:
            run.decode_s.append(float(status.seconds))
        run.stats.open_gop += int(status.open_gop)
        if status.ok:
            run.ready.append(Clip(call.work, call.views, (call.member, call.incarnation)))
            self.s.send_to_reference(run, call.work, call.views)
        else:
            if status.reason is Reason.TIMEOUT:
                run.stats.decode_timeouts += 1
            self.s.finish(run, VideoResult.failed(call.work.entry, status.reason, status.message,
                                                  status.node))
        if status.replace_me:   # the worker abandoned stuck reads: a fresh process
            self.s.replace_decoder(run, call.member, "it abandoned stuck reads")

    def on_task_error(self, run: RunState, call: Call, message: str) -> None:
        self.s.metrics.failed("driver")
        self.s.finish(run, VideoResult.failed(call.work.entry, Reason.DECODE_FAILED,
                                              f"{call.work.entry.path}: {message}"))

    def on_timed_out(self, run: RunState, member: Member, expired: list[Call], waited: float) -> None:
        for call in expired:
            run.stats.decode_timeouts += 1
            self.s.settle(run, self, call)
            self.s.finish(run, VideoResult.failed(
                call.work.entry, Reason.TIMEOUT, f"{call.work.entry.path}: no decode after"
                f" {waited:.0f} s (a stalled read? the decode worker was replaced)"))
        self.s.replace_decoder(run, member, f"it did not answer for {waited:.0f} s")

    def running_too_long(self, run: RunState):
        return _long_calls(self.members, run.decode_s, self.s.calls.clock())


class InferStage(StageState):
    """Inference actors, one per device: a clip -> the video's scores."""

    kind = "inference actor"

    def budget(self, run: RunState, member: Member) -> float:
        return self.s.infer_budget(run)

    def submit(self, run: RunState, member: Member, clip: Clip) -> None:
        s = self.s
        index = clip.work.entry.index
        audited = s.audit is not None and index in s.audit.indices
        ref = s.calls.infer(member.handle, index, clip.views, audited)
        s.submit(run, self, member, Call(member, member.incarnation, ref, clip.work,
                                         s.calls.clock(), views=clip.views, maker=clip.maker))

    def on_value(self, run: RunState, call: Call, out: dict) -> None:
        if out.get("seconds") is not None:
            run.infer_s.append(float(out["seconds"]))
        self.s.finish(run, VideoResult.scored(call.work.entry, out))

    def on_task_error(self, run: RunState, call: Call, message: str) -> None:
        """Rule 4: a device call that raised may succeed again (a transient device error; a
        batch's bad input is retried alone by the actor): charged an attempt, like a death."""
        self.s.retry(run, call.work, message, Reason.INFERENCE_FAILED)

    def on_views_lost(self, run: RunState, call: Call, message: str) -> None:
        """Rule 5: the clip's node died; the decoder that made it is charged, not the actor."""
        run.stats.views_lost += 1
        maker, incarnation = call.maker
        self.s.died(run, self.s.decoders, maker, incarnation, f"its node was lost ({message})")
        self.s.retry(run, call.work, f"its decoded clip was lost ({message})")

    def on_timed_out(self, run: RunState, member: Member, expired: list[Call], waited: float) -> None:
        hung = []
        for call in expired:
            maker, incarnation = call.maker
            if incarnation in maker.ended_by_death:
                self._clip_probably_lost(run, call, waited)
            else:
                hung.append(call)
        if not hung:
            return
        run.stats.infer_timeouts += 1
        log.warning("video %s: no answer from %s after %.0f s: restarting it",
                    ", ".join(str(c.index) for c in hung), member, waited)
        for call in hung:
            call.work.timeouts += 1
        self.s.kill(run, self, member, f"no answer from the device after {waited:.0f} s")

    def on_lost(self, run: RunState, call: Call, charged: bool, why: str) -> None:
        if charged and call.work.timeouts == call.work.attempts + 1:
            self.s.retry(run, call.work, why, Reason.TIMEOUT)     # hung on every attempt
        else:
            super().on_lost(run, call, charged, why)

    def _clip_probably_lost(self, run: RunState, call: Call, waited: float) -> None:
        """Rule 7: a call past its budget whose clip was made by a decoder process that has
        died since is most likely waiting for that clip from a lost node (Ray says so only once
        it has declared the node dead): the video is decoded again, the actor kept."""
        run.stats.views_lost += 1
        maker, _ = call.maker
        log.warning("video %d: no answer from %s after %.0f s, and %s that made its clip has"
                    " died: decoding it again", call.index, call.member, waited, maker)
        self.s.settle(run, self, call)
        self.s.retry(run, call.work, f"its decoded clip was lost with {maker}")

    def running_too_long(self, run: RunState):
        return _long_calls(self.members, run.infer_s, self.s.calls.clock())


class ReferenceStage(StageState):
    """Rule 12: the audit's fp32 reference actor. Its answers and failures go to the audit;
    nothing it does is charged to a video."""

    kind = "reference actor"

    def budget(self, run: RunState, member: Member) -> float:
        return self.s.policy.timeouts.reference

    def submit(self, run: RunState, work: Work, views) -> None:
        s = self.s
        member = self.members.all[0]
        ref = s.calls.infer(member.handle, work.entry.index, views, True)
        s.submit(run, self, member, Call(member, member.incarnation, ref, work, s.calls.clock(),
                                         views=views))

    def on_value(self, run: RunState, call: Call, out: dict) -> None:
        self.s.audit.record(call.index, out, None)

    def on_task_error(self, run: RunState, call: Call, message: str) -> None:
        self.s.audit.record(call.index, None, f"TaskFailed: {message}")

    def on_lost(self, run: RunState, call: Call, charged: bool, why: str) -> None:
        self.s.audit.record(call.index, None, why)

    def on_views_lost(self, run: RunState, call: Call, message: str) -> None:
        self.s.settle(run, self, call)
        self.s.audit.record(call.index, None, f"ViewsLost: {message}")

    def on_timed_out(self, run: RunState, member: Member, expired: list[Call], waited: float) -> None:
        for call in expired:
            self.s.settle(run, self, call)
            self.s.audit.record(call.index, None, f"no answer from the reference after {waited:.0f} s")
        self.s.kill(run, self, member, "the reference actor was restarted")

    def drop_calls(self, run: RunState, why: str) -> None:
        """Forget the reference's calls (a stop): each audit is told why."""
        for member in self.members:
            for call in list(member.calls):
                self.s.settle(run, self, call)
                self.s.audit.record(call.index, None, why)


def _long_calls(members: Members, typical, now: float) -> list[tuple[Member, Call, float]]:
    usual = statistics.median(typical) if typical else 0.0
    return [(m, c, c.started) for m in members for c in m.running()
            if now - c.started > max(STALL_REPORT_S, 5 * usual)]
