"""The one thread that talks to a device: :class:`DeviceThread`.

A device runtime may tie its state to the calling thread. ACL contexts belong to threads
(the 2023 aclruntime binding sets the session's context in ``Tensor.to_device``, the 2024
one at the start of ``run``), and the binding never releases the GIL while the chip executes
(reference/ascend.md). So an inference actor never calls its session from Ray's pool threads:
one dedicated thread opens the session, feeds it, runs it, reads its results and closes it;
the batcher (harness.stages) hands it work and waits. Every backend goes through it (one
mechanism), and nothing assumes another Python thread of the actor runs during a call.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from harness.backends.base import Session

T = TypeVar("T")
_STOP = None


class DeviceThread:
    """Opens a session with ``open_session()`` on a thread of its own and runs every later
    call (:meth:`call`) there, one at a time, in the order they come. The constructor returns
    once the session is open, raising its error if it did not open."""

    def __init__(self, open_session: Callable[[], Session], name: str = "device") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, daemon=True, name=name)
        self._thread.start()
        try:
            self.session: Session = self.call(open_session)
        except BaseException:
            self._jobs.put(_STOP)
            raise

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:   # the caller gets it
                future.set_exception(exc)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the device thread; waits for it (a hung device call hangs the
        caller too: the driver's timeout ends the actor)."""
        if threading.get_ident() == self._thread.ident:   # already on it (nested helpers)
            return fn(*args)
        future: Future = Future()
        self._jobs.put((future, fn, args))
        return future.result()

    @property
    def ident(self) -> int | None:
        """The device thread's ``threading.get_ident()`` (tests, diagnostics)."""
        return self._thread.ident

    def close(self) -> None:
        """Close the session on its thread, then end the thread."""
        try:
            self.call(self.session.close)
        finally:
            self._jobs.put(_STOP)
