"""The LightningCLI front end: configs parse, a tiny fit writes checkpoints and its resolved config."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from cli import cli_main
from tests.fakes import write_mmsa_pickle
from tests.helpers.configs import (
    composed_config,
    config_args,
    is_training_config,
    tiny_overrides,
    training_configs,
)

REPO = Path(__file__).resolve().parents[1]
# Pieces merged with a second --config (not experiments on their own), and the diffusion configs, which need
# artifacts of earlier runs (VAE, classifier checkpoints): tests/lightning_modules/test_ldm.py instantiates those
# with tiny stand-ins.
PIECES = {"trainer", "data", "ldm"}


def experiment_configs() -> list[Path]:
    # fer/recipes and fer/variants are deltas over a full config (two --config files), not runnable alone
    return sorted(p for p in (REPO / "configs").rglob("*.yaml") if p.relative_to(REPO / "configs").parts[0] not in PIECES
                  and p.parent.name not in ("recipes", "variants"))


def _tiny_tfn_config(tmp_path: Path, data_path: Path, **trainer) -> Path:
    cfg = {
        "seed_everything": 3,
        "model": {
            "class_path": "lightning_modules.msa.LitMSA",
            "init_args": {
                "net": {"class_path": "models.tfn.TFN", "init_args": {"text_hidden": 8, "text_out": 8,
                                                                       "audio_hidden": 4, "vision_hidden": 4,
                                                                       "post_fusion_dim": 8}},
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.01}},
            },
        },
        "data": {"class_path": "datamodules.mosei.MMSADataModule",
                 "init_args": {"path": str(data_path), "batch_size": 8}},
        "trainer": {"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False, "log_every_n_steps": 1,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "logs"), "name": "tiny", "version": "v"}},
                    **trainer},
        "checkpoint": {"dirpath": str(tmp_path / "run" / "checkpoints"), "monitor": "val/mae", "mode": "min"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("config", [p for p in experiment_configs() if not is_training_config(p)],
                         ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_inference_config_parses_and_instantiates(config: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    cli = cli_main([*config_args(config), "--trainer.logger", "false"], run=False)  # a delta: base + delta
    cfg = composed_config(config)
    for obj, key in ((cli.model, "model"), (cli.datamodule, "data")):
        # the YAML's classes are the ones built, and its scalar arguments reached them
        assert f"{type(obj).__module__}.{type(obj).__qualname__}" == _resolve(cfg[key]["class_path"])
        scalars = {k: v for k, v in cfg[key].get("init_args", {}).items() if isinstance(v, str | int | float | bool)}
        assert {k: obj.hparams[k] for k in scalars} == scalars


def _resolve(class_path: str) -> str:
    """``module.Class`` of what a class path names (aliases such as ``MOSEIDataModule`` resolve to their class)."""
    import importlib

    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return f"{cls.__module__}.{cls.__qualname__}"


# One config per system and data family in the default suite; every training config with -m slow.
_FAST_LINK_CONFIGS = {"tfn_demo.yaml", "hgcl_demo.yaml", "fer/swin2b_ckplus48.yaml",
                      "fer/baselines/vit_small_ckplus48.yaml", "ldm/vae_ckplus48.yaml", "ldm/ldm_tiny.yaml"}


@pytest.mark.parametrize("config", [
    c if c.id in _FAST_LINK_CONFIGS else pytest.param(c, marks=pytest.mark.slow) for c in training_configs()
], ids=lambda c: c.id)
def test_every_training_config_builds_its_system_from_the_linked_data(config, tmp_path: Path, monkeypatch) -> None:
    """With the data-derived settings linked from the datamodule, the system (and its net) exists right after
    instantiation, with the datamodule's values: no lazy build, nothing typed twice."""
    monkeypatch.chdir(tmp_path)
    override = tiny_overrides(config, tmp_path, devices=1)
    args = [a for f in [*config.files, override] for a in ("--config", str(f))]
    cli = cli_main([*args, "--trainer.logger", "false"], run=False)
    model, dm = cli.model, cli.datamodule
    if hasattr(model, "net"):
        assert model.net is not None
    for attr, key in (("feature_dims", "feature_dims"), ("seq_lens", "seq_lens"), ("num_classes", "num_classes"),
                      ("class_names", "class_names"), ("mean", "image_mean"), ("std", "image_std")):
        if hasattr(dm, attr) and key in model.hparams:
            got = model.hparams[key]
            want = getattr(dm, attr)
            assert (list(got) if isinstance(got, tuple) else got) == (list(want) if isinstance(want, tuple) else want)


def test_fit_writes_checkpoints_config_and_metric_keys(tmp_path: Path) -> None:
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=24, n_valid=8, n_test=8)
    cfg = _tiny_tfn_config(tmp_path, data)
    cli_main(["fit", "--config", str(cfg)])
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert any(p.name.startswith("best-") for p in (run / "checkpoints").iterdir())
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"]["class_path"] == "models.tfn.TFN"
    with open(tmp_path / "logs" / "tiny" / "v" / "metrics.csv") as f:
        header = next(csv.reader(f))
    for key in ("train/loss", "train/loss_step", "val/mae", "val/acc2_has0", "val/f1_non0", "val/acc7", "test/mae",
                "test/acc2_non0", "test/corr", "test/mse", "lr-Adam/base"):
        assert key in header, key
    # The checkpoint holds the data-derived dims and rebuilds the same net.
    from lightning_modules.msa import LitMSA

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["feature_dims"] == {"text": 16, "audio": 5, "vision": 7}
    model = LitMSA.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    assert sum(p.numel() for p in model.parameters()) > 0
    # `test --ckpt_path best` in a new process finds the best checkpoint through last.ckpt.
    cli = cli_main(["test", "--config", str(cfg), "--ckpt_path", "best",
                    "--trainer.logger", "false"])
    assert Path(cli.config_init["test"]["ckpt_path"]).name.startswith("best-")


def test_resolved_config_is_overwritten_on_rerun(tmp_path: Path) -> None:
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl")
    cfg = _tiny_tfn_config(tmp_path, data, max_epochs=1)
    cli_main(["fit", "--config", str(cfg), "--test_after_fit", "false"])
    cli_main(["fit", "--config", str(cfg), "--test_after_fit", "false", "--seed_everything", "7"])
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["seed_everything"] == 7


def test_default_logger_is_offline_wandb(tmp_path: Path, monkeypatch) -> None:
    from callbacks.loggers import AutoWandbLogger

    monkeypatch.chdir(tmp_path)
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl")
    cli = cli_main(["--config", str(_tiny_tfn_config(tmp_path, data)), "--trainer.logger",
                    "callbacks.loggers.AutoWandbLogger", "--trainer.logger.save_dir", str(tmp_path / "wb")], run=False)
    assert isinstance(cli.trainer.logger, AutoWandbLogger)
    assert cli.trainer.logger._offline is True


def test_wandb_offline_without_api_key(monkeypatch) -> None:
    from callbacks import loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setattr(loggers, "_has_api_key", lambda host: False)
    online, reason = loggers.wandb_reachable(timeout=0.1)
    assert not online and "API key" in reason
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert loggers.wandb_reachable(timeout=0.1) == (False, "WANDB_MODE=offline")


def test_system_and_datamodule_share_only_linked_argument_names() -> None:
    """Lightning logs a system's and its datamodule's hyper-parameters together and refuses a key both have with
    different values; a shared name is safe only when the CLI links it (same value by construction)."""
    import inspect

    from cli import DATA_LINKS
    from datamodules.fer import FERDataModule
    from datamodules.mosei import MOSEIDataModule
    from lightning_modules.fer import LitFER
    from lightning_modules.ldm import LitLDM, LitVAE
    from lightning_modules.msa import LitMSA

    linked = {t.rsplit(".", 1)[1] for s, t in DATA_LINKS if s.rsplit(".", 1)[1] == t.rsplit(".", 1)[1]}

    def params(cls: type) -> set[str]:
        return set(inspect.signature(cls.__init__).parameters) - {"self"}

    for system in (LitMSA, LitFER, LitVAE, LitLDM):
        for dm in (MOSEIDataModule, FERDataModule):
            shared = params(system) & params(dm)
            assert shared <= linked, (system.__name__, dm.__name__, shared - linked)


def test_the_net_input_side_follows_data_image_size(tmp_path: Path, monkeypatch) -> None:
    """data.crop.image_size is the one setting of the image side: the two-branch Swin is built for 32 px when the data
    says 32 (the config writes no img_size for the net; before the link, a differing size asserted in forward)."""
    config = next(c for c in training_configs() if c.id == "fer/swin2b_ckplus48.yaml")
    monkeypatch.chdir(tmp_path)
    override = tiny_overrides(config, tmp_path, devices=1)
    args = [a for f in [*config.files, override] for a in ("--config", str(f))]
    cli = cli_main([*args, "--data.init_args.crop.image_size", "32", "--trainer.logger", "false"], run=False)
    assert cli.model.hparams.image_size == 32
    with torch.no_grad():
        logits = cli.model.net(torch.zeros(2, 3, 32, 32), torch.zeros(2, 1, 32, 32))
    assert logits.shape == (2, 7)
