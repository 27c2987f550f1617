"""Stopping the driver and losing Ray, at every stage (issue 19, items 1 and 8).

- SIGTERM stops the driver as the first Ctrl-C does, whether it is connecting, building or
  running; a Ctrl-C with nothing in flight stops at once: exit 130 and the resume command.
- The harness's own Ray instance dying (its GCS killed) is named as such, with the resume
  command and exit 2, both mid-run and while the actors start.

Each test drives ``python -m harness.run`` in a subprocess and acts on an event it can see (a
client speaking to a socket, a build folder appearing, a video recorded, an actor's process
loading), never on the machine's speed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import results
from pipeline_support import CONFIG, REPO, gated_list, run_args, shared_inputs, worker_pythonpath

RESUME = "resume with: python -m harness.run "
BOUND_S = 240     # a bound for a broken run, never a pass condition


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


class Driver:
    """``python -m harness.run ARGV`` in a subprocess; its stderr lines as they come."""

    def __init__(self, argv: list[str], **env: str) -> None:
        environment = dict(os.environ, PYTHONPATH=worker_pythonpath(), RAY_ADDRESS="", **env)
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.run", *argv], cwd=REPO,
                                     env=environment, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.out: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        threading.Thread(target=lambda: self.out.extend(self.proc.stdout), daemon=True).start()

    @property
    def err(self) -> str:
        return "".join(self.lines)

    def until(self, event, what: str) -> None:
        deadline = time.monotonic() + BOUND_S
        while not event():
            assert self.proc.poll() is None, f"the driver ended before {what}:\n{self.err[-3000:]}"
            assert time.monotonic() < deadline, f"no {what} within {BOUND_S} s:\n{self.err[-3000:]}"
            time.sleep(0.05)

    def finish(self) -> int:
        code = self.proc.wait(timeout=BOUND_S)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def descendants(pid: int) -> dict[int, str]:
    """``{pid: command line}`` of the processes below ``pid`` (from /proc)."""
    parent, cmdline = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        cmdline[int(entry)] = cmd.decode(errors="replace").strip()
    found, frontier = {}, [pid]
    while frontier:
        top = frontier.pop()
        for child, ppid in parent.items():
            if ppid == top and child not in found:
                found[child] = cmdline[child]
                frontier.append(child)
    return found


def gone(pids) -> bool:
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            return False
    return True


def kill_gcs(driver: Driver) -> list[int]:
    """SIGKILL the GCS of the driver's own Ray instance; returns every process of the instance."""
    below = descendants(driver.proc.pid)
    gcs = [pid for pid, cmd in below.items() if "gcs_server" in cmd.split(" ")[0]]
    assert len(gcs) == 1, below
    os.kill(gcs[0], signal.SIGKILL)
    return list(below)


def assert_nothing_left(pids: list[int]) -> None:
    deadline = time.monotonic() + 60
    while not gone(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if not gone([pid])]
    for pid in left:             # (never leave them behind, even when failing)
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the lost instance left behind: {left}"


class SilentCluster:
    """An address where something listens but no Ray cluster answers: it accepts connections
    and never replies. ``spoken`` is set once a client sends bytes (Ray's gRPC connect; the
    harness's reachability check only opens and closes a connection)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("0.0.0.0", 0))   # Ray dials the node's address
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.spoken, self.done, self.conns = threading.Event(), threading.Event(), []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn) -> None:
        try:
            if conn.recv(64):
                self.spoken.set()
        except OSError:
            pass

    def close(self) -> None:
        self.done.set()
        for conn in self.conns:
            conn.close()
        self.server.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_connecting_stops_at_once_with_the_resume_command(inputs, tmp_path, sig):
    silent = SilentCluster()
    driver = Driver(run_args(inputs, tmp_path / "w", "--cpus", "1", "--address",
                             f"127.0.0.1:{silent.port}", ann=inputs.good_list))
    try:
        driver.until(silent.spoken.is_set, "Ray's connect")          # inside ray.init now
        driver.proc.send_signal(sig)
        code = driver.finish()
    finally:
        driver.kill()
        silent.close()
    assert code == 130, driver.err[-3000:]
    assert "stopped. What was recorded is in the work dir; " + RESUME in driver.err
    assert "finishing those in flight" not in driver.err             # nothing was in flight
    assert "Traceback" not in driver.err


def test_sigterm_while_building_stops_at_once(inputs, tmp_path):
    build_dir = tmp_path / "build"
    argv = ["--config", str(CONFIG), "--random-weights", "--cpus", "1", "--build-dir",
            str(build_dir), "--ann-file", str(inputs.good_list), "--data-prefix",
            str(inputs.videos), "--work-dir", str(tmp_path / "w"), "--no-progress"]
    driver = Driver(argv)
    try:
        driver.until(lambda: any(build_dir.glob(".tmp-*")), "the build")   # exporting now
        driver.proc.send_signal(signal.SIGTERM)
        code = driver.finish()
    finally:
        driver.kill()
    assert code == 130, driver.err[-3000:]
    assert "stopped. What was recorded is in the work dir; " + RESUME in driver.err
    assert "Traceback" not in driver.err
    assert not list(build_dir.glob(".tmp-*"))                         # no half-made artifact


def _gated(inputs, tmp_path, *extra: str) -> tuple[Driver, object, Path]:
    """The harness's own Ray instance on a 16-video list whose 13th video is a gate: the
    driver records 12, then waits there (pipeline_support.Gate)."""
    ann, prefix, gate = gated_list(inputs, tmp_path / "data")
    work = tmp_path / "w"
    argv = run_args(inputs, work, "--cpus", "1", "--decoders", "1", "--flush-every", "4",
                    *extra, ann=ann)
    argv[argv.index("--data-prefix") + 1] = str(prefix)
    driver = Driver(argv)
    driver.until(lambda: (work / results.PREDICTIONS).is_dir()
                 and len(results.done_indices(work)) >= 12, "12 videos recorded")
    return driver, gate, work


def test_sigterm_while_running_stops_at_once_and_keeps_what_was_recorded(inputs, tmp_path):
    driver, gate, work = _gated(inputs, tmp_path)
    try:
        driver.proc.send_signal(signal.SIGTERM)        # the gate's video is in flight
        code = driver.finish()
    finally:
        driver.kill()
        gate.replace()
    assert code == 130, driver.err[-3000:]
    assert "stopped. What was recorded is in the work dir; " + RESUME in driver.err
    assert results.done_indices(work) == set(range(12))


def test_the_ray_instance_lost_mid_run_is_named_with_the_resume_command(inputs, tmp_path):
    driver, gate, work = _gated(inputs, tmp_path)
    try:
        instance = kill_gcs(driver)                    # as `kill -9` or the OOM killer would
        code = driver.finish()
    finally:
        driver.kill()
        gate.replace()
    err = driver.err
    assert code == 2, err[-3000:]
    assert ("error: the Ray instance was lost (the harness's own Ray instance: its GCS at"
            " 127.0.0.1:") in err
    assert ("stopped answering, connection refused: its processes were killed, or the machine ran"
            " out of memory?); see its logs: /tmp/ray/session_") in err
    assert "what was recorded is kept; " + RESUME in err
    assert "ray logs" not in err and "dashboard)" not in err and "Traceback" not in err
    summary = json.loads((work / results.SUMMARY_FILE).read_text())
    assert summary["stopped"].startswith("the Ray instance was lost")
    assert results.done_indices(work) == set(range(12))
    assert_nothing_left(instance)


def test_the_ray_instance_lost_while_the_actors_start_is_named_too(inputs, tmp_path):
    # a chip whose model takes ten minutes to load: the GCS dies while it loads
    argv = run_args(inputs, tmp_path / "w", "--npus", "1", "--resources", '{"NPU": 1}',
                    "--audit", "0", ann=inputs.good_list)
    driver = Driver(argv, FAKE_ACL_LOAD_S="600",
                    PATH=f"{inputs.atc.parent}{os.pathsep}{os.environ['PATH']}")
    try:
        driver.until(lambda: any(cmd.startswith("ray::") and "_RayInferenceActor.__init__" in cmd
                                 for cmd in descendants(driver.proc.pid).values()),
                     "the inference actor loading its model")
        instance = kill_gcs(driver)
        code = driver.finish()
    finally:
        driver.kill()
    err = driver.err
    assert code == 2, err[-3000:]
    assert "error: the Ray instance was lost (the harness's own Ray instance: its GCS at" in err
    assert "what was recorded is kept; " + RESUME in err
    assert "Traceback" not in err
    assert_nothing_left(instance)
