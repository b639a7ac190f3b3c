"""Splits of a folder of the user's labelled recordings (``features.extract.discover``): a transcript split column,
a split mapping file, the standard folds, a seeded split by recording; every bad value names its file. Listing
only: the video files are never decoded here, so empty files stand in for them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from features.extract import build_parser, discover, split_recordings


def _folder(root: Path, stems: list[str], split_col: dict[str, list[str]] | None = None, n_seg: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        (root / f"{stem}.mp4").write_bytes(b"")
        cols = "start,end,text,label" + (",split" if split_col and stem in split_col else "")
        lines = [cols]
        for k in range(n_seg):
            extra = f",{split_col[stem][k]}" if split_col and stem in split_col else ""
            lines.append(f"{k}.0,{k + 1}.0,words {stem} {k},{0.5 * k - 0.5}{extra}")
        (root / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    return root


def _splits(clips) -> dict[str, str]:
    return {c.id: c.split for c in clips}


def test_labelled_folder_without_a_split_goes_to_test_with_a_warning(tmp_path, caplog) -> None:
    folder = _folder(tmp_path / "v", ["a", "b"])
    with caplog.at_level("WARNING", logger="features.extract"):
        clips, bad, kind = discover(folder)
    assert kind == "folder" and not bad and {c.split for c in clips} == {"test"} and len(clips) == 4
    assert "--split-by-recording" in caplog.text and "test" in caplog.text


def test_transcript_split_column_sets_each_utterance(tmp_path) -> None:
    folder = _folder(tmp_path / "v", ["a", "b"], {"a": ["train", "val"], "b": ["test", "train"]})
    clips, _, _ = discover(folder)
    assert _splits(clips) == {"a$_$1": "train", "a$_$2": "valid", "b$_$1": "test", "b$_$2": "train"}
    clips, _, _ = discover(folder, split="test")  # an explicit split wins (prediction)
    assert {c.split for c in clips} == {"test"}


def test_transcript_split_column_errors_name_the_file(tmp_path) -> None:
    folder = _folder(tmp_path / "v", ["a"], {"a": ["train", "training"]})
    with pytest.raises(ValueError, match=r"a\.csv:3: split 'training' is not one of"):
        discover(folder)
    folder = _folder(tmp_path / "w", ["a", "b"], {"a": ["train", "test"]})
    with pytest.raises(ValueError, match=r"a\.csv has a split column but 1 transcript\(s\) have none .*b\.csv"):
        discover(folder)


def test_splits_file_named_or_found_in_the_folder(tmp_path) -> None:
    folder = _folder(tmp_path / "v", ["a", "b", "c"])
    (folder / "splits.csv").write_text("recording,split\na,train\nb,valid\nc,test\n")
    clips, _, _ = discover(folder)
    assert Counter(_splits(clips).values()) == {"train": 2, "valid": 2, "test": 2}
    assert {c.split for c in clips if c.id.startswith("b")} == {"valid"}
    mmsa_like = tmp_path / "label.csv"  # MMSA's label.csv columns work as a mapping (one row per utterance)
    mmsa_like.write_text("video_id,clip_id,text,label,mode\na,1,x,0,test\na,2,y,0,test\nb,1,z,0,train\n"
                         "c,1,w,0,valid\n")
    (folder / "splits.csv").unlink()
    clips, _, _ = discover(folder, splits=mmsa_like)
    assert {c.id: c.split for c in clips}["a$_$2"] == "test"


def test_splits_file_errors_name_the_file(tmp_path) -> None:
    folder = _folder(tmp_path / "v", ["a", "b"])
    f = tmp_path / "s.csv"
    f.write_text("recording,split\na,train\n")
    with pytest.raises(ValueError, match=r"s\.csv: names no split for 1 of the 2 recording\(s\) .*\(b\)"):
        discover(folder, splits=f)
    f.write_text("recording,split\na,train\nb,holdout\n")
    with pytest.raises(ValueError, match=r"s\.csv:3: split 'holdout'"):
        discover(folder, splits=f)
    f.write_text("recording,split\na,train\nb,test\na,test\n")
    with pytest.raises(ValueError, match=r"s\.csv:4: recording 'a' is in split 'test' here but 'train'"):
        discover(folder, splits=f)
    f.write_text("name,fold\na,train\n")
    with pytest.raises(ValueError, match=r"s\.csv: a split file needs a recording column"):
        discover(folder, splits=f)
    with pytest.raises(ValueError, match="give one source of splits, not --splits and --split-by-recording"):
        discover(folder, splits=f, split_by_recording=(0.5, 0.25, 0.25))


def test_folds_json_by_path_and_by_name(tmp_path, monkeypatch) -> None:
    folder = _folder(tmp_path / "v", ["vidA", "vidB", "vidC"])
    folds = {"standard_train_fold": ["vidA", "other"], "standard_valid_fold": ["vidB"],
             "standard_test_fold": ["vidC"]}
    path = tmp_path / "f.json"
    path.write_text(json.dumps(folds))
    clips, _, _ = discover(folder, folds=path)
    assert {c.id.split("$_$")[0]: c.split for c in clips} == {"vidA": "train", "vidB": "valid", "vidC": "test"}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"data/mosi_labels/mosi_folds\.json: folds file not found"):
        discover(folder, folds="mosi")
    (tmp_path / "data" / "mosi_labels").mkdir(parents=True)
    (tmp_path / "data" / "mosi_labels" / "mosi_folds.json").write_text(json.dumps(folds))
    assert _splits(discover(folder, folds="mosi")[0]) == _splits(clips)
    path.write_text(json.dumps({**folds, "standard_test_fold": ["vidC", "vidA"]}))
    with pytest.raises(ValueError, match=r"f\.json: video 'vidA' is in both 'train' and 'test'"):
        discover(folder, folds=path)
    path.write_text(json.dumps({"train": ["vidA"]}))
    with pytest.raises(ValueError, match=r"f\.json: a folds file holds lists"):
        discover(folder, folds=path)


def test_split_by_recording_is_seeded_and_keeps_recordings_whole(tmp_path) -> None:
    stems = [f"r{i:02d}" for i in range(10)]
    folder = _folder(tmp_path / "v", stems, n_seg=3)
    clips, _, _ = discover(folder, split_by_recording=(0.6, 0.2, 0.2), seed=3)
    per_rec: dict[str, set[str]] = {}
    for c in clips:
        per_rec.setdefault(c.id.split("$_$")[0], set()).add(c.split)
    assert all(len(s) == 1 for s in per_rec.values())  # never crosses splits
    assert Counter(next(iter(s)) for s in per_rec.values()) == {"train": 6, "valid": 2, "test": 2}
    again, _, _ = discover(folder, split_by_recording=(0.6, 0.2, 0.2), seed=3)
    assert _splits(again) == _splits(clips)
    other = split_recordings(stems, (0.6, 0.2, 0.2), seed=4)
    assert other != {k: next(iter(v)) for k, v in per_rec.items()}
    assert Counter(split_recordings(["a", "b", "c"], (0.7, 0.15, 0.15)).values()) == {"train": 1, "valid": 1,
                                                                                       "test": 1}
    with pytest.raises(ValueError, match="2 recording"):
        split_recordings(["a", "b"], (0.7, 0.15, 0.15))


def test_bad_fractions_are_an_argparse_error_naming_the_flag(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["x", "--out", "y.npz", "--split-by-recording", "0.7,0.2"])
    assert "--split-by-recording" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["x", "--out", "y.npz", "--folds", "mosi", "--split", "test"])
    assert "not allowed with" in capsys.readouterr().err


def test_mmsa_layout_refuses_another_split_source(tmp_path) -> None:
    (tmp_path / "label.csv").write_text("video_id,clip_id,text,label,mode\n")
    with pytest.raises(ValueError, match=r"label\.csv: its `mode` column gives the splits"):
        discover(tmp_path, split_by_recording=(0.5, 0.25, 0.25))
