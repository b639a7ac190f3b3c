"""Any timm image classifier as a single-input baseline for face-expression recognition.

The baselines of Table 1 of JI L X, REN H L, WANG W, et al., *Multimodal and multiscale facial expression recognition
analysis for learning emotions*, J. Zhengzhou Univ. (Eng. Sci.) 2026, 47(3): 126-133 (ResNet-50, VGG16,
EfficientNet, ViT, ConvNeXt, MaxViT) are all timm entry points; this wrapper builds one by name, with random
initialisation, timm's hub weights, a local weight file or a checkpoint of this project (``pretrained``,
:mod:`models.pretrained`).

Shapes:
    image: ``[B, in_chans, H, W]``
    output: ``[B, num_classes]`` logits
"""

from __future__ import annotations

import logging
from typing import Any

import timm
from torch import Tensor, nn

from models.pretrained import create_timm_model, load_net_checkpoint, resolve_pretrained

log = logging.getLogger(__name__)


class TimmClassifier(nn.Module):
    """A timm classifier consuming the ``image`` batch key only.

    Args:
        num_classes: Number of classes of the new head.
        model_name: timm entry point, e.g. ``"resnet50"``, ``"vgg16"``, ``"efficientnet_b0"``,
            ``"vit_small_patch16_224"``, ``"convnext_tiny"``, ``"maxvit_tiny_tf_224"``.
        pretrained: Initial weights (:mod:`models.pretrained`): ``None`` (random), ``"hub"`` (timm's weights for
            ``model_name``; offline and not cached it fails at once), a weight file in timm's layout
            (``.safetensors``/``.pth``/``.bin``, read weights-only), or a ``.ckpt`` of this project (a LitFER
            checkpoint of this net). The classifier is re-initialised when ``num_classes`` differs.
        pretrained_file: Older name of ``pretrained`` for a local weight file (kept for existing configs; give one
            of the two).
        in_chans: Input channels (timm adapts the first convolution of a 3-channel checkpoint).
        img_size: Input side (the CLI links it from ``data.image_size``); passed to timm only for architectures built
            for one input side (timm's ``fixed_input_size``: ViT, Swin, MaxViT); convolutional nets (ResNet, VGG,
            EfficientNet, ConvNeXt) take any side and ignore it. ``None`` leaves timm's default.
        drop_rate: Classifier dropout.
        drop_path_rate: Stochastic depth rate; ``None`` keeps the architecture's default (some, like VGG, have none).
        model_kwargs: Further architecture arguments passed to ``timm.create_model`` verbatim (e.g. a small
            ``embed_dim``/``depth`` for CPU-sized ViTs). Kept as a mapping because they differ per architecture.

    Shapes:
        image: ``[B, in_chans, H, W]``
        output: ``[B, num_classes]``
    """

    def __init__(
        self,
        num_classes: int,
        model_name: str = "resnet50",
        pretrained_file: str | None = None,
        pretrained: str | None = None,
        in_chans: int = 3,
        img_size: int | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"TimmClassifier: num_classes must be >= 1, got {num_classes}")
        if model_name not in timm.list_models():
            raise ValueError(f"TimmClassifier: unknown timm model {model_name!r}")
        if pretrained is not None and pretrained_file is not None:
            raise ValueError(f"TimmClassifier: give pretrained ({pretrained!r}) or its older name pretrained_file "
                             f"({pretrained_file!r}), not both")
        source = resolve_pretrained(pretrained if pretrained is not None else pretrained_file, "TimmClassifier")
        self.num_classes = num_classes
        self.model_name = model_name
        self.in_chans = in_chans
        self.inputs: tuple[str, ...] = ("image",)
        kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
        if img_size is not None and getattr(timm.get_pretrained_cfg(model_name), "fixed_input_size", False):
            # only architectures built for one input side take it (ViT, Swin, MaxViT: timm's `fixed_input_size`);
            # convolutional nets accept any side and timm would reject the argument
            kwargs["img_size"] = img_size
        if drop_path_rate is not None:
            kwargs["drop_path_rate"] = drop_path_rate
        kwargs.update(model_kwargs or {})
        self.model = create_timm_model(model_name, source, "TimmClassifier", **kwargs)
        self.head_name: str = self.model.default_cfg.get("classifier", "head")
        if source is not None and source.kind == "checkpoint":
            heads = self.head_name if isinstance(self.head_name, list | tuple) else [self.head_name]
            load_net_checkpoint(self, source.path, [f"model.{h}" for h in heads], "TimmClassifier")

    def forward(self, image: Tensor) -> Tensor:
        return self.model(image)

    def extra_repr(self) -> str:
        return f"model_name={self.model_name!r}, num_classes={self.num_classes}, in_chans={self.in_chans}"
