"""RAVEN (models/raven.py): proportional word segments, gated shift and the whole net on tiny tensors."""

from __future__ import annotations

import pytest
import torch

from models.raven import RAVEN, shift_words, word_segments

DIMS = {"text": 6, "audio": 3, "vision": 4}
TINY = {"frame_dim": 5, "nonverbal_hidden": 4, "sentence_hidden": 5}


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)


def test_word_segments_split_frames_proportionally() -> None:
    text = _mask([3, 2], 4)
    frames = _mask([7, 1], 10)
    index, valid = word_segments(text, frames, max_frames=20)
    got = [[index[b, j][valid[b, j]].tolist() for j in range(4)] for b in range(2)]
    # 7 frames over 3 tokens: [0, 2), [2, 4), [4, 7); 1 frame over 2 tokens: both get frame 0; padded tokens none.
    assert got == [[[0, 1], [2, 3], [4, 5, 6], []], [[0], [0], [], []]]


def test_word_segments_on_aligned_masks_give_the_word_aligned_step() -> None:
    mask = _mask([5, 3], 5)
    index, valid = word_segments(mask, mask, max_frames=20)
    assert index.shape[-1] == 1
    assert torch.equal(valid[..., 0], mask)
    assert torch.equal(index[..., 0][mask], torch.arange(5).expand(2, 5)[mask])


def test_word_segments_subsample_long_segments_evenly() -> None:
    index, valid = word_segments(_mask([1], 1), _mask([12], 12), max_frames=4)
    assert valid.all() and index[0, 0].tolist() == [0, 3, 6, 9]


def test_shift_is_bounded_by_beta_times_word_norm() -> None:
    words = torch.randn(10, 8)
    big = 100 * torch.randn(10, 8)
    small = 1e-3 * torch.randn(10, 8)
    for shift in (big, small):
        moved = shift_words(words, shift, beta=0.2) - words
        assert (moved.norm(dim=-1) <= 0.2 * words.norm(dim=-1) + 1e-5).all()
    torch.testing.assert_close(
        shift_words(words, small, beta=0.2), words + small
    )  # alpha = 1 for small shifts
    torch.testing.assert_close(shift_words(words, big, beta=0.0), words)


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    tm, am, vm = _mask([4, 2, 3], 4), _mask([9, 3, 1], 9), _mask([6, 6, 2], 6)
    return {
        "text": torch.randn(3, 4, 6, generator=g) * tm.unsqueeze(-1),
        "audio": torch.randn(3, 9, 3, generator=g) * am.unsqueeze(-1),
        "vision": torch.randn(3, 6, 4, generator=g) * vm.unsqueeze(-1),
        "text_mask": tm,
        "audio_mask": am,
        "vision_mask": vm,
    }


def test_raven_forward_gates_and_padding_invariance() -> None:
    torch.manual_seed(0)
    net = RAVEN(DIMS, None, **TINY).eval()
    batch = _batch()
    out = net(batch)["pred"]
    assert out.shape == (3,) and torch.isfinite(out).all()
    _, gates = net.shifted_words(batch)
    assert all(((g > 0) & (g < 1)).all() for g in gates.values())
    noisy = {k: v.clone() for k, v in batch.items()}
    for m in DIMS:
        noisy[m][~batch[f"{m}_mask"]] = 9.0
    torch.testing.assert_close(net(noisy)["pred"], out)


def test_raven_nonverbal_frames_move_the_prediction_and_get_gradients() -> None:
    torch.manual_seed(0)
    net = RAVEN(DIMS, None, **TINY, dropout=0.0)
    batch = _batch()
    other = dict(batch, audio=batch["audio"] + batch["audio_mask"].unsqueeze(-1) * 3.0)
    assert not torch.allclose(net(batch)["pred"], net(other)["pred"])
    net(batch)["pred"].sum().backward()
    assert net.nonverbal["audio"].rnn.weight_ih_l0.grad.abs().sum() > 0
    assert net.gates["vision"].weight.grad.abs().sum() > 0


def test_raven_rejects_bad_args() -> None:
    with pytest.raises(ValueError, match="RAVEN: dropout"):
        RAVEN(DIMS, None, dropout=1.0)
    with pytest.raises(ValueError, match="RAVEN: shift_weight"):
        RAVEN(DIMS, None, shift_weight=-0.1)
    with pytest.raises(ValueError, match="word_segments"):
        word_segments(_mask([1], 1), _mask([1], 1), max_frames=0)
