"""The embedded demo: a synthetic action dataset and a tiny Video Swin trained on it.

``python -m harness.run --demo`` evaluates the shipped checkpoint (``swin_demo.pth``,
made by ``python -m harness.demo.train``) on the held-out split of a synthetic dataset
generated here once and cached. The classes differ by motion direction, colour and
position, so the accuracy collapses when frame order, channel order or crops go wrong:
a high score proves the whole path, not just that it runs.
"""

from __future__ import annotations

import os
from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
DEMO_CONFIG = DEMO_DIR / "swin_demo.py"
DEMO_CHECKPOINT = DEMO_DIR / "swin_demo.pth"

CLASSES = 8
VAL_PER_CLASS = 13      # 104 held-out videos
TRAIN_PER_CLASS = 24
SEED = 0
MIN_TOP1 = 0.90         # chance is 1/8; below this the pipeline is broken
WORK_DIR_MARKER = ".harness-demo"


def demo_data_dir() -> Path:
    """Where the demo's dataset is cached: ``$HARNESS_CACHE_DIR/demo-data`` (default ~/.cache)."""
    base = os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "swin-k400-harness"
    return Path(base) / "demo-data"


def make_demo_dataset(out_dir: Path | None = None, train: bool = True):
    """Generate (or reuse) the demo's synthetic dataset; returns a SyntheticDataset."""
    from harness.data.synthetic import make_dataset

    return make_dataset(out_dir or demo_data_dir(), classes=CLASSES, per_class=VAL_PER_CLASS,
                        seed=SEED, profile="tiny", train_per_class=TRAIN_PER_CLASS if train else 0)


def prepare(args) -> None:
    """Fill in what ``--demo`` implies, unless the user set it, and make the dataset.

    The demo replaces its work dir's results on every run, so it only uses a folder it made
    (marked by ``.harness-demo``) or an empty one: a user's ``--work-dir`` holding anything
    else is refused, never emptied.
    """
    import sys

    work = Path(args.work_dir or "work_dirs/demo")
    claim_work_dir(work)
    print(f"demo: synthetic dataset in {demo_data_dir()} (made once, then reused)", file=sys.stderr)
    dataset = make_demo_dataset(train=False)
    args.config = args.config or str(DEMO_CONFIG)
    if not (args.checkpoint or args.onnx or args.om or args.random_weights):
        args.checkpoint = str(DEMO_CHECKPOINT)
    args.ann_file = args.ann_file or str(dataset.val_list)
    args.data_prefix = args.data_prefix or str(dataset.videos)
    args.label_map = args.label_map or str(dataset.label_map)
    if not (args.npus or args.gpus or args.cpus):
        args.cpus = 2
    args.bench_loops = args.bench_loops or 20
    args.work_dir = str(work)
    args.overwrite = True  # each demo run is a fresh measurement (in a folder it owns)


def claim_work_dir(work: Path) -> None:
    """Make ``work`` the demo's (new, empty, or already the demo's), or refuse it."""
    from harness.errors import ConfigError

    if work.exists() and not work.is_dir():
        raise ConfigError(f"the demo's work dir {work} is a file; give it a folder with --work-dir")
    if work.is_dir() and any(work.iterdir()) and not (work / WORK_DIR_MARKER).exists():
        raise ConfigError(f"the demo's work dir {work} holds files the demo did not make; the demo"
                          " replaces its results on every run, so give it a new or empty folder"
                          " with --work-dir")
    work.mkdir(parents=True, exist_ok=True)
    (work / WORK_DIR_MARKER).write_text("made by python -m harness.run --demo\n")


def check(summary: dict) -> bool:
    """The demo's self-check: say plainly whether the pipeline computed the right thing."""
    top1 = summary.get("top1") or 0.0
    if top1 >= MIN_TOP1 and not summary.get("videos_failed"):
        print(f"demo: PASSED: top-1 {top1:.3f} >= {MIN_TOP1} on {summary['videos_ok']} held-out"
              f" videos (chance is {1 / CLASSES:.3f})")
        return True
    print(f"demo: FAILED: top-1 {top1:.3f} < {MIN_TOP1} (chance is {1 / CLASSES:.3f}) or videos"
          f" failed ({summary.get('videos_failed')}): the pipeline is broken (decoding, frame"
          " order, colour channels, crops or the model). See report.html.")
    return False
