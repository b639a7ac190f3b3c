"""MixupCutmix: image and descriptor get the same blend, soft targets reach LitFER's loss, eval is untouched."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback

from callbacks.mixup import MixupCutmix
from lightning_modules.fer import LitFER
from models.swin_two_branch import TwoBranchSwin
from tests.lightning_modules.test_fer import TINY_SWIN, TinyFaceDataModule, _trainer


class _Setup:
    hparams = type("H", (), {"num_classes": 3})()


def _batch(b: int = 4) -> dict:
    torch.manual_seed(0)
    return {"image": torch.randn(b, 3, 8, 8), "descriptor": torch.randn(b, 1, 8, 8),
            "label": torch.arange(b) % 3}


def test_mixup_blends_image_and_descriptor_with_one_lambda() -> None:
    cb = MixupCutmix(mixup_alpha=1.0, cutmix_alpha=0.0)
    cb.setup(None, _Setup(), "fit")
    batch = _batch()
    image, desc = batch["image"].clone(), batch["descriptor"].clone()
    cb.mix(batch)
    soft = batch["label_soft"]
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    lam = float(soft[0, 0])  # sample 0 (class 0) is mixed with sample 3 (class 0): its row is lam + (1 - lam)
    lam = float(soft[1, 1])  # sample 1 (class 1) with sample 2 (class 2): lam on class 1
    torch.testing.assert_close(batch["image"], lam * image + (1 - lam) * image.flip(0))
    torch.testing.assert_close(batch["descriptor"], lam * desc + (1 - lam) * desc.flip(0))


def test_cutmix_pastes_the_same_box_into_image_and_descriptor() -> None:
    cb = MixupCutmix(mixup_alpha=0.0, cutmix_alpha=1.0)
    cb.setup(None, _Setup(), "fit")
    batch = _batch()
    image, desc = batch["image"].clone(), batch["descriptor"].clone()
    cb.mix(batch)
    pasted_img = (batch["image"] != image).any(1)  # [B, H, W] pixels taken from the partner
    pasted_desc = (batch["descriptor"] != desc).any(1)
    assert torch.equal(pasted_img, pasted_desc)


def test_odd_batches_are_left_alone_and_bad_options_raise() -> None:
    cb = MixupCutmix()
    cb.setup(None, _Setup(), "fit")
    batch = _batch(3)
    cb.mix(batch)
    assert "label_soft" not in batch and cb.skipped_batches == 1
    with pytest.raises(ValueError, match="MixupCutmix"):
        MixupCutmix(mixup_alpha=0.0, cutmix_alpha=0.0)


class _LossSpy(Callback):
    def __init__(self) -> None:
        self.soft_seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.soft_seen += int("label_soft" in batch)


def test_litfer_trains_on_the_soft_targets(tmp_path) -> None:
    spy = _LossSpy()
    lit = LitFER(partial(TwoBranchSwin, **TINY_SWIN), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = _trainer(tmp_path, max_epochs=1, limit_val_batches=1, enable_checkpointing=False,
                       callbacks=[MixupCutmix(), spy])
    trainer.fit(lit, datamodule=TinyFaceDataModule())
    assert spy.soft_seen == 3  # 12 faces / batch 4, every batch mixed
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
