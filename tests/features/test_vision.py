"""Speaker-face features: geometry with known answers, the largest track, descriptors, masking, the face model (a
ready net + preprocessing given by the caller; checkpoints read by ``models.shipped.load_face_expression_model``)
and checkpoint safety."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from common.preprocessing import face_preprocessing
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
from models.shipped import load_face_expression_model

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
    with pytest.raises(ValueError, match=r"face\.ckpt' names 'os\.system'.*not one of"):
        load_face_expression_model(_ckpt(tmp_path, "os.system"))
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_face_expression_model(tmp_path / "missing.ckpt")


def test_face_model_from_a_litfer_style_checkpoint(tmp_path) -> None:
    from models.timm_classifier import TimmClassifier

    net = TimmClassifier(3, model_name="resnet18")
    path = tmp_path / "fer.ckpt"
    torch.save({"hyper_parameters": {"net": {"class_path": "models.timm_classifier.TimmClassifier",
                                             "init_args": {"model_name": "resnet18"}},
                                     "num_classes": 3, "class_names": ["happy", "sad", "neutral"]},
                "datamodule_hyper_parameters": {"image_size": 64, "face_margin": 0.2},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    fm = load_face_expression_model(path)
    assert fm.feature_names()[:3] == ["prob_happy", "prob_sad", "prob_neutral"]
    assert fm.image_size == 64 and fm.source == str(path)  # an older checkpoint: the datamodule's hyper-parameters
    crops = [np.random.default_rng(i).integers(0, 255, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    out = fm(crops)
    assert out.shape == (2, 3 + 512)
    np.testing.assert_allclose(out[:, :3].sum(1), 1.0, atol=1e-5)
    x = (np.stack(crops).astype(np.float32) / 255 - fm.mean) / fm.std
    with torch.inference_mode():
        ref = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).softmax(1).numpy()
    np.testing.assert_allclose(out[:, :3], ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------ a net given by the caller
def _tiny_net(num_classes: int = 3) -> torch.nn.Module:
    from models.timm_classifier import TimmClassifier

    torch.manual_seed(0)
    return TimmClassifier(num_classes, model_name="resnet18", model_kwargs={"channels": [8, 8, 16, 16]}).eval()


PREP = {"class_names": ["a", "b", "c"], "image_size": 32, "face_margin": 0.3, "mean": [0.5] * 3, "std": [0.25] * 3,
        "colour": "rgb", "descriptor": "none", "inputs": ("image",)}


def test_face_model_takes_a_ready_net_and_plain_preprocessing() -> None:
    """No checkpoint: the net and the preprocessing data are the caller's; probabilities and the pooled embedding (the
    input of the last linear layer) come out, the net keeps no hook and the model pickles (as sent to workers)."""
    net = _tiny_net()
    fm = FaceExpressionModel(net, PREP, source="given.ckpt")
    assert (fm.image_size, fm.margin, fm.class_names, fm.embed_dim) == (32, 0.3, ["a", "b", "c"], 16)
    crops = [np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    out = fm(crops)
    x = torch.from_numpy(((np.stack(crops).astype(np.float32) / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2).copy())
    with torch.inference_mode():
        probs = net(x).softmax(1).numpy()
        emb = net.model.forward_head(net.model.forward_features(x), pre_logits=True).numpy()  # timm's pooled features
    np.testing.assert_allclose(out[:, :3], probs, atol=1e-6)
    np.testing.assert_allclose(out[:, 3:], emb, atol=1e-6)
    assert all(not m._forward_pre_hooks for m in net.modules())  # hooked for the call only
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(fm))(crops), out)
    assert fm([]).shape == (0, 3 + 16)


def test_face_model_refuses_preprocessing_the_net_cannot_use() -> None:
    with pytest.raises(ValueError, match=r"given\.ckpt names 2 classes for a net of 3 outputs"):
        FaceExpressionModel(_tiny_net(), {**PREP, "class_names": ["a", "b"], "num_classes": 3}, source="given.ckpt")
    with pytest.raises(ValueError, match=r"given\.ckpt: .*no descriptor"):
        FaceExpressionModel(_tiny_net(), {**PREP, "inputs": ("image", "descriptor")}, source="given.ckpt")
    with pytest.raises(ValueError, match=r"given\.ckpt uses SUN descriptor maps but holds no fitted SUN statistics"):
        FaceExpressionModel(_tiny_net(), {**PREP, "inputs": ("image", "descriptor"), "descriptor": "sun"},
                            source="given.ckpt")
    with pytest.raises(ValueError, match=r"given\.ckpt: function is not a torch nn\.Module with a final linear"):
        FaceExpressionModel(lambda x: x, PREP, source="given.ckpt")
    with pytest.raises(ValueError, match="final linear layer of 5 outputs"):
        FaceExpressionModel(_tiny_net(), {**PREP, "class_names": list("abcde")})


def test_the_extractor_takes_the_face_model_its_settings_name(tmp_path) -> None:
    fm = FaceExpressionModel(_tiny_net(), PREP, source=str(tmp_path / "face.ckpt"))
    with pytest.raises(ValueError, match=r"name the face model .*face\.ckpt.*python -m pipelines\.extract"):
        VisionExtractor(VisionSettings(detector="haar", face_model=str(tmp_path / "face.ckpt")))
    with pytest.raises(ValueError, match="the settings name none"):
        VisionExtractor(VisionSettings(detector="haar"), fm)
    with pytest.raises(ValueError, match=r"read from .*face\.ckpt but the settings name .*other\.ckpt"):
        VisionExtractor(VisionSettings(detector="haar", face_model=str(tmp_path / "other.ckpt")), fm)
    vx = VisionExtractor(VisionSettings(detector="haar", face_model=str(tmp_path / "face.ckpt")), fm)
    assert vx.feature_names() == list(GEOMETRY_FEATURES) + fm.feature_names()


# ------------------------------------------------------------------------------------------------ unsafe checkpoints
class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_crafted_or_foreign_face_model_is_refused_naming_the_file(tmp_path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": _RunsCode(str(marker))}}, evil)
    with pytest.raises(ValueError, match=r"evil\.ckpt' was refused.*weights_only.*system"):
        load_face_expression_model(evil)
    assert not marker.exists()  # nothing in the file ran
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint at all")
    with pytest.raises(ValueError, match=r"notes\.ckpt' was refused"):
        load_face_expression_model(text)
    plain = tmp_path / "plain.ckpt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match=r"plain\.ckpt' is not a face checkpoint"):
        load_face_expression_model(plain)


def test_extract_without_the_face_model_its_settings_name_stops_before_any_work(tmp_path) -> None:
    """features/ reads no checkpoint: settings naming one without the model stop before the (missing) source is
    even listed, naming the file and the command that reads it."""
    from features.extract import ExtractorSettings, extract

    settings = ExtractorSettings(vision=VisionSettings(face_model=str(tmp_path / "face.ckpt")))
    with pytest.raises(ValueError, match=r"extract: the settings name the face model .*face\.ckpt.*pipelines\.extract"):
        extract(tmp_path / "no_videos_needed", tmp_path / "out.npz", settings, progress=False)


# ------------------------------------------------------------------------------------------------ SUN face models
TINY_SWIN = {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "window_size": 4,
             "fusion_init": "default"}


def _faces32(n: int = 4) -> list[np.ndarray]:
    from tests.fakes_images import synthetic_face

    return [np.repeat(synthetic_face(32, i, i)[:, :, None], 3, axis=2) for i in range(n)]


def _sun_checkpoint(path, with_statistics: bool = True):
    """A LitFER checkpoint layout (net hyper-parameters, state_dict, ``fer_preprocessing``) of a tiny two-branch Swin
    trained with SUN maps; returns the net."""
    from features.descriptors import fit_sun_params
    from models.swin_two_branch import TwoBranchSwin

    torch.manual_seed(0)
    net = TwoBranchSwin(3, **TINY_SWIN).eval()
    settings = {"class_names": ["joy", "focus", "boredom"], "image_size": 32, "face_detection": "none",
                "face_margin": 0.3, "background": "black", "descriptor": "sun", "lbp_points": 8, "lbp_radius": 1.0,
                "energy_sigma": 2.0, "sun_sigmas": [1.0, 2.0], "sun_ratio": 1.6, "sun_channels": "intensity",
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "descriptor_mean": 0.4, "descriptor_std": 0.2,
                "predict_alignment": "eyes"}
    sun = dict(fit_sun_params(_faces32(), sigmas=(1.0, 2.0)).__dict__) if with_statistics else None
    torch.save({"hyper_parameters": {"_class_path": "lightning_modules.fer.LitFER",
                                     "net": {"class_path": "models.swin_two_branch.TwoBranchSwin",
                                             "init_args": TINY_SWIN},
                                     "num_classes": 3, "class_names": settings["class_names"]},
                "datamodule_hyper_parameters": {"image_size": 112, "descriptor": "sun"},  # stale: the state wins
                "fer_preprocessing": {"version": 1, "settings": settings, "sun_params": sun},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return net


def _training_batch(crops, state: dict):
    """The batch the face datamodule builds for these crops (uint8 SUN maps, FaceBatchTransform normalisation)."""
    from features.descriptors import DescriptorSettings, SUNParams, compute_descriptor, to_uint8_map
    from tests.helpers.fer import batch_transform

    s = state["settings"]
    ds = DescriptorSettings(kind="sun", sun_sigmas=tuple(s["sun_sigmas"]), sun_ratio=s["sun_ratio"])
    sun = SUNParams(**state["sun_params"])
    samples = [{"image": torch.from_numpy(c.transpose(2, 0, 1).copy()),
                "descriptor": torch.from_numpy(to_uint8_map(compute_descriptor(c, ds, sun))[None])} for c in crops]
    return batch_transform(mean=tuple(s["mean"]), std=tuple(s["std"]), descriptor_mean=s["descriptor_mean"],
                           descriptor_std=s["descriptor_std"])(samples)


def test_sun_face_model_uses_the_statistics_stored_in_the_checkpoint(tmp_path) -> None:
    path = tmp_path / "sun.ckpt"
    net = _sun_checkpoint(path)
    fm = load_face_expression_model(path)
    assert fm.descriptor == "sun" and fm.sun_params is not None and fm.image_size == 32 and fm.margin == 0.3
    assert fm.feature_names()[:3] == ["prob_joy", "prob_focus", "prob_boredom"]
    crops = _faces32(3)
    out = fm(crops)
    state = face_preprocessing(torch.load(path, weights_only=True))
    batch = _training_batch(crops, state)
    with torch.inference_mode():
        ref = net(batch["image"], batch["descriptor"]).softmax(1).numpy()
        blind = net(batch["image"], torch.zeros_like(batch["descriptor"])).softmax(1).numpy()
    assert not np.allclose(ref, blind, atol=1e-4)  # the maps matter, so the match below checks them
    np.testing.assert_allclose(out[:, :3], ref, atol=1e-5)


def test_sun_face_model_without_statistics_is_refused_naming_the_file(tmp_path) -> None:
    path = tmp_path / "nostats.ckpt"
    _sun_checkpoint(path, with_statistics=False)
    with pytest.raises(ValueError, match=r"nostats\.ckpt uses SUN descriptor maps but holds no fitted SUN statistics"):
        load_face_expression_model(path)


@pytest.mark.slow
def test_a_trained_litfer_sun_checkpoint_is_accepted(tmp_path) -> None:
    """``cli.py fit`` of the tiny two-branch Swin with SUN maps: its checkpoint works as ``--face-model`` and gives
    the probabilities LitFER gives on the datamodule's batch of the same crops."""
    from lightning_modules.fer import LitFER
    from tests.fakes_classroom import train_tiny_checkpoint

    path = train_tiny_checkpoint(tmp_path)
    fm = load_face_expression_model(path)
    assert fm.descriptor == "sun" and fm.sun_params is not None
    state = face_preprocessing(torch.load(path, weights_only=True))
    crops = _faces32(2)
    batch = _training_batch(crops, state)
    lit = LitFER.load_from_checkpoint(path, weights_only=False).eval()
    with torch.inference_mode():
        ref = lit(batch).softmax(1).numpy()
    np.testing.assert_allclose(fm(crops)[:, :len(fm.class_names)], ref, atol=1e-5)
