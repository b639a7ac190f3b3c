"""scripts/run_msa_benchmark.py: config files, composition, tables, resume; slow: all ten models end to end."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import Any

import pytest

from scripts import experiments as ex
from scripts import run_msa_benchmark as bench
from tests.fakes import write_mmsa_pickle, write_tiny_bert


def test_config_files_keep_the_manifest_order_and_name_missing_files(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("# the base\nmodel: {a: 1}\n")
    (tmp_path / "delta.yaml").write_text("# base: other.yaml (only a comment: nothing reads it)\nmodel: {b: 2}\n")
    assert ex.config_files(["base.yaml", "delta.yaml"], root=tmp_path) == (tmp_path / "base.yaml",
                                                                          tmp_path / "delta.yaml")
    assert ex.config_files(["delta.yaml"], root=tmp_path) == (tmp_path / "delta.yaml",)  # no base from a comment
    with pytest.raises(ValueError, match="missing.yaml does not exist"):
        ex.config_files(["base.yaml", "missing.yaml"], root=tmp_path)


def test_every_model_passes_its_configs_base_first(tmp_path: Path) -> None:
    """A MOSEI delta runs after its MOSI config (the ``--config`` order of ``plan``), every file exists."""
    args = argparse.Namespace(dataset="mosei", config=[])
    for model, per_dataset in bench.MODELS.items():
        run = bench.plan(model, 1, args, tmp_path)
        assert run.configs == tuple(bench.REPO / c for c in per_dataset["mosei"])
        assert ex.command(run, python="py")[3:3 + 2 * len(run.configs)] == [
            a for c in run.configs for a in ("--config", str(c))]
    assert bench.MODELS["tfn"]["mosei"] == ("configs/tfn_mosi.yaml", "configs/tfn_mosei.yaml")


def test_compose_merges_like_jsonargparse(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(
        "model: {class_path: M, init_args: {x: 1, y: 2}}\ntrainer: {callbacks: [1, 2], logger: "
        "{class_path: W, init_args: {project: p}}}\n"
    )
    b.write_text(
        "model: {init_args: {y: 3}}\ntrainer: {callbacks: [3], logger: {class_path: C, init_args: "
        "{save_dir: s}}}\n"
    )
    cfg = ex.compose_configs([a, b])
    assert cfg["model"] == {"class_path": "M", "init_args": {"x": 1, "y": 3}}
    assert cfg["trainer"]["callbacks"] == [3]
    assert cfg["trainer"]["logger"] == {"class_path": "C", "init_args": {"save_dir": "s"}}


def test_paper_numbers_are_the_published_tables() -> None:
    """A few cells copied from shared/papers/000 Tables 1-2 (their own rows, so a typo in the data table shows)."""
    assert bench.PAPER["mosi"]["hgcl"] == {
        "acc": (84.85, 86.45),
        "recall": (84.60, 86.47),
        "f1": 86.47,
        "mse": 0.707,
    }
    assert bench.PAPER["mosi"]["self_mm"]["acc"] == (84.00, 85.98)
    assert bench.PAPER["mosei"]["raven"] == {
        "acc": (79.1, None),
        "recall": (79.5, None),
        "f1": 79.5,
        "mse": 0.614,
    }
    assert bench.PAPER["mosei"]["mult"]["mse"] == 0.58
    assert set(bench.PAPER["mosi"]) == set(bench.PAPER["mosei"]) == set(bench.MODELS)


def _row(model: str, seed: int, mae: float, acc: float) -> dict[str, Any]:
    row = {k: 0.5 for k in bench.METRICS}
    row.update(
        model=model,
        dataset="mosi",
        seed=seed,
        mae=mae,
        acc2_non0=acc,
        best_epoch=1,
        epochs=2,
        data="d",
        configs="c",
    )
    return row


def test_tables_report_mean_and_sample_std(tmp_path: Path) -> None:
    rows = [_row("tfn", 1, 1.0, 0.70), _row("tfn", 2, 1.2, 0.80), _row("hgcl", 1, 0.8, 0.9)]
    bench.write_reports(rows, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert "| TFN | 2 | 50.00 ± 0.00 | 75.00 ± 7.07 |" in md  # Non0 Acc-2 mean 75, sample std 7.07
    assert "1.100 ± 0.141" in md  # MAE
    assert "| HGCL (ours) | 1 |" in md  # one seed: no std
    assert "Mean Square Error (paper)" in md and "84.85/86.45" in md and '"Mean Square Error" = MAE' in md
    assert (tmp_path / "results_mosi.png").stat().st_size > 1000


def test_rerun_skips_finished_rows_and_appends_each_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, int]] = []

    def fake_launch(run: ex.Run, python: str, args: Any) -> dict[str, Any]:
        calls.append((run.name, run.seed))
        if run.name == "lmf" and run.seed == 2:
            raise ex.RunFailed("boom")
        (run.run_dir / "overrides.yaml").parent.mkdir(parents=True, exist_ok=True)
        (run.run_dir / "overrides.yaml").write_text("data: {init_args: {path: d}}\n")
        test = {f"test/{k}": 0.5 for k in bench.METRICS}
        return {"test": test, "epochs": 2, "best_epoch": 0}

    monkeypatch.setattr(bench, "launch", fake_launch)
    argv = ["--dataset", "mosi", "--models", "tfn", "lmf", "--seeds", "1", "2", "--out", str(tmp_path)]
    assert bench.main(argv) == 1  # one run failed; the others are kept
    assert sorted(calls) == [("lmf", 1), ("lmf", 2), ("tfn", 1), ("tfn", 2)]
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows].count("ok") == 3
    failed = [r for r in rows if r["status"] == "failed"]  # recorded, not swallowed
    assert [(r["model"], r["seed"], r["error"]) for r in failed] == [("lmf", "2", "boom")]
    assert "lmf seed 2: boom" in (tmp_path / "results.md").read_text()
    calls.clear()
    assert bench.main(argv) == 1
    assert calls == [("lmf", 2)]  # only the failed run is retried
    with (tmp_path / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 4  # the retry's row replaced the earlier failed one


def test_bad_results_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a results file of this runner"):
        bench.main(["--dataset", "mosi", "--models", "tfn", "--seeds", "1", "--out", str(tmp_path)])


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("msa_bench_data")
    kw = {"n_train": 24, "n_valid": 12, "n_test": 16, "dims": (16, 5, 7), "seed": 1}
    return {
        "aligned": str(write_mmsa_pickle(root / "a", aligned=True, seq_len=6, **kw)),
        "unaligned": str(write_mmsa_pickle(root / "u", aligned=False, seq_len=(6, 9, 8), **kw)),
        "bert": write_tiny_bert(root / "bert", max_positions=16),
    }


def _args(
    generated: dict[str, str], out: Path, models: list[str], seeds: list[str], launcher: str
) -> list[str]:
    return [
        "--dataset",
        "mosi",
        "--models",
        *models,
        "--seeds",
        *seeds,
        "--epochs",
        "2",
        "--out",
        str(out),
        "--data-aligned",
        generated["aligned"],
        "--data-unaligned",
        generated["unaligned"],
        "--no-split-check",
        "--text-encoder",
        generated["bert"],
        "--launcher",
        launcher,
        "--config",
        str(bench.REPO / "configs" / "trainer" / "cpu.yaml"),
    ]


@pytest.mark.slow
def test_all_ten_models_three_seeds_produce_both_tables_and_the_chart(
    tmp_path: Path, generated: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """All ten models x 3 seeds x 2 epochs on generated MOSI-schema files (aligned and unaligned); a rerun skips."""
    models = list(bench.DEFAULT_MODELS)
    argv = _args(generated, tmp_path, models, ["1", "2", "3"], "subprocess")
    assert bench.main(argv) == 0
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["model"], r["seed"]) for r in rows) == sorted(
        (m, s) for m in models for s in ("1", "2", "3")
    )
    for r in rows:
        assert r["epochs"] == "2" and 0.0 <= float(r["acc2_non0"]) <= 1.0 and float(r["mae"]) > 0
        aligned = r["model"] in (
            "mfn",
            "mfm",
            "mag_bert",
        )  # MMSA's need_data_aligned (HGCL's config: aligned too)
        assert r["data"] == (
            generated["aligned"] if aligned or r["model"] == "hgcl" else generated["unaligned"]
        )
    md = (tmp_path / "results.md").read_text()
    assert "### MMSA's metric names" in md and "### The HGCL paper's layout (Table 1 (CMU-MOSI))" in md
    for name in bench.DISPLAY.values():
        assert f"| {name} | 3 |" in md  # MMSA table: three seeds per model
    assert "Column mapping" in md
    assert (tmp_path / "results_mosi.png").stat().st_size > 1000

    def must_not_run(*args: Any) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(bench, "launch", must_not_run)
    assert bench.main(argv) == 0


@pytest.mark.slow
def test_subprocess_launcher_runs_the_cli(tmp_path: Path, generated: dict[str, str]) -> None:
    """The launcher (one ``python cli.py fit`` per run, DDP-safe) on one BERT model and one seed."""
    assert bench.main(_args(generated, tmp_path, ["mag_bert"], ["7"], "subprocess")) == 0
    run_dir = tmp_path / "runs" / "mosi" / "mag_bert_seed7"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "output.log").is_file()
    assert "text_encoder: " + generated["bert"] in (run_dir / "config.yaml").read_text()
