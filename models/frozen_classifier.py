"""Frozen timm classifiers: one module for the frozen-recognition-classifier idea used in two places.

- :class:`FrozenImageEncoder` BUILDS the classifier (timm entry point, optionally a LOCAL checkpoint of a model
  trained in the project) for eq. (2) of the latent-diffusion augmenter (Ji et al. 2026, §2.1.2) and for the
  generation-quality metrics.
- :class:`ClassifierView` WRAPS an existing classifier (a timm model, a :class:`FrozenImageEncoder` or a
  ``TimmClassifier``) for images in ``[0, 1]``: resize, normalise, then features or logits
  (:mod:`metrics.generation`).

Both read the classifier the same way (:func:`timm_forward`, :func:`timm_num_features`).

Normalisation is set once: a classifier loaded from a face-expression checkpoint knows the ``mean``/``std`` it was
trained with (:attr:`FrozenImageEncoder.image_mean`, from the checkpoint's preprocessing state), and
:class:`ClassifierView` takes them from there (:func:`classifier_normalisation`); a different value given beside
them is an error, not a silent second setting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.checkpoint import read_checkpoint
from common.choices import check_choices
from common.preprocessing import face_preprocessing

__all__ = ["ClassifierView", "FrozenImageEncoder", "classifier_normalisation", "timm_forward", "timm_num_features"]

#: Normalisation of a classifier that does not say what it was trained with (the project's FER default for faces).
DEFAULT_NORMALISATION: tuple[tuple[float, ...], tuple[float, ...]] = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

log = logging.getLogger(__name__)


def timm_forward(model: nn.Module, images: Tensor, output: Literal["features", "logits"]) -> Tensor:
    """Pre-logits features or logits of a timm classifier.

    Shapes:
        images: ``[B, C, H, W]`` -> ``[B, num_features]`` or ``[B, num_classes]``.
    """
    feats = model.forward_head(model.forward_features(images), pre_logits=True)
    return feats if output == "features" else model.get_classifier()(feats)


def timm_num_features(model: nn.Module, output: Literal["features", "logits"]) -> int:
    """Width of :func:`timm_forward`'s output."""
    if output == "logits":
        return int(model.num_classes)
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _strip_to_model_keys(state: dict[str, Tensor], model_keys: set[str]) -> dict[str, Tensor]:
    """Find the prefix (e.g. ``"net.model."`` of a Lightning checkpoint) under which ``model_keys`` were saved."""
    counts: dict[str, int] = {}
    for k in state:
        for mk in model_keys:
            if k.endswith(mk) and (len(k) == len(mk) or k[-len(mk) - 1] == "."):
                counts[k[: len(k) - len(mk)]] = counts.get(k[: len(k) - len(mk)], 0) + 1
    if not counts:
        return {}
    prefix = max(counts, key=counts.get)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and k[len(prefix):] in model_keys}


class FrozenImageEncoder(nn.Module):
    """Frozen high-level feature extractor for eq. (2) and for the generation-quality metrics.

    A timm model built locally (``pretrained=False``), optionally loaded from a LOCAL checkpoint of a recognition
    model trained in the project (a Lightning ``.ckpt``, whose ``state_dict`` prefix such as ``net.model.`` is found
    automatically, or a plain state-dict file). It returns timm's pre-logits features, or the logits
    (``output="logits"``). Parameters never require grad and the module stays in eval mode, but gradients flow to
    its INPUT (needed by eq. 2).

    Args:
        model_name: timm entry point.
        num_classes: classes of the checkpoint's head.
        checkpoint_path: local checkpoint, or ``None`` (random features; only for tests).
        in_chans: input channels.
        output: ``"features"`` (pre-logits) or ``"logits"``.
        model_kwargs: extra ``timm.create_model`` arguments (must match the checkpoint's architecture).

    Attributes:
        image_mean, image_std: the RGB normalisation the checkpoint's model was trained with (read from a LitFER
            checkpoint's preprocessing state), or ``None`` when the checkpoint does not say.

    Shapes:
        images: ``[B, in_chans, H, W]`` normalised like the training batches -> ``[B, F]`` (or ``[B, num_classes]``).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 7,
        checkpoint_path: str | None = None,
        in_chans: int = 3,
        output: Literal["features", "logits"] = "features",
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        import timm

        check_choices(FrozenImageEncoder, locals())
        self.model_name = model_name
        self.output = output
        self.init_args = {"model_name": model_name, "num_classes": num_classes, "checkpoint_path": checkpoint_path,
                          "in_chans": in_chans, "output": output, "model_kwargs": dict(model_kwargs or {})}
        self.model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                       **(model_kwargs or {}))
        self.image_mean: tuple[float, ...] | None = None
        self.image_std: tuple[float, ...] | None = None
        if checkpoint_path is not None:
            path = Path(checkpoint_path)
            if not path.is_file():
                raise FileNotFoundError(f"FrozenImageEncoder: checkpoint not found: {path}")
            raw = read_checkpoint(path, map_location="cpu")  # weights-only; errors name the file
            state = raw.get("state_dict", raw)
            own = self.model.state_dict()
            matched = _strip_to_model_keys(state, set(own))
            if len(matched) < 0.9 * len(own):
                raise ValueError(
                    f"FrozenImageEncoder: checkpoint {path} matches only {len(matched)}/{len(own)} tensors of "
                    f"timm {model_name!r}; check model_name/model_kwargs/num_classes"
                )
            self.model.load_state_dict(matched, strict=False)
            log.info("FrozenImageEncoder: loaded %d tensors from %s", len(matched), path)
            pre = face_preprocessing(raw)
            settings = pre.get("settings", {}) if isinstance(pre, dict) else {}
            if settings.get("mean") is not None and settings.get("std") is not None:
                self.image_mean = tuple(float(v) for v in settings["mean"])
                self.image_std = tuple(float(v) for v in settings["std"])
        self.requires_grad_(False)
        self.eval()
        self.num_features = timm_num_features(self.model, output)

    def train(self, mode: bool = True) -> FrozenImageEncoder:
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        return timm_forward(self.model, images, self.output)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, output={self.output!r}, num_features={self.num_features}"


def classifier_normalisation(
    classifier: nn.Module,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    owner: str = "classifier_normalisation",
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` a classifier's input is normalised with: the classifier's own (``image_mean``/
    ``image_std``, e.g. a :class:`FrozenImageEncoder` read from a LitFER checkpoint) when it knows them, else the
    given ones, else :data:`DEFAULT_NORMALISATION`.

    Raises:
        ValueError: ``mean``/``std`` given and different from the classifier's own (naming ``owner``).
    """
    own_mean, own_std = getattr(classifier, "image_mean", None), getattr(classifier, "image_std", None)
    if own_mean is None or own_std is None:
        return (tuple(mean) if mean is not None else DEFAULT_NORMALISATION[0],
                tuple(std) if std is not None else DEFAULT_NORMALISATION[1])
    own_mean, own_std = tuple(float(v) for v in own_mean), tuple(float(v) for v in own_std)
    for name, given, own in (("mean", mean, own_mean), ("std", std, own_std)):
        if given is not None and not torch.allclose(torch.tensor(given, dtype=torch.float64),
                                                    torch.tensor(own, dtype=torch.float64)):
            raise ValueError(f"{owner}: {name}={tuple(given)} differs from the {name} {own} the classifier was trained "
                             "with (from its checkpoint)")
    return own_mean, own_std


class ClassifierView(nn.Module):
    """Features or logits of a timm classifier for images in ``[0, 1]`` (normalised inside).

    Args:
        classifier: a timm model, or a module holding one as ``.model`` (``TimmClassifier``,
            :class:`FrozenImageEncoder`).
        output: ``"features"`` (pre-logits) or ``"logits"``.
        mean, std: normalisation the classifier was trained with; ``None``: the classifier's own
            (:func:`classifier_normalisation`).
        image_size: resize input to this side first (``None`` = as is).

    Shapes:
        images: ``[B, 3, H, W]`` in ``[0, 1]`` -> ``[B, num_features]``.
    """

    def __init__(
        self,
        classifier: nn.Module,
        output: Literal["features", "logits"] = "features",
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        check_choices(ClassifierView, locals())
        mean, std = classifier_normalisation(classifier, mean, std, owner="ClassifierView")
        model = getattr(classifier, "model", classifier)
        if not hasattr(model, "forward_features"):
            raise ValueError("ClassifierView: classifier must be a timm model (or hold one as .model)")
        self.model = model.eval().requires_grad_(False)
        self.output = output
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.num_features = timm_num_features(model, output)

    def train(self, mode: bool = True) -> ClassifierView:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        x = images.float()
        if self.image_size is not None and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return timm_forward(self.model, (x - self.mean) / self.std, self.output)
