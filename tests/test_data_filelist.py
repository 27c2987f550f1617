"""Video lists, label maps and the class-folder list builder."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from harness.data import ListError, VideoEntry, load_label_map, read_list
from harness.data.filelist import build_list, main


def write(tmp_path, text, name="list.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_entries_with_prefix_and_paths_with_spaces(tmp_path):
    path = write(tmp_path, "a/x.mp4 3\n\nb c/y y.mkv   0\n")
    entries = read_list(path, "data/val", num_classes=4)
    assert entries == [VideoEntry(0, "data/val/a/x.mp4", 3), VideoEntry(1, "data/val/b c/y y.mkv", 0)]
    assert read_list(path, "")[0].path == "a/x.mp4"


@pytest.mark.parametrize("text, line, message", [
    ("a.mp4 1\nb.mp4 one\n", 2, "not an integer"),
    ("a.mp4 1\nb.mp4 7\n", 2, "out of range"),
    ("a.mp4 -1\n", 1, "out of range"),
    ("a.mp4 1\n\nlonely\n", 3, "expected '<relative path> <label>'"),
    ("a.mp4 2.5\n", 1, "not an integer"),
])
def test_errors_name_file_and_line(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(ListError, match=message) as info:
        read_list(path, "", num_classes=5)
    assert f"{path}:{line}:" in str(info.value)


def test_missing_list_is_a_list_error(tmp_path):
    with pytest.raises(ListError, match="not found"):
        read_list(tmp_path / "none.txt", "")


def test_missing_video_is_not_a_list_error(tmp_path):
    assert len(read_list(write(tmp_path, "gone.mp4 0\n"), tmp_path)) == 1


def test_duplicates_are_summarized_in_one_warning(tmp_path, caplog):
    lines = [f"v{i}.mp4 1" for i in range(10)] * 3          # 20 duplicates
    path = write(tmp_path, "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="harness.data.filelist"):
        entries = read_list(path, "v")
    assert len(entries) == 30                                 # each duplicate is still evaluated
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "20 duplicate entries" in warnings[0]
    assert "line 11 repeats line 1 (v0.mp4)" in warnings[0] and "and 17 more" in warnings[0]


def test_label_map(tmp_path):
    assert load_label_map(write(tmp_path, "abseiling\nair drumming\n\n")) == ["abseiling", "air drumming"]
    with pytest.raises(ListError, match="twice"):
        load_label_map(write(tmp_path, "a\nb\na\n", "dup.txt"))
    k400 = load_label_map("configs/label_map_k400.txt")
    assert len(k400) == 400 and "hurling (sport)" in k400


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "val"
    for rel in ["air_drumming/v1.mp4", "air_drumming/v2.webm", "hurling_(sport)/h.mkv",
                "abseiling/a.avi", "abseiling/notes.txt", "air drumming/v3.mp4"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    return root


def test_build_list_matches_underscores_and_spaces(tree):
    names = load_label_map("configs/label_map_k400.txt")
    rows = dict(build_list(tree, names))
    assert rows == {"abseiling/a.avi": names.index("abseiling"),
                    "air drumming/v3.mp4": names.index("air drumming"),
                    "air_drumming/v1.mp4": names.index("air drumming"),
                    "air_drumming/v2.webm": names.index("air drumming"),
                    "hurling_(sport)/h.mkv": names.index("hurling (sport)")}


def test_unknown_class_folder_is_named(tree):
    (tree / "underwater_basket_weaving").mkdir()   # a folder is seen by its files (as in a bucket)
    (tree / "underwater_basket_weaving" / "notes.txt").write_bytes(b"")
    with pytest.raises(ListError, match="underwater_basket_weaving"):
        build_list(tree, load_label_map("configs/label_map_k400.txt"))


def test_cli_writes_a_list_read_list_accepts(tree, tmp_path, capsys):
    out = tmp_path / "val_list.txt"
    assert main([str(tree), "--out", str(out)]) == 0
    entries = read_list(out, tree, num_classes=400)
    assert len(entries) == 5 and all(e.path.startswith(str(tree)) for e in entries)


def test_cli_reports_unknown_folder(tree, tmp_path):
    (tree / "not_a_class").mkdir()
    (tree / "not_a_class" / "v.mp4").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "harness.data.filelist", str(tree), "--out",
                             str(tmp_path / "l.txt")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not_a_class" in result.stderr
    assert not (tmp_path / "l.txt").exists()


def test_cli_custom_label_map(tree, tmp_path):
    labels = write(tmp_path, "abseiling\nair drumming\nhurling (sport)\n", "labels.txt")
    out = tmp_path / "l.txt"
    assert main([str(tree), "--out", str(out), "--label-map", str(labels)]) == 0
    assert "hurling_(sport)/h.mkv 2" in out.read_text().splitlines()


@pytest.mark.parametrize("line", ["abseiling/vid_001 300 5", "abseiling/vid 001 0 300 5"])
def test_a_rawframe_line_is_refused_and_a_path_with_spaces_is_not(tmp_path, line):
    # issue 19: mmaction's rawframe form '<frame folder> <frames> <label>' (with an offset too)
    path = write(tmp_path, f"a b/c d.mp4 1\n{line}\n")
    with pytest.raises(ListError) as info:
        read_list(path, "", num_classes=8)
    assert str(info.value).startswith(f"{path}:2: {line!r} has {len(line.split())} columns: this"
                                      " looks like a rawframe list (mmaction's RawframeDataset form")
    assert "python -m harness.data.filelist VIDEO_FOLDER --out LIST" in str(info.value)
    assert read_list(write(tmp_path, "a b/c 2 d.mp4 1\n"), "")[0].path == "a b/c 2 d.mp4"


def test_a_list_of_one_column_names_the_tool_that_makes_one(tmp_path):
    path = write(tmp_path, "lonely.mp4\n")
    with pytest.raises(ListError) as info:
        read_list(path, "")
    assert str(info.value) == (f"{path}:1: expected '<relative path> <label>', got 'lonely.mp4';"
                               " make a list with `python -m harness.data.filelist VIDEO_FOLDER"
                               " --out LIST`")


def test_the_cli_runs_as_a_module_without_runpy_warnings():
    # issue 19: harness.data imported filelist eagerly, so `-m harness.data.filelist` warned
    result = subprocess.run([sys.executable, "-W", "error", "-m", "harness.data.filelist", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("usage: python -m harness.data.filelist")
