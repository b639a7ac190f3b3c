"""Tests for callbacks/class_distribution.py."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from callbacks.class_distribution import ClassDistributionPlot, plot_class_distribution

COUNTS = {
    "train": {"joy": {"real": 10, "ldm": 20}, "boredom": {"real": 3, "ldm": 12}},
    "val": {"joy": {"real": 2}, "boredom": {"real": 1}},
    "test": {"joy": {"real": 2}, "boredom": {"real": 1}},
}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = plot_class_distribution(COUNTS, tmp_path / "sub" / "dist.png")
    img = np.asarray(Image.open(out).convert("RGB"))
    assert img.shape[1] > img.shape[0] > 100
    # the generated origin is drawn in a second colour (matplotlib C1 orange) on top of real (C0 blue)
    orange = (np.abs(img.astype(int) - [255, 127, 14]).sum(-1) < 30).sum()
    blue = (np.abs(img.astype(int) - [31, 119, 180]).sum(-1) < 30).sum()
    assert orange > 100 and blue > 100
    with pytest.raises(ValueError, match="empty"):
        plot_class_distribution({}, tmp_path / "x.png")


class _ImageLogger:
    def __init__(self) -> None:
        self.logged: list[tuple[str, list]] = []

    def log_image(self, key: str, images: list) -> None:
        self.logged.append((key, images))


def _trainer(tmp_path: Path, logger: object) -> SimpleNamespace:
    dm = SimpleNamespace(class_counts=lambda: COUNTS)
    return SimpleNamespace(
        datamodule=dm, loggers=[logger], log_dir=str(tmp_path / "logs"), default_root_dir=str(tmp_path)
    )


def test_callback_writes_and_logs_on_rank_zero(tmp_path: Path) -> None:
    logger = _ImageLogger()
    cb = ClassDistributionPlot()
    cb.on_fit_start(_trainer(tmp_path, logger), None)
    assert cb.last_path == tmp_path / "logs" / "class_distribution.png" and cb.last_path.is_file()
    assert logger.logged == [("data/class_distribution", [str(cb.last_path)])]


def test_callback_writes_nothing_off_rank_zero(tmp_path: Path, monkeypatch) -> None:
    from lightning.pytorch.utilities import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = _ImageLogger()
    cb = ClassDistributionPlot(dirpath=str(tmp_path / "out"))
    cb.on_fit_start(_trainer(tmp_path, logger), None)
    assert not (tmp_path / "out").exists() and logger.logged == []


def test_callback_in_a_real_fit(tmp_path: Path) -> None:
    import torch
    from lightning.pytorch import LightningModule, Trainer

    from datamodules.fer import FERDataModule
    from tests.fakes_images import make_class_folders

    make_class_folders(tmp_path / "data", ["a", "b"], subjects=4, frames=2, size=16)
    make_class_folders(tmp_path / "gen", ["b"], subjects=2, frames=1, size=16, seed=5)
    dm = FERDataModule(
        str(tmp_path / "data"),
        ["a", "b"],
        extra_roots=[str(tmp_path / "gen")],
        crop={"image_size": 16, "face_detection": "none"},
        descriptor={"kind": "none"},
        batch_size=4,
        cache_dir=str(tmp_path / "c"),
        progress="none",
    )

    class Tiny(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3 * 16 * 16, 2)

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(self.lin(batch["image"].flatten(1)), batch["label"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cb = ClassDistributionPlot(dirpath=str(tmp_path / "plots"))
    trainer = Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=1,
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert (tmp_path / "plots" / "class_distribution.png").is_file()
    assert dm.class_counts()["train"]["b"] == {"real": 6, "gen": 2}
