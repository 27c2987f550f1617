"""``build(model_cfg)``: the config's ``model`` section -> :class:`VideoSwin` in eval mode.

Backbone keys are read as the reference configs write them (Video-Swin-Transformer's
``SwinTransformer3D`` arguments and defaults); training-only keys are accepted and ignored,
anything else is refused so a typo cannot silently change the model.
"""

from __future__ import annotations

from typing import Any

from harness.errors import ConfigError
from harness.model.swin3d import I3DHead, SwinTransformer3D, VideoSwin

# Defaults are the original SwinTransformer3D's (the reference configs rely on them).
_BACKBONE_DEFAULTS: dict[str, Any] = {
    "patch_size": (4, 4, 4),
    "in_chans": 3,
    "embed_dim": 96,
    "depths": (2, 2, 6, 2),
    "num_heads": (3, 6, 12, 24),
    "window_size": (2, 7, 7),
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "qk_scale": None,
    "patch_norm": False,
}
# Inactive at test time (dropout, stochastic depth, init, freezing, activation checkpointing).
_BACKBONE_IGNORED = {"type", "drop_rate", "attn_drop_rate", "drop_path_rate", "pretrained",
                     "pretrained2d", "frozen_stages", "use_checkpoint", "norm_layer"}
_HEAD_IGNORED = {"type", "dropout_ratio", "init_std", "loss_cls", "multi_class",
                 "label_smooth_eps", "spatial_type"}


def _triple(value: Any, key: str) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return tuple(value)  # type: ignore[return-value]
    raise ConfigError(f"config key 'model.backbone.{key}' must be an int or 3 ints, not {value!r}")


def backbone_kwargs(backbone_cfg: dict) -> dict[str, Any]:
    """Validated :class:`SwinTransformer3D` arguments from ``model.backbone``."""
    cfg = dict(backbone_cfg)
    if "embed_dims" in cfg:  # mmaction2 1.x spelling
        if "embed_dim" in cfg and cfg["embed_dim"] != cfg["embed_dims"]:
            raise ConfigError("config keys 'model.backbone.embed_dim' and 'model.backbone.embed_dims'"
                              " disagree; give one")
        cfg["embed_dim"] = cfg.pop("embed_dims")
    unknown = sorted(set(cfg) - set(_BACKBONE_DEFAULTS) - _BACKBONE_IGNORED)
    if unknown:
        names = ", ".join(f"'model.backbone.{k}'" for k in unknown)
        raise ConfigError(f"config key {names} is not supported by the harness's SwinTransformer3D"
                          f" (known: {', '.join(sorted(_BACKBONE_DEFAULTS))})")
    kwargs = {k: cfg.get(k, default) for k, default in _BACKBONE_DEFAULTS.items()}
    kwargs["patch_size"] = _triple(kwargs["patch_size"], "patch_size")
    kwargs["window_size"] = _triple(kwargs["window_size"], "window_size")
    kwargs["depths"] = tuple(kwargs["depths"])
    kwargs["num_heads"] = tuple(kwargs["num_heads"])
    if len(kwargs["depths"]) != len(kwargs["num_heads"]) or not kwargs["depths"]:
        raise ConfigError("config keys 'model.backbone.depths' and 'model.backbone.num_heads' must be"
                          f" non-empty and of equal length, got {kwargs['depths']} and {kwargs['num_heads']}")
    for i, heads in enumerate(kwargs["num_heads"]):
        if (kwargs["embed_dim"] * 2 ** i) % heads:
            raise ConfigError(f"config key 'model.backbone.num_heads': stage {i} has"
                              f" {kwargs['embed_dim'] * 2 ** i} channels, not divisible by {heads} heads")
    return kwargs


def build(model_cfg: dict) -> VideoSwin:
    """Build the recognizer from a config's ``model`` dict (see ``harness.config.model_section``)."""
    if "backbone" not in model_cfg or "cls_head" not in model_cfg:
        raise ConfigError("config key 'model.backbone' and 'model.cls_head' are both required")
    backbone = SwinTransformer3D(**backbone_kwargs(model_cfg["backbone"]))

    head_cfg = dict(model_cfg["cls_head"])
    unknown = sorted(set(head_cfg) - {"in_channels", "num_classes"} - _HEAD_IGNORED)
    if unknown:
        names = ", ".join(f"'model.cls_head.{k}'" for k in unknown)
        raise ConfigError(f"config key {names} is not supported by the harness's I3DHead")
    if head_cfg.get("spatial_type", "avg") != "avg":
        raise ConfigError(f"config key 'model.cls_head.spatial_type' is {head_cfg['spatial_type']!r};"
                          " the harness supports 'avg'")
    for key in ("in_channels", "num_classes"):
        if key not in head_cfg:
            raise ConfigError(f"config key 'model.cls_head.{key}' is missing")
    if head_cfg["in_channels"] != backbone.num_features:
        raise ConfigError(f"config key 'model.cls_head.in_channels' is {head_cfg['in_channels']},"
                          f" but the backbone outputs {backbone.num_features} channels")
    model = VideoSwin(backbone, I3DHead(head_cfg["in_channels"], head_cfg["num_classes"]))
    return model.eval()
