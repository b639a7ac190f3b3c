"""The multimodal sentiment system: one LightningModule for every MOSI/MOSEI model (TFN, HGCL, baselines).

The net is a plain ``nn.Module`` from ``models/`` (contract in ``docs/architecture.md``): it takes the batch dict
and returns ``{"pred": [B], "aux_losses": {...}, "logs": {...}}``. This system owns the task loss, the
optimisation and the metrics (:class:`~metrics.msa.MSAMetrics`, one object per stage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightning_modules.optim import build_optimization, build_param_groups
from metrics.msa import MSAMetrics

__all__ = ["LitMSA", "build_param_groups"]

log = logging.getLogger(__name__)

NetFactory = Callable[[dict[str, int], dict[str, int]], nn.Module]

_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
    "smooth_l1": F.smooth_l1_loss,
}


class LitMSA(LightningModule):
    """Multimodal sentiment regression (CMU-MOSI / CMU-MOSEI) with MMSA-convention metrics.

    Args:
        net: a factory ``net(feature_dims, seq_lens) -> nn.Module`` (in YAML: ``class_path`` + ``init_args``
            of a model class whose first two parameters are ``feature_dims`` and ``seq_lens``).
        optimizer: optimizer factory, called with the parameter groups.
        scheduler: optional LR scheduler factory.
        scheduler_monitor: metric watched by ``ReduceLROnPlateau``-type schedulers.
        loss: task loss, ``"l1"`` (MMSA's default), ``"mse"`` or ``"smooth_l1"``.
        lr_multipliers: ``{parameter-name prefix: multiplier}`` of the base learning rate, e.g.
            ``{"text_encoder.": 0.1}``; 0 freezes.
        feature_dims: data-derived; filled from the datamodule in :meth:`setup` when ``None`` and stored in the
            hyper-parameters so :meth:`load_from_checkpoint` rebuilds the same net.
        seq_lens: as ``feature_dims``.

    Logged keys: ``{stage}/loss``, ``{stage}/loss_task``, ``{stage}/loss_<aux>`` and, per epoch, every metric of
    :class:`MSAMetrics` as ``{stage}/<name>`` (``train``, ``val``, ``test``).
    """

    def __init__(
        self,
        net: NetFactory,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/mae",
        loss: str = "l1",
        lr_multipliers: dict[str, float] | None = None,
        feature_dims: dict[str, int] | None = None,
        seq_lens: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if loss not in _LOSSES:
            raise ValueError(f"LitMSA: loss must be one of {sorted(_LOSSES)}, got {loss!r}")
        self.save_hyperparameters()
        self.net_factory = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_fn = _LOSSES[loss]
        self.net: nn.Module | None = None
        if feature_dims is not None and seq_lens is not None:
            self._build(feature_dims, seq_lens)
        self.train_metrics = MSAMetrics()
        self.val_metrics = MSAMetrics()
        self.test_metrics = MSAMetrics()
        # Sample-weighted means, gathered exactly across DDP processes (uneven shards included).
        self.loss_means = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("train", "val", "test") for name in ("loss", "loss_task")}
        )

    # ------------------------------------------------------------------ construction
    def _build(self, feature_dims: dict[str, int], seq_lens: dict[str, int]) -> None:
        self.net = self.net_factory(dict(feature_dims), dict(seq_lens))
        self.hparams["feature_dims"] = dict(feature_dims)
        self.hparams["seq_lens"] = dict(seq_lens)
        n = sum(p.numel() for p in self.net.parameters())
        n_train = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        log.info("%s: %d parameters (%d trainable)", type(self.net).__name__, n, n_train)

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "feature_dims"):
            raise ValueError(
                "LitMSA: the net is built from the datamodule's feature_dims/seq_lens; pass a datamodule that "
                "exposes them, or give feature_dims and seq_lens explicitly"
            )
        self._build(dm.feature_dims, dm.seq_lens)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.net is None:
            raise RuntimeError("LitMSA: the net is not built yet (call trainer.fit/test or pass feature_dims)")
        return self.net(batch)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        out = self(batch)
        pred, label = out["pred"], batch["label"]
        task = self.loss_fn(pred, label)
        aux = out.get("aux_losses") or {}
        loss = task + sum(aux.values()) if aux else task
        bs = label.shape[0]
        on_step = stage == "train"
        for name, value in (("loss", loss), ("loss_task", task)):
            mean = self.loss_means[f"{stage}_{name}"]
            mean(value.detach(), weight=bs)
            self.log(f"{stage}/{name}", mean, on_step=on_step and name == "loss", on_epoch=True,
                     prog_bar=name == "loss", batch_size=bs)
        for name, value in aux.items():
            self.log(f"{stage}/loss_{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        for name, value in (out.get("logs") or {}).items():
            self.log(f"{stage}/{name}", value, on_step=False, on_epoch=True, batch_size=bs, sync_dist=True)
        getattr(self, f"{stage}_metrics").update(pred, label)
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        out = self(batch)
        return {"id": batch.get("id"), "pred": out["pred"].detach().cpu(), "label": batch["label"].detach().cpu()}

    def _log_epoch_metrics(self, stage: str) -> None:
        metric: MSAMetrics = getattr(self, f"{stage}_metrics")
        if not metric.update_called:
            return
        values = metric.compute()
        # The states were gathered across processes, so every rank holds the same values; sync_dist averages equal
        # numbers (exact) and keeps Lightning from warning about unsynchronised epoch-level logs.
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True)
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if self.net is None:
            raise RuntimeError("LitMSA: configure_optimizers called before the net was built")
        return build_optimization(self.net, self.optimizer_factory, self.scheduler_factory,
                                  self.hparams.lr_multipliers, self.hparams.scheduler_monitor)
