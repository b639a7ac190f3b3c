"""LitMSA: the generic multimodal-sentiment system."""

from __future__ import annotations

import functools

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from datamodules.mosei import MMSADataModule
from lightning_modules.msa import LitMSA, build_param_groups
from models.tfn import TFN
from tests.fakes import write_mmsa_pickle

TINY_TFN = functools.partial(TFN, text_hidden=8, text_out=8, audio_hidden=4, vision_hidden=4, post_fusion_dim=8)


class _AuxNet(nn.Module):
    """Predicts a learned constant and reports a weighted auxiliary loss and a log value."""

    def __init__(self, feature_dims: dict[str, int], seq_lens: dict[str, int]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))
        self.head = nn.Linear(feature_dims["audio"], 1)

    def forward(self, batch: dict) -> dict:
        pred = self.head(batch["audio"].mean(1)).squeeze(-1) + self.bias
        return {"pred": pred, "aux_losses": {"reg": 0.5 * self.bias**2 + 1.0}, "logs": {"bias": self.bias.detach()}}


@pytest.fixture()
def datamodule(tmp_path) -> MMSADataModule:
    path = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=16, n_valid=8, n_test=8)
    return MMSADataModule(str(path), batch_size=8)


def test_builds_net_from_datamodule_and_runs(datamodule: MMSADataModule) -> None:
    model = LitMSA(net=TINY_TFN)
    assert model.net is None
    trainer = Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=datamodule)
    assert isinstance(model.net, TFN)
    assert model.hparams.feature_dims == datamodule.feature_dims
    assert model.hparams.seq_lens == datamodule.seq_lens
    metrics = trainer.callback_metrics
    for key in ("train/loss", "val/loss", "val/mae", "val/acc2_non0", "val/f1_has0", "val/acc7", "val/corr"):
        assert key in metrics, key


def test_aux_losses_are_added_and_logged(datamodule: MMSADataModule) -> None:
    model = LitMSA(net=_AuxNet)
    trainer = Trainer(fast_dev_run=True, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(model, datamodule=datamodule)
    m = trainer.callback_metrics
    # total = task + aux, and aux = 0.5 * bias^2 + 1 >= 1
    assert float(m["val/loss"]) == pytest.approx(float(m["val/loss_task"]) + float(m["val/loss_reg"]), rel=1e-5)
    assert float(m["val/loss_reg"]) >= 1.0
    assert "val/bias" in m


def test_test_metrics_match_direct_computation(datamodule: MMSADataModule) -> None:
    from metrics.msa import msa_metrics

    model = LitMSA(net=TINY_TFN)
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                      enable_checkpointing=False)
    trainer.fit(model, datamodule=datamodule)
    result = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    model.eval()
    preds, labels = [], []
    with torch.no_grad():
        for batch in datamodule.test_dataloader():
            preds.append(model(batch)["pred"])
            labels.append(batch["label"])
    direct = msa_metrics(torch.cat(preds), torch.cat(labels))
    for key in ("mae", "acc2_has0", "f1_non0", "acc7", "corr", "mse"):
        assert result[f"test/{key}"] == pytest.approx(float(direct[key]), abs=1e-5), key


def test_param_groups_by_name() -> None:
    net = nn.ModuleDict({"text_encoder": nn.Linear(2, 2), "head": nn.Linear(2, 1)})
    groups = build_param_groups(net, {"text_encoder.": 0.1})
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"base", "base/no_decay", "text_encoder.", "text_encoder./no_decay"}
    assert by_name["text_encoder."]["params"] == [net["text_encoder"].weight]
    assert by_name["text_encoder./no_decay"]["params"] == [net["text_encoder"].bias]
    assert by_name["text_encoder."]["lr_multiplier"] == by_name["text_encoder./no_decay"]["lr_multiplier"] == 0.1
    # a zero multiplier freezes the group
    groups = build_param_groups(net, {"text_encoder.": 0.0})
    assert [g["name"] for g in groups] == ["base", "base/no_decay"]
    assert not net["text_encoder"].weight.requires_grad
    with pytest.raises(ValueError, match="no trainable parameter"):
        build_param_groups(net, {"nonexistent.": 2.0})


def test_weight_decays_per_prefix_reach_the_optimizer() -> None:
    """Self-MM on MOSEI decays its sub-networks differently (MMSA: audio 0, video 0, other 0.01)."""
    from lightning_modules.optim import build_optimization

    net = nn.ModuleDict({"audio_net": nn.Linear(2, 2), "vision_net": nn.Linear(2, 2), "head": nn.Linear(2, 1)})
    opt = build_optimization(net, functools.partial(torch.optim.Adam, lr=1e-3, weight_decay=0.01),
                             None, {"vision_net.": 0.1}, "val/mae", {"audio_net.": 0.0, "vision_net.": 0.0})
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["audio_net."]["weight_decay"] == 0.0 and by_name["audio_net."]["lr"] == pytest.approx(1e-3)
    assert by_name["vision_net."]["weight_decay"] == 0.0 and by_name["vision_net."]["lr"] == pytest.approx(1e-4)
    assert by_name["base"]["weight_decay"] == 0.01


def test_lr_multipliers_reach_the_optimizer(datamodule: MMSADataModule) -> None:
    model = LitMSA(net=TINY_TFN, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                   lr_multipliers={"text_lstm.": 0.5})
    datamodule.setup("fit")
    model._build(feature_dims=datamodule.feature_dims, seq_lens=datamodule.seq_lens)
    opt = model.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"base": pytest.approx(0.1), "base/no_decay": pytest.approx(0.1),
                   "text_lstm.": pytest.approx(0.05), "text_lstm./no_decay": pytest.approx(0.05)}


def test_bad_loss_name() -> None:
    with pytest.raises(ValueError, match="LitMSA: loss"):
        LitMSA(net=TINY_TFN, loss="hinge")


def test_setup_without_feature_dims_is_a_clear_error() -> None:
    model = LitMSA(net=TINY_TFN)
    trainer = Trainer(fast_dev_run=True, accelerator="cpu", logger=False)
    model.trainer = trainer
    with pytest.raises(ValueError, match="feature_dims"):
        model.setup("fit")


def test_a_datamodule_without_the_data_derived_values_is_named() -> None:
    """An MSA system given another datamodule (e.g. the face datamodule) ends with an error naming that class."""
    from types import SimpleNamespace

    from lightning_modules.msa import LitMSA
    from models.tfn import TFN

    class FaceData:  # stands in for datamodules.fer.FERDataModule: no feature_dims / seq_lens
        pass

    system = LitMSA(net=TFN)
    system._trainer = SimpleNamespace(datamodule=FaceData())
    with pytest.raises(ValueError, match=r"LitMSA: .*feature_dims, seq_lens.*FaceData exposes none of them"):
        system.setup("fit")
