"""Images of the diffusion augmenter's runs, written under the run's folder (Ji et al. 2026, §2.1, eq. 1):

- :class:`DiffusionSampleLogger`: per-class sample grids of the class-conditioned LDM at each validation epoch of
  ``fit``;
- :class:`VAEReconstructionLogger`: input faces above their VAE reconstructions at each validation epoch of ``fit``.

Both grids are labelled (:func:`labelled_grid`: the row's name drawn left of it, tiles upscaled to a viewable size)
and go to ``<run>/samples/`` and ``<run>/reconstructions/`` by default, where ``<run>`` is :func:`run_dir` (the
parent of the checkpoint folder, e.g. ``runs/ldm_ckplus48/``), never the working directory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from PIL import Image, ImageDraw, ImageFont

from common.io import atomic_write

log = logging.getLogger(__name__)

#: Smallest tile side of a labelled grid: smaller images are upscaled by an integer factor (nearest) to reach it.
MIN_TILE = 96


def run_dir(trainer: Trainer) -> Path:
    """The run's folder: the parent of the checkpoint callback's folder (``runs/<experiment>/`` for
    ``runs/<experiment>/checkpoints``, where ``cli.py`` also saves ``config.yaml``), else the trainer's
    ``default_root_dir``. Reads no collective (safe on one process under DDP)."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    if dirpath:
        return Path(dirpath).parent
    return Path(trainer.default_root_dir)


def _fitting(trainer: Trainer) -> bool:
    """Whether the validation runs inside ``fit`` (not the evaluation ``cli.py`` runs after it, nor ``validate``):
    the grids follow training; the weights of a later evaluation were already drawn."""
    return getattr(getattr(trainer.state, "fn", None), "value", None) == "fit"


def make_grid(images: torch.Tensor, rows: int) -> np.ndarray:
    """``[rows * cols, C, H, W]`` in ``[0, 1]`` -> uint8 ``[rows * H, cols * W, C]``."""
    n, c, h, w = images.shape
    cols = n // rows
    x = (images.clamp(0, 1) * 255).round().byte().view(rows, cols, c, h, w).permute(0, 3, 1, 4, 2)
    return x.reshape(rows * h, cols * w, c).numpy()


def labelled_grid(images: torch.Tensor, row_labels: Sequence[str], min_tile: int = MIN_TILE,
                  font_size: int = 14) -> Image.Image:
    """A grid image with one row per label and the label written left of its row.

    Tiles smaller than ``min_tile`` px are upscaled by an integer factor (nearest neighbour: the pixels stay
    visible as they are), so a 48 px face is shown at 96 px.

    Args:
        images: ``[rows * cols, C, H, W]`` in ``[0, 1]``, row-major.
        row_labels: one name per row (e.g. the class names).
        min_tile: smallest tile side after upscaling.
        font_size: label font size (px).

    Returns:
        RGB image of size ``(margin + cols * W * s, rows * H * s)``.
    """
    rows = len(row_labels)
    if rows == 0 or len(images) % rows:
        raise ValueError(f"labelled_grid: {len(images)} images do not fill {rows} labelled rows")
    grid = Image.fromarray(make_grid(images, rows)).convert("RGB")
    h = images.shape[-2]
    scale = max(1, math.ceil(min_tile / h))
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    font = ImageFont.load_default(size=font_size)
    probe = ImageDraw.Draw(grid)
    margin = 12 + max(int(probe.textlength(str(t), font=font)) for t in row_labels)
    out = Image.new("RGB", (margin + grid.width, grid.height), (255, 255, 255))
    out.paste(grid, (margin, 0))
    draw = ImageDraw.Draw(out)
    tile = h * scale
    for r, text in enumerate(row_labels):
        draw.text((6, r * tile + tile // 2), str(text), fill=(0, 0, 0), font=font, anchor="lm")
    return out


def save_png(image: Image.Image, path: Path) -> Path:
    """Write ``image`` as a PNG atomically (:func:`common.io.atomic_write`), creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        image.save(f, format="PNG")
    return path


class DiffusionSampleLogger(Callback):
    """Generates ``samples_per_class`` images of every class (fixed seeds, so epochs are comparable) after each
    validation epoch; saves one labelled grid PNG (a row per class, the class name left of it,
    :func:`labelled_grid`) as ``<dirpath>/epoch_XXX.png`` and logs it to the logger when it supports images
    (``log_image``).

    Args:
        dirpath: output folder; default ``<run>/samples`` (:func:`run_dir`: the checkpoint folder's parent).
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
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs or not _fitting(trainer):
            return
        if trainer.is_global_zero:
            self._write_grid(trainer, pl_module, Path(self.dirpath) if self.dirpath else run_dir(trainer) / "samples")

    def _write_grid(self, trainer: Trainer, pl_module: LightningModule, folder: Path) -> None:
        k, n = pl_module.net.num_classes, self.samples_per_class
        labels = torch.arange(k).repeat_interleave(n)
        seeds = [self.seed + i for i in range(k * n)]
        images = pl_module.generate(labels, seeds, self.num_inference_steps, self.guidance_scale).cpu()
        names = list(getattr(pl_module, "class_names", None) or [f"class_{i}" for i in range(k)])
        path = save_png(labelled_grid(images, names), folder / f"epoch_{trainer.current_epoch:03d}.png")
        self.last_path = path
        for lg in trainer.loggers:
            if hasattr(lg, "log_image"):
                try:
                    lg.log_image(key="val/samples", images=[str(path)], caption=[" / ".join(names)])
                except Exception as e:  # noqa: BLE001 - logging images is non-essential
                    log.warning("DiffusionSampleLogger: could not log the grid to %s: %s", type(lg).__name__, e)
        log.info("DiffusionSampleLogger: %s", path)


class VAEReconstructionLogger(Callback):
    """After each validation epoch, writes the first ``num_images`` validation faces (row ``input``) above their
    reconstructions (row ``reconstruction``: encoder posterior mode, decoded) as ``<dirpath>/epoch_XXX.png``.

    Works with a system exposing ``forward(x_pm1) -> (reconstruction, ...)`` and ``norm.to_pm1`` (the data
    normalisation undone), i.e. :class:`lightning_modules.ldm.LitVAE`.

    Args:
        dirpath: output folder; default ``<run>/reconstructions`` (:func:`run_dir`).
        num_images: faces shown (taken from the first validation batch(es)).
        every_n_epochs: run every n validation epochs.
    """

    def __init__(self, dirpath: str | None = None, num_images: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__()
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError("VAEReconstructionLogger: num_images and every_n_epochs must be >= 1")
        self.dirpath = dirpath
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.last_path: Path | None = None
        self._inputs: list[torch.Tensor] = []

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._inputs = []

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: object, batch: dict,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        have = sum(len(x) for x in self._inputs)
        if trainer.is_global_zero and have < self.num_images and isinstance(batch, dict) and "image" in batch:
            self._inputs.append(batch["image"][: self.num_images - have].detach())

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if (trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs or not self._inputs
                or not _fitting(trainer)):
            return
        if not trainer.is_global_zero:
            return
        x = pl_module.norm.to_pm1(torch.cat(self._inputs))
        recon = pl_module(x)[0]
        pair = ((torch.cat([x, recon]).clamp(-1, 1) + 1) / 2).float().cpu()
        folder = Path(self.dirpath) if self.dirpath else run_dir(trainer) / "reconstructions"
        self.last_path = save_png(labelled_grid(pair, ["input", "reconstruction"]),
                                  folder / f"epoch_{trainer.current_epoch:03d}.png")
        self._inputs = []
        log.info("VAEReconstructionLogger: %s", self.last_path)
