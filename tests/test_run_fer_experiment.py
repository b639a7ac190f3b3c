"""Result tables of ``scripts/run_fer_experiment.py`` (per-seed rows and the mean ± std summary)."""

import csv
from pathlib import Path

from scripts import run_fer_experiment as exp


def _row(model: str, seed: int, acc: float) -> dict:
    return {"model": model, "dataset": "ckplus48", "seed": seed, "accuracy": acc, "mean_class_accuracy": acc - 0.1,
            "macro_f1": acc - 0.2, "seconds": 10.0 * seed, "epochs": 3, "best_epoch": 2, "params_m": 1.5,
            "n_test": 150}


def test_single_seed_has_no_summary_and_rows_round_trip(tmp_path: Path) -> None:
    rows = [_row("swin2b", 42, 0.8), _row("swin_global", 42, 0.7)]
    exp.write_tables(rows, tmp_path, "note")
    text = (tmp_path / "results.md").read_text()
    assert "| swin2b | ckplus48 | 42 | 0.8000 |" in text and "Mean ±" not in text
    with open(tmp_path / "results.csv", newline="") as fh:
        back = list(csv.DictReader(fh))
    assert [(r["model"], r["seed"], float(r["accuracy"])) for r in back] == [("swin2b", "42", 0.8),
                                                                              ("swin_global", "42", 0.7)]


def test_summary_is_mean_and_sample_std_per_model(tmp_path: Path) -> None:
    rows = [_row("swin2b", 1, 0.80), _row("swin2b", 2, 0.90), _row("swin2b", 3, 0.70), _row("resnet50", 1, 0.6)]
    exp.write_tables(rows, tmp_path, "note")
    text = (tmp_path / "results.md").read_text()
    assert "| swin2b | ckplus48 | 3 | 0.800 ± 0.100 | 0.700 ± 0.100 | 0.600 ± 0.100 | 20 ± 10 |" in text
    assert "| resnet50 | ckplus48 | 1 | 0.600 | 0.500 | 0.400 | 10 |" in text
