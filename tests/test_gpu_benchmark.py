"""benchmarks/gpu.py: its code path on CPU with the tiny model, its model dicts, its imports."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu  # benchmarks/gpu.py

# A Python that cannot import Ray, mmengine (or onnxruntime): what a bare GPU host may have.
BLOCKED = ("ray", "mmengine", "mmcv", "mmaction", "onnxruntime")
WITHOUT = f"""
import sys, runpy
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {BLOCKED!r}:
            raise ImportError('blocked for this test: ' + name)
sys.meta_path.insert(0, Block())
sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]
try:
    runpy.run_path({str(SCRIPT)!r}, run_name='__main__')
finally:
    loaded = sorted(m for m in sys.modules if m.split('.')[0] in {BLOCKED!r})
    print('BLOCKED_LOADED', loaded)
"""


@pytest.mark.parametrize("name", sorted(gpu.MODELS))
def test_model_dicts_match_the_config_files(name):
    file, model, views, view_shape = gpu.MODELS[name]
    cfg = config.load_config(REPO / "configs" / file)
    assert json.loads(json.dumps(model)) == json.loads(json.dumps(config.model_section(cfg)))
    geometry = config.clip_geometry(cfg)
    assert (views, view_shape) == (geometry.views, geometry.view_shape())
    norm = config.normalization(cfg)
    assert (tuple(gpu.NORM["mean"]), tuple(gpu.NORM["std"]), gpu.NORM["to_bgr"]) == \
        (norm.mean, norm.std, norm.to_bgr)
    if name == "small":
        assert json.loads(json.dumps(gpu.SMALL_PIPELINE)) == \
            json.loads(json.dumps(config.test_pipeline(cfg)))


def test_runs_on_cpu_with_the_tiny_model_and_without_ray(tmp_path):
    out = tmp_path / "gpu.json"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", WITHOUT, "--model", "tiny", "--device", "cpu", "--batches", "1", "2",
         "--precisions", "fp32", "bf16", "--seconds", "0.2", "--min-calls", "2", "--warmup", "0",
         "--threads", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "BLOCKED_LOADED []" in proc.stdout
    assert "machine: " in proc.stdout and "torch " in proc.stdout     # the machine is named
    assert "| videos/s |" in proc.stdout                               # the table
    result = json.loads(out.read_text())
    assert result["machine"]["torch"] and result["machine"]["gpu"] is None
    rows = result["rows"]
    assert [(r["batch"], r["precision"]) for r in rows] == [(1, "fp32"), (1, "bf16"), (2, "fp32"), (2, "bf16")]
    for row in rows:
        assert not row.get("error"), row
        assert row["videos_per_s"] > 0 and row["calls"] >= 2
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["input"] == "uint8" and row["compile"] is False
        if row["precision"] == "fp32":
            assert row["max_dprob"] == 0.0 and row["top1_agree"] == 1.0
        else:
            assert 0 < row["max_dprob"] < 1e-2
    print(f"benchmarks/gpu.py tiny on CPU: {seconds:.1f} s")
    assert seconds < 60


def test_reduced_precision_is_compared_with_fp32_even_when_fp32_is_not_listed(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--model", "tiny", "--device", "cpu", "--batches", "1", "--precisions", "bf16",
                     "--inputs", "float32", "--seconds", "0", "--min-calls", "1", "--warmup", "0",
                     "--threads", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["precision"], row["input"]) == ("bf16", "float32")
    assert 0 < row["max_dprob"] < 1e-2


def test_decode_part_is_optional(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)    # import decord -> ImportError
    monkeypatch.setitem(sys.modules, "av", None)
    args = gpu.parse_args(["--decode", "--decode-dir", str(tmp_path)])
    assert gpu.decode_bench(args) == {"skipped": "neither decord nor PyAV is installed"}
