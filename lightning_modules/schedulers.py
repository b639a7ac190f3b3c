"""Learning-rate schedules built from torch's own schedulers, with plain-number arguments for LightningCLI configs.

:class:`BudgetCosineLR` is the same warm-up + cosine shape laid over a wall-clock budget instead of an epoch count,
for time-capped runs (``trainer.max_time``): the learning rate reaches its floor when the budget ends, whatever the
model's speed, so that models compared at an equal budget are each fully annealed (Li et al., "Budgeted Training",
ICLR 2020, https://arxiv.org/abs/1905.04753).

:class:`WarmupCosineLR` is the schedule of timm's transformer recipes (Swin, DeiT: linear warm-up, then cosine
decay to ``eta_min``), stepped once per epoch like timm's default (``t_in_epochs=True``). It is torch's
``SequentialLR(LinearLR, CosineAnnealingLR)``; the subclass only exists so that a YAML ``class_path`` can build it
from numbers (``SequentialLR`` itself takes scheduler instances).
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

log = logging.getLogger(__name__)

__all__ = ["BudgetCosineLR", "WarmupCosineLR", "follow_trainer_epochs", "scheduler_interval"]


class WarmupCosineLR(SequentialLR):
    """Linear warm-up over ``warmup_epochs`` from ``warmup_start_factor`` x lr to lr, then cosine to ``eta_min``.

    Args:
        optimizer: the optimizer (every parameter group follows the same shape from its own lr).
        max_epochs: total epochs of the run (the cosine reaches ``eta_min`` at the end). ``None`` (the default,
            and what the shipped configs use): the trainer's ``max_epochs``, filled in by the system when it builds
            the scheduler (:func:`follow_trainer_epochs`), so ``--trainer.max_epochs 3`` shrinks the schedule too.
        warmup_epochs: epochs of linear warm-up (0 = cosine only).
        warmup_start_factor: lr multiplier of the first warm-up epoch, in (0, 1].
        eta_min: final learning rate.

    Epoch ``e`` (0-based) uses ``lr * (f + (1 - f) e / w)`` for ``e < w`` and
    ``eta_min + (lr - eta_min) (1 + cos(pi (e - w) / (E - w))) / 2`` after, with ``w = warmup_epochs``,
    ``E = max_epochs``, ``f = warmup_start_factor``.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        max_epochs: int | None = None,
        warmup_epochs: int = 5,
        warmup_start_factor: float = 0.1,
        eta_min: float = 1e-6,
    ) -> None:
        if max_epochs is None:
            raise ValueError(
                "WarmupCosineLR: max_epochs is None and there is no trainer.max_epochs to follow (build it through "
                "a system's configure_optimizers with a trainer whose max_epochs is set, or give max_epochs)"
            )
        if max_epochs < 1 or not 0 <= warmup_epochs < max_epochs:
            raise ValueError(
                f"WarmupCosineLR: need max_epochs >= 1 and 0 <= warmup_epochs < max_epochs, got max_epochs "
                f"{max_epochs}, warmup_epochs {warmup_epochs} (lower --model.init_args.scheduler.init_args."
                "warmup_epochs for a short run)"
            )
        if not 0 < warmup_start_factor <= 1:
            raise ValueError(f"WarmupCosineLR: warmup_start_factor must be in (0, 1], got {warmup_start_factor}")
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        cosine = CosineAnnealingLR(optimizer, T_max=max_epochs - warmup_epochs, eta_min=eta_min)
        if warmup_epochs == 0:
            super().__init__(optimizer, [cosine], milestones=[])
            return
        warm = LinearLR(optimizer, start_factor=warmup_start_factor, end_factor=1.0, total_iters=warmup_epochs)
        super().__init__(optimizer, [warm, cosine], milestones=[warmup_epochs])


def follow_trainer_epochs(
    factory: Callable[..., Any] | None, max_epochs: int | None, debug_run: bool = False
) -> Callable[..., Any] | None:
    """The scheduler factory with ``max_epochs=max_epochs`` (the trainer's) where it takes ``max_epochs`` and leaves
    it ``None`` (a ``WarmupCosineLR`` config without ``max_epochs``); any other factory, or an explicit
    ``max_epochs``, unchanged.

    Args:
        factory: what LightningCLI makes of ``scheduler:`` (a ``functools.partial`` over the class with its
            ``init_args``), the class itself, or ``None``.
        max_epochs: ``trainer.max_epochs`` (``None`` or ``-1``: unbounded, nothing to follow).
        debug_run: the trainer runs ``fast_dev_run`` (one epoch of a few batches): a warm-up longer than the run is
            shortened to fit (logged) instead of being an error, so every config can be smoke-tested as it is.
    """
    if factory is None or max_epochs is None or max_epochs < 1:
        return factory
    target, keywords = factory, {}
    while isinstance(target, functools.partial):
        keywords = {**target.keywords, **keywords}
        target = next((a for a in target.args if isinstance(a, type)), target.func)
    takes = isinstance(target, type) and issubclass(target, WarmupCosineLR)
    if takes and keywords.get("max_epochs") is None:
        extra: dict[str, Any] = {"max_epochs": int(max_epochs)}
        warmup = keywords.get("warmup_epochs", inspect.signature(WarmupCosineLR).parameters["warmup_epochs"].default)
        if debug_run and warmup >= max_epochs:
            extra["warmup_epochs"] = int(max_epochs) - 1
            log.info("WarmupCosineLR: fast_dev_run: warm-up %d -> %d epochs to fit the %d-epoch run", warmup,
                     extra["warmup_epochs"], max_epochs)
        return functools.partial(factory, **extra)
    return factory


class BudgetCosineLR(LRScheduler):
    """Warm-up + cosine over a wall-clock budget: stepped after every optimizer step, at progress ``p`` the learning
    rate is ``lr * (f + (1 - f) p / w)`` while ``p < w`` and ``eta_min + (lr - eta_min) (1 + cos(pi (p - w) /
    (1 - w))) / 2`` after, with ``w = warmup_fraction``, ``f = warmup_start_factor`` and

    ``p = min(1, max(seconds since the first step / (60 budget_minutes), steps / total_steps))``

    so the schedule ends at the budget or at ``total_steps`` (``None``: no step limit), whichever comes first. Give
    ``budget_minutes`` equal to the trainer's ``max_time`` so that training stops when the rate reaches ``eta_min``.

    The rate depends on the machine's speed (a faster machine takes more steps at each rate): a time-capped run is
    reproducible in what it measures (accuracy at a budget), not step for step. The elapsed time is part of the
    state dict, so a resumed run continues where the budget stood.

    Args:
        optimizer: the optimizer (every parameter group follows the same shape from its own lr).
        budget_minutes: the wall-clock budget (> 0).
        total_steps: optional step limit (the trainer's estimated optimizer steps).
        warmup_fraction: share of the budget spent warming up, in [0, 1).
        warmup_start_factor: lr multiplier at the start of the warm-up, in (0, 1].
        eta_min: final learning rate.
    """

    interval = "step"

    def __init__(self, optimizer: Optimizer, budget_minutes: float, total_steps: int | None = None,
                 warmup_fraction: float = 0.05, warmup_start_factor: float = 0.1, eta_min: float = 1e-6) -> None:
        if not budget_minutes > 0:
            raise ValueError(f"BudgetCosineLR: budget_minutes must be > 0, got {budget_minutes}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"BudgetCosineLR: total_steps must be >= 1 or None, got {total_steps}")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"BudgetCosineLR: warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if not 0 < warmup_start_factor <= 1:
            raise ValueError(f"BudgetCosineLR: warmup_start_factor must be in (0, 1], got {warmup_start_factor}")
        self.budget_seconds = 60.0 * budget_minutes
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction
        self.warmup_start_factor = warmup_start_factor
        self.eta_min = eta_min
        self.elapsed = 0.0  # seconds of training before the current process (a resumed run)
        self._t0: float | None = None
        super().__init__(optimizer)

    def seconds(self) -> float:
        """Training seconds so far (this process's, from its first step, plus a resumed run's)."""
        return self.elapsed + (0.0 if self._t0 is None else time.monotonic() - self._t0)

    def progress(self) -> float:
        """Fraction of the budget used, in [0, 1]."""
        p = self.seconds() / self.budget_seconds
        if self.total_steps is not None:
            p = max(p, self.last_epoch / self.total_steps)
        return min(1.0, max(0.0, p))

    def factor(self, p: float) -> float:
        """The multiplier of the base rate at progress ``p`` (without ``eta_min``'s floor: see :meth:`get_lr`)."""
        w = self.warmup_fraction
        if p < w:
            return self.warmup_start_factor + (1 - self.warmup_start_factor) * p / w
        return 0.5 * (1 + math.cos(math.pi * (p - w) / (1 - w)))

    def get_lr(self) -> list[float]:
        if self.last_epoch >= 1 and self._t0 is None:  # the clock starts at the first optimizer step
            self._t0 = time.monotonic()
        p = self.progress()
        f = self.factor(p)
        if p < self.warmup_fraction:
            return [base * f for base in self.base_lrs]
        return [self.eta_min + (base - self.eta_min) * f for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["elapsed"] = self.seconds()
        state.pop("_t0", None)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._t0 = None


def scheduler_interval(scheduler: Any) -> str:
    """How often Lightning steps ``scheduler``: ``"step"`` for a scheduler that says so (:class:`BudgetCosineLR`),
    else ``"epoch"``."""
    return "step" if getattr(scheduler, "interval", "epoch") == "step" else "epoch"
