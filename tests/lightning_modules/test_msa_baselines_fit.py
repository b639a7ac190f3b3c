"""Every multimodal-sentiment baseline trains through ``LitMSA`` on the tiny fake MMSA files (``fast_dev_run``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from datamodules.mosei import MMSADataModule
from lightning_modules.msa import LitMSA
from models.lmf import LMF
from models.mag_bert import MAGBERT
from models.mfm import MFM
from models.mfn import MFN
from models.misa import MISA
from models.mult import MulT
from models.raven import RAVEN
from models.self_mm import SelfMM
from tests.fakes import write_mmsa_pickle, write_tiny_bert

TINY = {
    "lmf": functools.partial(LMF, text_hidden=8, text_out=4, audio_hidden=4, vision_hidden=4, rank=2),
    "mfn": functools.partial(
        MFN,
        text_hidden=8,
        audio_hidden=4,
        vision_hidden=4,
        memory_dim=8,
        attention_hidden=8,
        proposal_hidden=8,
        retain_hidden=8,
        update_hidden=8,
        output_hidden=8,
    ),
    "mult": functools.partial(
        MulT, dim=8, num_heads=2, num_layers=1, text_kernel_size=3, audio_kernel_size=3, vision_kernel_size=3
    ),
    "misa": functools.partial(MISA, hidden_size=8),
    "self_mm": functools.partial(SelfMM, fusion_dim=8, text_dim=4, audio_dim=4, vision_dim=4),
    "mfm": functools.partial(
        MFM, text_hidden=8, audio_hidden=4, vision_hidden=4, memory_dim=8, attention_hidden=8, proposal_hidden=8,
        retain_hidden=8, update_hidden=8, zy_dim=8, zt_dim=8, za_dim=4, zv_dim=4, fy_dim=8, ft_dim=4, fa_dim=4,
        fv_dim=4,
    ),
    "raven": functools.partial(RAVEN, frame_dim=8, nonverbal_hidden=8, sentence_hidden=8),
}


@pytest.fixture(scope="module")
def tiny_bert_full_vocab(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 1-layer, 16-wide random BERT with the uncased vocabulary size (the fakes use real word-piece ids)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert_vocab"))


def _fit(tmp_path: Path, net: Callable[..., nn.Module], aligned: bool = True) -> Trainer:
    data = MMSADataModule(path=str(write_mmsa_pickle(tmp_path, aligned=aligned)), batch_size=4)
    model = LitMSA(net=net, optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
    trainer = Trainer(
        fast_dev_run=True,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    return trainer


@pytest.mark.parametrize("name", list(TINY))
def test_baseline_fast_dev_run(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    trainer = _fit(tmp_path, TINY[name])
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"])
    assert "val/mae" in metrics
    if name == "misa":
        assert {"train/loss_diff", "train/loss_sim", "train/loss_recon"} <= set(metrics)
    if name == "self_mm":
        assert {"train/loss_text", "train/ulgm_shift_audio"} <= set(metrics)
        assert trainer.lightning_module.net.ulgm_count.sum().item() == 4  # one training batch of 4 ids
    if name == "mfm":
        assert {"train/loss_recon_text", "train/loss_recon_audio", "train/loss_recon_vision",
                "train/loss_mmd"} <= set(metrics)


@pytest.mark.parametrize("name", ["mult", "self_mm", "raven"])
def test_baseline_fast_dev_run_unaligned(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    trainer = _fit(tmp_path, TINY[name], aligned=False)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_mag_bert_fast_dev_run(tmp_path: Path, tiny_bert_full_vocab: str) -> None:
    torch.manual_seed(0)
    trainer = _fit(tmp_path, functools.partial(MAGBERT, text_encoder=tiny_bert_full_vocab))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_self_mm_checkpoint_round_trip(tmp_path: Path) -> None:
    """The ULGM state (buffers sized by the number of training ids + the id dict) survives a checkpoint."""
    torch.manual_seed(0)
    trainer = _fit(tmp_path, TINY["self_mm"])
    net = trainer.lightning_module.net
    assert len(net.get_extra_state()["ids"]) == 4
    path = tmp_path / "self_mm.ckpt"
    trainer.save_checkpoint(path)
    loaded = LitMSA.load_from_checkpoint(path, weights_only=False)
    ids = net.get_extra_state()["ids"]
    assert loaded.net.get_extra_state()["ids"] == ids
    assert torch.equal(loaded.net.pseudo_labels(ids), net.pseudo_labels(ids))
    assert torch.equal(loaded.net.ulgm_count, net.ulgm_count)


# Small widths for the learning test (the MMSA/paper widths are for 768-d text and thousands of samples).
LEARN = {
    "mfm": (True, functools.partial(
        MFM, text_hidden=16, audio_hidden=8, vision_hidden=8, memory_dim=16, attention_hidden=16,
        proposal_hidden=16, retain_hidden=16, update_hidden=16, zy_dim=16, zt_dim=16, za_dim=8, zv_dim=8, fy_dim=16,
        ft_dim=8, fa_dim=4, fv_dim=8,
    )),
    "raven_unaligned": (False, functools.partial(RAVEN, frame_dim=16, nonverbal_hidden=16, sentence_hidden=32)),
    "raven_aligned": (True, functools.partial(RAVEN, frame_dim=16, nonverbal_hidden=16, sentence_hidden=32)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LEARN))
def test_new_baseline_learns_planted_signal(tmp_path: Path, name: str) -> None:
    """MFM and RAVEN learn the planted signal of ``features.synthetic_mmsa`` (labels ``y = 1.1 p_t + 0.6 p_a +
    0.6 p_v + 0.5 e``, std ~1.5).

    Threshold: test MAE <= 0.75 x the MAE of the best constant predictor fitted on the training labels (their
    median). The constant scores ~1.2 on these 160 test samples and the noise floor is ~0.4 (0.5 |e|), so 0.75 is
    ~0.3 below the constant (about 6 standard errors of a 160-sample MAE) while leaving room above the optimum.
    MFM keeps MMSA's loss weights (MMD 100, reconstruction 0.5 / 0.01 / 0.5).
    """
    aligned, net = LEARN[name]
    seed_everything(0)
    path = write_mmsa_pickle(tmp_path, n_train=320, n_valid=32, n_test=160, aligned=aligned, seed=3)
    data = MMSADataModule(path=str(path), batch_size=32, eval_batch_size=160)
    model = LitMSA(net=net, optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    trainer = Trainer(
        max_epochs=10, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    mae = float(trainer.test(model, datamodule=data, verbose=False)[0]["test/mae"])
    train_y, test_y = data.data.splits["train"].label, data.data.splits["test"].label
    constant = float((test_y - train_y.median()).abs().mean())
    assert mae <= 0.75 * constant, (name, mae, constant)
