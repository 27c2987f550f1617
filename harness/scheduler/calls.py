"""The Ray calls the scheduler makes, and Ray's errors in the kinds it tells apart.

Tests substitute a fake with the same methods on a virtual clock (tests/test_scheduler.py).
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any, Callable

from harness.stages import SessionUnavailable

TICK_S = 1.0                 # the longest the driver waits without looking around


class WorkerLost(Exception):
    """The worker or actor that held a task died."""


class Unavailable(WorkerLost):
    """Ray is restarting the actor (or cannot reach it for now): a call sent now fails with
    this, and a later one may be served (Ray's ActorUnavailableError)."""


class ViewsLost(Exception):
    """A decoded clip an actor needed was lost (its node died): the decoder's loss."""


class TaskFailed(Exception):
    """The task raised: the message is the exception's last line."""


class Fate(Enum):
    """What Ray says of an actor (its own restart accounting)."""

    ALIVE = "alive"
    RESTARTING = "restarting"        # also: waiting for resources to be placed again
    DEAD = "dead"                    # for good: its restart budget is spent, or it was killed
    UNKNOWN = "unknown"              # Ray's state API could not say


class RayCalls:
    """The Ray calls of :class:`harness.scheduler.Scheduler`.

    ``new_decoder`` makes one more decode worker (replacements, growth); None disables both.
    """

    def __init__(self, new_decoder: Callable[[], Any] | None = None) -> None:
        self._new_decoder = new_decoder

    def clock(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """Nothing is in flight but a member is due a probe: wait for it."""
        time.sleep(seconds)

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
        from ray.exceptions import (ActorUnavailableError, ObjectLostError, OwnerDiedError,
                                    RayActorError, RayTaskError, WorkerCrashedError)

        try:
            return ray.get(ref, timeout=TICK_S)
        except (ObjectLostError, OwnerDiedError) as exc:
            raise ViewsLost(type(exc).__name__) from exc
        except ActorUnavailableError as exc:      # (a RayActorError: test it first)
            raise Unavailable(type(exc).__name__) from exc
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

    def fate(self, handle) -> Fate:
        """Ray's own account of the actor: alive, restarting, or dead for good."""
        try:
            from ray._private import state

            info = state.actors(handle._actor_id.hex())
        except Exception:   # no state API, or not an actor handle (benchmarks' proxies)
            return Fate.UNKNOWN
        status = (info or {}).get("State")
        if status == "ALIVE":
            return Fate.ALIVE
        if status == "DEAD":
            return Fate.DEAD
        return Fate.RESTARTING if status else Fate.UNKNOWN

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
