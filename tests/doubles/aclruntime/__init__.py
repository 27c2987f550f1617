"""TEST DOUBLE for ais_bench's ``aclruntime`` (the Python binding of Ascend's ACL runtime).

There is no NPU here: this module implements the documented surface the harness uses
(/work/shared/reference/ascend.md) and runs the model with onnxruntime on the CPU. It
loads the stand-in .om the ATC double (tests/doubles/atc) writes: ``FAKE-OM v1\\n``,
a JSON header line with ``soc_version`` and ``onnx_bytes``, then the ONNX model's bytes.

As strict as the real binding where a caller could trip (read from ais_bench's
PyTensor.cpp / PyInferenceSession.cpp):

- **Chips and chip types.** ``InferenceSession(path, device_id, options)``: ``device_id`` is
  an ordinal into the chips the process sees (the pyACL double's ``acl.visible_chips()``:
  honouring ``ASCEND_RT_VISIBLE_DEVICES``, or not with ``FAKE_ACL_IGNORES_VISIBLE=1``). The
  .om loads only on the chip type it names: ``FAKE_ACL_SOC`` (default Ascend310P3) is this
  process's chip; another soc fails with a raw load error, as the runtime does.
- **Contexts belong to threads.** Opening a session makes its device's context current on
  the opening thread. ``FAKE_ACL_BINDING=2023`` (default): ``Tensor.to_device`` makes the
  device's context current on the calling thread, and ``run`` / ``Tensor.to_host`` on a
  thread without it fail with ACL's error 107002. ``FAKE_ACL_BINDING=2024``: ``run`` sets the
  session's context on its thread first. Each session notes the threads of every call in
  ``session.threads`` (op name -> set of thread idents).
- **The GIL is never released**: the simulated execute ends with a ``ctypes.PyDLL`` sleep of
  ``FAKE_ACL_EXEC_MS`` ms (default 2), during which no other Python thread of the process runs.
- **Tensors**: ``Tensor(ndarray)`` keeps the array (no copy) and refuses a non-contiguous one
  (the real binding ignores strides and would read it wrong); ``numpy.array(t)`` of a tensor
  still on the device fails ("tensor is in npu. can't convert to numpy array"); ``run``
  checks each input's byte size against the model's.
- **Timing** is ``session.sumary()`` (sic, as in every release): ``.exec_time_list`` holds
  ``(start_ms, end_ms)`` of each run's execute (onnxruntime and the held sleep). There is no
  ``summary()``. ``free_resource()`` exists only with ``FAKE_ACL_BINDING=2024``.

Tests put ``tests/doubles`` on the workers' PYTHONPATH. Each session records the
device id it was opened with, the physical chip, ``ASCEND_RT_VISIBLE_DEVICES`` of its process
and its pid (``InferenceSession.opened`` and, when ``FAKE_ACL_RECORD_DIR`` is set, one JSON
file per session there, rewritten after each run with ``runs`` and ``threads``), so tests can
check each actor used its own chip, from one thread.

Fault injection for the chaos tests: with ``FAKE_ACL_HANG_ONCE=<file>``, the first ``run`` in
any process that finds no ``<file>`` creates it and never returns (a chip call that hangs, once
per cluster); ``FAKE_ACL_DELAY_S=<seconds>`` makes every ``run`` take that long more (a slower
chip; not counted as execute time); ``FAKE_ACL_LOAD_S=<seconds>`` makes every session take that
long to open (a large .om loading onto a chip: seconds to a minute), also after Ray restarts
its actor.

Perturbations for the precision audit's tests: ``FAKE_ACL_PERTURB`` names a JSON file, read when
a session opens (absent or ``{}``: none), with ``"fp16": true`` (an fp16 chip: the weights,
float inputs and outputs go through float16) and/or ``"bias": [class, amount]`` (that class's
logit raised by amount: a model that is not the one the user thinks).

Behaviour per ATC precision mode, for the build-option sweep's tests (``harness.sweep``): a TEST
KNOB, not what an NPU does. ``FAKE_ACL_MODES`` names a JSON file, read when a session opens,
mapping the precision mode the .om's header records (the ATC double writes ``precision_mode``,
or ``precision_mode_v2``; ``"default"`` for an .om built with neither) to the same keys as
``FAKE_ACL_PERTURB`` plus ``"exec_ms"`` (that mode's held execute time, instead of
``FAKE_ACL_EXEC_MS``), e.g. ``{"force_fp16": {"fp16": true, "exec_ms": 10},
"allow_mix_precision": {"bias": [0, 8.0], "exec_ms": 2}, "must_keep_origin_dtype":
{"exec_ms": 40}}``: one mode rounds through float16, one is faster but biased toward class 0,
one is exact but slower. A mode the file does not name behaves as without it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
import time
import uuid
from types import SimpleNamespace

import numpy as np

import acl   # the pyACL double next to this one: which chips this process sees

FAKE = True
MAGIC = b"FAKE-OM v1\n"
_NUMPY_TO_DTYPE = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16",
                   np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32",
                   np.dtype(np.int64): "int64"}


class dtype:  # noqa: N801 - mirrors aclruntime.dtype
    """Stand-in for the binding's dtype enum: ``str()`` is ``dtype.float32``, ``.name`` float32."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"dtype.{self.name}"

    __str__ = __repr__


def session_options():
    return SimpleNamespace(log_level=1, loop=1, acl_json_path="")


class TensorDesc:
    def __init__(self, name: str, shape: list[int], datatype: dtype, size: int) -> None:
        self.name, self.shape, self.datatype, self.size = name, shape, datatype, size


_current = threading.local()          # the ACL context current on each thread
_sessions: dict = {}                   # device ordinal -> the session opened on it (its context)
CONTEXT_NULL = 107002                  # ACL_ERROR_RT_CONTEXT_NULL


def _binding() -> str:
    return os.environ.get("FAKE_ACL_BINDING", "2023")


def _need_context(device_id: int, op: str, caller=None) -> None:
    session = _sessions.get(device_id)
    if session is None or getattr(_current, "context", None) is not session.context:
        raise RuntimeError(f"{op} failed, error code {CONTEXT_NULL} (ACL_ERROR_RT_CONTEXT_NULL):"
                           " the calling thread has no context (fake aclruntime)")
    (caller or session)._note(op)


class Tensor:
    """Host or device tensor; ``numpy.array(t)`` works after ``to_host()``."""

    def __init__(self, array: np.ndarray) -> None:
        array = np.asarray(array)
        if not array.flags["C_CONTIGUOUS"]:
            raise ValueError("Tensor(ndarray) got a non-contiguous array: the real binding takes"
                             " the buffer and ignores strides, so it would read it wrong; pass"
                             " np.ascontiguousarray(x) (fake aclruntime)")
        self._array = array
        self.device_id: int | None = None

    def to_device(self, device_id: int) -> None:
        device_id = int(device_id)
        if _binding() == "2023":   # this binding sets the device's context here
            session = _sessions.get(device_id)
            if session is None:
                raise RuntimeError(f"to_device({device_id}) failed, error code {CONTEXT_NULL}:"
                                   " no context on that device (fake aclruntime)")
            _current.context = session.context
            session._note("to_device")
        self.device_id = device_id

    def to_host(self) -> None:
        if self.device_id is not None:
            _need_context(self.device_id, "to_host")
        self.device_id = None

    def __array__(self, dtype=None, copy=None):
        if self.device_id is not None:
            raise RuntimeError("tensor is in npu. can't convert to numpy array")
        return self._array if dtype is None else self._array.astype(dtype)

    @property
    def shape(self):
        return list(self._array.shape)


_LIBC = ctypes.PyDLL(ctypes.util.find_library("c"))   # PyDLL: calls keep the GIL


def _hold_the_gil(ms: float) -> None:
    """Sleep without releasing the GIL, as a C call through ``ctypes.PyDLL`` does (the real
    binding never releases it while the chip executes)."""
    if ms > 0:
        _LIBC.usleep(int(ms * 1000))


def _read_fake_om(path: str) -> tuple[dict, bytes]:
    with open(path, "rb") as fh:
        if fh.readline() != MAGIC:
            raise RuntimeError(f"{path} is not a FAKE-OM v1 file (written by tests/doubles/atc)")
        header = json.loads(fh.readline())
        data = fh.read()
    if len(data) != header["onnx_bytes"]:
        raise RuntimeError(f"{path}: truncated fake .om")
    return header, data


def _json_file(variable: str) -> dict:
    path = os.environ.get(variable)
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def _perturbation(header: dict) -> dict:
    """FAKE_ACL_PERTURB, with FAKE_ACL_MODES's entry for the .om's precision mode over it."""
    mode = header.get("precision_mode") or header.get("precision_mode_v2") or "default"
    return {**_json_file("FAKE_ACL_PERTURB"), **_json_file("FAKE_ACL_MODES").get(mode, {})}


def _weights_through_fp16(onnx_bytes: bytes) -> bytes:
    """The model with every float32 weight rounded to float16 (and stored back as float32)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_from_string(onnx_bytes)
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            rounded = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    return model.SerializeToString()


def _hang_once() -> None:
    marker = os.environ.get("FAKE_ACL_HANG_ONCE")
    if not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)   # the first caller wins
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    while True:  # a chip call that never returns (until the process is killed)
        time.sleep(3600)


class InferenceSession:
    opened: list[dict] = []   # every session opened in this process

    def __init__(self, model_path: str, device_id: int, options) -> None:
        import onnxruntime as ort

        visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES")
        chips = acl.visible_chips()
        if not 0 <= int(device_id) < len(chips):
            raise RuntimeError(f"aclrtSetDevice({device_id}) failed, ret 107001: the process sees"
                               f" {len(chips)} chip(s) (ASCEND_RT_VISIBLE_DEVICES={visible})"
                               " (fake aclruntime)")
        self.device_id = int(device_id)
        self.physical_chip = chips[self.device_id]
        time.sleep(float(os.environ.get("FAKE_ACL_LOAD_S", "0")))
        header, onnx_bytes = _read_fake_om(model_path)
        chip_type = acl.get_soc_name()
        if header.get("soc_version") != chip_type:
            raise RuntimeError(f"[ERROR] aclmdlLoadFromFile failed, ret 507018: {model_path} (the"
                               f" model is for {header.get('soc_version')}, the chip is"
                               f" {chip_type}) (fake aclruntime)")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self._perturb = _perturbation(header)
        if self._perturb.get("fp16"):
            onnx_bytes = _weights_through_fp16(onnx_bytes)
        self._session = ort.InferenceSession(onnx_bytes, sess_options=so,
                                             providers=["CPUExecutionProvider"])
        self.context = object()              # this session's ACL context, current on this thread
        _sessions[self.device_id] = self
        _current.context = self.context
        self.threads: dict[str, set[int]] = {}
        self._note("init")
        self._times: list[tuple[float, float]] = []
        self._record = {"model_path": str(model_path), "device_id": self.device_id,
                        "physical_chip": self.physical_chip, "ASCEND_RT_VISIBLE_DEVICES": visible,
                        "pid": os.getpid(), "runs": 0, "threads": []}
        InferenceSession.opened.append(self._record)
        out_dir = os.environ.get("FAKE_ACL_RECORD_DIR")
        self._record_path = None
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            self._record_path = os.path.join(out_dir, f"session-{uuid.uuid4().hex}.json")
            self._write_record()

    def _note(self, op: str) -> None:
        self.threads.setdefault(op, set()).add(threading.get_ident())

    def _write_record(self) -> None:
        self._record["threads"] = sorted(set().union(*self.threads.values()))
        if self._record_path:
            tmp = self._record_path + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(self._record, fh)
            os.replace(tmp, self._record_path)

    @staticmethod
    def _desc(arg) -> TensorDesc:
        np_type = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8,
                   "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                   "tensor(int32)": np.int32}[arg.type]
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        size = int(np.prod([max(d, 1) for d in shape])) * np.dtype(np_type).itemsize
        return TensorDesc(arg.name, shape, dtype(_NUMPY_TO_DTYPE[np.dtype(np_type)]), size)

    def get_inputs(self) -> list[TensorDesc]:
        return [self._desc(a) for a in self._session.get_inputs()]

    def get_outputs(self) -> list[TensorDesc]:
        return [self._desc(a) for a in self._session.get_outputs()]

    def run(self, output_names: list[str], inputs: list[Tensor]) -> list[Tensor]:
        if _binding() == "2024":   # this binding sets the session's context at the start of run
            _current.context = self.context
        _need_context(self.device_id, "run", self)
        feeds = {}
        for k, (arg, tensor) in enumerate(zip(self._session.get_inputs(), inputs)):
            if tensor.device_id != self.device_id:
                raise RuntimeError(f"input tensor is on device {tensor.device_id}, the session on"
                                   f" {self.device_id}: call Tensor.to_device(device_id) first")
            realsize = self._desc(arg).size
            if tensor._array.nbytes != realsize:
                raise RuntimeError(f"input {k} size {tensor._array.nbytes} != model realsize"
                                   f" {realsize} (fake aclruntime)")
            feeds[arg.name] = tensor._array
            if self._perturb.get("fp16") and tensor._array.dtype == np.float32:
                feeds[arg.name] = tensor._array.astype(np.float16).astype(np.float32)
        _hang_once()
        time.sleep(float(os.environ.get("FAKE_ACL_DELAY_S", "0")))
        start = time.perf_counter() * 1000.0
        outputs = self._session.run(list(output_names), feeds)
        _hold_the_gil(float(self._perturb.get("exec_ms", os.environ.get("FAKE_ACL_EXEC_MS", "2"))))
        self._times.append((start, time.perf_counter() * 1000.0))
        result = []
        for array in outputs:
            if self._perturb.get("fp16"):
                array = array.astype(np.float16).astype(np.float32)
            if self._perturb.get("bias"):
                label, amount = self._perturb["bias"]
                array = array.copy()
                array[..., int(label)] += float(amount)
            t = Tensor(np.ascontiguousarray(array))
            t.device_id = self.device_id
            result.append(t)
        self._record["runs"] += 1
        self._write_record()
        return result

    def sumary(self):  # sic: the binding's spelling
        return SimpleNamespace(exec_time_list=list(self._times))

    def set_dynamic_batchsize(self, n: int) -> None:
        raise RuntimeError("the fake aclruntime supports static models only")

    def __getattr__(self, name: str):
        if name in ("free_resource", "finalize") and _binding() == "2024":
            return self._free
        raise AttributeError(f"'InferenceSession' object has no attribute {name!r}"
                             " (fake aclruntime, binding " + _binding() + ")")

    def _free(self) -> None:
        self._session = None
        if _sessions.get(self.device_id) is self:
            del _sessions[self.device_id]
