"""The embedded demo proves the path: it passes as shipped and fails when a stage is broken.

The demo's classes differ by motion direction, colour and position, so reversing the
frames, swapping the colour channels or displacing the crops must sink its accuracy
below its own bar (and its exit status to 1). Each broken stage is simulated by
wrapping the decoder's output; the rest of the path is the real one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from harness import demo, run
from harness.data.decode import ViewDecoder

RUNNING_MD = (Path(__file__).resolve().parents[1] / "docs" / "running.md").read_text()


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


def test_demo_passes_on_ray_with_two_cpu_actors(demo_env, capfd):
    code, summary = _run_demo(demo_env, "ray")
    out, err = capfd.readouterr()       # (capfd: Ray's own logger writes to the process's stderr)
    assert code == 0, out
    # one short line names the harness's own instance and its dashboard; no notice from Ray
    ray_line = next(line for line in err.splitlines() if line.startswith("Ray: "))
    # (the GCS host is 127.0.0.1 only when the harness imported Ray first: in this pytest
    # process another test may have; test_first_contact checks loopback in a fresh process)
    assert re.fullmatch(r'Ray: local instance at [\w.]+:\d+, dashboard http://127\.0\.0\.1:\d+'
                        r' \(token auth: docs/running\.md\)',
                        ray_line), ray_line
    assert "## Ray, the dashboard and token authentication" in RUNNING_MD   # where it points
    assert "Token authentication is enabled" not in err and "auth_token" not in err
    assert "pipeline efficiency" in out and "(below 1, the devices waited for decoded clips" in out
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


def test_the_demo_configs_reports_name_the_classes(demo_env):
    """The demo's model names its classes (its config's harness.label_map), so a report of its
    config shows names, not 0..7, with or without --demo."""
    dataset = demo.make_demo_dataset(train=False)
    names = dataset.label_map.read_text().split("\n")[:demo.CLASSES]
    work = demo_env / "by-hand"
    assert run.main(["--config", str(demo.DEMO_CONFIG), "--checkpoint", str(demo.DEMO_CHECKPOINT),
                     "--ann-file", str(dataset.val_list), "--data-prefix", str(dataset.videos),
                     "--cpus", "1", "--no-ray", "--no-progress", "--subset", str(demo.CLASSES),
                     "--work-dir", str(work), "--build-dir", str(demo_env / "build")]) == 0
    page = (work / "report.html").read_text()
    chart = page.split("<h2>Per-class top-1 accuracy</h2>")[1].split("<h2>")[0]
    assert sorted(re.findall(r'text-anchor="end">(.*?)</text>', chart)) == sorted(names)


def test_unbroken_no_ray_run_passes_too(demo_env):
    """The control for the breakage tests: same in-process path, nothing broken."""
    code, summary = _run_demo(demo_env, "no-ray", "--no-ray", "--bench-loops", "1")
    assert code == 0 and summary["top1"] >= demo.MIN_TOP1


def test_shipped_checkpoint_is_small_and_loads_weights_only():
    import torch

    assert demo.DEMO_CHECKPOINT.stat().st_size <= 5 * 2**20
    state = torch.load(demo.DEMO_CHECKPOINT, weights_only=True)
    assert set(state) >= {"state_dict"}


def test_an_interrupted_demo_says_it_starts_over_instead_of_a_resume_command(demo_env, monkeypatch,
                                                                              capsys):
    # issue 19, item 16: the demo replaces its results on every run, so a resume command
    # would start over anyway; what it prints says so
    import os
    import signal

    sent = []

    def ctrl_c_once(result):
        if not sent:
            sent.append(result.index)
            os.kill(os.getpid(), signal.SIGINT)      # the run's own handler takes it

    whole = run.execute
    monkeypatch.setattr(run, "execute", lambda args: whole(args, ctrl_c_once))
    code = run.main(["--demo", "--no-progress", "--no-ray", "--work-dir", str(demo_env / "stop"),
                     "--build-dir", str(demo_env / "build")])
    err = capsys.readouterr().err
    assert code == 130, err
    assert (f"interrupted: 1 of {demo.CLASSES * demo.VAL_PER_CLASS} videos recorded; the demo starts"
            " over on its next run") in err
    assert "resume with" not in err
