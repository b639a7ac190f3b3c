"""scripts/run_fer2013_budget.py: the runs it launches, the rows, tables, curves and diagnostics it writes (no
training)."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import pytest

from scripts import experiments as ex
from scripts import run_fer2013_budget as fb

REPO = Path(__file__).resolve().parents[1]


def _args(tmp_path: Path, **kw) -> argparse.Namespace:
    base = {"data_root": str(tmp_path / "fer2013"), "warmup_fraction": 0.05, "diagnostics_every": 100,
            "limit_batches": None, "delta": []}
    return argparse.Namespace(**{**base, **kw})


def test_each_model_runs_its_shipped_config_for_the_budget_with_the_schedule_over_the_budget(tmp_path: Path) -> None:
    out = tmp_path / "out"
    swin = fb.budget_run("swin2b", 20.0, 42, _args(tmp_path), out)
    resnet = fb.budget_run("resnet18", 20.0, 42, _args(tmp_path), out)
    assert [c.name for c in swin.configs] == ["swin2b_fer2013.yaml"]
    assert swin.run_dir == out / "runs" / "20min" / "swin2b" / "seed42" and swin.labels == {"minutes": "20"}
    args = dict(zip(swin.args[::2], swin.args[1::2]))  # every option of these runs takes one value
    assert args["--trainer.max_time"] == "00:00:20:00"
    assert args["--model.init_args.scheduler"] == "lightning_modules.schedulers.BudgetCosineLR"
    assert args["--model.init_args.scheduler.init_args.budget_minutes"] == "20"
    assert args["--data.init_args.root"] == str((tmp_path / "fer2013").resolve())
    # each model keeps its own image size (the Swins 64 px, ResNet-18 48 px): one face cache per size
    assert args["--data.init_args.cache_dir"] == str(out / "cache" / "64px")
    assert str(out / "cache" / "48px") in resnet.args
    # the Swins log their diagnostics (gradient norms per stage, the gate), ResNet-18 has none to log
    diag = "--trainer.callbacks+=callbacks.training_diagnostics.TrainingDiagnostics"
    assert diag in swin.args and diag not in resnet.args
    for run in (swin, resnet):  # everything the run writes goes under its folder
        for value in run.args:
            if value.startswith(str(tmp_path)) and "cache" not in value and "fer2013" not in value:
                assert value.startswith(str(run.run_dir)), value
    for model, config in fb.MODELS.items():
        assert (REPO / config).is_file(), model
    text = (REPO / fb.MODELS["swin2b"]).read_text()
    assert "stem: conv" in text and "policy: trivial" not in text  # the FER2013 recipe


def test_a_delta_config_is_composed_over_the_models_config_and_names_its_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    deltas = [str(REPO / "configs/fer/variants/drop_path_0.yaml"), str(REPO / "configs/fer/variants/lr_1e-3.yaml")]
    run = fb.budget_run("swin2b", 7.0, 1, _args(tmp_path, delta=deltas), tmp_path / "out")
    assert [c.name for c in run.configs] == ["swin2b_fer2013.yaml", "drop_path_0.yaml", "lr_1e-3.yaml"]
    assert run.name == "swin2b+drop_path_0+lr_1e-3"
    assert run.run_dir == tmp_path / "out" / "runs" / "7min" / "swin2b+drop_path_0+lr_1e-3" / "seed1"
    composed = ex.compose_configs(run.configs)
    assert composed["model"]["init_args"]["net"]["init_args"]["drop_path_rate"] == 0.0
    assert composed["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 1e-3
    # the rest of the model's config is kept
    assert composed["model"]["init_args"]["net"]["init_args"]["stem"] == "conv"
    for split in ("train", "val"):
        (tmp_path / "fer2013" / split).mkdir(parents=True)
    with pytest.raises(SystemExit):
        fb.main(["--out", str(tmp_path / "o"), "--data-root", str(tmp_path / "fer2013"),
                 "--delta", str(tmp_path / "no.yaml")])
    assert "no.yaml: no such config file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything is written


def _record(acc: float) -> dict:
    confusion = [[0] * 7 for _ in range(7)]
    confusion[0][0], confusion[0][3] = 3, 1  # angry: 3 of 4 right
    confusion[1][1] = 2  # disgust: 2 of 2
    confusion[3][3] = 5  # happy
    return {"test": {"test/acc": acc, "test/f1_macro": 0.4, "test/mean_class_acc": 0.45}, "fit_seconds": 1200.0,
            "epochs": 12, "best_epoch": 11, "params": 4_600_000, "confusion": confusion,
            "class_names": list(fb.CLASSES),
            "curve": [{"epoch": 0, "minutes": 1.5, "val/acc": 0.4}, {"epoch": 1, "minutes": 3.0, "val/acc": 0.5}]}


def test_rows_tables_curves_and_diagnostics_from_records_and_resumed_strings(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run = fb.budget_run("swin2b", 20.0, 1, _args(tmp_path), out)
    record = _record(0.6)
    run.run_dir.mkdir(parents=True)
    (run.run_dir / ex.RECORD_FILE).write_text(json.dumps(record))
    logs = run.run_dir / "logs" / "version_0"
    logs.mkdir(parents=True)
    with (logs / "metrics.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "diag/gate_abs/fusions.3", "diag/grad_norm/total", "val/acc"])
        writer.writeheader()
        for step in range(20):
            writer.writerow({"step": step, "diag/gate_abs/fusions.3": step / 10, "diag/grad_norm/total": 2.0,
                             "val/acc": ""})
    row = {**fb.to_row(run, record), "status": "ok", "error": ""}
    assert row["recall_angry"] == pytest.approx(0.75) and row["recall_disgust"] == 1.0
    assert row["recall_fear"] != row["recall_fear"]  # no fear faces: NaN, not 0
    assert row["wall_minutes"] == pytest.approx(20.0) and row["n_test"] == 11
    resumed = {k: str(v) for k, v in {**row, "seed": 2}.items()}  # as ex.read_rows gives them back
    seed2 = fb.run_dir(out, "swin2b", "20", "2")
    seed2.mkdir(parents=True)
    (seed2 / ex.RECORD_FILE).write_text(json.dumps(record))
    fb.write_tables([row, resumed], out, "note")  # an int seed and a string seed: one figure
    md = (out / "results.md").read_text()
    assert "| swin2b | 20 | 1 | 0.6000 | 0.4000 | 0.75 | 1.00 | nan |" in md
    assert "| swin2b | 20 | 2 | 0.6000 |" in md and "0.600 ± 0.000" in md
    curves = list(csv.DictReader((out / "curves.csv").open()))
    assert [(c["seed"], c["epoch"], c["val_acc"]) for c in curves] == [("1", "0", "0.4"), ("1", "1", "0.5"),
                                                                        ("2", "0", "0.4"), ("2", "1", "0.5")]
    assert (out / "curves.png").stat().st_size > 0
    diag = {d["diagnostic"]: d for d in csv.DictReader((out / "diagnostics.csv").open())}
    # early = mean of the first 2 of 20 logged steps, late = mean of the last 2
    assert float(diag["gate_abs/fusions.3"]["early"]) == pytest.approx(0.05)
    assert float(diag["gate_abs/fusions.3"]["late"]) == pytest.approx(1.85)
    assert "| grad_norm/total | 2 | 2 |" in (out / "diagnostics.md").read_text()
    failed = {**run.identity("model"), "status": "failed", "error": "boom"}
    fb.write_tables([row, failed], out, "note")
    assert "## Failed runs" in (out / "results.md").read_text()


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="fer2013/train not found"):
        fb.main(["--out", str(tmp_path / "out"), "--data-root", str(tmp_path / "fer2013")])
