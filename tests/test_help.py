"""What ``--help``, ``--version`` and the docs tell a newcomer, and that it is what the code does.

- ``--help`` of both commands comes in groups, with examples and the exit codes;
- ``--version`` names the version pyproject.toml declares;
- ``CONFIG CHECKPOINT`` in mmaction2's ``tools/test.py`` order means ``--config``/``--checkpoint``,
  and giving one both ways is one refusal;
- the ``--decoders`` default reads the same in ``--help`` and docs/running.md, and is what
  the cluster code does; the docs link nothing outside the repository.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from harness import build, cli, run

REPO = Path(__file__).resolve().parents[1]
RUNNING = (REPO / "docs" / "running.md").read_text()


def _help(parser) -> str:
    return parser.format_help()


def _refused(capsys, parse, argv) -> str:
    with pytest.raises(SystemExit) as info:
        parse(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]      # argparse: the usage, then one error line


# ------------------------------------------------------------------ groups, examples, exit codes

def test_run_help_is_in_groups_in_a_readers_order():
    text = _help(run._parser())
    titles = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[A-Za-z].*:", line)]
    groups = [t for t in titles if t not in ("options", "examples", "exit status")]
    assert [g.split(" (")[0].split(":")[0] for g in groups] == [
        "model and weights", "devices", "data", "output and resume",
        "measurements besides the accuracy", "Ray", "fault handling", "build options",
        "the torch backend"]
    # each flag where a reader looks for it
    section = {title: body for title, body in re.findall(r"^(\S[^\n]*):\n((?:  [^\n]*\n|\n(?=  ))*)",
                                                          text, re.M)}
    assert "--npus N" in section["devices"] and "--decoders D" in section["devices"]
    assert "--work-dir DIR" in section["output and resume"]
    assert "--address ADDR" in section["Ray"]
    assert "--max-retries R" in next(v for k, v in section.items() if k.startswith("fault handling"))


def test_run_help_ends_with_examples_and_every_exit_code():
    text = _help(run._parser())
    epilog = text[text.index("\nexamples:"):]
    # the exit codes of the issue that asked for them (issue 19), in the epilog's words
    for code, words in (("0", "done"), ("1", "under --strict"), ("1", "self-check failed"),
                        ("2", "a user error"), ("2", "failure-rate breaker"), ("2", "lost Ray"),
                        ("130", "Ctrl-C or SIGTERM")):
        assert re.search(rf"^  {code} +.*{re.escape(words)}", epilog.replace("\n       ", " "),
                         re.M), (code, words)
    assert "the same command resumes" in epilog


def test_every_example_of_the_help_parses():
    text = _help(run._parser())
    examples = re.findall(r"^  (python -m harness\.run .*?)(?<!\\)$",
                          text.replace("\\\n      ", ""), re.M)
    assert len(examples) == 4
    for example in examples:
        args = run.parse_args(shlex.split(example)[3:])
        assert args.demo or (args.config and (args.checkpoint or args.om)), example


def test_build_help_has_the_same_shape():
    text = _help(build._parser())
    assert "model and weights:" in text and "build options (the same words" in text
    assert "examples:\n  python -m harness.build configs/swin_small_k400.py swin_small.pth" in text
    assert re.search(r"^  0 +built, or reused", text, re.M) and re.search(r"^  2 +a user error", text, re.M)


def test_the_exit_codes_are_the_same_in_the_docstring_and_running_md():
    for where in (run.__doc__, RUNNING):
        assert "130" in where and "Ctrl-C" in where, where[:200]
    table = dict(re.findall(r"^\| (\d+) \| (.*) \|$", RUNNING, re.M))
    assert set(table) == {"0", "1", "2", "130"}
    assert "--strict" in table["1"] and "breaker" in table["2"] and "resumes" in table["130"]


@pytest.mark.parametrize("module", [run, build])
def test_version_is_the_packages(module, capsys):
    import tomllib

    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    parse = run.parse_args if module is run else build._parser().parse_args
    with pytest.raises(SystemExit) as info:
        parse(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"swin-k400-harness {declared}"


# ------------------------------------------------------------------ CONFIG CHECKPOINT

def test_positional_config_and_checkpoint_are_the_flags():
    positional = run.parse_args(["configs/x.py", "ckpt.pth", "--cpus", "2"])
    flags = run.parse_args(["--config", "configs/x.py", "--checkpoint", "ckpt.pth", "--cpus", "2"])
    assert (positional.config, positional.checkpoint, positional.cpus) == ("configs/x.py", "ckpt.pth", 2)
    assert (flags.config, flags.checkpoint) == (positional.config, positional.checkpoint)
    # CONFIG alone, with the weights as a flag
    assert run.parse_args(["configs/x.py", "--om", "m.om", "--npus", "1"]).config == "configs/x.py"
    b = build._parser().parse_args(["configs/x.py", "ckpt.pth"])
    cli.merge_positional_model(build._parser(), b)
    assert (b.config, b.checkpoint) == ("configs/x.py", "ckpt.pth")


def test_giving_the_config_or_checkpoint_both_ways_is_one_refusal(capsys):
    err = _refused(capsys, run.parse_args, ["configs/x.py", "ckpt.pth", "--config", "configs/y.py",
                                            "--cpus", "2"])
    assert err == ("python -m harness.run: error: the config is given twice (CONFIG configs/x.py and"
                   " --config configs/y.py): give it once, either way")
    err = _refused(capsys, run.parse_args, ["configs/x.py", "a.pth", "--checkpoint", "b.pth", "--cpus", "1"])
    assert "the checkpoint is given twice (CHECKPOINT a.pth and --checkpoint b.pth)" in err
    err = _refused(capsys, run.parse_args, ["configs/x.py", "a.pth", "--om", "m.om", "--npus", "1"])
    assert err.endswith("error: CHECKPOINT a.pth and --om are two models: give one")
    err = _refused(capsys, lambda argv: build.main(argv), ["configs/x.py", "--config", "configs/y.py"])
    assert "python -m harness.build: error: the config is given twice" in err


def test_a_refusal_shows_a_short_usage(capsys):
    with pytest.raises(SystemExit):
        run.parse_args(["--cpus", "2"])
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "python -m harness.run: error: --config is required (or CONFIG first, or --demo)"
    assert len(err.splitlines()) <= 6       # not the 35 lines of every flag


# ------------------------------------------------------------------ --decoders, said once

DECODERS_DEFAULT = "one more than the devices to start with"


def test_the_decoders_default_reads_the_same_in_help_and_docs():
    help_text = " ".join(_help(run._parser()).split())
    assert f"(default: {DECODERS_DEFAULT}" in help_text and "up to the free CPUs" in help_text
    row = next(line for line in RUNNING.splitlines() if line.startswith("| `--decoders D`"))
    assert f"(default: {DECODERS_DEFAULT}" in row and "up to the free CPUs" in row
    logical = " ".join(RUNNING.split("**Logical CPUs on a local instance**")[1].split("\n- ")[0].split())
    assert "`max(1, cores - CPU actors)`: the room the decoders may grow into" in logical
    assert "one more decoder than devices" in logical


def test_the_decoders_default_is_what_the_cluster_code_does(monkeypatch):
    """The rule the docs state (one more than the devices, at most the free CPUs; --decoders D
    fixes it), against a fake cluster's resources."""
    import ray

    from harness import cluster

    def fake(total, free):
        monkeypatch.setattr(ray, "cluster_resources", lambda: dict(total))
        monkeypatch.setattr(ray, "available_resources", lambda: dict(free))

    fake({"CPU": 16, "NPU": 2}, {"CPU": 16, "NPU": 2})          # room: 3 to start, 16 at most
    assert cluster.wait_for_devices(cluster.DevicePlan("npu", 2), None, 1) == (3, 16)
    fake({"CPU": 4}, {"CPU": 4})                                # 2 CPU actors leave 2 CPUs
    assert cluster.wait_for_devices(cluster.DevicePlan("cpu", 2), None, 1) == (2, 2)
    assert cluster.wait_for_devices(cluster.DevicePlan("cpu", 2), 1, 1) == (1, 1)


# ------------------------------------------------------------------ the docs stay inside the repo

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_only_files_that_exist(doc):
    text = doc.read_text()
    for name in set(re.findall(r"\b([\w./-]+\.md)\b", text)):
        candidates = [doc.parent / name, REPO / name, REPO / "docs" / Path(name).name]
        assert any(c.exists() for c in candidates), f"{doc.name} names {name}, not in the repository"
    for target in re.findall(r"\]\(([^)#]+)", text):
        if not target.startswith("http"):
            assert (doc.parent / target).exists(), f"{doc.name} links {target}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_show_no_ones_own_paths(doc):
    assert not re.findall(r"(?:/work/|/root/|/home/\w+)", doc.read_text())

