"""models.onnx_export: face checkpoints export to ONNX files that carry their preprocessing; ONNX Runtime's logits equal
torch's (1e-4) at batch sizes 1 and 5 for the shipped model, a timm ResNet and the two-branch Swin (both inputs); the
runner predicts as FaceModel does; bad files and a missing onnxruntime are clear errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'affect-lightning[onnx]') is not installed")
pytest.importorskip("onnxscript", reason="the onnx extra (pip install 'affect-lightning[onnx]') is not installed")

import onnx

from models.onnx_export import (
    INSTALL_HINT,
    METADATA_KEY,
    OnnxFaceModel,
    export_onnx,
    load_face_runner,
    load_onnx_face_model,
    main,
    max_abs_diff,
)
from models.shipped import DEFAULT_MODEL, FaceModel, load_face_model
from models.swin_two_branch import TwoBranchSwin
from models.timm_classifier import TimmClassifier
from tests.fakes_images import synthetic_face

ATOL = 1e-4
NAMES = ["a", "b", "c"]
SWIN = {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "window_size": 4,
        "fusion_init": "default", "drop_path_rate": 0.0}


def _write_checkpoint(path: Path, net: torch.nn.Module, class_path: str, init: dict, descriptor: str = "none") -> Path:
    ckpt = {
        "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
        "hyper_parameters": {"net": {"class_path": class_path, "init_args": init}, "num_classes": len(NAMES),
                             "class_names": NAMES, "image_size": 32},
        "fer_preprocessing": {"version": 1, "settings": {"class_names": NAMES, "image_size": 32,
                                                         "descriptor": descriptor, "mean": [0.5, 0.5, 0.5],
                                                         "std": [0.5, 0.5, 0.5]}},
    }
    torch.save(ckpt, path)
    return path


def _resnet_checkpoint(path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    init = {"model_name": "resnet18", "pretrained": None, "model_kwargs": {"channels": [8, 8, 16, 16]}}
    net = TimmClassifier(num_classes=len(NAMES), **init).eval()
    return _write_checkpoint(path, net, "models.timm_classifier.TimmClassifier", init), net


def _swin_checkpoint(path: Path) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    net = TwoBranchSwin(len(NAMES), gate="lavt", refine="none", **SWIN).eval()  # fusion at default init: it matters
    init = {**SWIN, "gate": "lavt", "refine": "none", "pretrained": "/nonexistent/never-read.pth"}
    return _write_checkpoint(path, net, "models.swin_two_branch.TwoBranchSwin", init, descriptor="sun"), net


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, torch.nn.Module, dict[int, float]]]:
    """name -> (exported .onnx, the torch net it came from, the export's own check)."""
    tmp = tmp_path_factory.mktemp("onnx")
    resnet_ckpt, resnet = _resnet_checkpoint(tmp / "resnet.ckpt")
    swin_ckpt, swin = _swin_checkpoint(tmp / "swin.ckpt")
    out = {}
    for name, source, net in (("shipped", DEFAULT_MODEL, load_face_model(DEFAULT_MODEL).net),
                              ("resnet", resnet_ckpt, resnet), ("two_branch_swin", swin_ckpt, swin)):
        path = tmp / f"{name}.onnx"
        out[name] = (path, net, export_onnx(source, path))
    return out


@pytest.mark.parametrize("name", ["shipped", "resnet", "two_branch_swin"])
@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_runtime_logits_equal_torch(exported: dict, name: str, batch: int) -> None:
    path, net, check = exported[name]
    assert set(check) == {1, 5} and max(check.values()) <= ATOL
    model = load_onnx_face_model(path)
    g = torch.Generator().manual_seed(100 + batch)
    inputs = [torch.randn(batch, 3, model.image_size, model.image_size, generator=g)]
    if name == "two_branch_swin":
        assert model.inputs == ("image", "descriptor") and model.input_shapes["descriptor"] == (1, 32, 32)
        inputs.append(torch.rand(batch, 1, 32, 32, generator=g))
        with torch.inference_mode():  # the descriptor input is live: other maps, other logits
            assert not torch.allclose(net(inputs[0], inputs[1]), net(inputs[0], torch.zeros_like(inputs[1])))
    else:
        assert model.inputs == ("image",)
    assert model.logits(*(x.numpy() for x in inputs)).shape == (batch, len(model.class_names))
    assert max_abs_diff(model, net, inputs) <= ATOL


def test_the_file_carries_the_preprocessing(exported: dict) -> None:
    path = exported["shipped"][0]
    torch_model = load_face_model(DEFAULT_MODEL)
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[METADATA_KEY])
    assert meta["class_names"] == torch_model.class_names and meta["image_size"] == torch_model.image_size
    assert meta["colour"] == "grey" and meta["exporter"] == "dynamo" and meta["inputs"] == ["image"]
    model = load_onnx_face_model(path)
    assert (model.class_names, model.image_size, model.mean, model.std, model.colour) == (
        torch_model.class_names, torch_model.image_size, torch_model.mean, torch_model.std, torch_model.colour)
    swin = load_onnx_face_model(exported["two_branch_swin"][0])
    assert swin.class_names == NAMES and swin.descriptor == "sun" and swin.mean == (0.5, 0.5, 0.5)


def test_runner_predicts_the_classes_of_face_model(exported: dict) -> None:
    torch_model, model = load_face_model(DEFAULT_MODEL), load_onnx_face_model(exported["shipped"][0])
    grey = [synthetic_face(size, label=i, seed=i) for i, size in enumerate((48, 48, 64, 37, 90, 48, 48))]
    rgb = [np.repeat(f[:, :, None], 3, axis=2) for f in grey[:3]]
    faces = grey + rgb
    probs, ref = model.predict(faces, batch_size=4), torch_model.predict(faces, batch_size=4)
    assert probs.shape == ref.shape == (len(faces), 7) and probs.dtype == np.float32
    np.testing.assert_array_equal(probs.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(probs, ref, atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_array_equal(model.preprocess(faces), torch_model.preprocess(faces).numpy())
    assert model.predict(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


def test_two_branch_predict_asks_for_descriptor_maps(exported: dict) -> None:
    model = load_onnx_face_model(exported["two_branch_swin"][0])
    with pytest.raises(ValueError, match="descriptor"):
        model.predict([synthetic_face(32)])
    with pytest.raises(ValueError, match="takes"):
        model.logits(np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.parametrize("content", [b"this is not an ONNX model\n", b"", "torch"])
def test_non_onnx_files_are_errors_naming_the_file(tmp_path: Path, content: bytes | str) -> None:
    path = tmp_path / "broken_model.onnx"
    if content == "torch":
        torch.save({"state_dict": {}}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="broken_model.onnx"):
        load_onnx_face_model(path)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_onnx_face_model(tmp_path / "missing.onnx")


def test_onnx_without_the_metadata_is_refused(tmp_path: Path, exported: dict) -> None:
    proto = onnx.load(str(exported["resnet"][0]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ValueError, match=r"foreign\.onnx.*not a face model exported"):
        load_onnx_face_model(tmp_path / "foreign.onnx")


def test_truncated_export_is_an_error_naming_it(tmp_path: Path, exported: dict) -> None:
    data = exported["resnet"][0].read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.onnx"):
        load_onnx_face_model(tmp_path / "cut.onnx")


def test_missing_onnxruntime_names_the_extra(monkeypatch: pytest.MonkeyPatch, exported: dict) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ModuleNotFoundError, match=r"affect-lightning\[onnx\]"):
        load_onnx_face_model(exported["resnet"][0])
    with pytest.raises(ModuleNotFoundError, match="onnxruntime"):
        load_face_runner(DEFAULT_MODEL, backend="onnxruntime")
    assert INSTALL_HINT == "pip install 'affect-lightning[onnx]'"


def test_failed_check_writes_nothing(tmp_path: Path) -> None:
    ckpt, _ = _resnet_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(ckpt, tmp_path / "out.onnx", exporter="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"out\.onnx.*not written"):  # torchscript: the quicker exporter
        export_onnx(ckpt, tmp_path / "out.onnx", exporter="torchscript", atol=-1.0)
    assert not (tmp_path / "out.onnx").exists()


def test_command_line_with_the_torchscript_fallback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt, net = _resnet_checkpoint(tmp_path / "m.ckpt")
    assert main([str(ckpt), str(tmp_path / "cli.onnx"), "--exporter", "torchscript"]) == 0
    out = capsys.readouterr().out
    assert "cli.onnx" in out and "batch 1" in out and "batch 5" in out
    model = load_face_runner(tmp_path / "cli.onnx", backend="onnxruntime")
    assert isinstance(model, OnnxFaceModel) and model.class_names == NAMES
    assert max_abs_diff(model, net, [torch.randn(3, 3, 32, 32)]) <= ATOL
    faces = [synthetic_face(40, label=i, seed=i) for i in range(4)]
    np.testing.assert_allclose(model.predict(faces), load_face_model(ckpt).predict(faces), atol=1e-5)
    with pytest.raises(ValueError, match="onnxruntime"):
        load_face_runner(tmp_path / "cli.onnx")


def test_backend_option_exports_in_memory(tmp_path: Path) -> None:
    ckpt, _ = _resnet_checkpoint(tmp_path / "m.ckpt")
    faces = [synthetic_face(40, label=i, seed=i) for i in range(4)]
    torch_model = load_face_runner(ckpt)
    ort_model = load_face_runner(ckpt, backend="onnxruntime", threads=1)  # exported in memory, no file
    assert isinstance(torch_model, FaceModel) and isinstance(ort_model, OnnxFaceModel)
    np.testing.assert_allclose(ort_model.predict(faces), torch_model.predict(faces), atol=1e-5)
    assert list(tmp_path.iterdir()) == [ckpt]
    with pytest.raises(ValueError, match="backend"):
        load_face_runner(ckpt, backend="tensorrt")  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["timm_swin", "poster"])
def test_other_face_nets_export_from_a_face_model(tmp_path: Path, name: str) -> None:
    from models.poster import POSTER

    torch.manual_seed(0)
    if name == "timm_swin":
        net = TimmClassifier(len(NAMES), "swin_tiny_patch4_window7_224", img_size=64, model_kwargs={
            "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 4), "window_size": 4})
    else:
        net = POSTER(len(NAMES), image_backbone="resnet18", landmark_backbone="resnet18", dim=16, tokens=2,
                     num_heads=2, depth=1)
    face_model = FaceModel(net=net.eval(), class_names=NAMES, image_size=64, mean=(0.5,) * 3, std=(0.5,) * 3)
    check = export_onnx(face_model, tmp_path / f"{name}.onnx", colour="grey")
    assert set(check) == {1, 5} and max(check.values()) <= ATOL
    model = load_onnx_face_model(tmp_path / f"{name}.onnx")
    assert model.colour == "grey" and face_model.colour == "rgb"  # the override is stored, the source untouched
    faces = [synthetic_face(48, label=i, seed=i) for i in range(3)]
    np.testing.assert_allclose(model.predict(faces), face_model.predict(faces), atol=1e-5)
