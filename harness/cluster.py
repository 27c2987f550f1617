"""Ray: starting or joining the cluster, checking it has the devices, placing the actors.

- :func:`connect`: without an address, a new local Ray instance of the harness's own (even
  when another cluster runs on this machine: ``address="local"``), listening on loopback
  only; with ``--address`` or ``RAY_ADDRESS``, that cluster.
- :func:`check_cluster`: fail before any work when the cluster lacks the devices.
- :func:`start_actors`: one inference actor per device, spread over the nodes that have
  them, and the decode workers, named for the dashboard; waits until every session loaded.
- :func:`release`: kill what :func:`start_actors` made; shut down what :func:`connect` started.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.backends import ModelSpec
from harness.errors import DeviceError, HarnessError
from harness.stages import DecodeWorker, InferenceActor

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parents[1]
LOOPBACK_ONLY_VAR = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"   # "0": a one-node instance on 127.0.0.1


@dataclass(frozen=True)
class DevicePlan:
    """What the user asked for: ``count`` devices of ``kind`` ('npu', 'gpu' or 'cpu')."""

    kind: str
    count: int

    @property
    def ray_resource(self) -> str:
        return {"npu": "NPU", "gpu": "GPU", "cpu": "CPU"}[self.kind]


def _worker_env() -> dict[str, str]:
    """Workers get this checkout and the driver's PYTHONPATH in front of their own
    (Ray expands ``${PYTHONPATH}`` in the worker: what the node was started with stays)."""
    paths = [str(REPO_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join([*dict.fromkeys(paths), "${PYTHONPATH}"])}


def connect(address: str | None, resources: dict | None, plan: DevicePlan,
            decoders: int | None) -> tuple[bool, str | None]:
    """Attach to or start Ray; returns ``(started here, dashboard URL)``.

    ``address``: the cluster to join (``--address``, else ``$RAY_ADDRESS``); None starts a
    local instance with ``resources`` (like ``ray start --resources``) declared.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address and "ray" not in sys.modules:
        # Ray's own switch (read when ray is imported) for single-machine clusters: the node's
        # address becomes 127.0.0.1, so nothing of the harness's private instance (GCS, raylet,
        # workers, and the unauthenticated metrics exporters) listens beyond loopback.
        os.environ.setdefault(LOOPBACK_ONLY_VAR, "0")
    import ray

    if ray.is_initialized():  # embedded use (tests, notebooks): keep the caller's instance
        return False, None
    runtime_env = {"env_vars": _worker_env()}
    quiet = dict(logging_level=logging.WARNING, log_to_driver=False)
    if address:
        try:
            context = ray.init(address=address, runtime_env=runtime_env, **quiet)
        except Exception as exc:
            raise DeviceError(f"could not join the Ray cluster at {address}: {exc}") from exc
        return True, context.dashboard_url
    cores = os.cpu_count() or 1
    cpu_actors = plan.count if plan.kind == "cpu" else 0
    decoders = decoders or max(1, cores - cpu_actors)
    # Logical CPUs: the inference actors and the decoders must all run at once, even
    # when that asks for more than the cores (each is single-threaded; the OS shares).
    num_cpus = max(cores, cpu_actors + decoders)
    try:
        # "local": a new instance even when `ray start` left a cluster running on this
        # machine (plain ray.init() would attach to it and refuse num_cpus).
        context = ray.init(address="local", num_cpus=num_cpus, resources=resources,
                           include_dashboard=True, dashboard_host="127.0.0.1",
                           runtime_env=runtime_env, **quiet)
    except Exception as exc:
        raise DeviceError(f"could not start a local Ray instance: {exc}") from exc
    return True, context.dashboard_url


def check_cluster(plan: DevicePlan, decoders: int | None) -> int:
    """Fail before any work when the cluster lacks the devices; returns the decoder count."""
    import ray

    total = ray.cluster_resources()
    free = ray.available_resources()
    have = int(total.get(plan.ray_resource, 0))
    found = ", ".join(f"{k} {v:g}" for k, v in sorted(total.items())
                      if k in ("CPU", "GPU", "NPU") or k.startswith("accelerator_type"))
    fix = {
        "npu": "start Ray with the chips declared, e.g. `ray start --head --resources='{\"NPU\": %d}'`"
               " (or `--resources '{\"NPU\": %d}'` here when Ray starts locally), or ask for fewer"
               " with --npus, or use --cpus N / --gpus N",
        "gpu": "start Ray on GPU nodes (`ray start --num-gpus %d`), ask for fewer with --gpus,"
               " or use --cpus N%.0s",
        "cpu": "start Ray with more CPUs (`ray start --num-cpus %d`) or ask for fewer with"
               " --cpus%.0s",
    }[plan.kind]
    if have < plan.count:
        raise DeviceError(f"asked for {plan.count} {plan.ray_resource}(s) but the Ray cluster has"
                          f" {have} (found: {found or 'nothing'}). Fix: "
                          + fix % ((plan.count,) * 2))
    cpus_total = int(total.get("CPU", 0))
    cpu_actors = plan.count if plan.kind == "cpu" else 0
    if decoders is None:
        decoders = max(1, int(free.get("CPU", 0)) - cpu_actors)
    if cpu_actors + decoders > cpus_total:
        raise DeviceError(f"{cpu_actors} CPU inference actor(s) plus {decoders} decode worker(s)"
                          f" need {cpu_actors + decoders} CPUs; the cluster has {cpus_total}."
                          " Fix: fewer --decoders or --cpus, or `ray start --num-cpus N` with more")
    return decoders



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


def release(actors, decoders, started: bool) -> None:
    """Kill the actors and workers; shut Ray down if :func:`connect` started it."""
    import ray

    if not ray.is_initialized():
        return
    for handle in (actors or []) + (decoders or []):
        try:
            ray.kill(handle)
        except Exception:  # already gone
            pass
    if started:
        ray.shutdown()
