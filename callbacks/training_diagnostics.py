"""Training diagnostics for collapse hunting: gradient norms per stage and the local gate's activations.

Logged every ``every_n_steps`` optimizer steps (keys under ``diag/``, through the trainer's logger, so a CSV logger
writes them to ``metrics.csv`` beside ``train/loss``):

* ``diag/grad_norm/<group>``: L2 norm of the gradients of each parameter group, *before* clipping (Lightning calls
  ``on_before_optimizer_step`` before it clips), plus ``diag/grad_norm/total``. A group is the parameter name up
  to its first numeric component (``net.global_branch.layers.2``, ``net.fusions.0``), or its first ``depth``
  components otherwise (``net.global_branch.head``).
* ``diag/gate_mean/<fusion>``, ``diag/gate_abs/<fusion>``, ``diag/gate_saturated/<fusion>``: mean, mean absolute
  value and saturated share of the local gate ``S_i`` (eq. 4), read from the parameter-free probes of
  :class:`models.swin_two_branch.StageFusion` (``gate_probe``). Saturated: ``S < 0.02`` or ``S > 0.98`` for a
  sigmoid gate, ``|S| > 0.98`` for a tanh (LAVT) gate.
* ``diag/fused_rms/<fusion>``: root-mean-square of the fused feature ``F_i`` (``fused_probe``).
* ``diag/logit_spread``: standard deviation of the logits across the batch, averaged over classes; it falls to
  ~0 when the net outputs the same logits for every face (collapse), before the epoch-level collapse warning of
  :class:`lightning_modules.fer.LitFER` can fire.

Nets without gate probes (timm baselines, the global-only Swin) get gradient norms only.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn

log = logging.getLogger(__name__)

_NUMERIC = re.compile(r"^\d+$")


def parameter_group(name: str, depth: int = 3) -> str:
    """The diagnostic group of a parameter name: up to the first numeric component, else ``depth`` components."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if _NUMERIC.match(part):
            return ".".join(parts[: i + 1])
    return ".".join(parts[: min(depth, len(parts) - 1)]) or parts[0]


def grad_norms(module: nn.Module, depth: int = 3) -> dict[str, float]:
    """L2 gradient norm per :func:`parameter_group` and ``"total"`` (parameters without gradient are skipped)."""
    sq: dict[str, Tensor] = {}
    for name, p in module.named_parameters():
        if p.grad is None:
            continue
        key = parameter_group(name, depth)
        g = p.grad.detach().float().pow(2).sum()
        sq[key] = sq[key] + g if key in sq else g
    out = {k: float(v.sqrt()) for k, v in sq.items()}
    if sq:
        out["total"] = float(torch.stack(list(sq.values())).sum().sqrt())
    return out


class TrainingDiagnostics(Callback):
    """Log per-stage gradient norms, gate activations and logit spread every ``every_n_steps`` steps.

    Args:
        every_n_steps: logging period in optimizer steps (step 0 is always logged).
        depth: name components of a group without a numeric component (see :func:`parameter_group`).
    """

    def __init__(self, every_n_steps: int = 25, depth: int = 3) -> None:
        super().__init__()
        if every_n_steps < 1 or depth < 1:
            raise ValueError(f"TrainingDiagnostics: every_n_steps and depth must be >= 1, got {every_n_steps}, {depth}")
        self.every_n_steps = every_n_steps
        self.depth = depth
        self._active = False
        self._step = 0
        self._stats: dict[str, float] = {}
        self._handles: list[Any] = []
        #: every logged record (``{"step": ..., "diag/...": ...}``), in order; :attr:`last` is the latest one
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ hooks on the net
    def _gate_hook(self, key: str, tanh: bool):
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            if not self._active:
                return
            s = out.detach().float()
            sat = (s.abs() > 0.98) if tanh else ((s < 0.02) | (s > 0.98))
            self._stats[f"diag/gate_mean/{key}"] = float(s.mean())
            self._stats[f"diag/gate_abs/{key}"] = float(s.abs().mean())
            self._stats[f"diag/gate_saturated/{key}"] = float(sat.float().mean())

        return hook

    def _fused_hook(self, key: str):
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            if self._active:
                self._stats[f"diag/fused_rms/{key}"] = float(out.detach().float().pow(2).mean().sqrt())

        return hook

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, module in pl_module.named_modules():
            if name.endswith(".gate_probe"):
                owner = pl_module.get_submodule(name.rsplit(".", 1)[0])
                tanh = getattr(owner, "gate_type", "sigmoid") == "lavt"
                key = name.rsplit(".", 1)[0].removeprefix("net.")
                self._handles.append(module.register_forward_hook(self._gate_hook(key, tanh)))
            elif name.endswith(".fused_probe"):
                key = name.rsplit(".", 1)[0].removeprefix("net.")
                self._handles.append(module.register_forward_hook(self._fused_hook(key)))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    # ------------------------------------------------------------------ training loop
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._step = trainer.global_step  # the optimizer step this batch makes (global_step counts it after)
        self._active = self._step % self.every_n_steps == 0
        self._stats = {}

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._active:
            return
        self._active = False
        if isinstance(batch, dict) and "image" in batch and getattr(pl_module, "net", None) is not None:
            with torch.no_grad():
                was_training = pl_module.training
                pl_module.eval()
                logits = pl_module(batch)
                pl_module.train(was_training)
            if logits.shape[0] > 1:
                self._stats["diag/logit_spread"] = float(logits.float().std(dim=0).mean())
        if self._stats:
            # straight to the loggers at this step (a LightningModule.log from a callback would be repeated at
            # every later logging step until re-logged)
            record = {"step": float(self._step), **self._stats}
            self.history.append(record)
            for logger in trainer.loggers:
                logger.log_metrics(self._stats, step=self._step)

    @property
    def last(self) -> dict[str, float]:
        """The latest logged record (empty before the first)."""
        return self.history[-1] if self.history else {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        if not self._active:
            return
        norms = grad_norms(pl_module, self.depth)
        self._stats.update({f"diag/grad_norm/{k.removeprefix('net.')}": v for k, v in norms.items()})
