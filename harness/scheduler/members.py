"""A stage's members (decode workers, inference actors, the audit's reference) and the calls
they hold: the scheduler's state, as objects.

A :class:`Member` is one Ray actor as the scheduler sees it: its handle, which process of it
(``incarnation``: a death or a replacement starts a new one), its state, and its work calls in
submission order. The first ``concurrency`` of those are *running* (a decode worker on object
storage reads the next video while it decodes one; an inference actor that batches B videos
runs B calls in one device call); each running call's budget is timed from when it started,
which is when the call ahead of it finished if the member was full. The rest are queued.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from enum import Enum
from typing import Any


class MemberState(Enum):
    STARTING = "starting"    # new, restarted or replaced: used once it answers a probe
    READY = "ready"          # takes work
    RETIRED = "retired"      # not used again (dead for good, or cannot serve)


@dataclass(eq=False)
class Work:
    """One list entry on its way through the stages, with what it has cost so far."""

    entry: Any
    attempts: int = 0        # attempts charged: it was running when its member died or hung
    timeouts: int = 0        # of those, hangs


@dataclass(eq=False)
class Call:
    """One task in flight: which member's which process runs it, on what, since when."""

    member: "Member"
    incarnation: int
    ref: Any
    work: Work | None                    # None: a probe
    submitted: float
    views: Any = None                    # decode: the clip it makes; infer: the clip it takes
    maker: "tuple[Member, int] | None" = None   # infer: the decoder (and process) that made it
    started: float | None = None         # when it began running: its budget's start

    @property
    def index(self) -> int:
        return self.work.entry.index


class Member:
    """One decode worker, inference actor or reference actor (see the module doc)."""

    def __init__(self, kind: str, number: int, handle, depth: int, concurrency: int,
                 state: MemberState) -> None:
        self.kind, self.number, self.handle = kind, number, handle
        self.depth = depth                  # work calls it may hold
        self.concurrency = concurrency      # of those, running at once
        self.state = state
        self.incarnation = 0
        self.calls: list[Call] = []         # this incarnation's work calls, in submission order
        self.probe: Call | None = None      # the probe out, while starting
        self.probe_due: float | None = None  # when to probe again (a probe failed: restarting)
        self.starting_since: float | None = None
        self.deaths = 0                     # deaths seen (Ray's accounting decides retirement)
        self.ended_by_death: set[int] = set()   # incarnations that died: their clips may be lost
        self.last_answer = 0.0

    def __repr__(self) -> str:
        return f"{self.kind} {self.number}"

    @property
    def load(self) -> int:
        return len(self.calls)

    def takes_work(self) -> bool:
        return self.state is MemberState.READY and self.load < self.depth

    def running(self) -> list[Call]:
        return self.calls[:self.concurrency]

    def add(self, call: Call, now: float) -> None:
        self.calls.append(call)
        self._promote(now)

    def remove(self, call: Call, now: float) -> bool:
        """Forget a settled call; True if it was still held. The next queued call starts now."""
        if call not in self.calls:
            return False
        self.calls.remove(call)
        self._promote(now)
        return True

    def _promote(self, now: float) -> None:
        for call in self.calls[:self.concurrency]:
            if call.started is None:
                call.started = now

    def end_incarnation(self, died: bool) -> tuple[list[Call], list[Call]]:
        """This process is gone (or being killed): its calls ``(running, queued)``, forgotten
        here; the next call goes to the next process."""
        running, queued = self.calls[:self.concurrency], self.calls[self.concurrency:]
        self.calls, self.probe, self.probe_due = [], None, None
        if died:
            self.deaths += 1
            self.ended_by_death.add(self.incarnation)
        self.incarnation += 1
        return running, queued

    def starting(self, now: float) -> None:
        self.state, self.starting_since = MemberState.STARTING, now


class Members:
    """The members of one stage, and which may take work next (least loaded first)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.all: list[Member] = []
        # (load, number) of members that may take work; entries go stale as loads change and
        # are dropped when met: pick() is O(log members), not a scan of the pool per event
        self._free: list[tuple[int, int]] = []

    def add(self, handle, depth: int, concurrency: int,
            state: MemberState = MemberState.READY) -> Member:
        member = Member(self.kind, len(self.all), handle, depth, concurrency, state)
        self.all.append(member)
        self.offer(member)
        return member

    def offer(self, member: Member) -> None:
        """``member``'s load or state changed: may it take work?"""
        if member.takes_work():
            heapq.heappush(self._free, (member.load, member.number))

    def pick(self) -> Member | None:
        """The ready member with the fewest calls below its depth (lowest number on ties)."""
        while self._free:
            load, number = self._free[0]
            member = self.all[number]
            if member.takes_work() and member.load == load:
                return member
            heapq.heappop(self._free)              # stale: its load or state changed since
        return None

    def __iter__(self):
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def count(self, state: MemberState) -> int:
        return sum(m.state is state for m in self.all)

    def usable(self) -> int:
        """Members that serve now or may soon (ready or starting)."""
        return len(self.all) - self.count(MemberState.RETIRED)

    def busy(self) -> int:
        """Work calls held by all members."""
        return sum(m.load for m in self.all)

    @property
    def handles(self) -> list:
        return [m.handle for m in self.all]
