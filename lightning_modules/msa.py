"""The multimodal sentiment system: one LightningModule for every MOSI/MOSEI model (TFN, HGCL, baselines).

The net is a plain ``nn.Module`` from ``models/`` (contract in ``docs/architecture.md``): it takes the batch dict
and returns ``{"pred": [B], "aux_losses": {...}, "logs": {...}}``. This system owns the task loss, the
optimisation and the metrics (:class:`~metrics.msa.MSAMetrics`, one object per stage).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor

from common.choices import check_choices
from lightning_modules.base import EpochMetricsSystem, NetModule, drop_foreign_hparams
from lightning_modules.optim import build_optimization, build_param_groups
from metrics.msa import MSAMetrics

__all__ = ["LitMSA", "NetFactory", "build_param_groups"]

log = logging.getLogger(__name__)

#: The type of :class:`LitMSA`'s ``net``: ``net(feature_dims, seq_lens) -> nn.Module``, the data-derived sizes left
#: out of the config (the CLI links them into ``model.init_args.feature_dims``/``seq_lens``).
NetFactory = Callable[[dict[str, int], dict[str, int]], NetModule]

_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": F.l1_loss,
    "mse": F.mse_loss,
    "smooth_l1": F.smooth_l1_loss,
}


class LitMSA(EpochMetricsSystem):
    """Multimodal sentiment regression (CMU-MOSI / CMU-MOSEI) with MMSA-convention metrics.

    Args:
        net: a factory ``net(feature_dims, seq_lens) -> nn.Module`` (in YAML: ``class_path`` + ``init_args``
            of a model class whose first two parameters are ``feature_dims`` and ``seq_lens``). The net's own parts
            are nested ``class_path`` + ``init_args`` entries of its ``init_args`` (e.g. HGCL's ``graph_builder``,
            ``augmenter`` and ``gnn``); a part sized by the net is a factory the net calls (HGCL's ``gnn(dim)``).
        optimizer: optimizer factory, called with the parameter groups.
        scheduler: optional LR scheduler factory.
        scheduler_monitor: metric watched by ``ReduceLROnPlateau``-type schedulers.
        loss: task loss, ``"l1"`` (MMSA's default), ``"mse"`` or ``"smooth_l1"``.
        lr_multipliers: ``{parameter-name prefix: multiplier}`` of the base learning rate, e.g.
            ``{"text_encoder.": 0.1}``; 0 freezes.
        weight_decays: ``{parameter-name prefix: weight decay}`` overriding the optimizer's decay for those
            parameters (``""`` = the rest), e.g. Self-MM's per-sub-network decays on MOSEI.
        feature_dims: data-derived; the CLI links it from the datamodule (``data.feature_dims``), so the net is built
            here; when ``None`` it is read from ``trainer.datamodule`` in :meth:`setup`. Stored in the
            hyper-parameters so :meth:`load_from_checkpoint` rebuilds the same net.
        seq_lens: as ``feature_dims``.

    Logged keys, per epoch (exact over every sample of every DDP process): ``{stage}/loss``, ``{stage}/loss_task``,
    ``{stage}/loss_<aux>``, ``{stage}/<net log>`` and every metric of :class:`MSAMetrics` as ``{stage}/<name>``
    (``train``, ``val``, ``test``); per training step ``train/loss_step``.
    """

    def __init__(
        self,
        net: NetFactory,
        optimizer: OptimizerCallable = torch.optim.Adam,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/mae",
        loss: Literal["l1", "mse", "smooth_l1"] = "l1",
        lr_multipliers: dict[str, float] | None = None,
        weight_decays: dict[str, float] | None = None,
        feature_dims: dict[str, int] | None = None,
        seq_lens: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        check_choices(LitMSA, locals())
        self.save_hyperparameters()
        drop_foreign_hparams(self)
        self.net_factory = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_fn = _LOSSES[loss]
        self.train_metrics = MSAMetrics()
        self.val_metrics = MSAMetrics()
        self.test_metrics = MSAMetrics()
        if feature_dims is not None and seq_lens is not None:
            self._build(feature_dims=feature_dims, seq_lens=seq_lens)

    # ------------------------------------------------------------------ construction
    DERIVED = ("feature_dims", "seq_lens")

    def _build_net(self, feature_dims: dict[str, int], seq_lens: dict[str, int]) -> None:
        self.net = self.net_factory(dict(feature_dims), dict(seq_lens))
        n = sum(p.numel() for p in self.net.parameters())
        n_train = sum(p.numel() for p in self.net.parameters() if p.requires_grad)
        log.info("%s: %d parameters (%d trainable)", type(self.net).__name__, n, n_train)

    def _data_derived(self, datamodule: Any) -> dict[str, Any] | None:
        if not hasattr(datamodule, "feature_dims"):
            return None
        return {"feature_dims": dict(datamodule.feature_dims), "seq_lens": dict(datamodule.seq_lens)}

    def on_fit_start(self) -> None:
        """Nets with parts fitted on the training split before training (``requires_prefit``, e.g. HGCL's
        offline codebooks) get one pass over the datamodule's training batches; under DDP rank 0's result is
        broadcast, so every process holds the same parts. A resumed run has them from its checkpoint."""
        if not getattr(self.net, "requires_prefit", False):
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise ValueError(f"LitMSA: {type(self.net).__name__} is fitted on the training split first; pass a datamodule")
        state = self.net.prefit(dm.train_dataloader())
        state = self.trainer.strategy.broadcast({k: v.cpu() for k, v in state.items()}, src=0)
        for name, value in state.items():
            self.net.get_buffer(name).copy_(value)

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
        self.log_step_value(stage, "loss", loss, bs)
        self.log_epoch_mean(stage, "loss_task", task, bs)
        for name, value in aux.items():
            self.log_epoch_mean(stage, f"loss_{name}", value, bs)
        for name, value in (out.get("logs") or {}).items():
            self.log_epoch_mean(stage, name, torch.as_tensor(value, device=pred.device), bs)
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

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if self.net is None:
            raise RuntimeError("LitMSA: configure_optimizers called before the net was built")
        return build_optimization(self.net, self.optimizer_factory, self.scheduler_factory,
                                  self.hparams.lr_multipliers, self.hparams.scheduler_monitor,
                                  self.hparams.get("weight_decays"),
                                  trainer=self._trainer)
