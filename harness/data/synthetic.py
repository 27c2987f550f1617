"""Synthetic videos whose classes a broken pipeline confuses.

Each class is one combination of three factors, each of which a specific pipeline
bug flips into another class:

- position of a textured blob (left/right/top/bottom): wrong crop offsets or order;
- its colour (red or blue dominant): an RGB/BGR swap;
- the direction its stripes scroll and it drifts (rightward/leftward): wrong frame order.

Videos are H.264 (PyAV/libx264, one encoder thread), deterministic for a given seed,
written atomically (temp name + rename), and generation is idempotent: rerunning with the
same arguments keeps existing files. Layout under OUT::

    OUT/label_map.txt, OUT/train_list.txt, OUT/val_list.txt, OUT/synthetic.json
    OUT/videos/{train,val}/<class_folder>/<split>_<i>.mp4

List lines are ``<path relative to OUT/videos> <label>`` (mmaction VideoDataset format).
Profile ``tiny`` makes small short clips for tests and the demo; ``k400`` makes
Kinetics-like clips (340x256, 10 s, 30 fps, textured moving background) for benchmarks.

CLI: ``python -m harness.data.synthetic OUT --classes N --per-class M [--train-per-class K]
[--seed S] [--profile tiny|k400]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from harness.errors import HarnessError

log = logging.getLogger(__name__)

POSITIONS = ("left", "right", "top", "bottom")
COLOURS = {"red": (215, 45, 40), "blue": (40, 55, 215)}
DIRECTIONS = ("rightward", "leftward")
MAX_CLASSES = len(POSITIONS) * len(COLOURS) * len(DIRECTIONS)


@dataclass(frozen=True)
class Profile:
    width: int
    height: int
    frames: int
    fps: int
    textured: bool  # moving noise texture in the background (Kinetics-like decode cost)


PROFILES = {
    "tiny": Profile(width=112, height=80, frames=40, fps=15, textured=False),
    "k400": Profile(width=340, height=256, frames=300, fps=30, textured=True),
}


@dataclass(frozen=True)
class ClassSpec:
    position: str
    colour: str
    direction: str

    @property
    def name(self) -> str:
        return f"{self.colour} {self.direction} {self.position}"


@dataclass(frozen=True)
class SyntheticDataset:
    root: Path
    videos: Path          # data_prefix for the lists
    label_map: Path
    train_list: Path
    val_list: Path
    classes: list[str]


def class_specs(n: int) -> list[ClassSpec]:
    """The first ``n`` classes; the first 8 pair up under every factor (left/right)."""
    if not 1 <= n <= MAX_CLASSES:
        raise HarnessError(f"--classes must be between 1 and {MAX_CLASSES}, got {n}")
    specs = [ClassSpec(p, c, d) for p in POSITIONS for c in COLOURS for d in DIRECTIONS]
    return specs[:n]


def render_frames(spec: ClassSpec, width: int, height: int, frames: int, seed: int,
                  textured: bool = False) -> np.ndarray:
    """RGB uint8 frames ``(frames, height, width, 3)`` of one video of class ``spec``."""
    rng = np.random.default_rng(seed)
    base = rng.integers(70, 150, size=3)
    if textured:
        # Noise texture twice the frame size, scrolled diagonally: costs the decoder
        # what real footage does (motion everywhere, high-frequency detail).
        tex = rng.integers(-40, 41, size=(2 * height, 2 * width, 1), dtype=np.int16)
        tex = (tex + np.roll(tex, 1, 0) + np.roll(tex, 1, 1)) // 2
    else:
        tex = rng.integers(-12, 13, size=(height, width, 1), dtype=np.int16)
    bw = max(4, int(width * rng.uniform(0.16, 0.22)))
    bh = max(4, int(height * rng.uniform(0.3, 0.4)))
    # Blob region: the blob's centre stays in its own part of the frame for the whole clip.
    if spec.position in ("left", "right"):
        # Left edge range keeps the whole blob in the outer 30% (left or right) of the frame.
        x_lo, x_hi = 0.02 * width, max(0.30 * width - bw, 0.02 * width)
        if spec.position == "right":
            x_lo, x_hi = width - bw - x_hi, width - bw - x_lo
        y_top = (height - bh) / 2 + rng.uniform(-0.1, 0.1) * height
    else:
        x_lo, x_hi = (0.5 * width - bw, 0.5 * width)
        y_top = 0.05 * height if spec.position == "top" else 0.95 * height - bh
    sign = 1 if spec.direction == "rightward" else -1
    colour = np.array(COLOURS[spec.colour]) + rng.integers(-15, 16, size=3)
    phase = rng.uniform(0, 2 * np.pi)
    # Stripes a few pixels wide scrolling one pixel a frame: even sampled every 4th frame
    # the shift per sample stays under half a period, so the motion never aliases into
    # the opposite direction.
    period = max(8.0, bw / 1.5)
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    xs = np.arange(bw)
    xs_frame = np.arange(width)
    wave_period, wave_phase = max(12.0, width / 7), rng.uniform(0, 2 * np.pi)
    for t in range(frames):
        frac = t / max(frames - 1, 1)
        frac = frac if sign > 0 else 1 - frac
        x0 = int(round(x_lo + (x_hi - x_lo) * frac))
        x0 = min(max(x0, 0), width - bw)
        y0 = min(max(int(round(y_top)), 0), height - bh)
        if textured:
            dy, dx = (3 * t) % height, (2 * t) % width
            bg = tex[dy:dy + height, dx:dx + width]
        else:
            # Soft waves drifting with the class's direction across the whole frame: every
            # crop, also one without the blob, shows the motion (frame order matters).
            bg = tex + np.rint(18 * np.sin(2 * np.pi * (xs_frame - sign * t) / wave_period
                                           + wave_phase)).astype(np.int16)[None, :, None]
        frame = np.clip(base + bg, 0, 255)
        # Stripes scroll with the drift direction.
        stripes = 0.65 + 0.35 * np.sin(2 * np.pi * (xs - sign * t) / period + phase)
        frame[y0:y0 + bh, x0:x0 + bw] = (colour[None, None, :] * stripes[None, :, None])
        out[t] = frame.astype(np.uint8)
    return out


def write_video(path: str | Path, frames: np.ndarray, fps: int = 30, pix_fmt: str | None = None,
                crf: int = 23, preset: str = "medium") -> Path:
    """Encode RGB frames ``(N, H, W, 3)`` as H.264 MP4, atomically (temp file + rename).

    Odd frame sizes need ``pix_fmt='yuv444p'`` (4:2:0 needs even sizes); it is chosen
    automatically when a side is odd.
    """
    import av  # imported here: only the generator needs PyAV

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, h, w, _ = frames.shape
    if pix_fmt is None:
        pix_fmt = "yuv420p" if w % 2 == 0 and h % 2 == 0 else "yuv444p"
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
            stream.codec_context.thread_count = 1  # no thread pool
            # x264's assembly gave different bytes for the same frames from one encode to
            # the next (seen with PyAV 18's libx264, in its lookahead); its C code is
            # deterministic, which the dataset's seed promises, at 4x the encode time.
            # The rest stays x264's defaults, like real re-encoded Kinetics files.
            stream.options = {"crf": str(crf), "preset": preset, "x264-params": "asm=0"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def folder_name(class_name: str) -> str:
    return class_name.replace(" ", "_")


def make_dataset(out_dir: str | Path, classes: int, per_class: int, seed: int = 0,
                 profile: str = "tiny", train_per_class: int | None = None) -> SyntheticDataset:
    """Write a synthetic dataset (see module docstring); ``per_class`` val videos per class,
    ``train_per_class`` (default: ``per_class``) train videos per class."""
    if profile not in PROFILES:
        raise HarnessError(f"unknown profile {profile!r}; use one of {', '.join(PROFILES)}")
    if per_class < 0 or (train_per_class is not None and train_per_class < 0):
        raise HarnessError("videos per class must be >= 0")
    train_per_class = per_class if train_per_class is None else train_per_class
    prof = PROFILES[profile]
    specs = class_specs(classes)
    root = Path(out_dir)
    videos = root / "videos"
    meta = {"classes": classes, "seed": seed, "profile": asdict(prof), "version": 4}
    meta_path = root / "synthetic.json"
    # Same generator arguments -> existing files are reused; otherwise they are rewritten.
    reuse = meta_path.exists() and json.loads(meta_path.read_text()).get("params") == meta
    root.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"train": [], "val": []}
    made = 0
    for label, spec in enumerate(specs):
        for split, count in (("train", train_per_class), ("val", per_class)):
            for i in range(count):
                rel = f"{split}/{folder_name(spec.name)}/{split}_{i:04d}.mp4"
                path = videos / rel
                if not (reuse and path.exists()):
                    # Seed from (seed, class, split, index): adding videos never changes others.
                    video_seed = [seed, label, 0 if split == "train" else 1, i]
                    frames = render_frames(spec, prof.width, prof.height, prof.frames,
                                           np.random.SeedSequence(video_seed).generate_state(1)[0],
                                           textured=prof.textured)
                    write_video(path, frames, fps=prof.fps)
                    made += 1
                lines[split].append(f"{rel} {label}")
    names = [s.name for s in specs]
    _write_text(root / "label_map.txt", "\n".join(names) + "\n")
    _write_text(root / "train_list.txt", "".join(line + "\n" for line in lines["train"]))
    _write_text(root / "val_list.txt", "".join(line + "\n" for line in lines["val"]))
    _write_text(meta_path, json.dumps({"params": meta}, indent=1) + "\n")
    log.info("synthetic dataset in %s: %d videos written, %d reused", root, made,
             len(lines["train"]) + len(lines["val"]) - made)
    return SyntheticDataset(root, videos, root / "label_map.txt", root / "train_list.txt",
                            root / "val_list.txt", names)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.data.synthetic",
                                     description="Write synthetic H.264 videos, a label map and train/val lists.")
    parser.add_argument("out", help="output folder")
    parser.add_argument("--classes", type=int, default=8, help=f"number of classes (1..{MAX_CLASSES})")
    parser.add_argument("--per-class", type=int, default=2, help="val videos per class")
    parser.add_argument("--train-per-class", type=int, default=None,
                        help="train videos per class (default: same as --per-class)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="tiny")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ds = make_dataset(args.out, args.classes, args.per_class, seed=args.seed,
                          profile=args.profile, train_per_class=args.train_per_class)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(ds.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
