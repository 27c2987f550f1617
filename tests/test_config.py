"""Configs: the harness's own, the reference repository's form (with _base_), and errors."""

import logging
from pathlib import Path

import pytest

from harness import config
from harness.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "reference_configs" / "configs"
REFERENCE_SWIN_S = FIXTURES / "recognition" / "swin" / "swin_small_patch244_window877_kinetics400_1k.py"


def test_reference_config_loads_unchanged_with_its_bases():
    cfg = config.load_config(REFERENCE_SWIN_S)
    model = config.model_section(cfg)
    backbone = model["backbone"]
    # swin_tiny.py -> swin_small.py (depths) -> the file itself (patch size, drop path)
    assert backbone["depths"] == [2, 2, 18, 2]
    assert tuple(backbone["patch_size"]) == (2, 4, 4)
    assert tuple(backbone["window_size"]) == (8, 7, 7)
    assert backbone["embed_dim"] == 96
    assert model["test_cfg"] == {"average_clips": "prob", "max_testing_views": 4}
    assert config.average_clips(cfg) == "prob"
    assert config.test_annotations(cfg) == (
        "data/kinetics400/kinetics400_val_list.txt", "data/kinetics400/val")
    geometry = config.clip_geometry(cfg)
    assert (geometry.views, geometry.view_shape()) == (12, (3, 32, 224, 224))
    norm = config.normalization(cfg)
    assert norm.mean == (123.675, 116.28, 103.53) and norm.std == (58.395, 57.12, 57.375)
    # no harness section: the defaults
    assert config.harness_options(cfg) == config.HarnessOptions()


def test_own_swin_s_config_equals_the_reference_form():
    ours, reference = config.load_config("swin_small_k400"), config.load_config(REFERENCE_SWIN_S)
    assert config.model_section(ours) == config.model_section(reference)
    assert config.test_pipeline(ours) == config.test_pipeline(reference)
    assert config.test_annotations(ours) == config.test_annotations(reference)
    assert config.normalization(ours) == config.normalization(reference)


def test_tiny_config_geometry():
    cfg = config.load_config("swin_tiny_test")
    assert config.clip_geometry(cfg).views == 6
    assert config.clip_geometry(cfg).view_shape() == (3, 8, 64, 64)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load_config(tmp_path / "nope.py")


def test_a_mistyped_path_never_falls_back_to_a_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                     # no configs/ here
    for typo in ("config/swin_tiny_test.py", "configs/swin_tiny_test.p", str(tmp_path / "swin_tiny_test.py")):
        with pytest.raises(ConfigError, match="config file not found"):
            config.load_config(typo)
    # a bare name (no folder) resolves to the project's configs/, with or without .py
    for bare in ("swin_tiny_test", "swin_tiny_test.py"):
        found = config.load_config(bare)["_harness_config_path"]
        assert found == str(config.CONFIG_DIR / "swin_tiny_test.py")
    with pytest.raises(ConfigError, match="nor a config in .*swin_small_k400"):
        config.load_config("swin_tiny_tset")       # and a wrong bare name lists the known ones


def test_a_config_error_always_names_its_cause(tmp_path):
    path = tmp_path / "asserts.py"
    path.write_text("x = 1\nassert x == 2\n")          # AssertionError() has no message
    with pytest.raises(ConfigError) as info:
        config.load_config(path)
    message = str(info.value)
    assert message.startswith(f"cannot read config {path}: AssertionError")
    assert not message.rstrip().endswith(":")
    path.write_text("x = [1,\n")
    with pytest.raises(ConfigError, match="SyntaxError"):
        config.load_config(path)


def test_cfg_options_override_keys_and_list_items():
    cfg = config.load_config("swin_tiny_test", {"harness.build.views_per_call": 3,
                                                "harness.sampling": "mmaction2-1.x",
                                                "data.test.pipeline.1.num_clips": 4})
    assert config.harness_options(cfg).build.views_per_call == 3
    assert config.harness_options(cfg).sampling == "mmaction2-1.x"
    assert config.clip_geometry(cfg).views == 12            # 4 clips x 3 crops
    with pytest.raises(ConfigError, match="cfg-options.*data.test.pipeline.99.*Index 99 exceeds"):
        config.load_config("swin_tiny_test", {"data.test.pipeline.99.num_clips": 4})


def test_cfg_options_that_add_a_key_are_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="harness.config"):
        config.load_config("swin_tiny_test", {"data.test.pipeline.1.num_clips": 4})
    assert caplog.records == []                              # an existing key: silent
    with caplog.at_level(logging.WARNING, logger="harness.config"):
        config.load_config("swin_tiny_test", {"data.test.pipelin.1.num_clips": 4})
    assert "data.test.pipelin.1.num_clips: not in swin_tiny_test.py" in caplog.text


def test_evaluation_digest_follows_content_not_path(tmp_path):
    base = config.load_config("swin_tiny_test")
    copy = tmp_path / "elsewhere.py"
    copy.write_text((config.CONFIG_DIR / "swin_tiny_test.py").read_text())
    assert config.evaluation_digest(config.load_config(copy)) == config.evaluation_digest(base)
    for change in ({"harness.sampling": "mmaction2-1.x"}, {"data.test.pipeline.3.scale": (-1, 72)},
                   {"img_norm_cfg.mean": [0, 0, 0], "data.test.pipeline.6.mean": [0, 0, 0]}):
        assert config.evaluation_digest(config.load_config("swin_tiny_test", change)) != \
            config.evaluation_digest(base), change


def test_normalization_matches_hand_computed_values_for_numpy_and_torch():
    import numpy as np
    import torch

    norm = config.Normalization(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    x = np.array([[[[50]]], [[[100]]], [[[200]]]], dtype=np.uint8)            # (3, 1, 1, 1): R, G, B
    expected = [(50 - 10) / 2, (100 - 20) / 4, (200 - 30) / 5]
    assert norm.apply(x, channel_axis=0).ravel().tolist() == expected
    assert norm.apply(torch.from_numpy(x), channel_axis=0).flatten().tolist() == expected
    # to_bgr flips the channels first, then the mean (in BGR order) is subtracted (mmcv's order)
    bgr = config.Normalization(mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), to_bgr=True)
    flipped = [(200 - 10) / 2, (100 - 20) / 4, (50 - 30) / 5]
    batch = np.broadcast_to(x.reshape(1, 3, 1), (2, 3, 2))                   # channel axis 1 of 3
    assert bgr.apply(batch, channel_axis=1)[1, :, 0].tolist() == flipped
    assert bgr.apply(torch.from_numpy(batch.copy()), channel_axis=-2)[1, :, 1].tolist() == flipped


def test_missing_model_key_is_named(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("model = dict(type='Recognizer3D', backbone=dict(type='SwinTransformer3D'),"
                    " cls_head=dict(type='I3DHead', in_channels=8))\n")
    with pytest.raises(ConfigError, match="model.cls_head.num_classes"):
        config.model_section(config.load_config(path))


def test_unsupported_model_type_is_named(tmp_path):
    path = tmp_path / "other.py"
    path.write_text("model = dict(type='Recognizer2D', backbone=dict(type='ResNet'),"
                    " cls_head=dict(type='TSNHead', in_channels=8, num_classes=2))\n")
    with pytest.raises(ConfigError, match="model.type"):
        config.model_section(config.load_config(path))


def test_missing_pipeline_step_is_named(tmp_path):
    path = tmp_path / "nosample.py"
    path.write_text("test_pipeline = [dict(type='DecordInit'), dict(type='ThreeCrop', crop_size=8)]\n"
                    "data = dict(test=dict(ann_file='a', data_prefix='b', pipeline=test_pipeline))\n")
    with pytest.raises(ConfigError, match="SampleFrames"):
        config.clip_geometry(config.load_config(path))


def test_missing_annotations_are_named(tmp_path):
    path = tmp_path / "nodata.py"
    path.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="data.test.ann_file"):
        config.test_annotations(config.load_config(path))


def test_harness_section_and_overrides(tmp_path):
    path = tmp_path / "h.py"
    path.write_text("harness = dict(build=dict(input_dtype='float32', soc_version='Ascend910B'))\n")
    cfg = config.load_config(path)
    options = config.harness_options(cfg, batch=2, opset=None)
    assert (options.build.input_dtype, options.build.soc_version, options.build.batch) == (
        "float32", "Ascend910B", 2)
    assert options.build.opset == config.BuildOptions().opset  # None overrides nothing


@pytest.mark.parametrize("text, key", [
    ("harness = dict(build=dict(bogus=1))", "harness.build.bogus"),
    ("harness = dict(build=dict(input_dtype='float16'))", "harness.build.input_dtype"),
    ("harness = dict(sampling='random')", "harness.sampling"),
])
def test_bad_harness_options_are_named(tmp_path, text, key):
    path = tmp_path / "bad.py"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config.harness_options(config.load_config(path))


def test_mmaction2_1x_layout_is_understood(tmp_path):
    path = tmp_path / "v1.py"
    path.write_text(
        "model = dict(type='Recognizer3D', backbone=dict(type='SwinTransformer3D'),"
        " cls_head=dict(type='I3DHead', in_channels=8, num_classes=2),"
        " data_preprocessor=dict(type='ActionDataPreprocessor', mean=[1, 2, 3], std=[4, 5, 6],"
        " format_shape='NCTHW'))\n"
        "test_pipeline = [dict(type='DecordInit'),"
        " dict(type='SampleFrames', clip_len=4, frame_interval=1, num_clips=2, test_mode=True),"
        " dict(type='DecordDecode'), dict(type='Resize', scale=(-1, 16)),"
        " dict(type='CenterCrop', crop_size=16), dict(type='FormatShape', input_format='NCTHW'),"
        " dict(type='PackActionInputs')]\n"
        "test_dataloader = dict(dataset=dict(type='VideoDataset', ann_file='list.txt',"
        " data_prefix=dict(video='videos'), pipeline=test_pipeline))\n")
    cfg = config.load_config(path)
    assert config.test_annotations(cfg) == ("list.txt", "videos")
    assert config.normalization(cfg).mean == (1.0, 2.0, 3.0)
    assert config.clip_geometry(cfg).views == 2
