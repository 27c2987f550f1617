"""The driver's streaming scheduler: list entries -> decode workers -> inference actors -> records.

The scheduler owns no data: a decode worker returns a small status and the views as a
separate object; the scheduler passes the views' reference (never the views) to an
inference actor and records what comes back. Its rules, each unit-tested with fake
workers in tests/test_scheduler.py:

1. **Pull, never split.** Entries are taken from the iterator one at a time, only when a
   decode worker is idle and the decoded-clip buffer has room; retried videos go first.
2. **Bounded memory.** At most ``buffer`` videos are decoding or decoded and waiting for an
   actor, and at most ``depth`` are queued at each inference actor: the object store holds at
   most ``buffer + depth x actors`` clips, whatever the list's length.
3. **Least busy first.** A decoded clip goes to the live actor with the fewest queued videos
   (the lowest index on ties); a decode goes to the first idle live worker.
4. **A broken video is recorded, not retried.** A decode worker's failure record keeps its
   reason; an exception inside a decode is ``decode failed``, inside inference
   ``inference failed`` (the same input would fail the same way).
5. **A death is retried.** When a worker or actor dies (Ray restarts it), every video it held is
   retried, up to ``max_retries`` times each, then recorded ``worker died``.
6. **One death is one death.** However many videos a member held when it died, that is one
   death of that member; a member that died more than ``max_restarts`` times (Ray's restart
   budget) is not used again. A pool with no live member while work remains stops the run
   with an error naming it.
7. **Once.** Each list index is recorded at most once; a second result is dropped with a
   warning.

The Ray calls go through :class:`RayCalls`; tests substitute a deterministic fake.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from harness.errors import HarnessError
from harness.stages import INFERENCE_FAILED, WORKER_DIED, Metrics, VideoResult

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """A list entry as the scheduler needs it (harness.data's VideoEntry fits)."""

    index: int
    path: str
    label: int


@dataclass
class RunStats:
    """What happened to the workers during one run (summary.json)."""

    retries: int = 0
    actor_deaths: int = 0
    decoder_deaths: int = 0


class WorkerLost(Exception):
    """The worker or actor that held a task died (or its result object was lost)."""


class TaskFailed(Exception):
    """The task raised: the message is the exception's last line."""


class RayCalls:
    """The Ray calls the scheduler makes, and Ray's errors in the two kinds it tells apart."""

    def decode(self, worker, entry) -> tuple[Any, Any]:
        """Start decoding ``entry``: ``(status ref, views ref)``."""
        return worker.decode.options(num_returns=2).remote(entry.index, entry.path)

    def infer(self, actor, index: int, views_ref) -> Any:
        return actor.infer.remote(index, views_ref)

    def wait(self, refs: list) -> Any:
        """One finished reference among ``refs``."""
        import ray

        done, _ = ray.wait(refs, num_returns=1)
        return done[0]

    def get(self, ref) -> Any:
        import ray
        from ray.exceptions import ObjectLostError, OwnerDiedError, RayActorError, RayTaskError

        try:
            return ray.get(ref)
        except (RayActorError, ObjectLostError, OwnerDiedError) as exc:
            raise WorkerLost(type(exc).__name__) from exc
        except RayTaskError as exc:
            lines = str(exc).strip().splitlines()
            raise TaskFailed(lines[-1] if lines else type(exc).__name__) from exc


class Pool:
    """The members of one stage (decode workers or inference actors): their queued work,
    deaths and whether they may still be used."""

    def __init__(self, name: str, handles: list, depth: int, max_restarts: int) -> None:
        if not handles:
            raise HarnessError(f"no {name}s")
        self.name, self.handles, self.depth, self.max_restarts = name, list(handles), depth, max_restarts
        self.load = [0] * len(handles)
        self.deaths = [0] * len(handles)   # also the member's incarnation: a ticket remembers it
        self.alive = [True] * len(handles)

    def pick(self) -> int | None:
        """The live member with the fewest queued tasks below ``depth`` (lowest index on ties)."""
        best = None
        for i, (alive, load) in enumerate(zip(self.alive, self.load)):
            if alive and load < self.depth and (best is None or load < self.load[best]):
                best = i
        return best

    def lost(self, member: int, incarnation: int) -> bool:
        """A task of ``member`` started in ``incarnation`` was lost; True if this is a new death
        (the member's other tasks of that incarnation are lost with it, not counted again)."""
        if incarnation != self.deaths[member]:
            return False
        self.deaths[member] += 1
        if self.deaths[member] > self.max_restarts:
            self.alive[member] = False
            log.warning("%s %d died %d times: not used again", self.name, member, self.deaths[member])
        return True

    def any_alive(self) -> bool:
        return any(self.alive)


@dataclass
class _Work:
    entry: Any
    attempts: int = 0


@dataclass
class _Ticket:
    """A task in flight: what it works on, on which member of which pool."""

    work: _Work
    pool: Pool
    member: int
    incarnation: int
    views_ref: Any = None          # decodes: the views' reference, for the actor


@dataclass
class _RunState:
    todo: Iterator
    record: Callable[[VideoResult], None]
    stats: RunStats = field(default_factory=RunStats)
    retry: collections.deque = field(default_factory=collections.deque)    # _Work
    ready: collections.deque = field(default_factory=collections.deque)    # (_Work, views ref)
    in_flight: dict = field(default_factory=dict)                          # ref -> _Ticket
    decoding: int = 0
    exhausted: bool = False
    recorded: set = field(default_factory=set)

    def work_remains(self) -> bool:
        return bool(self.ready or self.retry or not self.exhausted)


class Scheduler:
    """Streams entries through live decode workers and inference actors (rules: module doc)."""

    def __init__(self, decoders: list, actors: list, depth: int = 2, max_retries: int = 2,
                 max_restarts: int = 3, buffer: int | None = None, metrics: bool = True,
                 calls: RayCalls | None = None) -> None:
        self.decoders = Pool("decode worker", decoders, 1, max_restarts)
        self.actors = Pool("inference actor", actors, depth, max_restarts)
        self.buffer = buffer or max(len(actors), len(decoders))
        self.max_retries = max_retries
        self.metrics = Metrics(metrics)
        self.calls = calls or RayCalls()

    def run(self, entries: Iterable, record: Callable[[VideoResult], None]) -> RunStats:
        """Process every entry; ``record`` gets each video's result exactly once."""
        run = _RunState(iter(entries), record)
        while True:
            self._start_decodes(run)
            self._route_clips(run)
            if not run.in_flight:
                if run.work_remains():
                    raise self._stuck()
                return run.stats
            ref = self.calls.wait(list(run.in_flight))
            ticket = run.in_flight.pop(ref)
            ticket.pool.load[ticket.member] -= 1
            try:
                value = self.calls.get(ref)
            except WorkerLost as exc:
                self._on_lost(run, ticket, str(exc))
                continue
            except TaskFailed as exc:
                self._on_task_error(run, ticket, str(exc))
                continue
            if ticket.pool is self.decoders:
                self._on_decoded(run, ticket, value)
            else:
                self._on_scored(run, ticket, value)

    # ------------------------------------------------------------ starting work

    def _next_work(self, run: _RunState) -> _Work | None:
        if run.retry:
            return run.retry.popleft()
        if run.exhausted:
            return None
        entry = next(run.todo, None)
        if entry is None:
            run.exhausted = True
            return None
        return _Work(entry)

    def _start_decodes(self, run: _RunState) -> None:
        while run.decoding + len(run.ready) < self.buffer:
            member = self.decoders.pick()
            if member is None:
                return
            work = self._next_work(run)
            if work is None:
                return
            status_ref, views_ref = self.calls.decode(self.decoders.handles[member], work.entry)
            run.in_flight[status_ref] = _Ticket(work, self.decoders, member,
                                                self.decoders.deaths[member], views_ref)
            self.decoders.load[member] += 1
            run.decoding += 1

    def _route_clips(self, run: _RunState) -> None:
        while run.ready:
            member = self.actors.pick()
            if member is None:
                return
            work, views_ref = run.ready.popleft()
            ref = self.calls.infer(self.actors.handles[member], work.entry.index, views_ref)
            run.in_flight[ref] = _Ticket(work, self.actors, member, self.actors.deaths[member])
            self.actors.load[member] += 1

    # ------------------------------------------------------------ events

    def _on_decoded(self, run: _RunState, ticket: _Ticket, status: dict) -> None:
        run.decoding -= 1
        if status["ok"]:
            run.ready.append((ticket.work, ticket.views_ref))
        else:
            self._finish(run, VideoResult.failed(ticket.work.entry, status["reason"],
                                                 status["message"], status.get("node")))

    def _on_scored(self, run: _RunState, ticket: _Ticket, out: dict) -> None:
        self._finish(run, VideoResult.scored(ticket.work.entry, out))

    def _on_task_error(self, run: _RunState, ticket: _Ticket, message: str) -> None:
        decoding = ticket.pool is self.decoders
        if decoding:
            run.decoding -= 1
        self.metrics.failed("driver")
        self._finish(run, VideoResult.failed(ticket.work.entry,
                                             "decode failed" if decoding else INFERENCE_FAILED,
                                             f"{ticket.work.entry.path}: {message}"))

    def _on_lost(self, run: _RunState, ticket: _Ticket, message: str) -> None:
        if ticket.pool is self.decoders:
            run.decoding -= 1
        if ticket.pool.lost(ticket.member, ticket.incarnation):
            if ticket.pool is self.decoders:
                run.stats.decoder_deaths += 1
            else:
                run.stats.actor_deaths += 1
        work = ticket.work
        if work.attempts < self.max_retries:
            work.attempts += 1
            run.stats.retries += 1
            run.retry.append(work)
            return
        self.metrics.failed("driver")
        self._finish(run, VideoResult.failed(
            work.entry, WORKER_DIED,
            f"{work.entry.path}: {ticket.pool.name} died: {message} ({work.attempts + 1} attempts)"))

    def _finish(self, run: _RunState, result: VideoResult) -> None:
        if result.index in run.recorded:
            log.warning("video %d already recorded; ignoring a second result", result.index)
            return
        run.recorded.add(result.index)
        run.record(result)

    def _stuck(self) -> HarnessError:
        """Work remains but nothing can run: a pool has no live member."""
        for pool in (self.actors, self.decoders):
            if not pool.any_alive():
                return HarnessError(f"every {pool.name} died and could not be restarted;"
                                    " see the Ray logs (`ray logs`, or the dashboard)")
        return HarnessError("the scheduler has work but nothing in flight (a bug: please report it)")
