"""Where the stages run: on Ray (:class:`RayRunner`) or in this process (:class:`LocalRunner`).

Both implement :class:`Runner`, so ``harness.run`` has no Ray / no-Ray branches:

    descriptions = runner.start(Deployment(spec, plan, decoder, ...))   # sessions loaded
    stats = runner.evaluate(entries, record, tick, audit)        # record(VideoResult) per video
    runner.stop()                                                # (Ctrl-C) start nothing new
    reports = runner.bench(loops)                                # on the same live actors
    runner.close()

The local runner is deliberately the simplest possible loop (one video at a time, actors in
turn, no timeouts): it is the oracle the distributed runs are compared against in the tests.

The precision audit: ``reference`` (a ModelSpec) is loaded on a CPU next to the devices, and
``audit = (indices, on_reference, cached)`` has those videos scored by it too, from the same
decoded views; ``on_reference(index, out, error)`` gets its answers (harness.audit.Auditor).
The device returns per-view logits for all of ``indices``; those in ``cached`` (answers an
earlier run kept, harness.reference_cache) are not sent to the reference, which the runner
need not have started when every one is.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from harness.backends import ModelSpec
from harness.chips import ChipModels
from harness.cluster import DevicePlan
from harness.config import RunOptions
from harness.errors import HarnessError
from harness.limits import Timeouts
from harness.reasons import Reason
from harness.scheduler import RunStats
from harness.stages import DecodeWorker, InferenceActor, VideoResult

log = logging.getLogger(__name__)

BUFFER_SHARE = 0.10        # of the object store: the most decoded clips waiting for devices


@dataclass(frozen=True)
class Deployment:
    """What a runner starts: the model on the devices, the decoders, the audit's reference."""

    spec: ModelSpec
    plan: DevicePlan
    decoder: Any = None                  # a ViewDecoder; None: no decoding (--bench-only)
    decoders: int | None = None          # decode workers (Ray; default: the free CPUs)
    reference: ModelSpec | None = None   # the audit's fp32 reference, on a CPU
    decoder_calls: int = 1               # calls a decode worker holds (stages.READ_AHEAD: objects)
    models: ChipModels | None = None     # om: the .om of each chip type (harness.chips)

    def spec_for(self, soc: str | None, where: str) -> ModelSpec:
        """The spec chips of type ``soc`` on ``where`` load (``spec`` unless the run has a
        model per chip type)."""
        return self.models.spec_for(soc, where) if self.models is not None else self.spec


class Runner(Protocol):
    """Where the stages run (this module's doc)."""

    reference_error: str | None          # why the audit's reference did not start, if it did not
    stats: RunStats                      # the current (or last) evaluation's, also when it raised

    def start(self, deployment: Deployment) -> list[dict]: ...

    def evaluate(self, entries: Iterable, record: Callable[[VideoResult], None],
                 tick: Callable[[], None] | None = None, audit=None) -> RunStats: ...

    def stop(self) -> None: ...

    def bench(self, loops: int) -> list[dict]: ...

    def close(self) -> None: ...


def _audit_parts(audit) -> tuple[frozenset, Callable | None, frozenset]:
    """``(indices, on_reference[, cached])`` as three, none when there is no audit."""
    if not audit:
        return frozenset(), None, frozenset()
    indices, on_reference, *rest = audit
    return frozenset(indices), on_reference, frozenset(rest[0] if rest else ())


class LocalRunner:
    """Every stage in this process, one video at a time (``--no-ray``)."""

    def __init__(self) -> None:
        self.actors: list[InferenceActor] = []
        self.worker: DecodeWorker | None = None
        self.reference: InferenceActor | None = None
        self.reference_error: str | None = None     # why the audit's reference did not load
        self.stats = RunStats()
        self.stopping = False

    def start(self, deployment: Deployment) -> list[dict]:
        d = deployment
        self.actors = [InferenceActor(d.spec, d.plan.kind, slot, metrics=False)
                       for slot in range(d.plan.count)]
        self.worker = DecodeWorker(d.decoder, metrics=False) if d.decoder is not None else None
        if d.reference is not None:   # a side measurement: the run goes on without it
            try:
                self.reference = InferenceActor(d.reference, "cpu", 0, metrics=False)
            except Exception as exc:
                self.reference_error = f"the audit's reference did not load: {exc}"
                log.warning("audit skipped: %s", self.reference_error)
        return [a.describe() for a in self.actors]

    def evaluate(self, entries: Iterable, record: Callable[[VideoResult], None],
                 tick: Callable[[], None] | None = None, audit=None) -> RunStats:
        indices, on_reference, cached = _audit_parts(audit)
        stats = self.stats = RunStats()
        for n, entry in enumerate(entries):
            if self.stopping:
                break
            status, views = self.worker.decode(entry.index, entry.path)
            stats.open_gop += int(status.open_gop)
            if not status.ok:
                record(VideoResult.failed(entry, status.reason, status.message, status.node))
                continue
            audited = entry.index in indices
            try:
                out = self.actors[n % len(self.actors)].infer(entry.index, views, audited)
            except Exception as exc:
                log.exception("inference on %s failed", entry.path)
                record(VideoResult.failed(entry, Reason.INFERENCE_FAILED,
                                          f"{entry.path}: {type(exc).__name__}: {exc}"))
                continue
            if audited and entry.index not in cached:
                try:
                    on_reference(entry.index, self.reference.infer(entry.index, views, True), None)
                except Exception as exc:
                    on_reference(entry.index, None, f"{type(exc).__name__}: {exc}")
            record(VideoResult.scored(entry, out))
            if tick is not None:
                tick()
        return stats

    def stop(self) -> None:
        self.stopping = True

    def bench(self, loops: int) -> list[dict]:
        return [a.bench(loops) for a in self.actors]

    def close(self) -> None:
        for actor in self.actors + ([self.reference] if self.reference else []):
            actor.close()


class RayRunner:
    """Decode workers and one inference actor per device on a Ray cluster, fed by the
    streaming :class:`harness.scheduler.Scheduler` (timeouts, retries, growing decoders)."""

    def __init__(self, address: str | None = None, resources: dict | None = None,
                 max_retries: int = 2, options: RunOptions = RunOptions()) -> None:
        self.address, self.resources, self.max_retries = address, resources, max_retries
        self.options = options
        self.actors: list = []
        self.decoders: list = []
        self.started = False
        self.dashboard_url: str | None = None
        self.instance = None     # ray_link.RayInstance, when this runner started or joined Ray
        self.watch = None        # ray_link.InstanceWatch of that instance
        self.scheduler = None
        self._decoder = None
        self._decoder_calls = 1
        self._max_decoders = 0
        self._clip_bytes: int | None = None
        self._descriptions: list[dict] = []
        self.reference = None
        self.reference_error: str | None = None     # why the audit's reference did not start

    @property
    def stats(self) -> RunStats:
        return self.scheduler.stats if self.scheduler is not None else RunStats()

    def start(self, deployment: Deployment) -> list[dict]:
        try:
            return self._start(deployment)
        except Exception:
            if self.watch is not None:   # a lost instance is named as such, not by what it broke
                self.watch.confirm()
            raise

    def _start(self, deployment: Deployment) -> list[dict]:
        from harness import cluster, ray_link

        plan, decoder, decoders = deployment.plan, deployment.decoder, deployment.decoders
        reference, decoder_calls = deployment.reference, deployment.decoder_calls

        others = int(reference is not None)      # the audit's reference actor takes a CPU
        self.started, self.dashboard_url = cluster.connect(self.address, self.resources, plan,
                                                           decoders, others)
        if self.started:
            self.instance = ray_link.ray_instance(self.address, self.dashboard_url)
            self.watch = ray_link.InstanceWatch(self.instance.local)
        initial, self._max_decoders = cluster.wait_for_devices(plan, decoders, self.options.wait,
                                                               others)
        if decoder is None:
            initial = self._max_decoders = 0
        self.actors, self.decoders, descriptions = cluster.start_actors(
            deployment.spec_for, plan, decoder, initial, startup_s=self.options.startup_timeout,
            decoder_calls=decoder_calls, watch=self.watch)
        self._decoder_calls = decoder_calls
        if reference is not None:   # a side measurement: the run goes on without it
            try:
                self.reference, described = cluster.start_reference(
                    cluster.put_model_file(reference), startup_s=self.options.startup_timeout)
                log.info("audit: the fp32 reference runs on %s (%s)", described["node"],
                         described["session_device"])
            except HarnessError as exc:
                self.reference_error = str(exc)
                log.warning("audit skipped: %s", exc)
        self._decoder = decoder
        self._descriptions = descriptions
        if decoder is not None and decoder.view_shape is not None:
            self._clip_bytes = decoder.views * math.prod(decoder.view_shape)
        for d in descriptions:
            log.info("inference actor %s on %s: input %s %s", d["device"], d["node"],
                     d["input_shape"], d["input_dtype"])
        return descriptions

    def evaluate(self, entries: Iterable, record: Callable[[VideoResult], None],
                 tick: Callable[[], None] | None = None, audit=None) -> RunStats:
        import ray

        from harness import cluster
        from harness.scheduler import Policy, RayCalls, Scheduler

        o = self.options
        store = ray.cluster_resources().get("object_store_memory")
        numbers = itertools.count(len(self.decoders))    # names of replacements and additions
        policy = Policy(
            max_retries=self.max_retries, max_decoders=self._max_decoders,
            clip_bytes=self._clip_bytes, buffer_bytes=int(BUFFER_SHARE * store) if store else None,
            timeouts=Timeouts(decode=o.decode_timeout, infer=o.infer_timeout,
                              startup=o.startup_timeout, reference=o.audit_timeout),
            decoder_depth=self._decoder_calls)
        self.scheduler = Scheduler(
            self.decoders, self.actors, policy,
            calls=RayCalls(new_decoder=lambda: cluster.start_decoder(self._decoder, next(numbers),
                                                                     calls=self._decoder_calls)),
            videos_per_call=[min(d.get("videos_per_call", 1), cluster.MAX_CALLS_PER_ACTOR // 2)
                             for d in self._descriptions],
            audit=self._audit(audit))
        def watched() -> None:
            if self.watch is not None:
                self.watch.check()
            if tick is not None:
                tick()

        try:
            return self.scheduler.run(entries, record, watched)
        except Exception:
            if self.watch is not None:   # nobody left because the instance itself is gone?
                self.watch.confirm()
            raise
        finally:
            self.decoders = list(self.scheduler.decoders.handles)   # replacements, growth

    def _audit(self, audit):
        """The scheduler's Audit: with the reference actor, or without one when every audited
        video's reference answer is cached."""
        from harness.scheduler import Audit

        indices, on_reference, cached = _audit_parts(audit)
        if not indices or (self.reference is None and not indices <= cached):
            return None
        return Audit(self.reference, indices, on_reference, cached)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def bench(self, loops: int) -> list[dict]:
        import ray

        per_call = self.options.infer_timeout or Timeouts().infer_first
        return ray.get([a.bench.remote(loops) for a in self.actors],
                       timeout=self.options.startup_timeout + (loops + 1) * per_call)

    def close(self) -> None:
        from harness import cluster

        lost = self.watch is not None and self.watch.lost is not None
        cluster.release(self.actors + ([self.reference] if self.reference else []), self.decoders,
                        self.started, lost=lost)
        self.actors, self.decoders, self.reference = [], [], None
