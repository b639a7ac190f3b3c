"""The experiment driver ``scripts/experiments.py``: runs of configs x seeds x overrides, the mean ± sd table writer
(markdown + CSV) and plot, failed runs recorded, config chains; every script importable and runnable."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import experiments as ex

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.stem for p in (REPO / "scripts").glob("*.py") if p.stem != "__init__")


def test_mean_and_sample_sd_on_known_numbers(tmp_path: Path) -> None:
    rows = [{"model": "a", "acc": 0.8}, {"model": "a", "acc": 0.9}, {"model": "a", "acc": 0.7},
            {"model": "b", "acc": "0.6"}, {"model": "b", "acc": ""}, {"model": "c", "acc": "nan"}]
    groups = ex.summarise(rows, ("model",), ["acc"])
    assert [g.key for g in groups] == [("a",), ("b",), ("c",)]
    a, b, c = (g.stats["acc"] for g in groups)
    assert a.mean == pytest.approx(0.8) and a.sd == pytest.approx(0.1) and a.n == 3  # sample sd (n - 1)
    assert b.mean == pytest.approx(0.6) and math.isnan(b.sd) and b.n == 1  # blank values are not counted
    assert c.n == 0 and ex.cell(c) == "-"
    assert ex.cell(a) == "0.800 ± 0.100" and ex.cell(b, ".2f") == "0.60"

    lines = ex.write_summary(rows, tmp_path / "results", ("model",),
                             [ex.Metric("acc", "accuracy (%)", ".1f", scale=100.0)],
                             display={"model": {"a": "Model A"}}, plot=["acc"], title="t")
    assert lines[0] == "| model | seeds | accuracy (%) |"
    assert lines[2] == "| Model A | 3 | 80.0 ± 10.0 |"
    assert lines[3] == "| b | 2 | 60.0 |"  # two runs, one with a value
    with (tmp_path / "results_summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert summary[0]["model"] == "a" and float(summary[0]["acc_mean"]) == pytest.approx(80.0)
    assert float(summary[0]["acc_sd"]) == pytest.approx(10.0) and summary[0]["acc_n"] == "3"
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_groups_by_config_and_override(tmp_path: Path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("model: {a: 1}\n")
    delta = tmp_path / "delta.yaml"
    delta.write_text("model: {b: 2}\n")
    runs = ex.grid({"base": [base], "delta": [base, delta]}, [1, 2], tmp_path / "out",
                   overrides={"lr1": ["--lr", "1"], "lr2": ["--lr", "2"]})
    assert len(runs) == 8
    assert [(r.name, r.seed) for r in runs[:4]] == [("base/lr1", 1), ("base/lr2", 1), ("delta/lr1", 1),
                                                   ("delta/lr2", 1)]  # seed-major
    assert runs[2].configs == (base, delta)  # the files as listed, base first
    assert runs[3].run_dir == tmp_path / "out" / "runs" / "delta" / "lr2" / "seed1"
    cmd = ex.command(runs[3], python="py")
    assert cmd[:3] == ["py", str(ex.CLI), "fit"]
    assert cmd[3:11] == ["--config", str(base), "--config", str(delta), "--seed_everything", "1", "--lr", "2"]
    assert cmd[-1].startswith("--trainer.callbacks+=") and "RunRecorder" in cmd[-1]

    def fake(run: ex.Run, python: str) -> dict[str, Any]:
        return {"test": {"test/acc": {"lr1": 0.5, "lr2": 0.7}[run.labels["override"]] + 0.1 * run.seed}}

    rows = ex.run_all(runs, lambda run, rec: {**run.identity(), "acc": rec["test"]["test/acc"]}, launcher=fake)
    by_config = {g.key: g.stats["acc"] for g in ex.summarise(rows, ("config",), ["acc"])}
    by_override = {g.key: g.stats["acc"] for g in ex.summarise(rows, ("override",), ["acc"])}
    assert by_config[("base",)].n == 4 and by_config[("base",)].mean == pytest.approx(0.75)
    assert by_override[("lr2",)].mean == pytest.approx(0.85) and by_override[("lr2",)].n == 4
    assert by_override[("lr1",)].sd == pytest.approx(0.0577350, rel=1e-5)  # 0.6, 0.6, 0.7, 0.7


def test_a_failed_run_is_recorded_not_swallowed(tmp_path: Path) -> None:
    runs = [ex.Run(name, seed, (), tmp_path / name / str(seed)) for name in ("ok", "bad") for seed in (1, 2)]

    def fake(run: ex.Run, python: str) -> dict[str, Any]:
        if run.name == "bad" and run.seed == 2:
            raise ex.RunFailed("cli.py fit exited with 1; see output.log\ntraceback ...")
        return {"test": {"test/acc": 0.5}}

    results = tmp_path / "results.csv"
    rows = ex.run_all(runs, lambda run, rec: {**run.identity(), "acc": rec["test"]["test/acc"]}, results=results,
                      columns=["name", "seed", "acc"], launcher=fake)
    with results.open() as f:
        saved = list(csv.DictReader(f))
    assert [(r["name"], r["seed"], r["status"]) for r in saved] == [
        ("ok", "1", "ok"), ("ok", "2", "ok"), ("bad", "1", "ok"), ("bad", "2", "failed")]
    assert saved[-1]["error"] == "cli.py fit exited with 1; see output.log"  # the first line of the error
    assert ex.failures(rows) == ["bad seed 2: cli.py fit exited with 1; see output.log"]
    with pytest.raises(ex.RunFailed, match="1 run\\(s\\) failed"):
        ex.check(rows)
    # the summary counts the finished runs only; a rerun retries the failed run alone
    assert {g.key: g.n for g in ex.summarise(rows, ("name",), ["acc"])} == {("ok",): 2, ("bad",): 1}
    launched = []
    rows = ex.run_all(runs, lambda run, rec: {**run.identity(), "acc": 0.5}, rows=ex.read_rows(results),
                      results=results, columns=["name", "seed", "acc"], resume=True,
                      launcher=lambda run, python: launched.append((run.name, run.seed)) or {})
    assert launched == [("bad", 2)]
    assert len(rows) == 4 and all(ex.ok(r) for r in rows)


def test_launch_records_a_nonzero_exit(tmp_path: Path) -> None:
    """A real subprocess: ``cli.py`` refusing an unknown option is a :class:`RunFailed` naming the log."""
    run = ex.Run("broken", 1, (), tmp_path / "run", ("--no_such_option", "1"))
    with pytest.raises(ex.RunFailed, match="exited with 2; see .*output.log"):
        ex.launch(run)
    assert "--no_such_option" in (tmp_path / "run" / "output.log").read_text()


def test_config_files_and_composition(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("# the base\nmodel: {class_path: M, init_args: {x: 1, y: 2}}\n")
    (tmp_path / "delta.yaml").write_text("# a delta\nmodel: {init_args: {y: 3}}\n")
    files = ex.config_files(["base.yaml", "delta.yaml"], root=tmp_path)
    assert files == (tmp_path / "base.yaml", tmp_path / "delta.yaml")
    assert ex.compose_configs(files)["model"] == {"class_path": "M", "init_args": {"x": 1, "y": 3}}


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_imports_as_a_package_module(name: str) -> None:
    import importlib

    module = importlib.import_module(f"scripts.{name}")
    assert Path(module.__file__).parent == REPO / "scripts"
    assert "sys.path" not in (REPO / "scripts" / f"{name}.py").read_text()


def test_scripts_run_as_files() -> None:
    """``python scripts/<name>.py --help`` works from the repository root and elsewhere (the package is installed)."""
    for cwd in (REPO, REPO / "docs"):
        res = subprocess.run([sys.executable, str(REPO / "scripts" / "run_hgcl_variants.py"), "--help"], cwd=cwd,
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0 and "--variant" in res.stdout, res.stderr[-2000:]
