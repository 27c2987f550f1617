"""The float16 ONNX (``harness.build.onnx_precision='fp16'``, ``--onnx-precision fp16``): made
next to the fp32 ONNX, verified on class probabilities, hashed, run by onnxruntime, and
audited against its fp32 twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import harness.build as hb
from harness import audit
from harness.backends import ModelSpec
from harness.config import load_config
from harness.errors import BuildError
from harness.run import execute, parse_args
from pipeline_support import CONFIG, run_args, shared_inputs

FP16_FILE = "model_fp16.onnx"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


@pytest.fixture(scope="module")
def fp16(inputs, tmp_path_factory):
    build_dir = tmp_path_factory.mktemp("fp16-build")
    return (hb.build_artifact(CONFIG, inputs.checkpoint, build_dir=build_dir),
            hb.build_artifact(CONFIG, inputs.checkpoint, build_dir=build_dir, onnx_precision="fp16"))


def softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z.astype(np.float64) - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def test_the_fp16_onnx_is_float16_verified_and_a_new_artifact(fp16):
    import onnxruntime as ort

    art32, art16 = fp16
    assert art16.directory != art32.directory                       # the hash covers it
    assert art32.manifest["build_options"]["onnx_precision"] == "fp32"   # in every hash
    manifest = art16.manifest
    assert manifest["build_options"]["onnx_precision"] == "fp16" and manifest["onnx_fp16"] == FP16_FILE
    check = manifest["verification"]["fp16"]
    assert 0 < check["max_prob_diff"] <= check["tolerance"] == 0.01
    assert {"LayerNormalization", "Softmax", "ReduceMean"} <= set(check["kept_fp32"])

    model = onnx.load(str(art16.directory / FP16_FILE))
    types = [init.data_type for init in model.graph.initializer]
    assert types.count(onnx.TensorProto.FLOAT16) > types.count(onnx.TensorProto.FLOAT)
    # the contract with the pipeline is unchanged: uint8 views in, float32 logits out
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT

    # independently of the build's check: other pixels, both files through onnxruntime
    pixels = np.random.default_rng(5).integers(0, 256, size=manifest["input"]["shape"], dtype=np.uint8)
    logits = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"video": pixels})[0]
              for path in (art16.directory / "model.onnx", art16.directory / FP16_FILE)]
    diff = np.abs(softmax(logits[0]) - softmax(logits[1])).max()
    assert 0 < diff <= 0.01


def test_a_fp16_onnx_outside_the_tolerance_fails_the_build(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(hb, "FP16_PROB_TOLERANCE", 1e-9)
    with pytest.raises(BuildError, match="float16 ONNX's class probabilities differ"):
        hb.build_artifact(CONFIG, inputs.checkpoint, build_dir=tmp_path / "b", onnx_precision="fp16")
    assert not list((tmp_path / "b").glob("*/manifest.json"))


def test_onnxruntime_runs_the_fp16_file_and_the_audit_its_fp32_twin(fp16):
    art32, art16 = fp16
    spec = ModelSpec.from_artifact(art16.directory, "onnxruntime")
    assert Path(spec.path).name == FP16_FILE and spec.precision == "fp16"
    reference, what = audit.reference_spec(spec)
    assert Path(reference.path).name == "model.onnx" and reference.precision == "fp32" and "fp32" in what
    assert audit.default_videos("onnxruntime", "cpu", spec.precision) > 0   # audited by default
    # a file given by path is run as given
    cfg = load_config(CONFIG)
    assert ModelSpec.from_model_file(art16.directory / "model.onnx", "onnxruntime", cfg).precision == "fp32"
    given = ModelSpec.from_model_file(art16.directory / FP16_FILE, "onnxruntime", cfg)
    assert Path(given.path).name == FP16_FILE and given.precision == "fp16"
    # an fp32 build has no float16 file
    assert Path(ModelSpec.from_artifact(art32.directory, "onnxruntime").path).name == "model.onnx"


def test_a_run_with_onnx_precision_fp16_is_audited_against_fp32(inputs, fp16, tmp_path):
    art32, art16 = fp16
    build_dir = str(art16.directory.parent)
    argv = run_args(inputs, tmp_path / "w", "--cpus", "1", "--no-ray", "--onnx-precision", "fp16",
                    ann=inputs.good_list)
    argv[argv.index("--build-dir") + 1] = build_dir
    summary = execute(parse_args(argv))
    assert summary["artifact"]["model"].endswith(FP16_FILE)
    assert summary["videos_ok"] == summary["videos_total"] == len(inputs.good_list.read_text().splitlines())
    report = summary["audit"]
    assert report["videos_audited"] == summary["videos_total"]   # 16 by default: all of these
    assert "fp32 ONNX" in report["reference"] and report["passed"]
    assert report["top1_agreement"] == 1.0 and 0 < report["max_abs_prob_diff"] <= 0.01
