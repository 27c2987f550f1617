"""The command lines' options: one way to say each thing, and safe defaults.

- the same build words on ``harness.build`` and ``harness.run`` reuse one artifact;
- a run needs weights, a config path that exists, sane numbers; ``--demo`` never empties a
  user's folder. All refusals are one line on stderr and exit status 2.
"""

from __future__ import annotations

import json
import logging
import os

import pytest

from harness import build, run
from pipeline_support import CONFIG, shared_inputs, use_fake_aclruntime


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return shared_inputs(tmp_path_factory)


def _run_argv(inputs, work, *extra):
    return ["--config", str(CONFIG), "--checkpoint", str(inputs.checkpoint),
            "--ann-file", str(inputs.good_list), "--data-prefix", str(inputs.videos),
            "--work-dir", str(work), "--no-progress", "--no-ray", *extra]


def test_run_reuses_what_build_made_given_the_same_words(inputs, tmp_path, monkeypatch, capsys):
    use_fake_aclruntime()
    monkeypatch.setenv("FAKE_ACL_SOC", "Ascend910B")   # the chips the words build for
    build_dir = tmp_path / "build"
    words = ["--soc-version", "Ascend910B", "--views-per-call", "3", "--atc", str(inputs.atc),
             "--build-dir", str(build_dir)]
    assert build.main(["--config", str(CONFIG), "--checkpoint", str(inputs.checkpoint),
                       "--require-om", *words]) == 0
    built = capsys.readouterr().out.strip().splitlines()[-1]
    manifest = json.loads((build_dir / os.path.basename(built) / "manifest.json").read_text())
    assert manifest["soc_version"] == "Ascend910B" and manifest["input"]["shape"][1] == 3

    def no_second_build(*args, **kwargs):
        raise AssertionError("harness.run built the artifact again")

    monkeypatch.setattr(build, "_build_into", no_second_build)
    assert run.main(_run_argv(inputs, tmp_path / "flags", "--npus", "1", *words)) == 0
    # the same build options through the config (mmengine's --cfg-options) are the same words
    assert run.main(_run_argv(inputs, tmp_path / "cfg", "--npus", "1", "--atc", str(inputs.atc),
                              "--build-dir", str(build_dir), "--cfg-options",
                              "harness.build.soc_version=Ascend910B",
                              "harness.build.views_per_call=3")) == 0
    for work in ("flags", "cfg"):
        summary = json.loads((tmp_path / work / "summary.json").read_text())
        assert summary["artifact"]["hash"] == manifest["hash"]
        assert summary["sessions"][0]["views_per_call"] == 3
        assert summary["videos_ok"] == 8
    assert len([p for p in build_dir.iterdir() if p.is_dir()]) == 1
    # other words are another artifact: the run would build (and here, refuses to)
    with pytest.raises(AssertionError, match="built the artifact again"):
        run.main(_run_argv(inputs, tmp_path / "other", "--npus", "1", "--soc-version", "Ascend310P3",
                           "--views-per-call", "3", "--atc", str(inputs.atc), "--build-dir",
                           str(build_dir)))


def _refused(capsys, argv) -> str:
    with pytest.raises(SystemExit) as info:
        run.parse_args(argv)
    assert info.value.code == 2
    return capsys.readouterr().err


def test_a_run_needs_weights_or_an_explicit_random_weights(inputs, tmp_path, capsys):
    argv = ["--config", str(CONFIG), "--cpus", "1", "--work-dir", str(tmp_path)]
    err = _refused(capsys, argv)
    assert "--checkpoint" in err and "--random-weights" in err
    args = run.parse_args([*argv, "--random-weights"])
    assert args.random_weights and args.checkpoint is None


def test_a_mistyped_config_path_is_an_error(inputs, tmp_path, capsys):
    code = run.main(["--config", "configs/swin_tiny_tset.py", "--random-weights", "--cpus", "1",
                     "--work-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "config file not found: configs/swin_tiny_tset.py" in err and "Traceback" not in err


@pytest.mark.parametrize("flag, value", [
    ("--limit", "-1"), ("--limit", "0"), ("--decoders", "0"), ("--bench-loops", "-1"),
    ("--max-retries", "-1"), ("--flush-every", "0"), ("--cpus", "0"), ("--views-per-call", "0"),
    ("--opset", "9"), ("--limit", "ten"),
])
def test_numbers_out_of_range_are_refused_with_the_flag_named(inputs, tmp_path, capsys, flag, value):
    err = _refused(capsys, _run_argv(inputs, tmp_path, "--cpus", "1", flag, value))
    assert f"argument {flag}" in err
    assert "too small" in err or "not an integer" in err


def test_build_options_with_a_prebuilt_model_are_refused(inputs, tmp_path, capsys):
    err = _refused(capsys, ["--config", str(CONFIG), "--om", str(inputs.artifact.om_path), "--npus", "1",
                            "--soc-version", "Ascend910B", "--views-per-call", "2"])
    assert "--views-per-call" in err and "--soc-version" in err and "prebuilt --om" in err


def test_the_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    mine = tmp_path / "my_results"
    mine.mkdir()
    (mine / "thesis.txt").write_text("keep me")
    assert run.main(["--demo", "--work-dir", str(mine)]) == 2
    assert "holds files the demo did not make" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    assert not (tmp_path / "cache").exists()                     # refused before any work


def test_verbosity_flags_on_both_commands(capsys):
    for parse in (run.parse_args, build._parser().parse_args):
        base = ["--config", str(CONFIG), "--random-weights", "--cpus", "1"] if parse is run.parse_args \
            else ["--config", str(CONFIG)]
        assert parse([*base, "-v"]).verbose and parse([*base, "-q"]).quiet
        with pytest.raises(SystemExit):
            parse([*base, "-v", "-q"])
    capsys.readouterr()
    from harness import cli

    for flags, level in ((["-q"], logging.WARNING), ([], logging.INFO), (["-v"], logging.DEBUG)):
        cli.setup_logging(run.parse_args(["--config", str(CONFIG), "--random-weights", "--cpus", "1",
                                          *flags]))
        assert logging.getLogger("harness").level == level


def test_every_flag_has_help():
    for parser in (run._parser(), build._parser()):
        missing = [a.option_strings for a in parser._actions if not a.help]
        assert missing == [], parser.prog


def test_a_missing_list_names_the_flag_or_key_that_gave_it(inputs, tmp_path, capsys):
    missing = tmp_path / "no_such_list.txt"
    argv = _run_argv(inputs, tmp_path / "w", "--cpus", "1")
    argv[argv.index("--ann-file") + 1] = str(missing)
    assert run.main(argv) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: video list not found: {missing} (given by --ann-file); give the path of an"
        " existing list, or make one with `python -m harness.data.filelist VIDEO_FOLDER --out LIST`")
    # without --ann-file the list is the config's: the message names the config's key
    config = tmp_path / "cfg.py"
    config.write_text(f"_base_ = [{str(CONFIG)!r}]\ndata = dict(test=dict(ann_file={str(missing)!r}))\n")
    assert run.main(["--config", str(config), "--checkpoint", str(inputs.checkpoint), "--cpus", "1",
                     "--data-prefix", str(inputs.videos), "--work-dir", str(tmp_path / "w2"),
                     "--no-ray"]) == 2
    err = capsys.readouterr().err
    assert f"video list not found: {missing} (given by data.test.ann_file in the config)" in err


def test_random_weights_are_warned_about_once(inputs, tmp_path, caplog):
    """A fresh build (where the build used to warn too) and the run: one warning."""
    caplog.set_level(logging.WARNING)
    argv = _run_argv(inputs, tmp_path / "w", "--cpus", "1", "--limit", "1",
                     "--build-dir", str(tmp_path / "build"))
    argv[argv.index("--checkpoint"):argv.index("--checkpoint") + 2] = ["--random-weights"]
    assert run.main(argv) == 0
    warnings = [r.getMessage() for r in caplog.records if "random weights" in r.getMessage()]
    assert warnings == ["evaluating random weights (--random-weights): the predictions are meaningless"]
    # harness.build without --checkpoint warns once too, also when it reuses the build
    caplog.clear()
    assert build.main(["--config", str(CONFIG), "--build-dir", str(tmp_path / "build"), "-q"]) == 0
    warnings = [r.getMessage() for r in caplog.records if "random weights" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("no checkpoint given: the artifact has random weights")
