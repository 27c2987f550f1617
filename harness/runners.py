"""Where the stages run: on Ray (:class:`RayRunner`) or in this process (:class:`LocalRunner`).

Both have one interface, so ``harness.run`` has no Ray / no-Ray branches:

    descriptions = runner.start(spec, plan, decoder, decoders)   # sessions loaded
    stats = runner.evaluate(entries, record)                     # record(VideoResult) per video
    reports = runner.bench(loops)                                # on the same live actors
    runner.close()

The local runner is deliberately the simplest possible loop (one video at a time, actors in
turn): it is the oracle the distributed runs are compared against in the tests.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from harness.backends import ModelSpec
from harness.cluster import DevicePlan
from harness.scheduler import RunStats
from harness.stages import INFERENCE_FAILED, DecodeWorker, InferenceActor, VideoResult

log = logging.getLogger(__name__)


class LocalRunner:
    """Every stage in this process, one video at a time (``--no-ray``)."""

    def __init__(self) -> None:
        self.actors: list[InferenceActor] = []
        self.worker: DecodeWorker | None = None

    def start(self, spec: ModelSpec, plan: DevicePlan, decoder, decoders: int | None = None) -> list[dict]:
        self.actors = [InferenceActor(spec, plan.kind, slot, 1, metrics=False)
                       for slot in range(plan.count)]
        self.worker = DecodeWorker(decoder, metrics=False) if decoder is not None else None
        return [a.describe() for a in self.actors]

    def evaluate(self, entries: Iterable, record: Callable[[VideoResult], None]) -> RunStats:
        for n, entry in enumerate(entries):
            status, views = self.worker.decode(entry.index, entry.path)
            if not status["ok"]:
                record(VideoResult.failed(entry, status["reason"], status["message"], status["node"]))
                continue
            try:
                out = self.actors[n % len(self.actors)].infer(entry.index, views)
            except Exception as exc:
                log.exception("inference on %s failed", entry.path)
                record(VideoResult.failed(entry, INFERENCE_FAILED,
                                          f"{entry.path}: {type(exc).__name__}: {exc}"))
                continue
            record(VideoResult.scored(entry, out))
        return RunStats()

    def bench(self, loops: int) -> list[dict]:
        return [a.bench(loops) for a in self.actors]

    def close(self) -> None:
        for actor in self.actors:
            actor.close()


class RayRunner:
    """Decode workers and one inference actor per device on a Ray cluster, fed by the
    streaming :class:`harness.scheduler.Scheduler`."""

    def __init__(self, address: str | None = None, resources: dict | None = None,
                 max_retries: int = 2) -> None:
        self.address, self.resources, self.max_retries = address, resources, max_retries
        self.actors: list = []
        self.decoders: list = []
        self.started = False
        self.dashboard_url: str | None = None

    def start(self, spec: ModelSpec, plan: DevicePlan, decoder, decoders: int | None = None) -> list[dict]:
        from harness import cluster

        self.started, self.dashboard_url = cluster.connect(self.address, self.resources, plan, decoders)
        count = cluster.check_cluster(plan, 0 if decoder is None else decoders)
        self.actors, self.decoders, descriptions = cluster.start_actors(spec, plan, decoder, count)
        for d in descriptions:
            log.info("inference actor %s on %s: input %s %s", d["device"], d["node"],
                     d["input_shape"], d["input_dtype"])
        return descriptions

    def evaluate(self, entries: Iterable, record: Callable[[VideoResult], None]) -> RunStats:
        from harness.scheduler import Scheduler

        return Scheduler(self.decoders, self.actors, max_retries=self.max_retries).run(entries, record)

    def bench(self, loops: int) -> list[dict]:
        import ray

        return ray.get([a.bench.remote(loops) for a in self.actors])

    def close(self) -> None:
        from harness import cluster

        cluster.release(self.actors, self.decoders, self.started)
        self.actors, self.decoders = [], []
