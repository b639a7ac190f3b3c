"""Speaker-face features: geometry with known answers, the largest track, descriptors, masking, checkpoint safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.detection import Detection
from features.vision import (
    GEOMETRY_FEATURES,
    FaceExpressionModel,
    VisionExtractor,
    VisionSettings,
    descriptor_features,
    descriptor_names,
    face_geometry,
    follow_speaker,
)

G = {n: i for i, n in enumerate(GEOMETRY_FEATURES)}


def test_geometry_box_motion_and_landmarks() -> None:
    boxes = np.array([[100, 50, 80, 80], [120, 50, 80, 80], [0, 0, 0, 0], [160, 50, 88, 88]], float)
    present = np.array([True, True, False, True])
    times = np.array([0.0, 0.2, 0.4, 0.6])
    lm = np.full((4, 5, 2), np.nan)
    # level eyes 40 px apart, nose centred, mouth corners 30 px apart
    lm[0] = [[120, 80], [160, 80], [140, 95], [125, 110], [155, 110]]
    # the same face rolled by +30 degrees around the left eye
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rot = np.array([[c, -s], [s, c]])
    lm[1] = (lm[0] - lm[0][0]) @ rot.T + lm[0][0] + [20, 0]
    g = face_geometry(boxes, present, times, (400, 200), np.array([0.99, 0.98, 0, 0.97]), lm)
    assert g.shape == (4, len(GEOMETRY_FEATURES))
    assert g[0, G["box_w_rel"]] == pytest.approx(0.2) and g[0, G["box_h_rel"]] == pytest.approx(0.4)
    assert g[0, G["box_cx_rel"]] == pytest.approx(140 / 400) and g[0, G["box_dx_per_s"]] == 0
    assert g[1, G["box_dx_per_s"]] == pytest.approx((20 / 400) / 0.2)  # 0.25 frame widths per second
    assert np.all(g[2] == 0)  # no face: the row is masked (face_present 0) and carries nothing else
    assert g[3, G["box_dx_per_s"]] == pytest.approx(((204 - 160) / 400) / 0.4)  # over the gap
    assert g[3, G["box_scale_per_s"]] == pytest.approx(np.log(88 / 80) / 0.4)
    assert g[0, G["head_roll_deg"]] == pytest.approx(0.0, abs=1e-4)
    assert g[1, G["head_roll_deg"]] == pytest.approx(30.0, abs=1e-3)
    for row in (0, 1):  # roll-invariant shape measures
        assert g[row, G["mouth_width_rel"]] == pytest.approx(30 / 40, abs=1e-4)
        assert g[row, G["nose_offset_rel"]] == pytest.approx(0.0, abs=1e-4)
        assert g[row, G["nose_height_rel"]] == pytest.approx(15 / 30, abs=1e-4)
    assert g[3, G["landmarks_present"]] == 0 and g[0, G["landmarks_present"]] == 1


def test_the_speaker_is_the_largest_track() -> None:
    small = lambda x: Detection((x, 10, 30, 30), 0.99)
    big = lambda x: Detection((x, 100, 60, 60), 0.99)
    frames = [[small(10), big(200)], [big(203), small(12)], [small(14)], [small(16), big(206)]]
    chosen = follow_speaker(frames)
    np.testing.assert_array_equal(chosen, [1, 0, -1, 1])
    # a big face seen once loses against a medium face seen all the time
    medium = lambda x: Detection((x, 10, 40, 40), 0.99)
    frames = [[medium(10)], [medium(11), big(300)], [medium(12)], [medium(13)]]
    np.testing.assert_array_equal(follow_speaker(frames), [0, 0, 0, 0])
    assert np.all(follow_speaker([[], []]) == -1)


def test_descriptor_fallback_dims_and_content() -> None:
    s = VisionSettings(descriptor="hog_lbp", crop_size=64)
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    d = descriptor_features(crop, s)
    assert d.shape == (len(descriptor_names(s)),) == (324 + 40,)
    lbp = d[324:].reshape(4, 10)
    np.testing.assert_allclose(lbp.sum(1), 1.0, atol=1e-6)  # quadrant histograms
    flat = np.full((64, 64, 3), 128, np.uint8)
    assert not np.allclose(descriptor_features(flat, s), d)


@pytest.fixture(scope="module")
def jaffe_faces(shared_data) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((shared_data / "jaffe").glob("*/*.tiff"))[:3]
    if not files:
        pytest.skip("JAFFE portraits are absent")
    return [np.array(Image.open(f).convert("RGB")) for f in files]


@pytest.mark.parametrize("detector", ["mtcnn", "haar"])
def test_real_faces_found_and_faceless_frames_masked(jaffe_faces, detector) -> None:
    face = jaffe_faces[0]
    blank = np.full_like(face, 90)
    frames = np.stack([face, face, blank, face])
    vx = VisionExtractor(VisionSettings(detector=detector))
    feats, mask = vx(frames, np.arange(4) * 0.2)
    assert feats.shape == (4, len(vx.feature_names()))
    np.testing.assert_array_equal(mask, [True, True, False, True])
    assert np.all(feats[2] == 0) and np.all(feats[mask, G["face_present"]] == 1)
    assert 0.2 < feats[0, G["box_w_rel"]] < 0.9
    assert feats[0, G["landmarks_present"]] == (1 if detector == "mtcnn" else 0)
    np.testing.assert_allclose(feats[0], feats[1], atol=1e-5)  # the same frame twice gives the same features


def _ckpt(tmp_path, class_path: str):
    path = tmp_path / "face.ckpt"
    torch.save({"hyper_parameters": {"net": {"class_path": class_path, "init_args": {}}, "num_classes": 3},
                "state_dict": {}}, path)
    return path


def test_face_model_checkpoint_class_paths_are_allow_listed(tmp_path) -> None:
    with pytest.raises(ValueError, match="not one of"):
        FaceExpressionModel(str(_ckpt(tmp_path, "os.system")))
    with pytest.raises(FileNotFoundError):
        FaceExpressionModel(str(tmp_path / "missing.ckpt"))


def test_face_model_from_a_litfer_style_checkpoint(tmp_path) -> None:
    from models.timm_classifier import TimmClassifier

    net = TimmClassifier(3, model_name="resnet18")
    path = tmp_path / "fer.ckpt"
    torch.save({"hyper_parameters": {"net": {"class_path": "models.timm_classifier.TimmClassifier",
                                             "init_args": {"model_name": "resnet18"}},
                                     "num_classes": 3, "class_names": ["happy", "sad", "neutral"]},
                "datamodule_hyper_parameters": {"image_size": 64, "face_margin": 0.2},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    fm = FaceExpressionModel(str(path))
    assert fm.feature_names()[:3] == ["prob_happy", "prob_sad", "prob_neutral"]
    crops = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    out = fm(crops)
    assert out.shape == (2, 3 + 512)
    np.testing.assert_allclose(out[:, :3].sum(1), 1.0, atol=1e-5)
    x = (np.stack(crops).astype(np.float32) / 255 - fm.mean) / fm.std
    with torch.inference_mode():
        ref = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).softmax(1).numpy()
    np.testing.assert_allclose(out[:, :3], ref, atol=1e-5)
