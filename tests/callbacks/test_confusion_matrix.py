from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from callbacks.confusion_matrix import ConfusionMatrixLogger, plot_confusion_matrix
from lightning_modules.fer import LitFER
from models.timm_classifier import TimmClassifier
from tests.lightning_modules.test_fer import TinyFaceDataModule


def test_png_written_per_validation_and_test_epoch(tmp_path) -> None:
    cb = ConfusionMatrixLogger(dirpath=str(tmp_path / "cm"))
    lit = LitFER(partial(TimmClassifier, model_name="test_resnet"), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, max_epochs=2, limit_train_batches=1, callbacks=[cb],
                      default_root_dir=str(tmp_path))
    dm = TinyFaceDataModule()
    trainer.fit(lit, datamodule=dm)
    trainer.test(lit, datamodule=dm, verbose=False)
    names = sorted(p.name for p in (tmp_path / "cm").glob("*.png"))
    assert names == ["test_epoch002.png", "val_epoch000.png", "val_epoch001.png"]  # no sanity-check file
    with Image.open(tmp_path / "cm" / "test_epoch002.png") as img:
        assert img.size[0] > 100 and img.size[1] > 100
    assert not list((tmp_path / "cm").glob(".*"))  # no temporary files left
    # the callback's own counts agree with the system's torchmetrics confusion matrix
    assert torch.equal(cb._counts["test"], lit.confusion_matrices["test"])


def test_plot_confusion_matrix_normalises_rows() -> None:
    fig = plot_confusion_matrix(torch.tensor([[3, 1], [0, 2]]), ["a", "b"], normalize="true")
    data = fig.axes[0].images[0].get_array()
    assert data[0, 0] == pytest.approx(0.75) and data[1, 1] == pytest.approx(1.0)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "0.75\n(3)" in texts


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="ConfusionMatrixLogger.*normalize"):
        ConfusionMatrixLogger(normalize="all")
    with pytest.raises(ValueError, match="ConfusionMatrixLogger.*stages"):
        ConfusionMatrixLogger(stages=("train",))
