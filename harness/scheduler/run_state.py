"""What one run of the scheduler holds: its queues, calls in flight, what was recorded, and the
counts for summary.json."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Callable, Iterator

from harness.stages import VideoResult


@dataclass
class SetAside:
    """A member that could not serve (summary.json)."""

    pool: str
    member: int
    error: str


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
    set_aside: list[SetAside] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = dict(self.__dict__)
        out["set_aside"] = [dict(s.__dict__) for s in self.set_aside]
        return out


@dataclass
class RunState:
    """One run's state: what is queued, in flight, waiting and recorded."""

    todo: Iterator
    record: Callable[[VideoResult], None]
    stats: RunStats = field(default_factory=RunStats)
    retry: collections.deque = field(default_factory=collections.deque)    # Work
    ready: collections.deque = field(default_factory=collections.deque)    # Clip
    in_flight: dict = field(default_factory=dict)                          # ref -> Call
    exhausted: bool = False
    recorded: set = field(default_factory=set)
    decode_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50))
    infer_s: collections.deque = field(default_factory=lambda: collections.deque(maxlen=50))
    last_stall_report: float = 0.0
    audit_sent: set = field(default_factory=set)      # indices sent to the reference (once)
    said_waiting: bool = False

    def work_remains(self, stopping: bool) -> bool:
        return bool(self.ready or (not stopping and (self.retry or not self.exhausted)))
