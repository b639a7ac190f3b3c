"""Checkpointing whose ``last.ckpt`` follows every epoch.

Lightning 2.6's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` only in the steps where it also wrote a
top-k checkpoint, so with a monitored metric that stops improving, ``last.ckpt`` lags behind and a run killed later
resumes from an old epoch. :class:`EpochCheckpoint` refreshes ``last.ckpt`` at the end of every epoch as well.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["EpochCheckpoint"]


class EpochCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (same arguments) that also refreshes ``last.ckpt`` after every epoch when
    ``save_last`` is set."""

    def _refresh_last(self, trainer: Trainer) -> None:
        # Skipped when this step was already saved (the parent wrote a top-k checkpoint and last.ckpt).
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)
