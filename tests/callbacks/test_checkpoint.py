from __future__ import annotations

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from callbacks.checkpoint import EpochCheckpoint


class _Worsening(LightningModule):
    """Validation loss grows every epoch, so the monitored metric never improves after epoch 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.tensor(float(self.current_epoch)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_last_checkpoint_follows_every_epoch(tmp_path) -> None:
    data = DataLoader(TensorDataset(torch.randn(8, 1)), batch_size=4)
    ckpt = EpochCheckpoint(dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True)
    trainer = Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[ckpt],
                      enable_model_summary=False)
    trainer.fit(_Worsening(), data, data)
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["epoch"] == 3 and last["global_step"] == 8
    # the best checkpoint stays the first epoch's
    assert torch.load(ckpt.best_model_path, weights_only=True)["epoch"] == 0
