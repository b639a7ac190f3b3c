"""The LAVT reading of the local gate and the gradient-flow initialisation of the fusion (fusion_init)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.swin_two_branch import CLOSED_GATE_BIAS, StageFusion, TwoBranchSwin
from tests.models.test_swin_two_branch import TINY, _inputs


def _conv1x1(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bhwc,oc->bhwo", x, w.flatten(1))


def test_lavt_gate_matches_its_equation_without_refinement() -> None:
    torch.manual_seed(0)
    fusion = StageFusion(4, gate="lavt", refine="none", init="default")
    for p in fusion.parameters():  # random non-zero weights everywhere
        torch.nn.init.normal_(p, std=0.5)
    g, loc = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    f = F.conv2d(torch.cat([g, loc], -1).permute(0, 3, 1, 2), fusion.fuse_conv.weight, fusion.fuse_conv.bias,
                 padding=1).permute(0, 2, 3, 1)
    s = torch.tanh(_conv1x1(F.relu(_conv1x1(f, fusion.gate_conv.weight)), fusion.gate_conv2.weight))
    expected = g + s * f  # E = G + tanh(W2 ReLU(W1 F)) * F, nothing after it
    torch.testing.assert_close(fusion(g, loc), expected)
    assert fusion.gate_conv.bias is None and fusion.gate_conv2.bias is None  # LAVT's gate layers are bias-free
    assert fusion.refine_conv1 is None and "gate='lavt'" in repr(fusion)
    # the sigmoid gate is a different function of the same F
    sig = StageFusion(4, gate="sigmoid", refine="none", init="default")
    assert sig.gate_conv2 is None and sig.gate_conv.bias is not None


def test_lavt_gate_options_are_checked() -> None:
    with pytest.raises(ValueError, match="refine='none'"):
        StageFusion(4, gate="lavt", refine="residual", init="gate_closed")
    with pytest.raises(ValueError, match="without gradient"):
        StageFusion(4, gate="lavt", refine="none", init="zero")
    with pytest.raises(ValueError, match="TwoBranchSwin: gate"):
        TwoBranchSwin(3, gate="softmax", **TINY)


def test_zero_fusion_conv_kills_every_lavt_gradient() -> None:
    """Why init='zero' + LAVT is refused: with F = 0 no fusion parameter ever receives a gradient."""
    fusion = StageFusion(4, gate="lavt", refine="none", init="default")
    torch.nn.init.zeros_(fusion.fuse_conv.weight)
    torch.nn.init.zeros_(fusion.fuse_conv.bias)
    g, loc = torch.randn(2, 3, 3, 4, requires_grad=True), torch.randn(2, 3, 3, 4)
    fusion(g, loc).pow(2).sum().backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in fusion.parameters())


@pytest.mark.parametrize("gate", ["sigmoid", "lavt"])
def test_gate_closed_starts_near_the_global_model_and_every_fusion_parameter_learns(gate: str) -> None:
    refine = "none" if gate == "lavt" else "residual"
    torch.manual_seed(0)
    net = TwoBranchSwin(3, gate=gate, refine=refine, fusion_init="gate_closed", drop_path_rate=0.0, **TINY).eval()
    plain = TwoBranchSwin(3, branches="global", drop_path_rate=0.0, **TINY).eval()
    plain.global_branch.load_state_dict(net.global_branch.state_dict())
    image, desc = _inputs()
    with torch.no_grad():
        out, ref = net(image, desc), plain(image)
    if gate == "lavt":
        torch.testing.assert_close(out, ref)  # S = tanh(0) = 0: exactly the global model
    else:
        assert net.fusions[0].gate_conv.bias.eq(CLOSED_GATE_BIAS).all()
        assert (out - ref).abs().max() < 0.1 * ref.abs().max()  # S ~ 0.018: nearly the global model
    # the fusion conv is NOT zero: F carries local information from the start
    assert net.fusions[0].fuse_conv.weight.abs().sum() > 0
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    label = torch.tensor([0, 1])
    got_grad: set[str] = set()
    for _ in range(2):  # step 1 opens the closed layer; by step 2 everything behind it gets gradient too
        opt.zero_grad()
        F.cross_entropy(net(image, desc), label).backward()
        got_grad |= {n for n, p in net.fusions.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
        opt.step()
    assert got_grad == {n for n, _ in net.fusions.named_parameters()}


def test_zero_init_sigmoid_gate_gets_no_gradient_at_the_first_step() -> None:
    """The documented weakness of fusion_init='zero': dL/dS = dL/dE * F = 0 while F = 0."""
    torch.manual_seed(0)
    net = TwoBranchSwin(3, fusion_init="zero", **TINY)
    image, desc = _inputs()
    F.cross_entropy(net(image, desc), torch.tensor([0, 1])).backward()
    for fusion in net.fusions:
        assert fusion.gate_conv.weight.grad.abs().max() == 0
        assert fusion.fuse_conv.weight.grad.abs().max() > 0


def test_probes_expose_fused_features_and_gate_activations() -> None:
    net = TwoBranchSwin(3, gate="lavt", refine="none", fusion_init="gate_closed", **TINY)
    seen: dict[str, torch.Tensor] = {}
    net.fusions[1].gate_probe.register_forward_hook(lambda m, a, out: seen.__setitem__("s", out))
    net.fusions[1].fused_probe.register_forward_hook(lambda m, a, out: seen.__setitem__("f", out))
    image, desc = _inputs()
    net(image, desc)
    assert seen["s"].shape == seen["f"].shape == (2, 4, 4, 16)
    assert seen["s"].abs().max() == 0  # closed LAVT gate
    assert not any("probe" in k for k in net.state_dict())  # probes add no state
