"""TEST DOUBLE for ais_bench's ``aclruntime`` (the Python binding of Ascend's ACL runtime).

There is no NPU here: this module implements the documented surface the harness uses
(/work/shared/reference/ascend.md) and runs the model with onnxruntime on the CPU. It
loads the stand-in .om the ATC double (tests/doubles/atc) writes: ``FAKE-OM v1\\n``,
a JSON header line with ``onnx_bytes``, then the ONNX model's bytes.

Tests put ``tests/doubles`` on the workers' PYTHONPATH. Each session records the
device id it was opened with and ``ASCEND_RT_VISIBLE_DEVICES`` of its process
(``InferenceSession.opened`` and, when ``FAKE_ACL_RECORD_DIR`` is set, one JSON file per
session there), so tests can check each actor used its own chip.

Fault injection for the chaos tests: with ``FAKE_ACL_HANG_ONCE=<file>``, the first ``run`` in
any process that finds no ``<file>`` creates it and never returns (a chip call that hangs, once
per cluster); ``FAKE_ACL_DELAY_S=<seconds>`` makes every ``run`` take that long (a slower chip);
``FAKE_ACL_LOAD_S=<seconds>`` makes every session take that long to open (a large .om loading
onto a chip: seconds to a minute), also after Ray restarts its actor.

Perturbations for the precision audit's tests: ``FAKE_ACL_PERTURB`` names a JSON file, read when
a session opens (absent or ``{}``: none), with ``"fp16": true`` (an fp16 chip: the weights,
float inputs and outputs go through float16) and/or ``"bias": [class, amount]`` (that class's
logit raised by amount: a model that is not the one the user thinks).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from types import SimpleNamespace

import numpy as np

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


class Tensor:
    """Host or device tensor; ``numpy.array(t)`` works after ``to_host()``."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = np.ascontiguousarray(array)
        self.device_id: int | None = None

    def to_device(self, device_id: int) -> None:
        self.device_id = int(device_id)

    def to_host(self) -> None:
        self.device_id = None

    def __array__(self, dtype=None, copy=None):
        if self.device_id is not None:
            raise RuntimeError("tensor is on the device: call to_host() first (fake aclruntime)")
        return self._array if dtype is None else self._array.astype(dtype)

    @property
    def shape(self):
        return list(self._array.shape)


def _read_fake_om(path: str) -> bytes:
    with open(path, "rb") as fh:
        if fh.readline() != MAGIC:
            raise RuntimeError(f"{path} is not a FAKE-OM v1 file (written by tests/doubles/atc)")
        header = json.loads(fh.readline())
        data = fh.read()
    if len(data) != header["onnx_bytes"]:
        raise RuntimeError(f"{path}: truncated fake .om")
    return data


def _perturbation() -> dict:
    path = os.environ.get("FAKE_ACL_PERTURB")
    if not path or not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


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
        ids = [v for v in (visible or "").split(",") if v]
        if ids and not 0 <= int(device_id) < len(ids):
            raise RuntimeError(f"device {device_id} is not visible (ASCEND_RT_VISIBLE_DEVICES={visible})")
        time.sleep(float(os.environ.get("FAKE_ACL_LOAD_S", "0")))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        self._perturb = _perturbation()
        onnx_bytes = _read_fake_om(model_path)
        if self._perturb.get("fp16"):
            onnx_bytes = _weights_through_fp16(onnx_bytes)
        self._session = ort.InferenceSession(onnx_bytes, sess_options=so,
                                             providers=["CPUExecutionProvider"])
        self.device_id = int(device_id)
        self._times: list[tuple[float, float]] = []
        record = {"model_path": str(model_path), "device_id": self.device_id,
                  "ASCEND_RT_VISIBLE_DEVICES": visible, "pid": os.getpid()}
        InferenceSession.opened.append(record)
        out_dir = os.environ.get("FAKE_ACL_RECORD_DIR")
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, f"session-{uuid.uuid4().hex}.json"), "w") as fh:
                json.dump(record, fh)

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
        feeds = {}
        for desc, tensor in zip(self._session.get_inputs(), inputs):
            if tensor.device_id != self.device_id:
                raise RuntimeError(f"input tensor is on device {tensor.device_id}, the session on"
                                   f" {self.device_id}: call Tensor.to_device(device_id) first")
            feeds[desc.name] = tensor._array
            if self._perturb.get("fp16") and tensor._array.dtype == np.float32:
                feeds[desc.name] = tensor._array.astype(np.float16).astype(np.float32)
        _hang_once()
        time.sleep(float(os.environ.get("FAKE_ACL_DELAY_S", "0")))
        start = time.perf_counter() * 1000.0
        outputs = self._session.run(list(output_names), feeds)
        self._times.append((start, time.perf_counter() * 1000.0))
        result = []
        for array in outputs:
            if self._perturb.get("fp16"):
                array = array.astype(np.float16).astype(np.float32)
            if self._perturb.get("bias"):
                label, amount = self._perturb["bias"]
                array = array.copy()
                array[..., int(label)] += float(amount)
            t = Tensor(array)
            t.to_device(self.device_id)
            result.append(t)
        return result

    def summary(self):
        return SimpleNamespace(exec_time_list=list(self._times))

    def set_dynamic_batchsize(self, n: int) -> None:
        raise RuntimeError("the fake aclruntime supports static models only")

    def free_resource(self) -> None:
        self._session = None
