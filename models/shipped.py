"""Face-expression models shipped inside the package (``models/weights/``): emotions from a face on the first call.

Usage::

    from models.shipped import load_face_model
    model = load_face_model()                    # the default, "fer2013_resnet18s"
    probs = model.predict(faces)                 # uint8 faces [N, H, W] (grey) or [N, H, W, 3] (RGB) -> [N, C]
    model.class_names[probs.argmax(1)[0]]

Each shipped file is a :class:`lightning_modules.fer.LitFER` checkpoint reduced to what prediction needs (the net's
weights, its hyper-parameters and the face preprocessing; no optimizer state), so every path that takes a trained face
checkpoint takes it as well: ``cli.py predict --ckpt_path $(python -c "from models.shipped import
shipped_checkpoint; print(shipped_checkpoint())")`` or the classroom pipeline. :func:`load_face_model` also reads any
face checkpoint of this project whose net consumes the face image only (no descriptor map).

Reading: ``torch.load(weights_only=True)``; the net's class path must be one of the project's face nets
(:data:`FACE_NETS`), whatever the file says; any stored ``pretrained`` source is ignored (the weights are the
file's). This module never imports ``lightning``.

Preprocessing is the training pipeline's evaluation path (``datamodules.fer.FERDataModule`` with
``face_detection: none``): the face zero-padded to a square and resampled to ``image_size``
(:func:`features.faces.crop_face`: area interpolation down, bicubic up), grey faces replicated to three channels,
scaled to [0, 1] and normalised by the stored ``mean``/``std``. Models trained on grey faces (preprocessing
``colour: grey``, e.g. the FER2013 model) see colour faces converted to grey first (:func:`common.tensors.grey_rgb`,
the conversion the face datamodule applies).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from common.io import atomic_write
from common.tensors import grey_rgb
from features.faces import crop_face

__all__ = ["DEFAULT_MODEL", "FACE_NETS", "SHIPPED_MODELS", "FaceModel", "export_for_prediction", "load_face_model",
           "shipped_checkpoint"]

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).with_name("weights")

#: name -> (file under ``models/weights/``, colour of the training faces)
SHIPPED_MODELS: dict[str, tuple[str, Literal["grey", "rgb"]]] = {
    "fer2013_resnet18s": ("fer2013_resnet18s.ckpt", "grey"),
}
DEFAULT_MODEL = "fer2013_resnet18s"

#: The face nets a checkpoint may name (class path -> ``module:attribute``); nothing else is imported.
FACE_NETS: dict[str, str] = {
    "models.timm_classifier.TimmClassifier": "models.timm_classifier:TimmClassifier",
    "models.swin_two_branch.TwoBranchSwin": "models.swin_two_branch:TwoBranchSwin",
    "models.poster.POSTER": "models.poster:POSTER",
}


def shipped_checkpoint(name: str = DEFAULT_MODEL) -> Path:
    """Path of a shipped model's checkpoint file.

    Raises:
        KeyError: ``name`` is not a shipped model (the message lists them).
        FileNotFoundError: the file is missing from this installation.
    """
    if name not in SHIPPED_MODELS:
        raise KeyError(f"No shipped face model {name!r}; shipped: {sorted(SHIPPED_MODELS)}")
    path = WEIGHTS_DIR / SHIPPED_MODELS[name][0]
    if not path.is_file():
        raise FileNotFoundError(f"Shipped face model {name!r}: {path} is missing from this installation")
    return path


@dataclass
class FaceModel:
    """A face-expression net with the preprocessing it was trained with.

    Args:
        net: the face net (eval mode), consuming ``image [B, 3, S, S]``.
        class_names: class names in output order.
        image_size: input side ``S``.
        mean, std: per-channel normalisation of [0, 1] images.
        colour: ``"grey"``: RGB faces are converted to grey first (the training faces were grey).
        source: where it was read from.
    """

    net: nn.Module
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    colour: Literal["grey", "rgb"] = "rgb"
    source: str = ""
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def preprocess(self, faces: np.ndarray | Sequence[np.ndarray]) -> Tensor:
        """Face crops (uint8 ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` each, any size) -> normalised
        ``[N, 3, S, S]`` float32."""
        out = np.empty((len(faces), self.image_size, self.image_size, 3), dtype=np.uint8)
        for i, face in enumerate(faces):
            face = np.asarray(face)
            if face.dtype != np.uint8:
                raise ValueError(f"FaceModel.preprocess: face {i} is {face.dtype}, expected uint8")
            if face.ndim == 3 and face.shape[2] == 1:
                face = face[:, :, 0]
            if face.ndim == 3 and face.shape[2] == 3 and self.colour == "grey":
                face = grey_rgb(face)
            if face.ndim == 2:
                face = np.repeat(face[:, :, None], 3, axis=2)
            if face.ndim != 3 or face.shape[2] != 3 or min(face.shape[:2]) < 1:
                raise ValueError(f"FaceModel.preprocess: face {i} has shape {face.shape}; expected [H, W] or [H, W, 3]")
            out[i] = crop_face(face, None, self.image_size)
        x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    @torch.inference_mode()
    def predict(self, faces: np.ndarray | Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``[N, C]`` (float32, rows sum to 1) of face crops (see :meth:`preprocess`)."""
        probs = []
        for start in range(0, len(faces), batch_size):
            x = self.preprocess(faces[start:start + batch_size]).to(self.device)
            probs.append(torch.softmax(self.net(x).float(), dim=1))
        if not probs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return torch.cat(probs).float().cpu().numpy()


def _net_class(class_path: str, source: str) -> type[nn.Module]:
    if class_path not in FACE_NETS:
        raise ValueError(f"{source}: net {class_path!r} is not one of the project's face nets {sorted(FACE_NETS)}")
    module, _, attr = FACE_NETS[class_path].partition(":")
    return getattr(importlib.import_module(module), attr)


def _read(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure is reported naming the file
        raise ValueError(f"Face model {str(path)!r} could not be read as a weights-only checkpoint: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"Face model {str(path)!r} is not a face checkpoint of this project (no state_dict / "
                         "hyper_parameters)")
    return ckpt


def load_face_model(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu",
                    colour: Literal["grey", "rgb"] | None = None) -> FaceModel:
    """A shipped model by name (:data:`SHIPPED_MODELS`) or a face checkpoint of this project by path.

    Args:
        name_or_path: shipped name, or a ``.ckpt`` written by ``cli.py fit`` with a ``configs/fer/`` config.
        device: where the net runs.
        colour: colour of the training faces; default: the shipped model's, ``"rgb"`` for other files.

    Raises:
        ValueError: unreadable file, a net outside :data:`FACE_NETS`, a net that needs descriptor maps, or weights
            that do not fit the net (each naming the file).
    """
    if str(name_or_path) in SHIPPED_MODELS:
        path = shipped_checkpoint(str(name_or_path))
        colour = colour or SHIPPED_MODELS[str(name_or_path)][1]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"Face model {str(path)!r}: no such file and not a shipped model name "
                                    f"({sorted(SHIPPED_MODELS)})")
    ckpt = _read(path)
    hp = ckpt["hyper_parameters"]
    net_cfg = hp.get("net") or {}
    if not isinstance(net_cfg, dict) or "class_path" not in net_cfg:
        raise ValueError(f"Face model {str(path)!r}: its hyper-parameters name no net class")
    cls = _net_class(net_cfg["class_path"], str(path))
    prep = (ckpt.get("fer_preprocessing") or {}).get("settings") or {}
    if prep.get("descriptor", "none") != "none":
        raise ValueError(f"Face model {str(path)!r} consumes {prep['descriptor']!r} descriptor maps: use it through "
                         "cli.py predict (configs/fer/predict_video.yaml), which computes them")
    init = {k: v for k, v in dict(net_cfg.get("init_args") or {}).items() if k not in ("pretrained", "pretrained_file")}
    num_classes = int(hp.get("num_classes") or len(prep.get("class_names") or []))
    if "img_size" in init and init["img_size"] is None and hp.get("image_size"):
        init["img_size"] = hp["image_size"]
    net = cls(num_classes=num_classes, **init)
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"Face model {str(path)!r}: weights do not fit {cls.__name__}: "
                         f"{str(e).splitlines()[0]}") from None
    if tuple(getattr(net, "inputs", ("image",))) != ("image",):
        raise ValueError(f"Face model {str(path)!r}: {cls.__name__} takes {net.inputs}; this loader feeds the face "
                         "image only (use cli.py predict for nets with descriptor maps)")
    net.eval().to(device)
    class_names = list(prep.get("class_names") or hp.get("class_names") or [f"class_{i}" for i in range(num_classes)])
    image_size = int(prep.get("image_size") or hp.get("image_size"))
    return FaceModel(net=net, class_names=class_names, image_size=image_size,
                     mean=tuple(prep.get("mean", (0.485, 0.456, 0.406))),
                     std=tuple(prep.get("std", (0.229, 0.224, 0.225))),
                     colour=colour or prep.get("colour", "rgb"), source=str(path), device=torch.device(device))


#: Checkpoint keys a prediction needs (Lightning restores the model from them; no optimizer or loop state).
PREDICTION_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "fer_preprocessing", "pytorch-lightning_version",
                   "epoch", "global_step")


def export_for_prediction(src: str | Path, dst: str | Path, colour: Literal["grey", "rgb"] | None = None) -> Path:
    """Write a prediction-only copy of face checkpoint ``src`` to ``dst`` (atomically): :data:`PREDICTION_KEYS`
    only, the net's ``pretrained`` sources cleared, checked to load with :func:`load_face_model`.

    Args:
        colour: store this preprocessing ``colour`` (``"grey"``: the model was trained on grey faces, so colour faces
            are turned grey before it); ``None`` keeps the checkpoint's.

    Returns:
        ``dst``.
    """
    ckpt = _read(Path(src))
    out = {k: ckpt[k] for k in PREDICTION_KEYS if k in ckpt}
    hp = dict(out["hyper_parameters"])
    net = dict(hp.get("net") or {})
    if "init_args" in net:
        net["init_args"] = {**net["init_args"], **{k: None for k in ("pretrained", "pretrained_file")
                                                   if k in net["init_args"]}}
    hp["net"] = net
    out["hyper_parameters"] = hp
    if colour is not None:
        prep = dict(out.get("fer_preprocessing") or {})
        prep["settings"] = {**(prep.get("settings") or {}), "colour": colour}
        out["fer_preprocessing"] = prep
    with atomic_write(dst) as f:
        torch.save(out, f)
    load_face_model(dst)  # refuses (naming the file) what would not load
    return Path(dst)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m models.shipped", description="Export a face checkpoint for "
                                     "prediction only (weights, hyper-parameters, preprocessing).")
    parser.add_argument("src", help="checkpoint written by cli.py fit")
    parser.add_argument("dst", help="output .ckpt")
    parser.add_argument("--colour", choices=("grey", "rgb"), default=None,
                        help="preprocessing colour to store (grey: trained on grey faces)")
    args = parser.parse_args()
    print(export_for_prediction(args.src, args.dst, args.colour))
