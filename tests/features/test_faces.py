"""Tests for features/faces.py: Haar detection, square crops, the preprocessing cache and its manifest."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from features.faces import (
    FaceCropSettings,
    HaarFaceDetector,
    crop_face,
    detection_rate,
    preprocess_faces,
    read_manifest,
    summarize_manifest,
)
from features.images import BadImageError, load_image_rgb, scan_class_folders
from tests.fakes_images import MODES, make_class_folders, real_root, tree_fingerprint, write_bad_files

CLASSES = ["happy", "sad"]


def _jaffe_files(n: int) -> list[Path]:
    root = real_root("jaffe")
    if root is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    return sorted(root.glob("*/*.tiff"))[:: max(1, 213 // n)][:n]


# ------------------------------------------------------------------ crops
def test_crop_face_box_margin_and_padding() -> None:
    img = np.zeros((100, 80, 3), dtype=np.uint8)
    img[40:60, 30:50] = 255  # the "face"
    crop = crop_face(img, (30, 40, 20, 20), image_size=20, margin=0.0)
    assert crop.shape == (20, 20, 3) and crop.dtype == np.uint8
    assert crop.min() >= 250  # exactly the box
    wide = crop_face(img, (30, 40, 20, 20), image_size=40, margin=0.5)
    assert wide[20, 20].min() > 200 and wide[1, 1].max() == 0  # face centred, border from outside the box
    whole = crop_face(img, None, image_size=50)  # padded to a square, aspect kept
    assert whole.shape == (50, 50, 3) and whole[:, :2].max() == 0 and whole[20:30, 20:30].max() > 0
    edge = crop_face(img, (60, 80, 30, 30), image_size=30, margin=0.0)  # box partly outside: zero padded
    assert edge.shape == (30, 30, 3)


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="face_detection"):
        FaceCropSettings(face_detection="dlib")
    with pytest.raises(ValueError, match="no_face"):
        FaceCropSettings(no_face="maybe")
    assert "margin" not in FaceCropSettings(face_detection="none").as_dict()


# ------------------------------------------------------------------ preprocessing + manifest
def test_preprocess_all_modes_and_bad_files_counted_originals_untouched(tmp_path: Path, caplog) -> None:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=3, frames=1, size=24, modes=MODES)
    bad = write_bad_files(root / "sad")
    (root / "happy" / "readme.txt").write_text("not an image")
    before = tree_fingerprint(root)
    recs = scan_class_folders(root, CLASSES)
    settings = FaceCropSettings(image_size=16, face_detection="none")
    with caplog.at_level(logging.INFO, logger="features.faces"):
        out = preprocess_faces(recs, tmp_path / "cache", settings, progress="none")
    assert tree_fingerprint(root) == before  # originals never modified
    summary = summarize_manifest(out.values())
    assert summary["ok"] == 6
    for reason in bad:
        assert summary[f"skipped:{reason}"] == (2 if reason == "not_an_image" else 1)
    for reason, path in bad.items():
        e = out[str(path.resolve())]
        assert e["status"] == "skipped" and e["reason"] == reason
    assert "6 processed" not in caplog.text and "11 processed" in caplog.text and "skipped" in caplog.text
    manifest = read_manifest(tmp_path / "cache" / "manifest.jsonl")
    assert set(manifest) == set(out)
    ok = [e for e in manifest.values() if e["status"] == "ok"]
    for e in ok:
        crop = np.load(tmp_path / "cache" / e["cache_file"])
        assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8 and len(e["sha1"]) == 40
    lines = (tmp_path / "cache" / "manifest.jsonl").read_text().splitlines()
    assert all({"path", "sha1", "box", "status", "reason"} <= set(json.loads(line)) for line in lines)


def test_on_bad_image_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=1, frames=1)
    write_bad_files(root / "happy")
    with pytest.raises(BadImageError):
        preprocess_faces(
            scan_class_folders(root, CLASSES),
            tmp_path / "c",
            FaceCropSettings(face_detection="none"),
            on_bad_image="error",
            progress="none",
        )


def test_cache_reused_without_detection_and_changed_file_reprocessed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    paths = make_class_folders(root, CLASSES, subjects=2, frames=1, size=64)
    recs = scan_class_folders(root, CLASSES)
    settings = FaceCropSettings(image_size=16, face_detection="haar", no_face="keep")
    det = HaarFaceDetector()
    first = preprocess_faces(recs, tmp_path / "c", settings, progress="none", detector=det)
    assert det.calls == 4 and not any(e["cached"] for e in first.values())
    det2 = HaarFaceDetector()
    second = preprocess_faces(recs, tmp_path / "c", settings, progress="none", detector=det2)
    assert det2.calls == 0 and all(e["cached"] for e in second.values())
    # a touched-but-identical file is recognised by its hash; a changed file is reprocessed
    os.utime(paths[0], ns=(1, 1))
    img = np.asarray(load_image_rgb(paths[1]))[..., 0]
    from PIL import Image

    Image.fromarray(255 - img).save(paths[1])
    det3 = HaarFaceDetector()
    third = preprocess_faces(recs, tmp_path / "c", settings, progress="none", detector=det3)
    assert det3.calls == 1
    assert (
        third[str(paths[1].resolve())]["cached"] is False and third[str(paths[0].resolve())]["cached"] is True
    )
    # other settings -> recomputed
    det4 = HaarFaceDetector()
    preprocess_faces(recs, tmp_path / "c", FaceCropSettings(image_size=20), progress="none", detector=det4)
    assert det4.calls == 4


@pytest.mark.parametrize("policy", ["keep", "skip"])
def test_no_face_keep_or_skip_counted(tmp_path: Path, policy: str) -> None:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=2, frames=1, size=48, kind="noise")  # Haar finds no face
    out = preprocess_faces(
        scan_class_folders(root, CLASSES),
        tmp_path / "c",
        FaceCropSettings(image_size=16, no_face=policy),
        progress="none",
    )
    summary = summarize_manifest(out.values())
    if policy == "keep":
        assert summary == {"ok": 4, "no_face_kept": 4, "processed": 4}
        assert all(e["face"] == "not_found" and e["box"] is None for e in out.values())
    else:
        assert summary == {"skipped:no_face": 4, "processed": 4}


def test_haar_fires_on_cartoon_faces_and_crops_them(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=2, frames=1, size=96)
    out = preprocess_faces(
        scan_class_folders(root, CLASSES), tmp_path / "c", FaceCropSettings(image_size=16), progress="none"
    )
    assert all(e["face"] == "detected" and e["n_faces"] >= 1 and len(e["box"]) == 4 for e in out.values())


# ------------------------------------------------------------------ real faces
def test_haar_detects_real_jaffe_faces(tmp_path: Path) -> None:
    files = _jaffe_files(3)
    det = HaarFaceDetector()
    for f in files:
        rgb = load_image_rgb(f)
        boxes = det.detect(rgb)
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) >= 1
        x, y, w, h = boxes[0]
        assert 40 <= w <= 256 and 0 <= x and x + w <= 256 and 0 <= y and y + h <= 256
        areas = boxes[:, 2] * boxes[:, 3]
        assert (np.diff(areas) <= 0).all()  # largest first
        crop = crop_face(rgb, boxes[0], 32)
        assert crop.shape == (32, 32, 3)


@pytest.mark.slow
def test_haar_detection_rate_on_all_jaffe() -> None:
    root = real_root("jaffe")
    if root is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    found, total = detection_rate(sorted(root.glob("*/*.tiff")))
    assert total == 213
    assert found >= 200, f"Haar found faces in {found}/213 JAFFE images"
