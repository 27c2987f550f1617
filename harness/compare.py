"""``python -m harness.compare RUN_A RUN_B``: is the accuracy difference of two runs real or noise?

    python -m harness.compare work_dirs/npu work_dirs/gpu [--label-map FILE] [--max-flips N] [--json]

RUN_A and RUN_B are work dirs of ``harness.run`` over the same videos (say an Ascend 310P3 run
and a GPU run). Their videos are paired by list index when both ran the same list (equal
``list_sha256`` in run.json), else by the path relative to each run's ``data_prefix`` (two
hosts mount the videos in different places) or by the absolute path, the ``data_prefix``
joined with the list's path (two runs split the same path differently between prefix and
list), whichever pairs more videos; the first occurrence of a repeated path wins, and the
output says which matching it used. The videos scored in both runs are "in common"; the
others are counted (only in A, only in B, failed in A, in B). Runs with no video in common
are a user error: there is nothing to compare.

For the videos in common it reports each run's top-1 accuracy and the top-1 agreement (both
runs predict the same class), each with its 95% Wilson interval (harness.stats); the flips,
by class name: right under A and wrong under B, and the reverse; and McNemar's exact test on
the paired correctness (b = right only under A, c = right only under B).

How to read the p-value: a video right (or wrong) under both runs says nothing about which is
better; only the flips do. If both runs were equally accurate, each flip would go either way
with probability 1/2, like a fair coin, and p is the chance of flips at least as lopsided as
those seen (b = 1, c = 6 gives p = 0.125: one time in eight, a fair coin does that). Below 0.05
the difference is called significant: unlikely to be noise. Above, the data cannot tell the
runs apart, which does not prove them equal: with few flips a real difference goes unseen.

Output: an aligned table (flips up to ``--max-flips``) or, with ``--json``, everything as one
JSON object. Exit status: 0 compared, 2 a user error (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import logging
import posixpath
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness import cli
from harness.config import LABEL_MAP_K400
from harness.errors import HarnessError
from harness.results import PREDICTIONS, RUN_FILE, read_predictions
from harness.scores import top_k
from harness.stats import mcnemar_exact, wilson_interval

log = logging.getLogger("harness.compare")

SIGNIFICANCE = 0.05
BY_INDEX, BY_PATH, BY_LOCATION = "list index", "relative path", "absolute path"
_DESCRIPTION = __doc__.split("\n\n")[0]


class CompareError(HarnessError):
    """A run dir cannot be compared (missing, not a harness work dir, no predictions)."""


@dataclass(frozen=True)
class Video:
    """One recorded video of a run, as the comparison needs it."""

    index: int
    path: str                 # relative to the run's data_prefix
    location: str             # the data_prefix joined with ``path``: the file the run read
    label: int
    ok: bool
    predicted: int | None     # top-1 class, None when it failed


@dataclass
class Run:
    directory: Path
    identity: dict            # run.json
    videos: list[Video]
    num_classes: int | None   # length of the score vectors; None when no video was scored


@dataclass
class Pairing:
    matching: str                          # BY_INDEX or BY_PATH
    pairs: list[tuple[Video, Video]]
    only_in_a: int
    only_in_b: int
    repeated_in_a: int                     # later occurrences of a path, ignored (BY_PATH)
    repeated_in_b: int


# ------------------------------------------------------------------ reading a run

def load_run(work_dir: str | Path) -> Run:
    """A harness.run work dir's identity and videos; a CompareError says what is missing."""
    directory = Path(work_dir)
    if not directory.is_dir():
        raise CompareError(f"{directory}: no such directory (give two work dirs of harness.run)")
    identity = read_identity(directory)
    table = read_table(directory)
    predicted, num_classes = top1_predictions(table)
    prefix = str(identity.get("data_prefix") or "")
    videos = []
    for row in table.select(["index", "path", "label", "status"]).to_pylist():
        relative = relative_to_prefix(row["path"], prefix)
        location = posixpath.join(prefix, relative) if prefix else relative
        videos.append(Video(row["index"], relative, location, row["label"], row["status"] == "ok",
                            predicted.get(row["index"])))
    return Run(directory, identity, videos, num_classes)


def read_identity(directory: Path) -> dict:
    run_file = directory / RUN_FILE
    if not run_file.is_file():
        raise CompareError(f"{directory} is not a harness.run work dir (it has no {RUN_FILE})")
    try:
        identity = json.loads(run_file.read_text())
    except (OSError, ValueError) as exc:
        raise CompareError(f"cannot read {run_file}: {exc}") from exc
    if not isinstance(identity, dict):
        raise CompareError(f"{run_file} is not a harness run file (expected a JSON object)")
    return identity


def read_table(directory: Path):
    import pyarrow as pa

    try:
        table = read_predictions(directory)
    except (OSError, pa.ArrowException) as exc:
        raise CompareError(f"cannot read {directory / PREDICTIONS}: {exc}") from exc
    if not table.num_rows:
        raise CompareError(f"{directory} has no predictions ({PREDICTIONS} is missing or empty):"
                           " has its harness.run recorded any video yet?")
    return table


def top1_predictions(table) -> tuple[dict[int, int], int | None]:
    """{index: top-1 class} of the scored rows, and the number of classes."""
    import pyarrow.compute as pc

    scored = table.filter(pc.equal(table.column("status"), "ok"))
    if not scored.num_rows:
        return {}, None
    flat = scored.column("scores").combine_chunks().flatten().to_numpy()
    scores = np.asarray(flat, np.float32).reshape(scored.num_rows, -1)
    best = top_k(scores, 1)[:, 0]
    indices = scored.column("index").to_pylist()
    return dict(zip(indices, (int(c) for c in best))), scores.shape[1]


def relative_to_prefix(path: str, prefix: str) -> str:
    """``path`` as recorded (the config's data_prefix joined with the list's path) relative to
    run.json's ``data_prefix`` (that prefix resolved to absolute). A relative recorded path was
    joined with a relative prefix, a tail of the resolved one: the longest such tail is
    stripped. A path outside the prefix stays as it is (normalized)."""
    parts = Path(posixpath.normpath(path)).parts
    prefix_parts = Path(posixpath.normpath(prefix)).parts if prefix else ()
    if Path(path).is_absolute():
        if prefix_parts and parts[: len(prefix_parts)] == prefix_parts and len(parts) > len(prefix_parts):
            return posixpath.join(*parts[len(prefix_parts):])
        return posixpath.join(*parts)
    tail = prefix_parts[1:] if prefix_parts[:1] == ("/",) else prefix_parts
    for k in range(len(tail), 0, -1):
        if parts[:k] == tail[-k:] and len(parts) > k:
            return posixpath.join(*parts[k:])
    return posixpath.join(*parts)


# ------------------------------------------------------------------ pairing

def pair_runs(a: Run, b: Run) -> Pairing:
    """Pair by list index when both ran the same list, else by relative or absolute path,
    whichever pairs more (relative on a tie)."""
    same_list = a.identity.get("list_sha256") and a.identity.get("list_sha256") == b.identity.get("list_sha256")
    if same_list:
        return pair_by(a, b, BY_INDEX, lambda v: v.index)
    relative = pair_by(a, b, BY_PATH, lambda v: v.path)
    absolute = pair_by(a, b, BY_LOCATION, lambda v: v.location)
    return absolute if len(absolute.pairs) > len(relative.pairs) else relative


def pair_by(a: Run, b: Run, matching: str, key) -> Pairing:
    first_a, repeated_a = first_by_key(a.videos, key)
    first_b, repeated_b = first_by_key(b.videos, key)
    pairs = [(video, first_b[k]) for k, video in first_a.items() if k in first_b]
    return Pairing(matching, pairs, len(first_a.keys() - first_b.keys()),
                   len(first_b.keys() - first_a.keys()), repeated_a, repeated_b)


def first_by_key(videos: list[Video], key) -> tuple[dict, int]:
    """{key: first video (lowest index) with it}, and how many later ones were ignored."""
    first: dict = {}
    for video in sorted(videos, key=lambda v: v.index):
        first.setdefault(key(video), video)
    return first, len(videos) - len(first)


# ------------------------------------------------------------------ comparing

def compare(a: Run, b: Run, class_names: list[str] | None) -> dict:
    """Everything the command reports, as one JSON-ready dict."""
    pairing = pair_runs(a, b)
    failed_in_a = sum(not va.ok for va, _ in pairing.pairs)
    failed_in_b = sum(not vb.ok for _, vb in pairing.pairs)
    both_ok = [(va, vb) for va, vb in pairing.pairs if va.ok and vb.ok]
    common = [(va, vb) for va, vb in both_ok if va.label == vb.label]
    if len(common) < len(both_ok):
        log.warning("%d paired video(s) have different labels in the two runs: left out",
                    len(both_ok) - len(common))
    if not common:   # no number below would mean anything
        raise CompareError(no_common_video(a, b, pairing, failed_in_a, failed_in_b, len(both_ok)))
    right_only_a = [(va, vb) for va, vb in common if is_right(va) and not is_right(vb)]
    right_only_b = [(va, vb) for va, vb in common if is_right(vb) and not is_right(va)]
    p_value = mcnemar_exact(len(right_only_a), len(right_only_b))
    return {
        "a": describe_run(a, pairing.only_in_a, failed_in_a, pairing.repeated_in_a),
        "b": describe_run(b, pairing.only_in_b, failed_in_b, pairing.repeated_in_b),
        "matching": pairing.matching,
        "matched": len(pairing.pairs),
        "failed_in_a": failed_in_a,
        "failed_in_b": failed_in_b,
        "label_differs": len(both_ok) - len(common),
        "in_common": len(common),
        "top1_a": proportion(sum(is_right(va) for va, _ in common), len(common)),
        "top1_b": proportion(sum(is_right(vb) for _, vb in common), len(common)),
        "agreement": proportion(sum(va.predicted == vb.predicted for va, vb in common), len(common)),
        "mcnemar": {"right_only_a": len(right_only_a), "right_only_b": len(right_only_b),
                    "p_value": p_value,
                    "reading": plain_reading(len(right_only_a), len(right_only_b), p_value)},
        "flips": {"right_a_wrong_b": [describe_flip(va, vb, class_names) for va, vb in right_only_a],
                  "right_b_wrong_a": [describe_flip(va, vb, class_names) for va, vb in right_only_b]},
    }


def no_common_video(a: Run, b: Run, pairing: Pairing, failed_in_a: int, failed_in_b: int,
                    label_differs: int) -> str:
    """The one sentence for two runs with no video scored in both."""
    if not pairing.pairs:
        how = pairing.matching if pairing.matching == BY_INDEX else "relative or absolute path"
        return (f"{a.directory} and {b.directory} have no video in common by {how} (e.g. A read"
                f" {a.videos[0].location}, B {b.videos[0].location}): compare two runs over the"
                " same videos")   # (load_run refuses a run without videos)
    return (f"none of the {len(pairing.pairs)} videos both runs recorded was scored in both"
            f" (failed in A: {failed_in_a}, in B: {failed_in_b}; labels differ: {label_differs}):"
            " there is nothing to compare; fix the failures and resume the runs first")


def is_right(video: Video) -> bool:
    return video.predicted == video.label


def proportion(successes: int, n: int) -> dict:
    interval = wilson_interval(successes, n)
    return {"successes": successes, "n": n, "rate": successes / n if n else None,
            "interval95": list(interval) if interval else None}


def plain_reading(right_only_a: int, right_only_b: int, p_value: float) -> str:
    if p_value < SIGNIFICANCE:
        better = "A" if right_only_a > right_only_b else "B"
        return f"the difference is significant at 5%: {better} is right on more videos, beyond noise"
    if right_only_a + right_only_b == 0:
        return "the difference is not significant at 5%: both runs are right on the same videos"
    return "the difference is not significant at 5%: it may well be noise"


def describe_run(run: Run, only_here: int, failed: int, repeated: int) -> dict:
    return {"work_dir": str(run.directory), "backend": run.identity.get("backend"),
            "artifact_hash": run.identity.get("artifact_hash"),
            "list_sha256": run.identity.get("list_sha256"),
            "data_prefix": run.identity.get("data_prefix"),
            "recorded": len(run.videos), "only_here": only_here, "failed": failed,
            "repeated_paths_ignored": repeated, "num_classes": run.num_classes}


def describe_flip(va: Video, vb: Video, class_names: list[str] | None) -> dict:
    return {"index_a": va.index, "index_b": vb.index, "path": va.path,
            "label": va.label, "predicted_a": va.predicted, "predicted_b": vb.predicted,
            "true_class": class_name(va.label, class_names),
            "class_a": class_name(va.predicted, class_names),
            "class_b": class_name(vb.predicted, class_names)}


def class_name(index: int, class_names: list[str] | None) -> str:
    if class_names is None or not 0 <= index < len(class_names):
        return str(index)
    return class_names[index]


# ------------------------------------------------------------------ class names

def choose_class_names(label_map: str | None, a: Run, b: Run) -> list[str] | None:
    """``--label-map``, else the K400 map when the scores have 400 classes, else None (numbers)."""
    counts = {n for n in (a.num_classes, b.num_classes) if n is not None}
    if len(counts) > 1:
        raise CompareError(f"the runs score different numbers of classes ({a.num_classes} in"
                           f" {a.directory}, {b.num_classes} in {b.directory}): not the same task")
    num_classes = counts.pop() if counts else None
    if label_map is None and num_classes == 400 and LABEL_MAP_K400.is_file():
        label_map = str(LABEL_MAP_K400)
    if label_map is None:
        return None
    # imported here: harness.data pulls in the video decoders
    from harness.data.filelist import load_label_map

    names = load_label_map(label_map)
    if num_classes is not None and len(names) < num_classes:
        raise CompareError(f"label map {label_map} names {len(names)} classes, the scores have"
                           f" {num_classes}")
    return names


# ------------------------------------------------------------------ text output

def pct(share: dict) -> str:
    if share["rate"] is None:
        return "n/a (no video in common)"
    low, high = share["interval95"]
    return (f"{100 * share['rate']:6.2f}%  [{100 * low:.2f}%, {100 * high:.2f}%]"
            f"  ({share['successes']}/{share['n']})")


def format_report(result: dict, max_flips: int) -> str:
    a, b, mc = result["a"], result["b"], result["mcnemar"]
    lines = [f"A  {a['work_dir']}  ({run_label(a)})", f"B  {b['work_dir']}  ({run_label(b)})",
             f"matched by {result['matching']}" + (" (both ran the same video list)"
             if result["matching"] == BY_INDEX else " (the runs' video lists differ)"), ""]
    rows = [("", "A", "B"), ("recorded", a["recorded"], b["recorded"]),
            ("only in this run", a["only_here"], b["only_here"]),
            ("failed (of the matched)", a["failed"], b["failed"])]
    if a["repeated_paths_ignored"] or b["repeated_paths_ignored"]:
        rows.append(("repeated paths ignored", a["repeated_paths_ignored"], b["repeated_paths_ignored"]))
    lines += [f"{name:<26}{va!s:>8}{vb!s:>8}" for name, va, vb in rows]
    if result["label_differs"]:
        lines.append(f"{'label differs (left out)':<26}{result['label_differs']:>8}")
    lines += [f"{'in common (ok in both)':<26}{result['in_common']:>8}", "",
              f"{'top-1 A':<26}{pct(result['top1_a'])}",
              f"{'top-1 B':<26}{pct(result['top1_b'])}",
              f"{'agreement (same top-1)':<26}{pct(result['agreement'])}",
              f"{'right only under A (b)':<26}{mc['right_only_a']:>8}",
              f"{'right only under B (c)':<26}{mc['right_only_b']:>8}",
              f"{'McNemar exact p':<26}{mc['p_value']:>8.4g}  {mc['reading']}"]
    flips = result["flips"]
    lines += format_flips("right under A, wrong under B", flips["right_a_wrong_b"], max_flips)
    lines += format_flips("right under B, wrong under A", flips["right_b_wrong_a"], max_flips)
    return "\n".join(lines)


def run_label(run: dict) -> str:
    artifact = (run["artifact_hash"] or "?")[:12]
    return f"backend {run['backend'] or '?'}, artifact {artifact}"


def format_flips(title: str, flips: list[dict], max_flips: int) -> list[str]:
    lines = ["", f"{title}: {len(flips)}"]
    if not flips or max_flips == 0:
        return lines + ([f"  ({len(flips)} not listed: --max-flips 0)"] if flips else [])
    table = [("index", "path", "true class", "A says", "B says")]
    table += [(flip_index(f), f["path"], f["true_class"], f["class_a"], f["class_b"])
              for f in flips[:max_flips]]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines += ["  " + "  ".join(f"{cell!s:<{w}}" for cell, w in zip(row, widths)).rstrip()
              for row in table]
    if len(flips) > max_flips:
        lines.append(f"  and {len(flips) - max_flips} more")
    return lines


def flip_index(flip: dict) -> str:
    """The list index; ``a/b`` when the two lists number the video differently."""
    same = flip["index_a"] == flip["index_b"]
    return str(flip["index_a"]) if same else f"{flip['index_a']}/{flip['index_b']}"


# ------------------------------------------------------------------ command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.compare", description=_DESCRIPTION,
                                epilog="p below 0.05: the accuracy difference is unlikely to be"
                                " noise; above: the videos cannot tell the runs apart")
    p.add_argument("run_a", metavar="RUN_A", help="work dir of a harness.run (A)")
    p.add_argument("run_b", metavar="RUN_B", help="work dir of a harness.run (B)")
    p.add_argument("--label-map", help="class names, one a line (default: the K400 map when the"
                   " scores have 400 classes, else class numbers)")
    p.add_argument("--max-flips", type=cli.int_at_least(0), default=20,
                   help="flips listed in each direction (default 20; --json lists all)")
    p.add_argument("--json", action="store_true", help="everything as one JSON object on stdout")
    cli.add_verbosity_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cli.setup_logging(args)
    try:
        a, b = load_run(args.run_a), load_run(args.run_b)
        result = compare(a, b, choose_class_names(args.label_map, a, b))
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_report(result, args.max_flips))
    return 0


if __name__ == "__main__":
    sys.exit(main())
