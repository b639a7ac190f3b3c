"""The one masked mean of the project (torch tensors and numpy arrays)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
from torch import Tensor

__all__ = ["masked_mean"]

T = TypeVar("T", Tensor, np.ndarray)


def masked_mean(x: T, mask: T) -> T:
    """Mean over dim 1 of the valid steps only; an all-padding row gives zeros.

    Works on torch tensors and on numpy arrays (the same formula: ``sum(x * m) / max(sum(m), 1)``).

    Shapes:
        x: ``[B, L, D]``; mask: ``[B, L]`` (bool or 0/1, True = valid) -> ``[B, D]``.
    """
    if isinstance(x, np.ndarray):
        m = np.asarray(mask)[:, :, None].astype(x.dtype)
        return (x * m).sum(1) / np.maximum(m.sum(1), 1)
    m = mask.unsqueeze(-1).to(x.dtype)
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
