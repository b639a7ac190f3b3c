"""Learning-rate schedules built from torch's own schedulers, with plain-number arguments for LightningCLI configs.

:class:`WarmupCosineLR` is the schedule of timm's transformer recipes (Swin, DeiT: linear warm-up, then cosine
decay to ``eta_min``), stepped once per epoch like timm's default (``t_in_epochs=True``). It is torch's
``SequentialLR(LinearLR, CosineAnnealingLR)``; the subclass only exists so that a YAML ``class_path`` can build it
from numbers (``SequentialLR`` itself takes scheduler instances).
"""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR

__all__ = ["WarmupCosineLR"]


class WarmupCosineLR(SequentialLR):
    """Linear warm-up over ``warmup_epochs`` from ``warmup_start_factor`` x lr to lr, then cosine to ``eta_min``.

    Args:
        optimizer: the optimizer (every parameter group follows the same shape from its own lr).
        max_epochs: total epochs of the run (the cosine reaches ``eta_min`` at the end).
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
        max_epochs: int,
        warmup_epochs: int = 5,
        warmup_start_factor: float = 0.1,
        eta_min: float = 1e-6,
    ) -> None:
        if max_epochs < 1 or not 0 <= warmup_epochs < max_epochs:
            raise ValueError(
                f"WarmupCosineLR: need max_epochs >= 1 and 0 <= warmup_epochs < max_epochs, got {max_epochs}, "
                f"{warmup_epochs}"
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
