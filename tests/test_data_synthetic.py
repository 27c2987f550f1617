"""Synthetic datasets: lists and label map usable by the harness, deterministic, cached,
and classes that a broken pipeline (frame order, RGB/BGR, crop offsets) would confuse."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from harness.config import load_config
from harness.data import ViewDecoder, load_label_map, read_list
from harness.data.synthetic import ClassSpec, class_specs, make_dataset, render_frames
from harness.errors import HarnessError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("syn") / "tiny", classes=8, per_class=2,
                        train_per_class=1, seed=3)


def test_lists_and_label_map_are_readable(dataset):
    names = load_label_map(dataset.label_map)
    assert names == dataset.classes and len(names) == len(set(names)) == 8
    val = read_list(dataset.val_list, dataset.videos, num_classes=8)
    train = read_list(dataset.train_list, dataset.videos, num_classes=8)
    assert len(val) == 16 and len(train) == 8
    assert sorted(e.label for e in val) == sorted(list(range(8)) * 2)
    assert not {e.path for e in val} & {e.path for e in train}


def test_videos_decode_with_the_tiny_config(dataset):
    decoder = ViewDecoder.from_config(load_config("configs/swin_tiny_test.py"))
    entry = read_list(dataset.val_list, dataset.videos)[0]
    views = decoder(entry.path)
    assert views.shape == (6, 3, 8, 64, 64) and views.dtype == np.uint8


def test_same_seed_same_bytes_and_reruns_reuse_files(dataset, tmp_path):
    other = make_dataset(tmp_path / "again", classes=8, per_class=2, train_per_class=1, seed=3)
    first = read_list(dataset.val_list, dataset.videos)[5].path
    second = read_list(other.val_list, other.videos)[5].path
    assert open(first, "rb").read() == open(second, "rb").read()
    mtime = {p: p.stat().st_mtime_ns for p in other.videos.rglob("*.mp4")}
    make_dataset(tmp_path / "again", classes=8, per_class=2, train_per_class=1, seed=3)
    assert {p: p.stat().st_mtime_ns for p in other.videos.rglob("*.mp4")} == mtime
    assert not list(other.root.rglob("*.tmp"))


def test_different_seed_changes_videos(tmp_path):
    a = make_dataset(tmp_path / "a", classes=1, per_class=1, train_per_class=0, seed=0)
    b = make_dataset(tmp_path / "b", classes=1, per_class=1, train_per_class=0, seed=1)
    pa, pb = (read_list(d.val_list, d.videos)[0].path for d in (a, b))
    assert open(pa, "rb").read() != open(pb, "rb").read()


def test_too_many_classes_is_an_error(tmp_path):
    with pytest.raises(HarnessError, match="--classes"):
        make_dataset(tmp_path, classes=99, per_class=1)


def test_cli(tmp_path):
    result = subprocess.run([sys.executable, "-m", "harness.data.synthetic", str(tmp_path / "d"),
                             "--classes", "2", "--per-class", "1", "--train-per-class", "0", "--seed", "4"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "d" / "val_list.txt").read_text().splitlines()) == 2
    assert (tmp_path / "d" / "train_list.txt").read_text() == ""


def test_first_eight_classes_are_distinct_combinations():
    specs = class_specs(10)
    assert len({(s.position, s.colour, s.direction) for s in specs}) == 10
    eight = specs[:8]
    for s in eight:  # each factor flip lands on another class among the eight
        flips = [ClassSpec("right" if s.position == "left" else "left", s.colour, s.direction),
                 ClassSpec(s.position, "blue" if s.colour == "red" else "red", s.direction),
                 ClassSpec(s.position, s.colour, "leftward" if s.direction == "rightward" else "rightward")]
        assert all(f in eight for f in flips)


def blob_mask(frame):
    """Pixels where one channel clearly dominates (the coloured blob)."""
    f = frame.astype(int)
    return (np.abs(f[..., 0] - f[..., 2]) > 60)


@pytest.mark.parametrize("spec", class_specs(16))
def test_class_factors_are_visible(spec):
    frames = render_frames(spec, 112, 80, 40, seed=11)
    mask = blob_mask(frames[10])
    ys, xs = np.nonzero(mask)
    # position: the blob sits in its own part of the frame
    cx, cy = xs.mean() / 112, ys.mean() / 80
    expect = {"left": cx < 0.35, "right": cx > 0.65, "top": cy < 0.35, "bottom": cy > 0.65}
    assert expect[spec.position], (cx, cy)
    # colour: red or blue dominates inside the blob (a BGR swap gives the other class)
    r, b = frames[10][mask][:, 0].mean(), frames[10][mask][:, 2].mean()
    assert (r > b) == (spec.colour == "red")
    # direction: the stripe pattern moves right (or left) between frames
    row = int(ys.mean())
    cols = np.nonzero(mask[row])[0]
    a = frames[10][row, cols.min():cols.max() + 1, :].astype(float).sum(1)
    b_ = frames[11][row, cols.min():cols.max() + 1, :].astype(float).sum(1)
    shifts = {s: -np.sum((np.roll(a, s)[3:-3] - b_[3:-3]) ** 2) for s in (-2, 2)}
    assert max(shifts, key=shifts.get) == (2 if spec.direction == "rightward" else -2)
