"""Reaching the Ray instance and noticing when it is gone: one job, kept apart from placing
actors (harness.cluster).

- :func:`check_reachable`: an address where nothing answers is refused in seconds, naming the
  fix (Ray's own connect retries a silent address for minutes).
- :func:`join`: ``ray.init(address)`` on a helper thread, so Ctrl-C and SIGTERM still act.
- :class:`InstanceWatch`: a GCS silent for seconds is a lost instance (:class:`RayLost`), named
  before Ray would end the driver after 60 s without a word of its own.
- :class:`RayInstance`: the one line the driver prints about the instance it uses.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from harness.errors import DeviceError

class _TokenNoticeFilter(logging.Filter):
    """Drops Ray's "Token authentication is enabled for this Ray cluster" notice, which Ray
    prints on every start of a local instance; token auth stays on (docs/running.md says
    where the token is). Ray's other warnings, "disabled" among them, pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def hide_token_auth_notice() -> None:
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenNoticeFilter) for f in logger.filters):
        logger.addFilter(_TokenNoticeFilter())


@dataclass(frozen=True)
class RayInstance:
    """The Ray a run uses, for the one line the driver prints about it."""

    address: str                # the GCS, host:port: what `ray list actors --address` takes
    dashboard: str | None       # http://host:port
    local: bool                 # the harness's own instance (else a cluster it joined)

    def describe(self) -> str:
        where = "local instance" if self.local else "cluster"
        dashboard = f", dashboard {self.dashboard}" if self.dashboard else ""
        return f"Ray: {where} at {self.address}{dashboard} (token auth: docs/running.md)"


def ray_instance(requested_address: str | None, dashboard_url: str | None) -> RayInstance:
    """The instance :func:`connect` started or joined (given the same ``address``)."""
    import ray

    if dashboard_url and not dashboard_url.startswith("http"):
        dashboard_url = "http://" + dashboard_url
    local = cluster_address(requested_address)[0] is None     # connect's own rule
    return RayInstance(ray.get_runtime_context().gcs_address, dashboard_url or None, local)


def kill_children() -> None:
    """SIGKILL every process below this one (read from /proc; Linux)."""
    parents: dict[int, list[int]] = {}
    for entry in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:   # gone meanwhile
            continue
        parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    below, frontier = [], [os.getpid()]
    while frontier:
        children = parents.get(frontier.pop(), [])
        below += children
        frontier += children
    for pid in below:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


REACH_TIMEOUT_S = 5.0     # a TCP connect to the cluster's address, before ray.init
JOIN_TIMEOUT_S = 30.0     # ray.init joining an address that accepts connections
LOST_AFTER_S = 5.0        # the GCS silent this long: the instance is lost (Ray's own limit: 60 s)


class RayLost(DeviceError):
    """The Ray instance went away under the run (its processes killed, out of memory)."""


def _endpoint(address: str) -> tuple[str, int]:
    """The host and port ``ray.init(address)`` dials: a Ray Client's ``ray://host[:port]``
    (10001 by default), else the GCS as Ray resolves it ("auto": the cluster `ray start`
    left on this machine; raises ConnectionError when there is none)."""
    if address.startswith("ray://"):
        host, _, port = address[len("ray://"):].rstrip("/").rpartition(":")
        return (host, int(port)) if host else (port, 10001)
    from ray._private.services import canonicalize_bootstrap_address

    host, _, port = canonicalize_bootstrap_address(address).rpartition(":")
    return host.strip("[]"), int(port)


def _silence(host: str, port: int, timeout_s: float) -> str | None:
    """None when something accepts a TCP connection at host:port, else why nothing does."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _join_fix(address: str, source: str) -> str:
    return (f"check the address and that the cluster is up (`RAY_AUTH_MODE=token ray status"
            f" --address {address}` on one of its nodes), or leave out {source} to let the"
            " harness start its own local Ray instance")


def cluster_address(given: str | None) -> tuple[str | None, str]:
    """The cluster to join (``--address``, else ``$RAY_ADDRESS``; None: start a local
    instance) and which of the two named it."""
    if given:
        return given, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "$RAY_ADDRESS"


def check_reachable(given: str | None) -> None:
    """Fail in seconds, naming the fix, when nothing answers at the cluster's address
    (``--address`` or ``$RAY_ADDRESS``; none: nothing to check): Ray's own connect retries a
    silent address for minutes, 30 s a try."""
    address, source = cluster_address(given)
    if not address:
        return
    try:
        host, port = _endpoint(address)
    except (ConnectionError, ValueError) as exc:   # "auto" and no cluster here; malformed
        raise DeviceError(f"no Ray cluster at {source} {address} ({exc}). Fix: "
                          + _join_fix(address, source)) from None
    why = _silence(host, port, REACH_TIMEOUT_S)
    if why:
        raise DeviceError(f"nothing answers at the Ray cluster address {address} ({source};"
                          f" {host}:{port}: {why}). Fix: {_join_fix(address, source)}")


class _NotMainThreadFilter(logging.Filter):
    """Drops Ray's "SIGTERM handler is not set" warning for a join on a helper thread (the
    driver's own handlers are the ones wanted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


def join(address: str, source: str, **kwargs):
    """``ray.init(address)`` on a helper thread, so that the main thread keeps acting on
    Ctrl-C and SIGTERM (Ray's connect blocks in C++ up to 30 s a try, and Ray's init on the
    main thread replaces SIGTERM's handler); an address that accepts connections but does not
    answer as a Ray cluster is given up after JOIN_TIMEOUT_S."""
    import ray

    box: dict = {}

    def init() -> None:
        try:
            box["context"] = ray.init(address=address, **kwargs)
        except BaseException as exc:   # handed to the main thread
            box["error"] = exc

    worker_log = logging.getLogger("ray._private.worker")
    quiet = _NotMainThreadFilter()
    worker_log.addFilter(quiet)
    try:
        thread = threading.Thread(target=init, name="ray-init", daemon=True)
        thread.start()
        thread.join(JOIN_TIMEOUT_S)    # (signals are handled meanwhile)
    finally:
        worker_log.removeFilter(quiet)
    if thread.is_alive():
        raise DeviceError(f"the Ray cluster at {address} ({source}) did not answer within"
                          f" {JOIN_TIMEOUT_S:g} s: something listens there, but not a Ray"
                          " cluster that admits this driver (a token-auth cluster needs"
                          f" RAY_AUTH_MODE=token here). Fix: {_join_fix(address, source)}")
    if "error" in box:
        raise box["error"]
    return box["context"]


@contextlib.contextmanager
def signal_handlers_kept():
    """Ray's init replaces SIGTERM's handler with its own sys.exit: the driver's stays."""
    main = threading.current_thread() is threading.main_thread()
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if main else {}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None:
                signal.signal(sig, handler)


class InstanceWatch:
    """Notices within seconds that the Ray instance is gone (its GCS killed, out of memory).
    Ray itself retries for 60 s and then ends the driver ("Failed to connect to GCS within 60
    seconds ... The program will terminate"), before the run could write what it recorded or
    say why. ``local``: the harness's own instance (its log folder is named; `ray logs` and
    the dashboard died with it)."""

    def __init__(self, local: bool, every_s: float = 1.0,
                 lost_after_s: float = LOST_AFTER_S) -> None:
        import ray

        self.address = ray.get_runtime_context().gcs_address
        self.local, self.every_s, self.lost_after_s = local, every_s, lost_after_s
        self.logs = _session_logs() if local else None
        self.lost: str | None = None
        self._next = 0.0
        self._silent_since: float | None = None

    def _why_silent(self) -> str | None:
        host, _, port = self.address.rpartition(":")
        return _silence(host.strip("[]"), int(port), min(1.0, self.every_s))

    def check(self) -> None:
        """Raise RayLost once the GCS has not answered for ``lost_after_s``; cheap between
        probes (one TCP connect a second)."""
        if self.lost:
            raise RayLost(self.lost)
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.every_s
        why = self._why_silent()
        if why is None:
            self._silent_since = None
            return
        self._silent_since = self._silent_since or now
        if now - self._silent_since >= self.lost_after_s:
            self.lost = self._message(why)
            raise RayLost(self.lost)

    def confirm(self) -> None:
        """After an error (a member died, a pool with nobody left): raise RayLost instead
        when the instance is gone (waits up to ``lost_after_s`` while its GCS is silent)."""
        deadline = time.monotonic() + self.lost_after_s
        while True:
            why = self._why_silent()
            if why is None:
                return
            if time.monotonic() >= deadline:
                self.lost = self._message(why)
                raise RayLost(self.lost)
            time.sleep(0.2)

    def _message(self, why: str) -> str:
        where = "the harness's own Ray instance" if self.local else "the Ray cluster"
        look = (f"its logs: {self.logs}" if self.logs and Path(self.logs).is_dir()
                else "the system log for the OOM killer (`dmesg`)" if self.local
                else "the head node's logs (/tmp/ray/session_latest/logs there)")
        return (f"the Ray instance was lost ({where}: its GCS at {self.address} stopped"
                f" answering, {why}: its processes were killed, or the machine ran out of"
                f" memory?); see {look}")


def _session_logs() -> str | None:
    """The log folder of the Ray session this driver started (None when unknown)."""
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()
    except Exception:   # (a private attribute of Ray: only the message loses a path)
        return None
