"""Tests for features/tracking.py: Hungarian IoU matching, gaps, crossings, appearance re-linking, smoothing."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from features.tracking import IoUTracker, box_iou, face_embedding, smooth_track_probabilities
from tests.fakes_images import real_root


def test_box_iou_values() -> None:
    a = np.array([[0, 0, 10, 10], [100, 100, 5, 5]])
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [50, 50, 1, 1]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == pytest.approx(1.0) and iou[0, 1] == pytest.approx(50 / 150) and iou[0, 2] == 0
    assert (iou[1] == 0).all()
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_bad_args_name_the_class() -> None:
    with pytest.raises(ValueError, match="IoUTracker: iou_threshold"):
        IoUTracker(iou_threshold=0)
    with pytest.raises(ValueError, match="IoUTracker: motion"):
        IoUTracker(motion="kalman")  # type: ignore[arg-type]


def test_steady_faces_keep_ids_and_newcomers_get_new_ones() -> None:
    tr = IoUTracker()
    for step in range(5):
        ids = tr.update(np.array([[10 + 2 * step, 10, 40, 40], [200 - 2 * step, 50, 60, 60]]))
        assert ids.tolist() == [0, 1]
    ids = tr.update(np.array([[400, 400, 30, 30], [190, 50, 60, 60], [20, 10, 40, 40]]))
    assert ids.tolist() == [2, 1, 0]  # order of detections does not matter
    assert tr.update(np.zeros((0, 4))).shape == (0,)


def test_gap_within_max_age_keeps_the_id_longer_gap_does_not() -> None:
    tr = IoUTracker(max_age=3, reid_max_age=0)
    box = np.array([[50, 50, 40, 40]])
    assert tr.update(box).tolist() == [0]
    for _ in range(3):
        tr.update(np.zeros((0, 4)))
    assert tr.update(box).tolist() == [0]
    for _ in range(4):
        tr.update(np.zeros((0, 4)))
    assert tr.update(box).tolist() == [1]


@pytest.mark.parametrize("motion", ["constant_velocity", "none"])
def test_crossing_faces_hidden_at_the_crossing(motion: str) -> None:
    """Two faces cross at 10 px/frame and are both missed for 4 frames at the crossing: the velocity prediction
    keeps both identities; the last-box matcher (``motion="none"``) swaps them -- the test can tell."""
    tr = IoUTracker(iou_threshold=0.1, motion=motion)  # type: ignore[arg-type]
    seen: dict[str, set] = defaultdict(set)
    for step in range(30):
        if 12 <= step <= 15:
            tr.update(np.zeros((0, 4)))
            continue
        ids = tr.update(np.array([[20 + 10 * step, 100, 50, 50], [300 - 10 * step, 104, 50, 50]]))
        seen["a"].add(int(ids[0]))
        seen["b"].add(int(ids[1]))
    if motion == "constant_velocity":
        assert seen == {"a": {0}, "b": {1}}
    else:
        assert seen["a"] != {0}


def _jaffe_crops(posers: tuple[str, str]) -> dict[str, list[np.ndarray]]:
    root = real_root("jaffe")
    if root is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    from features.detection import build_detector, face_crop
    from features.images import load_image_rgb

    det = build_detector("mtcnn", min_face_size=40)
    out: dict[str, list[np.ndarray]] = {}
    for p in posers:
        crops = []
        for f in sorted(root.glob(f"*/{p}.*.tiff"))[:6]:
            rgb = load_image_rgb(f)
            d = det.detect(rgb)
            if d:
                crops.append(face_crop(rgb, d[0], 64))
        out[p] = crops
    return out


def test_face_embedding_tells_two_real_people_apart() -> None:
    crops = _jaffe_crops(("KA", "YM"))
    ka = np.stack([face_embedding(c) for c in crops["KA"]])
    ym = np.stack([face_embedding(c) for c in crops["YM"]])
    assert ka.shape[1] == 24 * 24 and np.allclose(np.linalg.norm(ka, axis=1), 1, atol=1e-5)
    same = (ka @ ka.T)[np.triu_indices(len(ka), 1)].mean()
    assert same > (ka @ ym.T).mean() + 0.05


def test_occluded_face_is_relinked_by_appearance_only_with_embeddings() -> None:
    """A face hidden for 20 frames (> max_age) reappears elsewhere: embeddings give it its old id back."""
    crops = _jaffe_crops(("KA", "YM"))
    emb = {p: face_embedding(crops[p][0]) for p in crops}
    emb_later = {p: face_embedding(crops[p][1]) for p in crops}  # another expression of the same person

    def run(use_embeddings: bool) -> list[int]:
        tr = IoUTracker(max_age=5, reid_max_age=100)
        for _ in range(5):
            tr.update(np.array([[10, 10, 50, 50], [300, 10, 50, 50]]),
                      np.stack([emb["KA"], emb["YM"]]) if use_embeddings else None)
        for _ in range(20):  # KA hidden
            tr.update(np.array([[300, 10, 50, 50]]), emb["YM"][None] if use_embeddings else None)
        ids = tr.update(np.array([[300, 10, 50, 50], [150, 200, 50, 50]]),
                        np.stack([emb_later["YM"], emb_later["KA"]]) if use_embeddings else None)
        return ids.tolist()

    assert run(True) == [1, 0]
    assert run(False) == [1, 2]


def test_smoothing_window_per_track_and_modes() -> None:
    tids = np.array([0, 1, 0, 1, 0, 0])
    frames = np.array([0, 0, 1, 1, 2, 3])
    probs = np.array([[1, 0], [0, 1], [0, 1], [0, 1], [1, 0], [1, 0]], dtype=float)
    assert np.array_equal(smooth_track_probabilities(tids, frames, probs, 1), probs)
    c = smooth_track_probabilities(tids, frames, probs, 3, "centered")
    np.testing.assert_allclose(c[[0, 2, 4, 5], 0], [0.5, 2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(c[[1, 3], 1], [1.0, 1.0])  # track 1 untouched by track 0
    k = smooth_track_probabilities(tids, frames, probs, 2, "causal")
    np.testing.assert_allclose(k[[0, 2, 4, 5], 0], [1.0, 0.5, 0.5, 1.0])  # no look-ahead
    np.testing.assert_allclose(c.sum(1), 1.0)
    perm = np.array([5, 3, 1, 0, 4, 2])  # row order does not change the result
    np.testing.assert_allclose(smooth_track_probabilities(tids[perm], frames[perm], probs[perm], 3), c[perm])
    with pytest.raises(ValueError, match="window"):
        smooth_track_probabilities(tids, frames, probs, 0)
