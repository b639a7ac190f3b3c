"""Optimisation shared by the systems: parameter groups chosen by name and the optimizer/scheduler config."""

from __future__ import annotations

import logging
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.plugins.precision import MixedPrecision
from torch import nn

from lightning_modules.schedulers import scheduler_interval

log = logging.getLogger(__name__)

__all__ = ["NO_DECAY_NAME_PARTS", "build_optimization", "build_param_groups", "no_weight_decay_names"]


#: Name fragments of parameters that never get weight decay besides biases and norms: position-bias tables and
#: position embeddings (timm's Swin/ViT declare them through ``no_weight_decay()``; the fragments also catch
#: modules that do not).
NO_DECAY_NAME_PARTS = ("relative_position_bias_table", "pos_embed", "position_bias", "cls_token")


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Full names of the parameters of ``module`` that are exempt from weight decay.

    Exempt: every bias and every 1-D parameter (norm scales and shifts: LayerNorm, BatchNorm, GroupNorm, RMSNorm
    ...), names containing :data:`NO_DECAY_NAME_PARTS`, and what any submodule declares through timm's
    ``no_weight_decay()`` (names relative to that submodule) or ``no_weight_decay_keywords()`` (fragments) -
    timm's own rule (``timm.optim.param_groups_weight_decay``) applied to submodules at any depth, since the
    project's nets wrap timm models.
    """
    declared: set[str] = set()
    keywords: set[str] = set(NO_DECAY_NAME_PARTS)
    for prefix, sub in module.named_modules():
        dot = f"{prefix}." if prefix else ""
        if callable(getattr(sub, "no_weight_decay", None)):
            declared.update(f"{dot}{n}" for n in sub.no_weight_decay())
        if callable(getattr(sub, "no_weight_decay_keywords", None)):
            keywords.update(sub.no_weight_decay_keywords())
    out = set()
    for name, p in module.named_parameters():
        if p.ndim <= 1 or name.endswith(".bias") or name in declared or any(k in name for k in keywords):
            out.add(name)
    return out


def build_param_groups(
    module: nn.Module,
    lr_multipliers: dict[str, float] | None,
    weight_decays: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups chosen by parameter *name* prefix (never by position): learning-rate and
    weight-decay prefixes x decay / no-decay.

    Args:
        module: the model.
        lr_multipliers: ``{name_prefix: multiplier}``; a parameter joins the group of the longest matching
            prefix (of this dict or of ``weight_decays``), the rest form the base group (multiplier 1). A multiplier
            of 0 freezes the group.
        weight_decays: ``{name_prefix: weight decay}`` for the groups whose decay differs from the optimizer's
            (e.g. Self-MM's per-sub-network decays); ``""`` names the base group.

    Returns:
        a list of ``{"params": [...], "name": ..., "lr_multiplier": m}`` dicts (plus ``"weight_decay"`` where
        ``weight_decays`` gives one), empty groups omitted. Each prefix group is split in two: the parameters of
        :func:`no_weight_decay_names` go to ``"<name>/no_decay"`` with ``weight_decay=0.0``; the others keep the
        optimizer's weight decay, or the group's from ``weight_decays``.
    """
    mults = dict(lr_multipliers or {})
    decays = dict(weight_decays or {})
    keys = sorted((set(mults) | set(decays)) - {""}, key=lambda k: -len(k))
    exempt = no_weight_decay_names(module)
    groups: dict[str, dict[str, Any]] = {
        "": {"params": [], "no_decay": [], "name": "base", "lr_multiplier": float(mults.get("", 1.0))}
    }
    for prefix in keys:
        groups[prefix] = {"params": [], "no_decay": [], "name": prefix, "lr_multiplier": float(mults.get(prefix, 1.0))}
    for prefix, decay in decays.items():
        groups[prefix]["weight_decay"] = float(decay)
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = next((pre for pre in keys if name.startswith(pre)), "")
        groups[key]["no_decay" if name in exempt else "params"].append(p)
    unused = [pre for pre in keys if not (groups[pre]["params"] or groups[pre]["no_decay"])]
    if unused:
        raise ValueError(f"build_param_groups: no trainable parameter name starts with {unused}")
    out = []
    for g in groups.values():
        if g["lr_multiplier"] == 0.0:
            for p in g["params"] + g["no_decay"]:
                p.requires_grad_(False)
            continue
        if g["params"]:
            group = {"params": g["params"], "name": g["name"], "lr_multiplier": g["lr_multiplier"]}
            if "weight_decay" in g:
                group["weight_decay"] = g["weight_decay"]
            out.append(group)
        if g["no_decay"]:
            out.append({"params": g["no_decay"], "name": f"{g['name']}/no_decay", "lr_multiplier": g["lr_multiplier"],
                        "weight_decay": 0.0})
    return out


def _clips_under_amp(trainer: Trainer | None) -> bool:
    """True when ``trainer`` clips gradients under Lightning's mixed-precision plugin (fp16 or bf16 autocast)."""
    if trainer is None:
        return False
    return isinstance(trainer.precision_plugin, MixedPrecision) and bool(trainer.gradient_clip_val)


def build_optimization(
    net: nn.Module,
    optimizer: OptimizerCallable,
    scheduler: LRSchedulerCallable | None,
    lr_multipliers: dict[str, float] | None,
    monitor: str,
    weight_decays: dict[str, float] | None = None,
    trainer: Trainer | None = None,
) -> Any:
    """What ``configure_optimizers`` returns: the optimizer over :func:`build_param_groups` (each group's learning
    rate scaled by its multiplier, its weight decay overridden where given) and, when given, the scheduler stepped
    per epoch (per optimizer step for one that asks, :func:`lightning_modules.schedulers.scheduler_interval`) and
    watching ``monitor``.

    A ``fused`` optimizer (``torch.optim.AdamW(fused=True)``, the face configs' CPU fast path) unscales gradients
    inside its step, so Lightning's mixed-precision plugin refuses to clip its gradients ("does not allow for gradient
    clipping"). When ``trainer`` runs mixed precision with gradient clipping, the optimizer is built with
    ``fused=False`` instead (same update, the multi-tensor path), said once in the log."""
    groups = build_param_groups(net, lr_multipliers, weight_decays)
    opt = optimizer(groups)
    if getattr(opt, "defaults", {}).get("fused") and _clips_under_amp(trainer):
        log.info("%s(fused=True) cannot clip gradients under %s: built with fused=False (gradient_clip_val=%s)",
                 type(opt).__name__, trainer.precision, trainer.gradient_clip_val)
        opt = optimizer(build_param_groups(net, lr_multipliers, weight_decays), fused=False)
    for group in opt.param_groups:
        group["lr"] = group["lr"] * group.get("lr_multiplier", 1.0)
    if scheduler is None:
        return opt
    sched = scheduler(opt)
    return {
        "optimizer": opt,
        "lr_scheduler": {"scheduler": sched, "monitor": monitor, "interval": scheduler_interval(sched)},
    }
