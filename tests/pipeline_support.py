"""Shared inputs for the pipeline tests: synthetic videos, a checkpoint, built artifacts.

Everything is made by the tests themselves (tiny config, random weights saved as a
checkpoint, the ATC and aclruntime test doubles from tests/doubles).
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DOUBLES = REPO / "tests" / "doubles"
CONFIG = REPO / "configs" / "swin_tiny_test.py"
BROKEN = {  # relative path -> content (None: listed but missing); each becomes a failure
    "broken/empty.mp4": b"",
    "broken/not_a_video.mp4": b"this is text, not a container\n" * 20,
    "broken/missing.mp4": None,
}


@dataclass
class Inputs:
    root: Path
    videos: Path           # data_prefix
    good_list: Path        # only decodable videos
    mixed_list: Path       # good videos with broken ones mixed in
    long_list: Path        # the good videos repeated (resume test)
    checkpoint: Path
    artifact: object       # uint8 input, ONNX + fake .om
    artifact_f32: object   # float32 input, 2 views per call (host normalization, chunking)
    atc: Path


_MADE: dict[str, Inputs] = {}


def shared_inputs(tmp_path_factory) -> Inputs:
    """One set of inputs per test session (the builds take seconds)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _MADE:
        _MADE[key] = make_inputs(tmp_path_factory.mktemp("pipeline-inputs"))
    return _MADE[key]


def make_inputs(root: Path) -> Inputs:
    import torch

    from harness import model as swin
    from harness.build import build_artifact
    from harness.config import load_config, model_section
    from harness.data.synthetic import make_dataset

    torch.set_num_threads(1)
    data = make_dataset(root / "data", classes=4, per_class=2, seed=0, profile="tiny")
    good = data.val_list.read_text().splitlines()
    for rel, content in BROKEN.items():
        if content is not None:
            (data.videos / rel).parent.mkdir(parents=True, exist_ok=True)
            (data.videos / rel).write_bytes(content)
    broken_lines = [f"{rel} {i % 4}" for i, rel in enumerate(BROKEN)]
    mixed = good[:3] + broken_lines[:1] + good[3:6] + broken_lines[1:] + good[6:]
    (root / "mixed_list.txt").write_text("\n".join(mixed) + "\n")
    (root / "long_list.txt").write_text("\n".join(good * 20) + "\n")

    cfg = load_config(CONFIG)
    torch.manual_seed(0)
    net = swin.build(model_section(cfg))
    checkpoint = root / "tiny.pth"
    torch.save({"state_dict": net.state_dict()}, checkpoint)

    atc = root / "bin" / "atc"
    atc.parent.mkdir()
    shutil.copy(DOUBLES / "atc", atc)
    atc.chmod(atc.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    build_dir = root / "build"
    artifact = build_artifact(cfg, checkpoint, build_dir=build_dir, atc=str(atc), require_om=True)
    artifact_f32 = build_artifact(cfg, checkpoint, build_dir=build_dir, atc=str(atc),
                                  require_om=True, input_dtype="float32", views_per_call=2)
    return Inputs(root, data.videos, data.val_list, root / "mixed_list.txt", root / "long_list.txt",
                  checkpoint, artifact, artifact_f32, atc)


def worker_pythonpath() -> str:
    """The fake aclruntime and the harness on the workers' path (tests only)."""
    return os.pathsep.join([str(DOUBLES), str(REPO)])


def use_fake_aclruntime() -> None:
    """Make ``import aclruntime`` in this process find the test double."""
    if str(DOUBLES) not in sys.path:
        sys.path.insert(0, str(DOUBLES))


def run_args(inputs: Inputs, work: Path, *extra: str, ann: Path | None = None) -> list[str]:
    return ["--config", str(CONFIG), "--checkpoint", str(inputs.checkpoint),
            "--build-dir", str(inputs.root / "build"), "--ann-file", str(ann or inputs.mixed_list),
            "--data-prefix", str(inputs.videos), "--work-dir", str(work), "--no-progress", *extra]


def scores_by_index(table) -> dict[int, np.ndarray]:
    return {r["index"]: np.asarray(r["scores"], np.float32)
            for r in table.to_pylist() if r["status"] == "ok"}


class Gate:
    """A video the decode worker cannot read until the test says so: a FIFO, whose open()
    blocks until a writer comes. A run that reaches it waits there, so a test acts on an event
    (the run is at the gate), not on the machine's speed.

    ``release()`` hands the reader the real video's bytes (the blocked read completes and the
    video decodes); ``replace()`` puts the real file in its place for a later run."""

    def __init__(self, path: Path, video: Path) -> None:
        self.path, self.video = path, video
        os.mkfifo(path)

    def release(self, timeout: float = 60.0) -> None:
        import threading

        def write() -> None:
            with open(self.path, "wb") as f:      # returns once the reader has it open
                f.write(self.video.read_bytes())

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(timeout)
        assert not writer.is_alive(), f"nobody read {self.path} within {timeout} s"

    def replace(self) -> None:
        try:   # a reader still blocked (a killed run's worker) gets end-of-file, not a hang
            os.close(os.open(self.path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        self.path.unlink()
        shutil.copy(self.video, self.path)


def gated_list(inputs: "Inputs", folder: Path, before: int = 12, after: int = 3):
    """``(list, data prefix, gate)``: ``before`` decodable videos, then the gate (a copy of
    the first video, once released), then ``after`` more."""
    folder.mkdir(parents=True, exist_ok=True)
    good = inputs.good_list.read_text().split("\n")
    good = [line for line in good if line.strip()]
    top = Path(good[0].split()[0]).parts[0]
    (folder / top).symlink_to(inputs.videos / top, target_is_directory=True)
    first_path, first_label = good[0].split()
    gate = Gate(folder / "gate.mp4", inputs.videos / first_path)
    lines = (good * (before // len(good) + 1))[:before] + [f"gate.mp4 {first_label}"] + good[:after]
    ann = folder / "gated_list.txt"
    ann.write_text("\n".join(lines) + "\n")
    return ann, folder, gate


def concurrently(fn, args: list) -> list:
    """``fn(a)`` for each of ``args``, each in its own thread started together (as a Ray
    threaded actor runs the calls queued at it); the answers in order."""
    out: list = [None] * len(args)
    start = threading.Barrier(len(args))

    def one(k):
        start.wait()
        try:
            out[k] = fn(args[k])
        except Exception as exc:  # returned, for the test to look at
            out[k] = exc

    threads = [threading.Thread(target=one, args=(k,)) for k in range(len(args))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out
