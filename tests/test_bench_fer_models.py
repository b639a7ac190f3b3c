"""The FLOP rule the FER benchmark registers for the convolution backward (torch's own ignores ``groups``)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers.scripts import load_script

bench = load_script("benchmarks/bench_fer_models.py")


def _backward_flops(conv: torch.nn.Conv2d, x: torch.Tensor, mapping: dict | None) -> int:
    out = conv(x)
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out.backward(torch.ones_like(out))
    return counter.get_total_flops()


@pytest.mark.parametrize("groups", [1, 8])
def test_conv_backward_rule_counts_one_forward_per_requested_gradient(groups: int) -> None:
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    forward = 2 * 2 * 5 * 5 * 8 * (8 // groups) * 9  # 2 * N * H * W * C_out * C_in/groups * k * k
    mapping = {torch.ops.aten.convolution_backward: bench._conv_backward_flop}
    assert _backward_flops(conv, x, mapping) == 2 * forward  # grad input + grad weight
    assert _backward_flops(conv, x.detach(), mapping) == forward  # weight gradient only
    if groups == 1:  # agrees with torch's rule where that rule is right
        assert _backward_flops(conv, x, None) == 2 * forward
