"""features.images.scan_class_folders on symbolic-link loops (issue #20): every real directory is walked once."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest

from features.images import scan_class_folders
from tests.fakes_images import make_class_folders

CLASSES = ["anger", "happy", "sad"]


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=2, frames=2, size=16)  # 4 images per class
    return root


def test_link_to_the_root_is_skipped_not_walked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``anger/loop -> ..`` gave every other class's faces labelled anger, over and over (40,590 from 981)."""
    root = _root(tmp_path)
    (root / "anger" / "loop").symlink_to("..", target_is_directory=True)
    with caplog.at_level(logging.WARNING, logger="features.images"):
        recs = scan_class_folders(root, CLASSES)
    assert Counter(r.class_name for r in recs) == {"anger": 4, "happy": 4, "sad": 4}
    assert not any("loop" in r.rel for r in recs)
    assert "anger/loop" in caplog.text and "1 symbolic link(s) to a directory already walked" in caplog.text


def test_link_to_an_ancestor_inside_a_class_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """``happy/sub/again -> ../../happy`` copied happy's images 41 times without a word."""
    root = _root(tmp_path)
    sub = root / "happy" / "sub"
    make_class_folders(sub.parent.parent / "_tmp", ["x"], subjects=1, frames=1, size=16)
    sub.mkdir()
    (root / "_tmp" / "x").rename(sub / "deeper")  # a real nested folder with one image
    (root / "_tmp").rmdir()
    (sub / "again").symlink_to("../../happy", target_is_directory=True)
    (root / "sad" / "to_happy").symlink_to("../happy", target_is_directory=True)  # another class's folder
    with caplog.at_level(logging.WARNING, logger="features.images"):
        recs = scan_class_folders(root, CLASSES)
    assert Counter(r.class_name for r in recs) == {"anger": 4, "happy": 5, "sad": 4}
    assert len({r.path for r in recs}) == len(recs)  # no file listed twice
    assert "2 symbolic link(s) to a directory already walked" in caplog.text
    assert "happy/sub/again" in caplog.text and "sad/to_happy" in caplog.text


def test_link_to_a_folder_outside_the_classes_is_walked_once(tmp_path: Path) -> None:
    """A link to a real folder inside the root that is no class folder (an ignored pool) is followed, once."""
    root = _root(tmp_path)
    make_class_folders(root / "_pool", ["extra"], subjects=1, frames=2, size=16)
    (root / "anger" / "more").symlink_to("../_pool/extra", target_is_directory=True)
    (root / "anger" / "more_again").symlink_to("../_pool/extra", target_is_directory=True)
    recs = scan_class_folders(root, CLASSES, unknown_folders="ignore")
    anger = [r.rel for r in recs if r.class_name == "anger"]
    assert len(anger) == 6 and sum("/more/" in rel for rel in anger) == 2
    assert not any("more_again" in rel for rel in anger)


def test_class_folder_linked_to_another_class_is_an_error(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "contempt").symlink_to("anger", target_is_directory=True)
    with pytest.raises(ValueError, match="contempt.*anger"):
        scan_class_folders(root, [*CLASSES, "contempt"])
