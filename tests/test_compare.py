"""harness.compare on two hand-made work dirs whose flips, accuracies and p-value are known.

30 videos, 4 classes (label = index % 4). Videos 0..27 are scored in both runs; 28 failed
under B, 29 under A. Among the 28 in common, built by hand:

- right only under A: 3;  right only under B: 5, 8, 11, 14, 17, 20;
- wrong under both, the same wrong class: 24, 26; wrong under both, different classes: 25;
- right under both: the other 18.

So top-1 A = 19/28, top-1 B = 24/28, agreement = 18 + 2 = 20/28, and McNemar's exact test
with b = 1, c = 6: p = 2 * (C(7,0) + C(7,1)) / 2^7 = 16/128 = 0.125.
Wilson 95% intervals (z = 1.959964), by hand: (p + z^2/2n) / (1 + z^2/n) +- z sqrt(p(1-p)/n
+ z^2/4n^2) / (1 + z^2/n): 19/28 -> (0.49339, 0.82067), 24/28 -> (0.68510, 0.94301),
20/28 -> (0.52941, 0.84746).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness import compare
from harness.results import ResultWriter, RunIdentity, prepare_work_dir
from harness.stages import VideoResult

CLASSES = ["abseiling", "bowling", "cooking", "dancing"]
VIDEOS = 30
RIGHT_ONLY_A = [3]
RIGHT_ONLY_B = [5, 8, 11, 14, 17, 20]
WRONG_BOTH_SAME = [24, 26]
WRONG_BOTH_DIFFERENT = [25]
FAILED_IN_A, FAILED_IN_B = 29, 28
PREFIX_A = "/data/k400/val"


def label_of(i: int) -> int:
    return i % 4


def relative_path(i: int) -> str:
    return f"{CLASSES[label_of(i)]}/video_{i:02d}.mp4"


def predictions(i: int) -> tuple[int | None, int | None]:
    """(A's top-1, B's top-1) of video i; None where it failed."""
    label, other, third = label_of(i), (label_of(i) + 1) % 4, (label_of(i) + 2) % 4
    if i == FAILED_IN_A:
        return None, label
    if i == FAILED_IN_B:
        return label, None
    if i in RIGHT_ONLY_A:
        return label, other
    if i in RIGHT_ONLY_B:
        return other, label
    if i in WRONG_BOTH_SAME:
        return third, third
    if i in WRONG_BOTH_DIFFERENT:
        return other, third
    return label, label


def scores_for(predicted: int, classes: int = 4) -> np.ndarray:
    scores = np.full(classes, 0.1 / classes, np.float32)
    scores[predicted] = 0.9
    return scores


def write_run(work, videos, *, data_prefix: str, list_sha256: str, classes: int = 4):
    """A work dir as harness.run leaves it: run.json (prepare_work_dir) and predictions.
    ``videos``: (index, recorded path, label, top-1 or None for a failure)."""
    identity = RunIdentity(artifact_hash="artifact-" + work.name, list_sha256=list_sha256,
                           list_length=len(videos), data_prefix=data_prefix, backend="om",
                           config_digest="cfg")
    prepare_work_dir(work, identity)
    writer = ResultWriter(work, batch_size=7)   # several part files
    for index, path, label, predicted in videos:
        if predicted is None:
            writer.add(VideoResult(index, path, label, "failed", "decode failed", "decode failed"))
        else:
            writer.add(VideoResult(index, path, label, "ok", scores=scores_for(predicted, classes),
                                   device="npu:0", node="host"))
    writer.close()
    return work


def run_pair(tmp_path):
    """A and B over the same list (index matching)."""
    def videos(which: int):
        return [(i, f"{PREFIX_A}/{relative_path(i)}", label_of(i), predictions(i)[which])
                for i in range(VIDEOS)]

    a = write_run(tmp_path / "npu", videos(0), data_prefix=PREFIX_A, list_sha256="list-1")
    b = write_run(tmp_path / "gpu", videos(1), data_prefix=PREFIX_A, list_sha256="list-1")
    return a, b


@pytest.fixture
def label_map(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("\n".join(CLASSES) + "\n")
    return path


def run_json(capsys, *argv) -> dict:
    assert compare.main([*map(str, argv), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def flip_rows(result: dict, direction: str) -> list[tuple]:
    return [(f["index_a"], f["index_b"], f["path"], f["true_class"], f["class_a"], f["class_b"])
            for f in result["flips"][direction]]


def expected_flips(indices, index_b=lambda i: i) -> list[tuple]:
    rows = []
    for i in indices:
        a, b = predictions(i)
        rows.append((i, index_b(i), relative_path(i), CLASSES[label_of(i)], CLASSES[a], CLASSES[b]))
    return rows


def assert_known_numbers(result: dict) -> None:
    assert result["in_common"] == 28
    assert (result["top1_a"]["successes"], result["top1_a"]["n"]) == (19, 28)
    assert (result["top1_b"]["successes"], result["top1_b"]["n"]) == (24, 28)
    assert (result["agreement"]["successes"], result["agreement"]["n"]) == (20, 28)
    assert result["top1_a"]["interval95"] == pytest.approx([0.49339, 0.82067], abs=1e-5)
    assert result["top1_b"]["interval95"] == pytest.approx([0.68510, 0.94301], abs=1e-5)
    assert result["agreement"]["interval95"] == pytest.approx([0.52941, 0.84746], abs=1e-5)
    assert result["mcnemar"]["right_only_a"] == 1 and result["mcnemar"]["right_only_b"] == 6
    assert result["mcnemar"]["p_value"] == pytest.approx(16 / 128)
    assert result["mcnemar"]["reading"].startswith("the difference is not significant at 5%")


def test_same_list_pairs_by_index_and_finds_the_hand_made_flips(tmp_path, capsys, label_map):
    a, b = run_pair(tmp_path)
    result = run_json(capsys, a, b, "--label-map", label_map)
    assert result["matching"] == "list index"
    assert result["matched"] == 30
    assert (result["failed_in_a"], result["failed_in_b"]) == (1, 1)
    assert (result["a"]["only_here"], result["b"]["only_here"]) == (0, 0)
    assert_known_numbers(result)
    # video 3: label 3 (dancing); A right, B says (3 + 1) % 4 = 0 (abseiling)
    assert flip_rows(result, "right_a_wrong_b") == [(3, 3, "dancing/video_03.mp4", "dancing",
                                                     "dancing", "abseiling")]
    assert flip_rows(result, "right_b_wrong_a") == expected_flips(RIGHT_ONLY_B)
    assert flip_rows(result, "right_b_wrong_a")[0] == (5, 5, "bowling/video_05.mp4", "bowling",
                                                       "cooking", "bowling")


def test_text_output_is_a_table_with_the_same_numbers(tmp_path, capsys, label_map):
    a, b = run_pair(tmp_path)
    assert compare.main([str(a), str(b), "--label-map", str(label_map), "--max-flips", "2"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert "matched by list index" in text
    assert any(line.split()[:3] == ["in", "common", "(ok"] and line.split()[-1] == "28" for line in lines)
    assert "67.86%" in text and "85.71%" in text and "71.43%" in text     # 19/28, 24/28, 20/28
    assert "[49.34%, 82.07%]" in text
    mcnemar = next(line for line in lines if line.startswith("McNemar"))
    assert "0.125" in mcnemar and "not significant at 5%" in mcnemar
    assert "right under A, wrong under B: 1" in text
    assert "right under B, wrong under A: 6" in text
    flip_3 = next(line for line in lines if "video_03" in line).split()
    assert flip_3 == ["3", "dancing/video_03.mp4", "dancing", "dancing", "abseiling"]
    assert "video_08" in text and "video_11" not in text                 # 2 listed of 6
    assert "and 4 more" in text


def test_json_lists_every_flip_and_the_text_numbers_match(tmp_path, capsys):
    a, b = run_pair(tmp_path)
    result = run_json(capsys, a, b, "--max-flips", "1")       # --json ignores --max-flips
    assert len(result["flips"]["right_b_wrong_a"]) == 6
    # 4 classes and no --label-map: class numbers
    assert flip_rows(result, "right_a_wrong_b") == [(3, 3, "dancing/video_03.mp4", "3", "3", "0")]
    assert compare.main([str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert f"{100 * 19 / 28:.2f}%" in text and f"{100 * 24 / 28:.2f}%" in text
    assert "0.125" in text


def test_different_lists_pair_by_relative_path(tmp_path, capsys, label_map):
    # A recorded paths relative to the working dir (config prefix data/k400/val, resolved in
    # run.json); B another mount, its list in reverse order, one extra video, and video 3
    # repeated at the end with a right answer (the first occurrence must win).
    home = "/home/user/project/data/k400/val"
    a_videos = [(i, f"data/k400/val/{relative_path(i)}", label_of(i), predictions(i)[0])
                for i in range(VIDEOS)]
    b_videos = [(VIDEOS - 1 - i, f"/mnt/nfs/kinetics/{relative_path(i)}", label_of(i), predictions(i)[1])
                for i in range(VIDEOS)]
    b_videos += [(30, "/mnt/nfs/kinetics/extra/new.mp4", 0, 0),
                 (31, f"/mnt/nfs/kinetics/{relative_path(3)}", label_of(3), label_of(3))]
    a = write_run(tmp_path / "npu", a_videos, data_prefix=home, list_sha256="list-1")
    b = write_run(tmp_path / "gpu", b_videos, data_prefix="/mnt/nfs/kinetics", list_sha256="list-2")
    result = run_json(capsys, a, b, "--label-map", label_map)
    assert result["matching"] == "relative path"
    assert result["matched"] == 30
    assert (result["a"]["only_here"], result["b"]["only_here"]) == (0, 1)
    assert result["b"]["repeated_paths_ignored"] == 1
    assert (result["failed_in_a"], result["failed_in_b"]) == (1, 1)
    assert_known_numbers(result)
    assert flip_rows(result, "right_a_wrong_b") == [(3, 26, "dancing/video_03.mp4", "dancing",
                                                     "dancing", "abseiling")]
    assert flip_rows(result, "right_b_wrong_a") == expected_flips(RIGHT_ONLY_B, lambda i: 29 - i)
    assert compare.main([str(a), str(b), "--label-map", str(label_map)]) == 0
    text = capsys.readouterr().out
    assert "matched by relative path" in text
    assert next(line for line in text.splitlines() if "video_03" in line).split()[0] == "3/26"


@pytest.mark.parametrize("path, prefix, relative", [
    ("/data/k400/val/a/b.mp4", "/data/k400/val", "a/b.mp4"),
    ("/data/k400/val/./a/b.mp4", "/data/k400/val/", "a/b.mp4"),
    ("k400/val/a/b.mp4", "/home/u/k400/val", "a/b.mp4"),     # a relative config prefix
    ("a/b.mp4", "/home/u", "a/b.mp4"),                       # data_prefix '' in the config
    ("/elsewhere/a/b.mp4", "/data/k400/val", "/elsewhere/a/b.mp4"),
])
def test_relative_to_prefix(path, prefix, relative):
    assert compare.relative_to_prefix(path, prefix) == relative


def test_400_classes_are_named_from_the_k400_map(tmp_path, capsys):
    # video 0 (label 0): A right, B says class 1; the first two lines of configs/label_map_k400.txt
    videos_a = [(0, "/v/x.mp4", 0, 0), (1, "/v/y.mp4", 5, 5)]
    videos_b = [(0, "/v/x.mp4", 0, 1), (1, "/v/y.mp4", 5, 5)]
    a = write_run(tmp_path / "a", videos_a, data_prefix="/v", list_sha256="s", classes=400)
    b = write_run(tmp_path / "b", videos_b, data_prefix="/v", list_sha256="s", classes=400)
    result = run_json(capsys, a, b)
    assert flip_rows(result, "right_a_wrong_b") == [(0, 0, "x.mp4", "abseiling", "abseiling",
                                                     "air drumming")]
    assert result["mcnemar"]["p_value"] == 1.0            # b = 1, c = 0: 2 * C(1,0) / 2 = 1


def test_a_clear_difference_reads_as_significant(tmp_path, capsys):
    # 10 videos, A right on all, B wrong on 8: b = 8, c = 0, p = 2 / 2^8 = 0.0078125
    a = write_run(tmp_path / "a", [(i, f"/v/{i}.mp4", 1, 1) for i in range(10)],
                  data_prefix="/v", list_sha256="s")
    b = write_run(tmp_path / "b", [(i, f"/v/{i}.mp4", 1, 2 if i < 8 else 1) for i in range(10)],
                  data_prefix="/v", list_sha256="s")
    result = run_json(capsys, a, b)
    assert result["mcnemar"]["p_value"] == pytest.approx(2 / 256)
    assert result["mcnemar"]["reading"].startswith("the difference is significant at 5%: A")


def assert_user_error(capsys, argv, words: str) -> None:
    assert compare.main([str(x) for x in argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]


def test_missing_or_foreign_dirs_are_one_error_line_and_exit_2(tmp_path, capsys):
    a, _ = run_pair(tmp_path)
    assert_user_error(capsys, [a, tmp_path / "nowhere"], "no such directory")
    (tmp_path / "empty").mkdir()
    assert_user_error(capsys, [tmp_path / "empty", a], "not a harness.run work dir")
    prepare_work_dir(tmp_path / "started", RunIdentity("h", "s", 1, "/v", "om", "c"))
    assert_user_error(capsys, [a, tmp_path / "started"], "has no predictions")


def test_the_command_runs_as_a_module(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "harness.compare", str(tmp_path / "x"),
                           str(tmp_path / "y")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 2 and done.stderr.startswith("error: ")


def test_runs_that_split_paths_differently_pair_by_absolute_path(tmp_path, capsys, label_map):
    # issue 19: A ran prefix /data with list k400/val/<class>/<video>, B prefix /data/k400/val
    # with <class>/<video>: relative paths differ, the files read are the same
    a_videos = [(i, f"/data/k400/val/{relative_path(i)}", label_of(i), predictions(i)[0])
                for i in range(VIDEOS)]
    b_videos = [(i, f"/data/k400/val/{relative_path(i)}", label_of(i), predictions(i)[1])
                for i in range(VIDEOS)]
    a = write_run(tmp_path / "a", a_videos, data_prefix="/data", list_sha256="list-1")
    b = write_run(tmp_path / "b", b_videos, data_prefix="/data/k400/val", list_sha256="list-2")
    result = run_json(capsys, a, b, "--label-map", label_map)
    assert result["matching"] == "absolute path" and result["matched"] == 30
    assert_known_numbers(result)
    assert compare.main([str(a), str(b), "--label-map", str(label_map)]) == 0
    assert "matched by absolute path" in capsys.readouterr().out


def test_runs_with_no_video_in_common_are_a_user_error(tmp_path, capsys):
    # issue 19: nothing paired, or nothing scored in both: no number to report, exit 2
    a = write_run(tmp_path / "a", [(i, f"/v/x{i}.mp4", 1, 1) for i in range(3)],
                  data_prefix="/v", list_sha256="s1")
    b = write_run(tmp_path / "b", [(i, f"/w/y{i}.mp4", 1, 1) for i in range(3)],
                  data_prefix="/w", list_sha256="s2")
    assert compare.main([str(a), str(b)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        f"error: {a} and {b} have no video in common by relative or absolute path (e.g. A read"
        " /v/x0.mp4, B /w/y0.mp4): compare two runs over the same videos\n")
    c = write_run(tmp_path / "c", [(i, f"/v/x{i}.mp4", 1, None) for i in range(3)],
                  data_prefix="/v", list_sha256="s1")                 # every video failed
    assert compare.main([str(a), str(c)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == (
        "error: none of the 3 videos both runs recorded was scored in both (failed in A: 0, in"
        " B: 3; labels differ: 0): there is nothing to compare; fix the failures and resume the"
        " runs first\n")
