"""Fault injection for the chaos test and benchmarks/chaos.py: Ray nodes on this machine
that can be killed whole, a node that cannot see a folder, and a mount whose reads stall.

Everything here needs root for mount namespaces (``unshare --mount``) and FUSE (libfuse2,
fusepy); :func:`can_inject` says whether this machine allows it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOUBLES = REPO / "tests" / "doubles"


def can_inject() -> str | None:
    """None when namespaces and FUSE work here, else what is missing."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--mount", "true"],
                                                         capture_output=True).returncode:
        return "`unshare --mount` is not permitted (needs root)"
    if not Path("/dev/fuse").exists():
        return "/dev/fuse is missing"
    try:
        import fuse  # noqa: F401  (fusepy; loads libfuse.so.2)
    except (ImportError, OSError) as exc:
        return f"fusepy/libfuse2 unavailable ({exc})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(extra: dict | None = None) -> dict:
    """A clean Ray environment with token auth, the harness and the NPU doubles importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_MODE"] = "token"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = os.pathsep.join([str(DOUBLES), str(REPO)])
    env.update(extra or {})
    return env


class Node:
    """One ``ray start --block`` in its own process group (killed whole, like a lost host)."""

    def __init__(self, argv: list[str], env: dict, log: Path, hide: list[Path] = ()) -> None:
        self.log = log
        command = argv
        if hide:  # a mount namespace in which each hidden folder is an empty tmpfs
            mounts = " && ".join(f"mount -t tmpfs none {p}" for p in hide)
            command = ["unshare", "--mount", "sh", "-c", f'{mounts} && exec "$0" "$@"', *argv]
        self._out = open(log, "w")
        self.process = subprocess.Popen(command, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                        start_new_session=True)

    def wait_started(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the whole group: the node disappears as a crashed host would."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        self._out.close()


class LoopbackCluster:
    """A head and worker nodes on this machine, with token auth, each killable."""

    def __init__(self, root: Path, env: dict) -> None:
        self.root, self.env, self.nodes = root, env, []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, argv: list[str], hide: list[Path], env: dict | None) -> Node:
        node = Node(argv, {**self.env, **(env or {})}, self.root / f"node{len(self.nodes)}.log", hide)
        self.nodes.append(node)
        node.wait_started()
        return node

    def head(self, cpus: int, resources: str = "{}", env: dict | None = None,
             dashboard_port: int | None = None) -> Node:
        """The head node; with ``dashboard_port``, the dashboard (and the Jobs API) on 127.0.0.1."""
        dashboard = (["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port)]
                     if dashboard_port else ["--include-dashboard=false"])
        return self._start(["ray", "start", "--head", "--port", str(self.port), "--num-cpus", str(cpus),
                            "--resources", resources, *dashboard, "--block"], [], env)

    def worker(self, cpus: int, resources: str, hide: list[Path] = (), env: dict | None = None) -> Node:
        return self._start(["ray", "start", "--address", self.address, "--num-cpus", str(cpus),
                            "--resources", resources, "--block"], list(hide), env)

    def wait_for(self, resource: str, count: float, timeout: float = 120) -> None:
        """Until the cluster counts ``count`` of ``resource`` (all nodes registered)."""
        code = ("import ray, sys, time, logging\n"
                f"ray.init(address={self.address!r}, logging_level=logging.ERROR)\n"
                f"deadline = time.monotonic() + {timeout}\n"
                f"while ray.cluster_resources().get({resource!r}, 0) < {count}:\n"
                "    assert time.monotonic() < deadline, ray.cluster_resources()\n"
                "    time.sleep(0.5)\n")
        subprocess.run([sys.executable, "-c", code], env=self.env, check=True, timeout=timeout + 60,
                       capture_output=True)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
        forget_head(self.port)


def forget_head(port: int) -> None:
    """Remove the note ``ray start --head`` leaves for ``ray.init()`` to find its cluster
    (``ray stop`` would, but it stops every Ray on the machine): a killed head's note makes a
    plain ``ray.init(num_cpus=...)`` elsewhere attach to nothing and fail."""
    note = Path("/tmp/ray/ray_current_cluster")
    try:
        if note.read_text().strip().endswith(f":{port}"):
            note.unlink()
    except OSError:
        pass


class StallingMount:
    """``source`` seen through FUSE at ``mountpoint``; reading ``stalled`` files never answers
    (or, with ``eio_until``, fails with EIO until that file exists).

    On exit the FUSE connection is aborted first, so readers stuck in the kernel return (a
    process with a thread stuck in a FUSE read cannot even finish dying until then).
    """

    def __init__(self, source: Path, mountpoint: Path, stalled: list[str],
                 eio_until: Path | None = None) -> None:
        self.source, self.mountpoint, self.stalled = source, mountpoint, stalled
        self.mode = ["--eio-until", str(eio_until)] if eio_until else []

    def __enter__(self) -> Path:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, str(REPO / "tests" / "fuse_stall.py"),
                                         *self.mode, str(self.mountpoint), str(self.source),
                                         *self.stalled],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the FUSE mount did not come up")
            time.sleep(0.1)
        return self.mountpoint

    def __exit__(self, *exc) -> None:
        self._abort()
        subprocess.run(["fusermount", "-u", "-z", str(self.mountpoint)], capture_output=True)
        self.process.kill()             # a read-only view: nothing to flush
        self.process.wait()

    def _abort(self) -> None:
        """Fail every pending request of this mount (fusectl: connections/<minor dev>/abort)."""
        connections = Path("/sys/fs/fuse/connections")
        if connections.is_dir() and not any(connections.iterdir()):   # fusectl not mounted yet
            subprocess.run(["mount", "-t", "fusectl", "none", str(connections)], capture_output=True)
        try:
            minor = os.minor(os.stat(self.mountpoint).st_dev)
            (connections / str(minor) / "abort").write_text("1")
        except OSError:
            pass
