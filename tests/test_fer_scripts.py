"""Smoke runs of the face-experiment commands at a tiny size (1 epoch, 2 batches) on fake CK+-style folders."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from tests.fakes_images import CK_CLASSES, make_class_folders

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture
def tiny_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr("sys.argv", ["script"])
    make_class_folders(tmp_path / "data" / "ckplus48", classes=CK_CLASSES, subjects=7, frames=1, size=32)
    return ["--data-root", str(tmp_path / "data"), "--datasets", "ckplus48", "--epochs", "1", "--max-minutes", "5",
            "--image-size", "64", "--batch-size", "4", "--limit-batches", "2", "--threads", "1"]


@pytest.mark.slow
def test_ablations_command_writes_its_table(tmp_path: Path, tiny_args: list[str]) -> None:
    import run_fer_ablations

    gen = tmp_path / "gen"
    make_class_folders(gen, classes=CK_CLASSES, subjects=1, frames=1, size=32, seed=5)
    rows = run_fer_ablations.main(tiny_args + ["--out", str(tmp_path / "abl"), "--generated-root", str(gen),
                                               "--arms", "no_ddpm", "gate_sigmoid"])
    assert [r["model"] for r in rows] == ["no_ddpm", "gate_sigmoid"]
    text = (tmp_path / "abl" / "ablations.md").read_text()
    assert "| gate_sigmoid | ckplus48 | 42 |" in text and "Generated faces" in text
    with open(tmp_path / "abl" / "ablations.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 2


@pytest.mark.slow
def test_sensitivity_command_writes_table_and_heatmap(tmp_path: Path, tiny_args: list[str]) -> None:
    import run_fer_sensitivity

    rows = run_fer_sensitivity.main(tiny_args + ["--out", str(tmp_path / "sens"), "--model", "resnet18",
                                                 "--lrs", "1e-4", "1e-3", "--batches", "2", "4"])
    assert {(r["lr"], r["batch_size"]) for r in rows} == {(1e-4, 2), (1e-4, 4), (1e-3, 2), (1e-3, 4)}
    assert (tmp_path / "sens" / "sensitivity.png").stat().st_size > 0
    assert "lr0.001_bs4" in (tmp_path / "sens" / "sensitivity.md").read_text()


@pytest.mark.slow
def test_confusion_and_learning_curve_commands(tmp_path: Path, tiny_args: list[str]) -> None:
    import run_fer_confusion
    import run_fer_learning_curves

    mats = run_fer_confusion.main(tiny_args + ["--out", str(tmp_path / "cm"), "--models", "swin_global",
                                               "resnet18"])
    assert set(mats) == {"swin_global", "resnet18"}
    n_test = {int(m.sum()) for m in mats.values()}
    assert len(n_test) == 1 and n_test.pop() > 0  # the same test faces for both models
    assert (tmp_path / "cm" / "confusion.png").stat().st_size > 0
    points = run_fer_learning_curves.main(tiny_args + ["--out", str(tmp_path / "lc"), "--models", "resnet18"])
    assert len(points) == 1 and points[0]["minutes"] > 0
    assert (tmp_path / "lc" / "learning_curves.png").stat().st_size > 0
