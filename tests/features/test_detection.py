"""Tests for features/detection.py on real JAFFE portraits: MTCNN and Haar, min face size, eye alignment."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from features.detection import (
    Detection,
    HaarVideoDetector,
    MTCNNDetector,
    align_face,
    build_detector,
    eye_similarity,
    face_crop,
)
from features.images import load_image_rgb
from tests.fakes_images import real_root


def _jaffe(n: int) -> list[Path]:
    root = real_root("jaffe")
    if root is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    return sorted(root.glob("*/*.tiff"))[:: max(1, 213 // n)][:n]


def _rotate(rgb: np.ndarray, degrees: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REPLICATE)


def test_build_detector_kinds_and_bad_args() -> None:
    assert isinstance(build_detector("mtcnn", min_face_size=30), MTCNNDetector)
    assert isinstance(build_detector("haar", min_face_size=30), HaarVideoDetector)
    with pytest.raises(ValueError, match="kind"):
        build_detector("yolo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MTCNNDetector: min_face_size"):
        MTCNNDetector(min_face_size=5)
    with pytest.raises(ValueError, match="thresholds"):
        MTCNNDetector(thresholds=(0.6, 0.7))  # type: ignore[arg-type]


def test_blank_and_tiny_frames_give_no_face() -> None:
    det = build_detector("mtcnn", min_face_size=20)
    assert det.detect(np.zeros((240, 320, 3), np.uint8)) == []
    assert det.detect(np.full((8, 8, 3), 128, np.uint8)) == []
    assert build_detector("haar").detect(np.zeros((240, 320), np.uint8)) == []


def test_mtcnn_finds_jaffe_faces_with_landmarks() -> None:
    files = _jaffe(12)
    det = build_detector("mtcnn", min_face_size=40)
    found = 0
    for f in files:
        rgb = load_image_rgb(f)
        dets = det.detect(rgb)
        if not dets:
            continue
        found += 1
        d = dets[0]
        x, y, w, h = d.box
        assert isinstance(d, Detection) and 0.9 <= d.score <= 1.0
        assert d.landmarks is not None and d.landmarks.shape == (5, 2)
        le, re, nose = d.landmarks[0], d.landmarks[1], d.landmarks[2]
        assert x <= le[0] < nose[0] < re[0] <= x + w  # eyes either side of the nose, inside the box
        assert y <= le[1] < nose[1] <= y + h
        assert 60 <= w <= 220 and 0 <= x and x + w <= rgb.shape[1]
    assert found >= 11, f"MTCNN found a face in only {found}/{len(files)} JAFFE portraits"


def test_haar_detections_have_no_landmarks_and_respect_min_size() -> None:
    rgb = load_image_rgb(_jaffe(1)[0])
    dets = build_detector("haar", min_face_size=60).detect(rgb)
    assert dets and dets[0].landmarks is None and np.isnan(dets[0].score)
    assert build_detector("haar", min_face_size=250).detect(rgb) == []


def test_min_face_size_bounds_the_search() -> None:
    """A ~45 px face in a 640x360 frame is found with min_face_size=24 and not with 90."""
    rgb = load_image_rgb(_jaffe(1)[0])
    small = cv2.resize(rgb, (80, 80), interpolation=cv2.INTER_AREA)  # face ~ 45 px
    frame = np.full((360, 640, 3), 110, np.uint8)
    frame[100:180, 300:380] = small
    assert build_detector("mtcnn", min_face_size=24).detect(frame)
    assert build_detector("mtcnn", min_face_size=90).detect(frame) == []


def test_eye_similarity_levels_the_eyes_at_the_canonical_place() -> None:
    eyes = np.array([[100.0, 120.0], [140.0, 100.0], [0, 0], [0, 0], [0, 0]])  # tilted 26.6 degrees
    m = eye_similarity(eyes, image_size=112, margin=0.2)
    mapped = (m[:, :2] @ eyes[:2].T).T + m[:, 2]
    assert mapped[0, 1] == pytest.approx(mapped[1, 1], abs=1e-6)  # level
    assert mapped.mean(0)[0] == pytest.approx(56.0, abs=1e-6)  # centred
    assert mapped[1, 0] - mapped[0, 0] == pytest.approx(112 * 0.377 / 1.4, rel=1e-6)
    with pytest.raises(ValueError, match="coincide"):
        eye_similarity(np.array([[5.0, 5.0], [5.0, 5.0]]), 112)


@pytest.mark.parametrize("tilt", [-20.0, 20.0])
def test_alignment_undoes_head_tilt(tilt: float) -> None:
    """Aligned crops of a tilted portrait match the upright one better than plain box crops do."""
    det = build_detector("mtcnn", min_face_size=40)
    scores_aligned, scores_plain = [], []
    for f in _jaffe(4):
        upright = load_image_rgb(f)
        tilted = _rotate(upright, tilt)
        du, dt = det.detect(upright), det.detect(tilted)
        if not du or not dt:
            continue
        ref = face_crop(upright, du[0], 64).astype(np.float32)
        aligned = face_crop(tilted, dt[0], 64, alignment="eyes").astype(np.float32)
        plain = face_crop(tilted, dt[0], 64, alignment="none").astype(np.float32)
        scores_aligned.append(np.corrcoef(ref.ravel(), aligned.ravel())[0, 1])
        scores_plain.append(np.corrcoef(ref.ravel(), plain.ravel())[0, 1])
    assert len(scores_aligned) >= 3
    assert np.mean(scores_aligned) > np.mean(scores_plain) + 0.05, (scores_aligned, scores_plain)


def test_align_face_large_face_is_prefiltered_and_shaped() -> None:
    rgb = load_image_rgb(_jaffe(1)[0])
    big = cv2.resize(rgb, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    d = build_detector("mtcnn", min_face_size=200).detect(big)[0]
    out = align_face(big, d.landmarks, 48)
    assert out.shape == (48, 48, 3) and out.dtype == np.uint8
    # same face at the original size aligns to nearly the same crop
    d0 = build_detector("mtcnn", min_face_size=40).detect(rgb)[0]
    ref = align_face(rgb, d0.landmarks, 48)
    assert np.corrcoef(out.astype(float).ravel(), ref.astype(float).ravel())[0, 1] > 0.9


def test_face_crop_without_landmarks_is_the_training_crop() -> None:
    from features.faces import crop_face

    rgb = load_image_rgb(_jaffe(1)[0])
    d = Detection((60, 50, 120, 120), float("nan"), None)
    assert np.array_equal(face_crop(rgb, d, 32), crop_face(rgb, d.box, 32, 0.2))
    with pytest.raises(ValueError, match="alignment"):
        face_crop(rgb, d, 32, alignment="affine")  # type: ignore[arg-type]
