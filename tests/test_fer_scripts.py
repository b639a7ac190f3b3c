"""Smoke runs of the face-experiment commands at a tiny size (1 epoch, 2 batches) on fake CK+-style folders."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from scripts import run_fer_ablations, run_fer_confusion, run_fer_learning_curves, run_fer_sensitivity
from scripts import run_fer_experiment as exp
from tests.fakes_images import CK_CLASSES, make_class_folders


@pytest.fixture
def tiny_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    monkeypatch.setattr("sys.argv", ["script"])
    make_class_folders(tmp_path / "data" / "ckplus48", classes=CK_CLASSES, subjects=7, frames=1, size=32)
    return ["--data-root", str(tmp_path / "data"), "--datasets", "ckplus48", "--epochs", "1", "--max-minutes", "5",
            "--image-size", "64", "--batch-size", "4", "--limit-batches", "2", "--threads", "1"]


@pytest.mark.slow
def test_ablations_command_writes_its_table(tmp_path: Path, tiny_args: list[str]) -> None:
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
    rows = run_fer_sensitivity.main(tiny_args + ["--out", str(tmp_path / "sens"), "--model", "resnet18",
                                                 "--lrs", "1e-4", "1e-3", "--batches", "2", "4"])
    assert {(r["lr"], r["batch_size"]) for r in rows} == {(1e-4, 2), (1e-4, 4), (1e-3, 2), (1e-3, 4)}
    assert (tmp_path / "sens" / "sensitivity.png").stat().st_size > 0
    assert "lr0.001_bs4" in (tmp_path / "sens" / "sensitivity.md").read_text()


@pytest.mark.slow
def test_confusion_and_learning_curve_commands(tmp_path: Path, tiny_args: list[str]) -> None:
    mats = run_fer_confusion.main(tiny_args + ["--out", str(tmp_path / "cm"), "--models", "swin_global",
                                               "resnet18"])
    assert set(mats) == {"swin_global", "resnet18"}
    n_test = {int(m.sum()) for m in mats.values()}
    assert len(n_test) == 1 and n_test.pop() > 0  # the same test faces for both models
    assert (tmp_path / "cm" / "confusion.png").stat().st_size > 0
    points = run_fer_learning_curves.main(tiny_args + ["--out", str(tmp_path / "lc"), "--models", "resnet18"])
    assert len(points) == 1 and points[0]["minutes"] > 0
    assert (tmp_path / "lc" / "learning_curves.png").stat().st_size > 0


def test_confusion_figure_from_saved_runs(tmp_path: Path, tiny_args: list[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    names = ["a", "b", "c"]
    runs = tmp_path / "table1"
    saved = {("m1", 42): [[3, 1, 0], [0, 2, 2], [1, 0, 1]], ("m1", 1): [[4, 0, 0], [1, 3, 0], [0, 0, 2]],
             ("m2", 42): [[0, 4, 0], [0, 4, 0], [0, 2, 0]], ("m2", 1): [[2, 2, 0], [0, 4, 0], [1, 1, 0]]}
    for (model, seed), counts in saved.items():
        exp.write_confusion(runs / "runs" / "ckplus48" / model / f"seed{seed}" / exp.CONFUSION_FILE,
                            torch.tensor(counts), names)
    monkeypatch.setitem(exp.MODELS, "m1", "unused")
    monkeypatch.setitem(exp.MODELS, "m2", "unused")
    args = tiny_args + ["--out", str(tmp_path / "fig"), "--from-runs", str(runs), "--models", "m1", "m2",
                        "--seeds", "42", "1"]
    mats = run_fer_confusion.main(args)
    assert mats["m1"].tolist() == [[7, 1, 0], [1, 5, 2], [1, 0, 3]]  # summed over the two seeds
    assert mats["m2"][:, 2].sum() == 0
    assert "| a | 0.875 | 0.250 |" in (tmp_path / "fig" / "confusion.md").read_text()
    assert (tmp_path / "fig" / "confusion.png").stat().st_size > 0
    # a run that tested other faces cannot be summed; a broken file is named
    exp.write_confusion(runs / "runs" / "ckplus48" / "m2" / "seed1" / exp.CONFUSION_FILE,
                        torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1]]), names)
    with pytest.raises(ValueError, match="tested 3 faces, the other runs 10"):
        run_fer_confusion.main(args)
    bad = runs / "runs" / "ckplus48" / "m2" / "seed1" / exp.CONFUSION_FILE
    bad.write_text('{"class_names": ["a", "b", "c"], "counts": [[1, 2], [3, 4]]}')
    with pytest.raises(ValueError, match="seed1/test_confusion.json: expected"):
        run_fer_confusion.main(args)
    with pytest.raises(FileNotFoundError, match="seed7/test_confusion.json: no saved test confusion"):
        run_fer_confusion.main(args[:-3] + ["--seeds", "7"])
