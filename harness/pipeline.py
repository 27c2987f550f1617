"""The pipeline's stages (decode workers, inference actors) and the driver's scheduler.

Stages are plain classes; ``ray.remote`` is applied where work is arranged
(:func:`start_actors`), so they also run in one process (``--no-ray``, the oracle
the tests compare against) and in unit tests without a cluster.

Data flow with Ray: the driver asks a decode worker for a video; the worker returns a
small status record and the uint8 views as two objects (``num_returns=2``); the driver
passes the views' ObjectRef (never the views) to an idle inference actor, which gets
them straight from the object store and returns per-video scores.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from harness.backends.base import ModelSpec, open_session
from harness.errors import HarnessError
from harness.scores import average_views, top_k

log = logging.getLogger(__name__)

SECONDS_BUCKETS = [0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120]
WORKER_DIED = "worker died"
INFERENCE_FAILED = "inference failed"


# ------------------------------------------------------------------ records

@dataclass
class VideoResult:
    """One video's outcome: a row of predictions.parquet."""

    index: int
    path: str
    label: int
    status: str                       # "ok" or "failed"
    error: str | None = None          # failure reason (DecodeError.reason, "worker died", ...)
    message: str | None = None        # the full error text, for people
    scores: np.ndarray | None = None  # averaged per-class scores, float32 [C]
    device: str | None = None
    node: str | None = None

    @property
    def top5(self) -> list[int] | None:
        return None if self.scores is None else [int(i) for i in top_k(self.scores[None], 5)[0]]


@dataclass(frozen=True)
class DevicePlan:
    """What the user asked for: ``count`` devices of ``kind`` ('npu', 'gpu' or 'cpu')."""

    kind: str
    count: int

    @property
    def ray_resource(self) -> str:
        return {"npu": "NPU", "gpu": "GPU", "cpu": "CPU"}[self.kind]


def _in_ray_worker() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def node_label() -> str:
    """This process's node for reports: hostname, plus Ray's node id (nodes may share a host)."""
    host = socket.gethostname()
    if _in_ray_worker():
        import ray
        return f"{host}:{ray.get_runtime_context().get_node_id()[:8]}"
    return host


class _Metrics:
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

class DecodeWorker:
    """Turns a list entry into the video's uint8 views, or a failure record.

    ``decoder`` is a harness.data ``ViewDecoder`` (or any picklable callable
    ``path -> uint8 (V, 3, T, H, W)``). Never imports torch.
    """

    def __init__(self, decoder: Callable[[str], np.ndarray], threads: int = 1,
                 metrics: bool = True) -> None:
        try:
            import cv2
            cv2.setNumThreads(threads)
        except ImportError:  # pragma: no cover - cv2 is a dependency
            pass
        self.decoder = decoder
        self.metrics = _Metrics(metrics)
        self.node = node_label()

    def ready(self) -> str:
        """The node this worker runs on (also: the worker has started)."""
        return self.node

    def decode(self, index: int, path: str) -> tuple[dict, np.ndarray | None]:
        """``(status, views)``: status has ok, reason, message, seconds, node."""
        start = time.perf_counter()
        try:
            views = np.ascontiguousarray(self.decoder(path), dtype=np.uint8)
        except HarnessError as exc:  # DecodeError: a broken video, recorded and skipped
            self.metrics.failed("decode")
            return ({"ok": False, "reason": getattr(exc, "reason", "decode failed"),
                     "message": str(exc), "node": self.node}, None)
        except Exception as exc:  # a decoder bug must not stop the run either
            log.exception("decoding %s failed", path)
            self.metrics.failed("decode")
            return ({"ok": False, "reason": "decode failed",
                     "message": f"{path}: {type(exc).__name__}: {exc}", "node": self.node}, None)
        seconds = time.perf_counter() - start
        self.metrics.observe("harness_decode_seconds", "seconds to decode one video", "decode", seconds)
        return {"ok": True, "seconds": seconds, "node": self.node, "shape": views.shape}, views


def _physical_id(kind: str, ordinal: int) -> str:
    """The physical device id Ray assigned (for reports), else the ordinal."""
    if _in_ray_worker() and kind in ("npu", "gpu"):
        import ray
        ids = ray.get_runtime_context().get_accelerator_ids().get(kind.upper()) or []
        if ids:
            return str(ids[0])
    return str(ordinal)


class InferenceActor:
    """One device's model session, loaded once, kept for the actor's life.

    ``slot`` numbers the actor among its kind (reports for CPUs, ordinals with --no-ray);
    inside a Ray actor holding one chip, the session opens visible ordinal 0.
    """

    def __init__(self, spec: ModelSpec, device_kind: str, slot: int = 0, threads: int = 1,
                 metrics: bool = True, session=None) -> None:
        ordinal = 0 if (_in_ray_worker() and device_kind != "cpu") else slot
        self.spec = spec
        self.kind = device_kind
        # ``session``: an already made Session (instruments such as benchmarks/pipeline.py)
        self.session = session or open_session(spec.backend, spec, device_kind, ordinal, threads)
        physical = _physical_id(device_kind, ordinal) if device_kind != "cpu" else str(slot)
        self.device = f"{device_kind}:{physical}"
        self.node = node_label()
        self.metrics = _Metrics(metrics)
        self._layout = call_layout(self.session.input_shape, spec.views_per_video)
        mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1, 1)
        std = np.asarray(spec.std, np.float32).reshape(3, 1, 1, 1)
        self._mean, self._std = mean, std

    def describe(self) -> dict:
        """Where the actor runs and what its session wants."""
        batch, per_call = self._layout
        return {"device": self.device, "kind": self.kind, "node": self.node,
                "session_device": self.session.device, "pid": os.getpid(),
                "input_shape": list(self.session.input_shape),
                "input_dtype": str(self.session.input_dtype),
                "batch": batch, "views_per_call": per_call}

    def _prepare(self, views: np.ndarray) -> np.ndarray:
        """uint8 views -> what the session takes (float32 normalized on the host if asked)."""
        if self.session.input_dtype == np.uint8:
            return views
        x = views.astype(np.float32)
        if self.spec.to_bgr:
            x = x[:, ::-1]
        return ((x - self._mean) / self._std).astype(self.session.input_dtype, copy=False)

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
        outputs = [self.session.run(x[i * step:(i + 1) * step].reshape(batch, per_call, *x.shape[1:]))
                   for i in range(calls)]
        return np.concatenate(outputs)[:total]

    def infer(self, index: int, views: np.ndarray) -> dict:
        """Averaged scores of one video (the reference's test_cfg.average_clips)."""
        start = time.perf_counter()
        scores = average_views(self.logits(views), views.shape[0], self.spec.average_clips)[0]
        seconds = time.perf_counter() - start
        self.metrics.observe("harness_inference_seconds", "seconds of inference per video",
                             self.device, seconds)
        self.metrics.done(self.device)
        return {"index": index, "scores": scores, "device": self.device, "node": self.node,
                "seconds": seconds}

    def bench(self, loops: int, warmup: int = 1) -> dict:
        """``loops`` timed calls on a synthetic input of the session's shape (ais_bench --loop)."""
        batch, per_call = self._layout
        shape = (batch, per_call, *self.session.input_shape[2:])
        rng = np.random.default_rng(0)
        if self.session.input_dtype == np.uint8:
            x = rng.integers(0, 256, size=shape, dtype=np.uint8)
        else:
            x = rng.standard_normal(size=shape).astype(self.session.input_dtype)
        for _ in range(warmup):
            self.session.run(x)
        latencies = []
        for _ in range(loops):
            start = time.perf_counter()
            self.session.run(x)
            latencies.append((time.perf_counter() - start) * 1000.0)
        return {"device": self.device, "node": self.node, "latencies_ms": latencies,
                "views_per_call": batch * per_call, "views_per_video": self.spec.views_per_video}

    def close(self) -> None:
        self.session.close()


def call_layout(input_shape: Iterable[int], views_per_video: int) -> tuple[int, int]:
    """(batch, views per call) of a session; dynamic dims become 1 video and all its views."""
    shape = list(input_shape)
    if len(shape) != 6:
        raise HarnessError(f"the model's input has shape {shape}; expected 6 dims"
                           " [batch, views, 3, T, H, W]")
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else 1
    per_call = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else views_per_video
    return batch, per_call


# ------------------------------------------------------------------ scheduling

@dataclass
class Entry:
    """A list entry as the scheduler needs it (harness.data VideoEntry fits)."""

    index: int
    path: str
    label: int


@dataclass
class RunStats:
    retries: int = 0
    actor_deaths: int = 0
    decoder_deaths: int = 0
    devices: list[dict] = field(default_factory=list)


def _failed(entry, reason: str, message: str | None = None, node: str | None = None) -> VideoResult:
    return VideoResult(entry.index, entry.path, entry.label, "failed", reason, message or reason,
                       None, None, node)


def _ok(entry, out: dict) -> VideoResult:
    return VideoResult(entry.index, entry.path, entry.label, "ok", None, None,
                       np.asarray(out["scores"], np.float32), out["device"], out["node"])


def evaluate_local(entries: Iterable, decoder, spec: ModelSpec, plan: DevicePlan,
                   record: Callable[[VideoResult], None], threads: int = 1,
                   actors: list[InferenceActor] | None = None) -> RunStats:
    """The same stages in this process, one video at a time (``--no-ray``)."""
    worker = DecodeWorker(decoder, threads=threads, metrics=False)
    if actors is None:
        actors = [InferenceActor(spec, plan.kind, slot, threads, metrics=False)
                  for slot in range(plan.count)]
    stats = RunStats(devices=[a.describe() for a in actors])
    for n, entry in enumerate(entries):
        status, views = worker.decode(entry.index, entry.path)
        if not status["ok"]:
            record(_failed(entry, status["reason"], status["message"], status["node"]))
            continue
        try:
            out = actors[n % len(actors)].infer(entry.index, views)
        except Exception as exc:
            log.exception("inference on %s failed", entry.path)
            record(_failed(entry, INFERENCE_FAILED, f"{entry.path}: {type(exc).__name__}: {exc}"))
            continue
        record(_ok(entry, out))
    return stats


@dataclass
class _Work:
    entry: Any
    attempts: int = 0


class Scheduler:
    """The driver's streaming scheduler over live Ray actors.

    Pulls entries one at a time from an iterator (no static split), keeps at most
    ``depth`` videos queued at each inference actor and a bounded buffer of decoded
    clips (so the object store's working set is bounded by
    ``(depth * devices + max(devices, decoders)) * clip size`` whatever the list length),
    and retries a video whose worker died up to ``max_retries`` times.
    """

    def __init__(self, decoders: list, actors: list, depth: int = 2, max_retries: int = 2,
                 max_restarts: int = 3, metrics: bool = True) -> None:
        if not actors:
            raise HarnessError("no inference actors")
        if not decoders:
            raise HarnessError("no decode workers")
        self.decoders, self.actors = list(decoders), list(actors)
        self.depth, self.max_retries, self.max_restarts = depth, max_retries, max_restarts
        self.buffer = max(len(self.actors), len(self.decoders))
        self.metrics = _Metrics(metrics)

    def run(self, entries: Iterable, record: Callable[[VideoResult], None]) -> RunStats:
        import ray
        from ray.exceptions import ObjectLostError, OwnerDiedError, RayActorError, RayTaskError

        lost = (RayActorError, ObjectLostError, OwnerDiedError)
        stats = RunStats()
        todo = iter(entries)
        retry: collections.deque[_Work] = collections.deque()
        exhausted = False
        ready: collections.deque[tuple[_Work, Any]] = collections.deque()
        decoding: dict[Any, tuple[_Work, Any, int]] = {}   # status ref -> (work, views ref, decoder)
        inferring: dict[Any, tuple[_Work, int]] = {}       # result ref -> (work, actor)
        dec_load = [0] * len(self.decoders)
        act_load = [0] * len(self.actors)
        dec_alive = [True] * len(self.decoders)
        act_alive = [True] * len(self.actors)
        dec_deaths = [0] * len(self.decoders)
        act_deaths = [0] * len(self.actors)
        recorded: set[int] = set()

        def finish(result: VideoResult) -> None:
            if result.index in recorded:  # never count a video twice
                log.warning("video %d already recorded; ignoring a second result", result.index)
                return
            recorded.add(result.index)
            record(result)

        def died(work: _Work, message: str) -> None:
            if work.attempts < self.max_retries:
                work.attempts += 1
                stats.retries += 1
                retry.append(work)
            else:
                self.metrics.failed("driver")
                finish(_failed(work.entry, WORKER_DIED, f"{work.entry.path}: {message}"
                                                        f" ({work.attempts + 1} attempts)"))

        def next_work() -> _Work | None:
            nonlocal exhausted
            if retry:
                return retry.popleft()
            if exhausted:
                return None
            entry = next(todo, None)
            if entry is None:
                exhausted = True
                return None
            return _Work(entry)

        while True:
            # 1. keep decoders busy while the decoded buffer has room
            while len(decoding) + len(ready) < self.buffer:
                free = [i for i, alive in enumerate(dec_alive) if alive and dec_load[i] == 0]
                if not free:
                    break
                work = next_work()
                if work is None:
                    break
                i = free[0]
                status_ref, views_ref = self.decoders[i].decode.options(num_returns=2).remote(
                    work.entry.index, work.entry.path)
                decoding[status_ref] = (work, views_ref, i)
                dec_load[i] += 1
            # 2. route decoded clips to the least busy live actor (ObjectRef only)
            while ready:
                candidates = [i for i, alive in enumerate(act_alive)
                              if alive and act_load[i] < self.depth]
                if not candidates:
                    break
                i = min(candidates, key=lambda k: act_load[k])
                work, views_ref = ready.popleft()
                ref = self.actors[i].infer.remote(work.entry.index, views_ref)
                inferring[ref] = (work, i)
                act_load[i] += 1
            if not decoding and not inferring:
                if ready or retry or not exhausted:
                    if not any(act_alive):
                        raise HarnessError("every inference actor died and could not be restarted;"
                                           " see the Ray logs (ray logs / the dashboard)")
                    if not any(dec_alive):
                        raise HarnessError("every decode worker died and could not be restarted;"
                                           " see the Ray logs")
                    continue
                break
            done, _ = ray.wait(list(decoding) + list(inferring), num_returns=1)
            for ref in done:
                if ref in decoding:
                    work, views_ref, i = decoding.pop(ref)
                    dec_load[i] -= 1
                    try:
                        status = ray.get(ref)
                    except lost as exc:
                        stats.decoder_deaths += 1
                        dec_deaths[i] += 1
                        if dec_deaths[i] > self.max_restarts:
                            dec_alive[i] = False
                        died(work, f"decode worker died: {type(exc).__name__}")
                        continue
                    except RayTaskError as exc:
                        finish(_failed(work.entry, "decode failed", str(exc)))
                        continue
                    if status["ok"]:
                        ready.append((work, views_ref))
                    else:
                        finish(_failed(work.entry, status["reason"], status["message"], status["node"]))
                else:
                    work, i = inferring.pop(ref)
                    act_load[i] -= 1
                    try:
                        out = ray.get(ref)
                    except lost as exc:
                        stats.actor_deaths += 1
                        act_deaths[i] += 1
                        if act_deaths[i] > self.max_restarts:
                            act_alive[i] = False
                        died(work, f"inference actor died: {type(exc).__name__}")
                        continue
                    except RayTaskError as exc:
                        self.metrics.failed("driver")
                        finish(_failed(work.entry, INFERENCE_FAILED, str(exc).splitlines()[-1]))
                        continue
                    finish(_ok(work.entry, out))
        return stats


# ------------------------------------------------------------------ actors on Ray

class _RayInferenceActor(InferenceActor):
    """Under Ray, a constructor error would only reach the driver as text: keep the
    HarnessError (e.g. missing aclruntime) and raise it from ``describe`` instead."""

    def __init__(self, *args, **kwargs) -> None:
        self._init_error: HarnessError | None = None
        try:
            super().__init__(*args, **kwargs)
        except HarnessError as exc:
            self._init_error = exc

    def describe(self) -> dict:
        if self._init_error is not None:
            raise self._init_error
        return super().describe()


def actor_options(plan: DevicePlan, threads: int, max_restarts: int) -> dict:
    """Ray options for one inference actor: NPU/GPU actors reserve no whole CPU."""
    env = {"env_vars": _thread_env(threads)}
    common = {"max_restarts": max_restarts, "max_task_retries": 0, "runtime_env": env}
    if plan.kind == "npu":
        return {**common, "resources": {"NPU": 1}, "num_cpus": 0}
    if plan.kind == "gpu":
        return {**common, "num_gpus": 1, "num_cpus": 0}
    return {**common, "num_cpus": threads}


def _thread_env(threads: int) -> dict[str, str]:
    value = str(max(1, threads))
    return {"OMP_NUM_THREADS": value, "OPENBLAS_NUM_THREADS": value, "MKL_NUM_THREADS": value}


def _node_slots(plan: DevicePlan) -> list[tuple[str, str]]:
    """(node id, node label) for each actor, spread over the nodes that have the resource."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    capacity = []
    for n in nodes:
        have = int(n.get("Resources", {}).get(plan.ray_resource, 0))
        label = f"{n.get('NodeManagerHostname', 'node')}:{n['NodeID'][:8]}"
        capacity.append([n["NodeID"], label, have])
    slots: list[tuple[str, str]] = []
    while len(slots) < plan.count and any(c[2] > 0 for c in capacity):
        for c in capacity:  # round-robin: actors land on every node
            if c[2] > 0 and len(slots) < plan.count:
                c[2] -= 1
                slots.append((c[0], c[1]))
    return slots


def start_actors(spec: ModelSpec, plan: DevicePlan, decoder, num_decoders: int,
                 threads: int = 1, max_restarts: int = 3, metrics: bool = True) -> tuple[list, list, list[dict]]:
    """Create the inference actors (one per device) and decode workers; wait until loaded.

    Returns ``(actors, decoders, descriptions)``; a session that fails to load raises
    the underlying HarnessError (e.g. DeviceError for a missing aclruntime).
    """
    import ray
    from ray.exceptions import RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    taken = set(ray.util.list_named_actors())

    def unique(name: str) -> str:  # another run in this namespace may still hold the name
        if name not in taken:
            return name
        return f"{name}#{os.getpid()}-{time.monotonic_ns() % 100000}"

    remote_actor = ray.remote(_RayInferenceActor)
    actors = []
    slots = _node_slots(plan)
    for k in range(plan.count):
        options = actor_options(plan, threads, max_restarts)
        if k < len(slots):
            node_id, label = slots[k]
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=True)
            options["name"] = unique(f"infer-{plan.kind}{k}@{label}")
        else:
            options["name"] = unique(f"infer-{plan.kind}{k}")
        actors.append(remote_actor.options(**options).remote(spec, plan.kind, k, threads, metrics))
    remote_decoder = ray.remote(DecodeWorker)
    decoders = [remote_decoder.options(num_cpus=1, max_restarts=max_restarts, max_task_retries=0,
                                       scheduling_strategy="SPREAD", name=unique(f"decode{k}"),
                                       runtime_env={"env_vars": _thread_env(1)})
                .remote(decoder, 1, metrics) for k in range(num_decoders)]
    try:
        descriptions = ray.get([a.describe.remote() for a in actors])
        ray.get([d.ready.remote() for d in decoders])
    except RayTaskError as exc:
        if isinstance(exc.cause, HarnessError):
            raise exc.cause from None
        raise
    return actors, decoders, descriptions
