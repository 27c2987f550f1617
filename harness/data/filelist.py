"""Video lists (mmaction VideoDataset format) and label maps.

A list has one video per line: ``<path relative to data_prefix> <label index>``,
whitespace separated (the path may itself contain spaces: the label is the last field). A
line whose path ends in a bare number is mmaction's rawframe form (``<frame folder> <frames>
<label>``) and is refused, naming ``file:line``: the harness reads videos, not frame folders.
Blank lines are skipped. A missing video file is *not* a list error: it becomes that
video's failure record when it is decoded.

CLI: ``python -m harness.data.filelist ROOT --out LIST [--label-map FILE]`` writes a list
for a class-folder tree ``ROOT/<class>/<video>`` (replaces the reference repository's
generate_videos_filelist.sh). Folder names may use underscores for spaces.

``python -m harness.data.filelist --kinetics-csv validate.csv ROOT --out LIST`` writes the
list for the official Kinetics-400 annotations (``label,youtube_id,time_start,time_end,split``
with or without ``is_cc``): files ``{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>``
in one folder per class or all in ROOT (detected), labels by the label map's order, CSV
order kept. Entries without a file are left out of the list, counted, the first few named,
and written to ``LIST.missing.txt`` (the CSV's header, then each absent entry's line).
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from harness.config import LABEL_MAP_K400
from harness.data import storage
from harness.data.storage import StorageOptions
from harness.errors import HarnessError
from harness.reasons import Reason

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi")
_DUPLICATES_SHOWN = 3   # duplicate entries named in the one warning about them
_MISSING_SHOWN = 5      # absent Kinetics entries named in the message about them
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
_MAKE_LIST = "python -m harness.data.filelist VIDEO_FOLDER --out LIST"   # named in list errors


class ListError(HarnessError):
    """A video list or label map is malformed; the message names file:line."""


@dataclass
class VideoEntry:
    index: int   # 0-based position among the list's videos (blank lines not counted)
    path: str    # data_prefix / relative path
    label: int


def read_list_bytes(ann_file: str | Path, options: StorageOptions | None = None,
                    given_by: str = "data.test.ann_file in the config") -> bytes:
    """A list's bytes, from a local file or a URI (``s3://bucket/val_list.txt``); ``given_by``:
    where the path came from (a flag or a config key), for the message when it is not found."""
    try:
        return storage.read_bytes(ann_file, options)
    except storage.StorageError as exc:
        if exc.reason is Reason.MISSING:
            raise ListError(f"video list not found: {ann_file} (given by {given_by}); give the"
                            " path of an existing list, or make one with"
                            f" `{_MAKE_LIST}`") from None
        raise ListError(f"cannot read video list {ann_file}: {exc.detail}") from None


def read_list(ann_file: str | Path, data_prefix: str | Path | None = "",
              num_classes: int | None = None, options: StorageOptions | None = None) -> list[VideoEntry]:
    """Read and parse a video list (a local file or a URI): :func:`parse_list`."""
    return parse_list(read_list_bytes(ann_file, options), ann_file, data_prefix, num_classes)


def parse_list(content: bytes, ann_file: str | Path, data_prefix: str | Path | None = "",
               num_classes: int | None = None) -> list[VideoEntry]:
    """Parse a video list's bytes. Errors name ``file:line``; duplicate paths are summarized in
    one warning (each duplicate stays in the list, as mmaction would evaluate it twice).
    Paths are ``data_prefix`` joined with the list's (a folder or a URI prefix)."""
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListError(f"cannot read video list {ann_file}: {exc}") from None
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
            raise ListError(f"{where}: expected '<relative path> <label>', got {line!r}; make a"
                            f" list with `{_MAKE_LIST}`")
        rel, label_text = parts
        if _is_rawframe(rel):
            raise ListError(f"{where}: {line!r} has {len(line.split())} columns: this looks like"
                            " a rawframe list (mmaction's RawframeDataset form, '<frame folder>"
                            " <frames> <label>'), but the harness reads video lists"
                            f" '<path> <label>'; make one with `{_MAKE_LIST}`")
        try:
            label = int(label_text)
        except ValueError:
            raise ListError(f"{where}: label {label_text!r} is not an integer") from None
        if label < 0 or (num_classes is not None and label >= num_classes):
            upper = f"{num_classes - 1}" if num_classes is not None else "any"
            raise ListError(f"{where}: label {label} is out of range (0..{upper})")
        path = storage.join(str(data_prefix), rel) if data_prefix else rel
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


def _is_rawframe(rel: str) -> bool:
    """A path whose last word is a whole number: ``<frame folder> <frames>`` of a rawframe list
    (a video path may hold spaces, ``b c/y y.mkv``, but does not end in a bare number)."""
    words = rel.split()
    return len(words) > 1 and words[-1].isdigit()


def load_label_map(path: str | Path, num_classes: int | None = None) -> list[str]:
    """Class names in label-index order, one per line (blank lines skipped); with
    ``num_classes`` (the model's), a map of another length is refused: its names would be
    another model's classes."""
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
    if num_classes is not None and len(names) != num_classes:
        raise ListError(f"label map {path} names {len(names)} classes but the model has"
                        f" {num_classes}: give the label map of this model's classes, one name a"
                        " line in label order (--label-map, or harness.label_map in the config)")
    return names


def _class_key(name: str) -> str:
    return name.replace("_", " ").strip()


def _is_video(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")


def _list_tree(root: str, options: StorageOptions | None) -> list[str]:
    """Every file under ``root`` (a folder or a URI prefix), relative; ListError if none."""
    try:
        if storage.kind(root, options) != "directory":
            raise ListError(f"video folder not found: {root}")
        return storage.list_files(root, options)
    except storage.StorageError as exc:
        raise ListError(f"cannot list {root}: {exc.detail or exc.reason}") from None


def build_list(root: str | Path, label_map: list[str],
               options: StorageOptions | None = None) -> list[tuple[str, int]]:
    """``(relative path, label)`` for every video under ``root/<class folder>/``, sorted;
    ``root`` is a folder or a URI prefix (``s3://bucket/kinetics400/val``).

    Folder names match class names with underscores read as spaces; an unknown folder
    is an error naming it.
    """
    index = {_class_key(name): i for i, name in enumerate(label_map)}
    rows: list[tuple[str, int]] = []
    unknown: set[str] = set()
    for rel in _list_tree(str(root), options):
        folder, _, rest = rel.partition("/")
        if not rest:
            continue   # files at the top are not the list's
        label = index.get(_class_key(folder))
        if label is None:
            unknown.add(folder)
        elif _is_video(rel.rsplit("/", 1)[-1]):
            rows.append((rel, label))
    if unknown:
        raise ListError(f"{root}: folder(s) {', '.join(repr(u) for u in sorted(unknown))} match no"
                        " class in the label map (rename them or pass --label-map)")
    by_label: dict[int, int] = defaultdict(int)
    for _, label in rows:
        by_label[label] += 1
    log.info("%d videos in %d classes", len(rows), len(by_label))
    return sorted(rows)


def _folder_variants(label: str) -> list[str]:
    """Class folder names the Kinetics download tools write for ``label``: the label as is
    (ActivityNet crawler, the CVDF archives), spaces as underscores (mmaction2's
    rename_classnames.sh), and also parentheses as dashes (its older kinetics400 script);
    each also without quotes."""
    under = label.replace(" ", "_")
    names = [label, under, under.replace("(", "-").replace(")", "-")]
    names += [n.replace('"', "").replace("'", "") for n in names]
    return list(dict.fromkeys(names))


@dataclass
class KineticsList:
    rows: list[tuple[str, int]]       # (path relative to root, label), CSV order
    missing: list[str]                # CSV lines of entries without a file
    header: str                       # the CSV's header line
    layout: str                       # 'class folders' or 'flat'
    total: int


def _video_names(files: list[str]) -> dict[str, dict[str, str]]:
    """``folder -> {stem: file name}`` for the videos directly in each folder ('' the root)
    of a tree's relative paths (first of VIDEO_EXTENSIONS wins)."""
    rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
    found: dict[str, dict[str, str]] = defaultdict(dict)
    split = [rel.rsplit("/", 1) if "/" in rel else ["", rel] for rel in files]
    for folder, name in sorted(split, key=lambda f: (rank.get(os.path.splitext(f[1])[1].lower(), 99), f[1])):
        stem, ext = os.path.splitext(name)
        if ext.lower() in rank and not name.startswith(".") and "/" not in folder:
            found[folder].setdefault(stem, name)
    return found


def kinetics_list(csv_file: str | Path, root: str | Path, label_map: list[str],
                  options: StorageOptions | None = None) -> KineticsList:
    """The list for an official Kinetics annotation CSV and the videos under ``root`` (a
    folder or a URI prefix)."""
    csv_file = Path(csv_file)
    try:
        lines = csv_file.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise ListError(f"Kinetics CSV not found: {csv_file}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ListError(f"cannot read Kinetics CSV {csv_file}: {exc}") from exc
    names = _video_names(_list_tree(str(root), options))
    if not lines:
        raise ListError(f"{csv_file}: empty (expected a header {','.join(KINETICS_COLUMNS)})")
    header = [h.strip() for h in next(csv.reader([lines[0]]))]
    lacking = [c for c in KINETICS_COLUMNS if c not in header]
    if lacking:
        raise ListError(f"{csv_file}:1: header {lines[0]!r} lacks {', '.join(lacking)} (expected"
                        f" {','.join(KINETICS_COLUMNS)}[,is_cc]; the test split has no labels)")
    col = {name: header.index(name) for name in KINETICS_COLUMNS}
    exact = {name: i for i, name in enumerate(label_map)}
    loose = {_class_key(name): i for i, name in enumerate(label_map)}
    entries = []   # (lineno, raw line, label text, label index, file stem)
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        where = f"{csv_file}:{lineno}"
        fields = next(csv.reader([raw]))
        if len(fields) != len(header):
            raise ListError(f"{where}: {len(fields)} fields, the header has {len(header)}: {raw!r}")
        text = fields[col["label"]].strip()
        label = exact.get(text, loose.get(_class_key(text)))
        if label is None:
            raise ListError(f"{where}: label {text!r} is not in the label map (check the CSV or"
                            " pass --label-map)")
        times = []
        for key in ("time_start", "time_end"):
            value = fields[col[key]].strip()
            whole = re.fullmatch(r"(\d+)(\.0*)?", value)   # 417, or 417.0 from a spreadsheet
            if whole is None:
                raise ListError(f"{where}: {key} {value!r} is not a whole number of seconds")
            times.append(int(whole.group(1)))
        stem = f"{fields[col['youtube_id']].strip()}_{times[0]:06d}_{times[1]:06d}"
        entries.append((lineno, raw, text, label, stem))

    # Layout: class folders if any folder under root is named after a class of the CSV.
    folders = set(names) - {""}
    per_label: dict[str, list[str]] = {}
    for _, _, text, _, _ in entries:
        if text not in per_label:
            per_label[text] = [v for v in _folder_variants(text) if v in folders]
    layout = "class folders" if any(per_label.values()) else "flat"
    rows: list[tuple[str, int]] = []
    missing: list[str] = []
    for _, raw, text, label, stem in entries:
        where = per_label[text] if layout == "class folders" else [""]
        hit = next(((f, names[f][stem]) for f in where if stem in names.get(f, {})), None)
        if hit is None:
            missing.append(raw)
        else:
            rows.append((f"{hit[0]}/{hit[1]}" if hit[0] else hit[1], label))
    if entries and not rows:
        raise ListError(f"{root}: none of the {len(entries)} entries of {csv_file} has a video"
                        f" ({layout} layout; e.g. {entries[0][4]}.mp4); is this the right folder?")
    return KineticsList(rows, missing, lines[0], layout, len(entries))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.data.filelist",
                                     description="Write an mmaction video list for a class-folder tree"
                                     " or an official Kinetics annotation CSV.")
    parser.add_argument("root", help="folder, or object-storage prefix (s3://bucket/prefix), holding"
                        " one sub-folder per class (with --kinetics-csv: the videos, in class"
                        " folders or all in this folder)")
    parser.add_argument("--out", required=True, help="list file to write")
    parser.add_argument("--kinetics-csv", metavar="CSV", default=None,
                        help="official Kinetics annotations (label,youtube_id,time_start,time_end,"
                        "split[,is_cc]): list these entries; absent files go to OUT.missing.txt")
    parser.add_argument("--label-map", default=str(LABEL_MAP_K400),
                        help="class names in label order (default: configs/label_map_k400.txt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        label_map = load_label_map(args.label_map)
        options = StorageOptions().resolved()   # endpoint, region: $AWS_ENDPOINT_URL, $AWS_REGION
        if args.kinetics_csv is None:
            rows, kinetics = build_list(args.root, label_map, options), None
        else:
            kinetics = kinetics_list(args.kinetics_csv, args.root, label_map, options)
            rows = kinetics.rows
    except ListError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{rel} {label}\n" for rel, label in rows), encoding="utf-8")
    if kinetics is None:
        print(f"{out}: {len(rows)} videos")
        return 0
    side = out.with_name(out.name + ".missing.txt")
    print(f"{out}: {len(rows)} of {kinetics.total} entries ({kinetics.layout})")
    if kinetics.missing:
        side.write_text("".join(line + "\n" for line in [kinetics.header, *kinetics.missing]),
                        encoding="utf-8")
        shown = "; ".join(kinetics.missing[:_MISSING_SHOWN])
        more = len(kinetics.missing) - _MISSING_SHOWN
        print(f"{len(kinetics.missing)} entries have no video file under {args.root} and are not"
              f" in the list: {shown}" + (f"; and {more} more" if more > 0 else "")
              + f" (all in {side})", file=sys.stderr)
    elif side.exists():
        side.unlink()   # from an earlier run: nothing is missing now
    return 0


if __name__ == "__main__":
    sys.exit(main())


def stratified_subset(entries: list, n: int, seed: int = 0) -> list:
    """A deterministic sample of ``n`` entries, stratified by label (``--subset``): classes
    take turns giving one entry each (a class with none left drops out), so per-class counts
    differ by at most one where the list allows; which entries of a class, and which classes
    get one more in the last round, come from ``seed``. Returned in list order."""
    import random

    rng = random.Random(seed)
    by_label: dict[int, list] = {}
    for entry in entries:
        by_label.setdefault(int(entry.label), []).append(entry)
    pools = []
    for label in sorted(by_label):
        members = list(by_label[label])
        rng.shuffle(members)
        pools.append(members)
    chosen: list = []
    while len(chosen) < n and pools:
        order = list(range(len(pools)))
        rng.shuffle(order)                      # who gets the last, partial round
        for k in order[: n - len(chosen)]:
            chosen.append(pools[k].pop())
        pools = [p for p in pools if p]
    return sorted(chosen, key=lambda e: e.index)
