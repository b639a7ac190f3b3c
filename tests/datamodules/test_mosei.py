"""Tests for datamodules/mosei.py: MOSEIDataModule on tiny fake MMSA/MulT files."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import RandomSampler, SequentialSampler

import datamodules.mosei as mosei_module
from datamodules.mosei import MOSEIDataModule
from features.mmsa_format import MMSADataError, SplitSizeWarning
from tests.fakes import write_mmsa_npz, write_mmsa_pickle


def test_properties_and_batches(tmp_path):
    path = write_mmsa_pickle(tmp_path, 16, 8, 8, aligned=False, dims=(16, 5, 7), seq_len=(8, 12, 10))
    dm = MOSEIDataModule(path=str(path), batch_size=4, eval_batch_size=3)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.feature_dims == {"text": 16, "audio": 5, "vision": 7}
    assert dm.seq_lens == {"text": 8, "audio": 12, "vision": 10}
    assert dm.split_sizes == {"train": 16, "valid": 8, "test": 8}
    assert dm.aligned is False and dm.schema == "mmsa"
    batch = next(iter(dm.train_dataloader()))
    assert batch["text"].shape == (4, 8, 16) and batch["text"].dtype == torch.float32
    assert batch["text_bert"].shape == (4, 3, 8) and batch["text_bert"].dtype == torch.int64
    assert batch["audio"].shape == (4, 12, 5) and batch["vision"].shape == (4, 10, 7)
    assert batch["audio_mask"].shape == (4, 12) and batch["audio_mask"].dtype == torch.bool
    assert batch["vision_mask"].shape == (4, 10) and batch["text_mask"].shape == (4, 8)
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.float32
    assert isinstance(batch["id"], list) and all(isinstance(i, str) for i in batch["id"])
    val = next(iter(dm.val_dataloader()))
    assert val["label"].shape == (3,)


def test_only_train_shuffles(tmp_path):
    dm = MOSEIDataModule(path=str(write_mmsa_pickle(tmp_path)), batch_size=4)
    dm.setup("fit")
    assert isinstance(dm.train_dataloader().sampler, RandomSampler)
    for loader in (dm.val_dataloader(), dm.test_dataloader(), dm.predict_dataloader()):
        assert isinstance(loader.sampler, SequentialSampler)
    # eval order is the file order, whole split covered once
    ids = [i for b in dm.test_dataloader() for i in b["id"]]
    assert ids == dm.data.splits["test"].id.tolist()
    pred_ids = [i for b in dm.predict_dataloader() for i in b["id"]]
    assert pred_ids == ids


def test_setup_caches_the_loaded_file(tmp_path, monkeypatch):
    calls = []
    real = mosei_module.load_mmsa

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(mosei_module, "load_mmsa", counting)
    dm = MOSEIDataModule(path=str(write_mmsa_pickle(tmp_path)))
    dm.setup("fit")
    dm.setup("test")
    dm.setup("predict")
    assert len(calls) == 1


def test_prepare_data_missing_file(tmp_path):
    dm = MOSEIDataModule(path=str(tmp_path / "data" / "mosei" / "aligned_50.pkl"))
    with pytest.raises(MMSADataError, match="not found.*github.com/thuiar/MMSA"):
        dm.prepare_data()


def test_properties_need_setup(tmp_path):
    dm = MOSEIDataModule(path=str(tmp_path / "x.pkl"))
    with pytest.raises(RuntimeError, match="MOSEIDataModule: call setup"):
        _ = dm.feature_dims


@pytest.mark.parametrize("kwargs", [{"dataset_name": "iemocap"}, {"batch_size": 0}, {"num_workers": -1}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="MOSEIDataModule"):
        MOSEIDataModule(path="x.pkl", **kwargs)


def test_hparams_saved(tmp_path):
    dm = MOSEIDataModule(path="data/mosi/aligned_50.pkl", dataset_name="mosi", batch_size=8)
    assert dm.hparams.path == "data/mosi/aligned_50.pkl" and dm.hparams.dataset_name == "mosi"
    assert dm.hparams.batch_size == 8 and dm.hparams.eval_batch_size is None


def test_npz_path_and_split_warning(tmp_path):
    dm = MOSEIDataModule(path=str(write_mmsa_npz(tmp_path)), dataset_name="mosei")
    with pytest.warns(SplitSizeWarning):
        dm.setup("fit")
    assert dm.feature_dims == {"text": 16, "audio": 5, "vision": 7}


def test_mult_file(tmp_path):
    dm = MOSEIDataModule(path=str(write_mmsa_pickle(tmp_path, fmt="mult", dims=(12, 5, 7))), batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert "text_bert" not in batch and batch["text"].shape == (4, 8, 12) and batch["text_mask"].all()


class _MeanRegressor(pl.LightningModule):
    """Smallest system reading the batch dict: masked mean per modality, linear head, L1 loss."""

    def __init__(self, feature_dims: dict[str, int]) -> None:
        super().__init__()
        self.head = nn.Linear(sum(feature_dims.values()), 1)

    def forward(self, batch):
        pooled = [
            (batch[m] * batch[f"{m}_mask"][..., None]).sum(1) / batch[f"{m}_mask"].sum(1, keepdim=True).clamp(min=1)
            for m in ("text", "audio", "vision")
        ]
        return self.head(torch.cat(pooled, -1)).squeeze(-1)

    def training_step(self, batch, batch_idx):
        loss = (self(batch) - batch["label"]).abs().mean()
        self.log("train/loss", loss, batch_size=len(batch["id"]))
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/mae", (self(batch) - batch["label"]).abs().mean(), batch_size=len(batch["id"]))

    def predict_step(self, batch, batch_idx):
        return {"id": batch["id"], "pred": self(batch)}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_fit_and_predict(tmp_path):
    dm = MOSEIDataModule(path=str(write_mmsa_pickle(tmp_path, aligned=False)), batch_size=4, eval_batch_size=5)
    dm.setup("fit")
    model = _MeanRegressor(dm.feature_dims)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(model, datamodule=dm)
    preds = trainer.predict(model, datamodule=dm)
    assert [i for p in preds for i in p["id"]] == dm.data.splits["test"].id.tolist()
    assert torch.cat([p["pred"] for p in preds]).shape == (8,)
