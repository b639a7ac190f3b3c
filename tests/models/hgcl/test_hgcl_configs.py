"""The HGCL experiment configs parse, build the intended ablation and run one fit step on fake MMSA data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from cli import cli_main
from models.hgcl import HGCL
from tests.fakes import write_mmsa_pickle
from tests.models.hgcl.test_hgcl import DIMS, LENS, make_batch

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted([*REPO.glob("configs/hgcl_*.yaml"), *REPO.glob("configs/ablations/hgcl_*.yaml")])
EXPECTED = {  # config stem -> aux losses present in a training step
    "hgcl_mosi": {"local", "nce", "dvae"},
    "hgcl_mosei": {"local", "nce", "dvae"},
    "hgcl_demo": {"local", "nce", "dvae"},
    "hgcl_local_only": {"local"},
    "hgcl_global_only": {"dvae"},
    "hgcl_no_augmentation": {"local", "nce", "dvae"},
    "hgcl_no_contrast": {"local", "dvae"},
    "hgcl_no_local_loss": {"nce", "dvae"},
    "hgcl_no_fusion_head": {"local", "nce", "dvae"},
    "hgcl_cooccur_edges": {"local", "nce", "dvae"},
    "hgcl_gcn": {"local", "nce", "dvae"},
}
# The same loss set cannot tell an ablation from the full model when the ablated part is not a loss: each config
# must also build the structure it names (full model, changed only where the ablation says).
FULL = {"local": True, "global": True, "nce": True, "augment": True, "fusion_head": True, "cross_edges": "topk",
        "gnn": "graphconv"}
STRUCTURE = {  # config stem -> what differs from FULL
    "hgcl_mosi": {},
    "hgcl_mosei": {},
    "hgcl_demo": {},
    "hgcl_local_only": {"global": False, "nce": False},
    "hgcl_global_only": {"local": False, "nce": False, "augment": False},
    "hgcl_no_augmentation": {"augment": False},
    "hgcl_no_contrast": {"nce": False},
    "hgcl_no_local_loss": {"augment": False},
    "hgcl_no_fusion_head": {"fusion_head": False},
    "hgcl_cooccur_edges": {"cross_edges": "cooccur"},
    "hgcl_gcn": {"gnn": "gcn"},
}


def structure(net: HGCL) -> dict:
    """The parts of a built HGCL that the ablation configs switch."""
    gnn = net.gnn_local if net.gnn_local is not None else net.gnn_global
    return {
        "local": net.gnn_local is not None, "global": net.gnn_global is not None,
        "nce": net.proj_local is not None, "augment": net.augment is not None,
        "fusion_head": net.fusion is not None, "cross_edges": net.builder.cross_edges, "gnn": gnn.gnn,
    }


def test_every_hgcl_config_is_checked():
    assert {p.stem for p in CONFIGS} == set(EXPECTED) == set(STRUCTURE)


def test_ablation_structures_differ_from_the_full_model():
    """Every ablation config expects something the full model does not have (so its checks can fail)."""
    for stem, delta in STRUCTURE.items():
        if stem not in ("hgcl_mosi", "hgcl_mosei", "hgcl_demo"):
            assert delta and all(FULL[k] != v for k, v in delta.items()), stem


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_hgcl_config_builds_the_intended_net(config: Path) -> None:
    """The YAML's net arguments build the intended ablation (CLI parsing itself: tests/test_cli.py)."""
    net_cfg = yaml.safe_load(config.read_text())["model"]["init_args"]["net"]
    assert net_cfg["class_path"] == "models.hgcl.HGCL"
    torch.manual_seed(0)
    net = HGCL(DIMS, LENS, **net_cfg.get("init_args", {}))
    out = net(make_batch())
    assert set(out["aux_losses"]) == EXPECTED[config.stem]
    assert structure(net) == {**FULL, **STRUCTURE[config.stem]}
    assert ("local_graph" in out["logs"]) == structure(net)["augment"]  # the augmented view was really built


# About a second each: in the default run, since every ablation config must run (issue: fast_dev_run).
@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_hgcl_config_fast_dev_run(config: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=8, n_valid=4, n_test=4)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(config),
            "--data.init_args.path",
            str(data),
            "--data.init_args.batch_size",
            "4",
            "--trainer.logger",
            "false",
            "--trainer.fast_dev_run",
            "true",
            "--trainer.enable_progress_bar",
            "false",
        ]
    )
    losses = {
        k.removeprefix("train/loss_")
        for k in cli.trainer.callback_metrics
        if k.startswith("train/loss_") and k not in ("train/loss_task", "train/loss_step", "train/loss_epoch")
    }
    assert losses == EXPECTED[config.stem]
    assert structure(cli.model.net) == {**FULL, **STRUCTURE[config.stem]}
    assert (tmp_path / "runs").exists() or cli.trainer.state.finished
