"""The Video Swin model: parity with mmaction2 1.2.0, shapes, caching, config, state-dict keys."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.config import load_config, model_section
from harness.errors import ConfigError
from harness.model import average_views, build
from harness.model import swin3d
from mmaction_ref import reference_swin3d

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs/swin_tiny_test.py"
SMALL = REPO / "configs/swin_small_k400.py"
REFERENCE_SMALL = (REPO / "tests/fixtures/reference_configs/configs/recognition/swin/"
                   "swin_small_patch244_window877_kinetics400_1k.py")


def model_cfg(path: Path = TINY, **backbone) -> dict:
    cfg = model_section(load_config(path))
    cfg["backbone"].update(backbone)
    return cfg


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere (default inits leave bias tables at 0 and LNs at 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def to_ours(reference_key: str) -> str:
    """mmaction2 1.2.0 backbone key -> checkpoint key (1.x calls the final LayerNorm norm3)."""
    key = reference_key.replace("norm3.", "norm.", 1) if reference_key.startswith("norm3.") else reference_key
    return "backbone." + key


def reference_and_ours(cfg: dict):
    """mmaction2 1.2.0's SwinTransformer3D and our model, holding the same random weights."""
    b = cfg["backbone"]
    ref = reference_swin3d()(
        arch=dict(embed_dims=b["embed_dim"], depths=list(b["depths"]), num_heads=list(b["num_heads"])),
        pretrained2d=False, patch_size=tuple(b["patch_size"]), window_size=tuple(b["window_size"]),
        mlp_ratio=b["mlp_ratio"], qkv_bias=b["qkv_bias"], qk_scale=b["qk_scale"],
        patch_norm=b["patch_norm"])
    ref.eval()
    randomize(ref)
    ours = build(cfg)
    state = {to_ours(k): v for k, v in ref.state_dict().items()
             if not k.endswith("relative_position_index")}
    state.update({k: v for k, v in ours.state_dict().items() if k.startswith("cls_head.")})
    ours.load_state_dict(state, strict=True)
    return ref, ours


def max_diff(ref, ours, x: torch.Tensor) -> float:
    with torch.inference_mode():
        expected = ref(x)
        actual = ours.backbone(x)
    assert actual.shape == expected.shape
    return float((actual - expected).abs().max())


@pytest.mark.parametrize("depths, clip", [
    # The tiny config as is, at its own clip size: 16x16 tokens are not multiples of window 7.
    (None, (8, 64, 64)),
    # Two blocks per stage, so shifted windows with masks run on padded, partly shrunken maps.
    ([2, 2, 2, 2], (10, 90, 76)),
])
def test_tiny_backbone_matches_mmaction2(depths, clip):
    cfg = model_cfg(**({"depths": depths} if depths else {}))
    ref, ours = reference_and_ours(cfg)
    x = torch.randn(2, 3, *clip, generator=torch.Generator().manual_seed(1))
    assert max_diff(ref, ours, x) <= 1e-4
    if depths:  # the case meant to exercise masks did
        assert any(p.mask is not None for p in ours.backbone.plans._plans.values())


def test_parity_check_detects_a_wrong_mask(monkeypatch):
    # The comparison has teeth: without the shifted-window mask the outputs differ.
    monkeypatch.setattr(swin3d, "MASK_VALUE", 0.0)
    ref, ours = reference_and_ours(model_cfg(depths=[2, 2, 2, 2]))
    x = torch.randn(1, 3, 10, 90, 76, generator=torch.Generator().manual_seed(1))
    assert max_diff(ref, ours, x) > 1e-3


@pytest.mark.slow
def test_swin_small_matches_mmaction2_on_one_view():
    torch.set_num_threads(2)
    ref, ours = reference_and_ours(model_cfg(SMALL))
    x = torch.randn(1, 3, 32, 224, 224, generator=torch.Generator().manual_seed(1))
    diff = max_diff(ref, ours, x)
    print(f"Swin-S max abs difference vs mmaction2 1.2.0: {diff:.3g}")
    assert diff <= 1e-4


def test_forward_maps_views_to_per_view_logits_in_batch_major_order():
    model = build(model_cfg())
    randomize(model)
    x = torch.randn(2, 6, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        logits = model(x)
        assert logits.shape == (12, 8) and logits.dtype == torch.float32
        # Row b*V + v belongs to video b, view v.
        single = model(x[1:2, 4:5])
    torch.testing.assert_close(logits[1 * 6 + 4], single[0], atol=1e-5, rtol=0)


def test_average_views_turns_model_logits_into_video_scores():
    model = build(model_cfg())
    randomize(model)
    x = torch.randn(2, 6, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        logits = model(x)
    scores = average_views(logits.numpy(), views=6, mode="prob")
    expected = logits.softmax(dim=1).reshape(2, 6, -1).mean(dim=1).numpy()
    assert scores.shape == (2, 8)
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=1e-5)


def test_masks_and_biases_are_computed_once_per_size(monkeypatch):
    model = build(model_cfg(depths=[2, 2, 2, 2]))
    randomize(model)
    made = []
    real = swin3d.shifted_window_mask
    monkeypatch.setattr(swin3d, "shifted_window_mask", lambda *a: made.append(a) or real(*a))
    x = torch.randn(1, 1, 3, 8, 64, 64)
    with torch.inference_mode():
        first = model(x)
        masks = [p.mask for p in model.backbone.plans._plans.values()]
        attn = model.backbone.layers[0].blocks[1].attn
        bias = next(iter(attn._bias_cache.values()))
        count = len(made)
        second = model(x)
    assert count > 0 and len(made) == count  # nothing rebuilt on the second forward
    assert all(a is b for a, b in zip(masks, [p.mask for p in model.backbone.plans._plans.values()]))
    assert next(iter(attn._bias_cache.values())) is bias
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    # A new size gets its own entries.
    with torch.inference_mode():
        model(torch.randn(1, 1, 3, 8, 96, 96))
    assert len(made) > count


def test_precompute_fills_the_cache_without_running_the_network(monkeypatch):
    model = build(model_cfg(depths=[2, 2, 2, 2]))
    model.precompute((8, 64, 64))
    planned = len(model.backbone.plans)
    monkeypatch.setattr(swin3d, "shifted_window_mask", lambda *a: pytest.fail("mask rebuilt"))
    with torch.inference_mode():
        model(torch.randn(1, 1, 3, 8, 64, 64))
    assert planned == len(model.backbone.plans) > 0


def test_loading_weights_refreshes_cached_biases():
    cfg = model_cfg()
    model, other = build(cfg), build(cfg)
    randomize(model, seed=0)
    randomize(other, seed=1)
    x = torch.randn(1, 1, 3, 8, 64, 64)
    with torch.inference_mode():
        model(x)  # fills the cache with seed-0 biases
        model.load_state_dict(other.state_dict())
        torch.testing.assert_close(model(x), other(x), atol=1e-6, rtol=0)


def test_a_training_step_refreshes_cached_biases():
    model, fresh = build(model_cfg()), build(model_cfg())
    randomize(model)
    x = torch.randn(1, 1, 3, 8, 64, 64)
    with torch.inference_mode():
        model(x)  # eval mode: caches the biases
    model.train()
    with torch.no_grad():  # what an optimizer step does: edit the bias tables in place
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p += torch.randn_like(p)
    model.eval()
    fresh.load_state_dict(model.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(model(x), fresh(x), atol=1e-6, rtol=0)


def expected_checkpoint_keys(depths: list[int]) -> set[str]:
    """The key list of reference/protocol.md, for a model with ``depths``."""
    keys = {"backbone.patch_embed.proj.weight", "backbone.patch_embed.proj.bias",
            "backbone.patch_embed.norm.weight", "backbone.patch_embed.norm.bias",
            "backbone.norm.weight", "backbone.norm.bias",
            "cls_head.fc_cls.weight", "cls_head.fc_cls.bias"}
    for i, depth in enumerate(depths):
        for j in range(depth):
            block = f"backbone.layers.{i}.blocks.{j}."
            for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                keys |= {block + name + ".weight", block + name + ".bias"}
            keys.add(block + "attn.relative_position_bias_table")
        if i < len(depths) - 1:
            keys |= {f"backbone.layers.{i}.downsample.{n}"
                     for n in ("reduction.weight", "norm.weight", "norm.bias")}
    return keys


def test_state_dict_keys_are_the_checkpoint_keys():
    tiny = build(model_cfg()).state_dict()
    assert set(tiny) == expected_checkpoint_keys(model_cfg()["backbone"]["depths"])


def test_swin_small_from_the_reference_config_has_the_published_shapes():
    model = build(model_section(load_config(REFERENCE_SMALL)))
    state = model.state_dict()
    assert set(state) == expected_checkpoint_keys([2, 2, 18, 2])
    assert state["backbone.patch_embed.proj.weight"].shape == (96, 3, 2, 4, 4)
    assert state["backbone.layers.0.blocks.0.attn.relative_position_bias_table"].shape == (15 * 13 * 13, 3)
    assert state["backbone.layers.2.downsample.reduction.weight"].shape == (768, 1536)
    assert state["cls_head.fc_cls.weight"].shape == (400, 768)
    assert not model.training


def test_config_spellings_and_ignored_training_keys():
    cfg = model_cfg()
    cfg["backbone"]["embed_dims"] = cfg["backbone"].pop("embed_dim")
    cfg["backbone"].update(pretrained=None, pretrained2d=False, frozen_stages=-1, use_checkpoint=False)
    assert set(build(cfg).state_dict()) == expected_checkpoint_keys(model_cfg()["backbone"]["depths"])


def test_unknown_backbone_key_is_refused_by_name():
    cfg = model_cfg(window_sizes=(8, 7, 7))
    with pytest.raises(ConfigError, match=r"model\.backbone\.window_sizes"):
        build(cfg)


def test_head_width_must_match_the_backbone():
    cfg = copy.deepcopy(model_cfg())
    cfg["cls_head"]["in_channels"] = 768
    with pytest.raises(ConfigError, match=r"model\.cls_head\.in_channels.*192"):
        build(cfg)


def test_exports_to_onnx_with_constant_masks_and_matching_outputs(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = build(model_cfg(depths=[2, 2, 2, 2]))
    randomize(model)
    model.precompute((8, 64, 64))
    x = torch.randn(1, 2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(4))
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)

    graph = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"GatherND", "Gather", "Where", "Equal"}  # biases and masks are constants
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info}
    reshaped = [ranks[n.output[0]] for n in graph.node
                if n.op_type in ("Transpose", "Reshape") and n.output[0] in ranks]
    assert reshaped and max(reshaped) <= 8  # CANN's Transpose limit

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.inference_mode():
        expected = model(x).numpy()
    np.testing.assert_allclose(actual, expected, atol=1e-4, rtol=0)
