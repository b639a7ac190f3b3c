import pytest
import torch

from models.hgcl import GraphAugment


def _graph(B=3, N=10, d=4):
    torch.manual_seed(0)
    x = torch.randn(B, N, d)
    a = (torch.rand(B, N, N) < 0.3).float().triu(1)
    mask = torch.arange(N)[None] < torch.tensor([N, 6, 3])[:, None]
    a = (a + a.transpose(1, 2)) * mask[:, :, None] * mask[:, None, :]
    return x * mask[..., None], a, mask


def test_augmentation_symmetric_and_respects_mask():
    x, a, mask = _graph()
    aug = GraphAugment(sigma=0.5, p_add=0.3, p_drop=0.3).train()
    x2, a2 = aug(x, a, mask)
    assert torch.equal(a2, a2.transpose(1, 2))
    assert (torch.diagonal(a2, dim1=1, dim2=2) == 0).all()
    pair = mask[:, :, None] & mask[:, None, :]
    assert (a2[~pair] == 0).all()
    assert (x2[~mask] == 0).all() and not torch.equal(x2[mask], x[mask])
    assert not torch.equal(a2, a)  # something was added or dropped
    assert set(a2.unique().tolist()) <= {0.0, 1.0}


def test_augmentation_extremes_and_eval_identity():
    x, a, mask = _graph()
    assert torch.equal(GraphAugment(0.0, 0.0, 0.0).train()(x, a, mask)[1], a)
    assert GraphAugment(0.0, 0.0, 1.0).train()(x, a, mask)[1].sum() == 0
    full = GraphAugment(0.0, 1.0, 0.0).train()(x, a, mask)[1]
    pair = (mask[:, :, None] & mask[:, None, :]).float() * (1 - torch.eye(10))
    assert torch.equal(full, pair)
    aug = GraphAugment(1.0, 0.5, 0.5).eval()
    x2, a2 = aug(x, a, mask)
    assert x2 is x and a2 is a


def test_augment_validates_and_repr():
    assert "p_add=0.2" in repr(GraphAugment(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="GraphAugment"):
        GraphAugment(p_add=1.5)
    with pytest.raises(ValueError, match="GraphAugment"):
        GraphAugment(sigma=-1.0)
