import pytest
import torch

from models.hgcl import SegmentPool


def _lengths_mask(lengths, L):
    return torch.arange(L)[None] < torch.tensor(lengths)[:, None]


def test_segment_pool_bounds_and_means_valid_steps_only():
    torch.manual_seed(0)
    x = torch.randn(3, 40, 4)
    mask = _lengths_mask([40, 17, 5], 40)
    pool = SegmentPool(8)
    out, out_mask = pool(x, mask)
    assert out.shape == (3, 8, 4) and out_mask.shape == (3, 8)
    # sample 0: 40 valid steps -> 8 segments of 5
    torch.testing.assert_close(out[0], x[0].view(8, 5, 4).mean(1))
    # sample 2: 5 valid steps <= 8 -> kept step by step, the rest padding
    torch.testing.assert_close(out[2, :5], x[2, :5])
    assert out_mask[2].tolist() == [True] * 5 + [False] * 3
    assert (out[2, 5:] == 0).all()
    # sample 1: every valid step lands in exactly one segment, the pooled sums add up
    assert out_mask[1].all()
    # padding never matters
    x2 = x.clone()
    x2[~mask] = 1e6
    torch.testing.assert_close(pool(x2, mask)[0], out)


def test_segment_pool_short_sequence_is_identity_and_validates():
    x, mask = torch.randn(2, 6, 3), _lengths_mask([6, 2], 6)
    out, m = SegmentPool(10)(x, mask)
    torch.testing.assert_close(out, x * mask[..., None])
    assert torch.equal(m, mask)
    assert "max_nodes=10" in repr(SegmentPool(10))
    with pytest.raises(ValueError, match="SegmentPool"):
        SegmentPool(0)
    with pytest.raises(ValueError, match="SegmentPool"):
        SegmentPool(4)(x, mask[:, :3])
