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

import functools
import inspect
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from common.checkpoint import CheckpointError, read_checkpoint
from common.preprocessing import face_preprocessing
from lightning_modules.base import EpochMetricsSystem, NetModule, drop_foreign_hparams
from lightning_modules.optim import build_optimization
from lightning_modules.schedulers import follow_trainer_epochs
from metrics.fer import FERMetrics, PredictionCounts

__all__ = ["FERNet", "LitFER", "read_fer_preprocessing"]

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")
#: test-time augmentation at test and predict: "flip" averages the class probabilities of each face and its mirror
TTA = Literal["none", "flip"]
PREDICT_META_KEYS = ("path", "origin", "source", "frame", "time", "box", "track_id", "score", "landmarks", "label")


def _takes_argument(factory: Callable[..., Any], name: str) -> bool:
    """Whether the net built by ``factory`` takes the keyword ``name``: a class, a function, or a
    ``functools.partial`` over one (what jsonargparse makes of a ``class_path``/``init_args`` net spec)."""
    target: Any = factory
    while isinstance(target, functools.partial):
        target = next((a for a in target.args if isinstance(a, type)), target.func)
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


@runtime_checkable
class FERNet(Protocol):
    """What :class:`LitFER` needs from a net: ``inputs`` names the batch keys fed to ``forward`` in order."""

    inputs: tuple[str, ...]

    def __call__(self, *tensors: Tensor) -> Tensor: ...


class LitFER(EpochMetricsSystem):
    """Face-expression classification with cross-entropy (eq. 6) and the paper's metrics.

    Args:
        net: Factory ``net(num_classes) -> nn.Module`` (in YAML: ``class_path`` + ``init_args`` of a model class
            whose first parameter is ``num_classes``). The module must expose ``inputs: tuple[str, ...]``. The
            project's: ``models.swin_two_branch.TwoBranchSwin``, ``models.timm_classifier.TimmClassifier``,
            ``models.poster.POSTER``.
        optimizer: Optimizer factory, called with the parameter groups.
        scheduler: Optional LR-scheduler factory (``ReduceLROnPlateau`` watches ``scheduler_monitor``).
        scheduler_monitor: Metric watched by plateau schedulers (the paper: validation loss).
        label_smoothing: Cross-entropy label smoothing (0 = plain eq. 6).
        class_weights: Optional per-class loss weights (length ``num_classes``).
        lr_multipliers: ``{parameter-name prefix: multiplier}`` of the base learning rate, e.g.
            ``{"global_branch.head.": 10.0}``; 0 freezes (groups are chosen by name, see
            :func:`lightning_modules.optim.build_param_groups`).
        num_classes: Data-derived; the CLI links it from the datamodule (``data.num_classes``), so the net is
            built here; when ``None`` it is read from ``trainer.datamodule`` in :meth:`setup`. Stored in the
            hyper-parameters so :meth:`load_from_checkpoint` rebuilds the same net.
        class_names: Data-derived like ``num_classes`` (metric keys ``test/recall_<class>``, plots).
        image_size: Data-derived (linked from ``data.image_size``): the side of the input images, passed to the net
            factory as ``img_size`` when the net takes that argument, so the net cannot be built for another size.
        tta: Test-time augmentation at ``test`` and ``predict`` (never at ``val``, which picks the checkpoint):
            ``"flip"`` averages the softmax of each face and of its horizontal mirror (every image-like input, the
            descriptor map included, flipped together, as the training flip does), at twice the inference cost;
            the test loss is then the cross-entropy of the averaged probabilities.

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
        net: Callable[[int], NetModule],
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        class_weights: list[float] | None = None,
        lr_multipliers: dict[str, float] | None = None,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        image_size: int | None = None,
        tta: TTA = "none",
    ) -> None:
        super().__init__()
        if tta not in get_args(TTA):
            raise ValueError(f"LitFER: tta must be one of {get_args(TTA)}, got {tta!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"LitFER: label_smoothing must be in [0, 1), got {label_smoothing}")
        self.save_hyperparameters()
        drop_foreign_hparams(self)
        self.net_factory = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.confusion_matrices: dict[str, Tensor] = {}
        if num_classes is not None:
            self._build(num_classes=num_classes, class_names=class_names, image_size=image_size)

    #: hyper-parameters that say how to evaluate, not what the weights are: with ``--ckpt_path`` the config's or
    #: command line's value is kept, not the checkpoint's (``lightning_modules.cli_checkpoints``)
    inference_settings: tuple[str, ...] = ("tta",)

    #: ``cli.py predict --ckpt_path``: the checkpoint's net (class path and settings) is used whatever net the
    #: config names, so one prediction config (``configs/fer/predict_video.yaml``) serves every face checkpoint.
    predict_net_from_checkpoint: bool = True

    @staticmethod
    def default_predict_checkpoint() -> str:
        """``cli.py predict`` without ``--ckpt_path``: the face model shipped in the package
        (:func:`models.shipped.shipped_checkpoint`; an untrained net has nothing to predict)."""
        from models.shipped import shipped_checkpoint

        return str(shipped_checkpoint())

    # ------------------------------------------------------------------ construction
    DERIVED = ("num_classes", "class_names", "image_size")

    def _build_net(self, num_classes: int, class_names: list[str] | None, image_size: int | None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"LitFER: {len(class_names)} class_names for num_classes={num_classes}")
        weights = self.hparams.class_weights
        if weights is not None and len(weights) != num_classes:
            raise ValueError(f"LitFER: {len(weights)} class_weights for num_classes={num_classes}")
        if image_size and _takes_argument(self.net_factory, "img_size"):
            net = self.net_factory(num_classes, img_size=image_size)
        else:
            net = self.net_factory(num_classes)
        if not isinstance(getattr(net, "inputs", None), tuple):
            raise TypeError(
                f"LitFER: {type(net).__name__} must expose `inputs: tuple[str, ...]` naming the batch keys it takes"
            )
        self.net = net
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

    def _data_derived(self, datamodule: Any) -> dict[str, Any] | None:
        if getattr(datamodule, "num_classes", None) is None:
            return None
        names = getattr(datamodule, "class_names", None)
        size = getattr(datamodule, "image_size", None)
        return {"num_classes": int(datamodule.num_classes), "class_names": list(names) if names else None,
                "image_size": int(size) if size else None}

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

    def _tta_log_probs(self, batch: dict[str, Any]) -> Tensor:
        """Log of the class probabilities ``[B, K]`` averaged over the face and its horizontal mirror (every
        ``[B, C, H, W]`` input of the net flipped along ``W``); usable wherever logits are (softmax, argmax)."""
        mirrored = dict(batch)
        for key in self.net.inputs:
            value = batch[key]
            if isinstance(value, Tensor) and value.ndim == 4:
                mirrored[key] = value.flip(-1)
        probs = (self(batch).float().softmax(dim=1) + self(mirrored).float().softmax(dim=1)) / 2
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    def _eval_logits(self, batch: dict[str, Any]) -> Tensor:
        """The logits of ``test``/``predict``: the plain forward, or the flip average when ``tta="flip"``."""
        if self.hparams.tta == "flip":
            return self._tta_log_probs(batch)
        return self(batch)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> dict[str, Tensor]:
        logits = self._eval_logits(batch) if stage == "test" else self(batch)
        label = batch["label"]
        target = batch.get("label_soft", label) if stage == "train" else label
        loss = F.cross_entropy(
            logits, target, weight=self.loss_weight, label_smoothing=self.hparams.label_smoothing
        )  # eq. 6
        self.log_step_value(stage, "loss", loss, label.shape[0])
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
        ``box``, ``track_id``, ``landmarks``, ``source``, ``label`` ...), tensors moved to CPU."""
        probs = self._eval_logits(batch).float().softmax(dim=1).cpu()
        out: dict[str, Any] = {"probs": probs, "pred": probs.argmax(dim=1)}
        for key in PREDICT_META_KEYS:
            if key in batch:
                value = batch[key]
                out[key] = value.detach().cpu() if isinstance(value, Tensor) else value
        return out

    def _stage_metric_values(self, stage: str) -> dict[str, Tensor]:
        metrics: FERMetrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute(self.class_names, per_class=stage != "train")
        self.confusion_matrices[stage] = metrics.compute_confusion().cpu()
        share = self._check_collapse(stage)  # reduced here too, on every process in the same order
        if share is not None:
            values["top_pred_share"] = share
        return values

    def _check_collapse(self, stage: str) -> Tensor | None:
        """Warn when a whole epoch's predictions fell on one class while its targets spanned several.

        Returns the share of the most-predicted class (1.0 = collapsed; logged as ``{stage}/top_pred_share``), or
        ``None`` when nothing was counted. The warning is skipped during the sanity check, whose untrained
        predictions say nothing about training, and for epochs of fewer than ``2 K`` faces.
        """
        counter: PredictionCounts = getattr(self, f"{stage}_pred_counts")
        predicted, targets = counter.compute().cpu()
        counter.reset()
        total = int(predicted.sum())
        if total == 0:
            return None
        share = predicted.max().float() / total
        if self._trainer is not None and self.trainer.sanity_checking:
            return share
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
        return share

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        if self.net is None:
            raise RuntimeError("LitFER: configure_optimizers called before the net was built")
        # a WarmupCosineLR without max_epochs follows trainer.max_epochs (so --trainer.max_epochs 3 shrinks it)
        max_epochs = self._trainer.max_epochs if self._trainer is not None else None
        scheduler = follow_trainer_epochs(self.scheduler_factory, max_epochs,
                                          debug_run=bool(self._trainer is not None and self._trainer.fast_dev_run))
        return build_optimization(self.net, self.optimizer_factory, scheduler,
                                  self.hparams.lr_multipliers, self.hparams.scheduler_monitor, trainer=self._trainer)


def read_fer_preprocessing(path: str | Path) -> dict | None:
    """The preprocessing state stored in a LitFER checkpoint (None for a LitFER checkpoint saved without one).

    Read with :func:`common.checkpoint.read_checkpoint` (``weights_only=True``, memory-mapped: a checkpoint never
    chooses code to run, and only a few keys are needed).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: (a ``ValueError``) not a checkpoint, or a checkpoint of another model kind (both naming the
            file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = read_checkpoint(path, map_location="cpu", mmap=True)
    except CheckpointError as err:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read safely (weights_only) as a PyTorch "
                              f"checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a Lightning checkpoint (no state_dict)")
    hp = ckpt.get("hyper_parameters") or {}
    class_path = hp.get("_class_path")
    ours = f"{LitFER.__module__}.{LitFER.__qualname__}"
    if class_path and class_path != ours:
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {class_path} model, not a face-expression model "
                              f"({ours}): give a checkpoint trained with a configs/fer/ config")
    state = face_preprocessing(ckpt)
    if not class_path and state is None and not {"net", "num_classes"} <= set(hp):
        raise CheckpointError(f"checkpoint {str(path)!r} is not a face-expression (LitFER) checkpoint "
                              f"(hyper-parameters {sorted(hp)[:8]})")
    return state
