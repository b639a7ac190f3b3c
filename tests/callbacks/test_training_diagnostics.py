"""TrainingDiagnostics logs per-stage gradient norms (before clipping), gate activations and logit spread."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from callbacks.training_diagnostics import TrainingDiagnostics, grad_norms, parameter_group
from lightning_modules.fer import LitFER
from models.swin_two_branch import TwoBranchSwin
from tests.lightning_modules.test_fer import TINY_SWIN, TinyFaceDataModule, _trainer


def test_parameter_groups_stop_at_the_first_index() -> None:
    assert parameter_group("net.global_branch.layers.2.blocks.0.attn.qkv.weight") == "net.global_branch.layers.2"
    assert parameter_group("net.fusions.0.gate_conv.weight") == "net.fusions.0"
    assert parameter_group("net.global_branch.head.fc.weight") == "net.global_branch.head"
    assert parameter_group("bias") == "bias"


def test_grad_norms_sum_in_quadrature() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    for p in net.parameters():
        p.grad = torch.full_like(p, 1.0)
    norms = grad_norms(net)
    assert norms["0"] == pytest.approx(6 ** 0.5) and norms["1"] == pytest.approx(3 ** 0.5)
    assert norms["total"] == pytest.approx(3.0)


@pytest.mark.parametrize("gate", ["sigmoid", "lavt"])
def test_callback_logs_stage_norms_and_gate_activations(tmp_path, gate: str) -> None:
    refine = "none" if gate == "lavt" else "residual"
    lit = LitFER(partial(TwoBranchSwin, gate=gate, refine=refine, fusion_init="gate_closed", **TINY_SWIN),
                 optimizer=partial(torch.optim.AdamW, lr=1e-3))
    diag = TrainingDiagnostics(every_n_steps=2)
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0, enable_checkpointing=False,
                       gradient_clip_val=1e-6, callbacks=[diag])
    trainer.fit(lit, datamodule=TinyFaceDataModule())
    assert [r["step"] for r in diag.history] == [0.0, 2.0]  # steps 0 and 2 of 3
    m = diag.history[0]
    for key in ("diag/grad_norm/global_branch.layers.0", "diag/grad_norm/local_branch.layers.3",
                "diag/grad_norm/fusions.2", "diag/grad_norm/total", "diag/gate_mean/fusions.0",
                "diag/gate_saturated/fusions.3", "diag/fused_rms/fusions.1", "diag/logit_spread"):
        assert key in m, key
    assert float(m["diag/grad_norm/total"]) > 1e-6  # measured before the (tiny) clipping
    if gate == "lavt":
        assert float(m["diag/gate_abs/fusions.0"]) == 0.0  # closed LAVT gate at step 0
    else:
        assert 0.0 < float(m["diag/gate_mean/fusions.0"]) < 0.05  # sigmoid(-4) ~ 0.018
