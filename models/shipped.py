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

:func:`read_face_net` is the general reader under it: ANY face checkpoint of this project (timm nets, the two-branch
Swin, POSTER, the shipped files) -> the ready net (eval mode) and its preprocessing as plain data (class names, image
size, colour, mean/std, crop/alignment and descriptor settings, fitted SUN statistics: what
``LitFER.on_save_checkpoint`` stores). :func:`load_face_expression_model` hands both to
:class:`features.vision.FaceExpressionModel` (probabilities + pooled embedding per face crop, descriptor maps
included), the face model of the feature extractor (``python -m pipelines.extract --face-model``): ``features/``
imports no model code, so the net is built here and injected.

Reading: :func:`common.checkpoint.read_checkpoint` (``torch.load(weights_only=True)``); the net's class path must be
one of the project's face nets (:data:`models.registry.FACE_NETS`), whatever the file says; any stored
``pretrained`` source (:data:`common.checkpoint.WEIGHT_FILE_ARGS`) is ignored (the weights are the file's). This
module never imports ``lightning``.

Preprocessing is the training pipeline's evaluation path (``datamodules.fer.FERDataModule`` with
``face_detection: none``): the face zero-padded to a square and resampled to ``image_size``
(:func:`features.faces.crop_face`: area interpolation down, bicubic up), grey faces replicated to three channels,
scaled to [0, 1] and normalised by the stored ``mean``/``std``. Models trained on grey faces (preprocessing
``colour: grey``, e.g. the FER2013 model) see colour faces converted to grey first (:func:`common.tensors.grey_rgb`,
the conversion the face datamodule applies).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from common.checkpoint import (
    WEIGHT_FILE_ARGS,
    CheckpointError,
    MapLocation,
    read_checkpoint,
)
from common.io import atomic_write
from common.preprocessing import FER_PREPROCESSING_KEY, face_preprocessing
from common.tensors import grey_rgb
from features.faces import crop_face
from models import registry as _registry
from models.registry import FACE_NET_ALLOW_LIST

if TYPE_CHECKING:
    from features.vision import FaceExpressionModel

__all__ = ["DEFAULT_MODEL", "FACE_NETS", "SHIPPED_MODELS", "FaceModel", "export_for_prediction",
           "load_face_expression_model", "load_face_model", "read_face_net", "shipped_checkpoint"]

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).with_name("weights")

#: name -> (file under ``models/weights/``, colour of the training faces)
SHIPPED_MODELS: dict[str, tuple[str, Literal["grey", "rgb"]]] = {
    "fer2013_resnet18s": ("fer2013_resnet18s.ckpt", "grey"),
}
DEFAULT_MODEL = "fer2013_resnet18s"

#: The face nets a checkpoint may name: :data:`models.registry.FACE_NETS` (the one list), as class path ->
#: ``module:attribute``; nothing else is imported.
FACE_NETS: dict[str, str] = {p: ":".join(p.rsplit(".", 1)) for p in _registry.FACE_NETS}

#: Default normalisation of a checkpoint that stores none (ImageNet's).
DEFAULT_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
DEFAULT_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The face datamodule's preprocessing settings (``datamodules.fer.PREPROCESSING_KEYS``, the keys of the stored
#: preprocessing state's ``settings``, :func:`common.preprocessing.face_preprocessing`): a checkpoint written before
#: that state was stored holds them in its (flat) ``datamodule_hyper_parameters`` only, which :func:`read_face_net`
#: then reads (the stored state wins).
DATAMODULE_PREPROCESSING_KEYS: tuple[str, ...] = (
    "class_names", "image_size", "face_detection", "face_margin", "background", "descriptor", "lbp_points",
    "lbp_radius", "energy_sigma", "sun_sigmas", "sun_ratio", "sun_channels", "mean", "std", "descriptor_mean",
    "descriptor_std", "colour",
)


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
    """The face net ``class_path`` names (:data:`models.registry.FACE_NETS` only; nothing else is imported)."""
    module, _, attr = FACE_NET_ALLOW_LIST.check(class_path, source, "hyper_parameters.net.class_path").rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _read(path: str | os.PathLike) -> dict[str, Any]:
    ckpt = read_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt.get("state_dict"), dict) or not isinstance(ckpt.get("hyper_parameters"), dict):
        raise CheckpointError(f"Face model {os.fspath(path)!r} is not a face checkpoint of this project (no "
                              "state_dict / hyper_parameters)")
    return ckpt


def read_face_net(path: str | os.PathLike, map_location: MapLocation = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The ready net of a face checkpoint of this project, and the preprocessing it was trained with.

    Works for every LitFER checkpoint (timm nets, the two-branch Swin, POSTER) and the shipped files: the net is
    rebuilt from the stored ``net`` config as LitFER builds it (``num_classes``, ``img_size`` = the stored
    ``image_size`` for nets that take it; weight-file arguments dropped) and loaded strictly. A checkpoint written
    before LitFER stored its preprocessing state gives the settings its ``datamodule_hyper_parameters`` hold
    (:data:`DATAMODULE_PREPROCESSING_KEYS`).

    Args:
        path: a ``.ckpt`` (local path or any fsspec URL, :func:`common.checkpoint.read_checkpoint`).
        map_location: where the weights are loaded.

    Returns:
        ``(net, preprocessing)``: the net in eval mode, and plain data: the stored preprocessing settings (the
        ``settings`` of :func:`common.preprocessing.face_preprocessing`: ``class_names``, ``image_size``,
        ``face_detection``, ``face_margin``, ``background``, ``predict_alignment``, ``colour``, ``mean``, ``std``,
        ``descriptor`` and its settings, ``descriptor_mean``/``descriptor_std``) completed with ``num_classes``,
        ``image_size`` (from the hyper-parameters when not stored), ``class_names`` (default ``"0"``, ``"1"``, ...,
        as LitFER names them), ``colour`` (default ``"rgb"``), ``mean``/``std``
        (default ImageNet's), ``descriptor`` (default ``"none"``), ``sun_params`` (the fitted SUN statistics or
        ``None``), ``inputs`` (the batch keys the net takes, ``net.inputs``) and ``version`` (of the stored state,
        ``None`` when the checkpoint stores none).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable or code-carrying (:func:`~common.checkpoint.read_checkpoint`), not a face
            checkpoint, a net outside :data:`models.registry.FACE_NETS`, or weights that do not fit the net (each
            naming the file).
    """
    src = os.fspath(path)
    ckpt = _read(path)
    hp = ckpt["hyper_parameters"]
    net_cfg = hp.get("net") or {}
    if not isinstance(net_cfg, dict) or "class_path" not in net_cfg:
        raise CheckpointError(f"Face model {src!r}: its hyper-parameters name no net class")
    cls = _net_class(net_cfg["class_path"], src)
    stored = face_preprocessing(ckpt) or {}
    dm = ckpt.get("datamodule_hyper_parameters")
    dm = dm if isinstance(dm, dict) else {}
    # flat values only: a datamodule of nested settings (``descriptor: {"kind": ...}``) stores its state instead
    older = {k: dm[k] for k in DATAMODULE_PREPROCESSING_KEYS if k in dm and not isinstance(dm[k], dict)}
    prep: dict[str, Any] = {**older, **dict(stored.get("settings") or {})}
    num_classes = int(hp.get("num_classes") or len(prep.get("class_names") or hp.get("class_names") or []))
    if num_classes < 1:
        raise CheckpointError(f"Face model {src!r} stores no num_classes / class_names")
    image_size = hp.get("image_size") or prep.get("image_size")
    init = {k: v for k, v in dict(net_cfg.get("init_args") or {}).items() if k not in WEIGHT_FILE_ARGS}
    if image_size and "img_size" in inspect.signature(cls).parameters:
        init["img_size"] = int(image_size)  # as LitFER builds it: the datamodule's image size
    try:
        net = cls(num_classes=num_classes, **init)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"Face model {src!r}: its net config does not build a {cls.__name__}: {e}") from None
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"Face model {src!r}: weights do not fit {cls.__name__}: "
                              f"{str(e).splitlines()[0]}") from None
    if isinstance(map_location, (str, torch.device)):
        net.to(map_location)
    class_names = prep.get("class_names") or hp.get("class_names") or [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise CheckpointError(f"Face model {src!r} names {len(class_names)} classes for a net of {num_classes} "
                              "outputs")
    prep.update(
        num_classes=num_classes, class_names=[str(c) for c in class_names],
        image_size=int(prep.get("image_size") or image_size or 0) or None,
        colour=prep.get("colour") or "rgb", mean=[float(v) for v in prep.get("mean") or DEFAULT_MEAN],
        std=[float(v) for v in prep.get("std") or DEFAULT_STD], descriptor=str(prep.get("descriptor") or "none"),
        sun_params=stored.get("sun_params"), inputs=tuple(getattr(net, "inputs", ("image",))),
        version=stored.get("version"),
    )
    return net.eval(), prep


def load_face_model(name_or_path: str | Path = DEFAULT_MODEL, device: str | torch.device = "cpu",
                    colour: Literal["grey", "rgb"] | None = None) -> FaceModel:
    """A shipped model by name (:data:`SHIPPED_MODELS`) or a face checkpoint of this project by path
    (:func:`read_face_net`), for nets that take the face image only.

    Args:
        name_or_path: shipped name, or a ``.ckpt`` written by ``cli.py fit`` with a ``configs/fer/`` config.
        device: where the net runs.
        colour: colour of the training faces; default: the shipped model's, else the checkpoint's (``"rgb"`` when it
            stores none).

    Raises:
        FileNotFoundError: neither a shipped name nor an existing file.
        ValueError: (a :class:`~common.checkpoint.CheckpointError`) unreadable file, a net outside
            :data:`~models.registry.FACE_NETS`, a net that needs descriptor maps, or weights that do not fit the net
            (each naming the file).
    """
    if str(name_or_path) in SHIPPED_MODELS:
        path = shipped_checkpoint(str(name_or_path))
        colour = colour or SHIPPED_MODELS[str(name_or_path)][1]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"Face model {str(path)!r}: no such file and not a shipped model name "
                                    f"({sorted(SHIPPED_MODELS)})")
    net, prep = read_face_net(path)
    if prep["descriptor"] != "none":
        raise CheckpointError(f"Face model {str(path)!r} consumes {prep['descriptor']!r} descriptor maps: use it "
                              "through cli.py predict (configs/fer/predict_video.yaml), which computes them")
    if prep["inputs"] != ("image",):
        raise CheckpointError(f"Face model {str(path)!r}: {type(net).__name__} takes {prep['inputs']}; this loader "
                              "feeds the face image only (use cli.py predict for nets with descriptor maps)")
    if not prep["image_size"]:
        raise CheckpointError(f"Face model {str(path)!r} stores no image_size")
    return FaceModel(net=net.to(device), class_names=prep["class_names"], image_size=prep["image_size"],
                     mean=tuple(prep["mean"]), std=tuple(prep["std"]), colour=colour or prep["colour"],
                     source=str(path), device=torch.device(device))


def load_face_expression_model(path: str | os.PathLike, map_location: MapLocation = "cpu") -> FaceExpressionModel:
    """The feature extractor's face model of any face checkpoint of this project: :func:`read_face_net`'s net and
    preprocessing handed to :class:`features.vision.FaceExpressionModel` (class probabilities and the pooled
    embedding per face crop, with the checkpoint's crop, normalisation and descriptor maps).

    ``features/`` imports no model code; this is where its face model is built (``python -m pipelines.extract
    --face-model``, and any caller of :func:`features.extract.extract` with ``VisionSettings(face_model=path)``).

    Args:
        path: a ``.ckpt`` written by ``cli.py fit`` with a ``configs/fer/`` config, or a shipped file.
        map_location: where the net runs.

    Raises:
        FileNotFoundError: no such file.
        ValueError: (a :class:`~common.checkpoint.CheckpointError`) unreadable or code-carrying file, not a face
            checkpoint, a net outside :data:`~models.registry.FACE_NETS`, weights that do not fit the net; or
            preprocessing the net cannot be fed with (SUN maps without statistics, ...); each naming the file.
    """
    from features.vision import FaceExpressionModel

    net, prep = read_face_net(path, map_location=map_location)
    return FaceExpressionModel(net, prep, source=os.fspath(path))


#: Checkpoint keys a prediction needs (Lightning restores the model from them; no optimizer or loop state), besides
#: the preprocessing state (:func:`common.preprocessing.face_preprocessing`, kept under the key it was found at).
PREDICTION_KEYS = ("state_dict", "hyper_parameters", "hparams_name", "pytorch-lightning_version", "epoch",
                   "global_step")


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
    state = face_preprocessing(ckpt)
    state_key = next((k for k, v in ckpt.items() if v is state), FER_PREPROCESSING_KEY) if state is not None else None
    if state_key is not None:
        out[state_key] = state
    hp = dict(out["hyper_parameters"])
    net = dict(hp.get("net") or {})
    if "init_args" in net:
        net["init_args"] = {**net["init_args"], **{k: None for k in WEIGHT_FILE_ARGS if k in net["init_args"]}}
    hp["net"] = net
    out["hyper_parameters"] = hp
    if colour is not None:
        key = state_key or FER_PREPROCESSING_KEY
        prep = dict(out.get(key) or {})
        prep["settings"] = {**(prep.get("settings") or {}), "colour": colour}
        out[key] = prep
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
