"""The official Kinetics-400 annotation CSV -> the harness's video list."""

from __future__ import annotations

import subprocess
import sys

import pytest

from harness.data import read_list
from harness.data.filelist import main

HEADER = "label,youtube_id,time_start,time_end,split"
ROWS = [  # as the official CSV writes them: labels with spaces or parentheses quoted
    'abseiling,-3B32lodo2M,59,69,val',
    '"air drumming",--nQbRBEz2s,104,114,val',
    '"passing American football (in game)",0a1b2c3d4e5,7,17,val',
    '"massaging person\'s head",zz_top-1234,0,10,val',
    'abseiling,gone0000001,30,40,val',
    '"hurling (sport)",abcdEFGHijk,1200,1210,val',
    '"passing American football (in game)",gone0000002,5,15,val',
]
MISSING = [ROWS[4], ROWS[6]]
# file name and extension of each present entry (every accepted extension occurs)
FILES = {
    "abseiling": "-3B32lodo2M_000059_000069.mp4",
    "air drumming": "--nQbRBEz2s_000104_000114.webm",
    "passing American football (in game)": "0a1b2c3d4e5_000007_000017.mkv",
    "massaging person's head": "zz_top-1234_000000_000010.avi",
    "hurling (sport)": "abcdEFGHijk_001200_001210.mp4",
}
# class folder names per layout, as the download tools write them
FOLDERS = {
    "as is": {name: name for name in FILES},
    "underscores": {"abseiling": "abseiling", "air drumming": "air_drumming",
                    "passing American football (in game)": "passing_American_football_(in_game)",
                    "massaging person's head": "massaging_person's_head",
                    "hurling (sport)": "hurling_(sport)"},
    "dashes": {"abseiling": "abseiling", "air drumming": "air_drumming",
               "passing American football (in game)": "passing_American_football_-in_game-",
               "massaging person's head": "massaging_person's_head",
               "hurling (sport)": "hurling_-sport-"},
    "flat": {name: "" for name in FILES},
}
# label map indices (configs/label_map_k400.txt line number - 1), written out by hand
EXPECTED = {
    "as is": ["abseiling/-3B32lodo2M_000059_000069.mp4 0",
              "air drumming/--nQbRBEz2s_000104_000114.webm 1",
              "passing American football (in game)/0a1b2c3d4e5_000007_000017.mkv 208",
              "massaging person's head/zz_top-1234_000000_000010.avi 196",
              "hurling (sport)/abcdEFGHijk_001200_001210.mp4 161"],
    "underscores": ["abseiling/-3B32lodo2M_000059_000069.mp4 0",
                    "air_drumming/--nQbRBEz2s_000104_000114.webm 1",
                    "passing_American_football_(in_game)/0a1b2c3d4e5_000007_000017.mkv 208",
                    "massaging_person's_head/zz_top-1234_000000_000010.avi 196",
                    "hurling_(sport)/abcdEFGHijk_001200_001210.mp4 161"],
    "dashes": ["abseiling/-3B32lodo2M_000059_000069.mp4 0",
               "air_drumming/--nQbRBEz2s_000104_000114.webm 1",
               "passing_American_football_-in_game-/0a1b2c3d4e5_000007_000017.mkv 208",
               "massaging_person's_head/zz_top-1234_000000_000010.avi 196",
               "hurling_-sport-/abcdEFGHijk_001200_001210.mp4 161"],
    "flat": ["-3B32lodo2M_000059_000069.mp4 0",
             "--nQbRBEz2s_000104_000114.webm 1",
             "0a1b2c3d4e5_000007_000017.mkv 208",
             "zz_top-1234_000000_000010.avi 196",
             "abcdEFGHijk_001200_001210.mp4 161"],
}


def write_csv(path, is_cc: bool):
    if is_cc:   # the variant with a trailing is_cc column
        lines = [HEADER + ",is_cc"] + [row + ",0" for row in ROWS]
    else:
        lines = [HEADER] + ROWS
    path.write_text("\n".join(lines) + "\n")
    return path, lines


def make_videos(root, layout):
    for label, name in FILES.items():
        folder = root / FOLDERS[layout][label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"not a real video")
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.mark.parametrize("is_cc", [False, True], ids=["plain", "is_cc"])
@pytest.mark.parametrize("layout", list(FOLDERS))
def test_csv_becomes_the_list_and_absent_files_are_reported(tmp_path, capsys, layout, is_cc):
    root = make_videos(tmp_path / "val", layout)
    csv_path, lines = write_csv(tmp_path / "validate.csv", is_cc)
    out = tmp_path / "lists" / "val_list.txt"
    assert main(["--kinetics-csv", str(csv_path), str(root), "--out", str(out)]) == 0
    assert out.read_text().splitlines() == EXPECTED[layout]
    side = tmp_path / "lists" / "val_list.txt.missing.txt"
    assert side.read_text().splitlines() == [lines[0], lines[5], lines[7]]
    err = capsys.readouterr().err
    assert "2 entries have no video file" in err and "gone0000001" in err and "gone0000002" in err
    # the harness reads the list it wrote, paths and labels as written
    entries = read_list(out, root, num_classes=400)
    assert [(e.path, e.label) for e in entries] == [
        (str(root / line.rsplit(" ", 1)[0]), int(line.rsplit(" ", 1)[1])) for line in EXPECTED[layout]]


def test_no_absent_files_no_side_file(tmp_path):
    root = make_videos(tmp_path / "val", "underscores")
    csv_path = tmp_path / "v.csv"
    csv_path.write_text("\n".join([HEADER, ROWS[0], ROWS[2]]) + "\n")
    out = tmp_path / "l.txt"
    (tmp_path / "l.txt.missing.txt").write_text("stale\n")
    assert main(["--kinetics-csv", str(csv_path), str(root), "--out", str(out)]) == 0
    assert out.read_text().splitlines() == [EXPECTED["underscores"][0], EXPECTED["underscores"][2]]
    assert not (tmp_path / "l.txt.missing.txt").exists()


def test_label_not_in_the_map_is_one_error_naming_it(tmp_path):
    root = make_videos(tmp_path / "val", "as is")
    csv_path = tmp_path / "v.csv"
    csv_path.write_text("\n".join([HEADER, ROWS[0], '"underwater basket weaving (indoor)",x,1,11,val']) + "\n")
    result = subprocess.run([sys.executable, "-m", "harness.data.filelist", "--kinetics-csv",
                             str(csv_path), str(root), "--out", str(tmp_path / "l.txt")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    # (python -m also prints runpy's RuntimeWarning about harness.data importing filelist)
    assert [line for line in result.stderr.splitlines() if "RuntimeWarning" not in line] == [
        f"error: {csv_path}:3: label 'underwater basket weaving (indoor)' is not in the label map"
        " (check the CSV or pass --label-map)"]
    assert not (tmp_path / "l.txt").exists()


def test_custom_label_map_gives_its_order(tmp_path):
    root = make_videos(tmp_path / "val", "flat")
    labels = tmp_path / "labels.txt"
    labels.write_text("hurling (sport)\nabseiling\n")
    csv_path = tmp_path / "v.csv"
    csv_path.write_text("\n".join([HEADER, ROWS[0], ROWS[5]]) + "\n")
    out = tmp_path / "l.txt"
    assert main(["--kinetics-csv", str(csv_path), str(root), "--out", str(out),
                 "--label-map", str(labels)]) == 0
    assert out.read_text().splitlines() == ["-3B32lodo2M_000059_000069.mp4 1",
                                            "abcdEFGHijk_001200_001210.mp4 0"]


@pytest.mark.parametrize("text, message", [
    ("youtube_id,time_start,time_end,split\nabc,1,11,test\n", "lacks label"),
    (HEADER + "\nabseiling,abc,1,eleven,val\n", "v.csv:2: time_end 'eleven' is not a whole number"),
    (HEADER + "\nabseiling,abc,1,11\n", "v.csv:2: 4 fields, the header has 5"),
])
def test_malformed_csv_is_one_error(tmp_path, capsys, text, message):
    root = make_videos(tmp_path / "val", "flat")
    (tmp_path / "v.csv").write_text(text)
    assert main(["--kinetics-csv", str(tmp_path / "v.csv"), str(root), "--out", str(tmp_path / "l")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_no_video_found_at_all_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    csv_path, _ = write_csv(tmp_path / "v.csv", False)
    assert main(["--kinetics-csv", str(csv_path), str(tmp_path / "empty"), "--out", str(tmp_path / "l")]) == 2
    assert "none of the 7 entries" in capsys.readouterr().err
