"""A tiny trained LitFER checkpoint (two-branch Swin + SUN descriptor) and short classroom videos of real faces, for
the classroom API, CLI and web-page tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.fakes_images import make_class_folders, real_root

REPO = Path(__file__).resolve().parents[1]
LEARNING = ["joy", "focus", "thinking", "boredom", "confusion", "drowsiness"]
TINY_NET = {"img_size": 32, "embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "window_size": 4,
            "drop_path_rate": 0.0}


def tiny_predict_config(tmp: Path, output_dir: Path) -> Path:
    """configs/fer/predict_video.yaml with the tiny net, every frame analysed and faces from 24 px (its data section,
    ``FaceVideoDataModule``, has no preprocessing: that comes from the checkpoint)."""
    cfg = yaml.safe_load((REPO / "configs" / "fer" / "predict_video.yaml").read_text())
    cfg["model"]["init_args"]["net"]["init_args"].update(TINY_NET)
    # every frame (the shipped config analyses one in 5): the tests count rows per frame
    cfg["data"]["init_args"].update(progress="none", min_face_size=24, every_n_frames=1)
    cfg["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(output_dir)
    cfg["trainer"]["enable_progress_bar"] = False
    path = tmp / "predict_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


#: A tiny timm ResNet (``TimmClassifier``: image only, no descriptor input).
TINY_RESNET = {"class_path": "models.timm_classifier.TimmClassifier",
               "init_args": {"model_name": "resnet18", "pretrained_file": None}}


def train_tiny_checkpoint(tmp: Path, net: dict | None = None, descriptor: str = "sun") -> Path:
    """``cli.py fit`` (one epoch, ``FERDataModule``) of a tiny net on cartoon faces (32 px): the two-branch Swin of
    the predict config with SUN maps by default, or ``net`` (``class_path`` + ``init_args``, e.g. :data:`TINY_RESNET`)
    with ``descriptor``; the training cache is deleted afterwards so prediction can only use the checkpoint."""
    from cli import cli_main

    cfg = yaml.safe_load((REPO / "configs" / "fer" / "predict_video.yaml").read_text())
    if net is None:
        cfg["model"]["init_args"]["net"]["init_args"].update(TINY_NET)
    else:
        cfg["model"]["init_args"]["net"] = net
    root = tmp / "train"
    make_class_folders(root, classes=LEARNING, subjects=3, frames=1, size=32)
    cache = tmp / "train_cache"
    cfg["data"] = {"class_path": "datamodules.fer.FERDataModule", "init_args": {
        "root": str(root), "class_names": LEARNING, "crop": {"image_size": 32, "face_detection": "none"},
        "descriptor": {"kind": descriptor, "sun_sigmas": [1.0, 2.0]}, "batch_size": 4, "cache_dir": str(cache),
        "progress": "none",
    }}
    cfg["trainer"] = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "accelerator": "cpu",
                      "enable_model_summary": False}
    path = tmp / "fit_tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli_main(["fit", "--config", str(path), "--checkpoint.dirpath", str(tmp / "ckpt"), "--test_after_fit", "false"])
    shutil.rmtree(cache)
    return tmp / "ckpt" / "last.ckpt"


def jaffe_portraits(names: tuple[str, ...] = ("KA", "YM")):
    root = real_root("jaffe")
    if root is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    from features.faces import HaarFaceDetector
    from features.images import load_image_rgb
    from features.synthetic_classroom import Portrait

    haar = HaarFaceDetector(min_size_frac=0.25)
    out = []
    for n in names:
        f = min(root.glob(f"neutral/{n}.*.tiff"))
        rgb = load_image_rgb(f)
        out.append(Portrait(rgb, tuple(int(v) for v in haar.detect(rgb)[0]), n))
    return out


def classroom_video(path: Path, n_frames: int = 8, faces: bool = True, fps: int = 4) -> Path:
    """A 320x240 MP4 with two real faces drifting right (or nobody)."""
    from features.synthetic_classroom import paste_face
    from features.video import MP4Writer

    portraits = jaffe_portraits() if faces else []
    with MP4Writer(path, fps=fps) as w:
        for k in range(n_frames):
            frame = np.full((240, 320, 3), 150, np.uint8)
            for i, p in enumerate(portraits):
                paste_face(frame, p, (80 + 160 * i + 2 * k, 120), 70)
            w.write(frame)
    return path
