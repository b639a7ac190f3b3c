from __future__ import annotations

import pytest
import torch

from common.tensors import masked_mean
from models.tfn import TFN

DIMS = {"text": 16, "audio": 5, "vision": 7}
LENS = {"text": 6, "audio": 6, "vision": 6}


def _batch(b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, 6, dtype=torch.bool)
    mask[0, 4:] = False
    return {
        "text": torch.randn(b, 6, 16, generator=g),
        "audio": torch.randn(b, 6, 5, generator=g),
        "vision": torch.randn(b, 6, 7, generator=g),
        "text_mask": mask,
        "audio_mask": mask.clone(),
        "vision_mask": mask.clone(),
        "label": torch.randn(b, generator=g),
    }


def test_output_shape_and_range() -> None:
    net = TFN(DIMS, LENS, text_hidden=8, text_out=8)
    out = net(_batch())["pred"]
    assert out.shape == (3,)
    assert torch.all(out > -3) and torch.all(out < 3)


def test_padding_has_no_effect() -> None:
    net = TFN(DIMS, LENS, text_hidden=8, text_out=8).eval()
    batch = _batch()
    ref = net(batch)["pred"]
    for key in ("text", "audio", "vision"):
        batch[key][0, 4:] = 1e3
    assert torch.allclose(net(batch)["pred"], ref, atol=1e-6)


def test_gradients_reach_every_parameter() -> None:
    net = TFN(DIMS, LENS, text_hidden=8, text_out=8)
    net(_batch())["pred"].sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_fusion_contains_unimodal_terms() -> None:
    z_t, z_a, z_v = torch.randn(2, 3), torch.randn(2, 2), torch.randn(2, 4)
    fused = TFN.fuse(z_t, z_a, z_v).view(2, 4, 3, 5)
    # The corner with the appended ones of audio and vision is the text embedding itself.
    assert torch.allclose(fused[:, :3, -1, -1], z_t)
    assert torch.allclose(fused[:, -1, :2, -1], z_a)
    assert torch.allclose(fused[:, -1, -1, -1], torch.ones(2))


def test_masked_mean_ignores_padding() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[True, True, False]])).item() == 2.0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="TFN"):
        TFN({"text": 4, "audio": 2}, LENS)
    with pytest.raises(ValueError, match="dropout"):
        TFN(DIMS, LENS, dropout=1.5)
