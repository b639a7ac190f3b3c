"""Face images that must not crash or silently corrupt a run (issue 14 §4). All bad files are generated in tmp_path;
the huge PNGs are valid files written row by row (1-bit, zlib-streamed), so the test never holds their pixels."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datamodules.fer import FERDataModule
from features.images import BadImageError, load_image_rgb, scan_class_folders
from tests.fakes_images import make_class_folders

CLASSES = ["happy", "sad"]


def write_huge_png(path: Path, width: int, height: int) -> Path:
    """A valid all-black 1-bit grayscale PNG of ``width x height``, written without materialising the pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    idat = bytearray()
    for _ in range(height):
        idat += comp.compress(row)
    idat += comp.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "faces"
    make_class_folders(r, classes=CLASSES, subjects=2, frames=2, size=24, kind="noise")
    return r


def datamodule(root: Path, tmp_path: Path, **kw) -> FERDataModule:
    return FERDataModule(str(root), CLASSES, crop={"face_detection": "none", "image_size": 16}, descriptor={"kind": "none"},
                         cache_dir=str(tmp_path / "cache"), progress="none", batch_size=2, **kw)


def manifest(tmp_path: Path) -> dict[str, dict]:
    lines = (tmp_path / "cache" / "manifest.jsonl").read_text().splitlines()
    return {Path(e["path"]).name: e for e in map(json.loads, lines)}


def test_decompression_bomb_is_a_counted_skip_naming_the_file(root, tmp_path, caplog) -> None:
    bomb = write_huge_png(root / "happy" / "bomb.png", 20000, 20000)
    dm = datamodule(root, tmp_path)
    with caplog.at_level(logging.WARNING):
        dm.prepare_data()
    assert manifest(tmp_path)["bomb.png"]["reason"] == "too_many_pixels"
    assert any(str(bomb) in r.getMessage() and "too_many_pixels" in r.getMessage() for r in caplog.records)
    dm.setup("fit")
    assert sum(len(d) for d in dm.datasets.values()) == 8  # the 8 good images, nothing else


def test_max_pixels_is_checked_from_the_header_before_decoding(root, tmp_path, monkeypatch) -> None:
    write_huge_png(root / "sad" / "big.png", 2000, 2000)
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    datamodule(root, tmp_path, max_pixels=1_000_000).prepare_data()
    assert manifest(tmp_path)["big.png"]["reason"] == "too_many_pixels"
    assert (2000, 2000) not in decoded


def test_too_many_pixels_with_on_bad_image_error_names_the_file(root, tmp_path) -> None:
    big = write_huge_png(root / "sad" / "big.png", 2000, 2000)
    with pytest.raises(BadImageError, match=f"{big}.*too_many_pixels"):
        datamodule(root, tmp_path, max_pixels=1_000_000, on_bad_image="error").prepare_data()
    with pytest.raises(BadImageError, match="too_many_pixels"):
        load_image_rgb(write_huge_png(tmp_path / "bomb.png", 20000, 20000))


def test_tiny_images_are_skipped_and_counted(root, tmp_path) -> None:
    Image.fromarray(np.full((1, 1), 128, np.uint8)).save(root / "happy" / "dot.png")
    Image.fromarray(np.full((8, 40), 128, np.uint8)).save(root / "sad" / "strip.png")
    dm = datamodule(root, tmp_path)
    dm.prepare_data()
    m = manifest(tmp_path)
    assert m["dot.png"]["reason"] == "too_small" and m["strip.png"]["reason"] == "too_small"
    dm.setup("fit")
    assert sum(len(d) for d in dm.datasets.values()) == 8


def test_a_class_folder_with_no_usable_file_is_an_error_naming_it(root, tmp_path) -> None:
    for p in (root / "sad").iterdir():
        p.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"Class folder '.*faces/sad' \(class 'sad'\): none of its 4 files"):
        datamodule(root, tmp_path).prepare_data()


def test_a_root_with_no_usable_file_is_an_error_naming_it(root, tmp_path) -> None:
    for p in root.rglob("*.png"):
        p.write_bytes(b"")
    with pytest.raises(ValueError, match=rf"Image root '{root}': none of its 8 files is usable"):
        datamodule(root, tmp_path).prepare_data()


def test_same_image_under_two_classes_is_a_warning_listing_both(root, tmp_path, caplog) -> None:
    src = min((root / "happy").iterdir())
    dup = root / "sad" / "copy_of_happy.png"
    shutil.copy(src, dup)
    with caplog.at_level(logging.WARNING):
        datamodule(root, tmp_path).prepare_data()
    msgs = [r.getMessage() for r in caplog.records if "labelled with 2 classes" in r.getMessage()]
    assert len(msgs) == 1 and str(src) in msgs[0] and str(dup) in msgs[0]


def test_symlink_leading_outside_the_root_is_not_followed(root, tmp_path, caplog) -> None:
    secret = tmp_path / "elsewhere" / "private.png"
    secret.parent.mkdir()
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(secret)
    link = root / "happy" / "link.png"
    link.symlink_to(secret)
    (root / "happy" / "inside.png").symlink_to(min((root / "sad").iterdir()))  # inside the root: fine
    with caplog.at_level(logging.WARNING):
        recs = scan_class_folders(root, CLASSES)
    paths = {r.path for r in recs}
    assert str(secret) not in paths and str(link) not in paths and len(recs) == 9
    assert any(str(link) in r.getMessage() and "outside" in r.getMessage() for r in caplog.records)
    # a class folder that is itself such a link is not followed either
    (root / "sad").rename(tmp_path / "sad_real")
    (root / "sad").symlink_to(tmp_path / "sad_real")
    with pytest.raises(FileNotFoundError, match=r"no folder for classes \['sad'\]"):
        scan_class_folders(root, CLASSES)
