"""HGCL through the generic ``LitMSA`` system on MMSA fake files (fast) and a planted-signal learning test."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from datamodules.mosei import MMSADataModule
from lightning_modules.msa import LitMSA
from models.hgcl import HGCL
from tests.fakes import write_mmsa_pickle

log = logging.getLogger(__name__)
TINY = functools.partial(HGCL, dim=16, heads=2, codebook_size=8, proj_dim=8, head_hidden=16)


def _trainer(**kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


@pytest.mark.parametrize("aligned", [True, False])
def test_hgcl_fast_dev_run_through_litmsa(tmp_path: Path, aligned: bool) -> None:
    data = MMSADataModule(path=str(write_mmsa_pickle(tmp_path, aligned=aligned)), batch_size=4)
    model = LitMSA(
        net=functools.partial(TINY, max_nodes_per_modality=6),
        optimizer=functools.partial(torch.optim.Adam, lr=1e-3),
    )
    trainer = _trainer(fast_dev_run=True)
    trainer.fit(model, datamodule=data)
    logged = trainer.callback_metrics
    for key in ("train/loss_local", "train/loss_nce", "train/loss_dvae", "train/codebook_ppl_vision"):
        assert key in logged and torch.isfinite(logged[key])
    assert isinstance(model.net, HGCL) and max(model.net.num_nodes.values()) <= 6


def _acc2_non0(trainer: Trainer, model: LitMSA, data: MMSADataModule) -> float:
    return float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc2_non0"])


@pytest.mark.slow
def test_hgcl_learns_planted_signal(tmp_path: Path) -> None:
    """HGCL learns the planted linear signal of ``features.synthetic_mmsa``.

    Labels are ``y = 1.1 p_t + 0.6 p_a + 0.6 p_v + 0.5 e`` (rounded, clipped), with ``p_m ~ N(0, 1)`` the
    projection of each modality's mean step on a fixed direction. The signal variance is 1.93 against a noise
    variance of 0.25, so the Bayes sign accuracy is ``1/2 + arcsin(sqrt(1.93 / 2.18)) / pi ~ 0.89`` and chance
    is ~0.5. On 200 test samples the standard error of an accuracy near 0.5 is ~0.035, so requiring
    ``acc2_non0 >= 0.75`` (7 standard errors above chance, 0.14 below Bayes) and at least 0.15 above the same
    model before training checks real learning without asking for the optimum.
    """
    seed_everything(0)
    path = write_mmsa_pickle(
        tmp_path, n_train=480, n_valid=64, n_test=200, dims=(16, 5, 7), seq_len=8, seed=3
    )
    data = MMSADataModule(path=str(path), batch_size=32, eval_batch_size=200)
    net = functools.partial(HGCL, dim=32, heads=4, codebook_size=16, proj_dim=16, head_hidden=32, dropout=0.1)
    model = LitMSA(net=net, optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    trainer = _trainer(max_epochs=15, num_sanity_val_steps=0, limit_val_batches=0)
    before = _acc2_non0(trainer, model, data)  # builds the untrained net in setup()
    trainer = _trainer(max_epochs=15, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    after = _acc2_non0(trainer, model, data)
    log.info("HGCL planted signal: test acc2_non0 before %.3f, after %.3f", before, after)
    assert after >= 0.75, (before, after)
    assert after >= before + 0.15, (before, after)
