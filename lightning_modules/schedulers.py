"""Learning-rate schedules built from torch's own schedulers, with plain-number arguments for LightningCLI configs.

:class:`WarmupCosineLR` is the schedule of timm's transformer recipes (Swin, DeiT: linear warm-up, then cosine
decay to ``eta_min``), stepped once per epoch like timm's default (``t_in_epochs=True``). It is torch's
``SequentialLR(LinearLR, CosineAnnealingLR)``; the subclass only exists so that a YAML ``class_path`` can build it
from numbers (``SequentialLR`` itself takes scheduler instances).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

log = logging.getLogger(__name__)

__all__ = ["WarmupCosineLR", "follow_trainer_epochs"]


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
