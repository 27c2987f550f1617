"""The embedded demo proves the path: it passes as shipped and fails when a stage is broken.

The demo's classes differ by motion direction, colour and position, so reversing the
frames, swapping the colour channels or displacing the crops must sink its accuracy
below its own bar (and its exit status to 1). Each broken stage is simulated by
wrapping the decoder's output; the rest of the path is the real one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import demo, run
from harness.data.decode import ViewDecoder


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    mp = pytest.MonkeyPatch()
    mp.setenv("HARNESS_CACHE_DIR", str(root / "cache"))
    yield root
    mp.undo()


def _run_demo(root, name: str, *extra: str) -> tuple[int, dict]:
    work = root / name
    code = run.main(["--demo", "--no-progress", "--work-dir", str(work),
                     "--build-dir", str(root / "build"), *extra])
    return code, json.loads((work / "summary.json").read_text())


def test_demo_passes_on_ray_with_two_cpu_actors(demo_env, capsys):
    code, summary = _run_demo(demo_env, "ray")
    out = capsys.readouterr().out
    assert code == 0, out
    assert summary["top1"] >= demo.MIN_TOP1
    assert summary["videos_ok"] == demo.CLASSES * demo.VAL_PER_CLASS >= 100
    assert {d["id"] for d in summary["devices"]} == {"0", "1"}  # both CPU actors worked
    assert summary["bench"]["pipeline_efficiency"] > 0
    assert "demo: PASSED" in out and "pipeline efficiency" in out
    assert (demo_env / "ray" / "report.html").exists()


def _broken(monkeypatch, damage):
    original = ViewDecoder.decode       # (what decode workers call; __call__ goes through it)

    def decode(self, path):
        views, info = original(self, path)
        return np.ascontiguousarray(damage(views)), info

    monkeypatch.setattr(ViewDecoder, "decode", decode)


BREAKAGES = {
    # views are (V, 3, T, H, W)
    "frames reversed": lambda v: v[:, :, ::-1],
    "channels swapped": lambda v: v[:, ::-1],
    # crop windows a quarter crop off to the side (content wraps around)
    "crops shifted": lambda v: np.roll(v, v.shape[-1] // 4, axis=-1),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_demo_fails_its_check_when_a_stage_is_broken(demo_env, monkeypatch, capsys, breakage):
    _broken(monkeypatch, BREAKAGES[breakage])
    code, summary = _run_demo(demo_env, breakage.replace(" ", "-"), "--no-ray", "--bench-loops", "1")
    assert code == 1
    assert summary["top1"] < demo.MIN_TOP1 - 0.2, summary["top1"]
    assert "demo: FAILED" in capsys.readouterr().out


def test_unbroken_no_ray_run_passes_too(demo_env):
    """The control for the breakage tests: same in-process path, nothing broken."""
    code, summary = _run_demo(demo_env, "no-ray", "--no-ray", "--bench-loops", "1")
    assert code == 0 and summary["top1"] >= demo.MIN_TOP1


def test_shipped_checkpoint_is_small_and_loads_weights_only():
    import torch

    assert demo.DEMO_CHECKPOINT.stat().st_size <= 5 * 2**20
    state = torch.load(demo.DEMO_CHECKPOINT, weights_only=True)
    assert set(state) >= {"state_dict"}
