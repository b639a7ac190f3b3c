"""HGCL with injected parts (graph builder, augmenter, GNN factory; issue #25) reproduces the numbers of the HGCL
that built those parts from its own flat arguments, for the same seed.

The reference losses were recorded at commit 9a21190 (before the parts were injected) by building
``HGCL(DIMS, LENS, **old_kwargs)`` with the *flat* arguments of that version (``old_kwargs`` in each case's
comment), then running :func:`loss_after_three_steps` below unchanged (``torch.set_num_threads(1)``, CPU, torch
2.x float32). The same code with the default two threads gave values within 3e-7 of these.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from lightning_modules.msa import NetFactory
from models.hgcl import HGCL, GNNEncoder, GraphAugment, MultimodalGraphBuilder

REPO = Path(__file__).resolve().parents[3]
DIMS = {"text": 12, "audio": 5, "vision": 7}
LENS = {"text": 10, "audio": 10, "vision": 10}

# name -> (new keyword arguments of HGCL, loss recorded with the old flat arguments)
CASES: dict[str, tuple[dict[str, Any], float]] = {
    # old_kwargs: {} (HGCL's defaults = configs/hgcl_mosi.yaml's net)
    "mosi": ({}, 1.6465994119644165),
    # old_kwargs: {"augmentation": "none"}
    "no_augmentation": ({"augmentation": "none"}, 1.8105075359344482),
    # old_kwargs: {"gnn": "gcn", "cross_edges": "cooccur", "gnn_sharing": "shared", "dropout": 0.2, "sigma": 0.2,
    #              "p_add": 0.05, "p_drop": 0.2, "gnn_layers": 3, "window": 1}
    "gcn_cooccur_shared": (
        {
            "graph_builder": MultimodalGraphBuilder(cross_edges="cooccur", window=1),
            "augmenter": GraphAugment(sigma=0.2, p_add=0.05, p_drop=0.2),
            "gnn": partial(GNNEncoder, num_layers=3, gnn="gcn", dropout=0.2),
            "gnn_sharing": "shared",
            "dropout": 0.2,
        },
        2.077416181564331,
    ),
    # old_kwargs: {"graphs": "local", "nce": "none"}
    "local_only": ({"graphs": "local", "nce": "none"}, 0.7198945879936218),
}


def tiny_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {m: torch.randn(4, LENS[m], DIMS[m], generator=g) for m in LENS}
    valid = torch.tensor([10, 8, 5, 3])
    for m in LENS:
        batch[f"{m}_mask"] = torch.arange(LENS[m])[None] < valid[:, None]
    batch["label"] = torch.randn(4, generator=g)
    return batch


def loss_after_three_steps(build) -> float:
    """Seed 1111, build the net, 3 Adam steps (configs/hgcl_mosi.yaml's lr and weight decay) on one batch, then the
    training-mode loss (L1 task loss + weighted auxiliary losses) of a 4th forward."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(1111)
        net = build()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
        batch = tiny_batch()

        def loss() -> torch.Tensor:
            out = net(batch)
            return (out["pred"] - batch["label"]).abs().mean() + sum(out["aux_losses"].values())

        for _ in range(3):
            value = loss()
            opt.zero_grad()
            value.backward()
            opt.step()
        with torch.no_grad():
            return float(loss())
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", CASES)
def test_injected_parts_reproduce_the_recorded_loss(name: str) -> None:
    kwargs, expected = CASES[name]
    got = loss_after_three_steps(lambda: HGCL(DIMS, LENS, **kwargs))
    assert got == pytest.approx(expected, abs=1e-6, rel=0)


def _config_net(*configs: str) -> dict[str, Any]:
    """The net entry of ``configs`` (a base, then deltas that touch only the net's top-level init_args or one
    part's init_args)."""
    net: dict[str, Any] = {}
    for rel in configs:
        spec = yaml.safe_load((REPO / rel).read_text())["model"]["init_args"]["net"]
        net.setdefault("class_path", spec.get("class_path"))
        args = net.setdefault("init_args", {})
        for key, value in (spec.get("init_args") or {}).items():
            if isinstance(value, dict) and isinstance(args.get(key), dict):
                args[key] = {**args[key], "init_args": {**args[key]["init_args"], **value["init_args"]}}
            else:
                args[key] = value
    return net


@pytest.mark.parametrize(
    ("configs", "name"),
    [(("configs/hgcl_mosi.yaml",), "mosi"),
     (("configs/hgcl_mosi.yaml", "configs/ablations/hgcl_no_augmentation.yaml"), "no_augmentation")],
)
def test_config_built_net_reproduces_the_recorded_loss(configs: tuple[str, ...], name: str) -> None:
    """The shipped YAML (parts as class_path + init_args, parsed as the CLI parses LitMSA's net) builds the same
    net as before."""
    parser = ArgumentParser()
    parser.add_argument("--net", type=NetFactory)
    factory = parser.instantiate(parser.parse_object({"net": _config_net(*configs)})).net
    got = loss_after_three_steps(lambda: factory(DIMS, LENS))
    assert got == pytest.approx(CASES[name][1], abs=1e-6, rel=0)
