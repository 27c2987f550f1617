"""onnxruntime sessions on CPU or CUDA."""

from __future__ import annotations

import numpy as np

from harness.backends.base import dtype_of
from harness.errors import DeviceError


class OrtSession:
    """An onnxruntime session; ``threads`` caps its intra-op pool (the actor's CPU share)."""

    def __init__(self, model_path: str, device_kind: str, device_index: int = 0,
                 threads: int = 1) -> None:
        import onnxruntime as ort  # lazily: only actors that run onnxruntime need it

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if device_kind == "gpu":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError(
                    "onnxruntime has no CUDA execution provider here; install onnxruntime-gpu"
                    " on the GPU nodes, or use --backend torch, or run with --cpus N")
            providers = [("CUDAExecutionProvider", {"device_id": device_index})]
            self.device = f"cuda:{device_index}"
        elif device_kind == "cpu":
            providers = ["CPUExecutionProvider"]
            self.device = "cpu"
            # The memory pattern pre-plans one block for every activation of the call: on a CPU
            # that is 0.59x the peak without it at the same speed (full-size Swin-S, 4 views a
            # call: 5.1 vs 8.7 GB; benchmarks/cpu_session.py, docs/performance.md).
            options.enable_mem_pattern = False
        else:
            raise DeviceError("onnxruntime runs on CPUs and GPUs; NPUs use --backend om")
        self._session = ort.InferenceSession(model_path, sess_options=options, providers=providers)
        inp, out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)
        self.input_dtype = dtype_of(inp.type)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self._session.run([self.output_name], {self.input_name: x})[0]

    def close(self) -> None:
        self._session = None
