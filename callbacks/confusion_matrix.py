"""Confusion-matrix figures per validation/test epoch (the paper's Fig. 10 analysis, §3.2.2).

Reference: JI L X, REN H L, WANG W, et al. Multimodal and multiscale facial expression recognition analysis for
learning emotions. J. Zhengzhou Univ. (Eng. Sci.), 2026, 47(3): 126-133.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from common.choices import check_choices
from common.io import atomic_write

__all__ = ["ConfusionMatrixLogger", "plot_confusion_matrix", "save_figure_atomic"]

log = logging.getLogger(__name__)

Normalize = Literal["true", "none"]
NORMALIZE = get_args(Normalize)


def plot_confusion_matrix(matrix: Tensor, class_names: list[str], normalize: str = "true", title: str = ""):
    """A matplotlib figure of a ``[K, K]`` count matrix (rows = true class, columns = predicted class).

    Args:
        matrix: ``[K, K]`` counts.
        class_names: ``K`` labels.
        normalize: ``"true"`` shows row-normalised rates (per-class recall on the diagonal) with the counts,
            ``"none"`` shows counts only.
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = matrix.shape[0]
    size = max(4.0, 0.6 * k + 2.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9))
    draw_confusion_matrix(ax, matrix, class_names, normalize, title)
    fig.tight_layout()
    return fig


def draw_confusion_matrix(ax: Any, matrix: Tensor, class_names: list[str], normalize: str = "true",
                          title: str = "") -> Any:
    """Draw a ``[K, K]`` count matrix into the matplotlib axes ``ax`` (see :func:`plot_confusion_matrix`)."""
    counts = matrix.detach().cpu().double()
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1) if normalize == "true" else counts
    k = counts.shape[0]
    im = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0 if normalize == "true" else None)
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    thresh = rates.max().item() / 2 if rates.numel() else 0
    for i in range(k):
        for j in range(k):
            text = f"{rates[i, j]:.2f}\n({int(counts[i, j])})" if normalize == "true" else f"{int(counts[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > thresh else "black")
    return im


def save_figure_atomic(fig: Any, path: Path) -> None:
    """Save a matplotlib figure as PNG through :func:`common.io.atomic_write` (never a half-written file)."""
    with atomic_write(path) as f:
        fig.savefig(f, dpi=120, format="png")


class ConfusionMatrixLogger(Callback):
    """Accumulates predictions of every validation/test batch and, at the end of the epoch, saves the confusion
    matrix as a PNG and logs it to TensorBoard / W&B when such a logger is active. Only rank 0 writes.

    The system's ``validation_step``/``test_step`` must return ``{"preds": [B] int64, "target": [B] int64}``
    (as :class:`lightning_modules.fer.LitFER` does). Counts are summed across processes.

    Args:
        dirpath: Output folder; ``None`` means ``<trainer.log_dir or default_root_dir>/confusion_matrices``.
        stages: Stages to handle, any of ``"val"``, ``"test"``.
        normalize: ``"true"`` (row-normalised, counts in brackets) or ``"none"`` (counts).

    Files: ``{dirpath}/{stage}_epoch{E:03d}.png`` (a re-run overwrites its own epoch files).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        stages: tuple[Literal["val", "test"], ...] = ("val", "test"),
        normalize: Normalize = "true",
    ) -> None:
        super().__init__()
        check_choices(ConfusionMatrixLogger, locals())
        bad = [s for s in stages if s not in ("val", "test")]
        if bad:
            raise ValueError(f"ConfusionMatrixLogger: stages must be 'val' and/or 'test', got {bad}")
        self.dirpath = dirpath
        self.stages = tuple(stages)
        self.normalize = normalize
        self._counts: dict[str, Tensor] = {}
        self.last_paths: dict[str, Path] = {}

    # ------------------------------------------------------------------ accumulation
    def _reset(self, stage: str) -> None:
        self._counts.pop(stage, None)

    def _update(self, stage: str, pl_module: LightningModule, outputs: Any) -> None:
        if stage not in self.stages or not isinstance(outputs, dict) or "preds" not in outputs:
            return
        k = self._num_classes(pl_module)
        preds, target = outputs["preds"].detach().long(), outputs["target"].detach().long()
        counts = torch.bincount(target * k + preds, minlength=k * k).reshape(k, k)
        self._counts[stage] = self._counts[stage] + counts if stage in self._counts else counts

    @staticmethod
    def _num_classes(pl_module: LightningModule) -> int:
        return int(pl_module.hparams["num_classes"])

    @staticmethod
    def _class_names(trainer: Trainer, pl_module: LightningModule) -> list[str]:
        names = getattr(pl_module, "class_names", None) or getattr(trainer.datamodule, "class_names", None)
        return list(names) if names else [str(i) for i in range(ConfusionMatrixLogger._num_classes(pl_module))]

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset("val")

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset("test")

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._update("val", pl_module, outputs)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._update("test", pl_module, outputs)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    # ------------------------------------------------------------------ output
    def _finish(self, stage: str, trainer: Trainer, pl_module: LightningModule) -> None:
        if stage not in self.stages:
            return
        k = self._num_classes(pl_module)
        counts = self._counts.get(stage, torch.zeros(k, k, dtype=torch.long, device=pl_module.device))
        if trainer.world_size > 1:
            counts = pl_module.all_gather(counts.to(pl_module.device)).sum(dim=0)
        self._write(stage, counts.cpu(), trainer, pl_module)

    def _output_dir(self, trainer: Trainer) -> Path:
        if self.dirpath is not None:
            return Path(self.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir) / "confusion_matrices"

    @rank_zero_only
    def _write(self, stage: str, counts: Tensor, trainer: Trainer, pl_module: LightningModule) -> None:
        import matplotlib.pyplot as plt

        names = self._class_names(trainer, pl_module)
        epoch = trainer.current_epoch
        title = f"{stage} confusion matrix, epoch {epoch} (n={int(counts.sum())})"
        fig = plot_confusion_matrix(counts, names, normalize=self.normalize, title=title)
        path = self._output_dir(trainer) / f"{stage}_epoch{epoch:03d}.png"
        try:
            save_figure_atomic(fig, path)
            self.last_paths[stage] = path
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"{stage}/confusion_matrix", fig, global_step=trainer.global_step)
                elif isinstance(logger, WandbLogger):
                    logger.log_image(key=f"{stage}/confusion_matrix", images=[str(path)], step=trainer.global_step)
        finally:
            plt.close(fig)
        log.info("Confusion matrix saved to %s", path)
