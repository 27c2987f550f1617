"""The scheduler's rules (harness/scheduler.py's docstring), one test each, with fake workers.

Ray's part is simulated by ``FakeCalls``: every task finishes after its worker's latency on a
virtual clock, ``wait`` returns the earliest, and a worker can be told to die at a given video
(every task it holds is lost with it, as when a Ray actor's process dies). No Ray, no
processes: the runs are deterministic and take milliseconds.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pytest

from harness.errors import HarnessError
from harness.scheduler import Entry, Scheduler, TaskFailed, WorkerLost

CLASSES = 4


class Ref:
    _ids = itertools.count()

    def __init__(self) -> None:
        self.n = next(self._ids)

    def __repr__(self) -> str:
        return f"Ref{self.n}"


class Died(Exception):
    """Marks the task during which its worker dies."""


class LostWith(Exception):
    """Marks a task queued on a worker when it died (lost with it, not a death of its own)."""


class FakeWorker:
    """A decode worker or inference actor: ``latency`` per task; ``broken`` indices give a
    failure record, ``raises`` indices raise inside the task, ``dies_at`` indices kill it
    (while the counter says so: ``dies_at[i]`` deaths at video i)."""

    def __init__(self, name: str, latency: float = 1.0, broken=(), raises=(), dies_at=None) -> None:
        self.name, self.latency = name, latency
        self.broken, self.raises = set(broken), set(raises)
        self.dies_at = dict(dies_at or {})
        self.calls: list[int] = []        # video index of each task started

    def outcome(self, index: int):
        self.calls.append(index)
        if self.dies_at.get(index, 0) > 0:
            self.dies_at[index] -= 1
            return Died()
        if index in self.raises:
            return TaskFailed(f"ValueError: bad input {index}")
        return None


class FakeCalls:
    """The RayCalls interface on a virtual clock."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: dict[Ref, tuple[float, FakeWorker, object]] = {}
        self.views_alive: set[Ref] = set()      # decoded clips not yet consumed
        self.max_views_alive = 0
        self.queued: dict[str, int] = {}        # worker name -> tasks in flight
        self.max_queued: dict[str, int] = {}

    def _start(self, worker: FakeWorker, value) -> Ref:
        ref = Ref()
        self.pending[ref] = (self.now + worker.latency, worker, value)
        self.queued[worker.name] = self.queued.get(worker.name, 0) + 1
        self.max_queued[worker.name] = max(self.max_queued.get(worker.name, 0), self.queued[worker.name])
        return ref

    def decode(self, worker: FakeWorker, entry):
        problem = worker.outcome(entry.index)
        if problem is None and entry.index in worker.broken:
            value = {"ok": False, "reason": "empty", "message": f"{entry.path}: empty", "node": "n"}
        else:
            value = problem or {"ok": True, "node": "n"}
        views = Ref()
        self.views_alive.add(views)
        self.max_views_alive = max(self.max_views_alive, len(self.views_alive))
        status = self._start(worker, value)
        status.views = views
        return status, views

    def infer(self, actor: FakeWorker, index: int, views_ref: Ref):
        assert views_ref in self.views_alive, "an actor got a clip that was never decoded"
        problem = actor.outcome(index)
        scores = np.eye(CLASSES, dtype=np.float32)[index % CLASSES]   # the index, recognizable
        ref = self._start(actor, problem or {"index": index, "scores": scores,
                                             "device": actor.name, "node": "n"})
        ref.views = views_ref
        return ref

    def wait(self, refs: list[Ref]) -> Ref:
        ref = min(refs, key=lambda r: (self.pending[r][0], r.n))
        self.now = max(self.now, self.pending[ref][0])
        return ref

    def get(self, ref: Ref):
        _, worker, value = self.pending.pop(ref)
        self.queued[worker.name] -= 1
        views = ref.views
        decoded_ok = isinstance(value, dict) and value.get("ok")
        if not decoded_ok:  # an inference result, a failure record or a loss: the clip is done
            self.views_alive.discard(views)
        if isinstance(value, Died):
            for other, (_, w, _) in list(self.pending.items()):   # its other tasks die with it
                if w is worker:
                    self.pending[other] = (self.now, w, LostWith())
            raise WorkerLost("RayActorError")
        if isinstance(value, LostWith):
            raise WorkerLost("RayActorError")
        if isinstance(value, Exception):
            raise value
        return value


def entries(n: int) -> list[Entry]:
    return [Entry(i, f"v{i}.mp4", i % CLASSES) for i in range(n)]


def run(scheduler: Scheduler, items) -> dict:
    got: dict[int, list] = {}
    scheduler.run(items, lambda r: got.setdefault(r.index, []).append(r))
    return got


def make(decoders, actors, **kw) -> tuple[Scheduler, FakeCalls]:
    calls = FakeCalls()
    return Scheduler(decoders, actors, metrics=False, calls=calls, **kw), calls


def test_every_entry_is_recorded_once_with_its_own_scores():
    decoders = [FakeWorker(f"d{i}", latency=0.5 + 0.3 * i) for i in range(3)]
    actors = [FakeWorker("a0", 2.0), FakeWorker("a1", 3.0)]
    scheduler, _ = make(decoders, actors)
    got = run(scheduler, entries(30))
    assert sorted(got) == list(range(30))
    for index, results in got.items():
        assert len(results) == 1 and results[0].status == "ok"
        assert int(np.argmax(results[0].scores)) == index % CLASSES     # its own, not a neighbour's
    assert {r[0].device for r in got.values()} == {"a0", "a1"}


def test_entries_are_pulled_lazily_and_clips_in_memory_are_bounded():
    decoders = [FakeWorker(f"d{i}", latency=0.1) for i in range(4)]      # decoding far outpaces
    actors = [FakeWorker("a0", 5.0), FakeWorker("a1", 5.0)]              # the two slow devices
    scheduler, calls = make(decoders, actors, depth=2)
    pulled = []

    def lazily():
        for entry in entries(50):
            pulled.append(entry.index)
            assert len(pulled) - len(recorded) <= scheduler.buffer + 2 * len(actors) + 1
            yield entry

    recorded: list[int] = []
    scheduler.run(lazily(), lambda r: recorded.append(r.index))
    assert sorted(recorded) == list(range(50))
    assert scheduler.buffer == 4                                          # max(actors, decoders)
    assert calls.max_views_alive <= scheduler.buffer + 2 * len(actors)
    assert calls.max_views_alive >= scheduler.buffer                      # and it is used


def test_clips_go_to_the_least_busy_actor_never_beyond_its_depth():
    decoders = [FakeWorker("d0", latency=0.1), FakeWorker("d1", latency=0.1)]
    slow, fast = FakeWorker("slow", 10.0), FakeWorker("fast", 1.0)
    scheduler, calls = make(decoders, [slow, fast], depth=2)
    got = run(scheduler, entries(40))
    per_device = {name: sum(r[0].device == name for r in got.values()) for name in ("slow", "fast")}
    assert per_device["fast"] > 4 * per_device["slow"] > 0
    assert calls.max_queued["slow"] <= 2 and calls.max_queued["fast"] <= 2
    # two idle, equal actors: the second clip goes to the one with nothing queued
    scheduler, _ = make(decoders, [FakeWorker("a0", 5.0), FakeWorker("a1", 5.0)], depth=2)
    assert sorted(r[0].device for r in run(scheduler, entries(2)).values()) == ["a0", "a1"]


def test_a_broken_video_is_recorded_with_its_reason_and_not_retried():
    decoder = FakeWorker("d0", broken={3}, raises={5})
    actor = FakeWorker("a0", raises={7})
    scheduler, _ = make([decoder], [actor])
    got = run(scheduler, entries(10))
    assert (got[3][0].status, got[3][0].error) == ("failed", "empty")
    assert (got[5][0].error, got[7][0].error) == ("decode failed", "inference failed")
    assert "bad input 7" in got[7][0].message
    assert decoder.calls.count(3) == decoder.calls.count(5) == actor.calls.count(7) == 1
    assert sum(r[0].status == "ok" for r in got.values()) == 7


def test_a_death_is_retried_first_then_recorded_as_worker_died():
    # d0 dies at video 2 on every attempt (3 attempts with max_retries=2), restarting each time.
    unlucky = FakeWorker("d0", latency=1.0, dies_at={2: 99})
    scheduler, _ = make([unlucky], [FakeWorker("a0", 0.5)], max_retries=2, max_restarts=10)
    got = run(scheduler, entries(6))
    assert got[2][0].error == "worker died" and "3 attempts" in got[2][0].message
    assert unlucky.calls.count(2) == 3
    # each retry is decoded before the next new entry
    assert unlucky.calls[:5] == [0, 1, 2, 2, 2]
    assert all(got[i][0].status == "ok" for i in (0, 1, 3, 4, 5))


def test_a_video_lost_once_is_retried_and_scored():
    actor = FakeWorker("a0", latency=1.0, dies_at={4: 1})
    scheduler, _ = make([FakeWorker("d0", 0.2)], [actor], max_retries=2)
    got: dict = {}
    stats = scheduler.run(entries(8), lambda r: got.setdefault(r.index, []).append(r))
    assert all(got[i][0].status == "ok" for i in range(8))
    assert actor.calls.count(4) == 2
    assert stats.actor_deaths == 1 and stats.retries >= 1


def test_one_death_is_counted_once_whatever_it_held():
    # a0 holds two videos (depth 2) when it dies at video 2: one death, both retried.
    a0 = FakeWorker("a0", latency=4.0, dies_at={2: 1})
    scheduler, calls = make([FakeWorker("d0", 0.1), FakeWorker("d1", 0.1)], [a0], depth=2,
                            max_restarts=1)
    got: dict = {}
    stats = scheduler.run(entries(6), lambda r: got.setdefault(r.index, []).append(r))
    assert stats.actor_deaths == 1
    assert stats.retries == 2                                   # the two videos it held
    assert all(got[i][0].status == "ok" for i in range(6))     # max_restarts=1: still in use


def test_a_member_past_its_restarts_is_not_used_again():
    bad = FakeWorker("bad", latency=1.0, dies_at={i: 99 for i in range(40)})
    good = FakeWorker("good", latency=1.0)
    scheduler, _ = make([FakeWorker("d0", 0.1)], [bad, good], depth=1, max_restarts=3,
                        max_retries=5)
    got: dict = {}
    stats = scheduler.run(entries(20), lambda r: got.setdefault(r.index, []).append(r))
    assert len(bad.calls) == 4                                  # 3 restarts, then abandoned
    assert stats.actor_deaths == 4
    assert all(got[i][0].status == "ok" and got[i][0].device == "good" for i in range(20))


def test_a_pool_with_no_live_member_stops_the_run_with_its_name():
    always = FakeWorker("a0", latency=1.0, dies_at={i: 99 for i in range(10)})
    scheduler, _ = make([FakeWorker("d0", 0.1)], [always], max_restarts=2, max_retries=10)
    with pytest.raises(HarnessError, match="every inference actor died"):
        run(scheduler, entries(10))
    dead_decoder = FakeWorker("d0", latency=1.0, dies_at={i: 99 for i in range(10)})
    scheduler, _ = make([dead_decoder], [FakeWorker("a0")], max_restarts=1, max_retries=10)
    with pytest.raises(HarnessError, match="every decode worker died"):
        run(scheduler, entries(10))


def test_an_index_is_recorded_once_even_if_it_comes_twice(caplog):
    scheduler, _ = make([FakeWorker("d0")], [FakeWorker("a0")])
    twice = [Entry(0, "a.mp4", 0), Entry(1, "b.mp4", 1), Entry(0, "a.mp4", 0)]
    with caplog.at_level(logging.WARNING, logger="harness.scheduler"):
        got = run(scheduler, twice)
    assert {i: len(r) for i, r in got.items()} == {0: 1, 1: 1}
    assert "already recorded" in caplog.text


def test_an_empty_list_finishes_at_once():
    scheduler, calls = make([FakeWorker("d0")], [FakeWorker("a0")])
    assert run(scheduler, []) == {} and calls.pending == {}
