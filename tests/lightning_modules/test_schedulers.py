"""WarmupCosineLR: linear warm-up then cosine, per epoch, from plain numbers."""

import math

import pytest
import torch

from lightning_modules.schedulers import WarmupCosineLR


def _lrs(epochs: int, **kwargs) -> list[float]:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = WarmupCosineLR(opt, max_epochs=epochs, **kwargs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine() -> None:
    lrs = _lrs(10, warmup_epochs=3, warmup_start_factor=0.1, eta_min=0.0)
    assert lrs[:4] == pytest.approx([1e-4, 4e-4, 7e-4, 1e-3])
    for e in range(3, 10):
        assert lrs[e] == pytest.approx(0.5e-3 * (1 + math.cos(math.pi * (e - 3) / 7)))


def test_no_warmup_and_bad_args() -> None:
    assert _lrs(4, warmup_epochs=0, eta_min=0.0)[0] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="WarmupCosineLR"):
        _lrs(3, warmup_epochs=3)
