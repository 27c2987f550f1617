"""The scheduler's loop and what every stage shares: submitting, deaths, probes, retirement,
budgets (the rules: harness.scheduler's docstring)."""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from harness.errors import HarnessError
from harness.limits import MAX_RESTARTS, Timeouts
from harness.reasons import Reason
from harness.scheduler.calls import (TICK_S, Fate, RayCalls, TaskFailed, Unavailable, ViewsLost,
                                     WorkerLost)
from harness.scheduler.members import Call, Member, MemberState, Work
from harness.scheduler.run_state import RunState, RunStats, SetAside
from harness.scheduler.stage_states import (STALL_REPORT_S, DecodeStage, InferStage,
                                            ReferenceStage, StageState)
from harness.stages import Metrics, SessionUnavailable, VideoResult

log = logging.getLogger("harness.scheduler")

PROBE_INTERVAL_S = 1.0       # a member Ray is restarting is asked again this often


@dataclass
class Entry:
    """A list entry as the scheduler needs it (harness.data's VideoEntry fits)."""

    index: int
    path: str
    label: int


@dataclass(frozen=True)
class Audit:
    """Rule 12: the videos ``indices`` are also scored by ``reference`` (a CPU actor in fp32);
    ``record(index, out, error)`` gets each of its answers, or why there is none. Those in
    ``cached`` already have the reference's answer (harness.reference_cache): their device
    call still returns logits, but they are not sent to the reference (None when all are)."""

    reference: Any
    indices: frozenset
    record: Callable[[int, dict | None, str | None], None]
    cached: frozenset = frozenset()


@dataclass(frozen=True)
class Policy:
    """How the scheduler treats its members: queues, retries, budgets, sizes."""

    depth: int = 2                  # calls queued at an inference actor, x its videos per call
    max_retries: int = 2            # attempts charged to a video beyond its first
    timeouts: Timeouts = Timeouts()
    max_decoders: int | None = None  # grow the decode workers up to this many (rule 10)
    decoder_depth: int = 1          # calls a decode worker holds (stages.READ_AHEAD: objects)
    buffer_bytes: int | None = None  # decoded clips waiting, in bytes (rule 2) ...
    clip_bytes: int | None = None    # ... of this size each
    max_restarts: int = MAX_RESTARTS  # deaths before retiring, only where Ray cannot say (rule 6)


class Scheduler:
    """Streams entries through live decode workers and inference actors (rules: module doc).

    ``videos_per_call[k]``: videos inference actor ``k`` runs in one device call (its
    batcher); it holds ``depth`` times that many calls, and that many run at once.
    """

    def __init__(self, decoders: list, actors: list, policy: Policy = Policy(),
                 calls: RayCalls | None = None, audit: Audit | None = None,
                 videos_per_call: list[int] | None = None, metrics: bool = True) -> None:
        if not decoders:
            raise HarnessError("no decode workers")
        if not actors:
            raise HarnessError("no inference actors")
        self.policy = policy
        self.calls = calls or RayCalls()
        self.metrics = Metrics(metrics)
        self.audit = audit
        self.decoders = DecodeStage(self)
        for handle in decoders:
            self.decoders.members.add(handle, policy.decoder_depth, policy.decoder_depth)
        self.videos_per_call = videos_per_call or [1] * len(actors)
        self.actors = InferStage(self)
        for handle, per_call in zip(actors, self.videos_per_call):
            self.actors.members.add(handle, policy.depth * per_call, per_call)
        self.reference = ReferenceStage(self) if audit and audit.reference is not None else None
        if self.reference is not None:
            self.reference.members.add(audit.reference, 1 << 30, 1)
        self._stages: dict[str, StageState] = {s.kind: s for s in self._all_stages()}
        self.byte_cap = (max(1, policy.buffer_bytes // policy.clip_bytes)
                         if policy.buffer_bytes and policy.clip_bytes else None)
        self.max_decoders = max(policy.max_decoders or len(decoders), len(decoders))
        self.stopping = False
        self.stats = RunStats()
        # members whose probe failed while Ray restarts them, to be asked again at probe_due
        # (an index of Member.probe_due, so the loop does not scan every member each event)
        self._to_probe: set[Member] = set()

    def _all_stages(self) -> list[StageState]:
        return [self.decoders, self.actors] + ([self.reference] if self.reference else [])

    @property
    def buffer(self) -> int:
        """Videos decoding or decoded and waiting (rule 2)."""
        count = max(sum(self.videos_per_call),
                    self.decoders.members.usable() * self.policy.decoder_depth)
        return max(1, min(count, self.byte_cap or count))

    def stop(self) -> None:
        """Start no new video; let what is in flight finish (rule 11)."""
        self.stopping = True

    # ------------------------------------------------------------ the loop

    def run(self, entries: Iterable, record: Callable[[VideoResult], None],
            tick: Callable[[], None] | None = None) -> RunStats:
        """Process every entry; ``record`` gets each video's result exactly once. ``tick`` is
        called at least every ``TICK_S`` (flushing by time, progress, interrupts)."""
        run = RunState(iter(entries), record)
        self.stats = run.stats          # (also readable when the run raised)
        checked = self.calls.clock()
        while True:
            self._probe_again(run)
            self._start_decodes(run)
            self._route_clips(run)
            if not self._videos_in_flight():
                if not run.work_remains(self.stopping):
                    if not self._reference_left(run):
                        self._forget_probes(run)
                        return run.stats
                elif not self._starting():
                    raise self._stuck()
            finished = self._wait(run)
            if tick is not None:
                tick()
            # budgets are checked every tick (O(members), so not per event), also while other
            # tasks keep finishing; a deadline is acted on within a tick of passing
            if not finished or self.calls.clock() - checked >= TICK_S:
                checked = self.calls.clock()
                self._expire(run)
                self._report_stalls(run)
            for ref in finished:
                call = run.in_flight.pop(ref, None)   # (an expiry or a death may have dropped it)
                if call is not None:
                    self._finished(run, call)

    def _wait(self, run: RunState) -> list:
        """The refs that finished within a tick (or until the next probe is due)."""
        timeout = TICK_S
        due = [m.probe_due for m in self._to_probe if m.probe_due is not None]
        if due:
            due = min(due)
            timeout = min(timeout, max(0.0, due - self.calls.clock()))
        if not run.in_flight:
            self.calls.sleep(timeout)
            return []
        return self.calls.wait(list(run.in_flight), timeout)

    def _videos_in_flight(self) -> int:
        """Calls of the decoders and the devices (the reference's count apart: rule 12)."""
        return self.decoders.members.busy() + self.actors.members.busy()

    def _starting(self) -> bool:
        return any(m.state is MemberState.STARTING for s in (self.decoders, self.actors)
                   for m in s.members)

    def _reference_left(self, run: RunState) -> bool:
        """Every video is recorded: is the reference still working on audited ones? (After a
        stop its calls are dropped: a resume audits those videos.)"""
        if self.reference is None or not self.reference.members.busy():
            return False
        if self.stopping:
            self.reference.drop_calls(run, "the run was stopped")
            return False
        if not run.said_waiting:
            run.said_waiting = True
            log.warning("every video is recorded; waiting for the fp32 reference on %d audited"
                        " video(s)", self.reference.members.busy())
        return True

    def _forget_probes(self, run: RunState) -> None:
        for ref, call in list(run.in_flight.items()):
            if call.work is None:
                del run.in_flight[ref]

    # ------------------------------------------------------------ starting work

    def _next_work(self, run: RunState) -> Work | None:
        if self.stopping:
            return None
        if run.retry:
            return run.retry.popleft()
        if run.exhausted:
            return None
        entry = next(run.todo, None)
        if entry is None:
            run.exhausted = True
            return None
        return Work(entry)

    def _start_decodes(self, run: RunState) -> None:
        while self.decoders.members.busy() + len(run.ready) < self.buffer:
            member = self.decoders.members.pick()
            if member is None:
                return
            work = self._next_work(run)
            if work is None:
                return
            self.decoders.submit(run, member, work)

    def _route_clips(self, run: RunState) -> None:
        while run.ready:
            member = self.actors.members.pick()
            if member is None:
                return
            self.actors.submit(run, member, run.ready.popleft())

    def send_to_reference(self, run: RunState, work: Work, views) -> None:
        index = work.entry.index
        if (self.audit is None or index not in self.audit.indices or index in self.audit.cached
                or index in run.audit_sent):
            return
        run.audit_sent.add(index)
        member = self.reference.members.all[0]
        if member.state is MemberState.READY:
            self.reference.submit(run, work, views)
        else:   # a side measurement: a resume audits it
            self.audit.record(index, None, f"the reference actor was {member.state.value}")

    def submit(self, run: RunState, stage: StageState, member: Member, call: Call) -> None:
        run.in_flight[call.ref] = call
        member.add(call, self.calls.clock())
        stage.members.offer(member)

    def settle(self, run: RunState, stage: StageState, call: Call) -> None:
        """Forget ``call`` (answered, or given up on): its member may take the next one."""
        run.in_flight.pop(call.ref, None)
        if call.member.remove(call, self.calls.clock()):
            stage.members.offer(call.member)

    # ------------------------------------------------------------ events

    def _finished(self, run: RunState, call: Call) -> None:
        stage, member = self._stages[call.member.kind], call.member
        if call.work is None:
            self._probe_answered(run, stage, call)
            return
        member.last_answer = self.calls.clock()
        try:
            value = self.calls.get(call.ref)
        except SessionUnavailable as exc:
            self.set_aside(run, stage, member, str(exc))
        except ViewsLost as exc:
            self.settle(run, stage, call)
            stage.on_views_lost(run, call, str(exc))
        except WorkerLost as exc:
            self.died(run, stage, member, call.incarnation, f"{member} died: {exc}")
        except TaskFailed as exc:
            self.settle(run, stage, call)
            stage.on_task_error(run, call, str(exc))
        else:
            self.settle(run, stage, call)
            stage.on_value(run, call, value)
        self._scale_decoders(run)

    def retry(self, run: RunState, work: Work, message: str, reason: Reason = Reason.WORKER_DIED) -> None:
        """Charge ``work`` an attempt: retried first, or recorded ``reason`` once spent."""
        if work.attempts < self.policy.max_retries:
            work.attempts += 1
            run.stats.retries += 1
            run.retry.append(work)
            return
        self.metrics.failed("driver")
        self.finish(run, VideoResult.failed(
            work.entry, reason, f"{work.entry.path}: {message} ({work.attempts + 1} attempts)"))

    def requeue(self, run: RunState, work: Work) -> None:
        """Retry ``work`` free: it was only queued where something went wrong."""
        run.stats.retries += 1
        run.retry.append(work)

    def finish(self, run: RunState, result: VideoResult) -> None:
        if result.index in run.recorded:
            log.warning("video %d already recorded; ignoring a second result", result.index)
            return
        run.recorded.add(result.index)
        run.record(result)

    # ------------------------------------------------------------ deaths and restarts

    def died(self, run: RunState, stage: StageState, member: Member, incarnation: int, why: str) -> None:
        """Rules 5-6: ``member``'s process ``incarnation`` died. Once per death: its running
        calls are charged, its queued ones requeued free, none is held any longer; Ray
        restarts it, and it is used again once it answers a probe."""
        if incarnation != member.incarnation or member.state is MemberState.RETIRED:
            return                              # settled already (one death, one count)
        if stage is self.decoders:
            run.stats.decoder_deaths += 1
        elif stage is self.actors:
            run.stats.actor_deaths += 1
        self._end(run, stage, member, why, died=True)
        self._restarting(run, stage, member)

    def kill(self, run: RunState, stage: StageState, member: Member, why: str) -> None:
        """Rule 7: ``member`` hung; kill it (Ray restarts it) and settle its calls as a death."""
        if stage is self.actors:
            run.stats.actor_deaths += 1
        self._end(run, stage, member, why, died=True)
        self.calls.restart(member.handle)
        self._restarting(run, stage, member)

    def _end(self, run: RunState, stage: StageState, member: Member, why: str, died: bool) -> None:
        """``member``'s process is gone or being killed: forget its calls (their errors may come
        late or never, and are not waited for). After a death or a hang the running ones are
        charged an attempt; otherwise (a replacement, a retirement) every video goes back free."""
        running, queued = member.end_incarnation(died)
        for call in running + queued:
            run.in_flight.pop(call.ref, None)
        for call in running:
            stage.on_lost(run, call, died, why)
        for call in queued:
            stage.on_lost(run, call, False, why)
        stage.members.offer(member)

    def _restarting(self, run: RunState, stage: StageState, member: Member) -> None:
        """Ray restarts ``member`` unless its restart budget is spent (Ray's own account)."""
        fate = self.calls.fate(member.handle)
        if fate is Fate.DEAD:
            self.retire(run, stage, member, f"Ray reports it dead for good after {member.deaths}"
                        " death(s): its restarts are spent")
        elif fate is Fate.UNKNOWN and member.deaths > self.policy.max_restarts:
            self.retire(run, stage, member, f"it died {member.deaths} times")
        else:
            member.starting(self.calls.clock())
            self._probe(run, member)

    def replace_decoder(self, run: RunState, member: Member, why: str) -> None:
        """Kill a decode worker for good (never waiting for it) and use a new one in its place."""
        if member.state is MemberState.RETIRED:
            return
        new = self.calls.replace(member.handle)
        log.warning("%s replaced: %s", member, why)
        self._end(run, self.decoders, member, why, died=False)
        if new is None:
            self.retire(run, self.decoders, member, "no replacement could be made")
            return
        run.stats.decoders_replaced += 1
        member.handle = new
        member.starting(self.calls.clock())
        self._probe(run, member)

    def _probe(self, run: RunState, member: Member) -> None:
        """Use ``member`` again once it answers (rules 6, 8)."""
        now = self.calls.clock()
        member.probe_due = None
        self._to_probe.discard(member)
        member.probe = Call(member, member.incarnation, self.calls.probe(member.handle), None, now,
                            started=now)
        run.in_flight[member.probe.ref] = member.probe

    def _probe_again(self, run: RunState) -> None:
        now = self.calls.clock()
        for member in [m for m in self._to_probe if m.probe_due is None or now >= m.probe_due]:
            if member.state is MemberState.STARTING and member.probe_due is not None:
                self._probe(run, member)
            else:
                self._to_probe.discard(member)

    def _probe_answered(self, run: RunState, stage: StageState, call: Call) -> None:
        member = call.member
        if call is not member.probe:
            return                              # a probe of an earlier process
        member.probe = None
        try:
            self.calls.get(call.ref)
        except (SessionUnavailable, TaskFailed) as exc:
            self.set_aside(run, stage, member, str(exc))
        except (WorkerLost, ViewsLost) as exc:
            # Ray is (still) restarting it: not a new death; ask again soon, while Ray says
            # it may come back (within the startup budget, rule 7)
            if self.calls.fate(member.handle) is Fate.DEAD:
                self.retire(run, stage, member, f"Ray reports it dead for good ({exc})")
            else:
                member.probe_due = self.calls.clock() + PROBE_INTERVAL_S
                self._to_probe.add(member)
                if not isinstance(exc, Unavailable):
                    log.info("%s is not serving yet (%s): asking again", member, exc)
        else:
            member.state = MemberState.READY
            member.starting_since = None
            stage.members.offer(member)

    def retire(self, run: RunState, stage: StageState, member: Member, why: str) -> None:
        """``member`` is not used again; what it held goes elsewhere, unharmed."""
        if member.state is MemberState.RETIRED:
            return
        if member.probe is not None:
            run.in_flight.pop(member.probe.ref, None)
        self._to_probe.discard(member)
        member.state = MemberState.RETIRED
        self._end(run, stage, member, why, died=False)
        log.warning("%s is not used again: %s", member, why)

    def set_aside(self, run: RunState, stage: StageState, member: Member, error: str) -> None:
        """Rule 8: the member cannot serve (its session did not open)."""
        if member.state is not MemberState.RETIRED:
            run.stats.set_aside.append(SetAside(stage.kind, member.number, error))
        self.retire(run, stage, member, error)
        if stage is not self.reference and not stage.members.usable():
            raise HarnessError(f"no {stage.kind} can serve: {error}")

    # ------------------------------------------------------------ time

    def infer_budget(self, run: RunState) -> float:
        """Seconds one video may take on a device (rule 7): the configured value, else
        ``infer_first`` until three calls finished, then ``infer_factor`` x their median."""
        t = self.policy.timeouts
        if t.infer is not None:
            return t.infer
        if len(run.infer_s) < 3:
            return t.infer_first
        return max(t.infer_min, t.infer_factor * statistics.median(run.infer_s))

    def _expire(self, run: RunState) -> None:
        """Rule 7: act on every call past its budget, and on members slow to (re)start."""
        now = self.calls.clock()
        startup = self.policy.timeouts.startup
        for stage in self._all_stages():
            for member in stage.members:
                if member.state is MemberState.STARTING and member.starting_since is not None \
                        and now - member.starting_since >= startup - 1e-6:
                    self.set_aside(run, stage, member, f"did not answer within {startup:g} s"
                                   " of (re)starting")
                    continue
                budget = stage.budget(run, member)
                expired = [c for c in member.running() if now - c.started >= budget - 1e-6]
                if expired:
                    stage.on_timed_out(run, member, expired, now - min(c.started for c in expired))

    def _report_stalls(self, run: RunState) -> None:
        """Name the video that has been running longest, when it is unusually long."""
        now = self.calls.clock()
        if now - run.last_stall_report < STALL_REPORT_S:
            return
        long = [found for stage in (self.decoders, self.actors) for found in stage.running_too_long(run)]
        if long:
            member, call, since = min(long, key=lambda found: found[2])
            run.last_stall_report = now
            log.warning("video %d (%s) has been on %s for %.0f s", call.index, call.work.entry.path,
                        member, now - since)

    # ------------------------------------------------------------ decoders follow demand

    def _scale_decoders(self, run: RunState) -> None:
        """Rule 10: add a decode worker when the devices' measured rate needs more."""
        if len(self.decoders.members) >= self.max_decoders or len(run.decode_s) < 3 \
                or len(run.infer_s) < 3 or self.stopping:
            return
        devices = self.actors.members.count(MemberState.READY)
        rate = devices / max(statistics.median(run.infer_s), 1e-6)          # videos/s wanted
        needed = math.ceil(1.2 * rate * statistics.median(run.decode_s))     # decoders for it
        if needed > self.decoders.members.usable():
            handle = self.calls.new_decoder()
            if handle is None:
                self.max_decoders = len(self.decoders.members)
                return
            run.stats.decoders_added += 1
            depth = self.policy.decoder_depth
            member = self.decoders.members.add(handle, depth, depth, MemberState.STARTING)
            member.starting(self.calls.clock())
            self._probe(run, member)
            log.info("decoders: %d (devices would wait for clips)", len(self.decoders.members))

    def _stuck(self) -> HarnessError:
        """Work remains but nothing can run: a pool has no usable member."""
        for stage in (self.actors, self.decoders):
            if not stage.members.usable():
                return HarnessError(f"every {stage.kind} died and could not be restarted;"
                                    " see the Ray logs (`ray logs`, or the dashboard)")
        return HarnessError("the scheduler has work but nothing in flight (a bug: please report it)")
