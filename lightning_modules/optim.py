"""Optimisation shared by the systems: parameter groups chosen by name and the optimizer/scheduler config."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

__all__ = ["build_optimization", "build_param_groups"]


def build_param_groups(
    module: nn.Module,
    lr_multipliers: dict[str, float] | None,
    weight_decays: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups chosen by parameter *name* prefix (never by position).

    Args:
        module: the model.
        lr_multipliers: ``{name_prefix: multiplier}``; a parameter joins the group of the longest matching
            prefix (of this dict or of ``weight_decays``), the rest form the base group (multiplier 1). A multiplier
            of 0 freezes the group.
        weight_decays: ``{name_prefix: weight decay}`` for the groups whose decay differs from the optimizer's
            (e.g. Self-MM's per-sub-network decays); ``""`` names the base group.

    Returns:
        a list of ``{"params": [...], "name": prefix, "lr_multiplier": m}`` dicts (plus ``"weight_decay"`` where
        given), empty groups omitted.
    """
    mults = dict(lr_multipliers or {})
    decays = dict(weight_decays or {})
    keys = sorted((set(mults) | set(decays)) - {""}, key=lambda k: -len(k))
    groups: dict[str, dict[str, Any]] = {"": {"params": [], "name": "base", "lr_multiplier": float(mults.get("", 1.0))}}
    for prefix in keys:
        groups[prefix] = {"params": [], "name": prefix, "lr_multiplier": float(mults.get(prefix, 1.0))}
    for prefix, decay in decays.items():
        groups[prefix]["weight_decay"] = float(decay)
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = next((pre for pre in keys if name.startswith(pre)), "")
        groups[key]["params"].append(p)
    unused = [pre for pre in keys if not groups[pre]["params"]]
    if unused:
        raise ValueError(f"build_param_groups: no trainable parameter name starts with {unused}")
    out = []
    for g in groups.values():
        if not g["params"]:
            continue
        if g["lr_multiplier"] == 0.0:
            for p in g["params"]:
                p.requires_grad_(False)
            continue
        out.append(g)
    return out


def build_optimization(
    net: nn.Module,
    optimizer: OptimizerCallable,
    scheduler: LRSchedulerCallable | None,
    lr_multipliers: dict[str, float] | None,
    monitor: str,
    weight_decays: dict[str, float] | None = None,
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer over :func:`build_param_groups` (each group's learning
    rate scaled by its multiplier, its weight decay overridden where given) and, when given, the scheduler stepped
    per epoch and watching ``monitor``."""
    opt = optimizer(build_param_groups(net, lr_multipliers, weight_decays))
    for group in opt.param_groups:
        group["lr"] = group["lr"] * group.get("lr_multiplier", 1.0)
    if scheduler is None:
        return opt
    return {
        "optimizer": opt,
        "lr_scheduler": {"scheduler": scheduler(opt), "monitor": monitor, "interval": "epoch"},
    }
