"""Sampling under DDP shared by the datamodules."""

from __future__ import annotations

import torch.distributed as dist
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset

__all__ = ["eval_sampler"]


def eval_sampler(dataset: Dataset) -> UnrepeatedDistributedSampler | None:
    """The sampler of an evaluation loader: under DDP every sample goes to exactly one process (uneven shards, no
    padding duplicates), so metrics gathered across processes equal a single-process run; ``None`` (sequential)
    without DDP. Lightning keeps a distributed sampler it is given instead of replacing it with a padding one."""
    if dist.is_available() and dist.is_initialized():
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None
