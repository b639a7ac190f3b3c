"""Class-distribution bar charts per split, real vs generated images stacked (cf. paper Fig. 9).

Ji et al. (J. Zhengzhou Univ. Eng. Sci. 2026) §3.1.1 / Fig. 9 compare the class proportions before and after
DDPM augmentation. :func:`plot_class_distribution` draws one panel per split with one stacked bar per class
(``real`` at the bottom, then each generated origin); :class:`ClassDistributionPlot` writes it at the start of
fitting from ``trainer.datamodule.class_counts()`` and logs it to loggers that accept images.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from matplotlib.figure import Figure

from common.io import atomic_write

log = logging.getLogger(__name__)

ClassCounts = dict[str, dict[str, dict[str, int]]]


def plot_class_distribution(counts: ClassCounts, path: str | Path, title: str = "Class distribution") -> Path:
    """Write a stacked bar chart of ``counts`` (``{split: {class: {origin: n}}}``) as a PNG.

    Args:
        counts: e.g. ``FERDataModule.class_counts()``.
        path: output PNG path (parent folders created).
        title: figure title.

    Returns:
        The written path.
    """
    if not counts:
        raise ValueError("plot_class_distribution: counts is empty")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    splits = list(counts)
    origins = sorted(
        {o for per in counts.values() for c in per.values() for o in c}, key=lambda o: (o != "real", o)
    )
    fig = Figure(figsize=(4.5 * len(splits), 3.8), constrained_layout=True)
    axes = fig.subplots(1, len(splits), squeeze=False)[0]
    colours = {o: f"C{i}" for i, o in enumerate(origins)}
    for ax, split in zip(axes, splits):
        classes = list(counts[split])
        bottom = [0] * len(classes)
        for origin in origins:
            values = [counts[split][c].get(origin, 0) for c in classes]
            if any(values):
                ax.bar(classes, values, bottom=bottom, label=origin, color=colours[origin])
            bottom = [b + v for b, v in zip(bottom, values)]
        for x, total in enumerate(bottom):
            ax.text(x, total, str(total), ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{split} (n={sum(bottom)})")
        ax.set_ylabel("images")
        ax.tick_params(axis="x", labelrotation=45)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    with atomic_write(path) as f:
        fig.savefig(f, dpi=100, format="png")
    return path


class ClassDistributionPlot(Callback):
    """Plot the datamodule's class distribution per split at fit start and log it as an image.

    Needs a datamodule with ``class_counts()`` (e.g. :class:`datamodules.fer.FERDataModule`). The PNG is
    written on global rank zero only; loggers with ``log_image(key, images)`` (e.g. ``WandbLogger``) receive it.

    Args:
        dirpath: output folder (default: ``trainer.log_dir`` or ``trainer.default_root_dir``).
        filename: PNG file name.
        log_key: key used with the logger's ``log_image``.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = "class_distribution.png",
        log_key: str = "data/class_distribution",
    ) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.filename = filename
        self.log_key = log_key
        self.last_path: Path | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = getattr(trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "class_counts"):
            log.info("ClassDistributionPlot: the datamodule has no class_counts(); nothing to plot")
            return
        # on every process: under DDP trainer.log_dir is a broadcast, which rank 0 alone must not call
        folder = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        self._write(trainer, dm.class_counts(), folder)

    @rank_zero_only
    def _write(self, trainer: Trainer, counts: ClassCounts, folder: Path) -> None:
        self.last_path = plot_class_distribution(counts, folder / self.filename)
        log.info("Class distribution plot written to %s", self.last_path)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=self.log_key, images=[str(self.last_path)])
