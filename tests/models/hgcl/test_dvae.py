import pytest
import torch

from models.hgcl import DVAECodebook, nearest_codeword, perplexity


def test_nearest_codeword_equals_bruteforce_argmin():
    torch.manual_seed(0)
    x, cb = torch.randn(3, 7, 6), torch.randn(11, 6)
    ids, codes = nearest_codeword(x, cb)
    ref = torch.tensor([[min(range(11), key=lambda k: float((cb[k] - v).norm())) for v in row] for row in x])
    assert torch.equal(ids, ref)
    torch.testing.assert_close(codes, cb[ref])
    # a codeword itself maps to itself
    assert torch.equal(nearest_codeword(cb[None], cb)[0][0], torch.arange(11))


def test_dvae_loss_grads_mask_and_perplexity():
    torch.manual_seed(0)
    book = DVAECodebook(8, num_codes=5, dead_code_steps=0)
    x = torch.randn(2, 6, 8)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4], dtype=torch.bool)
    book.update_codes(x, mask)
    assert bool(book.initialized)
    # initialised from valid rows only
    valid = x[mask]
    assert all(((valid - c).abs().sum(-1) < 1e-6).any() for c in book.codebook)
    loss, ppl = book.loss(x, mask)
    loss.backward()
    assert torch.isfinite(loss) and 1.0 <= float(ppl) <= 5.0
    for name, p in book.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # padded rows change nothing
    torch.manual_seed(1)
    l1, _ = book.loss(x, mask)
    x2 = x.clone()
    x2[~mask] = 99.0
    torch.manual_seed(1)
    l2, _ = book.loss(x2, mask)
    torch.testing.assert_close(l1, l2)
    assert float(perplexity(torch.tensor([0, 1, 2, 3]), torch.ones(4, dtype=torch.bool), 4)) == pytest.approx(
        4.0
    )
    assert float(perplexity(torch.tensor([2, 2, 2]), torch.ones(3, dtype=torch.bool), 4)) == pytest.approx(
        1.0
    )


def test_dead_codes_are_reinitialised_from_batch_features():
    torch.manual_seed(0)
    book = DVAECodebook(4, num_codes=6, dead_code_steps=2)
    x = torch.randn(1, 5, 4)
    mask = torch.ones(1, 5, dtype=torch.bool)
    book.update_codes(x, mask)
    with torch.no_grad():
        book.codebook[5] = 1e3  # far away: never nearest, reachable only by the encoder
        book.encoder[2].bias[5] = -1e4  # never sampled
    new = torch.randn(1, 5, 4) + 10.0
    for _ in range(2):  # unused in 2 consecutive steps -> re-initialised at the 2nd update
        book.quantize(x, mask)
        book.loss(x, mask)
        book.update_codes(new, mask)
    assert ((new[0] - book.codebook[5]).abs().sum(-1) < 1e-6).any()
    assert int(book.steps_unused[5]) == 0


def test_dvae_validates_and_repr():
    assert "num_codes=6" in repr(DVAECodebook(4, 6))
    with pytest.raises(ValueError, match="DVAECodebook"):
        DVAECodebook(4, 1)
    with pytest.raises(ValueError, match="DVAECodebook"):
        DVAECodebook(4, 6, temperature=0.0)
