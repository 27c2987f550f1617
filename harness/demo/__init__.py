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
    """Fill in what ``--demo`` implies, unless the user set it, and make the dataset."""
    import sys

    print(f"demo: synthetic dataset in {demo_data_dir()} (made once, then reused)", file=sys.stderr)
    dataset = make_demo_dataset(train=False)
    args.config = args.config or str(DEMO_CONFIG)
    if not (args.checkpoint or args.onnx or args.om):
        args.checkpoint = str(DEMO_CHECKPOINT)
    args.ann_file = args.ann_file or str(dataset.val_list)
    args.data_prefix = args.data_prefix or str(dataset.videos)
    args.label_map = args.label_map or str(dataset.label_map)
    if not (args.npus or args.gpus or args.cpus):
        args.cpus = 2
    args.bench_loops = args.bench_loops or 20
    args.work_dir = args.work_dir or "work_dirs/demo"
    args.overwrite = True  # each demo run is a fresh measurement


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
