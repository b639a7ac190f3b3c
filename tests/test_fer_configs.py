"""The face-expression experiment configs (``configs/fer/``) run end to end on tiny fake CK+-style folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli import cli_main
from lightning_modules.fer import LitFER
from tests.fakes_images import CK_CLASSES, make_class_folders
from tests.helpers.configs import config_args

REPO = Path(__file__).resolve().parents[1]
FER = REPO / "configs" / "fer"
# recipes/ and variants/ hold deltas over a full config (run with two --config files)
CPU_CONFIGS = sorted(p for p in FER.rglob("*.yaml") if p.stem not in ("swin2b_learning_emotions", "predict_video")
                     and p.parent.name not in ("recipes", "variants"))


def _fast_dev_run(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str):
    """``fit --trainer.fast_dev_run`` of ``config`` (``extra``: more command-line arguments) on tiny CK+-style
    folders; checks what every face config must log and returns the CLI."""
    monkeypatch.setattr("sys.argv", ["cli.py"])
    root = tmp_path / "ck"
    make_class_folders(root, classes=CK_CLASSES, subjects=7, frames=1, size=32)
    args = [
        "fit", *config_args(config), "--config", str(REPO / "configs" / "data" / "ckplus48.yaml"),
        "--data.init_args.root", str(root), "--data.init_args.cache_dir", str(tmp_path / "cache"),
        "--data.init_args.batch_size", "4",
        "--data.init_args.num_workers", "0", "--data.init_args.progress", "none",
        "--trainer.fast_dev_run", "true", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", "callbacks.confusion_matrix.ConfusionMatrixLogger",
        "--trainer.callbacks.dirpath", str(tmp_path / "cm"),
        "--checkpoint.dirpath", str(tmp_path / "ckpt"), *extra,
    ]
    cli = cli_main(args)
    assert cli.model.hparams.num_classes == len(CK_CLASSES)
    assert "val/acc" in cli.trainer.callback_metrics and "val/f1_macro" in cli.trainer.callback_metrics
    assert list((tmp_path / "cm").glob("val_epoch000.png"))
    return cli


@pytest.mark.slow  # 15-30 s each on 2 busy cores (data preparation + CLI); parsing is covered by tests/test_cli.py
@pytest.mark.parametrize("config", CPU_CONFIGS, ids=lambda p: p.stem)
def test_fer_config_fast_dev_run(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = _fast_dev_run(config, tmp_path, monkeypatch)
    assert cli.trainer.optimizers[0].defaults["fused"] is True  # the configs ask for torch's fused AdamW


def test_bf16_variant_trains_the_fer2013_recipe_under_cpu_autocast(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``configs/fer/variants/bf16.yaml`` over the FER2013 two-branch recipe: the net's matmuls run in bfloat16 in
    training and validation, the weights stay float32, and AdamW is built unfused because the recipe
    clips gradients (a fused AdamW unscales inside its step, so Lightning's AMP plugin could not clip its gradients)."""
    seen: list[torch.dtype] = []
    original = LitFER.forward

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(LitFER, "forward", spy)
    cli = _fast_dev_run(REPO / "configs/fer/variants/bf16.yaml", tmp_path, monkeypatch)
    assert cli.trainer.precision == "bf16-mixed"
    assert seen and set(seen) == {torch.bfloat16}, seen  # training and validation steps both under autocast
    assert all(p.dtype == torch.float32 for p in cli.model.parameters())
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"]).item()
    assert cli.trainer.optimizers[0].defaults["fused"] is False


def test_every_fer_config_has_run_command() -> None:
    for path in FER.rglob("*.yaml"):
        text = path.read_text()
        assert text.startswith("#"), path
        assert f"configs/fer/{path.relative_to(FER).as_posix()}" in text, f"{path}: run command missing"
