"""pipelines/extract.py: the feature extractor with a face model built above features/ (issue #21, "Inference gets its
own floor").

``features/`` imports no model code: the face net of ``--face-model`` is read by
``models.shipped.load_face_expression_model`` (``read_face_net``) and injected. The fast tests check that the injected
model gives, for the same checkpoint, exactly what ``features.vision.FaceExpressionModel(path)`` gave when it rebuilt
the net itself (a copy of that code is kept here as the reference), that ``python -m features.extract --face-model``
stops naming the new command, that a crafted checkpoint is refused before any work, and that the command hands the
model and its file to the extractor. The slow test runs the command on real media with one and two workers.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import features.extract as fx
from common.checkpoint import WEIGHT_FILE_ARGS
from common.tensors import grey_rgb
from features.descriptors import DescriptorSettings, SUNParams, compute_descriptor, to_uint8_map
from models.shipped import DATAMODULE_PREPROCESSING_KEYS, WEIGHTS_DIR, load_face_expression_model
from pipelines import extract as pipeline_extract
from tests.features.test_vision import TINY_SWIN, _faces32, _RunsCode, _sun_checkpoint


# ------------------------------------------------------------------------------------------------ the former reader
def _former_face_features(path: Path, crops: list[np.ndarray]) -> tuple[int, float, list[str], np.ndarray]:
    """``(image_size, margin, feature names, features)`` as ``features.vision.FaceExpressionModel(path)`` computed
    them before issue #21, when it rebuilt the net from the checkpoint's class path itself (its code, condensed)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    num_classes = int(hp["num_classes"])
    module, name = hp["net"]["class_path"].rsplit(".", 1)
    init = {k: v for k, v in dict(hp["net"].get("init_args") or {}).items() if k not in WEIGHT_FILE_ARGS}
    net = getattr(importlib.import_module(module), name)(num_classes, **init)
    net.load_state_dict({k[4:]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    net.eval()
    pre = ckpt.get("fer_preprocessing") if isinstance(ckpt.get("fer_preprocessing"), dict) else {}
    stored = pre.get("settings") if isinstance(pre.get("settings"), dict) else {}
    dm = ckpt.get("datamodule_hyper_parameters") or {}
    cfg = {**(dm if isinstance(dm, dict) else {}), **stored}
    size, margin = int(cfg.get("image_size", 112)), float(cfg.get("face_margin", 0.2))
    mean = np.asarray(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=np.float32)
    std = np.asarray(cfg.get("std", (0.229, 0.224, 0.225)), dtype=np.float32)
    inputs = tuple(getattr(net, "inputs", ("image",)))
    descriptor = str(cfg.get("descriptor", "none")) if "descriptor" in inputs else "none"
    settings = None if descriptor == "none" else DescriptorSettings(
        kind=descriptor, lbp_points=int(cfg.get("lbp_points", 8)), lbp_radius=float(cfg.get("lbp_radius", 1.0)),
        energy_sigma=float(cfg.get("energy_sigma", 2.0)),
        sun_sigmas=tuple(float(v) for v in cfg.get("sun_sigmas", (1.0, 2.0, 4.0, 8.0))),
        sun_ratio=float(cfg.get("sun_ratio", 1.6)), sun_channels=cfg.get("sun_channels", "intensity"))
    sun = SUNParams(**pre["sun_params"]) if descriptor == "sun" else None
    names = cfg.get("class_names") or hp.get("class_names") or [str(i) for i in range(num_classes)]
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_classes][-1]
    pooled: list[torch.Tensor] = []
    head.register_forward_pre_hook(lambda mod, inp: pooled.append(inp[0].detach()))
    x = np.stack(crops)
    x = (grey_rgb(x) if cfg.get("colour", "rgb") == "grey" else x).astype(np.float32) / 255.0
    tensors = [torch.from_numpy(np.ascontiguousarray(((x - mean) / std).transpose(0, 3, 1, 2)))]
    if settings is not None:
        maps = np.stack([to_uint8_map(compute_descriptor(c, settings, sun)) for c in crops]).astype(np.float32) / 255.0
        d_mean, d_std = float(cfg.get("descriptor_mean", 0.5)), float(cfg.get("descriptor_std", 0.5))
        tensors.append(torch.from_numpy((maps[:, None] - d_mean) / d_std))
    with torch.inference_mode():
        logits = net(*tensors)
    out = torch.cat([logits.float().softmax(1), pooled[-1].reshape(len(crops), -1).float()], 1).numpy()
    names = [f"prob_{c}" for c in names] + [f"emb_{i}" for i in range(head.in_features)]
    return size, margin, names, out.astype(np.float32)


def _older_timm_checkpoint(path: Path) -> Path:
    """A face checkpoint from before LitFER stored its preprocessing: the datamodule's hyper-parameters only."""
    from models.timm_classifier import TimmClassifier

    torch.manual_seed(0)
    init = {"model_name": "resnet18", "model_kwargs": {"channels": [8, 8, 16, 16]}}
    net = TimmClassifier(3, **init)
    torch.save({"hyper_parameters": {"net": {"class_path": "models.timm_classifier.TimmClassifier",
                                             "init_args": {**init, "pretrained": "/never/read.pth"}},
                                     "num_classes": 3, "class_names": ["happy", "sad", "neutral"]},
                "datamodule_hyper_parameters": {"image_size": 48, "face_margin": 0.25, "mean": [0.4, 0.5, 0.6],
                                                "std": [0.2, 0.3, 0.25], "root": "data/elsewhere"},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


def _descriptor_swin_checkpoint(path: Path, descriptor: str, colour: str) -> Path:
    """The two-branch Swin of ``tests/features/test_vision.py`` with another descriptor and colour."""
    from models.swin_two_branch import TwoBranchSwin

    torch.manual_seed(1)
    net = TwoBranchSwin(3, **TINY_SWIN).eval()
    settings = {"class_names": ["joy", "focus", "boredom"], "image_size": 32, "face_margin": 0.3,
                "descriptor": descriptor, "lbp_points": 8, "lbp_radius": 2.0, "energy_sigma": 1.5,
                "mean": [0.5] * 3, "std": [0.25] * 3, "descriptor_mean": 0.4, "descriptor_std": 0.2, "colour": colour}
    torch.save({"hyper_parameters": {"net": {"class_path": "models.swin_two_branch.TwoBranchSwin",
                                             "init_args": TINY_SWIN}, "num_classes": 3},
                "fer_preprocessing": {"version": 1, "settings": settings, "sun_params": None},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def face_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("face_ckpts")
    _sun_checkpoint(root / "sun.ckpt")
    return {"older_timm": _older_timm_checkpoint(root / "older.ckpt"), "sun_swin": root / "sun.ckpt",
            "lbp_grey_swin": _descriptor_swin_checkpoint(root / "lbp.ckpt", "lbp", "grey"),
            "energy_swin": _descriptor_swin_checkpoint(root / "energy.ckpt", "energy", "rgb"),
            "shipped": WEIGHTS_DIR / "fer2013_resnet18s.ckpt"}


@pytest.mark.parametrize("name", ["older_timm", "sun_swin", "lbp_grey_swin", "energy_swin", "shipped"])
def test_the_injected_face_model_gives_the_features_of_the_former_reader(face_checkpoints, name) -> None:
    """Same checkpoint, same crops: the same crop size, margin, feature names and bytes as before the net moved out
    of features/ (the checkpoint's class path imported there)."""
    path = face_checkpoints[name]
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    fm = load_face_expression_model(path)
    crops = [np.random.default_rng(i).integers(0, 256, (fm.image_size, fm.image_size, 3), dtype=np.uint8)
             for i in range(3)]
    if name == "sun_swin":
        crops += _faces32(2)
    size, margin, names, former = _former_face_features(path, crops)
    assert (fm.image_size, fm.margin, fm.feature_names()) == (size, margin, names)
    np.testing.assert_array_equal(fm(crops), former)
    np.testing.assert_array_equal(fm(crops), former)  # again: nothing builds up between calls


def test_the_reader_falls_back_on_the_face_datamodule_settings() -> None:
    """Older checkpoints hold the preprocessing in ``datamodule_hyper_parameters``: the reader takes the keys the face
    datamodule stores (kept in step with it here)."""
    from datamodules.fer import PREPROCESSING_KEYS

    assert set(DATAMODULE_PREPROCESSING_KEYS) == set(PREPROCESSING_KEYS)


# ------------------------------------------------------------------------------------------------ the commands
def test_features_extract_refuses_face_models_naming_the_command_that_reads_them(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        fx.main([str(tmp_path), "--out", str(tmp_path / "o.npz"), "--face-model", "runs/x/last.ckpt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--face-model" in err and "python -m pipelines.extract ... --face-model runs/x/last.ckpt" in err
    assert not (tmp_path / "o.npz").exists()


def test_a_crafted_face_model_is_refused_before_any_work(tmp_path, capsys) -> None:
    marker, evil = tmp_path / "ran", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": _RunsCode(str(marker))}, evil)
    source = tmp_path / "videos"
    source.mkdir()
    argv = [str(source), "--out", str(tmp_path / "o.npz"), "--face-model", str(evil)]
    with pytest.raises(SystemExit) as exit_info:
        fx.command_line(lambda: pipeline_extract.main(argv))
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.ckpt' was refused" in err[0] and "weights_only" in err[0]
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.ckpt", "videos"]


def test_the_command_hands_the_model_and_its_file_to_the_extractor(face_checkpoints, tmp_path, monkeypatch) -> None:
    calls: list[dict] = []

    def fake_extract(source, out, settings, **kw):
        calls.append({"settings": settings, **kw})
        return {"split_sizes": {}, "bad_counts": {}, "left_out": 0, "bad": []}

    monkeypatch.setattr(fx, "extract", fake_extract)
    ckpt = str(face_checkpoints["sun_swin"])
    pipeline_extract.main([str(tmp_path), "--out", str(tmp_path / "o.npz"), "--face-model", ckpt, "--fps", "2"])
    pipeline_extract.main([str(tmp_path), "--out", str(tmp_path / "o.npz")])
    with_model, without = calls
    assert with_model["settings"].vision.face_model == ckpt and with_model["settings"].vision.fps == 2
    assert with_model["face_model"].source == ckpt and with_model["face_model"].descriptor == "sun"
    assert without["face_model"] is None and without["settings"].vision.face_model is None


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_the_command_on_recordings_with_one_and_two_workers(face_checkpoints, shared_data, tmp_path) -> None:
    """Real faces and speech: the face model reaches the worker processes (sent once per worker) and gives the same
    file as one process; the header names the model's features."""
    import librosa
    from PIL import Image

    from features.mmsa_format import load_feature_file
    from features.synthetic_recordings import write_recording

    wav, faces = shared_data / "speech" / "pos.wav", sorted((shared_data / "jaffe").glob("*/*.tiff"))
    if not wav.is_file() or not faces:
        pytest.skip("speech or JAFFE portraits are absent")
    speech = librosa.load(wav, sr=16000)[0][:32000]
    videos = tmp_path / "videos"
    for k in range(2):
        write_recording(videos / f"rec{k}.mp4", np.array(Image.open(faces[k * 17]).convert("RGB")), speech,
                        size=(200, 160), seed=k)
        (videos / f"rec{k}.csv").write_text("start,end,text\n0.0,1.0,hello there\n1.0,2.0,quite fine\n")
    ckpt = str(face_checkpoints["sun_swin"])
    data = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.npz"
        pipeline_extract.main([str(videos), "--out", str(out), "--workers", str(workers), "--detector", "haar",
                               "--no-progress", "--face-model", ckpt])
        data[workers] = load_feature_file(out)
    header = json.loads(str(data[1]["extractor"]))
    assert header["settings"]["vision"]["face_model"] == "sun.ckpt"
    assert header["feature_names"]["vision"][-67:-64] == ["prob_joy", "prob_focus", "prob_boredom"]
    assert data[1]["extractor"] == data[2]["extractor"]
    for key in ("vision", "vision_face_mask", "audio", "text"):
        np.testing.assert_array_equal(data[1]["test"][key], data[2]["test"][key])
    assert data[1]["test"]["vision_face_mask"].any()
