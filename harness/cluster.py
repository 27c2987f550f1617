"""Ray: starting or joining the cluster, checking it has the devices, placing the actors.

- :func:`connect`: without an address, a new local Ray instance of the harness's own (even
  when another cluster runs on this machine: ``address="local"``), listening on loopback
  only; with ``--address`` or ``RAY_ADDRESS``, that cluster (reaching it, and noticing when
  it is lost: harness.ray_link).
- :func:`wait_for_devices`: fail before any work when the cluster lacks the devices; wait
  (saying for what, up to ``--wait``) while other jobs hold them.
- :func:`start_actors`: one inference actor per device, spread over the nodes that have
  them, and the decode workers, named for the dashboard; waits (bounded) until every session
  loaded. :func:`start_decoder` makes one more decode worker (replacements, growth), and
  :func:`put_model_file` sends the model to nodes that cannot see it.
- :func:`release`: kill what :func:`start_actors` made; shut down what :func:`connect` started.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from harness import ray_link
from harness.backends import ModelSpec
from harness.chips import ACCELERATOR_TYPE
from harness.errors import DeviceError, HarnessError
from harness.limits import MAX_RESTARTS, Timeouts
from harness.stages import DecodeWorker, InferenceActor, SessionUnavailable

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
            decoders: int | None, other_cpus: int = 0) -> tuple[bool, str | None]:
    """Attach to or start Ray; returns ``(started here, dashboard URL)``.

    ``address``: the cluster to join (``--address``, else ``$RAY_ADDRESS``); None starts a
    local instance with ``resources`` (like ``ray start --resources``) declared, and CPUs for
    the CPU actors, the decoders and ``other_cpus`` (the audit's reference actor).
    """
    given = address
    address, source = ray_link.cluster_address(given)
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
        ray_link.check_reachable(given)      # (again: the cluster may have gone since prepare's check)
        try:
            context = ray_link.join(address, source, runtime_env=runtime_env, **quiet)
        except HarnessError:
            raise
        except Exception as exc:
            raise DeviceError(f"could not join the Ray cluster at {address}: {exc}") from exc
        return True, context.dashboard_url
    cores = os.cpu_count() or 1
    cpu_actors = (plan.count if plan.kind == "cpu" else 0) + other_cpus
    decoders = decoders or max(1, cores - cpu_actors)
    # Logical CPUs: the inference actors and the decoders must all run at once, even
    # when that asks for more than the cores (each is single-threaded; the OS shares).
    num_cpus = max(cores, cpu_actors + decoders)
    ray_link.hide_token_auth_notice()
    try:
        # "local": a new instance even when `ray start` left a cluster running on this
        # machine (plain ray.init() would attach to it and refuse num_cpus).
        # (on the main thread: the instance's processes die with the thread that starts them)
        with ray_link.signal_handlers_kept():
            context = ray.init(address="local", num_cpus=num_cpus, resources=resources,
                               include_dashboard=True, dashboard_host="127.0.0.1",
                               runtime_env=runtime_env, **quiet)
    except KeyboardInterrupt:   # Ctrl-C or SIGTERM while it starts: leave no process behind
        ray.shutdown()
        raise
    except Exception as exc:
        raise DeviceError(f"could not start a local Ray instance: {exc}") from exc
    return True, context.dashboard_url


def wait_for_devices(plan: DevicePlan, decoders: int | None, wait_s: float,
                     other_cpus: int = 0) -> tuple[int, int]:
    """Wait (up to ``wait_s``) until the cluster has the devices free, saying what it waits for;
    fail at once when it has too few at all. Returns ``(decoders to start, most decoders)``:
    ``--decoders D`` fixes both; by default one more than the devices to start with, and as
    many as the free CPUs allow as the measured rates ask for more (harness.scheduler).
    ``other_cpus``: CPUs other actors of the run take (the audit's reference actor)."""
    import ray

    total = ray.cluster_resources()
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
    cpu_actors = (plan.count if plan.kind == "cpu" else 0) + other_cpus
    if cpu_actors + (decoders or 1) > cpus_total:
        raise DeviceError(f"{cpu_actors} CPU actor(s) plus {decoders or 1} decode worker(s)"
                          f" need {cpu_actors + (decoders or 1)} CPUs; the cluster has {cpus_total}."
                          " Fix: fewer --decoders or --cpus, or `ray start --num-cpus N` with more")
    started, next_note = time.monotonic(), 0.0
    while True:
        free = ray.available_resources()
        free_devices = int(free.get(plan.ray_resource, 0))
        free_cpus = int(free.get("CPU", 0)) - cpu_actors
        if free_devices >= plan.count and free_cpus >= (decoders or 1):
            if decoders:
                return decoders, decoders
            most = max(1, free_cpus)
            return min(most, plan.count + 1), most
        waited = time.monotonic() - started
        need = (f"{plan.count} {plan.ray_resource} ({free_devices} free) and {decoders or 1} CPU(s)"
                f" for decoding ({max(free_cpus, 0)} free)")
        if waited >= wait_s:
            raise DeviceError(f"the cluster has the devices but not free: waited {waited:.0f} s for"
                              f" {need}; other jobs hold them (`RAY_AUTH_MODE=token ray status`)."
                              " Fix: wait longer (--wait SECONDS), or ask for fewer")
        if waited >= next_note:          # say so now, then every 10 s
            log.warning("waiting for %s (up to --wait %g s)", need, wait_s)
            next_note = waited + 10
        time.sleep(1.0)


class _RayInferenceActor(InferenceActor):
    """Under Ray, a constructor error would only reach the driver as text: keep it, and answer
    every call with :class:`SessionUnavailable` carrying it (the scheduler sets the actor
    aside; at start-up the run stops with the message, e.g. a missing aclruntime)."""

    def __init__(self, *args, **kwargs) -> None:
        self._init_error: str | None = None
        try:
            super().__init__(*args, **kwargs)
        except Exception as exc:  # any failure to open the session (runtime errors too)
            self._init_error = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"

    def _check(self) -> None:
        if self._init_error is not None:
            raise SessionUnavailable(self._init_error)

    def describe(self) -> dict:
        self._check()
        return super().describe()

    def infer(self, index: int, views, with_logits: bool = False) -> dict:
        self._check()
        return super().infer(index, views, with_logits)

    def bench(self, loops: int, warmup: int = 1) -> dict:
        self._check()
        return super().bench(loops, warmup)


MAX_CALLS_PER_ACTOR = 32   # calls an inference actor serves at once (its batcher groups them)


def actor_options(plan: DevicePlan) -> dict:
    """Ray options for one inference actor: NPU/GPU actors reserve no whole CPU (CPU actors
    one); threaded, so the calls the scheduler queues there reach its batcher together
    (harness.stages); Ray restarts it ``MAX_RESTARTS`` times."""
    common = {"max_restarts": MAX_RESTARTS, "max_task_retries": 0, "runtime_env": _ONE_THREAD,
              "max_concurrency": MAX_CALLS_PER_ACTOR}
    if plan.kind == "npu":
        return {**common, "resources": {"NPU": 1}, "num_cpus": 0}
    if plan.kind == "gpu":
        return {**common, "num_gpus": 1, "num_cpus": 0}
    return {**common, "num_cpus": 1}


# every actor takes one CPU's share of threads (BLAS, OpenMP)
_ONE_THREAD = {"env_vars": {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}}


@dataclass(frozen=True)
class Slot:
    """Where one inference actor goes: a node, its label, and its chip type when Ray knows it."""

    node_id: str
    label: str
    soc: str | None = None


def _node_slots(plan: DevicePlan) -> list[Slot]:
    """One slot per actor, spread over the nodes that have the resource."""
    import ray

    from harness.chips import node_socs

    socs = node_socs() if plan.kind == "npu" else {}
    capacity = []
    for n in (n for n in ray.nodes() if n.get("Alive")):
        have = int(n.get("Resources", {}).get(plan.ray_resource, 0))
        label = f"{n.get('NodeManagerHostname', 'node')}:{n['NodeID'][:8]}"
        capacity.append([Slot(n["NodeID"], label, socs.get(n["NodeID"])), have])
    slots: list[Slot] = []
    while len(slots) < plan.count and any(c[1] > 0 for c in capacity):
        for c in capacity:  # round-robin: actors land on every node
            if c[1] > 0 and len(slots) < plan.count:
                c[1] -= 1
                slots.append(c[0])
    return slots


def _unique_name(name: str) -> str:
    """``name``, or a variant when another run in this namespace still holds it."""
    import ray

    if name not in set(ray.util.list_named_actors()):
        return name
    return f"{name}#{os.getpid()}-{time.monotonic_ns() % 100000}"


def start_decoder(decoder, number: int, metrics: bool = True, calls: int = 1):
    """Decode worker ``decode<number>`` (one CPU, spread over the nodes); not waited for.
    ``calls`` > 1: a threaded actor taking that many calls at once (stages.READ_AHEAD)."""
    import ray

    return (ray.remote(DecodeWorker)
            .options(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=0,
                     scheduling_strategy="SPREAD", name=_unique_name(f"decode{number}"),
                     runtime_env=_ONE_THREAD, **({"max_concurrency": calls} if calls > 1 else {}))
            .remote(decoder, metrics))


def start_actors(spec_for: Callable[[str | None, str], ModelSpec], plan: DevicePlan, decoder,
                 num_decoders: int, metrics: bool = True, startup_s: float = Timeouts.startup,
                 decoder_calls: int = 1, watch: "ray_link.InstanceWatch | None" = None
                 ) -> tuple[list, list, list[dict]]:
    """Create the inference actors (one per device) and decode workers; wait until loaded.

    ``spec_for(soc, where)`` is the model the chips of a node load (one .om per chip type:
    harness.chips); an actor whose node's chip type Ray knows is held to nodes of that type.
    Returns ``(actors, decoders, descriptions)``; a session that fails to load raises
    its error (e.g. DeviceError for a missing aclruntime); nothing waits longer than
    ``startup_s``.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayTaskError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote_actor = ray.remote(_RayInferenceActor)
    actors = []
    slots = _node_slots(plan)
    placed = [slots[k] if k < len(slots) else None for k in range(plan.count)]
    # every chip type's model first (built, or refused), before any actor exists
    specs = [spec_for(slot.soc if slot else None, f"node {slot.label}" if slot else "the cluster")
             for slot in placed]
    sent: dict[str, ModelSpec] = {}          # each model's bytes go to the object store once
    for k, (slot, spec) in enumerate(zip(placed, specs)):
        options = actor_options(plan)
        if spec.identity not in sent:
            sent[spec.identity] = put_model_file(spec)
        spec = sent[spec.identity]
        if slot is not None:
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(slot.node_id, soft=True)
            options["name"] = _unique_name(f"infer-{plan.kind}{k}@{slot.label}")
            if slot.soc:   # a restart or a busy node never lands it on chips of another type
                options["resources"] = {**options["resources"], ACCELERATOR_TYPE + slot.soc: 0.001}
        else:
            options["name"] = _unique_name(f"infer-{plan.kind}{k}")
        actors.append(remote_actor.options(**options).remote(spec, plan.kind, k, metrics))
    decoders = [start_decoder(decoder, k, metrics, decoder_calls) for k in range(num_decoders)]
    try:
        descriptions = _get([a.describe.remote() for a in actors], startup_s, watch)
        _get([d.probe.remote() for d in decoders], startup_s, watch)
    except RayTaskError as exc:
        release(actors, decoders, started=False)
        if isinstance(exc.cause, HarnessError):
            raise exc.cause from None
        raise
    except GetTimeoutError:
        release(actors, decoders, started=False)
        raise DeviceError(f"the inference actors and decode workers did not all start within"
                          f" {startup_s:g} s (loading the model, or waiting for resources other"
                          " jobs hold: `RAY_AUTH_MODE=token ray status`)") from None
    return actors, decoders, descriptions


def _get(refs: list, timeout_s: float, watch: "ray_link.InstanceWatch | None"):
    """``ray.get(refs, timeout=timeout_s)``; with a watch, a lost instance ends the wait in
    seconds (a model load may take minutes; Ray would end the driver after 60 s)."""
    import ray
    from ray.exceptions import GetTimeoutError

    if watch is None or not refs:
        return ray.get(refs, timeout=timeout_s)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=max(0.0, min(1.0, left)))
        if len(ready) == len(refs):
            return ray.get(refs)
        watch.check()
        if left <= 0:
            raise GetTimeoutError(f"not all ready within {timeout_s:g} s")


def start_reference(spec: ModelSpec, startup_s: float = Timeouts.startup):
    """The audit's reference actor: ``spec`` in fp32 on one CPU of any node; waits until it
    loaded (its description) and raises its error if it cannot."""
    import ray
    from ray.exceptions import GetTimeoutError, RayTaskError

    handle = (ray.remote(_RayInferenceActor)
              .options(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=0,
                       name=_unique_name("reference-cpu"), runtime_env=_ONE_THREAD)
              .remote(spec, "cpu", 0))
    try:
        return handle, ray.get(handle.describe.remote(), timeout=startup_s)
    except (RayTaskError, GetTimeoutError) as exc:
        release([handle], [], started=False)
        cause = getattr(exc, "cause", None)
        raise DeviceError(f"the audit's reference actor did not start: {cause or exc}") from None


def put_model_file(spec: ModelSpec) -> ModelSpec:
    """On a cluster of several nodes, the model file's bytes go to the object store once, so
    an actor on a node that cannot see the file loads it from there (harness.stages)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) < 2 or not spec.model_file:
        return spec
    data = Path(spec.model_file).read_bytes()
    return dataclasses.replace(spec, file_sha256=hashlib.sha256(data).hexdigest(),
                               file_blob=ray.put(data))


def release(actors, decoders, started: bool, lost: bool = False) -> None:
    """Kill the actors and workers; shut Ray down if :func:`connect` started it. ``lost``:
    the instance is gone (InstanceWatch): nothing to kill, and asking its GCS would hang."""
    import ray

    if not ray.is_initialized():
        return
    for handle in [] if lost else (actors or []) + (decoders or []):
        try:
            ray.kill(handle)
        except Exception:  # already gone
            pass
    if started and lost:   # Ray's shutdown would leave the dashboard and agents of a lost
        ray_link.kill_children()   # instance running for a minute; they are this driver's own
    if started:
        ray.shutdown()
