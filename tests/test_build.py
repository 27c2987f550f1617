"""harness.build: made once, verified, atomic, and ATC driven through a test double."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import harness.build as hb
from harness.config import clip_geometry, load_config, normalization
from harness.errors import BuildError, ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "swin_tiny_test.py"
DOUBLES = Path(__file__).resolve().parent / "doubles"


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_atc(monkeypatch):
    """A PATH with python3 but no atc, so builds are ONNX-only whatever the host has."""
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    assert hb.shutil.which("atc") is None


@pytest.fixture
def fake_atc(monkeypatch):
    """The ATC test double first on PATH; python3 from this venv so it can read the ONNX."""
    monkeypatch.setenv("PATH", f"{DOUBLES}{os.pathsep}{Path(sys.executable).parent}")
    monkeypatch.delenv("FAKE_ATC_SUFFIX", raising=False)
    monkeypatch.delenv("FAKE_ATC_FAIL", raising=False)


@pytest.fixture
def fake_builder(monkeypatch):
    """Replace the export/verify work with a stub that writes a minimal complete artifact.

    For tests of hashing and placement only; records each plan it was asked to build.
    """
    plans = []

    def build_into(tmp, plan, unsafe):
        plans.append(plan)
        (tmp / hb.ONNX_FILE).write_bytes(b"stub")
        manifest = {"hash": plan.digest, "onnx": hb.ONNX_FILE, "om": None}
        (tmp / hb.MANIFEST).write_text(json.dumps(manifest))
        return manifest

    monkeypatch.setattr(hb, "_build_into", build_into)
    return plans


@pytest.fixture(scope="module")
def tiny_vpc3(tmp_path_factory):
    """One real ONNX-only build (3 views per call) shared by the tests that only read it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", str(Path(sys.executable).parent))
        return hb.build_artifact(TINY, build_dir=tmp_path_factory.mktemp("vpc3"), views_per_call=3)


def _save_checkpoint(path: Path, seed: int) -> None:
    import torch

    from harness.config import model_section
    from harness.model import build

    torch.manual_seed(seed)
    model = build(model_section(load_config(TINY)))
    torch.save(model.state_dict(), path)


def _complete_dirs(build_dir: Path) -> list[Path]:
    return [d for d in build_dir.iterdir() if d.is_dir() and (d / hb.MANIFEST).is_file()
            and not d.name.startswith(".")]


# ---------------------------------------------------------------- the real build (tiny model)

def test_second_build_reuses_without_building_the_model(tmp_path, no_atc, monkeypatch):
    first = hb.build_artifact(TINY, build_dir=tmp_path)
    assert not first.reused
    m = first.manifest
    geometry = clip_geometry(load_config(TINY))
    assert m["input"] == {"name": "video", "shape": [1, geometry.views, *geometry.view_shape()],
                          "dtype": "uint8"}
    assert m["output"]["shape"] == [geometry.views, 8]
    assert m["normalization"]["in_graph"] is True
    assert m["checkpoint"] == "random-init" and m["om"] is None
    assert m["graph"]["max_transpose_reshape_rank"] <= hb.MAX_RANK
    assert first.onnx_path.is_file() and first.directory.name.startswith(m["name"] + "-")

    def forbidden(*args, **kwargs):
        raise AssertionError("a reused artifact must not build or export anything")

    monkeypatch.setattr(hb, "_model_api", forbidden)
    monkeypatch.setattr(hb, "_export", forbidden)
    start = time.perf_counter()
    second = hb.build_artifact(TINY, build_dir=tmp_path)
    elapsed = time.perf_counter() - start
    assert second.reused and second.directory == first.directory
    assert second.manifest == first.manifest
    assert elapsed < 2.0


@pytest.mark.parametrize("input_dtype,opset", [("uint8", 17), ("float32", 17), ("uint8", 11)])
def test_onnx_output_equals_the_checkpoint_model(tmp_path, no_atc, input_dtype, opset):
    import onnxruntime as ort
    import torch

    from harness.config import model_section
    from harness.model import build, load_checkpoint

    ckpt = tmp_path / "weights.pth"
    _save_checkpoint(ckpt, seed=3)
    art = hb.build_artifact(TINY, ckpt, build_dir=tmp_path / "build", input_dtype=input_dtype,
                            opset=opset)
    assert art.manifest["checkpoint"]["sha256"] == hb.sha256_file(ckpt)
    assert art.manifest["graph"]["opset"] == opset
    assert art.manifest["verification"]["max_abs_diff"] <= 1e-3

    cfg = load_config(TINY)
    norm = normalization(cfg)
    rng = np.random.default_rng(42)
    pixels = rng.integers(0, 256, size=art.manifest["input"]["shape"], dtype=np.uint8)
    mean = np.asarray(norm.mean, np.float32).reshape(1, 1, 3, 1, 1, 1)
    std = np.asarray(norm.std, np.float32).reshape(1, 1, 3, 1, 1, 1)
    normalized = ((pixels.astype(np.float32) - mean) / std).astype(np.float32)

    session = ort.InferenceSession(str(art.onnx_path), providers=["CPUExecutionProvider"])
    feed = pixels if input_dtype == "uint8" else normalized
    got = session.run([art.manifest["output"]["name"]], {art.manifest["input"]["name"]: feed})[0]

    model = build(model_section(cfg))
    load_checkpoint(model, ckpt)
    with torch.inference_mode():
        want = model(torch.from_numpy(normalized)).numpy()
    assert got.shape == tuple(art.manifest["output"]["shape"])
    assert np.max(np.abs(got - want)) <= 1e-3


def test_views_per_call_builds_a_smaller_graph(tiny_vpc3):
    art = tiny_vpc3
    assert art.manifest["input"]["shape"][:2] == [1, 3]
    assert art.manifest["output"]["shape"] == [3, 8]
    assert art.manifest["views_per_video"] == 6


def test_views_per_call_must_divide_the_views(tmp_path, no_atc):
    with pytest.raises(ConfigError, match="views_per_call"):
        hb.build_artifact(TINY, build_dir=tmp_path, views_per_call=4)


def test_unsupported_opset_is_a_clear_error(tmp_path, no_atc):
    with pytest.raises(ConfigError, match="opset"):
        hb.build_artifact(TINY, build_dir=tmp_path, opset=9)


def test_failed_verification_fails_the_build_and_leaves_nothing_complete(tmp_path, no_atc,
                                                                         monkeypatch):
    real = hb._onnxruntime_logits
    monkeypatch.setattr(hb, "_onnxruntime_logits", lambda path, x: real(path, x) + 0.01)
    with pytest.raises(BuildError, match="verification failed"):
        hb.build_artifact(TINY, build_dir=tmp_path)
    assert _complete_dirs(tmp_path) == []
    assert not list(tmp_path.glob(".tmp-*"))
    failed = list(tmp_path.glob(".failed-*"))
    assert len(failed) == 1 and (failed[0] / hb.ONNX_FILE).is_file()   # kept for diagnosis


# ---------------------------------------------------------------- hashing and placement

def test_what_changes_the_artifact_gives_a_new_directory(tmp_path, no_atc, fake_builder):
    ckpt = tmp_path / "w.pth"
    ckpt.write_bytes(b"weights one")
    dirs = {hb.build_artifact(TINY, ckpt, build_dir=tmp_path / "b").directory}
    for overrides in ({"soc_version": "Ascend910B"}, {"input_dtype": "float32"}, {"batch": 2},
                      {"opset": 13}, {"views_per_call": 3}):
        dirs.add(hb.build_artifact(TINY, ckpt, build_dir=tmp_path / "b", **overrides).directory)
    bgr = tmp_path / "tiny_bgr.py"
    bgr.write_text(TINY.read_text().replace("to_bgr=False", "to_bgr=True"))
    dirs.add(hb.build_artifact(bgr, ckpt, build_dir=tmp_path / "b").directory)
    # the host-side contract of a float32 graph (normalization, views per video) counts too
    dirs.add(hb.build_artifact(bgr, ckpt, build_dir=tmp_path / "b", input_dtype="float32").directory)
    more_clips = tmp_path / "tiny_4clips.py"
    more_clips.write_text(TINY.read_text().replace("num_clips=2", "num_clips=4"))
    dirs.add(hb.build_artifact(more_clips, ckpt, build_dir=tmp_path / "b", views_per_call=3).directory)
    ckpt.write_bytes(b"weights two")
    dirs.add(hb.build_artifact(TINY, ckpt, build_dir=tmp_path / "b").directory)
    dirs.add(hb.build_artifact(TINY, None, build_dir=tmp_path / "b").directory)
    assert len(dirs) == 11 and len(fake_builder) == 11

    # ...and what does not change it (the checkpoint's path, None overrides) reuses
    moved = tmp_path / "elsewhere.pth"
    moved.write_bytes(b"weights two")
    again = hb.build_artifact(TINY, moved, build_dir=tmp_path / "b", soc_version=None)
    assert again.reused and len(fake_builder) == 11


def test_data_paths_are_not_part_of_the_hash(tmp_path, no_atc, fake_builder):
    cfg = load_config(TINY)
    first = hb.build_artifact(cfg, build_dir=tmp_path)
    cfg["data"]["test"]["ann_file"] = "/somewhere/else.txt"
    cfg["data"]["test"]["data_prefix"] = "/other/videos"
    assert hb.build_artifact(cfg, build_dir=tmp_path).directory == first.directory


def test_an_incomplete_directory_is_rebuilt(tmp_path, no_atc, fake_builder):
    art = hb.build_artifact(TINY, build_dir=tmp_path)
    (art.directory / hb.MANIFEST).unlink()      # e.g. a user deleted it, or an old layout
    again = hb.build_artifact(TINY, build_dir=tmp_path)
    assert not again.reused and len(fake_builder) == 2


# ---------------------------------------------------------------- concurrency and interruption

def _build_in_child(build_dir: str, queue) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["PATH"] = str(Path(sys.executable).parent)
    art = hb.build_artifact(TINY, build_dir=build_dir)
    queue.put((str(art.directory), art.reused))


def _killed_mid_build(build_dir: str) -> None:
    import torch

    torch.set_num_threads(1)
    os.environ["PATH"] = str(Path(sys.executable).parent)
    hb._simplify = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    hb.build_artifact(TINY, build_dir=build_dir)


def test_two_processes_building_at_once_make_one_artifact(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len({d for d, _ in results}) == 1
    assert sorted(reused for _, reused in results) == [False, True]
    assert len(_complete_dirs(tmp_path)) == 1
    assert not list(tmp_path.glob(".tmp-*"))
    assert hb.load_manifest(results[0][0])["verification"]["max_abs_diff"] <= 1e-3


def test_a_killed_build_leaves_nothing_complete_and_the_next_succeeds(tmp_path, no_atc):
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=_killed_mid_build, args=(str(tmp_path),))
    p.start()
    p.join(timeout=240)
    assert p.exitcode == -signal.SIGKILL
    assert _complete_dirs(tmp_path) == []
    assert list(tmp_path.glob(".tmp-*"))              # the leftover, never taken as complete

    art = hb.build_artifact(TINY, build_dir=tmp_path)
    assert not art.reused and art.onnx_path.is_file()
    assert not list(tmp_path.glob(".tmp-*"))          # cleaned up under the lock


def test_an_interrupted_build_cleans_its_temp_dir(tmp_path, no_atc, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hb, "_torch_reference", interrupt)
    with pytest.raises(KeyboardInterrupt):
        hb.build_artifact(TINY, build_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


# ---------------------------------------------------------------- ATC (test double)

def test_atc_on_path_produces_an_om_with_the_expected_arguments(tmp_path, fake_atc, monkeypatch):
    monkeypatch.setenv("FAKE_ATC_SUFFIX", "_linux_x86_64")   # the produced name is globbed
    ini = tmp_path / "op_precision.ini"
    ini.write_text("[ByOpType]\nSoftmax=high_precision\n")
    art = hb.build_artifact(TINY, build_dir=tmp_path / "b", soc_version="Ascend910B",
                            precision_mode="allow_fp32_to_fp16", op_precision_mode=str(ini))
    assert art.om_path == art.directory / "model.om" and art.om_path.is_file()
    assert art.manifest["om"] == "model.om" and "atc" in art.manifest["tool_versions"]
    assert "atc" in art.manifest["timings_s"]
    assert (art.directory / "atc.log").read_text().count("success") == 1

    head, meta, body = art.om_path.read_bytes().split(b"\n", 2)
    assert head == b"FAKE-OM v1"
    assert json.loads(meta)["soc_version"] == "Ascend910B"
    assert body == art.onnx_path.read_bytes()

    argv = json.loads((art.directory / "model.atc-argv.json").read_text())[1:]
    shape = ",".join(str(d) for d in art.manifest["input"]["shape"])
    assert argv[0] == "--framework=5"
    assert argv[1].startswith("--model=") and argv[1].endswith("/model.onnx")
    assert argv[2].startswith("--output=") and argv[2].endswith("/model")
    assert argv[3:] == ["--soc_version=Ascend910B", f"--input_shape=video:{shape}",
                        "--precision_mode=allow_fp32_to_fp16", f"--op_precision_mode={ini}",
                        "--log=error"]

    # The same inputs without ATC are a different (ONNX-only) artifact, and vice versa.
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    onnx_only = hb.build_artifact(TINY, build_dir=tmp_path / "b", soc_version="Ascend910B",
                                  precision_mode="allow_fp32_to_fp16", op_precision_mode=str(ini))
    assert onnx_only.directory != art.directory and onnx_only.om_path is None


def test_atc_failure_names_its_log(tmp_path, fake_atc, monkeypatch):
    monkeypatch.setenv("FAKE_ATC_FAIL", "1")
    with pytest.raises(BuildError, match="ATC exited with status 1") as info:
        hb.build_artifact(TINY, build_dir=tmp_path)
    log_path = Path(str(info.value).rsplit("its log: ", 1)[1])
    assert "simulated compiler error" in log_path.read_text()
    assert _complete_dirs(tmp_path) == []


def test_an_atc_that_rejects_the_opset_gets_the_guides_opset_11_verified(tmp_path, fake_atc,
                                                                         monkeypatch, caplog):
    import onnx

    monkeypatch.setenv("FAKE_ATC_MAX_OPSET", "13")            # an ATC that stops at opset 13
    with caplog.at_level("WARNING", logger="harness.build"):
        art = hb.build_artifact(TINY, build_dir=tmp_path)   # the default opset, 17
    model = onnx.load(str(art.onnx_path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [11]
    assert art.manifest["graph"]["opset"] == 11
    fallback = art.manifest["opset_fallback"]
    assert (fallback["requested"], fallback["used"]) == (17, 11) and "opset 17" in fallback["atc_error"]
    assert "opset 17" in (art.directory / fallback["atc_log"]).read_text()   # the first try's log
    assert art.manifest["verification"]["max_abs_diff"] <= hb.TOLERANCE      # verified again
    assert art.om_path.read_bytes().split(b"\n", 2)[2] == art.onnx_path.read_bytes()
    assert "exporting again at opset 11" in caplog.text
    assert hb.build_artifact(TINY, build_dir=tmp_path).reused


def test_an_atc_failing_at_both_opsets_says_so(tmp_path, fake_atc, monkeypatch):
    monkeypatch.setenv("FAKE_ATC_FAIL", "1")
    with pytest.raises(BuildError, match="at opset 17 and again at the guide's opset 11"):
        hb.build_artifact(TINY, build_dir=tmp_path)


def test_op_precision_mode_with_op_select_implmode_is_refused(tmp_path, no_atc, fake_builder, capsys):
    code = hb.main(["--config", str(TINY), "--build-dir", str(tmp_path), "--op-precision-mode",
                    "guide", "--op-select-implmode", "high_precision"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "cannot be combined" in err
    assert len(err.strip().splitlines()) == 1 and fake_builder == []


def test_the_guides_op_precision_file_is_a_preset_hashed_by_content(tmp_path, quick_om):
    art = quick_om(tmp_path / "b", op_precision_mode="guide")
    given = [a for a in _atc_argv_of(art) if a.startswith("--op_precision_mode=")]
    assert len(given) == 1
    assert Path(given[0].split("=", 1)[1]).read_text() == "Gelu = high_performance\n"   # the guide's
    mine = tmp_path / "my_op_precision.ini"
    mine.write_text("Gelu = high_performance\n")
    assert quick_om(tmp_path / "b", op_precision_mode=str(mine)).directory == art.directory


def test_without_soc_version_the_om_is_for_this_hosts_chips(tmp_path, quick_om, monkeypatch):
    from pipeline_support import use_fake_aclruntime

    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend310P1")     # pyACL (the double) names the chips
    use_fake_aclruntime()
    art = quick_om(tmp_path / "b")
    assert art.manifest["soc_version"] == "Ascend310P1" and _om_header(art)["soc_version"] == "Ascend310P1"
    pinned = quick_om(tmp_path / "b", soc_version="Ascend310P3")    # given: as given
    assert _om_header(pinned)["soc_version"] == "Ascend310P3" and pinned.directory != art.directory


def test_atc_double_checks_the_input_shape(tmp_path, tiny_vpc3):
    art = tiny_vpc3
    base = [str(DOUBLES / "atc"), "--framework=5", f"--model={art.onnx_path}",
            f"--output={tmp_path / 'x'}", "--soc_version=Ascend310P3"]
    env = {"PATH": str(Path(sys.executable).parent)}
    bad_name = subprocess.run(base + ["--input_shape=input:1,3,3,8,64,64"], env=env,
                              capture_output=True, text=True)
    bad_dims = subprocess.run(base + ["--input_shape=video:1,6,3,8,64,64"], env=env,
                              capture_output=True, text=True)
    good = subprocess.run(base + ["--input_shape=video:1,3,3,8,64,64"], env=env,
                          capture_output=True, text=True)
    assert bad_name.returncode == 1 and "model's inputs" in bad_name.stderr
    assert bad_dims.returncode == 1 and "does not match" in bad_dims.stderr
    assert good.returncode == 0 and (tmp_path / "x.om").is_file()


def test_require_om_without_atc_is_an_error(tmp_path, no_atc):
    with pytest.raises(BuildError, match="--require-om"):
        hb.build_artifact(TINY, build_dir=tmp_path, require_om=True)


# ---------------------------------------------------------------- ATC precision options

@pytest.fixture
def quick_om(monkeypatch, fake_atc, tiny_vpc3):
    """``build(build_dir, **options)``: a real build through the ATC double, made fast by taking the
    shared ONNX (3 views per call) as the export and skipping the reference and verification,
    which other tests cover. Manifest, hash, ATC argv and placement are the real code."""
    monkeypatch.setattr(hb, "_torch_reference", lambda wrapped, x: None)
    monkeypatch.setattr(hb, "_export", lambda wrapped, plan, path: shutil.copyfile(tiny_vpc3.onnx_path, path))
    monkeypatch.setattr(hb, "_simplify", lambda path, opset: [])
    monkeypatch.setattr(hb, "_verify", lambda path, reference, x: 0.0)

    def build(build_dir, **options):
        return hb.build_artifact(TINY, build_dir=build_dir, views_per_call=3, **options)

    return build


@pytest.fixture
def precision_files(tmp_path):
    """A keep_dtype list, a modify_mixlist .json and an op_precision_mode .ini."""
    files = {"keep_dtype": tmp_path / "keep_dtype.cfg", "modify_mixlist": tmp_path / "mixlist.json",
             "op_precision_mode": tmp_path / "op_precision.ini"}
    files["keep_dtype"].write_text("Softmax\nOpType::LayerNorm\n")
    files["modify_mixlist"].write_text(json.dumps({"black-list": {"to-add": ["SoftmaxV2"]}}))
    files["op_precision_mode"].write_text("[ByOpType]\nSoftmaxV2=high_precision\n")
    return files


def _atc_argv_of(art) -> list[str]:
    return json.loads((art.directory / "model.atc-argv.json").read_text())[1:]


def _precision_argv(art) -> list[str]:
    names = tuple(f"--{name}=" for name in hb._ATC_PRECISION)
    return [a for a in _atc_argv_of(art) if a.startswith(names)]


def _om_header(art) -> dict:
    return json.loads(art.om_path.read_bytes().split(b"\n", 2)[1])


def test_precision_options_reach_atc_and_the_manifest(tmp_path, quick_om, precision_files):
    files = {name: str(path) for name, path in precision_files.items()}
    art = quick_om(tmp_path / "b", precision_mode_v2="mixed_float16", **files)
    argv = _atc_argv_of(art)
    assert argv[argv.index("--precision_mode_v2=mixed_float16"):] == [
        "--precision_mode_v2=mixed_float16", f"--op_precision_mode={precision_files['op_precision_mode']}",
        f"--keep_dtype={precision_files['keep_dtype']}",
        f"--modify_mixlist={precision_files['modify_mixlist']}", "--log=error"]
    assert not any(a.startswith("--precision_mode=") for a in argv)
    header = _om_header(art)                      # the double recorded what it was given
    assert header["precision_mode_v2"] == "mixed_float16" and header["precision_mode"] is None
    assert header["keep_dtype"] == files["keep_dtype"] and header["modify_mixlist"] == files["modify_mixlist"]

    options = art.manifest["build_options"]
    assert options["precision_mode_v2"] == "mixed_float16" and options["precision_mode"] is None
    for name, path in precision_files.items():    # files by name and content, not by path
        assert options[name] == {"file": path.name, "sha256": hb.sha256_file(path)}
    precision = art.manifest["precision"]
    assert precision["mode"] == "precision_mode_v2=mixed_float16" and precision["atc_default"] is False
    assert "mixed float16/float32" in precision["words"] and "keep_dtype.cfg" in precision["words"]

    # the older option takes the same path, with a mixed mode the mixlist needs
    art = quick_om(tmp_path / "b", precision_mode="allow_mix_precision",
                   modify_mixlist=files["modify_mixlist"])
    assert _precision_argv(art) == [
        "--precision_mode=allow_mix_precision", f"--modify_mixlist={files['modify_mixlist']}"]
    assert art.manifest["precision"]["mode"] == "precision_mode=allow_mix_precision"


def test_the_manifest_states_the_default_precision(tmp_path, quick_om, tiny_vpc3):
    art = quick_om(tmp_path / "b")
    assert _precision_argv(art) == [] and _atc_argv_of(art)[-1] == "--log=error"
    precision = art.manifest["precision"]
    assert precision["mode"] == "precision_mode=force_fp16" and precision["atc_default"] is True
    assert "default" in precision["words"] and "float16" in precision["words"]
    # an ONNX-only artifact says it computes in float32 and that no ATC option applied
    onnx_only = tiny_vpc3.manifest["precision"]
    assert onnx_only["mode"] is None and onnx_only["words"].startswith("float32")


def test_each_precision_option_is_part_of_the_om_hash(tmp_path, fake_atc, fake_builder, precision_files):
    def directory(**options):
        return hb.build_artifact(TINY, build_dir=tmp_path / "b", **options).directory

    base = directory()
    mix = str(precision_files["modify_mixlist"])
    variants = [{"precision_mode": "force_fp32"}, {"precision_mode_v2": "fp16"},
                {"precision_mode_v2": "mixed_float16"},
                {"precision_mode_v2": "mixed_float16", "modify_mixlist": mix},
                {"op_select_implmode": "high_precision"},
                {"keep_dtype": str(precision_files["keep_dtype"])},
                {"op_precision_mode": str(precision_files["op_precision_mode"])}]
    dirs = [directory(**options) for options in variants]
    assert len({base, *dirs}) == len(variants) + 1

    # a file option counts by content: the same bytes elsewhere reuse, new bytes at the same path do not
    for name, path in precision_files.items():
        extra = {"precision_mode_v2": "mixed_float16"} if name == "modify_mixlist" else {}
        first = directory(**{name: str(path)}, **extra)
        moved = tmp_path / "elsewhere" / f"renamed-{path.name}"
        moved.parent.mkdir(exist_ok=True)
        shutil.copyfile(path, moved)
        assert directory(**{name: str(moved)}, **extra) == first
        path.write_text(path.read_text().replace("Softmax", "Gelu"))
        assert directory(**{name: str(path)}, **extra) != first
    built = len(fake_builder)
    assert hb.build_artifact(TINY, build_dir=tmp_path / "b", precision_mode="force_fp32").reused
    assert len(fake_builder) == built


def test_precision_options_are_not_part_of_an_onnx_only_hash(tmp_path, no_atc, fake_builder,
                                                              precision_files):
    plain = hb.build_artifact(TINY, build_dir=tmp_path)
    given = hb.build_artifact(TINY, build_dir=tmp_path, precision_mode_v2="mixed_float16",
                              op_select_implmode="high_precision",
                              **{name: str(path) for name, path in precision_files.items()
                                 if name != "op_precision_mode"})   # (exclusive of implmode)
    assert given.reused and given.directory == plain.directory and len(fake_builder) == 1
    # ...but a wrong one is still an error, with or without ATC
    with pytest.raises(ConfigError, match="precision_mode_v2"):
        hb.build_artifact(TINY, build_dir=tmp_path, precision_mode_v2="fp32")


@pytest.mark.parametrize("options,words", [
    ({"precision_mode": "force_fp16", "precision_mode_v2": "fp16"},
     ["'harness.build.precision_mode'", "'harness.build.precision_mode_v2'", "cannot be combined"]),
    ({"precision_mode": "fp16"},
     ["'fp16'", "force_fp32, cube_fp16in_fp32out, force_fp16", "allow_fp32_to_bf16", "precision_mode_v2"]),
    ({"precision_mode_v2": "float16"},
     ["'float16'", "fp16, origin, cube_fp16in_fp32out, mixed_float16, mixed_bfloat16"]),
    ({"op_select_implmode": "fast"}, ["'fast'", "high_precision, high_performance"]),
    ({"modify_mixlist": "MIX"}, ["mixed-precision lists", "allow_mix_precision", "mixed_float16",
                                 "default force_fp16"]),
    ({"modify_mixlist": "MIX", "precision_mode_v2": "fp16"}, ["precision_mode_v2 is 'fp16'"]),
    ({"keep_dtype": "KEEP", "precision_mode": "must_keep_origin_dtype"}, ["keep_dtype", "no effect"]),
    ({"keep_dtype": "/no/such/keep.cfg"}, ["keep_dtype", "/no/such/keep.cfg", "not a file"]),
    ({"modify_mixlist": "BAD", "precision_mode": "allow_mix_precision"}, ["modify_mixlist", "not valid JSON"]),
])
def test_wrong_precision_options_are_clear_errors(tmp_path, no_atc, fake_builder, precision_files,
                                                  options, words):
    bad = tmp_path / "bad.json"
    bad.write_text("{black-list: }")
    paths = {"MIX": str(precision_files["modify_mixlist"]), "KEEP": str(precision_files["keep_dtype"]),
             "BAD": str(bad)}
    options = {k: paths.get(v, v) for k, v in options.items()}
    with pytest.raises(ConfigError) as info:
        hb.build_artifact(TINY, build_dir=tmp_path / "b", **options)
    for word in words:
        assert word in str(info.value)
    assert fake_builder == []


def test_precision_flags_on_the_command_line(tmp_path, no_atc, fake_builder, precision_files, capsys):
    from harness import cli

    flags = ["--precision-mode-v2", "mixed_float16", "--op-select-implmode", "high_precision",
             "--keep-dtype", str(precision_files["keep_dtype"]),
             "--modify-mixlist", str(precision_files["modify_mixlist"])]
    args = hb._parser().parse_args(["--config", str(TINY), *flags])
    assert cli.build_overrides(args) == {
        "precision_mode_v2": "mixed_float16", "op_select_implmode": "high_precision",
        "keep_dtype": str(precision_files["keep_dtype"]),
        "modify_mixlist": str(precision_files["modify_mixlist"])}
    code = hb.main(["--config", str(TINY), "--build-dir", str(tmp_path), "--precision-mode",
                    "force_fp16", "--precision-mode-v2", "fp16"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "cannot be combined" in err
    assert len(err.strip().splitlines()) == 1


def test_atc_double_checks_the_precision_options(tmp_path, tiny_vpc3, precision_files):
    base = [str(DOUBLES / "atc"), "--framework=5", f"--model={tiny_vpc3.onnx_path}",
            f"--output={tmp_path / 'x'}", "--soc_version=Ascend310P3", "--input_shape=video:1,3,3,8,64,64"]
    env = {"PATH": str(Path(sys.executable).parent)}
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    refused = {
        "--precision_mode=force_fp16 --precision_mode_v2=fp16": "cannot be used together",
        "--precision_mode_v2=fp32": "not a precision mode",
        "--op_select_implmode=fast": "not an implementation mode",
        f"--keep_dtype={tmp_path / 'missing.cfg'}": "does not exist",
        f"--modify_mixlist={tmp_path / 'missing.json'}": "does not exist",
        f"--modify_mixlist={bad}": "not valid JSON",
        "--precision_modes=force_fp16": "unknown option",
    }
    for args, message in refused.items():
        res = subprocess.run(base + args.split(), env=env, capture_output=True, text=True)
        assert res.returncode == 1 and message in res.stderr, (args, res.stderr)
        assert not (tmp_path / "x.om").exists()
    good = subprocess.run(base + ["--precision_mode_v2=mixed_bfloat16", "--op_select_implmode=high_performance",
                                  f"--keep_dtype={precision_files['keep_dtype']}",
                                  f"--modify_mixlist={precision_files['modify_mixlist']}"],
                          env=env, capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    header = json.loads((tmp_path / "x.om").read_bytes().split(b"\n", 2)[1])
    assert header["precision_mode_v2"] == "mixed_bfloat16" and header["op_select_implmode"] == "high_performance"
    assert header["keep_dtype"] == str(precision_files["keep_dtype"])
    assert header["modify_mixlist"] == str(precision_files["modify_mixlist"])


# ---------------------------------------------------------------- command line

def _cli(args, env_path):
    env = {**os.environ, "PATH": env_path, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "harness.build", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_builds_then_reuses(tmp_path):
    path = str(Path(sys.executable).parent)
    first = _cli(["--config", str(TINY), "--build-dir", str(tmp_path), "--views-per-call", "3"], path)
    assert first.returncode == 0, first.stderr
    directory = Path(first.stdout.strip())
    assert hb.load_manifest(directory)["input"]["shape"][1] == 3
    assert "ATC not found" in first.stderr
    second = _cli(["--config", str(TINY), "--build-dir", str(tmp_path), "--views-per-call", "3"], path)
    assert second.returncode == 0 and Path(second.stdout.strip()) == directory


def test_cli_require_om_without_atc_exits_2_with_one_line(tmp_path):
    res = _cli(["--config", str(TINY), "--build-dir", str(tmp_path), "--require-om"],
               str(Path(sys.executable).parent))
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "ATC" in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_cli_bad_config_exits_2(tmp_path):
    res = _cli(["--config", str(tmp_path / "nope.py")], str(Path(sys.executable).parent))
    assert res.returncode == 2 and "config file not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_importing_the_build_does_not_import_torch():
    code = "import sys, harness.build; print('torch' in sys.modules, 'onnx' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.stdout.split() == ["False", "False"]


def test_load_manifest_of_a_missing_directory_says_what_to_do(tmp_path):
    with pytest.raises(BuildError, match="harness.build"):
        hb.load_manifest(tmp_path)


# ---------------------------------------------------------------- full size (slow)

@pytest.mark.slow
def test_full_size_swin_s_builds_verifies_and_is_reused(tmp_path, no_atc):
    import torch

    torch.set_num_threads(2)
    cfg = REPO / "configs" / "swin_small_k400.py"
    start = time.perf_counter()
    art = hb.build_artifact(cfg, build_dir=tmp_path, views_per_call=4)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    again = hb.build_artifact(cfg, build_dir=tmp_path, views_per_call=4)
    reuse_s = time.perf_counter() - start
    m = art.manifest
    print(f"\nSwin-S build {build_s:.1f} s, reuse {reuse_s:.2f} s, diff"
          f" {m['verification']['max_abs_diff']:.3g}, timings {m['timings_s']}, graph {m['graph']}")
    assert m["input"]["shape"] == [1, 4, 3, 32, 224, 224] and m["output"]["shape"] == [4, 400]
    assert m["graph"]["max_transpose_reshape_rank"] <= 8
    assert again.reused and reuse_s < 3.0


# ---------------------------------------------------------------- opset passes (small graphs)

def _graph(nodes, inputs, output, initializers=()):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, inputs[0][1])], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_layer_norm_rewrite_for_opset_13_computes_the_same():
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from harness.onnx_passes import convert_opset

    rng = np.random.default_rng(0)
    scale, bias = rng.normal(size=5).astype(np.float32), rng.normal(size=5).astype(np.float32)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)
    model = _graph([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5)],
                   [("x", [2, 3, 5])], "y",
                   [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(bias, "b")])
    converted, passes = convert_opset(model, 13)
    assert "decompose_layer_norm(1)" in passes
    assert "LayerNormalization" not in {n.op_type for n in converted.graph.node}
    got = ort.InferenceSession(converted.SerializeToString()).run(None, {"x": x})[0]
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    assert np.max(np.abs(got - ((x - mean) / np.sqrt(var + 1e-5) * scale + bias))) < 1e-5


def test_softmax_over_an_inner_axis_is_refused_below_opset_13():
    from onnx import helper

    from harness.onnx_passes import convert_opset

    model = _graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [("x", [2, 3, 5])], "y")
    with pytest.raises(ValueError, match="last axis"):
        convert_opset(model, 11)


def test_to_bgr_normalization_happens_in_the_graph(tmp_path, no_atc):
    import onnxruntime as ort
    import torch

    from harness.config import model_section
    from harness.model import build, load_checkpoint

    text = TINY.read_text()
    assert "to_bgr=False" in text
    cfg_path = tmp_path / "tiny_bgr.py"
    cfg_path.write_text(text.replace("to_bgr=False", "to_bgr=True"))
    ckpt = tmp_path / "weights.pth"
    _save_checkpoint(ckpt, seed=5)
    art = hb.build_artifact(cfg_path, ckpt, build_dir=tmp_path / "b")
    assert art.manifest["normalization"]["to_bgr"] is True

    norm = normalization(load_config(cfg_path))
    pixels = np.random.default_rng(1).integers(0, 256, size=art.manifest["input"]["shape"],
                                               dtype=np.uint8)
    mean = np.asarray(norm.mean, np.float32).reshape(1, 1, 3, 1, 1, 1)
    std = np.asarray(norm.std, np.float32).reshape(1, 1, 3, 1, 1, 1)
    bgr = ((pixels[:, :, ::-1].astype(np.float32) - mean) / std).astype(np.float32)
    got = ort.InferenceSession(str(art.onnx_path)).run(None, {"video": pixels})[0]
    model = build(model_section(load_config(cfg_path)))
    load_checkpoint(model, ckpt)
    with torch.inference_mode():
        want = model(torch.from_numpy(np.ascontiguousarray(bgr))).numpy()
    assert np.max(np.abs(got - want)) <= 1e-3
