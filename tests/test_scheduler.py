"""The scheduler's rules (harness/scheduler/__init__.py's docstring), each tested by tests
named ``test_rule_<n>_...`` (test_every_rule_has_a_test_named_after_it checks there is one).

Ray's part is simulated by ``FakeCalls``: every task finishes after its worker's latency on a
virtual clock, ``wait`` returns the earliest or gives up after its timeout, and a worker can be
told to die, hang, answer late, or fail to open its session. A worker may run several tasks at
once (a threaded actor: they finish in whatever order their latencies say), and after a death
Ray takes ``restart_s`` to restart it, answering probes meanwhile with "the actor is
restarting", with Ray's own restart budget (``fate``). Clips live in a weak set, as objects in
Ray's store live while anyone refers to them. No Ray, no processes: the runs are deterministic
and take milliseconds, also when they cover hours of simulated time.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import re
import weakref

import numpy as np
import pytest

import harness.scheduler
from harness.errors import HarnessError
from harness.reasons import Reason
from harness.scheduler import (DECODE_GRACE_S, TICK_S, Audit, Entry, Fate, Policy, Scheduler,
                               TaskFailed, Timeouts, Unavailable, ViewsLost, WorkerLost)
from harness.stages import DecodeStatus, SessionUnavailable

CLASSES = 4
HANG = math.inf


class Ref:
    _ids = itertools.count()

    def __init__(self) -> None:
        self.n = next(self._ids)
        self.views = None

    def __repr__(self) -> str:
        return f"Ref{self.n}"


class Died(Exception):
    """The task during which its worker dies."""


class FakeWorker:
    """A decode worker or inference actor.

    ``latency`` per task (``slow`` overrides it per video; HANG: never answers; ``hangs_once``
    videos hang on their first task only); ``broken``
    videos give a failure record, ``raises`` raise inside the task, ``dies_at[i]`` deaths happen
    at video i (one per attempt), ``answers_timeout`` videos are answered ``timeout`` by the worker
    itself, ``loses_views`` videos' clips are lost with their node (actors only), and
    ``session_fails_after`` deaths its session no longer opens. ``concurrency`` tasks run at
    once (a threaded actor: they finish in whatever order their latencies say); after a death
    Ray takes ``restart_s`` to restart it (its session loading), and calls sent meanwhile fail
    with "the actor is restarting".
    """

    def __init__(self, name: str, latency: float = 1.0, slow=None, broken=(), raises=(),
                 dies_at=None, answers_timeout=(), loses_views=(), session_fails_after=None,
                 hangs_once=(), clip_never_arrives=(), concurrency: int = 1,
                 restart_s: float = 0.0) -> None:
        self.name, self.latency, self.slow = name, latency, dict(slow or {})
        self.hangs_once = set(hangs_once)
        # videos whose first call waits forever for its clip (on a node Ray has not yet declared
        # dead): the call never starts, so it does not hold up the actor's other calls
        self.clip_never_arrives = set(clip_never_arrives)
        self.broken, self.raises = set(broken), set(raises)
        self.dies_at = dict(dies_at or {})
        self.answers_timeout, self.loses_views = set(answers_timeout), set(loses_views)
        self.session_fails_after = session_fails_after
        self.calls: list[int] = []        # video index of each task started
        self.restarts = 0                 # Ray's count: deaths and kills it restarted from
        self.restart_s = restart_s
        self.restarting_until = 0.0
        self.slots = [0.0] * concurrency  # when each of its threads is free (a FIFO queue)

    def outcome(self, index: int):
        self.calls.append(index)
        if self.dies_at.get(index, 0) > 0:
            self.dies_at[index] -= 1
            return Died()
        if index in self.raises:
            return TaskFailed(f"ValueError: bad input {index}")
        if index in self.loses_views:
            self.loses_views.discard(index)
            return ViewsLost("ObjectLostError")
        return None

    def seconds(self, index: int) -> float:
        if index in self.hangs_once:
            self.hangs_once.discard(index)
            return HANG
        return self.slow.get(index, self.latency)

    def session_ok(self) -> bool:
        return self.session_fails_after is None or self.restarts < self.session_fails_after


class FakeCalls:
    """The RayCalls interface on a virtual clock. Ray restarts a member ``max_restarts`` times
    (its own accounting, which ``fate`` reports)."""

    def __init__(self, new_decoders=(), max_restarts: int = 3) -> None:
        self.now = 0.0
        self.max_restarts = max_restarts
        self.pending: dict[Ref, tuple[float, FakeWorker, object]] = {}
        # decoded clips in the object store: as in Ray, a clip lives while anyone refers to it
        # (and until an actor consumed it)
        self.views_alive: weakref.WeakSet = weakref.WeakSet()
        self.max_views_alive = 0
        self.queued: dict[str, int] = {}        # worker name -> tasks in flight
        self.max_queued: dict[str, int] = {}
        self.waits: list[float] = []            # every wait's timeout
        self.killed: list[str] = []
        self.probes: dict[str, int] = {}        # worker name -> probes sent
        self.spare = list(new_decoders)         # what new_decoder()/replace() hand out
        self.kill_takes = 0.0                   # until a killed actor's queued calls report it
        self.sent: list[tuple] = []             # (actor, index, views ref's number, with_logits) per infer

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 <= seconds <= TICK_S, seconds
        self.now += seconds

    def _start(self, worker: FakeWorker, value, seconds: float) -> Ref:
        ref = Ref()
        slot = min(range(len(worker.slots)), key=lambda k: worker.slots[k])
        begin = max(self.now, worker.slots[slot])
        worker.slots[slot] = finish = begin + seconds
        self.pending[ref] = (finish, worker, value)
        self.queued[worker.name] = self.queued.get(worker.name, 0) + 1
        self.max_queued[worker.name] = max(self.max_queued.get(worker.name, 0), self.queued[worker.name])
        return ref

    def decode(self, worker: FakeWorker, entry, timeout: float):
        problem = worker.outcome(entry.index)
        seconds = worker.seconds(entry.index)
        if problem is None and entry.index in worker.answers_timeout:
            value, seconds = DecodeStatus.failed(Reason.TIMEOUT, "stalled", "n"), timeout
        elif problem is None and entry.index in worker.broken:
            value = DecodeStatus.failed(Reason.EMPTY, f"{entry.path}: empty", "n")
        else:
            value = problem or DecodeStatus(True, "n", seconds=worker.latency)
        views = Ref()
        self.views_alive.add(views)
        self.max_views_alive = max(self.max_views_alive, len(self.views_alive))
        status = self._start(worker, value, seconds)
        status.views = views
        return status, views

    def infer(self, actor: FakeWorker, index: int, views_ref: Ref, with_logits: bool = False):
        assert views_ref in self.views_alive, "an actor got a clip that was never decoded"
        assert self.now >= actor.restarting_until, "work sent to an actor Ray is restarting"
        self.sent.append((actor.name, index, views_ref.n, with_logits))   # (not the clip itself)
        problem = actor.outcome(index)
        if problem is None and not actor.session_ok():
            problem = SessionUnavailable(f"{actor.name}: cannot open the model session")
        scores = np.eye(CLASSES, dtype=np.float32)[index % CLASSES]   # the index, recognizable
        out = {"index": index, "scores": scores, "device": actor.name, "node": "n",
               "seconds": actor.latency}
        if index in actor.clip_never_arrives:
            actor.clip_never_arrives.discard(index)
            ref = Ref()
            self.pending[ref] = (math.inf, actor, out)
            self.queued[actor.name] = self.queued.get(actor.name, 0) + 1
            ref.views = views_ref
            return ref
        if with_logits:
            out["logits"] = np.tile(scores, (2, 1))
        ref = self._start(actor, problem or out, actor.seconds(index))
        ref.views = views_ref
        return ref

    def probe(self, handle: FakeWorker):
        self.probes[handle.name] = self.probes.get(handle.name, 0) + 1
        if self.fate(handle) is Fate.DEAD:
            value = WorkerLost("ActorDiedError")
        elif self.now < handle.restarting_until:     # Ray answers at once: not yet
            ref = Ref()
            self.pending[ref] = (self.now + 0.01, handle, Unavailable("ActorUnavailableError"))
            self.queued[handle.name] = self.queued.get(handle.name, 0) + 1
            return ref
        else:
            value = {} if handle.session_ok() else SessionUnavailable(f"{handle.name}: session failed")
        return self._start(handle, value, 0.5)

    def fate(self, handle: FakeWorker) -> Fate:
        if handle.restarts > self.max_restarts:
            return Fate.DEAD
        return Fate.RESTARTING if self.now < handle.restarting_until else Fate.ALIVE

    def wait(self, refs: list[Ref], timeout: float) -> list[Ref]:
        """As ray.wait for one, then all that are finished at that moment."""
        assert 0 <= timeout <= TICK_S, timeout      # rule 7: every wait is bounded
        self.waits.append(timeout)
        first = min(self.pending[r][0] for r in refs)
        if first > self.now + timeout:
            self.now += timeout
            return []
        self.now = max(self.now, first)
        return sorted((r for r in refs if self.pending[r][0] <= self.now), key=lambda r: r.n)

    def get(self, ref: Ref):
        _, worker, value = self.pending.pop(ref)
        self.queued[worker.name] -= 1
        if not (isinstance(value, DecodeStatus) and value.ok):   # the clip was consumed or is gone
            if ref.views is not None:
                self.views_alive.discard(ref.views)
        if isinstance(value, Died):
            self._lose_everything(worker)
            raise WorkerLost("RayActorError")
        if isinstance(value, Exception):
            raise value
        return value

    def _lose_everything(self, worker: FakeWorker, after: float = 0.0) -> None:
        """The process died: its queued tasks fail ``after`` seconds from now (and hold their
        clips no longer); Ray restarts it, which takes ``restart_s``."""
        worker.restarts += 1
        worker.restarting_until = self.now + after + worker.restart_s
        worker.slots = [worker.restarting_until] * len(worker.slots)
        for other, (_, w, _) in list(self.pending.items()):
            if w is worker:
                self.pending[other] = (self.now + after, w, WorkerLost("RayActorError"))
                other.views = None

    def restart(self, handle: FakeWorker) -> None:
        self.killed.append(handle.name)
        self._lose_everything(handle, self.kill_takes)

    def replace(self, handle: FakeWorker):
        self.killed.append(handle.name)      # never waited for: its tasks stay pending forever
        for ref, (_, w, _) in self.pending.items():
            if w is handle:
                ref.views = None             # (killed: Ray no longer holds their arguments)
        return self.new_decoder()

    def new_decoder(self):
        return self.spare.pop(0) if self.spare else None


def entries(n: int) -> list[Entry]:
    return [Entry(i, f"v{i}.mp4", i % CLASSES) for i in range(n)]


def run(scheduler: Scheduler, items) -> dict:
    got: dict[int, list] = {}
    scheduler.run(items, lambda r: got.setdefault(r.index, []).append(r))
    return got


def make(decoders, actors, calls=None, max_restarts=3, audit=None, videos_per_call=None,
         **policy) -> tuple[Scheduler, FakeCalls]:
    calls = calls or FakeCalls()
    calls.max_restarts = max_restarts
    return Scheduler(decoders, actors, Policy(**policy), calls=calls, audit=audit,
                     videos_per_call=videos_per_call, metrics=False), calls


def one_each(got: dict, n: int) -> None:
    assert sorted(got) == list(range(n))
    assert all(len(r) == 1 for r in got.values()), {i: len(r) for i, r in got.items() if len(r) != 1}


# ---------------------------------------------------------------- rules 1-3: flow

def test_rule_1_every_entry_is_recorded_once_with_its_own_scores():
    decoders = [FakeWorker(f"d{i}", latency=0.5 + 0.3 * i) for i in range(3)]
    actors = [FakeWorker("a0", 2.0), FakeWorker("a1", 3.0)]
    scheduler, _ = make(decoders, actors)
    got = run(scheduler, entries(30))
    one_each(got, 30)
    for index, results in got.items():
        assert results[0].status == "ok"
        assert int(np.argmax(results[0].scores)) == index % CLASSES     # its own, not a neighbour's
    assert {r[0].device for r in got.values()} == {"a0", "a1"}


def test_rule_2_entries_are_pulled_lazily_and_clips_in_memory_are_bounded():
    decoders = [FakeWorker(f"d{i}", latency=0.1) for i in range(4)]      # decoding far outpaces
    actors = [FakeWorker("a0", 5.0), FakeWorker("a1", 5.0)]              # the two slow devices
    scheduler, calls = make(decoders, actors, depth=2)
    pulled, recorded = [], []

    def lazily():
        for entry in entries(50):
            pulled.append(entry.index)
            assert len(pulled) - len(recorded) <= scheduler.buffer + 2 * len(actors) + 1
            yield entry

    scheduler.run(lazily(), lambda r: recorded.append(r.index))
    assert sorted(recorded) == list(range(50))
    assert scheduler.buffer == 4                                          # max(actors, decoders)
    assert calls.max_views_alive <= scheduler.buffer + 2 * len(actors)
    assert calls.max_views_alive >= scheduler.buffer                      # and it is used


def test_rule_2_the_buffer_is_bounded_in_bytes_too():
    decoders = [FakeWorker(f"d{i}", latency=0.1) for i in range(4)]
    scheduler, calls = make(decoders, [FakeWorker("a0", 5.0)], depth=1,
                            clip_bytes=58_000_000, buffer_bytes=130_000_000)   # room for 2 clips
    assert scheduler.buffer == 2
    one_each(run(scheduler, entries(12)), 12)
    assert calls.max_views_alive <= 2 + 1


def test_rule_3_clips_go_to_the_least_busy_actor_never_beyond_its_depth():
    decoders = [FakeWorker("d0", latency=0.1), FakeWorker("d1", latency=0.1)]
    slow, fast = FakeWorker("slow", 10.0), FakeWorker("fast", 1.0)
    scheduler, calls = make(decoders, [slow, fast], depth=2)
    got = run(scheduler, entries(40))
    per_device = {name: sum(r[0].device == name for r in got.values()) for name in ("slow", "fast")}
    assert per_device["fast"] > 4 * per_device["slow"] > 0
    assert calls.max_queued["slow"] <= 2 and calls.max_queued["fast"] <= 2
    # two idle, equal actors: the second clip goes to the one with nothing queued
    scheduler, _ = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)],
                        [FakeWorker("a0", 5.0), FakeWorker("a1", 5.0)], depth=2)
    assert sorted(r[0].device for r in run(scheduler, entries(2)).values()) == ["a0", "a1"]


# ---------------------------------------------------------------- rules 4-6: failures and deaths

def test_rule_4_a_broken_video_is_recorded_with_its_reason_and_not_retried():
    decoder = FakeWorker("d0", broken={3}, raises={5}, answers_timeout={6})
    actor = FakeWorker("a0", raises={7})
    scheduler, _ = make([decoder], [actor])
    got: dict = {}
    stats = scheduler.run(entries(10), lambda r: got.setdefault(r.index, []).append(r))
    assert (got[3][0].status, got[3][0].error) == ("failed", "empty")
    assert (got[5][0].error, got[6][0].error, got[7][0].error) == ("decode failed", "timeout",
                                                                  "inference failed")
    assert "bad input 7" in got[7][0].message and "3 attempts" in got[7][0].message
    assert [decoder.calls.count(i) for i in (3, 5, 6)] == [1, 1, 1]
    assert actor.calls.count(7) == 3              # a device call that raised: retried (rule 4)
    assert sum(r[0].status == "ok" for r in got.values()) == 6
    assert stats.decode_timeouts == 1


def test_rule_5_a_death_is_retried_first_then_recorded_as_worker_died():
    # d0 dies at video 2 on every attempt (3 attempts with max_retries=2), restarting each time.
    unlucky = FakeWorker("d0", latency=1.0, dies_at={2: 99})
    scheduler, _ = make([unlucky], [FakeWorker("a0", 0.5)], max_retries=2, max_restarts=10)
    got = run(scheduler, entries(6))
    assert got[2][0].error == "worker died" and "3 attempts" in got[2][0].message
    assert unlucky.calls.count(2) == 3
    assert unlucky.calls[:5] == [0, 1, 2, 2, 2]             # each retry before the next new entry
    assert all(got[i][0].status == "ok" for i in (0, 1, 3, 4, 5))


def test_rule_5_a_video_lost_once_is_retried_and_scored():
    actor = FakeWorker("a0", latency=1.0, dies_at={4: 1})
    scheduler, _ = make([FakeWorker("d0", 0.2)], [actor], max_retries=2)
    got: dict = {}
    stats = scheduler.run(entries(8), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 8)
    assert all(got[i][0].status == "ok" for i in range(8))
    assert actor.calls.count(4) == 2
    assert stats.actor_deaths == 1 and stats.retries >= 1


def test_rule_6_one_death_is_counted_once_whatever_it_held():
    # a0 holds two videos (depth 2) when it dies at video 2: one death, both retried.
    a0 = FakeWorker("a0", latency=4.0, dies_at={2: 1})
    scheduler, calls = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)], [a0], depth=2,
                            max_restarts=1)
    got: dict = {}
    stats = scheduler.run(entries(6), lambda r: got.setdefault(r.index, []).append(r))
    assert stats.actor_deaths == 1
    assert stats.retries == 2                                   # the two videos it held
    assert all(got[i][0].status == "ok" for i in range(6))     # max_restarts=1: still in use


def test_rule_5_videos_queued_behind_a_death_are_not_charged_for_it():
    # video 0 kills the actor every time; video 1 waits behind it in the actor's queue each time
    a0 = FakeWorker("a0", latency=2.0, dies_at={0: 99})
    scheduler, _ = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)], [a0], depth=2,
                        max_retries=2, max_restarts=20)
    got: dict = {}
    stats = scheduler.run(entries(2), lambda r: got.setdefault(r.index, []).append(r))
    assert got[0][0].error == "worker died" and a0.calls.count(0) == 3
    assert got[1][0].status == "ok" and a0.calls.count(1) >= 3     # lost with it, then scored
    assert stats.actor_deaths == 3


def test_rule_6_a_member_past_its_restarts_is_not_used_again():
    bad = FakeWorker("bad", latency=1.0, dies_at={i: 99 for i in range(40)})
    good = FakeWorker("good", latency=1.0)
    scheduler, _ = make([FakeWorker("d0", 0.1)], [bad, good], depth=1, max_restarts=3,
                        max_retries=5)
    got: dict = {}
    stats = scheduler.run(entries(20), lambda r: got.setdefault(r.index, []).append(r))
    assert len(bad.calls) == 4                                  # 3 restarts, then abandoned
    assert stats.actor_deaths == 4
    assert all(got[i][0].status == "ok" and got[i][0].device == "good" for i in range(20))


def test_rule_6_a_pool_with_no_live_member_stops_the_run_with_its_name():
    always = FakeWorker("a0", latency=1.0, dies_at={i: 99 for i in range(10)})
    scheduler, _ = make([FakeWorker("d0", 0.1)], [always], max_restarts=2, max_retries=10)
    with pytest.raises(HarnessError, match="every inference actor died"):
        run(scheduler, entries(10))
    dead_decoder = FakeWorker("d0", latency=1.0, dies_at={i: 99 for i in range(10)})
    scheduler, _ = make([dead_decoder], [FakeWorker("a0")], max_restarts=1, max_retries=10)
    with pytest.raises(HarnessError, match="every decode worker died"):
        run(scheduler, entries(10))


def test_rule_5_a_lost_clip_is_charged_to_its_decoder_not_the_actor():
    decoder, actor = FakeWorker("d0", 0.2), FakeWorker("a0", 1.0, loses_views={3})
    scheduler, _ = make([decoder], [actor])
    got: dict = {}
    stats = scheduler.run(entries(6), lambda r: got.setdefault(r.index, []).append(r))
    assert all(got[i][0].status == "ok" for i in range(6))
    assert (stats.views_lost, stats.decoder_deaths, stats.actor_deaths) == (1, 1, 0)
    assert decoder.calls.count(3) == 2                         # decoded again


# ---------------------------------------------------------------- rule 7: time

def test_rule_7_a_decode_worker_that_stops_answering_is_replaced_and_the_video_times_out():
    stuck = FakeWorker("d0", latency=1.0, slow={2: HANG})
    fresh = FakeWorker("d0-new", latency=1.0)
    calls = FakeCalls(new_decoders=[fresh])
    scheduler, _ = make([stuck], [FakeWorker("a0", 0.5)], calls=calls,
                        timeouts=Timeouts(decode=10.0))
    got: dict = {}
    stats = scheduler.run(entries(6), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 6)
    assert got[2][0].error == "timeout" and "replaced" in got[2][0].message
    assert stuck.calls == [0, 1, 2] and fresh.calls == [3, 4, 5]     # never waited for again
    assert calls.killed == ["d0"] and stats.decoders_replaced == 1 and stats.decode_timeouts == 1
    # the driver acted after the worker's own timeout plus the grace, not before
    assert calls.now >= 2 * 1.0 + 10.0 + DECODE_GRACE_S


def test_rule_7_a_hung_device_call_restarts_the_actor_and_the_video_is_retried():
    actor = FakeWorker("a0", latency=1.0, hangs_once={3})
    scheduler, calls = make([FakeWorker("d0", 0.2)], [actor], timeouts=Timeouts(infer=30.0))
    got: dict = {}
    stats = scheduler.run(entries(6), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 6)
    assert all(got[i][0].status == "ok" for i in range(6))
    assert calls.killed == ["a0"] and stats.infer_timeouts == 1 and stats.actor_deaths == 1
    assert actor.calls.count(3) == 2


def test_rule_7_a_restart_is_one_death_however_late_the_killed_calls_report():
    # the hung call has another queued behind it (depth 2); on a loaded cluster the killed
    # process's errors come seconds later: the queued call must not time out in turn and
    # kill the restarting actor again (that spent the restart budget in CI)
    actor = FakeWorker("a0", latency=1.0, hangs_once={0})
    calls = FakeCalls()
    calls.kill_takes = 15.0
    scheduler, _ = make([FakeWorker("d0", 0.2), FakeWorker("d1", 0.2)], [actor], calls=calls,
                        depth=2, max_restarts=1, timeouts=Timeouts(infer=10.0))
    got: dict = {}
    stats = scheduler.run(entries(6), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 6)
    assert all(got[i][0].status == "ok" for i in range(6))
    assert calls.killed == ["a0"] and stats.infer_timeouts == 1 and stats.actor_deaths == 1


def test_rule_7_a_call_whose_decoder_died_is_decoded_again_and_its_actor_kept():
    # video 3's clip was made by d0, which then dies (at video 4) before the clip reached a0:
    # the call waits (Ray reports the loss only once it declares the node dead). Past the
    # budget that is the decoder's loss, not a hung device: video 3 is decoded again and
    # scored, and a0 is never restarted.
    decoder = FakeWorker("d0", 0.2, dies_at={4: 1})
    actor = FakeWorker("a0", 1.0, clip_never_arrives={3})
    scheduler, calls = make([decoder], [actor], depth=2, timeouts=Timeouts(infer=20.0))
    got: dict = {}
    stats = scheduler.run(entries(8), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 8)
    assert all(got[i][0].status == "ok" for i in range(8))
    assert calls.killed == [] and stats.infer_timeouts == 0 and stats.views_lost == 1
    assert decoder.calls.count(3) == 2 and actor.calls.count(3) == 2


def test_rule_7_a_video_that_hangs_on_every_attempt_is_recorded_timeout():
    a0, a1 = FakeWorker("a0", 1.0, slow={1: HANG}), FakeWorker("a1", 1.0, slow={1: HANG})
    scheduler, _ = make([FakeWorker("d0", 0.2)], [a0, a1], max_retries=2, max_restarts=10,
                        timeouts=Timeouts(infer=20.0))
    got: dict = {}
    stats = scheduler.run(entries(4), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 4)
    assert got[1][0].error == "timeout" and "3 attempts" in got[1][0].message
    assert stats.infer_timeouts == 3
    assert all(got[i][0].status == "ok" for i in (0, 2, 3))


def test_rule_7_a_call_is_timed_from_when_the_actor_could_start_it():
    # 10 s calls, two queued (depth 2), a 15 s budget: the second waits 10 s in the queue but
    # must not time out; timed from submission it would (20 s > 15 s).
    actor = FakeWorker("a0", latency=10.0)
    scheduler, _ = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)], [actor], depth=2,
                        timeouts=Timeouts(infer=15.0))
    got: dict = {}
    stats = scheduler.run(entries(6), lambda r: got.setdefault(r.index, []).append(r))
    assert stats.infer_timeouts == 0 and all(got[i][0].status == "ok" for i in range(6))


def test_rule_7_the_adaptive_budget_follows_the_measured_calls():
    scheduler, _ = make([FakeWorker("d0", 0.1)], [FakeWorker("a0", 2.0)])
    state = type("S", (), {"infer_s": []})()
    assert scheduler.infer_budget(state) == Timeouts().infer_first          # warm-up
    state.infer_s = [2.0, 2.0, 2.0]
    assert scheduler.infer_budget(state) == Timeouts().infer_min            # the floor
    state.infer_s = [10.0, 10.0, 10.0]
    assert scheduler.infer_budget(state) == 200.0                           # 20 x the median


def test_rule_7_the_driver_wakes_at_least_every_tick_and_names_a_long_video(caplog):
    actor = FakeWorker("a0", latency=1.0, slow={2: 100.0})
    scheduler, calls = make([FakeWorker("d0", 0.2)], [actor], timeouts=Timeouts(infer=500.0))
    ticks = []
    with caplog.at_level(logging.WARNING, logger="harness.scheduler"):
        scheduler.run(entries(4), lambda r: None, tick=lambda: ticks.append(calls.now))
    assert max(b - a for a, b in zip(ticks, ticks[1:])) <= TICK_S + 1e-9
    assert "video 2 (v2.mp4) has been on inference actor 0 for" in caplog.text


# ---------------------------------------------------------------- rule 8: set aside

def test_rule_8_an_actor_whose_session_no_longer_opens_is_set_aside():
    broken = FakeWorker("a0", latency=1.0, dies_at={0: 1}, session_fails_after=1)
    good = FakeWorker("a1", latency=1.0)
    scheduler, _ = make([FakeWorker("d0", 0.1)], [broken, good], depth=1)
    got: dict = {}
    stats = scheduler.run(entries(12), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 12)
    assert all(got[i][0].status == "ok" for i in range(12))
    assert [s.member for s in stats.set_aside] == [0] and "session failed" in stats.set_aside[0].error
    assert broken.calls == [0]                         # never used after its failed restart


def test_rule_8_with_no_actor_left_the_run_stops_with_the_session_error():
    only = FakeWorker("a0", latency=1.0, dies_at={0: 1}, session_fails_after=1)
    scheduler, _ = make([FakeWorker("d0", 0.1)], [only])
    with pytest.raises(HarnessError, match="no inference actor can serve: a0: session failed"):
        run(scheduler, entries(5))


# ---------------------------------------------------------------- rules 9-11

def test_rule_9_an_index_is_recorded_once_even_if_it_comes_twice(caplog):
    scheduler, _ = make([FakeWorker("d0")], [FakeWorker("a0")])
    twice = [Entry(0, "a.mp4", 0), Entry(1, "b.mp4", 1), Entry(0, "a.mp4", 0)]
    with caplog.at_level(logging.WARNING, logger="harness.scheduler"):
        got = run(scheduler, twice)
    assert {i: len(r) for i, r in got.items()} == {0: 1, 1: 1}
    assert "already recorded" in caplog.text


def test_rule_10_decoders_are_added_while_the_devices_would_wait():
    # one decoder at 1 s/video feeding four devices at 1 s/video: about 5 decoders are needed
    spare = [FakeWorker(f"d{i}", latency=1.0) for i in range(1, 10)]
    calls = FakeCalls(new_decoders=spare)
    actors = [FakeWorker(f"a{i}", latency=1.0) for i in range(4)]
    scheduler, _ = make([FakeWorker("d0", 1.0)], actors, calls=calls, max_decoders=6)
    got: dict = {}
    stats = scheduler.run(entries(80), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 80)
    assert 3 <= stats.decoders_added <= 5 and len(scheduler.decoders.handles) <= 6
    # no more than asked for: slow devices need no extra decoder
    scheduler, _ = make([FakeWorker("d0", 0.1)], [FakeWorker("a0", 5.0)],
                        calls=FakeCalls(new_decoders=[FakeWorker("x")]), max_decoders=4)
    got = {}
    assert scheduler.run(entries(10), lambda r: got.setdefault(r.index, []).append(r)).decoders_added == 0


def test_rule_11_after_stop_nothing_new_starts_and_what_is_in_flight_finishes():
    scheduler, calls = make([FakeWorker("d0", 0.5)], [FakeWorker("a0", 1.0)])
    got: dict = {}

    def record(result):
        got.setdefault(result.index, []).append(result)
        if len(got) == 3:
            scheduler.stop()

    scheduler.run(entries(50), record)
    assert 3 <= len(got) <= 6 and calls.pending == {}
    one_each(got, len(got))


def test_rule_1_an_empty_list_finishes_at_once():
    scheduler, calls = make([FakeWorker("d0")], [FakeWorker("a0")])
    assert run(scheduler, []) == {} and calls.pending == {}


def test_rule_7_a_hung_call_is_caught_while_other_devices_keep_finishing():
    # a0 hangs on video 0 while a1 keeps delivering results: the timeout must still fire then,
    # not only once everything else is done
    a0, a1 = FakeWorker("a0", 0.5, hangs_once={0}), FakeWorker("a1", 0.5)   # results every 0.5 s
    scheduler, calls = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)], [a0, a1], depth=1,
                            timeouts=Timeouts(infer=20.0))
    # as on a busy cluster, some task always finishes within a tick: the wait never comes
    # back empty, so only the check every tick can catch the hung call
    restarted_at = []
    original = calls.restart
    calls.restart = lambda handle: (restarted_at.append(calls.now), original(handle))
    got: dict = {}
    scheduler.run(entries(200), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 200)
    assert restarted_at and restarted_at[0] <= 20.0 + 2 * TICK_S + 1
    assert sum(r[0].device == "a0" for r in got.values()) > 50      # a0 served again after it


# ---------------------------------------------------------------- rule 12: the audit on the side

def audited_run(reference: FakeWorker | None, n: int = 12, indices=(2, 7), stop_after=None,
                dies_at=None, cached=(), **kw):
    """A run of ``n`` videos on two 1 s devices with ``indices`` audited by ``reference``
    (those in ``cached`` with the reference's answer known already)."""
    answers: dict = {}
    audit = Audit(reference, frozenset(indices),
                  lambda i, out, err: answers.setdefault(i, []).append((out, err)), frozenset(cached))
    scheduler, calls = make([FakeWorker("d0", 0.2), FakeWorker("d1", 0.2)],
                            [FakeWorker("a0", 1.0, dies_at=dies_at), FakeWorker("a1", 1.0)],
                            audit=audit, **kw)
    got: dict = {}
    recorded_at: dict = {}

    def record(result):
        got.setdefault(result.index, []).append(result)
        recorded_at[result.index] = calls.now
        if stop_after is not None and len(got) == stop_after:
            scheduler.stop()

    scheduler.run(entries(n), record)
    return got, answers, calls, recorded_at


def test_rule_12_audited_videos_go_to_the_reference_once_with_the_same_clip():
    got, answers, calls, _ = audited_run(FakeWorker("ref", latency=3.0))
    one_each(got, 12)
    assert sorted(answers) == [2, 7] and all(len(a) == 1 and a[0][1] is None for a in answers.values())
    by_index = {}
    for actor, index, views, logits in calls.sent:
        by_index.setdefault(index, []).append((actor, views, logits))
    for index in (2, 7):
        (device, dev_views, dev_logits), = [c for c in by_index[index] if c[0] != "ref"]
        (ref_views, ref_logits), = [(v, lg) for a, v, lg in by_index[index] if a == "ref"]
        assert ref_views == dev_views and dev_logits and ref_logits     # one decode, logits both
        assert got[index][0].logits is not None
    assert not any(logits for _, index, _, logits in calls.sent if index not in (2, 7))


def test_rule_12_cached_reference_answers_are_not_asked_again():
    # 7's reference answer is known (harness.reference_cache): only 2 goes to the reference,
    # and both device calls still return logits; all known: no reference actor at all
    got, answers, calls, _ = audited_run(FakeWorker("ref", latency=3.0), cached=(7,))
    one_each(got, 12)
    assert sorted(answers) == [2] and [i for a, i, *_ in calls.sent if a == "ref"] == [2]
    assert got[2][0].logits is not None and got[7][0].logits is not None
    got, answers, calls, _ = audited_run(None, cached=(2, 7))
    one_each(got, 12)
    assert answers == {} and got[2][0].logits is not None and got[7][0].logits is not None


def test_rule_12_a_video_decoded_again_after_a_death_is_audited_once():
    got, answers, calls, _ = audited_run(FakeWorker("ref", latency=3.0), dies_at={2: 1})
    one_each(got, 12)
    assert got[2][0].status == "ok" and len(answers[2]) == 1
    assert sum(actor == "ref" for actor, *_ in calls.sent) == 2


def test_rule_12_a_slow_reference_never_delays_the_devices_and_the_run_waits_for_it(caplog):
    _, _, plain_calls, plain_at = audited_run(FakeWorker("ref", latency=0.01), indices=())
    with caplog.at_level(logging.WARNING, logger="harness.scheduler"):
        got, answers, calls, at = audited_run(FakeWorker("ref", latency=100.0))
    assert max(at.values()) == max(plain_at.values())        # the devices finished as soon
    assert sorted(answers) == [2, 7] and calls.now >= 200.0  # and the run waited for both
    assert "waiting for the fp32 reference on" in caplog.text


def test_rule_12_a_failing_reference_is_reported_to_the_audit_and_costs_the_video_nothing():
    got, answers, _, _ = audited_run(FakeWorker("ref", latency=1.0, raises={7}))
    one_each(got, 12)
    assert all(got[i][0].status == "ok" for i in range(12))
    assert answers[2][0][1] is None and "bad input 7" in answers[7][0][1]


def test_rule_12_a_hung_reference_times_out_into_the_audit():
    reference = FakeWorker("ref", latency=1.0, slow={2: HANG})
    got, answers, calls, _ = audited_run(reference, timeouts=Timeouts(reference=50.0))
    one_each(got, 12)
    assert answers[2][0][0] is None and "no answer from the reference" in answers[2][0][1]
    assert "ref" in calls.killed


def test_rule_11_after_stop_the_reference_is_not_waited_for():
    got, answers, calls, _ = audited_run(FakeWorker("ref", latency=500.0), stop_after=9)
    assert answers and all(out is None and err == "the run was stopped"
                           for a in answers.values() for out, err in a)
    assert calls.now < 500.0


def test_rule_3_decoders_of_depth_2_hold_two_calls_each_and_the_buffer_counts_them():
    """Videos in object storage: each decode worker holds READ_AHEAD calls (the next read
    overlaps a decode), never more, and the buffer makes room for them."""
    decoders = [FakeWorker("d0", 1.0), FakeWorker("d1", 1.0)]
    scheduler, calls = make(decoders, [FakeWorker("a0", 0.1)], decoder_depth=2)
    assert scheduler.buffer == 4                               # 2 decoders x 2 calls
    one_each(run(scheduler, entries(20)), 20)
    assert calls.max_queued["d0"] == calls.max_queued["d1"] == 2
    scheduler, calls = make([FakeWorker("d0", 1.0), FakeWorker("d1", 1.0)], [FakeWorker("a0", 0.1)])
    one_each(run(scheduler, entries(20)), 20)
    assert calls.max_queued["d0"] == calls.max_queued["d1"] == 1   # local files: one at a time


def test_rule_2_an_actor_that_batches_b_videos_gets_2b_queued_and_the_buffer_grows():
    decoders = [FakeWorker(f"d{i}", 0.05) for i in range(3)]
    scheduler, calls = make(decoders, [FakeWorker("a0", 2.0), FakeWorker("a1", 2.0)],
                            videos_per_call=[4, 1])
    assert scheduler.buffer == 5                               # 4 + 1 videos per call
    one_each(run(scheduler, entries(40)), 40)
    assert calls.max_queued["a0"] == 8 and calls.max_queued["a1"] == 2


# ---------------------------------------------------------------- restarts, concurrency, memory

def test_rule_6_a_member_ray_is_restarting_is_starting_not_dead():
    # a0's session takes 10 s to load after Ray restarts it; probes sent meanwhile fail with
    # "the actor is restarting". That is one death, not one per probe: a0 serves again.
    a0 = FakeWorker("a0", 1.0, hangs_once={0}, restart_s=10.0)
    a1 = FakeWorker("a1", 1.0)
    scheduler, calls = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)], [a0, a1], depth=1,
                            timeouts=Timeouts(infer=20.0))
    got: dict = {}
    stats = scheduler.run(entries(60), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 60)
    assert all(got[i][0].status == "ok" for i in range(60))
    assert calls.killed == ["a0"] and stats.actor_deaths == 1 and stats.set_aside == []
    assert calls.probes["a0"] >= 5                      # it was asked while still restarting ...
    assert calls.probes["a0"] <= 10 / harness.scheduler.PROBE_INTERVAL_S + 3   # ... not in a spin
    after = [i for i in range(1, 60) if got[i][0].device == "a0"]
    assert len(after) > 10                              # and it served again until the end
    assert max(after) > 50


def test_rule_6_a_member_ray_reports_dead_for_good_is_retired_and_the_log_says_so(caplog):
    doomed = FakeWorker("a0", 1.0, dies_at={i: 1 for i in range(10)}, restart_s=5.0)
    scheduler, calls = make([FakeWorker("d0", 0.1)], [doomed, FakeWorker("a1", 1.0)], depth=1,
                            max_restarts=1)
    got: dict = {}
    with caplog.at_level(logging.WARNING, logger="harness.scheduler"):
        scheduler.run(entries(12), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 12)
    assert all(got[i][0].status == "ok" for i in range(12))
    assert len(doomed.calls) == 2                       # Ray restarted it once, then gave up
    assert "inference actor 0 is not used again: Ray reports it dead for good" in caplog.text


def test_rule_7_a_member_that_never_finishes_restarting_is_set_aside_after_the_startup_budget():
    stuck = FakeWorker("a0", 1.0, dies_at={0: 1}, restart_s=HANG)   # its node never comes back
    scheduler, calls = make([FakeWorker("d0", 0.1)], [stuck, FakeWorker("a1", 1.0)], depth=1,
                            timeouts=Timeouts(startup=60.0))
    got: dict = {}
    stats = scheduler.run(entries(100), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 100)
    assert all(got[i][0].status == "ok" for i in range(100))
    assert [s.member for s in stats.set_aside] == [0]
    assert "did not answer within 60 s of (re)starting" in stats.set_aside[0].error
    # and a run whose only actor never comes back stops once the budget has passed
    scheduler, calls = make([FakeWorker("d0", 0.1)], [FakeWorker("a0", 1.0, dies_at={0: 1},
                                                                 restart_s=HANG)],
                            timeouts=Timeouts(startup=60.0))
    with pytest.raises(HarnessError, match="no inference actor can serve: did not answer within 60 s"):
        run(scheduler, entries(5))
    assert calls.now >= 60.0


def test_rule_6_a_run_whose_work_is_done_does_not_wait_for_a_member_still_restarting():
    slow = FakeWorker("a0", 1.0, dies_at={5: 1}, restart_s=HANG)
    scheduler, calls = make([FakeWorker("d0", 0.1)], [slow, FakeWorker("a1", 1.0)], depth=1)
    got = run(scheduler, entries(8))
    one_each(got, 8)
    assert calls.now < Timeouts().startup                # it finished without the budget running out


def test_rule_5_a_death_charges_the_calls_that_were_running_whatever_order_they_finish():
    # a0 runs 2 calls at once. Video 0 takes 20 s; video 1 finishes first, and video 2 starts
    # in its place and dies 3 s in. Running at the death: videos 0 and 2 (charged; with no
    # retries they are recorded "worker died"); videos 3 and 4 were queued (retried, scored).
    a0 = FakeWorker("a0", 1.0, slow={0: 20.0, 2: 3.0}, dies_at={2: 1}, concurrency=2)
    scheduler, calls = make([FakeWorker("d0", 0.1)], [a0], videos_per_call=[2], max_retries=0)
    got: dict = {}
    stats = scheduler.run(entries(8), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 8)
    assert a0.calls[:5] == [0, 1, 2, 3, 4]
    assert got[2][0].error == "worker died" and got[0][0].error == "worker died"
    assert all(got[i][0].status == "ok" for i in (1, 3, 4, 5, 6, 7))
    assert stats.actor_deaths == 1


def test_rule_7_a_hung_call_is_timed_from_its_own_start_while_its_neighbours_keep_answering():
    # a0 runs 2 calls at once: video 0 hangs in one thread while the other keeps answering
    # every second. The hung call's clock is its own: the actor is restarted ~20 s in.
    a0 = FakeWorker("a0", 1.0, hangs_once={0}, concurrency=2)
    scheduler, calls = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)], [a0],
                            videos_per_call=[2], timeouts=Timeouts(infer=20.0))
    restarted_at = []
    original = calls.restart
    calls.restart = lambda handle: (restarted_at.append(calls.now), original(handle))
    got: dict = {}
    stats = scheduler.run(entries(100), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 100)
    assert all(got[i][0].status == "ok" for i in range(100))
    assert restarted_at and restarted_at[0] <= 20.0 + 2 * TICK_S + 1
    assert stats.infer_timeouts == 1 and a0.calls.count(0) == 2


def test_rule_13_nothing_is_held_after_deaths_and_timeouts():
    # deaths, a hang and a replaced decoder: once the run is over, no clip is referenced by
    # anyone (the scheduler object lives on, as for benchmark loops after a run)
    actor = FakeWorker("a0", 1.0, dies_at={2: 1, 5: 1, 9: 1}, hangs_once={12}, concurrency=2)
    decoder = FakeWorker("d0", 0.2, slow={7: HANG})
    calls = FakeCalls(new_decoders=[FakeWorker("d0-new", 0.2)])
    scheduler, _ = make([decoder, FakeWorker("d1", 0.2)], [actor], calls=calls,
                        videos_per_call=[2], max_restarts=10,
                        timeouts=Timeouts(infer=20.0, decode=10.0))
    got: dict = {}
    stats = scheduler.run(entries(30), lambda r: got.setdefault(r.index, []).append(r))
    one_each(got, 30)
    assert stats.actor_deaths == 4 and stats.decoders_replaced == 1
    gc.collect()
    assert list(calls.views_alive) == []


def test_every_rule_has_a_test_named_after_it():
    rules = {int(n) for n in re.findall(r"^(\d+)\. \*\*", harness.scheduler.__doc__, re.M)}
    tested = {int(n) for n in re.findall(r"^test_rule_(\d+)_", "\n".join(globals()), re.M)}
    assert rules == set(range(1, max(rules) + 1)) and rules <= tested, sorted(rules - tested)
