"""The face-expression system: one LightningModule for the two-branch Swin and every timm baseline.

Reference: JI L X, REN H L, WANG W, et al. Multimodal and multiscale facial expression recognition analysis for
learning emotions. J. Zhengzhou Univ. (Eng. Sci.), 2026, 47(3): 126-133 — cross-entropy (eq. 6), training recipe
§3.1.2 (AdamW, lr 1e-5, weight decay 1e-3, batch 32, lr x0.9 after 5 epochs without val-loss improvement,
200 epochs, best-on-val checkpoint) and metrics §3.2.

The net is a plain ``nn.Module`` built as ``net(num_classes)``. Which batch keys it consumes is an explicit
attribute, ``net.inputs`` (the :class:`FERNet` protocol): ``("image",)`` for timm baselines and the global-only
Swin, ``("image", "descriptor")`` for the two-branch Swin. The batch tensors are passed positionally in that order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_modules.optim import build_optimization
from metrics.fer import FERMetrics, PredictionCounts

__all__ = ["FERNet", "LitFER"]

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
PREDICT_META_KEYS = ("path", "origin", "source", "frame", "time", "box", "face_index", "label")


@runtime_checkable
class FERNet(Protocol):
    """What :class:`LitFER` needs from a net: ``inputs`` names the batch keys fed to ``forward`` in order."""

    inputs: tuple[str, ...]

    def __call__(self, *tensors: Tensor) -> Tensor: ...


class LitFER(LightningModule):
    """Face-expression classification with cross-entropy (eq. 6) and the paper's metrics.

    Args:
        net: Factory ``net(num_classes) -> nn.Module`` (in YAML: ``class_path`` + ``init_args`` of a model class
            whose first parameter is ``num_classes``). The module must expose ``inputs: tuple[str, ...]``.
        optimizer: Optimizer factory, called with the parameter groups.
        scheduler: Optional LR-scheduler factory (``ReduceLROnPlateau`` watches ``scheduler_monitor``).
        scheduler_monitor: Metric watched by plateau schedulers (the paper: validation loss).
        label_smoothing: Cross-entropy label smoothing (0 = plain eq. 6).
        class_weights: Optional per-class loss weights (length ``num_classes``).
        lr_multipliers: ``{parameter-name prefix: multiplier}`` of the base learning rate, e.g.
            ``{"global_branch.head.": 10.0}``; 0 freezes (groups are chosen by name, see
            :func:`lightning_modules.optim.build_param_groups`).
        num_classes: Data-derived; taken from ``trainer.datamodule.num_classes`` in :meth:`setup` when ``None``
            and stored in the hyper-parameters so :meth:`load_from_checkpoint` rebuilds the same net.
        class_names: Data-derived like ``num_classes`` (metric keys ``test/recall_<class>``, plots).

    Logged keys: ``{stage}/loss`` and, per epoch, ``{stage}/acc``, ``{stage}/mean_class_acc``,
    ``{stage}/f1_macro``, ``{stage}/precision_macro``, ``{stage}/recall_macro``; for ``val`` and ``test`` also
    ``{stage}/precision_<class>`` and ``{stage}/recall_<class>``. The last confusion matrix of each stage is kept in
    ``self.confusion_matrices[stage]`` (``[K, K]``, rows = true class). ``{stage}/top_pred_share`` is the share of
    the most-predicted class over the epoch; when it is 1.0 while the targets span several classes a collapse
    warning names the per-class prediction counts (:meth:`_check_collapse`).

    Mixed batches: when a training batch carries ``label_soft`` ``[B, K]`` (mixup/cutmix target distributions,
    written by :class:`callbacks.mixup.MixupCutmix`), the loss is the cross-entropy against it; metrics keep using
    the hard ``label``.

    Shapes:
        batch["image"]: ``[B, 3, H, W]``; batch["descriptor"]: ``[B, 1, H, W]`` (two-branch nets only);
        batch["label"]: ``[B]`` int64; logits: ``[B, K]``
    """

    def __init__(
        self,
        net: Callable[[int], nn.Module],
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        lr_multipliers: dict[str, float] | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"LitFER: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        self.net_factory = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.net: nn.Module | None = None
        self.confusion_matrices: dict[str, Tensor] = {}
        if num_classes is not None:
            self._build(num_classes, class_names)

    # ------------------------------------------------------------------ construction
    def _build(self, num_classes: int, class_names: list[str] | None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"LitFER: {len(class_names)} class_names for num_classes={num_classes}")
        weights = self.hparams.class_weights
        if weights is not None and len(weights) != num_classes:
            raise ValueError(f"LitFER: {len(weights)} class_weights for num_classes={num_classes}")
        net = self.net_factory(num_classes)
        if not isinstance(getattr(net, "inputs", None), tuple):
            raise TypeError(
                f"LitFER: {type(net).__name__} must expose `inputs: tuple[str, ...]` naming the batch keys it takes"
            )
        self.net = net
        derived = {"num_classes": int(num_classes), "class_names": list(class_names) if class_names else None}
        self.hparams.update(derived)
        # the logged copy too: Lightning merges it with the datamodule's hparams and rejects differing values
        if hasattr(self, "_hparams_initial"):
            self._hparams_initial.update(derived)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.register_buffer(
            "loss_weight", torch.tensor(weights, dtype=torch.float32) if weights is not None else None,
            persistent=False,
        )
        self.train_metrics = FERMetrics(num_classes)
        self.val_metrics = FERMetrics(num_classes)
        self.test_metrics = FERMetrics(num_classes)
        # collapse check (see _check_collapse): per-stage predicted/target class counts over an epoch
        for s in STAGES:
            setattr(self, f"{s}_pred_counts", PredictionCounts(num_classes))
        n = sum(p.numel() for p in net.parameters())
        log.info("%s: %d parameters, inputs %s, %d classes", type(net).__name__, n, net.inputs, num_classes)

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or getattr(dm, "num_classes", None) is None:
            raise ValueError(
                "LitFER: the net is built with the datamodule's num_classes; pass a datamodule that exposes "
                "num_classes/class_names, or give num_classes explicitly"
            )
        self._build(int(dm.num_classes), getattr(dm, "class_names", None))
        self.net.to(self.device)

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Logits ``[B, K]`` from the batch keys named by ``net.inputs``."""
        if self.net is None:
            raise RuntimeError("LitFER: the net is not built yet (run trainer.fit/test or pass num_classes)")
        missing = [k for k in self.net.inputs if k not in batch]
        if missing:
            raise ValueError(
                f"LitFER: {type(self.net).__name__} needs batch keys {self.net.inputs}, batch lacks {missing} "
                "(a two-branch model needs the datamodule's descriptor enabled)"
            )
        return self.net(*(batch[k] for k in self.net.inputs))

    def _shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Tensor]:
        logits = self(batch)
        label = batch["label"]
        target = batch.get("label_soft", label) if stage == "train" else label
        loss = F.cross_entropy(
            logits, target, weight=self.loss_weight, label_smoothing=self.hparams.label_smoothing
        )  # eq. 6
        self.log(
            f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
            batch_size=label.shape[0], sync_dist=stage != "train",
        )
        getattr(self, f"{stage}_metrics").update(logits.detach(), label)
        getattr(self, f"{stage}_pred_counts").update(logits.detach(), label)
        return {"loss": loss, "preds": logits.detach().argmax(dim=1), "target": label}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Tensor]:
        return self._shared_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``{"probs": [B, K], "pred": [B]}`` plus the batch metadata present (``path``, ``frame``, ``time``,
        ``box``, ``face_index``, ``source``, ``label`` ...), tensors moved to CPU."""
        probs = self(batch).float().softmax(dim=1).cpu()
        out: dict[str, Any] = {"probs": probs, "pred": probs.argmax(dim=1)}
        for key in PREDICT_META_KEYS:
            if key in batch:
                value = batch[key]
                out[key] = value.detach().cpu() if isinstance(value, Tensor) else value
        return out

    def _log_epoch_metrics(self, stage: str) -> None:
        metrics: FERMetrics = getattr(self, f"{stage}_metrics")
        if not metrics.update_called:
            return
        values = metrics.compute(self.class_names, per_class=stage != "train")
        # torchmetrics already gathered the states across processes: every rank holds the same value, which
        # sync_dist averages exactly (and Lightning stops warning about unsynchronised epoch-level logs)
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, sync_dist=True)
        self.confusion_matrices[stage] = metrics.compute_confusion().cpu()
        metrics.reset()

    def _check_collapse(self, stage: str) -> Tensor | None:
        """Warn when a whole epoch's predictions fell on one class while its targets spanned several.

        Logs ``{stage}/top_pred_share`` (share of the most-predicted class: 1.0 = collapsed) and returns the
        ``[K]`` predicted counts (``None`` when nothing was counted). Skipped during the sanity check, whose
        untrained predictions say nothing about training, and for epochs of fewer than ``2 K`` faces.
        """
        counter: PredictionCounts = getattr(self, f"{stage}_pred_counts")
        if not counter.update_called:
            return None
        predicted, targets = counter.compute().cpu()
        counter.reset()
        if self._trainer is not None and self.trainer.sanity_checking:
            return predicted
        total = int(predicted.sum())
        self.log(f"{stage}/top_pred_share", predicted.max().float() / max(total, 1), sync_dist=True)
        if total >= 2 * len(predicted) and int((predicted > 0).sum()) == 1 and int((targets > 0).sum()) > 1:
            counts = ", ".join(f"{n}={int(c)}" for n, c in zip(self.class_names, predicted))
            only = self.class_names[int(predicted.argmax())]
            epoch = self.current_epoch if self._trainer is not None else -1
            rank_zero_warn(
                f"LitFER: collapse — every {stage} prediction of epoch {epoch} was class {only!r} although the "
                f"targets span {int((targets > 0).sum())} classes (predicted counts: {counts}). The model "
                "predicts a constant; typical causes: learning rate too high for the batch size without "
                "warm-up, no gradient clipping (see docs/fer_experiments.md)."
            )
        return predicted

    def on_train_epoch_end(self) -> None:
        self._check_collapse("train")
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._check_collapse("val")
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._check_collapse("test")
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if self.net is None:
            raise RuntimeError("LitFER: configure_optimizers called before the net was built")
        return build_optimization(self.net, self.optimizer_factory, self.scheduler_factory,
                                  self.hparams.lr_multipliers, self.hparams.scheduler_monitor)
