"""Mixup / CutMix on training batches through timm's ``Mixup``, with image and descriptor mixed together.

timm's recipes for transformers trained from scratch (DeiT, Swin) mix pairs of training images (mixup: a convex
blend; cutmix: a pasted box) and train on the blended label distribution. :class:`MixupCutmix` applies
``timm.data.Mixup`` to every training batch in ``on_train_batch_start``: the RGB image and the descriptor map are
concatenated along the channels so that both get the same blend weight and the same box, and the soft targets go
to ``batch["label_soft"]`` ``[B, K]``, which :class:`lightning_modules.fer.LitFER` uses as the cross-entropy target
(its ``label_smoothing`` applies on top, so timm's own smoothing is 0 here). ``batch["label"]`` keeps the hard
labels, so training metrics count the un-mixed class. Validation and test batches are never touched.

timm needs an even batch size; an odd (last) batch is left un-mixed and counted in :attr:`skipped_batches`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from timm.data import Mixup

log = logging.getLogger(__name__)


class MixupCutmix(Callback):
    """Mix training batches with timm's ``Mixup`` (see module docstring).

    Args:
        mixup_alpha: Beta(alpha, alpha) of mixup (0 disables mixup).
        cutmix_alpha: Beta(alpha, alpha) of cutmix (0 disables cutmix).
        prob: probability of mixing a batch (or element, with ``mode="elem"``).
        switch_prob: probability of cutmix instead of mixup when both are enabled.
        mode: timm's ``"batch"`` (one draw per batch), ``"pair"`` or ``"elem"``.

    Shapes:
        batch["image"]: ``[B, 3, H, W]``; batch["descriptor"]: ``[B, 1, H, W]`` (optional);
        batch["label_soft"] (written): ``[B, K]`` float
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: Literal["batch", "pair", "elem"] = "batch",
    ) -> None:
        super().__init__()
        if mixup_alpha < 0 or cutmix_alpha < 0 or mixup_alpha == cutmix_alpha == 0:
            raise ValueError(f"MixupCutmix: need alphas >= 0, not both 0, got {mixup_alpha}, {cutmix_alpha}")
        if not 0 <= prob <= 1 or not 0 <= switch_prob <= 1:
            raise ValueError(f"MixupCutmix: prob and switch_prob must be in [0, 1], got {prob}, {switch_prob}")
        if mode not in ("batch", "pair", "elem"):
            raise ValueError(f"MixupCutmix: mode must be 'batch', 'pair' or 'elem', got {mode!r}")
        self.kwargs = {"mixup_alpha": mixup_alpha, "cutmix_alpha": cutmix_alpha, "prob": prob,
                       "switch_prob": switch_prob, "mode": mode}
        self.mixup: Mixup | None = None
        self.skipped_batches = 0

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        num_classes = getattr(pl_module.hparams, "num_classes", None) or getattr(
            getattr(trainer, "datamodule", None), "num_classes", None
        )
        if num_classes is None:
            raise ValueError("MixupCutmix: the number of classes is unknown (no hparams.num_classes, no datamodule)")
        self.mixup = Mixup(label_smoothing=0.0, num_classes=int(num_classes), **self.kwargs)

    def mix(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Mix ``batch`` in place (image and descriptor together) and add ``label_soft``; returns it."""
        if self.mixup is None:
            raise RuntimeError("MixupCutmix: setup() has not run")
        image, label = batch["image"], batch["label"]
        if image.shape[0] % 2:
            self.skipped_batches += 1
            return batch
        desc = batch.get("descriptor")
        x = torch.cat([image, desc], dim=1) if desc is not None else image.clone()
        x, soft = self.mixup(x, label)
        batch["image"] = x[:, : image.shape[1]]
        if desc is not None:
            batch["descriptor"] = x[:, image.shape[1]:]
        batch["label_soft"] = soft
        return batch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self.mix(batch)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.skipped_batches:
            log.info("MixupCutmix: %d odd-sized training batch(es) left un-mixed", self.skipped_batches)
