import pytest
import torch
from torch_geometric.nn import GraphConv
from torch_geometric.utils import dense_to_sparse

from models.hgcl import GNNEncoder


def _graph(B=3, N=7, d=8):
    torch.manual_seed(0)
    mask = torch.arange(N)[None] < torch.tensor([N, 5, 2])[:, None]
    a = (torch.rand(B, N, N) < 0.4).float().triu(1)
    a = (a + a.transpose(1, 2)) * mask[:, :, None] * mask[:, None, :]
    return torch.randn(B, N, d) * mask[..., None], a, mask


@pytest.mark.parametrize("gnn", ["graphconv", "gcn", "gin", "sage"])
def test_gnn_shapes_mask_and_padding(gnn):
    x, a, mask = _graph()
    enc = GNNEncoder(8, num_layers=2, gnn=gnn).eval()
    out = enc(x, a, mask)
    assert out.shape == x.shape and (out[~mask] == 0).all()
    x2 = x.clone()
    x2[~mask] = 7.0
    torch.testing.assert_close(enc(x2, a, mask), out)
    out.sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    assert gnn in repr(enc)


def test_dense_graphconv_matches_sparse_graphconv():
    """Eq. (11) on the batched dense graph equals PyG's sparse GraphConv over the same edges."""
    x, a, mask = _graph()
    enc = GNNEncoder(
        8, num_layers=1, gnn="graphconv", activation="relu", dropout=0.0, residual="none", norm="none"
    ).eval()
    dense = enc(x, a, mask)
    sparse = GraphConv(8, 8, aggr="add")
    dconv = enc.convs[0]
    with torch.no_grad():
        sparse.lin_rel.weight.copy_(dconv.lin_rel.weight)
        sparse.lin_rel.bias.copy_(dconv.lin_rel.bias)
        sparse.lin_root.weight.copy_(dconv.lin_root.weight)
    edge_index, _ = dense_to_sparse(a)
    flat = x.reshape(-1, 8)
    out = torch.relu(sparse(flat, edge_index)).view_as(x) * mask[..., None]
    torch.testing.assert_close(dense, out)


def test_gnn_validates():
    for kwargs in (
        {"gnn": "gat"},
        {"num_layers": 0},
        {"residual": "cat"},
        {"norm": "batch"},
        {"activation": "swish"},
    ):
        with pytest.raises(ValueError, match="GNNEncoder"):
            GNNEncoder(8, **kwargs)
