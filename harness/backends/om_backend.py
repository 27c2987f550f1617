"""Ascend .om sessions through ``aclruntime`` (the Python binding shipped with ais_bench).

Inside a Ray actor that holds one chip, Ray sets ``ASCEND_RT_VISIBLE_DEVICES`` to the
chip's physical id, so the process sees it as ordinal 0: the session opens ordinal
``device_index`` (0) and reports the physical id (reference/ascend.md).
"""

from __future__ import annotations

import os

import numpy as np

from harness.backends.base import dtype_of
from harness.errors import DeviceError


def import_aclruntime():
    """``aclruntime``, or a DeviceError that says how to get it."""
    try:
        import aclruntime
    except ImportError as exc:
        raise DeviceError(
            "cannot import aclruntime, needed for --backend om on NPUs: source CANN's"
            " set_env.sh (e.g. 'source /usr/local/Ascend/ascend-toolkit/set_env.sh') and install"
            " ais_bench's aclruntime wheel on every NPU node"
            f" ({exc})") from exc
    return aclruntime


def physical_npu_id(device_index: int) -> str:
    """The chip's physical id for reports: the visible-devices list maps ordinals to ids."""
    visible = os.environ.get("ASCEND_RT_VISIBLE_DEVICES", "").strip()
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if device_index < len(ids):
            return ids[device_index]
    return str(device_index)


class OmSession:
    """An .om model loaded on one NPU with aclruntime."""

    def __init__(self, model_path: str, device_index: int = 0) -> None:
        acl = import_aclruntime()
        self._acl = acl
        self._device_id = int(device_index)
        options = acl.session_options()
        self._session = acl.InferenceSession(str(model_path), self._device_id, options)
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(int(d) for d in inp.shape)
        self.input_dtype = dtype_of(inp.datatype)
        self.device = f"npu:{physical_npu_id(self._device_id)}"

    def run(self, x: np.ndarray) -> np.ndarray:
        tensor = self._acl.Tensor(np.ascontiguousarray(x, dtype=self.input_dtype))
        tensor.to_device(self._device_id)
        outputs = self._session.run([self.output_name], [tensor])
        out = outputs[0]
        out.to_host()
        return np.array(out)

    def close(self) -> None:
        self._session = None
