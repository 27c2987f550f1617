"""The driver's streaming scheduler: list entries -> decode workers -> inference actors -> records.

The scheduler owns no data: a decode worker returns a small status and the views as a
separate object; the scheduler passes the views' reference (never the views) to an
inference actor and records what comes back. Its rules, each unit-tested with fake
workers in tests/test_scheduler.py:

1. **Pull, never split.** Entries are taken from the iterator one at a time, only when a
   decode worker is idle and the decoded-clip buffer has room; retried videos go first.
2. **Bounded memory.** At most ``buffer`` videos are decoding or decoded and waiting for an
   actor (``max(videos per call summed over the actors, decoders x their depth)``, and at most
   ``buffer_bytes`` of clips), and at most ``depth`` x its videos per call are queued at each
   inference actor (an actor that batches B videos per call gets 2B: one batch running, the
   next one gathering): the object store's working set is bounded whatever the list's length.
3. **Least busy first.** A decoded clip goes to the live actor with the fewest queued videos
   (the lowest index on ties); a decode goes to the least busy live worker below its depth
   (1, or stages.READ_AHEAD for videos in object storage: the next read overlaps a decode).
4. **A broken video is recorded, not retried.** A decode worker's failure record keeps its
   reason (``timeout`` when the worker gave up on a read); an exception inside a decode is
   ``decode failed``, inside inference ``inference failed`` (the same input fails the same way).
5. **A death is retried.** When a worker or actor dies (Ray restarts it), every video it held is
   retried. The video it was running when it died is charged an attempt (``max_retries`` each,
   then it is recorded ``worker died``); those queued behind it are requeued free. A decoded
   clip lost with its node is charged to the decode worker that made it, not to the actor.
6. **One death is one death.** However many videos a member held when it died, that is one
   death of that member; a member that died more than ``max_restarts`` times (Ray's restart
   budget) is not used again. A pool with no usable member while work remains stops the run
   with an error naming it.
7. **Every wait is bounded.** The driver never blocks on one task: it wakes at least every
   ``TICK_S`` and checks every running task's budget at least that often. A decode that
   outlives ``decode_timeout`` (plus a grace: the worker enforces the timeout itself and
   answers ``timeout``) is recorded ``timeout``, and its worker is killed and replaced by a new
   one (a reader stuck in the kernel may never die: it is abandoned, not waited for). An
   inference call that outlives its budget gets its actor killed and restarted; the video is
   retried, and recorded ``timeout`` when it timed out on every attempt; the calls queued
   behind it are requeued free at once (their errors may come late, and a restarting actor
   must not be killed again for the same hang: one kill, one death). A call whose clip's
   decoder has died since is not the actor's fault: it most likely waits for the clip from a
   lost node, so the video is decoded again and the actor kept (rule 5). A call's
   clock starts when the actor could start it (after its previous call), not when it was queued.
8. **A member that cannot serve is set aside.** An actor whose session cannot open (after a
   restart) is removed from the pool with its error; its videos go elsewhere, and a pool left
   with nobody stops the run with that error. A new or restarted member is used once it
   answers a probe within ``startup_timeout``.
9. **Once.** Each list index is recorded at most once; a second result is dropped with a warning.
10. **Decoders follow demand.** With ``max_decoders`` above the pool's size, the scheduler adds
    decode workers while the measured decode time x the devices' measured rate says the
    devices would wait for clips.
11. **Stop.** After :meth:`Scheduler.stop` no new video starts; what is in flight finishes
    (the reference's calls of rule 12 are dropped: a resume audits those videos).
12. **Audit on the side.** With an :class:`Audit`, each audited video's decoded clip (the same
    reference) also goes to the reference actor once, and its device call returns per-view
    logits. The reference has its own queue, counts in no buffer or depth, and its failures
    are reported to the audit, never charged to a video; the run waits for it only at the end.

The Ray calls go through :class:`RayCalls`; tests substitute a deterministic fake on a virtual
clock.
"""

from __future__ import annotations

import collections
import heapq
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from harness.errors import HarnessError
from harness.stages import (INFERENCE_FAILED, TIMEOUT, WORKER_DIED, Metrics, SessionUnavailable,
                            VideoResult)

log = logging.getLogger(__name__)

TICK_S = 1.0                 # the longest the driver waits without looking around
DECODE_GRACE_S = 30.0        # beyond the worker's own decode timeout, before the driver acts
STALL_REPORT_S = 30.0        # how often a long-running video is named in the log


@dataclass
class Entry:
    """A list entry as the scheduler needs it (harness.data's VideoEntry fits)."""

    index: int
    path: str
    label: int


@dataclass(frozen=True)
class Timeouts:
    """Seconds a task may take before the driver acts (docs/running.md, "Timeouts")."""

    decode: float = 300.0            # one video in a decode worker
    reference: float = 3600.0        # one audited video on the reference actor (a CPU)
    infer: float | None = None       # one video on a device; None: adaptive (infer_budget)
    startup: float = 900.0           # a new or restarted member's first answer (model load)
    infer_first: float = 900.0       # adaptive: before 3 calls have finished (warm-up)
    infer_min: float = 120.0         # adaptive: the floor ...
    infer_factor: float = 20.0       # ... and the multiple of the median call


@dataclass(frozen=True)
class Audit:
    """Rule 12: the videos ``indices`` are also scored by ``reference`` (a CPU actor in fp32);
    ``record(index, out, error)`` gets each of its answers, or why there is none."""

    reference: Any
    indices: frozenset
    record: Callable[[int, dict | None, str | None], None]


@dataclass
class RunStats:
    """What happened to the workers during one run (summary.json)."""

    retries: int = 0
    actor_deaths: int = 0
    decoder_deaths: int = 0
    decode_timeouts: int = 0
    infer_timeouts: int = 0
    decoders_replaced: int = 0
    decoders_added: int = 0
    views_lost: int = 0
    open_gop: int = 0           # files where the reference's seek and ours can differ (harness.seek)
    set_aside: list = field(default_factory=list)   # {"pool", "member", "error"}

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()}


class WorkerLost(Exception):
    """The worker or actor that held a task died."""


class ViewsLost(Exception):
    """A decoded clip an actor needed was lost (its node died): the decoder's loss."""


class TaskFailed(Exception):
    """The task raised: the message is the exception's last line."""


class RayCalls:
    """The Ray calls the scheduler makes, and Ray's errors in the kinds it tells apart.

    ``new_decoder`` makes one more decode worker (replacements, growth); None disables both.
    """

    def __init__(self, new_decoder: Callable[[], Any] | None = None) -> None:
        self._new_decoder = new_decoder

    def clock(self) -> float:
        return time.monotonic()

    def decode(self, worker, entry, timeout: float) -> tuple[Any, Any]:
        """Start decoding ``entry``: ``(status ref, views ref)``."""
        return worker.decode.options(num_returns=2).remote(entry.index, entry.path, timeout)

    def infer(self, actor, index: int, views_ref, with_logits: bool = False) -> Any:
        if with_logits:
            return actor.infer.remote(index, views_ref, True)
        return actor.infer.remote(index, views_ref)

    def probe(self, handle) -> Any:
        """A reference that resolves once ``handle`` serves (its constructor finished)."""
        return handle.probe.remote()

    def wait(self, refs: list, timeout: float) -> list:
        """The finished references among ``refs``: all that are finished once one is, or none
        after ``timeout`` seconds. (Collecting them all makes fewer wake-ups per video when
        hundreds of devices answer; results are fetched by ``get``, so nothing moves here.)"""
        import ray

        done, rest = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0, fetch_local=False)
            done += more
        return done

    def get(self, ref) -> Any:
        """The value of a finished reference (never blocks: the scheduler asks only for those)."""
        import ray
        from ray.exceptions import (ObjectLostError, OwnerDiedError, RayActorError, RayTaskError,
                                    WorkerCrashedError)

        try:
            return ray.get(ref, timeout=TICK_S)
        except (ObjectLostError, OwnerDiedError) as exc:
            raise ViewsLost(type(exc).__name__) from exc
        except (RayActorError, WorkerCrashedError) as exc:
            raise WorkerLost(type(exc).__name__) from exc
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, (ObjectLostError, OwnerDiedError)):
                raise ViewsLost(type(cause).__name__) from exc
            if isinstance(cause, SessionUnavailable):
                raise SessionUnavailable(str(cause)) from exc
            lines = str(exc).strip().splitlines()
            raise TaskFailed(lines[-1] if lines else type(exc).__name__) from exc

    def restart(self, handle) -> None:
        """Kill an actor; Ray restarts it (within its max_restarts)."""
        import ray

        ray.kill(handle, no_restart=False)

    def replace(self, handle) -> Any | None:
        """Kill a decode worker for good (never waiting for it) and make a new one."""
        import ray

        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # already gone
            pass
        return self.new_decoder()

    def new_decoder(self) -> Any | None:
        return self._new_decoder() if self._new_decoder else None


class Pool:
    """The members of one stage (decode workers or inference actors): their queued tickets,
    deaths and whether they may be used."""

    def __init__(self, name: str, handles: list, depth: int, max_restarts: int,
                 depths: list[int] | None = None) -> None:
        if not handles:
            raise HarnessError(f"no {name}s")
        self.name, self.depth, self.max_restarts = name, depth, max_restarts
        self.depths: list[int] = []                 # each member's depth (``depth`` by default)
        self.handles: list = []
        self.queue: list[collections.deque] = []    # tickets in submission order (Ray runs them so)
        self.incarnation: list[int] = []            # which process of the member a ticket went to
        self.deaths: list[int] = []                 # deaths of the member's current actor (Ray's budget)
        self.last_done: list[float] = []            # when the member last finished a task
        self.state: list[str] = []                  # "ready", "starting" (probe out) or "dead"
        self.culprit: dict[tuple[int, int], Any] = {}   # (member, incarnation) -> the task it ran
        self.dead_incarnations: set[tuple[int, int]] = set()   # (member, incarnation) that died
        # (load, member) of members that may take work; entries go stale as loads change and
        # are dropped when met: pick() is O(log members), not a scan of the pool per event
        self._free: list[tuple[int, int]] = []
        for k, handle in enumerate(handles):
            self.add(handle, "ready", depths[k] if depths else depth)

    def add(self, handle, state: str, depth: int | None = None) -> int:
        self.depths.append(depth or self.depth)
        self.handles.append(handle)
        self.queue.append(collections.deque())
        self.incarnation.append(0)
        self.deaths.append(0)
        self.last_done.append(0.0)
        self.state.append(state)
        self._offer(len(self.handles) - 1)
        return len(self.handles) - 1

    def replace(self, member: int, handle) -> None:
        """A new actor in ``member``'s place: a new incarnation with a fresh restart budget;
        whatever was queued at the old one is forgotten (never waited for)."""
        self.handles[member] = handle
        self.incarnation[member] += 1
        self.deaths[member] = 0
        self.forget(member)

    def forget(self, member: int) -> None:
        """Drop every ticket queued at ``member`` (its process is gone or being killed)."""
        self.queue[member].clear()
        self._offer(member)

    def enqueue(self, member: int, ticket) -> None:
        self.queue[member].append(ticket)
        self._offer(member)

    def dequeue(self, member: int, ticket) -> None:
        if ticket in self.queue[member]:
            self.queue[member].remove(ticket)
            self._offer(member)

    def set_state(self, member: int, state: str) -> None:
        self.state[member] = state
        self._offer(member)

    def _offer(self, member: int) -> None:
        load = len(self.queue[member])
        if self.state[member] == "ready" and load < self.depths[member]:
            heapq.heappush(self._free, (load, member))

    def pick(self) -> int | None:
        """The ready member with the fewest queued tasks below its depth (lowest index on ties)."""
        while self._free:
            load, member = self._free[0]
            if self.state[member] == "ready" and len(self.queue[member]) == load:
                return member
            heapq.heappop(self._free)              # stale: its load or state changed since
        return None

    def lost(self, member: int, incarnation: int) -> bool:
        """A task of ``member`` started in ``incarnation`` was lost; True if this is a new death
        (the member's other tasks of that incarnation are lost with it, not counted again)."""
        if incarnation != self.incarnation[member]:
            return False
        self.dead_incarnations.add((member, incarnation))
        self.incarnation[member] += 1
        self.deaths[member] += 1
        if self.deaths[member] > self.max_restarts and self.state[member] != "dead":
            self.set_state(member, "dead")
            log.warning("%s %d died %d times: not used again", self.name, member, self.deaths[member])
        return True

    def usable(self) -> int:
        """Members that serve now or may soon (ready or starting)."""
        return sum(state != "dead" for state in self.state)


@dataclass
class _Work:
    entry: Any
    attempts: int = 0
    timeouts: int = 0


@dataclass
class _Ticket:
    """A task in flight: what it works on, on which member of which pool, since when."""

    work: _Work | None             # None for a probe
    pool: Pool
    member: int
    incarnation: int
    submitted: float
    views_ref: Any = None          # decodes: the views' reference, for the actor
    maker: tuple[int, int] | None = None   # inference: (decoder, incarnation) that made the views


@dataclass
class _RunState:
    todo: Iterator
    record: Callable[[VideoResult], None]
    stats: RunStats = field(default_factory=RunStats)
    retry: collections.deque = field(default_factory=collections.deque)    # _Work
    ready: collections.deque = field(default_factory=collections.deque)    # (_Work, views ref, maker)
    in_flight: dict = field(default_factory=dict)                          # ref -> _Ticket
    decoding: int = 0
    exhausted: bool = False
    recorded: set = field(default_factory=set)
    decode_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50))
    infer_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50))
    last_stall_report: float = 0.0
    audit_sent: set = field(default_factory=set)      # indices sent to the reference (once)
    said_waiting: bool = False

    def work_remains(self, stopping: bool) -> bool:
        return bool(self.ready or (not stopping and (self.retry or not self.exhausted)))


class Scheduler:
    """Streams entries through live decode workers and inference actors (rules: module doc)."""

    def __init__(self, decoders: list, actors: list, depth: int = 2, max_retries: int = 2,
                 max_restarts: int = 3, buffer: int | None = None, buffer_bytes: int | None = None,
                 clip_bytes: int | None = None, max_decoders: int | None = None,
                 timeouts: Timeouts = Timeouts(), metrics: bool = True,
                 calls: RayCalls | None = None, audit: Audit | None = None,
                 videos_per_call: list[int] | None = None, decoder_depth: int = 1) -> None:
        self.decoders = Pool("decode worker", decoders, decoder_depth, max_restarts)
        self.videos_per_call = videos_per_call or [1] * len(actors)
        self.actors = Pool("inference actor", actors, depth, max_restarts,
                           [depth * b for b in self.videos_per_call])
        self.audit = audit
        self.reference = (Pool("reference actor", [audit.reference], 1 << 30, max_restarts)
                          if audit else None)
        self.fixed_buffer = buffer
        self.byte_cap = (max(1, buffer_bytes // clip_bytes) if buffer_bytes and clip_bytes else None)
        self.max_decoders = max(max_decoders or len(decoders), len(decoders))
        self.max_retries = max_retries
        self.timeouts = timeouts
        self.metrics = Metrics(metrics)
        self.calls = calls or RayCalls()
        self.stopping = False

    @property
    def buffer(self) -> int:
        """Videos decoding or decoded and waiting (rule 2)."""
        count = self.fixed_buffer or max(sum(self.videos_per_call),
                                         self.decoders.usable() * self.decoders.depth)
        return max(1, min(count, self.byte_cap or count))

    def stop(self) -> None:
        """Start no new video; let what is in flight finish (rule 11)."""
        self.stopping = True

    def run(self, entries: Iterable, record: Callable[[VideoResult], None],
            tick: Callable[[], None] | None = None) -> RunStats:
        """Process every entry; ``record`` gets each video's result exactly once. ``tick`` is
        called at least every ``TICK_S`` (flushing by time, progress, interrupts)."""
        run = _RunState(iter(entries), record)
        checked = self.calls.clock()
        while True:
            self._start_decodes(run)
            self._route_clips(run)
            if not run.in_flight:
                if run.work_remains(self.stopping):
                    raise self._stuck()
                return run.stats
            if self.reference is not None:
                self._reference_only_left(run)
                if not run.in_flight:
                    continue
            finished = self.calls.wait(list(run.in_flight), TICK_S)
            if tick is not None:
                tick()
            # budgets are checked every tick (O(members), so not per event), also while other
            # tasks keep finishing; a deadline is acted on within a tick of passing
            if not finished or self.calls.clock() - checked >= TICK_S:
                checked = self.calls.clock()
                self._expire(run)
                self._report_stalls(run)
            for ref in finished:
                if ref in run.in_flight:            # (an expiry may have dropped it)
                    self._finished(run, run.in_flight.pop(ref), ref)

    # ------------------------------------------------------------ starting work

    def _next_work(self, run: _RunState) -> _Work | None:
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
        return _Work(entry)

    def _submit(self, run: _RunState, ref, ticket: _Ticket) -> None:
        run.in_flight[ref] = ticket
        ticket.pool.enqueue(ticket.member, ticket)

    def _start_decodes(self, run: _RunState) -> None:
        while run.decoding + len(run.ready) < self.buffer:
            member = self.decoders.pick()
            if member is None:
                return
            work = self._next_work(run)
            if work is None:
                return
            status_ref, views_ref = self.calls.decode(self.decoders.handles[member], work.entry,
                                                      self.timeouts.decode)
            self._submit(run, status_ref, _Ticket(work, self.decoders, member,
                                                  self.decoders.incarnation[member],
                                                  self.calls.clock(), views_ref))
            run.decoding += 1

    def _route_clips(self, run: _RunState) -> None:
        while run.ready:
            member = self.actors.pick()
            if member is None:
                return
            work, views_ref, maker = run.ready.popleft()
            audited = self.audit is not None and work.entry.index in self.audit.indices
            ref = self.calls.infer(self.actors.handles[member], work.entry.index, views_ref, audited)
            self._submit(run, ref, _Ticket(work, self.actors, member, self.actors.incarnation[member],
                                           self.calls.clock(), views_ref, maker))

    def _probe(self, run: _RunState, pool: Pool, member: int) -> None:
        """Use ``member`` again once it answers (rule 8)."""
        pool.set_state(member, "starting")
        ref = self.calls.probe(pool.handles[member])
        self._submit(run, ref, _Ticket(None, pool, member, pool.incarnation[member], self.calls.clock()))

    # ------------------------------------------------------------ events

    def _finished(self, run: _RunState, ticket: _Ticket, ref) -> None:
        pool, member = ticket.pool, ticket.member
        if pool is self.reference:
            self._on_reference(ticket, ref)
            return
        queue = pool.queue[member]
        running = queue[0] if queue else None        # Ray runs a member's tasks in order
        pool.dequeue(member, ticket)
        pool.last_done[member] = self.calls.clock()
        if ticket.pool is self.decoders and ticket.work is not None:
            run.decoding -= 1
        try:
            value = self.calls.get(ref)
        except SessionUnavailable as exc:
            self._set_aside(run, ticket, str(exc))
        except ViewsLost as exc:
            if ticket.maker is None:   # a decode's own status: its worker's node went away
                self._on_lost(run, ticket, f"{pool.name} died: {exc}", running)
            else:
                self._on_views_lost(run, ticket, str(exc))
        except WorkerLost as exc:
            self._on_lost(run, ticket, f"{pool.name} died: {exc}", running)
        except TaskFailed as exc:
            self._on_task_error(run, ticket, str(exc))
        else:
            if ticket.work is None:
                if pool.state[member] == "starting" and ticket.incarnation == pool.incarnation[member]:
                    pool.set_state(member, "ready")
            elif pool is self.decoders:
                self._on_decoded(run, ticket, value)
            else:
                self._on_scored(run, ticket, value)
        self._scale_decoders(run)

    def _on_decoded(self, run: _RunState, ticket: _Ticket, status: dict) -> None:
        if status.get("seconds") is not None:
            run.decode_s.append(float(status["seconds"]))
        run.stats.open_gop += int(bool(status.get("open_gop")))
        if status.get("replace_me"):   # the worker abandoned stuck reads: a fresh process
            self._replace_decoder(run, ticket.member, "it abandoned stuck reads")
        if status["ok"]:
            run.ready.append((ticket.work, ticket.views_ref, (ticket.member, ticket.incarnation)))
            self._send_to_reference(run, ticket)
            return
        if status["reason"] == TIMEOUT:
            run.stats.decode_timeouts += 1
        self._finish(run, VideoResult.failed(ticket.work.entry, status["reason"],
                                             status["message"], status.get("node")))

    def _on_scored(self, run: _RunState, ticket: _Ticket, out: dict) -> None:
        if out.get("seconds") is not None:
            run.infer_s.append(float(out["seconds"]))
        self._finish(run, VideoResult.scored(ticket.work.entry, out))

    def _on_task_error(self, run: _RunState, ticket: _Ticket, message: str) -> None:
        if ticket.work is None:  # a probe that raised: the member cannot serve
            self._set_aside(run, ticket, message)
            return
        decoding = ticket.pool is self.decoders
        self.metrics.failed("driver")
        self._finish(run, VideoResult.failed(ticket.work.entry,
                                             "decode failed" if decoding else INFERENCE_FAILED,
                                             f"{ticket.work.entry.path}: {message}"))

    def _on_lost(self, run: _RunState, ticket: _Ticket, message: str, running) -> None:
        """``running``: the member's task that was running when this loss was seen (the first
        loss of a death names the culprit; the others of that death were queued behind it)."""
        pool = ticket.pool
        culprit = pool.culprit.setdefault((ticket.member, ticket.incarnation), running)
        if pool.lost(ticket.member, ticket.incarnation):
            if pool is self.decoders:
                run.stats.decoder_deaths += 1
            else:
                run.stats.actor_deaths += 1
            if pool.state[ticket.member] != "dead":
                self._probe(run, pool, ticket.member)   # Ray restarts it: use it once it answers
        if ticket.work is None:
            return
        if culprit is None or culprit is ticket:         # it was running: charged an attempt
            self._retry(run, ticket.work, message)
        else:                                            # queued behind the one that was
            run.stats.retries += 1
            run.retry.append(ticket.work)

    def _on_views_lost(self, run: _RunState, ticket: _Ticket, message: str) -> None:
        """Rule 5: the clip's node died; the decoder that made it is charged, not the actor."""
        run.stats.views_lost += 1
        if ticket.maker is not None:
            member, incarnation = ticket.maker
            if self.decoders.lost(member, incarnation):
                run.stats.decoder_deaths += 1
        self._retry(run, ticket.work, f"its decoded clip was lost ({message})")

    def _clip_probably_lost(self, run: _RunState, ticket: _Ticket, waited: float) -> None:
        """Rule 7: a call past its budget whose clip was made by a decoder that has died since
        is most likely waiting for that clip from a lost node (Ray says so only once it has
        declared the node dead): the decoder is charged, the video retried, the actor kept."""
        run.stats.views_lost += 1
        member, _ = ticket.maker
        log.warning("video %d: no answer from inference actor %d after %.0f s, and decode worker %d"
                    " that made its clip has died: decoding it again", ticket.work.entry.index,
                    ticket.member, waited, member)
        self._retry(run, ticket.work, f"its decoded clip was lost with decode worker {member}")

    def _retry(self, run: _RunState, work: _Work, message: str, reason: str = WORKER_DIED) -> None:
        if work.attempts < self.max_retries:
            work.attempts += 1
            run.stats.retries += 1
            run.retry.append(work)
            return
        self.metrics.failed("driver")
        self._finish(run, VideoResult.failed(
            work.entry, reason, f"{work.entry.path}: {message} ({work.attempts + 1} attempts)"))

    def _set_aside(self, run: _RunState, ticket: _Ticket, error: str) -> None:
        """Rule 8: the member cannot serve; its video (if any) goes elsewhere, unharmed."""
        pool, member = ticket.pool, ticket.member
        if pool.state[member] != "dead":
            pool.set_state(member, "dead")
            run.stats.set_aside.append({"pool": pool.name, "member": member, "error": error})
            log.warning("%s %d set aside: %s", pool.name, member, error)
        if ticket.work is not None:
            run.retry.append(ticket.work)
        if not pool.usable():
            raise HarnessError(f"no {pool.name} can serve: {error}")

    def _finish(self, run: _RunState, result: VideoResult) -> None:
        if result.index in run.recorded:
            log.warning("video %d already recorded; ignoring a second result", result.index)
            return
        run.recorded.add(result.index)
        run.record(result)

    # ------------------------------------------------------------ the audit (rule 12)

    def _send_to_reference(self, run: _RunState, ticket: _Ticket) -> None:
        index = ticket.work.entry.index
        if self.audit is None or index not in self.audit.indices or index in run.audit_sent:
            return
        run.audit_sent.add(index)
        ref = self.calls.infer(self.reference.handles[0], index, ticket.views_ref, True)
        self._submit(run, ref, _Ticket(ticket.work, self.reference, 0, self.reference.incarnation[0],
                                       self.calls.clock(), ticket.views_ref))

    def _on_reference(self, ticket: _Ticket, ref) -> None:
        pool = self.reference
        pool.dequeue(0, ticket)
        pool.last_done[0] = self.calls.clock()
        index = ticket.work.entry.index
        try:
            out = self.calls.get(ref)
        except (WorkerLost, ViewsLost, TaskFailed, SessionUnavailable) as exc:
            self.audit.record(index, None, f"{type(exc).__name__}: {exc}")
        else:
            self.audit.record(index, out, None)

    def _drop_reference_calls(self, run: _RunState, why: str) -> None:
        """Forget the reference's queued calls (a stop, a restart): each audit is told why."""
        for ref, ticket in list(run.in_flight.items()):
            if ticket.pool is self.reference:
                del run.in_flight[ref]
                self.audit.record(ticket.work.entry.index, None, why)
        self.reference.forget(0)

    def _reference_only_left(self, run: _RunState) -> None:
        """Only the reference is still working: say so once (or drop it after a stop)."""
        pending = len(self.reference.queue[0])
        if not pending or pending != len(run.in_flight):
            return
        if self.stopping:
            self._drop_reference_calls(run, "the run was stopped")
        elif not run.said_waiting:
            run.said_waiting = True
            log.warning("every video is recorded; waiting for the fp32 reference on %d audited"
                        " video(s)", pending)

    def _reference_timed_out(self, ticket: _Ticket, waited: float, run: _RunState) -> None:
        pool = self.reference
        self.audit.record(ticket.work.entry.index, None, f"no answer from the reference after {waited:.0f} s")
        pool.lost(0, ticket.incarnation)
        self._drop_reference_calls(run, "the reference actor was restarted")
        if pool.state[0] != "dead":
            self.calls.restart(pool.handles[0])

    # ------------------------------------------------------------ time

    def infer_budget(self, run: _RunState) -> float:
        """Seconds one video may take on a device (rule 7): the configured value, else
        ``infer_first`` until three calls finished, then ``infer_factor`` x their median."""
        t = self.timeouts
        if t.infer is not None:
            return t.infer
        if len(run.infer_s) < 3:
            return t.infer_first
        return max(t.infer_min, t.infer_factor * statistics.median(run.infer_s))

    def _budget(self, run: _RunState, ticket: _Ticket) -> float:
        if ticket.work is None:
            return self.timeouts.startup
        if ticket.pool is self.reference:
            return self.timeouts.reference
        if ticket.pool is self.decoders:
            return self.timeouts.decode + DECODE_GRACE_S
        return self.infer_budget(run)

    def _pools(self) -> list[Pool]:
        return [self.decoders, self.actors] + ([self.reference] if self.reference else [])

    def _running(self, pool: Pool) -> Iterator[tuple[int, _Ticket, float]]:
        """(member, the task it is running, since when) for every busy member."""
        for member, queue in enumerate(pool.queue):
            if queue:
                head = queue[0]
                yield member, head, max(head.submitted, pool.last_done[member])

    def _expire(self, run: _RunState) -> None:
        """Rule 7: act on every task past its budget."""
        now = self.calls.clock()
        for pool in self._pools():
            for member, ticket, since in list(self._running(pool)):
                if now - since < self._budget(run, ticket) - 1e-6:   # (float slack)
                    continue
                waited = now - since
                for ref, t in list(run.in_flight.items()):
                    if t is ticket:
                        del run.in_flight[ref]
                pool.dequeue(member, ticket)
                if pool is self.reference:
                    self._reference_timed_out(ticket, waited, run)
                elif ticket.work is None:
                    self._set_aside(run, ticket, f"did not answer within {waited:.0f} s of (re)starting")
                elif pool is self.decoders:
                    self._decode_timed_out(run, ticket, waited)
                elif ticket.maker in self.decoders.dead_incarnations:
                    self._clip_probably_lost(run, ticket, waited)
                else:
                    self._infer_timed_out(run, ticket, waited)

    def _decode_timed_out(self, run: _RunState, ticket: _Ticket, waited: float) -> None:
        run.decoding -= 1
        run.stats.decode_timeouts += 1
        self._finish(run, VideoResult.failed(
            ticket.work.entry, TIMEOUT, f"{ticket.work.entry.path}: no decode after {waited:.0f} s"
            " (a stalled read? the decode worker was replaced)"))
        self._replace_decoder(run, ticket.member, f"it did not answer for {waited:.0f} s")

    def _abandon(self, run: _RunState, pool: Pool, member: int) -> None:
        """``member``'s process is being killed: forget every task queued there (its error may
        come late or never, and must not be waited for) and requeue their videos free."""
        for ref, ticket in list(run.in_flight.items()):
            if ticket.pool is pool and ticket.member == member:
                del run.in_flight[ref]
                if ticket.work is not None:
                    if pool is self.decoders:
                        run.decoding -= 1
                    run.stats.retries += 1
                    run.retry.append(ticket.work)
        pool.forget(member)

    def _replace_decoder(self, run: _RunState, member: int, why: str) -> None:
        pool = self.decoders
        new = self.calls.replace(pool.handles[member])
        log.warning("decode worker %d replaced: %s", member, why)
        self._abandon(run, pool, member)
        if new is None:
            pool.incarnation[member] += 1
            pool.set_state(member, "dead")
            return
        run.stats.decoders_replaced += 1
        pool.replace(member, new)
        self._probe(run, pool, member)

    def _infer_timed_out(self, run: _RunState, ticket: _Ticket, waited: float) -> None:
        run.stats.infer_timeouts += 1
        pool, member = self.actors, ticket.member
        pool.culprit[(member, ticket.incarnation)] = ticket     # the others queued are collateral
        log.warning("video %d: no answer from inference actor %d after %.0f s: restarting it",
                    ticket.work.entry.index, member, waited)
        if pool.lost(member, ticket.incarnation):
            run.stats.actor_deaths += 1
        ticket.work.timeouts += 1
        reason = TIMEOUT if ticket.work.timeouts == ticket.work.attempts + 1 else WORKER_DIED
        self._retry(run, ticket.work, f"no answer from the device after {waited:.0f} s", reason)
        self._abandon(run, pool, member)     # the calls queued behind it die with the process
        if pool.state[member] != "dead":
            self.calls.restart(pool.handles[member])
            self._probe(run, pool, member)

    def _report_stalls(self, run: _RunState) -> None:
        """Name the video that has been running longest, when it is unusually long."""
        now = self.calls.clock()
        if now - run.last_stall_report < STALL_REPORT_S:
            return
        longest = None
        for pool, typical in ((self.decoders, run.decode_s), (self.actors, run.infer_s)):
            usual = statistics.median(typical) if typical else 0.0
            for member, ticket, since in self._running(pool):
                if ticket.work is not None and now - since > max(STALL_REPORT_S, 5 * usual):
                    if longest is None or since < longest[2]:
                        longest = (pool, member, since, ticket)
        if longest is not None:
            pool, member, since, ticket = longest
            run.last_stall_report = now
            log.warning("video %d (%s) has been on %s %d for %.0f s", ticket.work.entry.index,
                        ticket.work.entry.path, pool.name, member, now - since)

    # ------------------------------------------------------------ decoders follow demand

    def _scale_decoders(self, run: _RunState) -> None:
        """Rule 10: add a decode worker when the devices' measured rate needs more."""
        if len(self.decoders.handles) >= self.max_decoders or len(run.decode_s) < 3 \
                or len(run.infer_s) < 3 or self.stopping:
            return
        devices = sum(state == "ready" for state in self.actors.state)
        rate = devices / max(statistics.median(run.infer_s), 1e-6)          # videos/s wanted
        needed = math.ceil(1.2 * rate * statistics.median(run.decode_s))     # decoders for it
        if needed > self.decoders.usable():
            handle = self.calls.new_decoder()
            if handle is None:
                self.max_decoders = len(self.decoders.handles)
                return
            run.stats.decoders_added += 1
            member = self.decoders.add(handle, "starting")
            self._probe(run, self.decoders, member)
            log.info("decoders: %d (devices would wait for clips)", len(self.decoders.handles))

    def _stuck(self) -> HarnessError:
        """Work remains but nothing can run: a pool has no usable member."""
        for pool in (self.actors, self.decoders):
            if not pool.usable():
                return HarnessError(f"every {pool.name} died and could not be restarted;"
                                    " see the Ray logs (`ray logs`, or the dashboard)")
        return HarnessError("the scheduler has work but nothing in flight (a bug: please report it)")
