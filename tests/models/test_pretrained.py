"""``pretrained`` for every face net (issue #22 §3): timm hub, a local weight file, a checkpoint of this project."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from models.poster import POSTER
from models.pretrained import HubWeightsUnavailableError, PretrainedWeightsError, resolve_pretrained
from models.swin_two_branch import TwoBranchSwin
from models.timm_classifier import TimmClassifier

TINY_SWIN = {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": (1, 1), "num_heads": (1, 2),
             "window_size": 4, "drop_path_rate": 0.0}
SMALL_POSTER = {"image_backbone": "resnet18", "landmark_backbone": "resnet18", "out_indices": (3, 4), "dim": 16,
                "tokens": 2, "num_heads": 2, "depth": 1}


def _lit_checkpoint(net: nn.Module, path: Path, num_classes: int) -> Path:
    """A checkpoint in LitFER's layout (``net.`` weights beside other system state), nothing trained."""
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    state["train_metrics.confusion"] = torch.zeros(num_classes, num_classes)  # not the net's: ignored
    torch.save({"state_dict": state, "hyper_parameters": {"num_classes": num_classes}, "epoch": 3}, path)
    return path


def test_timm_classifier_from_project_checkpoint_drops_the_head_for_another_class_count(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = TimmClassifier(7, "resnet18")  # "trained on FER2013"
    ckpt = _lit_checkpoint(src, tmp_path / "fer2013.ckpt", 7)
    with caplog.at_level(logging.INFO, logger="models.pretrained"):
        net = TimmClassifier(3, "resnet18", pretrained=str(ckpt))  # a small set with 3 classes
    assert torch.equal(net.model.layer3[0].conv1.weight, src.model.layer3[0].conv1.weight)
    assert torch.equal(net.model.bn1.running_mean, src.model.bn1.running_mean)
    assert net.model.fc.weight.shape == (3, 512)
    assert "model.fc.weight" in caplog.text and "fer2013.ckpt" in caplog.text
    same = TimmClassifier(7, "resnet18", pretrained=str(ckpt))  # same classes: the head comes along
    assert torch.equal(same.model.fc.weight, src.model.fc.weight)


def test_two_branch_swin_and_poster_from_project_checkpoints(tmp_path: Path) -> None:
    src = TwoBranchSwin(7, gate="lavt", refine="none", fusion_init="default", **TINY_SWIN)
    ckpt = _lit_checkpoint(src, tmp_path / "swin.ckpt", 7)
    net = TwoBranchSwin(4, gate="lavt", refine="none", fusion_init="default", pretrained=str(ckpt), **TINY_SWIN)
    assert torch.equal(net.fusions[1].gate_conv.weight, src.fusions[1].gate_conv.weight)
    assert torch.equal(net.local_branch.patch_embed.proj.weight, src.local_branch.patch_embed.proj.weight)
    assert net.global_branch.head.fc.weight.shape[0] == 4
    poster_src = POSTER(7, **SMALL_POSTER)
    pckpt = _lit_checkpoint(poster_src, tmp_path / "poster.ckpt", 7)
    poster = POSTER(2, pretrained=str(pckpt), **SMALL_POSTER)
    assert torch.equal(poster.fusions[0].img_from_lmk.in_proj_weight, poster_src.fusions[0].img_from_lmk.in_proj_weight)
    assert torch.equal(poster.head[0].weight, poster_src.head[0].weight) and poster.head[2].out_features == 2


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weight_file_in_timm_layout(tmp_path: Path, suffix: str) -> None:
    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file(src.state_dict(), str(path))
    else:
        torch.save({"state_dict": src.state_dict()}, path)  # a training script's wrapper is unwrapped
    net = TimmClassifier(6, "resnet18", pretrained=str(path))
    assert torch.equal(net.model.layer2[1].conv2.weight, src.layer2[1].conv2.weight)
    assert net.model.fc.weight.shape == (6, 512)
    swin_src = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0, **TINY_SWIN)
    swin_file = tmp_path / f"swin{suffix}"
    (save_file if suffix == ".safetensors" else torch.save)(
        swin_src.state_dict() if suffix == ".pth" else dict(swin_src.state_dict()), str(swin_file))
    swin = TwoBranchSwin(3, pretrained=str(swin_file), **TINY_SWIN)  # both branches, local 1-channel adapted
    assert torch.equal(swin.global_branch.layers[1].blocks[0].mlp.fc1.weight,
                       swin_src.layers[1].blocks[0].mlp.fc1.weight)
    assert torch.allclose(swin.local_branch.patch_embed.proj.weight,
                          swin_src.patch_embed.proj.weight.sum(dim=1, keepdim=True))


def test_hub_offline_fails_at_once_naming_the_local_file_alternative(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # nothing cached, whatever the host has
    start = time.perf_counter()
    with pytest.raises(HubWeightsUnavailableError, match=r"HF_HUB_OFFLINE=1.*pretrained='/path/to/resnet18"):
        TimmClassifier(3, "resnet18", pretrained="hub")
    with pytest.raises(HubWeightsUnavailableError, match="TwoBranchSwin.*local weight file"):
        TwoBranchSwin(3, pretrained="timm", **TINY_SWIN)
    with pytest.raises(HubWeightsUnavailableError, match="POSTER"):
        POSTER(3, pretrained="hub", **SMALL_POSTER)
    assert time.perf_counter() - start < 10.0


def test_mismatched_files_are_errors_naming_the_file_and_keys(tmp_path: Path) -> None:
    r34 = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), r34)
    with pytest.raises(PretrainedWeightsError, match=r"resnet34\.pth.*does not fit timm model 'resnet18'.*layer"):
        TimmClassifier(3, "resnet18", pretrained=str(r34))
    wide = _lit_checkpoint(TwoBranchSwin(3, **{**TINY_SWIN, "embed_dim": 32}), tmp_path / "wide.ckpt", 3)
    with pytest.raises(PretrainedWeightsError, match=r"wide\.ckpt.*shape mismatches.*global_branch\.patch_embed"):
        TwoBranchSwin(3, pretrained=str(wide), **TINY_SWIN)
    other = _lit_checkpoint(TimmClassifier(3, "resnet18"), tmp_path / "resnet.ckpt", 3)
    with pytest.raises(PretrainedWeightsError, match=r"resnet\.ckpt.*keys missing from the checkpoint"):
        TwoBranchSwin(3, pretrained=str(other), **TINY_SWIN)


def test_files_that_are_not_weights_are_clear_errors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.ckpt"
    torch.save(TimmClassifier(3, "resnet18").state_dict(), plain)
    with pytest.raises(PretrainedWeightsError, match=r"plain\.ckpt.*not a checkpoint of this project"):
        TimmClassifier(3, "resnet18", pretrained=str(plain))
    code = tmp_path / "code.pth"
    torch.save({"weights": torch.zeros(1), "obj": Path("x")}, code)  # a pickled object: needs code to load
    with pytest.raises(PretrainedWeightsError, match=r"code\.pth.*refused.*weights_only"):
        TimmClassifier(3, "resnet18", pretrained=str(code))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(PretrainedWeightsError, match=r"junk\.safetensors"):
        TimmClassifier(3, "resnet18", pretrained=str(junk))
    with pytest.raises(FileNotFoundError, match="neither 'hub' nor an existing file"):
        resolve_pretrained(str(tmp_path / "absent.pth"), "X")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(ValueError, match="suffix '.txt'"):
        resolve_pretrained(str(tmp_path / "w.txt"), "X")


def test_option_conflicts_name_the_class(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ValueError, match="TimmClassifier: give pretrained"):
        TimmClassifier(3, "resnet18", pretrained=str(path), pretrained_file=str(path))
    with pytest.raises(ValueError, match="TwoBranchSwin: give pretrained"):
        TwoBranchSwin(3, pretrained="hub", pretrained_file=str(path), **TINY_SWIN)
    with pytest.raises(ValueError, match="POSTER: pretrained=.*image_weights"):
        POSTER(3, pretrained=str(path), **SMALL_POSTER)
    with pytest.raises(ValueError, match="POSTER: give pretrained"):
        POSTER(3, pretrained="hub", image_weights=str(path), **SMALL_POSTER)
    poster = POSTER(3, image_weights=str(path), **SMALL_POSTER)  # one backbone from a file
    assert torch.equal(poster.image_net.layer3[0].conv1.weight,
                       torch.load(path, weights_only=True)["layer3.0.conv1.weight"])


def test_a_shipped_models_name_initialises_a_net_from_any_working_directory(tmp_path: Path, monkeypatch) -> None:
    """``pretrained: fer2013_resnet18s`` (the transfer configs): the shipped checkpoint inside the package, whatever
    the working directory; the weights are the shipped net's."""
    from models.shipped import load_face_model, shipped_checkpoint

    monkeypatch.chdir(tmp_path)
    src = resolve_pretrained("fer2013_resnet18s", "TimmClassifier")
    assert src.kind == "checkpoint" and src.path == shipped_checkpoint("fer2013_resnet18s")
    net = TimmClassifier(7, model_name="resnet18", pretrained="fer2013_resnet18s",
                         model_kwargs={"channels": [32, 64, 128, 256]})
    shipped = load_face_model().net
    for (k, a), b in zip(net.state_dict().items(), shipped.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="shipped model's name: fer2013_resnet18s"):
        resolve_pretrained("fer2013_resnet99", "TimmClassifier")
