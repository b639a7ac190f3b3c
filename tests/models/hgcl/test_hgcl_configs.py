"""The HGCL experiment configs parse, build the intended ablation and run one fit step on fake MMSA data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from jsonargparse import ArgumentParser

from cli import cli_main
from lightning_modules.msa import NetFactory
from models.hgcl import HGCL
from tests.fakes import write_mmsa_pickle
from tests.helpers.configs import composed_config, config_args, config_base
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
    "hgcl_offline_codebooks": {"local", "nce"},
}
# The same loss set cannot tell an ablation from the full model when the ablated part is not a loss: each config
# must also build the structure it names (full model, changed only where the ablation says).
FULL = {"local": True, "global": True, "nce": True, "augment": True, "fusion_head": True, "cross_edges": "topk",
        "gnn": "graphconv", "eq1": True, "codebooks": "joint"}
STRUCTURE = {  # config stem -> what differs from FULL
    "hgcl_mosi": {},
    "hgcl_mosei": {},
    "hgcl_demo": {},
    "hgcl_local_only": {"global": False, "nce": False},
    "hgcl_global_only": {"local": False, "nce": False, "augment": False},
    "hgcl_no_augmentation": {"augment": False},
    "hgcl_no_contrast": {"nce": False},
    "hgcl_no_local_loss": {"augment": False},
    "hgcl_no_fusion_head": {"fusion_head": False, "eq1": False},  # projected nodes: eq. 1 would be unused
    "hgcl_cooccur_edges": {"cross_edges": "cooccur"},
    "hgcl_gcn": {"gnn": "gcn"},
    "hgcl_offline_codebooks": {"codebooks": "offline"},
}


def net_factory(net_cfg: dict[str, Any]) -> NetFactory:
    """The ``net`` entry of a config parsed as the CLI parses ``LitMSA``'s ``net`` (nested parts included)."""
    parser = ArgumentParser()
    parser.add_argument("--net", type=NetFactory)
    return parser.instantiate(parser.parse_object({"net": net_cfg})).net


def structure(net: HGCL) -> dict:
    """The parts of a built HGCL that the ablation configs switch."""
    gnn = net.gnn_local if net.gnn_local is not None else net.gnn_global
    return {
        "local": net.gnn_local is not None, "global": net.gnn_global is not None,
        "nce": net.proj_local is not None, "augment": net.augment is not None,
        "fusion_head": net.fusion is not None, "cross_edges": net.builder.cross_edges, "gnn": gnn.gnn,
        "eq1": net.attention is not None, "codebooks": "offline" if net.offline else "joint",
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
    net_cfg = composed_config(config)["model"]["init_args"]["net"]
    assert net_cfg["class_path"] == "models.hgcl.HGCL"
    torch.manual_seed(0)
    net = net_factory(net_cfg)(DIMS, LENS)
    if net.requires_prefit:  # offline codebooks: fitted on "training" batches first (LitMSA: at fit start)
        net.prefit([make_batch(seed=s) for s in range(24)])
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
            *config_args(config),
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
            # k-means needs at least codebook_size training steps: 8 fake samples hold ~40 per modality
            *(["--model.init_args.net.init_args.codebook_size", "8"] if "offline" in config.stem else []),
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


ABLATIONS = sorted(REPO.glob("configs/ablations/hgcl_*.yaml"))


@pytest.mark.parametrize("config", ABLATIONS, ids=lambda p: p.stem)
def test_ablation_is_a_small_delta_over_the_base(config: Path) -> None:
    """Each ablation is listed over the base, shows its run command in the header and sets only what it changes."""
    lines = config.read_text().splitlines()
    assert config_base(config) == REPO / "configs/hgcl_mosi.yaml"
    rel = config.relative_to(REPO)
    assert f"#   python cli.py fit --config configs/hgcl_mosi.yaml --config {rel}" in lines
    assert len([ln for ln in lines if ln.strip() and not ln.startswith("#")]) <= 15
    composed = composed_config(config)
    base = composed_config(REPO / "configs/hgcl_mosi.yaml")
    changed = {k for k, v in composed["model"]["init_args"]["net"]["init_args"].items()
               if base["model"]["init_args"]["net"]["init_args"].get(k) != v}
    assert 1 <= len(changed) <= 2, changed  # graphs: local/global also switch the InfoNCE off
    assert composed["checkpoint"]["dirpath"] == f"runs/{config.stem}/checkpoints"  # runs never overwrite the base's


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_parameter_gets_a_gradient(config: Path) -> None:
    """An ablation builds and computes only what its loss uses (DDP aborts on parameters without gradient)."""
    net_cfg = composed_config(config)["model"]["init_args"]["net"]
    torch.manual_seed(0)
    net = net_factory(net_cfg)(DIMS, LENS)
    if net.requires_prefit:
        net.prefit([make_batch(seed=s) for s in range(24)])
    batch = make_batch()
    out = net(batch)
    loss = (out["pred"] - batch["label"]).abs().mean() + sum(out["aux_losses"].values())
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_checkpoint_rebuilds_the_injected_parts(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint of an ablation that changes a part (the GNN factory's init_args) rebuilds that part for
    ``test --ckpt_path``: the nested class_path entries travel through the saved hyper-parameters."""
    monkeypatch.chdir(tmp_path)
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=8, n_valid=4, n_test=4)
    common = [*config_args(REPO / "configs/ablations/hgcl_gcn.yaml"), "--data.init_args.path", str(data),
              "--data.init_args.batch_size", "4", "--trainer.logger", "false",
              "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", str(tmp_path / "ckpt")]
    fit = cli_main(["fit", *common, "--trainer.max_epochs", "1",
                    "--model.init_args.net.init_args.gnn.init_args.num_layers", "3", "--test_after_fit", "false"])
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    assert ckpt.is_file()
    trained = fit.model.net
    assert trained.gnn_local.gnn == "gcn" and trained.gnn_local.num_layers == 3
    test = cli_main(["test", *common, "--ckpt_path", str(ckpt)])
    net = test.model.net
    assert net.gnn_local.gnn == "gcn" and net.gnn_local.num_layers == 3 and net.builder.cross_edges == "topk"
    for (name, a), (_, b) in zip(trained.state_dict().items(), net.state_dict().items(), strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu(), rtol=0, atol=0, msg=name)
