"""The pipeline's two stages, as plain classes, and the record of one video's outcome.

- :class:`DecodeWorker`: a list entry -> the video's uint8 views, or a failure record.
  Never imports torch. It enforces the decode timeout itself: a read that hangs (a stalled
  network filesystem) is abandoned in its thread and the video answered ``timeout``.
- :class:`InferenceActor`: one device's model session, loaded once; views -> per-video scores,
  and the benchmark loops. One thread of the actor owns the session (harness.backends.
  device_thread); a session that takes several videos per call gets them through
  :class:`_Batcher` (dynamic batching of the calls the actor's threads serve at once). A node
  that cannot see the model file gets its bytes through Ray's object store into a node-local cache keyed by their sha256 (:func:`local_model_file`).
- :class:`VideoResult`: one row of predictions.parquet.

``ray.remote`` is applied where work is arranged (harness.cluster), so the same classes run
in one process (``--no-ray``, the oracle the tests compare against) and in unit tests.
Under Ray they report Ray metrics and their node; elsewhere those are no-ops.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from harness.backends import ModelSpec, open_session
from harness.backends.device_thread import DeviceThread
from harness.errors import DeviceError, HarnessError
from harness.reasons import Reason, VideoError
from harness.scores import average_views, top_k

log = logging.getLogger(__name__)

SECONDS_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120]
ABANDONED_READS_MAX = 3     # a decode worker with this many stuck reads asks to be replaced
# Decode calls a worker holds when the videos are in object storage: the next video's read
# overlaps this one's decoding (benchmarks/storage.py: a store 20 ms away costs a third of a
# worker's rate without it). Local files: 1.
READ_AHEAD = 2


class SessionUnavailable(HarnessError):
    """This actor cannot serve: its model session did not open (the message says why)."""


# ------------------------------------------------------------------ records

@dataclass
class VideoResult:
    """One video's outcome: a row of predictions.parquet."""

    index: int
    path: str
    label: int
    status: str                       # "ok" or "failed"
    error: Reason | None = None       # why it failed (harness.reasons)
    message: str | None = None        # the full error text, for people
    scores: np.ndarray | None = None  # averaged per-class scores, float32 [C]
    device: str | None = None
    node: str | None = None
    logits: np.ndarray | None = None  # per-view logits [V, C], for audited videos only (not written)

    @classmethod
    def failed(cls, entry, reason: Reason, message: str | None = None,
               node: str | None = None) -> "VideoResult":
        """``entry`` (anything with index, path, label) recorded as failed with ``reason``."""
        reason = Reason(reason)
        return cls(entry.index, entry.path, entry.label, "failed", reason, message or str(reason),
                   None, None, node)

    @classmethod
    def scored(cls, entry, out: dict) -> "VideoResult":
        """``entry`` with the scores an inference actor returned (:meth:`InferenceActor.infer`)."""
        return cls(entry.index, entry.path, entry.label, "ok", None, None,
                   np.asarray(out["scores"], np.float32), out["device"], out["node"],
                   out.get("logits"))

    @property
    def top5(self) -> list[int] | None:
        return None if self.scores is None else [int(i) for i in top_k(self.scores[None], 5)[0]]


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


_NODE_LABEL: str | None = None


def node_label() -> str:
    """This process's node for reports: the hostname, which stays the same when a later run
    resumes on a new Ray instance; plus Ray's node id where several Ray nodes share the host."""
    global _NODE_LABEL
    if _NODE_LABEL is None:
        host = _NODE_LABEL = socket.gethostname()
        if _in_ray_worker():
            import ray

            same_host = [n for n in ray.nodes() if n.get("Alive") and n.get("NodeManagerHostname") == host]
            if len(same_host) > 1:
                _NODE_LABEL = f"{host}:{ray.get_runtime_context().get_node_id()[:8]}"
    return _NODE_LABEL


class Metrics:
    """ray.util.metrics where running under Ray; no-ops otherwise (``--no-ray``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and _in_ray_worker()
        self._made: dict[str, Any] = {}

    def _get(self, kind: str, name: str, description: str):
        if name not in self._made:
            from ray.util import metrics
            if kind == "counter":
                self._made[name] = metrics.Counter(name, description=description, tag_keys=("stage",))
            else:
                self._made[name] = metrics.Histogram(name, description=description,
                                                     boundaries=SECONDS_BUCKETS, tag_keys=("stage",))
        return self._made[name]

    def count(self, name: str, description: str, stage: str) -> None:
        if self.enabled:
            self._get("counter", name, description).inc(1, tags={"stage": stage})

    def observe(self, name: str, description: str, stage: str, seconds: float) -> None:
        if self.enabled:
            self._get("histogram", name, description).observe(seconds, tags={"stage": stage})

    def done(self, stage: str) -> None:
        self.count("harness_videos_done", "videos with scores", stage)

    def failed(self, stage: str) -> None:
        self.count("harness_videos_failed", "videos recorded as failed", stage)


# ------------------------------------------------------------------ stages

class _Job:
    """``fn(arg)`` run by some thread; the caller waits for it with a timeout."""

    def __init__(self, fn: Callable[[Any], Any], arg: Any) -> None:
        self.fn, self.arg, self.done = fn, arg, threading.Event()
        self.value, self.error = None, None

    def run(self) -> None:
        try:
            self.value = self.fn(self.arg)
        except BaseException as exc:  # handed to the caller
            self.error = exc
        self.done.set()

    def result(self, timeout: float) -> Any:
        if not self.done.wait(timeout):
            raise TimeoutError
        if self.error is not None:
            raise self.error
        return self.value


class _Reader:
    """One daemon thread that runs ``fn(path)``; a call that outlives its timeout leaves the
    thread behind (a read stuck in the kernel cannot be interrupted) and is never joined."""

    def __init__(self, fn: Callable[[str], Any]) -> None:
        self.jobs: queue.Queue = queue.Queue()
        self.fn = fn
        threading.Thread(target=self._loop, daemon=True, name="decode").start()

    def _loop(self) -> None:
        while True:
            self.jobs.get().run()

    def call(self, path: str, timeout: float) -> Any:
        job = _Job(self.fn, path)
        self.jobs.put(job)
        return job.result(timeout)


def _in_thread(fn: Callable[[Any], Any], arg: Any, timeout: float) -> Any:
    """``fn(arg)`` in a thread of its own, left behind if it outlives ``timeout``."""
    job = _Job(fn, arg)
    threading.Thread(target=job.run, daemon=True, name="fetch").start()
    return job.result(timeout)


@dataclass(frozen=True)
class DecodeStatus:
    """A decode worker's answer about one video (the views travel as a separate object)."""

    ok: bool
    node: str
    reason: Reason | None = None      # why it failed
    message: str | None = None        # the full error text, for people
    seconds: float | None = None      # reading and decoding, without waiting for another call
    shape: tuple | None = None        # the views' shape
    open_gop: bool = False            # the reference's seek and ours can differ (harness.seek)
    replace_me: bool = False          # the worker abandoned stuck reads: a fresh process, please

    @classmethod
    def failed(cls, reason: Reason, message: str, node: str, replace_me: bool = False) -> "DecodeStatus":
        return cls(False, node, Reason(reason), message, replace_me=replace_me)


class DecodeWorker:
    """Turns a list entry into the video's uint8 views, or a failure record.

    ``decoder`` is a harness.data ``ViewDecoder`` (or any picklable callable
    ``path -> uint8 (V, 3, T, H, W)``). Never imports torch.

    A ViewDecoder reads the video's bytes first (``fetch``: a local file or an object, bounded
    and retried alike), then decodes them from memory, so a read error is never taken for a
    broken video. The read runs outside the decode lock: in a threaded actor (``READ_AHEAD``
    calls at once, for object storage) the next video's read overlaps this one's decoding, and
    one video decodes at a time (one CPU).
    """

    def __init__(self, decoder: Callable[[str], np.ndarray], metrics: bool = True) -> None:
        try:
            import cv2
            cv2.setNumThreads(1)
        except ImportError:  # pragma: no cover - cv2 is a dependency
            pass
        self.decoder = decoder
        # a ViewDecoder also says how the file was decoded (open GOP); plain callables do not
        self._decode = getattr(decoder, "decode", None) or (lambda path: (decoder(path), {}))
        self._fetch = getattr(decoder, "fetch", None)
        self._decoding = threading.Lock()
        self.metrics = Metrics(metrics)
        self.node = node_label()
        self._reader: _Reader | None = None
        self.abandoned = 0           # reads left hanging in their threads

    def probe(self) -> str:
        """The node this worker runs on (also: the worker has started)."""
        return self.node

    def decode(self, index: int, path: str, timeout: float | None = None) -> tuple[DecodeStatus, np.ndarray | None]:
        """``(status, views)``. With ``timeout`` the read and the decode run in threads of
        this worker and a video that takes longer is answered ``timeout`` (``replace_me`` once
        several reads hang: a fresh process then). The timeout covers the read and the decode,
        not the wait for another call's decode; ``seconds`` leaves that wait out too."""
        start = time.perf_counter()
        waited = 0.0
        try:
            video = path
            if self._fetch is not None:
                video = self._fetch(path) if timeout is None else _in_thread(self._fetch, path, timeout)
            fetched = time.perf_counter()
            with self._decoding:
                waited = time.perf_counter() - fetched
                if timeout is None:
                    views, info = self._decode(video)
                else:
                    if self._reader is None:
                        self._reader = _Reader(self._decode)
                    try:
                        views, info = self._reader.call(video, max(0.0, timeout - (fetched - start)))
                    except TimeoutError:
                        self._reader = None   # abandoned with its stuck read; the next call gets a new one
                        raise
                views = np.ascontiguousarray(views, dtype=np.uint8)
        except TimeoutError:
            self.abandoned += 1
            self.metrics.failed("decode")
            return DecodeStatus.failed(Reason.TIMEOUT, f"{path}: no frames after {timeout:g} s"
                                       " (a stalled read?)", self.node,
                                       replace_me=self.abandoned >= ABANDONED_READS_MAX), None
        except VideoError as exc:   # reading or decoding this video failed: recorded, skipped
            self.metrics.failed("decode")
            return DecodeStatus.failed(exc.reason, str(exc), self.node), None
        except Exception as exc:    # a decoder bug must not stop the run either
            log.exception("decoding %s failed", path)
            self.metrics.failed("decode")
            return DecodeStatus.failed(Reason.DECODE_FAILED, f"{path}: {type(exc).__name__}: {exc}",
                                       self.node), None
        seconds = time.perf_counter() - start - waited
        self.metrics.observe("harness_decode_seconds", "seconds to decode one video", "decode", seconds)
        return DecodeStatus(True, self.node, seconds=seconds, shape=views.shape,
                            open_gop=bool(info.get("open_gop"))), views


class _Request:
    """One video handed to a :class:`_Batcher`, and its answer."""

    def __init__(self, views: np.ndarray) -> None:
        self.views, self.value, self.error, self.done = views, None, None, False

    def result(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        return self.value


class _Batcher:
    """Dynamic batching inside one inference actor. The actor's threads (Ray runs up to
    ``max_concurrency`` calls at once) hand in one video each; whoever finds the device free
    prepares every waiting video, up to ``size``, and hands them to the device thread as one
    call; the others wait for their answer. Nothing waits for a batch to fill: a call runs with what has arrived, so the
    last, partial batch of a list goes at once (padded by the caller). A failed batch of
    several is retried one video at a time: one bad input does not fail its neighbours."""

    def __init__(self, run: Callable[[list], list], size: int) -> None:
        self._run, self.size = run, max(1, int(size))
        self._cond = threading.Condition()
        self._waiting: list[_Request] = []
        self._busy = False
        self.calls: list[int] = []        # videos in each device call (tests, reports)

    def submit(self, views: np.ndarray) -> np.ndarray:
        request = _Request(views)
        with self._cond:
            self._waiting.append(request)
            while not request.done:
                if self._busy:
                    self._cond.wait()
                    continue
                self._busy = True            # this thread drives the device for one call
                batch, self._waiting = self._waiting[:self.size], self._waiting[self.size:]
                self._cond.release()
                try:
                    self._serve(batch)
                finally:
                    self._cond.acquire()
                    self._busy = False
                    self._cond.notify_all()
        return request.result()

    def _serve(self, batch: list[_Request]) -> None:
        try:
            self.calls.append(len(batch))
            for request, value in zip(batch, self._run([r.views for r in batch])):
                request.value = value
        except Exception as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for request in batch:
                    self._serve([request])
        for request in batch:
            request.done = True


def artifact_cache_dir() -> Path:
    """Where a node keeps model files it received through the cluster:
    ``$HARNESS_CACHE_DIR/artifacts`` (default ``~/.cache/swin-k400-harness/artifacts``)."""
    base = os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "swin-k400-harness"
    return Path(base) / "artifacts"


def local_model_file(path: str, sha256: str | None, blob) -> str:
    """``path`` when this node sees it (with the driver's content, when its sha256 is known);
    else the file's bytes from ``blob`` (an ObjectRef the driver put), written once to the
    node-local cache under their sha256 and verified."""
    from harness.build import sha256_file

    if os.path.isfile(path):
        if not sha256 or sha256_file(path) == sha256:
            return path
        log.warning("%s on this node differs from the driver's: using the driver's bytes", path)
    if blob is None or not sha256:
        raise DeviceError(f"the model file {path} is not on this node ({node_label()}), and the"
                          " driver did not send it (only runs on several nodes do)")
    cached = artifact_cache_dir() / sha256 / Path(path).name
    if cached.is_file():
        return str(cached)               # written only after its hash was checked
    import ray

    data = ray.get(blob)
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise DeviceError(f"the model bytes received for {path} have sha256 {got}, not {sha256}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, cached)              # atomic: another actor on this node may race us
    log.info("model file %s received through the cluster into %s", path, cached)
    return str(cached)


def _assigned_id(kind: str) -> str | None:
    """The physical device id Ray assigned this actor (``get_accelerator_ids``); None outside
    Ray and for CPUs."""
    if _in_ray_worker() and kind in ("npu", "gpu"):
        import ray
        ids = ray.get_runtime_context().get_accelerator_ids().get(kind.upper()) or []
        if ids:
            return str(ids[0])
    return None


class InferenceActor:
    """One device's model session, loaded once, kept for the actor's life.

    ``slot`` numbers the actor among its kind (reports for CPUs, ordinals with --no-ray);
    inside a Ray actor holding one chip, the session opens visible ordinal 0.
    """

    def __init__(self, spec: ModelSpec, device_kind: str, slot: int = 0, metrics: bool = True,
                 session=None) -> None:
        ordinal = 0 if (_in_ray_worker() and device_kind != "cpu") else slot
        assigned = _assigned_id(device_kind)
        if spec.file_blob is not None and session is None:   # sent through the cluster
            spec = spec.with_model_file(local_model_file(spec.model_file, spec.file_sha256,
                                                         spec.file_blob))
        self.spec = spec
        self.kind = device_kind
        # One thread owns the session: opens, feeds, runs and closes it (harness.backends.
        # device_thread: ACL contexts belong to threads). ``session``: an already made Session
        # (instruments such as benchmarks/pipeline.py).
        self._device = DeviceThread(lambda: session or open_session(spec, device_kind, ordinal,
                                                                    assigned=assigned))
        self.session = self._device.session
        if device_kind == "cpu":
            physical = str(slot)
        else:   # the chip the session opened (an NPU session checks), else Ray's id
            physical = getattr(self.session, "physical_id", None) or assigned or str(ordinal)
        self.device = f"{device_kind}:{physical}"
        self.node = node_label()
        self.metrics = Metrics(metrics)
        self._layout = call_layout(self.session.input_shape, spec.views_per_video)
        batch, per_call = self._layout
        self.videos_per_call = max(1, batch * per_call // spec.views_per_video)
        self._batcher = _Batcher(self._logits_of_videos, self.videos_per_call)

    def probe(self) -> dict:
        """The actor serves (its session is open): :meth:`describe`."""
        return self.describe()

    def describe(self) -> dict:
        """Where the actor runs and what its session wants."""
        batch, per_call = self._layout
        return {"device": self.device, "kind": self.kind, "node": self.node,
                "session_device": self.session.device, "pid": os.getpid(),
                "input_shape": list(self.session.input_shape),
                "input_dtype": str(self.session.input_dtype),
                "batch": batch, "views_per_call": per_call,
                "videos_per_call": self.videos_per_call,
                "precision": getattr(self.session, "effective_precision", None),
                "simulated": getattr(self.session, "simulated", None)}

    def _prepare(self, views: np.ndarray) -> np.ndarray:
        """uint8 views ``(V, 3, T, H, W)`` -> what the session takes (normalized on the host
        when it wants floats)."""
        if self.session.input_dtype == np.uint8:
            return views
        return self.spec.norm.apply(views, channel_axis=1).astype(self.session.input_dtype, copy=False)

    def logits(self, views: np.ndarray) -> np.ndarray:
        """Per-view logits ``[V, C]`` for one video's views ``(V, 3, T, H, W)``."""
        batch, per_call = self._layout
        x = self._prepare(views)
        total = x.shape[0]
        step = batch * per_call
        calls = math.ceil(total / step)
        if calls * step != total:  # pad the last call; padded rows are dropped below
            pad = np.zeros((calls * step - total, *x.shape[1:]), dtype=x.dtype)
            x = np.concatenate([x, pad])
        outputs = [self._device.call(self.session.run,
                                     x[i * step:(i + 1) * step].reshape(batch, per_call, *x.shape[1:]))
                   for i in range(calls)]
        return np.concatenate(outputs)[:total]

    def _logits_of_videos(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        """Per-view logits of several videos, their views packed into the fewest calls."""
        logits = self.logits(np.concatenate(videos) if len(videos) > 1 else videos[0])
        bounds = np.cumsum([v.shape[0] for v in videos])[:-1]
        return np.split(logits, bounds)

    def infer(self, index: int, views: np.ndarray, with_logits: bool = False) -> dict:
        """Averaged scores of one video (the reference's test_cfg.average_clips); with
        ``with_logits`` also its per-view logits (the precision audit compares them)."""
        start = time.perf_counter()
        logits = self._batcher.submit(views)
        scores = average_views(logits, views.shape[0], self.spec.average_clips)[0]
        seconds = time.perf_counter() - start
        self.metrics.observe("harness_inference_seconds", "seconds of inference per video",
                             self.device, seconds)
        self.metrics.done(self.device)
        out = {"index": index, "scores": scores, "device": self.device, "node": self.node,
               "seconds": seconds}
        if with_logits:
            out["logits"] = np.asarray(logits, np.float32)
        return out

    def bench(self, loops: int, warmup: int = 1) -> dict:
        """``loops`` timed calls on a synthetic input of the session's shape (ais_bench --loop)."""
        batch, per_call = self._layout
        shape = (batch, per_call, *self.session.input_shape[2:])
        rng = np.random.default_rng(0)
        if self.session.input_dtype == np.uint8:
            x = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            x = rng.standard_normal(size=shape).astype(self.session.input_dtype)
        latencies, executes = self._device.call(self._timed_calls, x, loops, warmup)
        return {"device": self.device, "node": self.node, "latencies_ms": latencies,
                "execute_ms": executes, "views_per_call": batch * per_call,
                "views_per_video": self.spec.views_per_video,
                "videos_per_call": self.videos_per_call}

    def _timed_calls(self, x: np.ndarray, loops: int, warmup: int) -> tuple[list, list | None]:
        """On the device thread: each call's time in ms as the harness sees it, and the
        runtime's own execute time of the same calls where it keeps one (``sumary()``)."""
        run = self.session.run
        executed = getattr(self.session, "execute_ms", None)
        for _ in range(warmup):
            run(x)
        if executed is not None:
            executed()                       # drop what came before the timed calls
        latencies = []
        for _ in range(loops):
            start = time.perf_counter()
            run(x)
            latencies.append((time.perf_counter() - start) * 1000.0)
        return latencies, (executed() if executed is not None else None)

    def close(self) -> None:
        self._device.close()


def call_layout(input_shape: Iterable[int], views_per_video: int) -> tuple[int, int]:
    """(batch, views per call) of a session; dynamic dims become 1 video and all its views."""
    shape = list(input_shape)
    if len(shape) != 6:
        raise HarnessError(f"the model's input has shape {shape}; expected 6 dims"
                           " [batch, views, 3, T, H, W]")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
    per_call = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else views_per_video
    return batch, per_call
