"""A newcomer's mistakes cost seconds (issue 19): each is refused in one sentence with exit 2,
before Ray starts where it can be, and every message names the fix.

Each test types the command a user would and asserts the message, not only the exit status.
"""

from __future__ import annotations


# ---------------------------------------------------------------- a list, a build dir, a label map
# (issue 19, items 2, 6 and 11: refused before the build and before Ray starts)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402  (here: this file's sections are appended by separate hands)

TINY_CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "swin_tiny_test.py")


def _refused_before_any_work(monkeypatch, capsys, tmp_path, *extra: str, ann: str | None = None) -> str:
    """``harness.run`` on the tiny test config, a one-video list, random weights and a CPU;
    returns the one line on stderr, after checking the exit status 2, that it is one line, and
    that neither a build nor a runner (Ray) was started."""
    from harness import run

    def not_now(*args, **kwargs):
        raise AssertionError("the run went past its checks")

    monkeypatch.setattr(run, "make_runner", not_now)
    if ann is None:
        ann = tmp_path / "list.txt"
        ann.write_text("a.mp4 0\n")
    argv = ["--config", TINY_CONFIG, "--random-weights", "--cpus", "1",
            "--ann-file", str(ann), "--data-prefix", str(tmp_path), "--work-dir",
            str(tmp_path / "work"), "--no-progress", *extra]
    assert run.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    return lines[0]


def test_a_rawframe_list_is_refused_naming_file_line_and_the_tool(monkeypatch, capsys, tmp_path):
    ann = tmp_path / "val_rawframes.txt"      # mmaction's RawframeDataset form on line 2
    ann.write_text("abseiling/a b.mp4 0\nabseiling/vid_001 300 5\n")
    monkeypatch.setattr("harness.run.resolve_model", lambda *a: pytest.fail("built the model"))
    err = _refused_before_any_work(monkeypatch, capsys, tmp_path, ann=str(ann))
    assert err == (f"error: {ann}:2: 'abseiling/vid_001 300 5' has 3 columns: this looks like a"
                   " rawframe list (mmaction's RawframeDataset form, '<frame folder> <frames>"
                   " <label>'), but the harness reads video lists '<path> <label>'; make one with"
                   " `python -m harness.data.filelist VIDEO_FOLDER --out LIST`")


@pytest.mark.parametrize("where, why", [("build.txt", "it is a file, not a folder"),
                                        ("build.txt/cache", "a file is in the way on its path")])
def test_an_unusable_build_dir_is_one_sentence_on_run_and_build(monkeypatch, capsys, tmp_path,
                                                                 where, why):
    from harness import build

    (tmp_path / "build.txt").write_text("not a folder")
    build_dir = tmp_path / where
    expected = (f"error: cannot use --build-dir {build_dir}: {why}; give another --build-dir (a"
                " folder you can create and write; default: build)")
    err = _refused_before_any_work(monkeypatch, capsys, tmp_path, "--build-dir", str(build_dir))
    assert err == expected
    assert build.main(["--config", TINY_CONFIG, "--build-dir", str(build_dir)]) == 2
    assert capsys.readouterr().err.strip() == expected


@pytest.mark.parametrize("how", ["--label-map", "harness.label_map"])
def test_a_label_map_of_another_length_is_refused_naming_both_counts(monkeypatch, capsys, tmp_path,
                                                                     how):
    label_map = tmp_path / "k400_head.txt"
    label_map.write_text("abseiling\nair drumming\nanswering questions\n")   # 3; the model has 8
    monkeypatch.setattr("harness.run.resolve_model", lambda *a: pytest.fail("built the model"))
    extra = (["--label-map", str(label_map)] if how == "--label-map"
             else ["--cfg-options", f"harness.label_map={label_map}"])
    err = _refused_before_any_work(monkeypatch, capsys, tmp_path, *extra)
    assert err == (f"error: label map {label_map} names 3 classes but the model has 8: give the"
                   " label map of this model's classes, one name a line in label order"
                   " (--label-map, or harness.label_map in the config)")


# ------------------------------------------------------- a silent --address, --npus without CANN
# (issue 19, items 1 and 7: refused before the build and before Ray starts)

def _argv_no_build(tmp_path, *extra: str) -> list[str]:
    ann = tmp_path / "list.txt"
    ann.write_text("a.mp4 0\n")
    return ["--config", TINY_CONFIG, "--random-weights", "--ann-file", str(ann), "--data-prefix",
            str(tmp_path), "--work-dir", str(tmp_path / "work"), "--no-progress", *extra]


def _no_build_no_runner(monkeypatch) -> None:
    monkeypatch.setattr("harness.run.resolve_model", lambda *a: pytest.fail("built the model"))
    monkeypatch.setattr("harness.run.make_runner", lambda *a: pytest.fail("started a runner"))


def _port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as s:     # a port the kernel just handed out and took back
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("how", ["--address", "$RAY_ADDRESS"])
def test_an_address_where_nothing_listens_is_refused_naming_the_fix(monkeypatch, capsys, tmp_path,
                                                                    how):
    from harness import run

    _no_build_no_runner(monkeypatch)
    address = f"127.0.0.1:{_port_nobody_listens_on()}"
    extra = ["--cpus", "1"]
    if how == "--address":
        extra += ["--address", address]
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", address)
    assert run.main(_argv_no_build(tmp_path, *extra)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1, captured.err
    assert lines[0].startswith(f"error: nothing answers at the Ray cluster address {address}"
                               f" ({how}; ")
    assert "connection refused). Fix: check the address and that the cluster is up" in lines[0]
    assert lines[0].endswith(f"(`RAY_AUTH_MODE=token ray status --address {address}` on one of its"
                             f" nodes), or leave out {how} to let the harness start its own local"
                             " Ray instance")


@pytest.mark.parametrize("where", ["local", "no-ray"])
def test_npus_without_cann_names_what_is_missing_and_the_other_devices(monkeypatch, capsys,
                                                                        tmp_path, where):
    import sys

    from harness import run

    _no_build_no_runner(monkeypatch)
    # a machine without CANN: no atc on PATH, no aclruntime (not even the tests' double)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.rstrip("/").endswith("doubles")])
    monkeypatch.delitem(sys.modules, "aclruntime", raising=False)
    extra = ["--npus", "2"] + (["--no-ray"] if where == "no-ray" else [])
    assert run.main(_argv_no_build(tmp_path, *extra)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "error: --npus needs Ascend's CANN toolkit, and this machine lacks ATC (no `atc` on PATH)"
        " and the aclruntime Python binding (ais_bench's wheel, with CANN's pyACL): on an Ascend"
        " host run `source /usr/local/Ascend/ascend-toolkit/set_env.sh` first, or evaluate on"
        " --cpus N or --gpus N instead\n")
    assert "--require-om" not in captured.err


def test_npus_with_a_prebuilt_om_on_a_joined_cluster_asks_this_machine_for_nothing(monkeypatch,
                                                                                    tmp_path):
    # the .om exists (no ATC needed) and the actors run on the cluster's nodes (their
    # aclruntime is theirs): the toolkit check lets it through to the address check
    from harness import run

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    argv = _argv_no_build(tmp_path, "--npus", "2", "--om", str(tmp_path / "x.om"), "--address",
                          "10.0.0.1:6379")
    argv.remove("--random-weights")
    args = run.parse_args(argv)
    run.check_ascend_toolkit(args, run.device_plan(args))     # no DeviceError
