"""Per-class sample grids of the class-conditioned LDM (Ji et al. 2026, §2.1, eq. 1) at each validation epoch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image

from common.io import atomic_write

log = logging.getLogger(__name__)


def make_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """``[rows * cols, C, H, W]`` in ``[0, 1]`` -> uint8 ``[rows * H, cols * W, C]``."""
    n, c, h, w = images.shape
    cols = n // rows
    x = (images.clamp(0, 1) * 255).round().byte().view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2)
    return x.reshape(rows * h, cols * w, c).numpy()


class DiffusionSampleLogger(Callback):
    """Generates ``samples_per_class`` images of every class (fixed seeds, so epochs are comparable) after each
    validation epoch; saves one grid PNG (a row per class) under ``<dirpath>/epoch_XXX.png`` and logs it to the
    logger when it supports images (``log_image``).

    Args:
        dirpath: output folder; default ``<trainer.log_dir or default_root_dir>/samples``.
        samples_per_class: images per class (grid columns).
        every_n_epochs: run every n validation epochs.
        num_inference_steps, guidance_scale: sampling settings (``None`` = the model's).
        seed: seed of the first image.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        samples_per_class: int = 4,
        every_n_epochs: int = 1,
        num_inference_steps: int | None = 25,
        guidance_scale: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if samples_per_class < 1 or every_n_epochs < 1:
            raise ValueError("DiffusionSampleLogger: samples_per_class and every_n_epochs must be >= 1")
        self.dirpath = dirpath
        self.samples_per_class = samples_per_class
        self.every_n_epochs = every_n_epochs
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.last_path: Path | None = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        # on EVERY process: under DDP ``trainer.log_dir`` is a broadcast (a collective); called on rank 0 alone it
        # would pair with the system's epoch-end reduction on the other ranks and hang
        # (lightning_modules/base.py: collectives in one order on every process)
        folder = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "samples")
        if trainer.is_global_zero:
            self._write_grid(trainer, pl_module, folder)

    def _write_grid(self, trainer: Trainer, pl_module: LightningModule, folder: Path) -> None:
        k, n = pl_module.net.num_classes, self.samples_per_class
        labels = torch.arange(k).repeat_interleave(n)
        seeds = [self.seed + i for i in range(k * n)]
        images = pl_module.generate(labels, seeds, self.num_inference_steps, self.guidance_scale).cpu()
        grid = make_grid(images, rows=k)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"epoch_{trainer.current_epoch:03d}.png"
        with atomic_write(path) as f:
            Image.fromarray(grid).save(f, format="PNG")
        self.last_path = path
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):
                try:
                    lg.log_image(key="val/samples", images=[str(path)],
                                 caption=[" / ".join(getattr(pl_module, "class_names", []))])
                except Exception as e:  # noqa: BLE001 - logging images is non-essential
                    log.warning("DiffusionSampleLogger: could not log the grid to %s: %s", type(lg).__name__, e)
        log.info("DiffusionSampleLogger: %s", path)
