"""The project's PyTorch model (harness.model) as a session, on CPU or CUDA.

By default (what the inference actor opens today) the session takes float32 normalized
views (the model has no in-graph normalization), one video per call with all its views,
and computes in fp32: the actor normalizes on the host.

Keyword options (defaults keep that behaviour):

- ``precision``: ``fp32``, ``tf32``, ``fp16`` or ``bf16``. fp16/bf16 run the model under
  ``torch.autocast`` on the session's device (matmuls and convolutions in the reduced type,
  softmax, LayerNorm and the attention bias/mask additions in fp32, as autocast's op lists
  say). ``tf32`` lets CUDA matmuls and cuDNN convolutions use TF32 tensor cores; on CPU it
  is plain fp32 (:attr:`TorchSession.effective_precision` says ``fp32`` there). On CUDA,
  ``fp32`` is strict fp32: TF32 is switched off for the session's calls, cuDNN included
  (torch's own default lets cuDNN convolutions use TF32). The flags are process-wide in
  torch, so the session sets them for the length of each call and restores them after.
- ``compile``: ``torch.compile`` the forward (normalization, autocast and model). It is
  compiled on open, with one call on zeros, so a missing compiler fails there, as a
  :class:`~harness.errors.DeviceError` naming the cause, not on the first video.
- ``uint8_input``: the session takes the decoder's uint8 views and normalizes on the
  device with ``spec.norm`` (same arithmetic as ``Normalization.apply`` on the host:
  float32 ``(x - mean) / std`` after the optional BGR flip), so 4x fewer bytes cross to
  the device. On CUDA the views are staged in pinned host memory and copied with
  ``non_blocking=True``.
- ``batch``: videos per call. ``input_shape`` is ``(batch, views, 3, T, H, W)``; ``run``
  also takes fewer videos (the model handles any batch), never a different view shape.

``run`` returns float32 logits ``[videos*views, classes]`` whatever the precision.
"""

from __future__ import annotations

import contextlib

import numpy as np

from harness.backends.base import ModelSpec
from harness.errors import ConfigError, DeviceError

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")


class TorchSession:
    """harness.model's Video Swin with its checkpoint loaded, in eval mode."""

    def __init__(self, spec: ModelSpec, device_kind: str, device_index: int = 0,
                 threads: int = 1, *, precision: str = "fp32", compile: bool = False,
                 uint8_input: bool = False, batch: int = 1) -> None:
        import torch

        from harness import model as swin

        if spec.model_cfg is None or spec.view_shape is None:
            raise ConfigError("the torch backend needs the config's model section"
                              " (ModelSpec.from_checkpoint)")
        if precision not in PRECISIONS:
            raise ConfigError(f"torch precision {precision!r} is not supported; use one of"
                              f" {', '.join(PRECISIONS)}")
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ConfigError(f"torch batch must be an integer >= 1 (videos per call), not {batch!r}")
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
        self._torch = torch
        self._cuda = self.device.startswith("cuda")
        self.precision = precision
        # What the arithmetic really is: TF32 exists on CUDA only.
        self.effective_precision = "fp32" if precision == "tf32" and not self._cuda else precision
        self.compiled = bool(compile)
        self.uint8_input = bool(uint8_input)
        self.batch = int(batch)

        net = swin.build(spec.model_cfg)
        if spec.checkpoint:
            swin.load_checkpoint(net, spec.checkpoint, unsafe=spec.unsafe_load_checkpoint)
        net = net.eval().to(self.device)
        net.precompute(tuple(spec.view_shape[1:]))  # masks and biases cached before any trace
        self._model = net
        autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self._forward = _forward_module(net, spec.norm if self.uint8_input else None, autocast,
                                       self.device)
        self.input_name, self.output_name = "imgs", "logits"
        self.input_shape = (self.batch, spec.views_per_video, *spec.view_shape)
        self.input_dtype = np.dtype(np.uint8 if self.uint8_input else np.float32)
        self._pinned = None  # CUDA: the host staging buffer, reused while the shape holds
        if self.compiled:
            self._compile()

    # ------------------------------------------------------------------ calls

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float32 logits ``[x.shape[0] * views, classes]`` for ``x`` of ``input_shape``
        (fewer videos allowed) and ``input_dtype``."""
        torch = self._torch
        x = np.asarray(x)
        if x.dtype != self.input_dtype:
            hint = (" (this session normalizes on the device: give the decoder's uint8 views)"
                    if self.uint8_input else
                    " (this session takes host-normalized float32 views; open it with"
                    " uint8_input=True to give uint8)")
            raise ValueError(f"torch session input must be {self.input_dtype}, got {x.dtype}{hint}")
        if x.ndim != len(self.input_shape) or tuple(x.shape[1:]) != tuple(self.input_shape[1:]) \
                or not 1 <= x.shape[0] <= self.batch:
            raise ValueError(f"torch session input must have shape (1..{self.batch},"
                             f" {', '.join(map(str, self.input_shape[1:]))}), got {tuple(x.shape)}")
        with self._precision_flags(), torch.inference_mode():
            out = self._call(self._to_device(x))
            return out.cpu().numpy()

    def _call(self, t):
        return self._compiled(t) if self.compiled else self._forward(t)

    def _to_device(self, x: np.ndarray):
        torch = self._torch
        if not self._cuda:
            return torch.from_numpy(np.ascontiguousarray(x))
        # Pinned staging buffer: the copy to the device is a real asynchronous DMA. Safe to
        # refill on the next call: run() waits for this call's output, after the copy.
        if self._pinned is None or tuple(self._pinned.shape) != x.shape:
            self._pinned = torch.empty(x.shape, dtype=torch.from_numpy(x[:0]).dtype,
                                       pin_memory=True)
        self._pinned.numpy()[...] = x
        return self._pinned.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def _precision_flags(self):
        """CUDA: TF32 on for ``tf32``, off for ``fp32`` (both matmul and cuDNN), for this call
        only. fp16/bf16 leave the flags as they are (fp32 ops there are the sensitive ones)."""
        torch = self._torch
        if not self._cuda or self.precision not in ("fp32", "tf32"):
            yield
            return
        matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
        matmul.allow_tf32 = cudnn.allow_tf32 = self.precision == "tf32"
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved

    # ------------------------------------------------------------------ compile

    def _compile(self) -> None:
        torch = self._torch
        if not hasattr(torch, "compile"):
            raise DeviceError(f"torch {torch.__version__} has no torch.compile; open the torch"
                              " session without compile, or install torch >= 2.0")
        try:
            self._compiled = torch.compile(self._forward)
            zeros = np.zeros(self.input_shape, dtype=self.input_dtype)
            with self._precision_flags(), torch.inference_mode():
                self._call(self._to_device(zeros))
        except Exception as exc:  # inductor raises many types (no compiler, unsupported op)
            from harness.config import describe_error

            raise DeviceError(f"torch.compile failed on {self.device} ({describe_error(exc)[:2000]});"
                              " open the torch session without compile (on CPU, inductor needs a"
                              " C++ compiler; on CUDA, Triton)") from exc

    def close(self) -> None:
        self._model = self._forward = self._pinned = None
        self._compiled = None


def _forward_module(model, norm, autocast_dtype, device):
    """An ``nn.Module``: optional on-device normalization, then the model under autocast,
    float32 logits out. One module so ``torch.compile`` sees (and fuses) all of it."""
    import torch

    class Forward(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.to_bgr = bool(norm.to_bgr) if norm is not None else False
            if norm is not None:  # (1, 1, 3, 1, 1, 1): channels are axis 2 of [B, V, 3, T, H, W]
                shape = (1, 1, 3, 1, 1, 1)
                self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32,
                                                          device=device).view(shape))
                self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32,
                                                         device=device).view(shape))
            else:
                self.mean = self.std = None
            self.autocast_dtype = autocast_dtype
            self.device_type = torch.device(device).type

        def forward(self, x):
            if self.mean is not None:  # as harness.config.Normalization.apply, on the device
                x = x.to(torch.float32)
                if self.to_bgr:
                    x = x.flip(2)
                x = (x - self.mean) / self.std
            if self.autocast_dtype is None:
                return self.model(x).float()
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                out = self.model(x)
            return out.float()

    return Forward().eval()
