"""POSTER-style cross-fusion: shapes, gradients into both streams, the landmark stream changes the output."""

import pytest
import torch

from models.poster import POSTER, CrossFusionBlock

SMALL = {"image_backbone": "resnet18", "landmark_backbone": "resnet18", "dim": 16, "tokens": 2, "num_heads": 2,
         "depth": 1}


def test_output_shape_and_gradients_reach_both_streams() -> None:
    torch.manual_seed(0)
    net = POSTER(5, **SMALL)
    out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5) and net.inputs == ("image",)
    out.sum().backward()
    for name in ("image_net", "landmark_net", "fusions", "pyramid", "head"):
        grads = [p.grad for n, p in net.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads), name
    assert any(g.abs().sum() > 0 for n, p in net.named_parameters() if n.startswith("landmark_net")
               for g in [p.grad])


def test_cross_fusion_mixes_the_streams() -> None:
    torch.manual_seed(0)
    block = CrossFusionBlock(8, 2).eval()
    img, lmk = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    a, _ = block(img, lmk)
    b, _ = block(img, torch.randn(2, 4, 8))
    assert not torch.allclose(a, b)  # image tokens depend on the landmark tokens


def test_bad_sizes_raise() -> None:
    with pytest.raises(ValueError, match="POSTER"):
        POSTER(3, dim=10, num_heads=3)
