"""Ascend .om sessions through ``aclruntime`` (the Python binding shipped with ais_bench).

Which chip: inside a Ray actor that holds one chip, Ray sets ``ASCEND_RT_VISIBLE_DEVICES``
to the chip's physical id, and a CANN that honours the variable shows the process that chip
as ordinal 0. An older CANN ignores it and shows every chip: there ordinal 0 is physical
chip 0 for every actor. :func:`choose_chip` asks pyACL how many chips the process sees and,
when that is not the visible list's length, opens the physical id Ray assigned.

Which chip type: an .om loads only on the soc it was built for; the session refuses one
built for another soc in one sentence before the runtime's raw load error (harness.chips).

The binding's facts this class respects (reference/ascend.md): it is called from one
thread only (harness.backends.device_thread: ACL contexts belong to threads); inputs are
contiguous (the binding ignores strides); timing is ``sumary()`` (sic); ``free_resource``
exists only in the 2024 builds.
"""

from __future__ import annotations

import logging
import os

import numpy as np

from harness.backends.base import dtype_of
from harness.errors import DeviceError

log = logging.getLogger(__name__)
VISIBLE_DEVICES = "ASCEND_RT_VISIBLE_DEVICES"


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


def _visible_ids() -> list[str]:
    visible = os.environ.get(VISIBLE_DEVICES, "").strip()
    return [v.strip() for v in visible.split(",") if v.strip()]


def _runtime_device_count() -> int | None:
    """How many chips the runtime shows this process (pyACL), None without pyACL."""
    try:
        import acl
        count, ret = acl.rt.get_device_count()
    except Exception:
        return None
    return int(count) if ret == 0 else None


def choose_chip(ordinal: int, assigned: str | None) -> tuple[int, str]:
    """``(device id to open, physical chip)`` for ordinal ``ordinal``; ``assigned``: the
    physical id Ray gave this actor (None outside Ray)."""
    visible = _visible_ids()
    if assigned is None:
        return ordinal, visible[ordinal] if ordinal < len(visible) else str(ordinal)
    count = _runtime_device_count()
    honoured = bool(visible) and (count is None or count == len(visible))
    if honoured:
        return ordinal, assigned
    log.warning("the runtime shows this process %s chip(s) although %s=%s: this CANN does not"
                " honour the variable (docs/running.md, \"Which chip\"); opening physical chip %s,"
                " the one Ray assigned", count, VISIBLE_DEVICES, ",".join(visible) or "(unset)",
                assigned)
    return int(assigned), assigned


class OmSession:
    """An .om model loaded on one NPU with aclruntime; call it from one thread only."""

    def __init__(self, model_path: str, device_index: int = 0, assigned: str | None = None) -> None:
        from harness.chips import host_soc, om_soc

        acl = import_aclruntime()
        self._acl = acl
        self.simulated = bool(getattr(acl, "FAKE", False))   # a test double declares itself
        self._device_id, self.physical_id = choose_chip(int(device_index), assigned)
        built_for, chips = om_soc(model_path), host_soc()
        if built_for and chips and built_for != chips:
            raise DeviceError(f"{model_path} was built for {built_for} and this node's chips are"
                              f" {chips}: an .om loads only on the chip type it was built for"
                              f" (build with --soc-version {chips}, or leave --soc-version out)")
        options = acl.session_options()
        self._session = acl.InferenceSession(str(model_path), self._device_id, options)
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(int(d) for d in inp.shape)
        self.input_dtype = dtype_of(inp.datatype)
        self.device = f"npu:{self.physical_id}"
        self._executes_read = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        # the binding reads the buffer as if contiguous (it ignores strides)
        tensor = self._acl.Tensor(np.ascontiguousarray(x, dtype=self.input_dtype))
        tensor.to_device(self._device_id)
        outputs = self._session.run([self.output_name], [tensor])
        out = outputs[0]
        out.to_host()
        return np.array(out)

    def execute_ms(self) -> list[float] | None:
        """The chip's execute time (ms) of each run since the last ask, from the binding's
        ``sumary().exec_time_list`` (model execution only, no copies: what ais_bench reports)."""
        summary = getattr(self._session, "sumary", None)
        if summary is None:
            return None
        pairs = list(summary().exec_time_list)
        new, self._executes_read = pairs[self._executes_read:], len(pairs)
        return [float(end) - float(start) for start, end in new]

    def close(self) -> None:
        if self._session is not None and hasattr(self._session, "free_resource"):
            self._session.free_resource()      # 2024 (ait) builds; older ones free on release
        self._session = None
