"""``python -m harness.sweep`` (issue 20): the fastest build that keeps the accuracy.

End to end on the test doubles (tests/doubles): the aclruntime double's per-mode knob
(``FAKE_ACL_MODES``) makes force_fp16 round through float16, allow_mix_precision fast but
biased toward class 0, and must_keep_origin_dtype exact but slow (held execute times of 150,
0 and 450 ms on top of the same onnxruntime call, so the ranking does not hang on the
machine's speed). Expected values come from the doubles' knobs and from the audit pairs read
here with numpy, not from harness.sweep.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from browser_support import assert_not_blank, headless_page, needs_chromium
from harness.run import parse_args
from harness.sweep.cli import main
from harness.sweep.measure import Thresholds, VariantResult, mark_pareto, reasons, recommend
from harness.sweep.variants import cross_product, load_variants, parse_vary
from pipeline_support import CONFIG, DOUBLES, REPO, Gate, worker_pythonpath

MODES = {"force_fp16": {"fp16": True, "exec_ms": 150},
         "allow_mix_precision": {"bias": [0, 8.0], "exec_ms": 0},
         "must_keep_origin_dtype": {"exec_ms": 450}}
VARY = "precision_mode=force_fp16,allow_mix_precision,must_keep_origin_dtype"
KNOWN = ("input_dtype, batch, views_per_call, opset, onnx_precision, precision_mode,"
         " precision_mode_v2, op_precision_mode, op_select_implmode, keep_dtype, modify_mixlist,"
         " precision, torch_compile, uint8_input")
TIMINGS = ("videos_per_s", "ais_bench_videos_per_s", "end_to_end_videos_per_s")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """8 synthetic videos (4 classes), a random-weight checkpoint, the ATC double, the modes."""
    import torch

    from harness import model as swin
    from harness.config import load_config, model_section
    from harness.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("sweep-inputs")
    data = make_dataset(root / "data", classes=4, per_class=2, seed=0, profile="tiny")
    torch.manual_seed(0)
    net = swin.build(model_section(load_config(CONFIG)))
    torch.save({"state_dict": net.state_dict()}, root / "tiny.pth")
    atc = root / "bin" / "atc"
    atc.parent.mkdir()
    shutil.copy(DOUBLES / "atc", atc)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR)
    (root / "modes.json").write_text(json.dumps(MODES))
    env = {"PATH": f"{atc.parent}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": worker_pythonpath(),
           "FAKE_ACL_MODES": str(root / "modes.json")}
    return {"root": root, "videos": data.videos, "list": data.val_list, "ckpt": root / "tiny.pth",
            "build": root / "build", "env": env}


@pytest.fixture(scope="module")
def doubles_env(tiny):
    with pytest.MonkeyPatch.context() as mp:
        for name in ("FAKE_ACL_SOC", "FAKE_ACL_BINDING", "FAKE_ACL_PERTURB", "FAKE_ACL_EXEC_MS",
                     "ASCEND_RT_VISIBLE_DEVICES", "RAY_ADDRESS"):
            mp.delenv(name, raising=False)
        for name, value in tiny["env"].items():
            mp.setenv(name, value)
        mp.syspath_prepend(str(DOUBLES))        # import aclruntime (the double) in this process
        yield


def sweep_args(tiny, work: Path, *extra: str, ann: Path | None = None) -> list[str]:
    return ["--config", str(CONFIG), "--checkpoint", str(tiny["ckpt"]), "--build-dir",
            str(tiny["build"]), "--ann-file", str(ann or tiny["list"]), "--data-prefix",
            str(tiny["videos"]), "--work-dir", str(work), "--no-progress", "--bench-loops", "3",
            *extra]


def reference_top1(work: Path) -> dict[int, int]:
    """The fp32 reference's top-1 of each audited video, by numpy from audit.parquet: the mean
    over views of the softmax."""
    import pyarrow.parquet as pq

    out = {}
    for row in pq.read_table(work / "audit.parquet").to_pylist():
        logits = np.asarray(row["reference_logits"], np.float64).reshape(row["views"], -1)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        out[row["index"]] = int(np.argmax((probs / probs.sum(axis=1, keepdims=True)).mean(axis=0)))
    return out


@pytest.fixture(scope="module")
def three_modes(tiny, doubles_env, tmp_path_factory):
    """One sweep over the three modes, in this process (--no-ray: the fast oracle)."""
    work = tmp_path_factory.mktemp("sweep") / "three"
    out, err = _capture(lambda: main(sweep_args(tiny, work, "--npus", "1", "--no-ray", "--vary", VARY)))
    return {"code": out[0], "out": out[1], "err": err, "work": work,
            "doc": json.loads((work / "sweep.json").read_text())}


def _capture(fn):
    """(fn's return value and stdout, stderr), through pytest's capsys-free pipes."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fn()
    return (code, out.getvalue()), err.getvalue()


def by_name(doc: dict) -> dict[str, dict]:
    return {v["options"]["precision_mode"]: v for v in doc["variants"]}


# ------------------------------------------------------------------ the three modes

def test_the_sweep_measures_every_mode_and_fails_the_biased_one(three_modes):
    assert three_modes["code"] == 0, three_modes["err"]
    got = by_name(three_modes["doc"])
    assert set(got) == set(MODES)
    for v in got.values():      # 8 videos, every one audited, a device speed for each
        assert (v["status"], v["videos"], v["audited"]) == ("measured", 8, 8)
        assert v["videos_per_s"] > 0 and v["ais_bench_videos_per_s"] > 0
    # the bias makes every video class 0: agreement = the share the reference calls class 0
    reference = reference_top1(Path(got["allow_mix_precision"]["work_dir"]))
    agreement = sum(c == 0 for c in reference.values()) / len(reference)
    biased = got["allow_mix_precision"]
    assert biased["passed"] is False and biased["top1_agreement"] == agreement
    assert f"top-1 agreement {agreement:.3g} < 0.99" in biased["why_failed"]
    assert f"why: top-1 agreement {agreement:.3g} < 0.99" in three_modes["out"]
    # force_fp16 rounds (a small |Δprob|), must_keep_origin_dtype is exact: both pass
    assert 0 < got["force_fp16"]["max_abs_prob_diff"] < 0.01 and got["force_fp16"]["passed"]
    assert got["must_keep_origin_dtype"]["max_abs_prob_diff"] == 0
    assert got["must_keep_origin_dtype"]["top1_agreement"] == 1.0
    assert got["must_keep_origin_dtype"]["passed"]


def test_the_table_ranks_by_speed_and_recommends_the_fastest_that_passes(three_modes, tiny):
    lines = three_modes["out"].splitlines()
    rows = [line.split()[0] for line in lines if line.startswith("precision_mode=")]
    # held execute: allow_mix 0 ms < force_fp16 150 ms < must_keep 450 ms (the knob's values)
    assert rows == ["precision_mode=allow_mix_precision", "precision_mode=force_fp16",
                    "precision_mode=must_keep_origin_dtype"]
    recommended = three_modes["doc"]["recommended"]
    assert recommended["name"] == "precision_mode=force_fp16"
    line = next(line for line in lines if line.startswith("recommended: "))
    assert line.startswith("recommended: precision_mode=force_fp16 (")
    # the command, read back by harness.run: the base options and the variant's, not the sweep's
    argv = shlex.split(line.split("): ", 1)[1])
    assert argv[:3] == ["python", "-m", "harness.run"] and argv[3:] == shlex.split(recommended["command"])[3:]
    got = parse_args(argv[3:])
    assert (got.precision_mode, got.checkpoint, got.build_dir, got.npus, got.no_ray) == (
        "force_fp16", str(tiny["ckpt"]), str(tiny["build"]), 1, True)
    assert (got.ann_file, got.data_prefix) == (str(tiny["list"]), str(tiny["videos"]))
    assert (got.subset, got.work_dir, got.audit, got.bench_loops) == (None, None, None, 0)
    assert "warning: SIMULATED DEVICES" in three_modes["err"]


def test_each_variant_is_a_run_that_compare_reads(three_modes, capsys):
    from harness import compare

    dirs = [Path(v["work_dir"]) for v in three_modes["doc"]["variants"]]
    assert [d.name for d in dirs] == ["precision_mode-force_fp16", "precision_mode-allow_mix_precision",
                                      "precision_mode-must_keep_origin_dtype"]
    assert all((d / "report.html").is_file() and (d / "summary.json").is_file() for d in dirs)
    assert compare.main([str(dirs[0]), str(dirs[2])]) == 0
    assert "McNemar exact p" in capsys.readouterr().out


def test_a_second_sweep_rebuilds_nothing_on_one_ray_instance(three_modes, tiny, doubles_env,
                                                            tmp_path, monkeypatch):
    import ray

    def builds() -> dict:
        return {p.parent.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                for p in tiny["build"].glob("*/model.om")}

    from harness import build

    starts, built = [], []
    real_init, real_build = ray.init, build._build_into
    monkeypatch.setattr(ray, "init", lambda *a, **k: starts.append(k) or real_init(*a, **k))
    monkeypatch.setattr(build, "_build_into", lambda *a, **k: built.append(a) or real_build(*a, **k))
    before = builds()
    (code, out), err = _capture(lambda: main(sweep_args(tiny, tmp_path, "--npus", "1", "--resources",
                                                        '{"NPU": 1}', "--vary", VARY)))
    assert code == 0, err
    assert built == [] and builds() == before and len(before) == 3
    assert len(starts) == 1 and not ray.is_initialized()   # one instance for all, stopped after
    assert "recommended: precision_mode=force_fp16 (" in out
    again = {v["options"]["precision_mode"]: v["artifact_hash"]
             for v in json.loads((tmp_path / "sweep.json").read_text())["variants"]}
    assert again == {k: v["artifact_hash"] for k, v in by_name(three_modes["doc"]).items()}


@needs_chromium
def test_sweep_html_renders_in_headless_chromium(three_modes, tmp_path):
    page_file = three_modes["work"] / "sweep.html"
    text = page_file.read_text()
    assert "<script" not in text and "http" not in text    # self-contained
    with headless_page(page_file, width=1200) as (page, problems):
        assert page.title() == "Build-option sweep"
        assert page.locator("table.variants tr").count() == 4          # header + 3 variants
        assert page.locator("svg.chart circle[r='6']").count() == 3     # one point a variant
        assert page.locator("svg.chart polyline.pareto").count() == 1
        assert "Recommended: precision_mode=force_fp16" in page.inner_text("body")
        shot = page.screenshot(full_page=True, path=str(tmp_path / "sweep.png"))
    assert problems == []
    assert_not_blank(shot)


# ------------------------------------------------------------------ refusals

@pytest.mark.parametrize("extra, message", [
    (["--npus", "1", "--vary", "precisionmode=force_fp16"],
     f"error: 'precisionmode' is not an option a sweep can vary; the known keys are: {KNOWN}\n"),
    (["--cpus", "1", "--vary", "precision_mode=force_fp16,force_fp32"],
     "error: precision_mode cannot vary with --backend onnxruntime: an ATC option, only the om"
     " backend (--npus) uses it; with onnxruntime vary: input_dtype, batch, views_per_call, opset,"
     " onnx_precision\n"),
    (["--npus", "1", "--vary", "onnx_precision=fp32,fp16"],
     "error: onnx_precision cannot vary with --backend om: the .om is compiled from the fp32 ONNX,"
     " so it changes nothing there; with om vary: input_dtype, batch, views_per_call, opset,"
     " precision_mode, precision_mode_v2, op_precision_mode, op_select_implmode, keep_dtype,"
     " modify_mixlist\n"),
    (["--npus", "1", "--precision-mode", "force_fp16", "--vary", "precision_mode=force_fp32"],
     "error: precision_mode is both given as --precision-mode and varied: drop one of them\n"),
    (["--npus", "1", "--vary", "soc_version=Ascend310P3,Ascend910B"],
     "error: soc_version names the chips' type, not a choice to compare (an .om runs only on its"
     " chip type): give it once as --soc-version\n"),
    (["--npus", "1", "--vary", "batch=1,zero"],
     "error: batch='zero': 'zero' is not an integer\n"),
])
def test_a_key_the_sweep_cannot_vary_is_refused_up_front(tiny, tmp_path, extra, message):
    (code, out), err = _capture(lambda: main(sweep_args(tiny, tmp_path, *extra)))
    assert (code, err, out) == (2, message, "")
    assert not (tmp_path / "sweep.json").exists()


# ------------------------------------------------------------------ the pieces

def test_vary_makes_the_cross_product_in_the_order_given():
    variants = cross_product(parse_vary(["precision_mode=force_fp16,must_keep_origin_dtype",
                                         "batch=1,2"]))
    assert [v.options for v in variants] == [
        {"precision_mode": "force_fp16", "batch": 1}, {"precision_mode": "force_fp16", "batch": 2},
        {"precision_mode": "must_keep_origin_dtype", "batch": 1},
        {"precision_mode": "must_keep_origin_dtype", "batch": 2}]
    assert variants[1].slug == "precision_mode-force_fp16_batch-2"
    assert variants[1].flags() == ["--precision-mode", "force_fp16", "--batch", "2"]


def test_named_variants_from_yaml(tmp_path):
    path = tmp_path / "v.yaml"
    path.write_text("- name: eager fp16\n  options: {precision: fp16}\n"
                    "- name: compiled bf16\n  options: {precision: bf16, torch_compile: true}\n")
    got = load_variants(path)
    assert [(v.name, v.slug, v.flags()) for v in got] == [
        ("eager fp16", "eager_fp16", ["--precision", "fp16"]),
        ("compiled bf16", "compiled_bf16", ["--precision", "bf16", "--torch-compile"])]


def _result(name, speed, agreement, **kw) -> VariantResult:
    return VariantResult(name, name, {}, "", "", videos_per_s=speed, top1_agreement=agreement, **kw)


def test_pareto_front_and_recommendation_by_hand():
    # a: fast, bad; b: middle, good; c: slow, as good as b (dominated); d: slower, perfect
    rs = [_result("a", 9.0, 0.1), _result("b", 5.0, 0.99, passed=True),
          _result("c", 4.0, 0.99, passed=True), _result("d", 1.0, 1.0, passed=True)]
    mark_pareto(rs)
    assert [r.pareto for r in rs] == [True, True, False, True]
    assert recommend(rs).name == "b"
    assert recommend([rs[0]]) is None


def test_why_a_variant_fails_in_its_words():
    r = _result("x", 2.0, 0.5, max_abs_prob_diff=0.25)
    ref = type("R", (), {"right_only_reference": 9, "right_only_variant": 0, "p_value": 0.0039})
    # McNemar exact with b=0, c=9: 2 * 0.5^9 = 0.0039
    got = reasons(r, {}, ref, Thresholds(0.99, 0.01, 0.05))
    assert got == ["top-1 agreement 0.5 < 0.99", "max |Δprob| 0.25 > 0.01",
                   "less accurate than the fp32 reference: McNemar p 0.0039 < 0.05 (9 videos right"
                   " only under the reference, 0 only under this)"]


# ------------------------------------------------------------------ onnxruntime on a CPU

def test_the_fp32_and_fp16_onnx_pair_on_a_cpu(tiny, doubles_env, tmp_path):
    (code, out), err = _capture(lambda: main(sweep_args(tiny, tmp_path, "--cpus", "1", "--no-ray",
                                                        "--vary", "onnx_precision=fp32,fp16")))
    doc = json.loads((tmp_path / "sweep.json").read_text())
    got = {v["options"]["onnx_precision"]: v for v in doc["variants"]}
    assert code == 0, err
    # fp32 on a CPU is its own reference; fp16 is audited against its build's fp32 ONNX
    assert got["fp32"]["top1_agreement"] == 1.0 and got["fp32"]["max_abs_prob_diff"] == 0
    assert "fp32 ONNX" in got["fp16"]["audit_reference"] and 0 < got["fp16"]["max_abs_prob_diff"]
    assert all(v["audited"] == 8 and v["videos_per_s"] > 0 for v in got.values())
    fastest = max((v for v in got.values() if v["passed"]), key=lambda v: v["videos_per_s"])
    assert doc["recommended"]["name"] == fastest["name"]
    assert f"recommended: {fastest['name']} (" in out


# ------------------------------------------------------------------ resume

def _wait_for_reader(fifo: Path, timeout: float = 300.0) -> int:
    """Open ``fifo`` for writing: returns (the write end) once a reader has it open, i.e. once
    the sweep's decoder is blocked at the gate."""
    box: dict = {}
    opener = threading.Thread(target=lambda: box.setdefault("fd", os.open(fifo, os.O_WRONLY)),
                              daemon=True)
    opener.start()
    opener.join(timeout)
    if opener.is_alive():
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))    # let our opener go
        pytest.fail(f"nobody opened {fifo} within {timeout} s")
    return box["fd"]


def _without_timings(doc: dict) -> dict:
    """sweep.json less what depends on the clock or the work dir's name."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in (*TIMINGS, "work_dir")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    out = strip(doc)
    out["sweep"].pop("command")
    return out


def _gated(tiny, tmp_path: Path):
    """(list, data prefix, gate): 3 videos, a gate (a FIFO: its reader waits for the test), 2
    more; the sweep's --limit 6 keeps that order."""
    folder = tmp_path / "videos"
    folder.mkdir()
    good = [line for line in tiny["list"].read_text().splitlines() if line.strip()]
    for top in {Path(line.split()[0]).parts[0] for line in good}:
        (folder / top).symlink_to(tiny["videos"] / top, target_is_directory=True)
    first, label = good[0].split()
    gate = Gate(folder / "gate.mp4", tiny["videos"] / first)
    ann = tmp_path / "gated.txt"
    ann.write_text("\n".join(good[:3] + [f"gate.mp4 {label}"] + good[3:5]) + "\n")
    return ann, folder, gate


def _start(tiny, argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:     # (the child keeps its own copy of the handle)
        return subprocess.Popen([sys.executable, "-m", "harness.sweep", *argv], cwd=REPO,
                                env={**os.environ, **tiny["env"], "PYTHONPATH": worker_pythonpath()},
                                stdout=out, stderr=subprocess.STDOUT)


def test_a_killed_sweep_resumes_to_the_same_sweep_json(tiny, doubles_env, tmp_path):
    # Variant 1 passes the gate when released; variant 2 waits there and is killed.
    ann, folder, gate = _gated(tiny, tmp_path)

    def argv(work: Path) -> list[str]:
        args = sweep_args(tiny, work, "--npus", "1", "--no-ray", "--limit", "6", "--flush-every",
                          "1", "--vary", "precision_mode=force_fp16,must_keep_origin_dtype", ann=ann)
        args[args.index("--data-prefix") + 1] = str(folder)
        return args

    work = tmp_path / "killed"
    sweep = _start(tiny, argv(work), tmp_path / "killed.log")
    try:
        gate.release(timeout=300)            # variant 1 reads the gate and finishes
        first_summary = work / "precision_mode-force_fp16" / "summary.json"
        # (variant 1's reader may hold the FIFO a moment after the release, and a writer's open
        # succeeds while any reader has it: wait for variant 1's end before waiting for 2's)
        deadline = 300.0
        while not first_summary.is_file():
            assert sweep.poll() is None and deadline > 0, (tmp_path / "killed.log").read_text()
            deadline -= 0.1
            threading.Event().wait(0.1)
        fd = _wait_for_reader(gate.path)     # variant 2 is at the gate: 3 videos recorded
        kept_at = first_summary.stat().st_mtime_ns
        sweep.send_signal(signal.SIGKILL)
        sweep.wait(60)
        os.close(fd)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(60)
    partial = json.loads((work / "sweep.json").read_text())
    assert [v["status"] for v in partial["variants"]] == ["measured", "pending"]
    gate.replace()

    (code, out), err = _capture(lambda: main(argv(work)))
    assert code == 0, err
    assert "variant precision_mode=force_fp16: kept (finished earlier)" in err
    assert "variant precision_mode=must_keep_origin_dtype: measured" in err
    assert first_summary.stat().st_mtime_ns == kept_at                   # not run again
    second = json.loads((work / "precision_mode-must_keep_origin_dtype" / "summary.json").read_text())
    assert (second["videos_total"], second["videos_this_run"]) == (6, 3)  # resumed at the gate

    (code, _), err = _capture(lambda: main(argv(tmp_path / "whole")))     # never interrupted
    assert code == 0, err
    resumed = json.loads((work / "sweep.json").read_text())
    whole = json.loads((tmp_path / "whole" / "sweep.json").read_text())
    assert resumed["sweep"]["complete"] and _without_timings(resumed) == _without_timings(whole)


def test_a_variant_that_does_not_build_says_why_and_the_others_go_on(tiny, doubles_env, tmp_path):
    # an ATC that refuses one mode (as a real ATC may refuse an option on a chip), else the double
    atc = tmp_path / "atc"
    atc.write_text(f"#!/bin/sh\ncase \"$*\" in *precision_mode=force_fp32*)\n"
                   f"  echo 'E10001: force_fp32 refused (test)' >&2; exit 1;;\nesac\n"
                   f"exec {sys.executable} {tiny['root'] / 'bin' / 'atc'} \"$@\"\n")
    atc.chmod(0o755)
    (code, out), err = _capture(lambda: main(sweep_args(
        tiny, tmp_path / "w", "--npus", "1", "--no-ray", "--atc", str(atc),
        "--vary", "precision_mode=force_fp32,force_fp16")))
    assert code == 0, err
    why = next(line.strip() for line in out.splitlines() if "why: build failed: " in line)
    assert why.startswith("why: build failed: ATC failed at opset 17 and again at the guide's opset 11")
    assert "variant precision_mode=force_fp32: build failed" in err
    assert "recommended: precision_mode=force_fp16 (" in out
    failed = json.loads((tmp_path / "w" / "sweep.json").read_text())["variants"][0]
    assert (failed["status"], failed["passed"], failed["videos_per_s"]) == ("build failed", False, None)


def test_ctrl_c_finishes_the_video_in_flight_and_says_how_to_resume(tiny, doubles_env, tmp_path):
    ann, folder, gate = _gated(tiny, tmp_path)
    argv = sweep_args(tiny, tmp_path / "w", "--npus", "1", "--no-ray", "--limit", "6", "--vary",
                      "precision_mode=force_fp16,must_keep_origin_dtype", ann=ann)
    argv[argv.index("--data-prefix") + 1] = str(folder)
    log = tmp_path / "sweep.log"
    sweep = _start(tiny, argv, log)
    try:
        fd = _wait_for_reader(gate.path)         # variant 1 is reading the gate
        sweep.send_signal(signal.SIGINT)
        deadline = 300.0
        while "interrupted: starting no new video" not in log.read_text():   # the handler ran
            assert sweep.poll() is None and deadline > 0, log.read_text()
            deadline -= 0.1
            threading.Event().wait(0.1)
        os.write(fd, gate.video.read_bytes())     # the video in flight decodes and is recorded
        os.close(fd)
        code = sweep.wait(300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait(60)
    out = log.read_text()
    assert code == 130, out
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()
            if line.startswith("precision_mode=")}
    assert rows == {"precision_mode=force_fp16": "interrupted",
                    "precision_mode=must_keep_origin_dtype": "pending"}
    assert "why: interrupted: resume the sweep to finish it" in out
    assert f"interrupted: resume with: python -m harness.sweep {shlex.join(argv)}" in out
    summary = json.loads((tmp_path / "w" / "precision_mode-force_fp16" / "summary.json").read_text())
    # 3, then the gate's video, of the 6 --limit chose
    assert (summary["interrupted"], summary["videos_recorded"], summary["videos_total"]) == (True, 4, 6)


# ------------------------------------------------------------------ the reference, once a sweep

def test_the_reference_scores_each_audited_video_once_a_sweep(tiny, doubles_env, tmp_path, monkeypatch):
    """Three modes, one fp32 ONNX: the first variant's reference scores the 8 videos, the
    other two read its answers (and start no reference); the audits equal a sweep without the
    cache."""
    from harness import runners, stages
    from harness.sweep import driver

    scored, started, per_variant = [], [], []
    real_infer, real_actor, real_run = stages.InferenceActor.infer, runners.InferenceActor, driver.run_variant

    def infer(self, index, views, with_logits=False):
        if self.spec.backend == "onnxruntime":      # the reference (the devices run the .om)
            scored.append(index)
        return real_infer(self, index, views, with_logits)

    def actor(spec, *args, **kwargs):
        started.append(spec.backend)
        return real_actor(spec, *args, **kwargs)

    def run_variant(args, reference_cache=None):
        before = len(scored)
        try:
            return real_run(args, reference_cache)
        finally:
            per_variant.append(len(scored) - before)

    monkeypatch.setattr(stages.InferenceActor, "infer", infer)
    monkeypatch.setattr(runners, "InferenceActor", actor)
    monkeypatch.setattr(driver, "run_variant", run_variant)
    (code, _), err = _capture(lambda: main(sweep_args(tiny, tmp_path / "cached", "--npus", "1",
                                                      "--no-ray", "--vary", VARY)))
    assert code == 0, err
    assert per_variant == [8, 0, 0] and sorted(scored) == list(range(8))
    assert started.count("onnxruntime") == 1           # the later variants start no reference
    kept = list((tmp_path / "cached" / driver.REFERENCE_DIR).glob("*/part-*.parquet"))
    assert len(kept) == 8

    # the same sweep with no cache: each variant's reference scores every video again
    scored.clear(), per_variant.clear()
    monkeypatch.setattr(driver, "run_variant", lambda args, reference_cache=None: run_variant(args))
    (code, _), err = _capture(lambda: main(sweep_args(tiny, tmp_path / "plain", "--npus", "1",
                                                      "--no-ray", "--vary", VARY)))
    assert code == 0, err
    assert per_variant == [8, 8, 8] and not (tmp_path / "plain" / driver.REFERENCE_DIR).exists()
    for mode in MODES:      # the same pairs: the same agreement, |Δprob|, everything
        slug = f"precision_mode-{mode}"
        cached, plain = (json.loads((tmp_path / w / slug / "summary.json").read_text())["audit"]
                         for w in ("cached", "plain"))
        assert cached["videos_audited"] == 8 and cached == plain
    got = by_name(json.loads((tmp_path / "cached" / "sweep.json").read_text()))
    assert got["must_keep_origin_dtype"]["max_abs_prob_diff"] == 0
    assert got["must_keep_origin_dtype"]["top1_agreement"] == 1.0


def test_the_reference_cache_is_keyed_by_the_reference_model_and_the_decoding(tmp_path):
    from types import SimpleNamespace

    from harness.data.filelist import VideoEntry
    from harness.reference_cache import ReferenceCache

    def spec(content: bytes) -> SimpleNamespace:
        path = tmp_path / f"{len(list(tmp_path.glob('*.onnx')))}.onnx"
        path.write_bytes(content)
        return SimpleNamespace(backend="onnxruntime", path=str(path), views_per_video=2,
                               norm=(0.5, 0.5), num_classes=3)

    entry, logits = VideoEntry(4, "/v/a.mp4", 1), np.arange(6, dtype=np.float32).reshape(2, 3)
    ReferenceCache.for_reference(tmp_path / "c", spec(b"fp32 graph"), "d1").add(entry, logits)

    def lookup(content: bytes, digest: str, wanted=entry) -> dict:
        return ReferenceCache.for_reference(tmp_path / "c", spec(content), digest).lookup([wanted])

    hit = lookup(b"fp32 graph", "d1")            # the same bytes in another build's folder
    assert list(hit) == [4] and np.array_equal(hit[4].logits, logits)
    assert lookup(b"another graph", "d1") == {}  # another ONNX content
    assert lookup(b"fp32 graph", "d2") == {}     # another decoding
    assert lookup(b"fp32 graph", "d1", VideoEntry(4, "/v/b.mp4", 1)) == {}   # another video there
