"""benchmarks/gpu_check.py: the --tiny CPU run passes and writes its report, a failing or NaN item is a FAILED row
without stopping the others, the time budget skips items, and the carry-in wheel list is the project's deps beyond
the CUDA image."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.helpers.scripts import load_script

TRAINING_ITEMS = ("hgcl_mosei", "mult_mosei", "swin2b_224")


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    return load_script("benchmarks/gpu_check.py")


@pytest.fixture(scope="module")
def tiny_run(gpu_check: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("gpu_check")
    rc = gpu_check.main(["--tiny", "--out", str(out)])
    return rc, json.loads((out / "gpu_check.json").read_text()), out


def _row(report: dict, name: str) -> dict:
    rows = [r for r in report["rows"] if r["name"] == name]
    assert rows, f"no row {name!r} in {[r['name'] for r in report['rows']]}"
    return rows[0]


def test_tiny_run_reports_every_item(tiny_run: tuple[int, dict, Path]) -> None:
    _, report, out = tiny_run
    assert (out / "gpu_check.md").read_text().startswith("# GPU check (tiny)")
    names = [(r["name"], r["precision"]) for r in report["rows"]]
    assert names == [("hgcl_mosei", "32-true"), ("hgcl_mosei", "bf16-mixed"), ("mult_mosei", "bf16-mixed"),
                     ("swin2b_224", "bf16-mixed"), ("ldm_sample", "32-true")]
    assert report["preflight"]["mode"] == "tiny" and report["settings"]["steps"] == 2
    for r in report["rows"]:
        assert r["status"] == "passed", (r["name"], r["note"], r["error"])
        assert r["samples_per_s"] > 0 and r["steps"] >= 1 and r["device"] == "cpu" and r["peak_mem_mb"] is None
        if r["name"] in TRAINING_ITEMS:
            assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])
    assert "scaled_dot_product_attention calls" in _row(report, "mult_mosei")["note"]


def test_tiny_swin_paper_recipe_under_amp(tiny_run: tuple[int, dict, Path]) -> None:
    rc, report, _ = tiny_run
    row = _row(report, "swin2b_224")
    assert row["status"] == "passed", row["note"]
    assert math.isfinite(row["loss_first"]) and math.isfinite(row["loss_last"])
    assert rc == 0 and report["passed"]


def _fake_items(gpu_check: ModuleType) -> list:
    def ok(settings, precision):
        return gpu_check.Measured(samples_per_s=10.0, batch_size=2, steps=settings.steps, losses=[1.0, 0.5])

    def boom(settings, precision):
        raise RuntimeError("planted failure")

    def nan(settings, precision):
        return gpu_check.Measured(samples_per_s=10.0, batch_size=2, steps=settings.steps,
                                  losses=[1.0, float("nan")], finite=False)

    return [gpu_check.Item("first", "32-true", ok), gpu_check.Item("broken", "bf16-mixed", boom),
            gpu_check.Item("diverged", "bf16-mixed", nan), gpu_check.Item("last", "16-mixed", ok)]


def test_failing_and_nan_items_fail_their_rows_only(gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    monkeypatch.setattr(gpu_check, "ITEMS", _fake_items(gpu_check))
    rc = gpu_check.main(["--tiny", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1 and report["passed"] is False
    status = {r["name"]: r for r in report["rows"]}
    assert [r["name"] for r in report["rows"]] == ["first", "broken", "diverged", "last"]
    assert status["first"]["status"] == status["last"]["status"] == "passed"  # the item after the failures ran
    assert status["first"]["loss_first"] == 1.0 and status["first"]["loss_last"] == 0.5
    assert status["broken"]["status"] == "FAILED" and "RuntimeError: planted failure" in status["broken"]["note"]
    assert "planted failure" in status["broken"]["error"]
    assert status["diverged"]["status"] == "FAILED" and "non-finite" in status["diverged"]["note"]
    assert status["last"]["precision"] == "32-true" and "16-mixed" in status["last"]["note"]  # no fp16 AMP on CPU
    assert "| broken | cpu | bf16-mixed |" in (tmp_path / "gpu_check.md").read_text()


def test_time_budget_skips_the_remaining_items(gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(gpu_check, "ITEMS", _fake_items(gpu_check)[:1])
    rc = gpu_check.main(["--tiny", "--max-minutes", "0", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert rc == 1 and [r["status"] for r in rows] == ["skipped"] and "time budget" in rows[0]["note"]


def test_unknown_item_is_refused(gpu_check: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--tiny", "--items", "no_such_item", "--out", str(tmp_path)])
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_full_mode_without_cuda_exits_2(gpu_check: ModuleType, tmp_path: Path) -> None:
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert not (tmp_path / "gpu_check.json").exists()


def test_sdpa_counter_sees_mult_attention(gpu_check: ModuleType) -> None:
    from models.mult import MulT

    net = MulT({"text": 6, "audio": 4, "vision": 5}, dim=8, num_heads=2, num_layers=1, attention="torch").eval()
    batch = {m: torch.randn(2, 5, d) for m, d in (("text", 6), ("audio", 4), ("vision", 5))}
    batch.update({f"{m}_mask": torch.ones(2, 5, dtype=torch.bool) for m in ("text", "audio", "vision")})
    with gpu_check._count_sdpa() as calls:
        net(batch)
    assert calls[0] > 0
    assert torch.nn.functional.scaled_dot_product_attention.__name__ == "scaled_dot_product_attention"  # restored


def test_carry_list_is_the_project_deps_beyond_the_image(gpu_check: ModuleType) -> None:
    lines = gpu_check.carry_in_requirements()
    names = {line.split("==")[0] for line in lines}
    assert lines[-2:] == ["setuptools>=68", "wheel"]  # [build-system] requires, as written
    assert all("==" in line for line in lines[:-2])  # the rest pinned to the versions installed here
    pins = {str(r.name): str(r.specifier) for r in gpu_check.project_requirements()}
    assert f"diffusers{pins['diffusers']}" in lines and f"librosa{pins['librosa']}" in lines
    assert {"av", "wandb", "numba", "soundfile"} <= names  # librosa's own deps are carried too
    # the image's packages and what they pull in (numpy via torchvision, huggingface-hub via transformers) stay out
    assert not names & {"torch", "torchvision", "lightning", "timm", "torch-geometric", "torchmetrics",
                        "transformers", "numpy", "huggingface-hub"}
