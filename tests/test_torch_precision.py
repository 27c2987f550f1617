"""The torch session's options on CPU: precision (autocast), uint8 input, batch, compile.

Tolerances (tiny config, 8 classes, random weights of scale 0.2 so logits spread):
- bf16 / fp16 autocast vs fp32: max |Δprob| over views and classes < 1e-2 (the precision
  audit's default), not identical (measured here: bf16 8e-4, fp16 2e-4);
- uint8 input normalized on the device vs host normalization: logits within 1e-5;
- batch 2 vs two batch-1 calls: logits within 1e-5.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.backends import ModelSpec
from harness.backends.torch_backend import TorchSession
from harness.config import load_config, model_section
from harness.errors import ConfigError, DeviceError
from harness.model import build
from harness.stages import InferenceActor

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "swin_tiny_test.py"
PROB_TOL = 1e-2   # the precision audit's default max |Δprob| (harness.run.audit_max_prob_diff)


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> ModelSpec:
    torch.set_num_threads(1)
    cfg = load_config(TINY)
    net = build(model_section(cfg))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():  # default inits leave biases 0 and logits near uniform
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    path = tmp_path_factory.mktemp("torch_precision") / "tiny.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    return ModelSpec.from_checkpoint(cfg, path)


@pytest.fixture(scope="module")
def videos(spec) -> np.ndarray:
    """Two videos of uint8 views ``(2, V, 3, T, H, W)``."""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(2, spec.views_per_video, *spec.view_shape), dtype=np.uint8)


@pytest.fixture(scope="module")
def fp32(spec) -> TorchSession:
    return TorchSession(spec, "cpu")


def host(spec: ModelSpec, u8: np.ndarray) -> np.ndarray:
    """What InferenceActor._prepare gives a float32 session."""
    return spec.norm.apply(u8, channel_axis=2).astype(np.float32)


def test_defaults_keep_the_float32_one_video_contract(spec, fp32, videos):
    assert fp32.input_shape == (1, spec.views_per_video, *spec.view_shape)
    assert fp32.input_dtype == np.float32
    assert fp32.precision == fp32.effective_precision == "fp32"
    out = fp32.run(host(spec, videos[:1]))
    assert out.shape == (spec.views_per_video, spec.num_classes) and out.dtype == np.float32
    with pytest.raises(ValueError, match="float32.*uint8_input=True"):
        fp32.run(videos[:1])                     # un-normalized uint8 would be silently wrong
    with pytest.raises(ValueError, match="shape"):
        fp32.run(host(spec, videos))             # 2 videos to a batch-1 session


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_on_cpu_is_close_to_fp32_but_not_identical(spec, fp32, videos, precision):
    # torch 2.13's CPU autocast takes float16 as well as bfloat16.
    reduced = TorchSession(spec, "cpu", precision=precision)
    x = host(spec, videos[:1])
    a, b = fp32.run(x), reduced.run(x)
    assert b.dtype == np.float32 and b.shape == a.shape and np.isfinite(b).all()
    assert not np.array_equal(a, b), f"{precision} autocast changed nothing: not active?"
    diff = np.abs(softmax(a) - softmax(b)).max()
    assert diff < PROB_TOL, f"{precision}: max |Δprob| {diff:.3g}"
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.8


def test_tf32_on_cpu_is_fp32(spec, fp32, videos):
    tf32 = TorchSession(spec, "cpu", precision="tf32")
    assert tf32.precision == "tf32" and tf32.effective_precision == "fp32"
    x = host(spec, videos[:1])
    np.testing.assert_array_equal(tf32.run(x), fp32.run(x))


@pytest.mark.parametrize("to_bgr", [False, True])
def test_uint8_input_normalized_on_the_device_equals_host_normalization(spec, videos, to_bgr):
    spec = dataclasses.replace(spec, norm=dataclasses.replace(spec.norm, to_bgr=to_bgr))
    f32 = TorchSession(spec, "cpu")
    u8 = TorchSession(spec, "cpu", uint8_input=True)
    assert u8.input_dtype == np.uint8 and u8.input_shape == f32.input_shape
    np.testing.assert_allclose(u8.run(videos[:1]), f32.run(host(spec, videos[:1])), atol=1e-5, rtol=0)


def test_uint8_input_through_the_inference_actor(spec, fp32, videos):
    """The actor passes uint8 views through to a uint8 session (no host normalization)."""
    u8 = InferenceActor(spec, "cpu", metrics=False,
                        session=TorchSession(spec, "cpu", uint8_input=True))
    host_actor = InferenceActor(spec, "cpu", metrics=False, session=fp32)
    np.testing.assert_allclose(u8.logits(videos[0]), host_actor.logits(videos[0]), atol=1e-5, rtol=0)


def test_batch_of_two_videos_equals_two_single_calls(spec, fp32, videos):
    b2 = TorchSession(spec, "cpu", batch=2)
    assert b2.input_shape == (2, spec.views_per_video, *spec.view_shape)
    x = host(spec, videos)
    both = b2.run(x)
    assert both.shape == (2 * spec.views_per_video, spec.num_classes)
    singles = np.concatenate([fp32.run(x[:1]), fp32.run(x[1:])])
    np.testing.assert_allclose(both, singles, atol=1e-5, rtol=0)
    np.testing.assert_allclose(b2.run(x[:1]), singles[:spec.views_per_video], atol=1e-5, rtol=0)


def test_bad_options_are_refused(spec):
    with pytest.raises(ConfigError, match="precision 'fp8'.*fp32, tf32, fp16, bf16"):
        TorchSession(spec, "cpu", precision="fp8")
    with pytest.raises(ConfigError, match="batch"):
        TorchSession(spec, "cpu", batch=0)


def test_a_failing_compile_is_a_clear_error(spec, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(DeviceError, match="torch.compile failed on cpu.*no C\\+\\+ compiler"):
        TorchSession(spec, "cpu", compile=True)


@pytest.mark.slow
def test_compiled_session_matches_eager_on_cpu(spec, videos):
    eager = TorchSession(spec, "cpu", precision="bf16", uint8_input=True)
    compiled = TorchSession(spec, "cpu", precision="bf16", uint8_input=True, compile=True)
    a, b = eager.run(videos[:1]), compiled.run(videos[:1])
    assert np.abs(softmax(a) - softmax(b)).max() < PROB_TOL



def test_a_bf16_torch_run_is_audited_against_fp32_by_default(tmp_path_factory, tmp_path):
    from harness.errors import ConfigError
    from harness.run import execute, parse_args
    from pipeline_support import run_args, shared_inputs

    inputs = shared_inputs(tmp_path_factory)
    summary = execute(parse_args(run_args(inputs, tmp_path, "--cpus", "1", "--no-ray", "--backend",
                                          "torch", "--precision", "bf16", ann=inputs.good_list)))
    assert {s["precision"] for s in summary["sessions"]} == {"bf16"}
    audit = summary["audit"]
    assert audit["videos_audited"] == 8 and audit["reference"].startswith("torch fp32")
    assert 0 < audit["max_abs_logit_diff"] and audit["max_abs_prob_diff"] < 1e-2
    with pytest.raises(ConfigError, match="apply to --backend torch"):
        execute(parse_args(run_args(inputs, tmp_path / "x", "--cpus", "1", "--no-ray",
                                    "--precision", "bf16")))
