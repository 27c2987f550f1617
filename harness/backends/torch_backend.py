"""The project's PyTorch model (harness.model) as a session, on CPU or CUDA.

Takes float32 normalized views (the model has no in-graph normalization), one video
per call with all its views: the inference actor normalizes on the host.
"""

from __future__ import annotations

import numpy as np

from harness.errors import ConfigError, DeviceError


def _spec_fields(source) -> tuple[str, str | None, bool, int]:
    """(config path, checkpoint path or None, unsafe, views per video) from a spec or artifact."""
    from harness.backends.base import ModelSpec

    if isinstance(source, ModelSpec):
        if not source.config_path:
            raise ConfigError("the torch backend needs the config file")
        return source.config_path, source.checkpoint, source.unsafe_load_checkpoint, source.views_per_video
    manifest = getattr(source, "manifest", None)
    if manifest is None:
        import json
        from pathlib import Path
        manifest = json.loads((Path(source) / "manifest.json").read_text())
    checkpoint = manifest.get("checkpoint")
    path = checkpoint.get("path") if isinstance(checkpoint, dict) else None
    return manifest["config"], path, False, int(manifest["views_per_video"])


class TorchSession:
    """harness.model's Video Swin with its checkpoint loaded, in eval mode."""

    def __init__(self, source, device_kind: str, device_index: int = 0, threads: int = 1) -> None:
        import torch

        from harness import model as swin
        from harness.config import clip_geometry, load_config, model_section

        config_path, checkpoint, unsafe, views = _spec_fields(source)
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
        cfg = load_config(config_path)
        net = swin.build(model_section(cfg))
        if checkpoint:
            swin.load_checkpoint(net, checkpoint, unsafe=unsafe)
        self._torch = torch
        self._model = net.eval().to(self.device)
        geometry = clip_geometry(cfg)
        self.input_name, self.output_name = "imgs", "logits"
        self.input_shape = (1, views, *geometry.view_shape())
        self.input_dtype = np.dtype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out = self._model(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return out.float().cpu().numpy()

    def close(self) -> None:
        self._model = None
