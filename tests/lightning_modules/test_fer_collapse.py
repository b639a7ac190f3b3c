"""LitFER's collapse check: a warning naming the per-class prediction counts when an epoch predicts one class."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from torch import Tensor, nn

from lightning_modules.fer import LitFER
from metrics.fer import PredictionCounts
from tests.lightning_modules.test_fer import CLASSES, TinyFaceDataModule, _trainer


class ConstantNet(nn.Module):
    """Same logits for every face (the input is multiplied by zero): a collapsed model."""

    inputs = ("image",)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([3.0] + [0.0] * (num_classes - 1)))

    def forward(self, image: Tensor) -> Tensor:
        return self.bias.expand(image.shape[0], -1) + 0.0 * image.mean()


class LinearNet(nn.Module):
    """A linear classifier over the pixels: TinyFaces' brightness-coded classes are linearly separable."""

    inputs = ("image",)

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, num_classes)

    def forward(self, image: Tensor) -> Tensor:
        return self.fc(image.flatten(1))


def _fit(tmp_path, net, epochs: int) -> tuple[LitFER, list[str]]:
    torch.manual_seed(0)
    lit = LitFER(net, optimizer=partial(torch.optim.SGD, lr=0.05))
    trainer = _trainer(tmp_path, max_epochs=epochs, num_sanity_val_steps=0, enable_checkpointing=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(lit, datamodule=TinyFaceDataModule())
    return lit, [str(w.message) for w in caught if "collapse" in str(w.message)]


def test_collapse_warning_fires_on_a_constant_model(tmp_path) -> None:
    lit, messages = _fit(tmp_path, ConstantNet, epochs=2)
    train = [m for m in messages if "every train prediction" in m]
    val = [m for m in messages if "every val prediction" in m]
    assert len(train) == 2 and len(val) == 2  # once per epoch and stage
    # the per-class counts: 12 training faces all predicted as the first class
    assert f"{CLASSES[0]}=12, {CLASSES[1]}=0, {CLASSES[2]}=0" in train[0]
    assert f"class {CLASSES[0]!r}" in train[0] and "span 3 classes" in train[0]
    assert float(lit.trainer.callback_metrics["train/top_pred_share"]) == 1.0


def test_collapse_warning_stays_quiet_on_a_model_that_learns(tmp_path) -> None:
    lit, messages = _fit(tmp_path, LinearNet, epochs=4)
    assert messages == []
    assert float(lit.trainer.callback_metrics["val/acc"]) > 0.5  # it did learn
    assert float(lit.trainer.callback_metrics["train/top_pred_share"]) < 1.0


def test_one_class_targets_are_not_a_collapse() -> None:
    counter = PredictionCounts(3)
    counter.update(torch.tensor([1, 1, 1]), torch.tensor([1, 1, 1]))
    predicted, targets = counter.compute()
    assert predicted.tolist() == [0, 3, 0] and targets.tolist() == [0, 3, 0]
    with pytest.raises(ValueError, match="PredictionCounts"):
        PredictionCounts(0)
