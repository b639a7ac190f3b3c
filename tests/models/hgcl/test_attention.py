import pytest
import torch

from models.hgcl import (
    AttentionBlock,
    CrossModalAttention,
    FusionEncoder,
    ModalityProjection,
    TextGuidedAttention,
)


def test_cross_modal_attention_shapes_and_key_padding():
    torch.manual_seed(0)
    attn = CrossModalAttention(16, heads=2).eval()
    q, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    cmask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4], dtype=torch.bool)
    out = attn(q, ctx, cmask)
    assert out.shape == (2, 5, 16)
    ctx2 = ctx.clone()
    ctx2[1, 3:] = 100.0  # padded keys/values change nothing
    torch.testing.assert_close(attn(q, ctx2, cmask), out)
    assert "heads=2" in repr(attn)
    with pytest.raises(ValueError, match="CrossModalAttention"):
        CrossModalAttention(10, heads=3)


def test_single_head_matches_eq1():
    torch.manual_seed(0)
    attn = CrossModalAttention(8, heads=1).eval()
    q, ctx = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    w = torch.softmax(attn.w_q(q) @ attn.w_k(ctx).transpose(1, 2) / 8**0.5, -1)
    ref = attn.out(w @ attn.w_v(ctx))
    torch.testing.assert_close(attn(q, ctx, torch.ones(1, 4, dtype=torch.bool)), ref)


def test_text_guided_attention_and_fusion_shapes_and_masks():
    torch.manual_seed(0)
    tga = TextGuidedAttention(16, heads=4, num_layers=2).eval()
    fuse = FusionEncoder(16).eval()
    lens = {"text": 6, "audio": 4, "vision": 5}
    feats = {m: torch.randn(3, n, 16) for m, n in lens.items()}
    masks = {m: torch.arange(n)[None] < torch.tensor([n, n - 1, 2])[:, None] for m, n in lens.items()}
    out = tga(feats, masks)
    assert {m: tuple(v.shape) for m, v in out.items()} == {m: (3, n, 16) for m, n in lens.items()}
    for m in lens:
        assert (out[m][~masks[m]] == 0).all()
    r_m = fuse(out, masks)
    assert r_m.shape == (3, 16)
    feats2 = {m: v.clone() for m, v in feats.items()}
    for m in lens:
        feats2[m][~masks[m]] = -50.0
    torch.testing.assert_close(fuse(tga(feats2, masks), masks), r_m)


def test_projection_and_block_validate():
    proj = ModalityProjection(5, 8)
    x, mask = torch.randn(2, 4, 5), torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    out = proj(x, mask)
    assert out.shape == (2, 4, 8) and (out[~mask] == 0).all()
    assert "5 -> 8" in repr(proj)
    with pytest.raises(ValueError, match="ModalityProjection"):
        proj(torch.randn(2, 4, 6), mask)
    with pytest.raises(ValueError, match="ModalityProjection"):
        ModalityProjection(5, 8, positional="learned")
    with pytest.raises(ValueError, match="AttentionBlock"):
        AttentionBlock(8, activation="swish")
