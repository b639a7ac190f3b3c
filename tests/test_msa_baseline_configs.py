"""The baseline configs (``configs/baselines/msa_*_mosi.yaml``) parse, build and run one fast_dev_run step on fakes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli import cli_main
from tests.fakes import write_mmsa_pickle, write_tiny_bert

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "baselines"
CONFIGS = sorted(CONFIG_DIR.glob("msa_*_mosi.yaml"))


@pytest.fixture(scope="module")
def tiny_bert_full_vocab(tmp_path_factory: pytest.TempPathFactory) -> str:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert_cfg"))


def test_all_baseline_configs_present() -> None:
    names = {p.stem for p in CONFIGS}
    assert names == {f"msa_{m}_mosi" for m in ("lmf", "mfn", "mult", "misa", "self_mm", "mag_bert")}
    for path in CONFIGS:
        first = path.read_text().splitlines()[0]
        assert first.startswith("#"), f"{path.name}: the first line must be a comment"
        assert f"configs/baselines/{path.name}" in path.read_text(), f"{path.name}: run command missing"


@pytest.mark.parametrize("config", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_baseline_config_fast_dev_run(
    config: Path, tmp_path: Path, tiny_bert_full_vocab: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["cli.py"])
    data = write_mmsa_pickle(tmp_path / "data")
    args = [
        "--config",
        str(config),
        "--data.init_args.path",
        str(data),
        "--data.init_args.dataset_name",
        "null",  # the fakes do not have the standard split sizes
        "--trainer.fast_dev_run",
        "true",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
    ]
    if "mag_bert" in config.stem:
        args += ["--model.init_args.net.init_args.text_encoder", tiny_bert_full_vocab]
    cli = cli_main(args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
