"""Video Swin Transformer (3D) backbone + I3D head, in plain PyTorch, written for export.

Same function and parameter names as the reference (Video-Swin-Transformer, mmaction2 0.x
fork; mmaction2 1.2.0's ``SwinTransformer3D`` is numerically identical), so the original
checkpoints load unchanged: ``backbone.*`` and ``cls_head.fc_cls.*``. See
``reference/protocol.md``, "Model".

Layout: the attention math is one pure function, :func:`shifted_window_attention_3d`;
modules own the parameters and call it. Activations between modules are channels-last
``[N, D, H, W, C]``.

Export: everything that depends only on the input size (effective window and shift per
stage, the shifted-window masks, and in eval mode the gathered relative position biases)
is computed once per feature size and kept in a cache (plain attributes, not state);
``forward`` only looks it up. :meth:`VideoSwin.precompute` fills it for a clip size
without running the network, so an exported graph holds them as constants. Shapes are
static Python ints; no Python branch depends on tensor values; no reshape exceeds rank 8
(the 3-D window partition is exactly 8-D: CANN's Transpose limit).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Size3 = tuple[int, int, int]

# Score added to attention between tokens from different regions of a shifted window.
MASK_VALUE = -100.0


# ----------------------------------------------------------------- pure functions

def effective_window(feature: Size3, window: Size3, shift: Size3) -> tuple[Size3, Size3]:
    """Window and shift actually used on a ``feature``-sized map (mmaction2's get_window_size).

    On an axis whose size is <= the window, the window shrinks to the size and the shift is 0.
    """
    use_window = tuple(f if f <= w else w for f, w in zip(feature, window))
    use_shift = tuple(0 if f <= w else s for f, w, s in zip(feature, window, shift))
    return use_window, use_shift  # type: ignore[return-value]


def padded_size(feature: Size3, window: Size3) -> Size3:
    """``feature`` rounded up to a multiple of ``window`` on every axis."""
    return tuple(-(-f // w) * w for f, w in zip(feature, window))  # type: ignore[return-value]


def window_partition(x: Tensor, window: Size3) -> Tensor:
    """``[B, D, H, W, C]`` (multiples of ``window``) -> ``[B*nW, wd*wh*ww, C]``, nW windows per item."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)  # rank 8: the most CANN allows
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows: Tensor, window: Size3, size: tuple[int, int, int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B*nW, N, C]`` -> ``[B, D, H, W, C]``, ``size=(B,D,H,W)``."""
    b, d, h, w = size
    wd, wh, ww = window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def shifted_window_mask(padded: Size3, window: Size3, shift: Size3) -> Tensor:
    """Attention mask ``[nW, 1, N, N]`` (0 or -100) for a shifted-window pass over ``padded``.

    After the cyclic shift, a window at the far end of an axis holds tokens from up to
    three regions of that axis ([0, P-w), [P-w, P-s), [P-s, P)); tokens attend only
    within their own region. The extra axis of size 1 broadcasts over heads.
    """
    ids = []
    for size, w, s in zip(padded, window, shift):
        region = torch.zeros(size, dtype=torch.int64)
        if s > 0:
            region[size - w:size - s] = 1
            region[size - s:] = 2
        ids.append(region)
    label = ids[0][:, None, None] * 9 + ids[1][None, :, None] * 3 + ids[2][None, None, :]
    windows = window_partition(label[None, ..., None], window).squeeze(-1)  # [nW, N]
    differs = windows[:, None, :] != windows[:, :, None]  # [nW, N, N]
    mask = torch.zeros(differs.shape, dtype=torch.float32).masked_fill(differs, MASK_VALUE)
    return mask.unsqueeze(1)


def relative_position_index(window: Size3) -> Tensor:
    """``[N, N]`` (N = wd*wh*ww) index into the ``(2wd-1)(2wh-1)(2ww-1)``-row bias table."""
    coords = torch.stack(torch.meshgrid(*(torch.arange(w) for w in window), indexing="ij"))
    coords = coords.flatten(1)  # [3, N]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # [N, N, 3]
    rel = rel + torch.tensor([w - 1 for w in window])
    wd, wh, ww = window
    return rel[..., 0] * (2 * wh - 1) * (2 * ww - 1) + rel[..., 1] * (2 * ww - 1) + rel[..., 2]


def shifted_window_attention_3d(
    x: Tensor,
    qkv_weight: Tensor,
    qkv_bias: Tensor | None,
    proj_weight: Tensor,
    proj_bias: Tensor,
    position_bias: Tensor,
    mask: Tensor | None,
    window: Size3,
    shift: Size3,
    num_heads: int,
    scale: float,
) -> Tensor:
    """(Shifted) window multi-head self-attention over a 3-D feature map.

    Shapes (nH heads, hd = C / nH, N = wd*wh*ww tokens per window, nW windows per item,
    Dp/Hp/Wp = D/H/W padded up to multiples of the window):

    - x: ``[B, D, H, W, C]``, already normalized (norm1).
    - qkv_weight ``[3C, C]``, qkv_bias ``[3C]`` or None; proj_weight ``[C, C]``, proj_bias ``[C]``.
    - position_bias: ``[nH, N, N]``, the relative position bias gathered for this window.
    - mask: ``[nW, 1, N, N]`` (0 / -100) when any shift is non-zero, else None.
    - window, shift: effective sizes (see :func:`effective_window`).
    - returns ``[B, D, H, W, C]``.

    Steps: zero-pad the end of each axis to a multiple of the window, roll by -shift,
    partition into windows ``[B*nW, N, C]``, attend (scores ``[B*nW, nH, N, N]`` plus bias
    plus mask, softmax), project, reverse the partition, roll back, crop the padding.
    """
    b, d, h, w, c = x.shape
    pad = [(-size) % win for size, win in zip((d, h, w), window)]
    x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
    dp, hp, wp = d + pad[0], h + pad[1], w + pad[2]
    shifted = any(s > 0 for s in shift)
    if shifted:
        x = torch.roll(x, shifts=tuple(-s for s in shift), dims=(1, 2, 3))

    windows = window_partition(x, window)  # [B*nW, N, C]
    bw, n, _ = windows.shape
    qkv = F.linear(windows, qkv_weight, qkv_bias).reshape(bw, n, 3, num_heads, c // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B*nW, nH, N, hd]
    attn = (q * scale) @ k.transpose(-2, -1)  # [B*nW, nH, N, N]
    attn = attn + position_bias.unsqueeze(0)
    if mask is not None:
        num_windows = mask.shape[0]
        attn = attn.view(bw // num_windows, num_windows, num_heads, n, n) + mask.unsqueeze(0)
        attn = attn.view(bw, num_heads, n, n)
    attn = attn.softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(bw, n, c)  # [B*nW, N, C]
    out = F.linear(out, proj_weight, proj_bias)

    x = window_reverse(out, window, (b, dp, hp, wp))
    if shifted:
        x = torch.roll(x, shifts=tuple(shift), dims=(1, 2, 3))
    if any(pad):
        x = x[:, :d, :h, :w, :]
    return x


# ----------------------------------------------------------------- size-keyed cache

def _tracing() -> bool:
    """True while torch.export / torch.compile / jit tracing runs forward (do not store then)."""
    compiler = getattr(torch, "compiler", None)  # older torch lacks some of these checks
    checks = [getattr(compiler, name, None) for name in ("is_compiling", "is_exporting")]
    return torch.jit.is_tracing() or any(check() for check in checks if check is not None)


@dataclass(frozen=True)
class WindowPlan:
    """What a block needs for one feature size: effective window/shift and the mask."""

    window: Size3
    shift: Size3
    mask: Tensor | None  # [nW, 1, N, N], None when the shift is 0 on every axis


class WindowPlans:
    """Shared by all blocks of one model: plans keyed by feature size, window, shift, device.

    Blocks of a stage share one mask tensor (it depends only on sizes), which keeps the
    exported graph to one constant per stage.
    """

    def __init__(self) -> None:
        self._plans: dict[tuple, WindowPlan] = {}

    def get(self, feature: Size3, window: Size3, shift: Size3, device: torch.device) -> WindowPlan:
        key = (feature, window, shift, str(device))
        plan = self._plans.get(key)
        if plan is None:
            use_window, use_shift = effective_window(feature, window, shift)
            mask = None
            if any(s > 0 for s in use_shift):
                mask = shifted_window_mask(padded_size(feature, use_window), use_window, use_shift)
                mask = mask.to(device)
            plan = WindowPlan(use_window, use_shift, mask)
            if not _tracing():
                self._plans[key] = plan
        return plan

    def clear(self) -> None:
        self._plans.clear()

    def __len__(self) -> int:
        return len(self._plans)


# ----------------------------------------------------------------- modules

class WindowAttention3D(nn.Module):
    """Owns qkv/proj weights and the relative position bias table; calls the pure function."""

    def __init__(self, dim: int, window_size: Size3, num_heads: int, qkv_bias: bool,
                 qk_scale: float | None) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        wd, wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * wd - 1) * (2 * wh - 1) * (2 * ww - 1), num_heads))
        # Derived from window_size; not state (checkpoints may or may not carry it).
        self.register_buffer("relative_position_index", relative_position_index(window_size),
                             persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self._bias_cache: dict[tuple, Tensor] = {}

    def position_bias(self, n: int) -> Tensor:
        """``[nH, n, n]``: the table gathered for the first ``n`` tokens of the full window.

        A shrunken window (n < wd*wh*ww) uses the top-left ``n x n`` block of the full
        window's index, exactly as the reference does. In eval mode the result is cached
        per (n, device, dtype) and detached (inference only); loading a state dict clears it.
        """
        table = self.relative_position_bias_table
        key = (n, str(table.device), table.dtype)
        cached = None if self.training else self._bias_cache.get(key)
        if cached is not None:
            return cached
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = table[index].reshape(n, n, -1).permute(2, 0, 1).contiguous()
        if not self.training and not _tracing():
            bias = bias.detach()
            self._bias_cache[key] = bias
        return bias

    def forward(self, x: Tensor, plan: WindowPlan) -> Tensor:
        n = plan.window[0] * plan.window[1] * plan.window[2]
        return shifted_window_attention_3d(
            x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias,
            self.position_bias(n), plan.mask, plan.window, plan.shift, self.num_heads, self.scale)

    def _load_from_state_dict(self, *args, **kwargs):
        self._bias_cache.clear()  # the table is about to change
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, *args, **kwargs):
        self._bias_cache.clear()
        return super()._apply(*args, **kwargs)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinBlock3D(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x)); x is ``[B, D, H, W, C]``."""

    def __init__(self, dim: int, num_heads: int, window_size: Size3, shift_size: Size3,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 plans: WindowPlans) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self._plans = plans  # shared, not a submodule
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, window_size, num_heads, qkv_bias, qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        plan = self._plans.get(tuple(x.shape[1:4]), self.window_size, self.shift_size, x.device)
        x = x + self.attn(self.norm1(x), plan)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Halve H and W: concatenate each 2x2 neighbourhood (order (0,0),(1,0),(0,1),(1,1)), LN, 4C->2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, D, H, W, C] -> [B, D, ceil(H/2), ceil(W/2), 2C]
        h, w = x.shape[2], x.shape[3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2],
                       x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """One stage: blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Size3,
                 mlp_ratio: float, qkv_bias: bool, qk_scale: float | None,
                 downsample: bool, plans: WindowPlans) -> None:
        super().__init__()
        half = tuple(w // 2 for w in window_size)
        self.blocks = nn.Sequential(*[
            SwinBlock3D(dim, num_heads, window_size, (0, 0, 0) if i % 2 == 0 else half,
                        mlp_ratio, qkv_bias, qk_scale, plans)
            for i in range(depth)
        ])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


class PatchEmbed3D(nn.Module):
    """``[N, 3, T, H, W]`` -> ``[N, T/pt, H/ph, W/pw, C]``: zero-pad to the patch, Conv3d, LN."""

    def __init__(self, patch_size: Size3, in_chans: int, embed_dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        pad = [(-size) % p for size, p in zip(x.shape[2:], self.patch_size)]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        x = self.proj(x).permute(0, 2, 3, 4, 1)
        return self.norm(x) if self.norm is not None else x


class SwinTransformer3D(nn.Module):
    """Video Swin backbone: ``[N, 3, T, H, W]`` -> ``[N, C, D, H', W']`` after the final LayerNorm."""

    def __init__(self, patch_size: Size3 = (4, 4, 4), in_chans: int = 3, embed_dim: int = 96,
                 depths: tuple[int, ...] = (2, 2, 6, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: Size3 = (2, 7, 7), mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, patch_norm: bool = False) -> None:
        super().__init__()
        self.patch_size = tuple(patch_size)
        self.window_size = tuple(window_size)
        self.plans = WindowPlans()
        self.patch_embed = PatchEmbed3D(self.patch_size, in_chans, embed_dim, patch_norm)
        self.layers = nn.ModuleList(
            SwinStage(embed_dim * 2 ** i, depth, heads, self.window_size, mlp_ratio, qkv_bias,
                      qk_scale, downsample=i < len(depths) - 1, plans=self.plans)
            for i, (depth, heads) in enumerate(zip(depths, num_heads))
        )
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).permute(0, 4, 1, 2, 3)

    def feature_sizes(self, clip: Size3) -> list[Size3]:
        """Feature size (D, H, W) seen by each stage's blocks for an input clip (T, H, W)."""
        d, h, w = (-(-s // p) for s, p in zip(clip, self.patch_size))
        sizes = []
        for layer in self.layers:
            sizes.append((d, h, w))
            if layer.downsample is not None:
                h, w = -(-h // 2), -(-w // 2)
        return sizes


class I3DHead(nn.Module):
    """Global average pool over D, H, W, then ``fc_cls`` (dropout is inactive at test time)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fc_cls = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # [N, C, D, H, W] -> [N, num_classes]
        return self.fc_cls(x.mean(dim=(2, 3, 4)))


class VideoSwin(nn.Module):
    """Recognizer3D: views ``[B, V, 3, T, H, W]`` (normalized float32) -> logits ``[B*V, classes]``."""

    def __init__(self, backbone: SwinTransformer3D, cls_head: I3DHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.cls_head = cls_head

    def forward(self, x: Tensor) -> Tensor:
        return self.cls_head(self.backbone(x.flatten(0, 1)))

    @torch.no_grad()
    def precompute(self, clip: Size3) -> None:
        """Fill the size-keyed cache (windows, masks, eval-mode biases) for clips ``(T, H, W)``.

        A forward does this on first use of a size; calling it before ``torch.onnx.export``
        makes sure the exported graph holds them as constants rather than the ops making them.
        """
        device = self.backbone.patch_embed.proj.weight.device
        for layer, size in zip(self.backbone.layers, self.backbone.feature_sizes(tuple(clip))):
            for block in layer.blocks:
                plan = self.backbone.plans.get(size, block.window_size, block.shift_size, device)
                block.attn.position_bias(plan.window[0] * plan.window[1] * plan.window[2])

    def train(self, mode: bool = True) -> "VideoSwin":
        # Training edits the bias tables in place: an eval-mode bias cached before would
        # be stale afterwards, so switching modes starts afresh.
        self.clear_cache()
        return super().train(mode)

    def clear_cache(self) -> None:
        """Drop cached masks and biases (needed after editing parameters in place)."""
        self.backbone.plans.clear()
        for module in self.modules():
            if isinstance(module, WindowAttention3D):
                module._bias_cache.clear()
