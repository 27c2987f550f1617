"""Every command in README.md runs, on small inputs.

The Quick start's two lines are run verbatim by .ci/run (the install, the demo, the
tests). Every other ```bash block is run here, line by line, in a scratch folder laid
out the way the README assumes (a config at configs/swin_small_k400.py, the checkpoint
file, data/kinetics400/val with class folders) but small: a tiny Video Swin with 400
classes and a few synthetic videos, one of them the famous 0-byte file. The Ascend
commands run against the test doubles: the README's ``source .../set_env.sh`` is pointed
at tests/doubles/set_env.sh, which puts the ATC, pyACL and aclruntime doubles on the
paths, so Ray finds two (fake) chips per node as it would on an Ascend host.

Substitutions, and nothing else: set_env.sh's path, ``<head ip>`` -> 127.0.0.1, the Ray
and dashboard ports -> free ones. The GPU command cannot succeed on a machine without GPUs: it must
stop before any work with exit status 2 and a message naming the GPUs.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

# No third-party imports at module level: .ci/run runs this file before installing anything.

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOUBLES = REPO / "tests" / "doubles"
K400_CLASSES = [line.strip() for line in (REPO / "configs" / "label_map_k400.txt").read_text().splitlines()]


def bash_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(section heading, commands) for each ```bash block; continuation lines joined."""
    blocks, heading = [], ""
    for match in re.finditer(r"^(#+ [^\n]*)$|^```bash\n(.*?)^```", text, re.S | re.M):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
            continue
        commands = [c.strip() for c in match.group(2).replace("\\\n", " ").splitlines()]
        blocks.append((heading, [c for c in commands if c and not c.startswith("#")]))
    return blocks


def test_quick_start_is_two_commands_that_ci_runs():
    blocks = bash_blocks(README.read_text())
    quick = [cmds for heading, cmds in blocks if heading.lower() == "quick start"]
    assert len(quick) == 1 and len(quick[0]) == 2
    install_demo, tests = quick[0]
    assert "harness.run --demo" in install_demo and "pytest" in tests
    assert "torch==2.13.0" in install_demo.split("&&")[0]  # the CPU wheel before the project
    assert "readme_commands" in (REPO / ".ci" / "run").read_text()  # .ci/run runs them verbatim


def readme_commands(section: str = "quick start") -> list[str]:
    """The commands of one README section (used by .ci/run for the Quick start)."""
    return [c for heading, cmds in bash_blocks(README.read_text())
            if heading.lower() == section for c in cmds]


# ---------------------------------------------------------------- the scratch folder

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_workspace(ws: Path) -> dict:
    """configs/, the checkpoint, data/kinetics400/val and the Ascend guide's .om, all tiny."""
    import torch

    from harness.build import build_artifact
    from harness.config import load_config, model_section
    from harness.data.synthetic import make_dataset
    from harness.model import build

    (ws / "configs").mkdir(parents=True)
    config = ws / "configs" / "swin_small_k400.py"
    config.write_text(
        f"_base_ = [{str(REPO / 'configs' / 'swin_tiny_test.py')!r}]\n"
        "model = dict(cls_head=dict(num_classes=400))\n"
        "data = dict(test=dict(ann_file='data/kinetics400/kinetics400_val_list.txt',"
        " data_prefix='data/kinetics400/val'))\n")
    cfg = load_config(config)
    torch.manual_seed(0)
    model = build(model_section(cfg))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save({"state_dict": model.state_dict()}, ws / "swin_small_patch244_window877_kinetics400_1k.pth")

    synthetic = make_dataset(ws / "synthetic", classes=3, per_class=2, train_per_class=0, seed=1)
    val = ws / "data" / "kinetics400" / "val"
    for k, folder in enumerate(sorted(p for p in (synthetic.videos / "val").iterdir())):
        target = val / K400_CLASSES[k].replace(" ", "_")
        shutil.copytree(folder, target)
    broken = val / "crossing_river" / "ZVdAl-yh2m0.mp4"  # 0 bytes, as in the real download
    broken.parent.mkdir()
    broken.touch()

    # The Ascend guide's .om takes normalized float32 views; made here with the ATC double.
    env_path = os.environ["PATH"]
    os.environ["PATH"] = f"{DOUBLES}{os.pathsep}{env_path}"
    try:
        guide = build_artifact(cfg, ws / "swin_small_patch244_window877_kinetics400_1k.pth",
                               build_dir=ws / "guide_build", input_dtype="float32", require_om=True)
    finally:
        os.environ["PATH"] = env_path
    shutil.copy(guide.om_path, ws / "swin_small_bs1.om")
    return {"videos": 7, "broken": 1}


def _sourced(script: str, env: dict) -> dict:
    out = subprocess.run(["bash", "-c", f"source {shlex.quote(script)} >/dev/null && env -0"],
                         env=env, capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def _run(command: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _scores(work_dir: Path) -> dict[int, list[float]]:
    import pyarrow.parquet as pq

    rows = pq.read_table(work_dir / "predictions.parquet").to_pylist()
    return {r["index"]: r["scores"] for r in rows if r["status"] == "ok"}


def test_every_readme_command_runs(tmp_path):
    ws = tmp_path / "ws"
    expected = _write_workspace(ws)
    substitutions = {
        "/usr/local/Ascend/ascend-toolkit/set_env.sh": str(DOUBLES / "set_env.sh"),
        "<head ip>": "127.0.0.1",
        "6379": str(_free_port()),
        "8265": str(_free_port()),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this venv's python/ray
    env["HARNESS_CACHE_DIR"] = str(tmp_path / "cache")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)
    # The object-storage example: the val folder in a real S3 server (moto) at the README's port.
    sys.path.insert(0, str(REPO / "tests"))
    from s3_support import CREDENTIALS, S3Server

    s3 = S3Server().start()
    s3.upload(ws / "data" / "kinetics400" / "val", "kinetics400", "val")
    substitutions.update({"http://127.0.0.1:9000": s3.endpoint,
                          "<access key id>": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          "<secret access key>": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]})
    env["AWS_DEFAULT_REGION"] = CREDENTIALS["AWS_DEFAULT_REGION"]

    ran: list[str] = []
    try:
        for heading, commands in bash_blocks(README.read_text()):
            if heading.lower() == "quick start":
                continue  # .ci/run runs these
            for command in commands:
                for old, new in substitutions.items():
                    command = command.replace(old, new)
                ran.append(command)
                if command.startswith("source "):
                    env = _sourced(command.split(None, 1)[1], env)
                    continue
                if command.startswith("export "):
                    key, value = command.split(None, 1)[1].split("=", 1)
                    env[key] = value
                    continue
                result = _run(command, env, ws)
                if "--gpus" in command:  # no GPU on this machine: a clear refusal, before any work
                    assert result.returncode == 2, (command, result.stdout, result.stderr)
                    assert "GPU" in result.stderr and "Traceback" not in result.stderr
                    continue
                assert result.returncode == 0, (command, result.stdout[-3000:], result.stderr[-3000:])
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120)
        s3.stop()

    assert any(c.startswith("ray start --head") for c in ran)  # the README's several-hosts part ran
    # What the commands were supposed to produce.
    listed = (ws / "data" / "kinetics400" / "kinetics400_val_list.txt").read_text().splitlines()
    assert len(listed) == expected["videos"]
    assert list((ws / "build").glob("*/model.om")), "the build made no .om with ATC on PATH"
    main = json.loads((ws / "work_dirs" / "swin_small_k400" / "summary.json").read_text())
    assert main["videos_total"] == expected["videos"] and main["failures"] == {"empty": 1}
    assert {d["kind"] for d in main["devices"]} == {"npu"} and len(main["devices"]) == 2
    assert main["bench"] and len(main["bench"]["devices"]) == 2
    assert (ws / "work_dirs" / "swin_small_k400" / "report.html").exists()
    hosts = json.loads((ws / "work_dirs" / "two_hosts" / "summary.json").read_text())
    assert len({d["node"] for d in hosts["devices"]}) == 2  # actors on both nodes
    guide = json.loads((ws / "work_dirs" / "guide_om" / "summary.json").read_text())
    assert guide["sessions"][0]["input_dtype"] == "float32"
    # Same weights, either input contract (float32 normalized on the host, uint8 normalized in
    # the graph): the same scores for every video, not just the same top-1. Relative: this
    # random 400-class model's probabilities are all near 1/400, and swapping the colour
    # channels on the host moves them by only ~2e-4 of their value (float rounding: ~1e-7).
    guide_scores = _scores(ws / "work_dirs" / "guide_om")
    main_scores = _scores(ws / "work_dirs" / "swin_small_k400")
    assert sorted(guide_scores) == sorted(main_scores) and len(main_scores) == expected["videos"] - 1
    for index, scores in main_scores.items():
        worst = max(abs(a - b) / abs(a) for a, b in zip(scores, guide_scores[index]))
        assert worst < 1e-5, (index, worst)
    # From the bucket: the same list, and exactly the scores of the run on the files.
    remote = json.loads((ws / "work_dirs" / "s3" / "summary.json").read_text())
    assert remote["videos_total"] == expected["videos"] and remote["failures"] == {"empty": 1}
    assert _scores(ws / "work_dirs" / "s3") == main_scores
    cpu = json.loads((ws / "work_dirs" / "cpu" / "summary.json").read_text())
    assert cpu["videos_total"] == expected["videos"]


if __name__ == "__main__":  # .ci/run: print the Quick start's commands, one a line
    print("\n".join(readme_commands(sys.argv[1] if len(sys.argv) > 1 else "quick start")))
