"""Video lists (mmaction VideoDataset format) and label maps.

A list has one video per line: ``<path relative to data_prefix> <label index>``,
whitespace separated (the path may itself contain spaces: the label is the last field).
Blank lines are skipped. A missing video file is *not* a list error: it becomes that
video's failure record when it is decoded.

CLI: ``python -m harness.data.filelist ROOT --out LIST [--label-map FILE]`` writes a list
for a class-folder tree ``ROOT/<class>/<video>`` (replaces the reference repository's
generate_videos_filelist.sh). Folder names may use underscores for spaces.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness.config import LABEL_MAP_K400
from harness.errors import HarnessError

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")
_DUPLICATES_SHOWN = 3   # duplicate entries named in the one warning about them


class ListError(HarnessError):
    """A video list or label map is malformed; the message names file:line."""


@dataclass
class VideoEntry:
    index: int   # 0-based position among the list's videos (blank lines not counted)
    path: str    # data_prefix / relative path
    label: int


def read_list(ann_file: str | Path, data_prefix: str | Path | None = "",
              num_classes: int | None = None) -> list[VideoEntry]:
    """Parse a video list. Errors name ``file:line``; duplicate paths are summarized in one
    warning (each duplicate stays in the list, as mmaction would evaluate it twice)."""
    ann_file = Path(ann_file)
    try:
        text = ann_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ListError(f"video list not found: {ann_file} (check data.test.ann_file in the config)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ListError(f"cannot read video list {ann_file}: {exc}") from exc
    entries: list[VideoEntry] = []
    first_line: dict[str, int] = {}
    duplicates: list[str] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{ann_file}:{lineno}"
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise ListError(f"{where}: expected '<relative path> <label>', got {line!r}")
        rel, label_text = parts
        try:
            label = int(label_text)
        except ValueError:
            raise ListError(f"{where}: label {label_text!r} is not an integer") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            upper = f"{num_classes - 1}" if num_classes is not None else "any"
            raise ListError(f"{where}: label {label} is out of range (0..{upper})")
        path = os.path.join(str(data_prefix), rel) if data_prefix else rel
        if path in first_line:
            duplicates.append(f"line {lineno} repeats line {first_line[path]} ({rel})")
        else:
            first_line[path] = lineno
        entries.append(VideoEntry(len(entries), path, label))
    if duplicates:  # one warning, not one per line: a list can repeat thousands of entries
        shown = "; ".join(duplicates[:_DUPLICATES_SHOWN])
        hidden = len(duplicates) - _DUPLICATES_SHOWN
        more = f"; and {hidden} more" if hidden > 0 else ""
        log.warning("%s: %d duplicate entries, each evaluated again as mmaction would: %s%s",
                    ann_file, len(duplicates), shown, more)
    return entries


def load_label_map(path: str | Path) -> list[str]:
    """Class names in label-index order, one per line (blank lines skipped)."""
    path = Path(path)
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise ListError(f"cannot read label map {path}: {exc}") from exc
    names = [n for n in names if n]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ListError(f"{path}: class name {name!r} appears twice (indices {seen[name]} and {i})")
        seen[name] = i
    if not names:
        raise ListError(f"{path}: label map is empty")
    return names


def _class_key(name: str) -> str:
    return name.replace("_", " ").strip()


def build_list(root: str | Path, label_map: list[str]) -> list[tuple[str, int]]:
    """``(relative path, label)`` for every video under ``root/<class folder>/``, sorted.

    Folder names match class names with underscores read as spaces; an unknown folder
    is an error naming it.
    """
    root = Path(root)
    if not root.is_dir():
        raise ListError(f"video folder not found: {root}")
    index = {_class_key(name): i for i, name in enumerate(label_map)}
    rows: list[tuple[str, int]] = []
    unknown = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        label = index.get(_class_key(folder.name))
        if label is None:
            unknown.append(folder.name)
            continue
        for dirpath, _, files in os.walk(folder):
            for name in files:
                if name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith("."):
                    rel = Path(dirpath, name).relative_to(root).as_posix()
                    rows.append((rel, label))
    if unknown:
        raise ListError(f"{root}: folder(s) {', '.join(repr(u) for u in unknown)} match no class"
                        " in the label map (rename them or pass --label-map)")
    by_label: dict[int, int] = defaultdict(int)
    for _, label in rows:
        by_label[label] += 1
    log.info("%d videos in %d classes", len(rows), len(by_label))
    return sorted(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.data.filelist",
                                     description="Write an mmaction video list for a class-folder tree.")
    parser.add_argument("root", help="folder holding one sub-folder per class")
    parser.add_argument("--out", required=True, help="list file to write")
    parser.add_argument("--label-map", default=str(LABEL_MAP_K400),
                        help="class names in label order (default: configs/label_map_k400.txt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rows = build_list(args.root, load_label_map(args.label_map))
    except ListError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{rel} {label}\n" for rel, label in rows), encoding="utf-8")
    print(f"{out}: {len(rows)} videos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
