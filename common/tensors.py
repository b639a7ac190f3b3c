"""The one masked mean and the one RGB -> grey conversion of the project (torch tensors and numpy arrays)."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["grey_rgb", "masked_mean"]

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


def grey_rgb(rgb: T, channel_dim: int = -1) -> T:
    """uint8 RGB -> uint8 grey (ITU-R BT.601 luma, ``(299 R + 587 G + 114 B + 500) // 1000``) repeated on the three
    channels: the one conversion of faces for models trained on grey faces (training batches, prediction crops and
    :mod:`models.shipped` use it alike, so a model sees the same pixels everywhere).

    Shapes:
        rgb: ``[..., 3]`` (``channel_dim=-1``, numpy images) or ``[B, 3, H, W]`` (``channel_dim=1``) uint8 -> same.
    """
    if isinstance(rgb, np.ndarray):
        x = np.moveaxis(rgb, channel_dim, -1).astype(np.int32)
        g = ((x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114 + 500) // 1000).astype(np.uint8)
        return np.moveaxis(np.repeat(g[..., None], 3, axis=-1), -1, channel_dim)
    x = rgb.movedim(channel_dim, -1).to(torch.int32)
    g = ((x[..., 0] * 299 + x[..., 1] * 587 + x[..., 2] * 114 + 500) // 1000).to(torch.uint8)
    return g.unsqueeze(-1).expand(*g.shape, 3).movedim(-1, channel_dim).contiguous()
