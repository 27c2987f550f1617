"""The project's PyTorch model (harness.model) as a session, on CPU or CUDA.

Takes float32 normalized views (the model has no in-graph normalization), one video
per call with all its views: the inference actor normalizes on the host.
"""

from __future__ import annotations

import numpy as np

from harness.backends.base import ModelSpec
from harness.errors import ConfigError, DeviceError


class TorchSession:
    """harness.model's Video Swin with its checkpoint loaded, in eval mode."""

    def __init__(self, spec: ModelSpec, device_kind: str, device_index: int = 0,
                 threads: int = 1) -> None:
        import torch

        from harness import model as swin

        if spec.model_cfg is None or spec.view_shape is None:
            raise ConfigError("the torch backend needs the config's model section"
                              " (ModelSpec.from_checkpoint)")
        if device_kind == "cpu":
            torch.set_num_threads(threads)
            self.device = "cpu"
        elif device_kind == "gpu":
            if not torch.cuda.is_available():
                raise DeviceError("torch sees no CUDA device; install a CUDA build of torch on the"
                                  " GPU nodes, or run with --cpus N")
            self.device = f"cuda:{device_index}"
        else:
            raise DeviceError("the torch backend runs on CPUs and GPUs; NPUs use --backend om")
        net = swin.build(spec.model_cfg)
        if spec.checkpoint:
            swin.load_checkpoint(net, spec.checkpoint, unsafe=spec.unsafe_load_checkpoint)
        self._torch = torch
        self._model = net.eval().to(self.device)
        self.input_name, self.output_name = "imgs", "logits"
        self.input_shape = (1, spec.views_per_video, *spec.view_shape)
        self.input_dtype = np.dtype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return out.float().cpu().numpy()

    def close(self) -> None:
        self._model = None
