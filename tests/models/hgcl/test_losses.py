import math

import pytest
import torch

from models.hgcl import (
    LocalGraphLoss,
    ProjectionHead,
    graph_distance_loss,
    info_nce,
    masked_readout,
    node_reconstruction_loss,
)


def test_readout_and_node_loss_ignore_padding():
    torch.manual_seed(0)
    h, v, r = torch.randn(2, 5, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    z = masked_readout(h, mask)
    torch.testing.assert_close(z[1], h[1, :2].mean(0))
    loss = node_reconstruction_loss(v, r, mask)
    ref = sum(((v[i][mask[i]] - r[i][mask[i]]).pow(2).sum() / v[i][mask[i]].norm()) for i in range(2)) / 2
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    v2, r2, h2 = v.clone(), r.clone(), h.clone()
    for t in (v2, r2, h2):
        t[~mask] = 123.0
    torch.testing.assert_close(node_reconstruction_loss(v2, r2, mask), loss)
    torch.testing.assert_close(masked_readout(h2, mask), z)


def test_graph_distance_eq8_and_local_loss_alpha():
    z, z2 = torch.zeros(2, 3), torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    assert float(graph_distance_loss(z, z2)) == pytest.approx(3.0, abs=1e-5)
    loss_mod = LocalGraphLoss(3, alpha=2.0)
    v, h = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.ones(2, 4, dtype=torch.bool)
    total, node, graph = loss_mod(v, h, mask, z, z2)
    torch.testing.assert_close(total, node + 2.0 * graph)
    total.backward()
    assert loss_mod.decoder.weight.grad is not None
    assert "alpha=2.0" in repr(loss_mod)
    with pytest.raises(ValueError, match="LocalGraphLoss"):
        LocalGraphLoss(3, alpha=-1.0)


def test_info_nce_directions_and_values():
    torch.manual_seed(0)
    a = torch.randn(4, 6)
    b = torch.randn(4, 6)
    # perfect positives, near-orthogonal negatives: close to 0 at a low temperature
    e = torch.eye(4, 6)
    assert float(info_nce(e, e, tau=0.05)) < 1e-6
    # uniform similarities give log(B)
    ones = torch.ones(4, 6)
    assert float(info_nce(ones, ones, tau=0.5)) == pytest.approx(math.log(4), abs=1e-5)
    sym = info_nce(a, b, 0.2, "symmetric")
    l2g = info_nce(a, b, 0.2, "local_to_global")
    g2l = info_nce(b, a, 0.2, "local_to_global")
    torch.testing.assert_close(sym, 0.5 * (l2g + g2l))
    assert not torch.allclose(l2g, g2l)
    with pytest.raises(ValueError, match="info_nce"):
        info_nce(a, b, direction="both")
    assert ProjectionHead(6, 3)(a).shape == (4, 3)
