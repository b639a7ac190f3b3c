"""MFM (models/mfm.py): its parts (MMD kernel and loss, masked MSE, decoder, factorised forward) on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from models.mfm import MFM, SequenceDecoder, masked_mse, mmd_kernel, mmd_loss

DIMS = {"text": 6, "audio": 3, "vision": 4}
LENS = {"text": 5, "audio": 5, "vision": 5}
TINY = {
    "text_hidden": 4,
    "audio_hidden": 3,
    "vision_hidden": 4,
    "memory_dim": 5,
    "attention_hidden": 4,
    "proposal_hidden": 4,
    "retain_hidden": 4,
    "update_hidden": 4,
    "zy_dim": 6,
    "zt_dim": 5,
    "za_dim": 4,
    "zv_dim": 4,
    "fy_dim": 5,
    "ft_dim": 3,
    "fa_dim": 2,
    "fv_dim": 3,
}


def _batch(b: int = 4, lengths: tuple[int, ...] = (5, 3, 5, 2)) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    batch: dict[str, torch.Tensor] = {}
    for m, d in DIMS.items():
        batch[m] = torch.randn(b, 5, d, generator=g) * mask.unsqueeze(-1)
        batch[f"{m}_mask"] = mask
    return batch


def test_mmd_kernel_matches_formula() -> None:
    x, y = torch.randn(3, 4), torch.randn(2, 4)
    expected = torch.tensor(
        [[torch.exp(-((x[i] - y[j]) ** 2).mean() / 4) for j in range(2)] for i in range(3)]
    )
    torch.testing.assert_close(mmd_kernel(x, y), expected)


def test_mmd_loss_zero_for_identical_samples_and_large_for_shifted_codes() -> None:
    z = torch.randn(64, 8)
    assert mmd_loss(z, prior=z).abs().item() < 1e-6
    near = mmd_loss(
        torch.randn(256, 8, generator=torch.Generator().manual_seed(1)),
        prior=torch.randn(256, 8, generator=torch.Generator().manual_seed(2)),
    )
    far = mmd_loss(torch.randn(256, 8) + 5.0, prior=torch.randn(256, 8))
    assert far > 10 * near


def test_masked_mse_ignores_padding() -> None:
    x = torch.zeros(2, 3, 2)
    x_hat = torch.zeros(2, 3, 2)
    x_hat[0, 2] = 100.0  # padded step of sample 0
    x_hat[1, 0] = 1.0  # valid step
    mask = torch.tensor([[True, True, False], [True, True, True]])
    assert masked_mse(x_hat, x, mask).item() == pytest.approx(2 * 1.0 / (5 * 2))


def test_sequence_decoder_shape_and_autoregression() -> None:
    dec = SequenceDecoder(hidden=4, out_dim=3)
    out = dec(torch.randn(2, 4), steps=6)
    assert out.shape == (2, 6, 3)
    assert not torch.allclose(out[:, 0], out[:, 1])  # step 2 reads h_1, not the code again


def test_mfm_training_forward_returns_weighted_losses_and_eval_none() -> None:
    torch.manual_seed(0)
    net = MFM(
        DIMS,
        LENS,
        **TINY,
        mmd_weight=2.0,
        text_recon_weight=0.5,
        audio_recon_weight=0.0,
        vision_recon_weight=1.0,
    )
    batch = _batch()
    out = net(batch)
    assert out["pred"].shape == (4,)
    aux = out["aux_losses"]
    assert set(aux) == {"recon_text", "recon_audio", "recon_vision", "mmd"}
    assert aux["recon_audio"].item() == 0.0  # weight 0
    assert all(torch.isfinite(v) and v.item() >= 0 for v in aux.values())
    sum(aux.values()).backward()
    grads = {n for n, p in net.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any(n.startswith("decoders.text") for n in grads) and any(n.startswith("mfn.") for n in grads)
    net.eval()
    assert set(net(batch)) == {"pred"}


def test_mfm_prediction_ignores_padded_steps() -> None:
    torch.manual_seed(0)
    net = MFM(DIMS, LENS, **TINY).eval()
    batch = _batch()
    noisy = {k: v.clone() for k, v in batch.items()}
    for m in DIMS:
        noisy[m][~batch[f"{m}_mask"]] = 7.0
    torch.testing.assert_close(net(batch)["pred"], net(noisy)["pred"])


def test_mfm_recon_weights_scale_losses() -> None:
    batch = _batch()
    losses = []
    for w in (1.0, 3.0):
        torch.manual_seed(0)
        net = MFM(DIMS, LENS, **TINY, text_recon_weight=w)
        torch.manual_seed(1)
        losses.append(net(batch)["aux_losses"]["recon_text"])
    torch.testing.assert_close(losses[1], 3.0 * losses[0])


def test_mfm_rejects_unaligned_and_bad_args() -> None:
    with pytest.raises(ValueError, match="MFM: needs word-aligned"):
        MFM(DIMS, {"text": 5, "audio": 7, "vision": 5}, **TINY)
    with pytest.raises(ValueError, match="MFM: loss weights"):
        MFM(DIMS, LENS, **TINY, mmd_weight=-1.0)
    with pytest.raises(ValueError, match="MFM: dropouts"):
        MFM(DIMS, LENS, **TINY, zy_dropout=1.0)
