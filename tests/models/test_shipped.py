"""models.shipped: the face model inside the package loads by name, predicts real faces as it did when it was
shipped, reads other project checkpoints safely, and the prediction-only export loads back equal."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models.shipped import (
    DEFAULT_MODEL,
    SHIPPED_MODELS,
    WEIGHTS_DIR,
    export_for_prediction,
    load_face_model,
    shipped_checkpoint,
)
from models.timm_classifier import TimmClassifier

FER2013 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "fer2013"
#: A fixed set of PublicTest faces and the classes the shipped model gave them when it was exported.
EXPECTED = WEIGHTS_DIR / f"{DEFAULT_MODEL}.expected.json"


def _tiny_checkpoint(path: Path, class_path: str = "models.timm_classifier.TimmClassifier") -> TimmClassifier:
    torch.manual_seed(0)
    init = {"model_name": "resnet18", "pretrained": "/nonexistent/never-read.pth", "in_chans": 3, "img_size": None,
            "drop_rate": 0.0, "drop_path_rate": None, "model_kwargs": {"channels": [8, 8, 16, 16]}}
    net = TimmClassifier(num_classes=3, **{**init, "pretrained": None}).eval()
    names = ["a", "b", "c"]
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"net": {"class_path": class_path, "init_args": init}, "num_classes": 3,
                             "class_names": names, "image_size": 32},
        "fer_preprocessing": {"version": 1, "settings": {"class_names": names, "image_size": 32, "descriptor": "none",
                                                         "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
        "optimizer_states": [{"big": torch.zeros(1000)}],
    }
    torch.save(ckpt, path)
    return net


def test_a_project_checkpoint_loads_and_predicts_like_its_net(tmp_path: Path) -> None:
    net = _tiny_checkpoint(tmp_path / "m.ckpt")
    model = load_face_model(tmp_path / "m.ckpt")  # its stored `pretrained` path is never opened
    assert model.class_names == ["a", "b", "c"] and model.image_size == 32 and model.colour == "rgb"
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, size=(5, 40, 30, 3), dtype=np.uint8)
    probs = model.predict(faces)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    with torch.no_grad():
        ref = torch.softmax(net(model.preprocess(faces)), 1).numpy()
    np.testing.assert_allclose(probs, ref, atol=1e-6)


def test_grey_models_see_colour_faces_as_grey(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "m.ckpt")
    model = load_face_model(tmp_path / "m.ckpt", colour="grey")
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(2, 32, 32), dtype=np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    np.testing.assert_allclose(model.predict(rgb), model.predict(grey), atol=1e-6)


def test_export_keeps_only_what_prediction_needs(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "m.ckpt")
    out = export_for_prediction(tmp_path / "m.ckpt", tmp_path / "out" / "small.ckpt")
    ckpt = torch.load(out, weights_only=True)
    assert "optimizer_states" not in ckpt and ckpt["hyper_parameters"]["net"]["init_args"]["pretrained"] is None
    faces = np.random.default_rng(2).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_face_model(out).predict(faces), load_face_model(tmp_path / "m.ckpt").predict(faces))


def test_refusals_name_the_file(tmp_path: Path) -> None:
    _tiny_checkpoint(tmp_path / "evil_class.ckpt", class_path="os.system")
    with pytest.raises(ValueError, match=r"evil_class\.ckpt.*not one of the project's face nets"):
        load_face_model(tmp_path / "evil_class.ckpt")

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": Boom()}))
    with pytest.raises(ValueError, match=r"evil\.ckpt.*refused.*weights_only"):
        load_face_model(tmp_path / "evil.ckpt")
    assert not (tmp_path / "ran").exists()
    with pytest.raises(FileNotFoundError, match="not a shipped model name"):
        load_face_model(tmp_path / "missing.ckpt")
    with pytest.raises(KeyError, match="No shipped face model"):
        shipped_checkpoint("nope")


def test_the_shipped_model_is_in_the_package_and_small() -> None:
    for name, (file, _colour) in SHIPPED_MODELS.items():
        path = shipped_checkpoint(name)
        assert path.parent == WEIGHTS_DIR and path.name == file
        assert path.stat().st_size <= 16 * 2**20, f"{path} is over the 16 MiB a shipped model may take"
        assert (WEIGHTS_DIR / f"{name}.md").is_file(), f"{name} has no model card"
    model = load_face_model()
    assert model.class_names == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


@pytest.mark.skipif(not FER2013.is_dir(), reason=f"FER2013 is not at {FER2013} (../shared/data)")
def test_the_shipped_model_predicts_real_faces_as_when_it_was_shipped() -> None:
    """Regression across releases: a fixed set of PublicTest faces keeps the classes recorded at export time."""
    from PIL import Image

    expected = json.loads(EXPECTED.read_text())
    faces = [np.asarray(Image.open(FER2013 / e["file"]).convert("L")) for e in expected["faces"]]
    model = load_face_model()
    probs = model.predict(faces)
    got = [model.class_names[i] for i in probs.argmax(1)]
    want = [e["predicted"] for e in expected["faces"]]
    assert got == want
    np.testing.assert_allclose(probs.max(1), [e["confidence"] for e in expected["faces"]], atol=1e-3)
    # and they are mostly right: the set's recorded accuracy against its true labels
    true = [e["file"].split("/")[1] for e in expected["faces"]]
    assert np.mean([g == t for g, t in zip(got, true)]) == pytest.approx(expected["accuracy"])


# ------------------------------------------------------------------------------------------------ read_face_net
def test_read_face_net_rebuilds_a_two_branch_swin_with_its_preprocessing(tmp_path: Path) -> None:
    """Any LitFER checkpoint (here the two-branch Swin, which load_face_model refuses for its descriptor maps) ->
    the ready net in eval mode and the stored preprocessing as plain data."""
    from models.shipped import read_face_net
    from models.swin_two_branch import TwoBranchSwin

    tiny = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "window_size": 4}
    torch.manual_seed(0)
    net = TwoBranchSwin(3, img_size=32, **tiny).eval()
    settings = {"class_names": ["x", "y", "z"], "image_size": 32, "descriptor": "lbp", "lbp_points": 8,
                "lbp_radius": 1.0, "face_margin": 0.3, "predict_alignment": "eyes", "colour": "grey",
                "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "descriptor_mean": 0.4, "descriptor_std": 0.2}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"net": {"class_path": "models.swin_two_branch.TwoBranchSwin",
                                             "init_args": {**tiny, "pretrained": "/never/read.ckpt"}},
                                     "num_classes": 3, "image_size": 32, "_class_path": "lightning_modules.fer.LitFER",
                                     "optimizer": {"class_path": "torch.optim.AdamW"}},
                "fer_preprocessing": {"version": 1, "settings": settings, "sun_params": None}}, tmp_path / "s.ckpt")
    got, prep = read_face_net((tmp_path / "s.ckpt").as_uri())
    assert isinstance(got, TwoBranchSwin) and not got.training and got.inputs == ("image", "descriptor")
    assert prep["inputs"] == ("image", "descriptor") and prep["num_classes"] == 3 and prep["version"] == 1
    assert {k: prep[k] for k in settings} == settings and prep["sun_params"] is None
    json.dumps(prep)  # plain data
    x, d = torch.rand(2, 3, 32, 32), torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(x, d), net(x, d))
    with pytest.raises(ValueError, match=r"s\.ckpt.*'lbp' descriptor maps"):
        load_face_model(tmp_path / "s.ckpt")


def test_read_face_net_of_a_timm_checkpoint_fills_what_is_not_stored(tmp_path: Path) -> None:
    from common.checkpoint import CheckpointError
    from models.shipped import read_face_net

    net = _tiny_checkpoint(tmp_path / "m.ckpt")
    ckpt = torch.load(tmp_path / "m.ckpt", weights_only=True)
    del ckpt["fer_preprocessing"]  # an older checkpoint: hyper-parameters only
    torch.save(ckpt, tmp_path / "old.ckpt")
    got, prep = read_face_net(tmp_path / "old.ckpt")
    assert prep["class_names"] == ["a", "b", "c"] and prep["image_size"] == 32 and prep["colour"] == "rgb"
    assert prep["mean"] == [0.485, 0.456, 0.406] and prep["descriptor"] == "none" and prep["version"] is None
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(got(x), net(x))
    ckpt["state_dict"] = {k: v for k, v in ckpt["state_dict"].items() if "fc" not in k}
    torch.save(ckpt, tmp_path / "cut.ckpt")
    with pytest.raises(CheckpointError, match=r"cut\.ckpt.*weights do not fit TimmClassifier"):
        read_face_net(tmp_path / "cut.ckpt")
