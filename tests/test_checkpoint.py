"""Loading original-layout checkpoints: strict keys and shapes, weights-only unpickling."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from harness.config import load_config, model_section
from harness.errors import CheckpointError
from harness.model import build, load_checkpoint

torch.set_num_threads(1)

TINY = Path(__file__).resolve().parents[1] / "configs/swin_tiny_test.py"


def tiny_model(seed: int):
    model = build(model_section(load_config(TINY)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def original_layout(model, with_index: bool) -> dict:
    """A state dict as the reference repository saves it (optionally with the derived buffers)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if with_index:
        for name, buf in model.named_buffers():
            if name.endswith("relative_position_index"):
                state[name] = buf.clone()
    return state


def logits(model) -> torch.Tensor:
    x = torch.randn(1, 2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("with_index", [False, True])
def test_original_layout_loads_and_reproduces_outputs(tmp_path, with_index):
    source = tiny_model(seed=0)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": original_layout(source, with_index), "meta": {"epoch": 30}}, path)
    if with_index:
        assert any(k.endswith("relative_position_index") for k in torch.load(path)["state_dict"])
    target = tiny_model(seed=1)
    assert not torch.allclose(logits(target), logits(source))
    load_checkpoint(target, path)
    torch.testing.assert_close(logits(target), logits(source), atol=0, rtol=0)


def test_bare_state_dict_with_module_prefix_loads(tmp_path):
    source = tiny_model(seed=0)
    path = tmp_path / "ckpt.pth"
    torch.save({"module." + k: v for k, v in source.state_dict().items()}, path)
    target = tiny_model(seed=1)
    load_checkpoint(target, path)
    torch.testing.assert_close(logits(target), logits(source), atol=0, rtol=0)


def refused(tmp_path, state: dict) -> str:
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tiny_model(seed=1), path)
    return str(info.value)


def test_wrong_key_is_named_as_missing_and_unexpected(tmp_path):
    state = original_layout(tiny_model(seed=0), with_index=False)
    state["backbone.layers.0.blocks.0.attn.qkv.weights"] = state.pop("backbone.layers.0.blocks.0.attn.qkv.weight")
    message = refused(tmp_path, state)
    assert "missing keys (1)" in message and "backbone.layers.0.blocks.0.attn.qkv.weight\n" in message
    assert "unexpected keys (1)" in message and "backbone.layers.0.blocks.0.attn.qkv.weights" in message


def test_wrong_shape_is_named_with_both_shapes(tmp_path):
    state = original_layout(tiny_model(seed=0), with_index=False)
    state["cls_head.fc_cls.weight"] = torch.zeros(400, 192)
    message = refused(tmp_path, state)
    assert "cls_head.fc_cls.weight: checkpoint (400, 192), model (8, 192)" in message
    assert "missing" not in message and "unexpected" not in message


def test_extra_key_is_refused(tmp_path):
    state = original_layout(tiny_model(seed=0), with_index=True)
    state["backbone.layers.3.downsample.reduction.weight"] = torch.zeros(384, 768)
    message = refused(tmp_path, state)
    assert "unexpected keys (1)" in message and "backbone.layers.3.downsample.reduction.weight" in message


def test_file_needing_unpickling_is_refused_unless_opted_in(tmp_path):
    source = tiny_model(seed=0)
    path = tmp_path / "with_meta.pth"
    meta = {"config": argparse.Namespace(lr=0.1)}  # what training scripts often store
    torch.save({"state_dict": source.state_dict(), "meta": meta}, path)
    target = tiny_model(seed=1)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(target, path)
    message = str(info.value)
    assert "unpickling" in message and "unsafe=True" in message and "--unsafe-load-checkpoint" in message
    load_checkpoint(target, path, unsafe=True)
    torch.testing.assert_close(logits(target), logits(source), atol=0, rtol=0)


def test_missing_or_unreadable_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tiny_model(seed=0), tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tiny_model(seed=0), junk)


def _rename_globals(path, old: bytes, new: bytes) -> None:
    """Rewrite the module names in a torch checkpoint's pickle (as if saved by another NumPy)."""
    import zipfile

    with zipfile.ZipFile(path) as src:
        items = [(info, src.read(info.filename)) for info in src.infolist()]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as out:
        for info, data in items:
            out.writestr(info, data.replace(old, new) if info.filename.endswith("data.pkl") else data)


@pytest.mark.parametrize("numpy_module", ["numpy._core", "numpy.core"])   # NumPy 2.x, 1.x pickles
def test_mmcv_style_meta_with_numpy_scalars_loads_weights_only(tmp_path, numpy_module):
    import numpy as np

    source = tiny_model(seed=0)
    path = tmp_path / "mmcv_style.pth"
    meta = {"epoch": 30, "iter": 12000, "mmcv_version": "1.3.1", "time": "Fri Apr  9 2021",
            "hook_msgs": {"best_score": np.float64(0.806), "best_ckpt": "epoch_30.pth",
                          "last_ckpt": "epoch_30.pth"},
            "dtype": np.dtype("float32"), "steps": np.int64(7)}
    torch.save({"state_dict": source.state_dict(), "meta": meta}, path)
    _rename_globals(path, b"numpy._core.multiarray", numpy_module.encode() + b".multiarray")
    assert f"{numpy_module}.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    target = tiny_model(seed=1)
    load_checkpoint(target, path)                       # no unsafe flag
    torch.testing.assert_close(logits(target), logits(source), atol=0, rtol=0)


def test_numpy_arrays_in_the_meta_still_need_the_opt_in(tmp_path):
    import numpy as np

    path = tmp_path / "with_array.pth"
    torch.save({"state_dict": tiny_model(seed=0).state_dict(), "meta": {"curve": np.arange(3.0)}}, path)
    with pytest.raises(CheckpointError, match="needs full unpickling.*_reconstruct"):
        load_checkpoint(tiny_model(seed=1), path)
