"""Unit tests of the multimodal-sentiment baselines (LMF, MFN, MulT, MISA, Self-MM) on tiny random batches."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from models.lmf import LMF
from models.mfn import MFN
from models.misa import MISA, cmd, diff_loss
from models.mult import MulT
from models.self_mm import SelfMM

DIMS = {"text": 16, "audio": 5, "vision": 7}
ALIGNED = {"text": 8, "audio": 8, "vision": 8}
UNALIGNED = {"text": 8, "audio": 6, "vision": 7}

BUILDERS: dict[str, Callable[[dict[str, int]], nn.Module]] = {
    "lmf": lambda lens: LMF(DIMS, lens, text_hidden=8, text_out=6, audio_hidden=4, vision_hidden=6, rank=2),
    "mfn": lambda lens: MFN(
        DIMS,
        lens,
        text_hidden=8,
        audio_hidden=4,
        vision_hidden=6,
        memory_dim=10,
        attention_hidden=8,
        proposal_hidden=8,
        retain_hidden=8,
        update_hidden=8,
        output_hidden=8,
    ),
    "mfn_lsthm": lambda lens: MFN(
        DIMS,
        lens,
        cell="lsthm",
        text_hidden=8,
        audio_hidden=4,
        vision_hidden=6,
        memory_dim=10,
        attention_hidden=8,
        proposal_hidden=8,
        retain_hidden=8,
        update_hidden=8,
        output_hidden=8,
    ),
    "mult": lambda lens: MulT(
        DIMS,
        lens,
        dim=8,
        num_heads=2,
        num_layers=2,
        text_kernel_size=3,
        audio_kernel_size=3,
        vision_kernel_size=1,
    ),
    "misa": lambda lens: MISA(DIMS, lens, hidden_size=8, audio_rnn_hidden=4, vision_rnn_hidden=4),
    "self_mm": lambda lens: SelfMM(
        DIMS,
        lens,
        fusion_dim=8,
        text_dim=4,
        audio_dim=4,
        vision_dim=4,
        audio_rnn_hidden=4,
        vision_rnn_hidden=4,
        audio_out=4,
        vision_out=4,
    ),
}
UNALIGNED_OK = ["lmf", "mult", "misa", "self_mm"]


def make_batch(lens: dict[str, int], valid: dict[str, list[int]] | None = None, seed: int = 0) -> dict:
    """B=3 random batch; ``valid[m]`` = valid steps per sample (default: full, 5 and 2 of the text length)."""
    g = torch.Generator().manual_seed(seed)
    batch: dict = {}
    for m, d in DIMS.items():
        n = lens[m]
        steps = (valid or {}).get(m, [n, min(5, n), 2])
        batch[m] = torch.randn(3, n, d, generator=g)
        batch[f"{m}_mask"] = torch.arange(n)[None] < torch.tensor(steps)[:, None]
    batch["label"] = torch.tensor([2.0, -1.5, 0.5])
    batch["id"] = ["seg_a", "seg_b", "seg_c"]
    return batch


def corrupt_padding(batch: dict) -> dict:
    out = dict(batch)
    for m in DIMS:
        pad = ~batch[f"{m}_mask"]
        out[m] = torch.where(pad.unsqueeze(-1), torch.full_like(batch[m], 1e3), batch[m])
    return out


def total_loss(out: dict) -> torch.Tensor:
    return out["pred"].sum() + sum((out.get("aux_losses") or {}).values())


@pytest.mark.parametrize("name", list(BUILDERS))
def test_output_shape_and_finite(name: str) -> None:
    torch.manual_seed(0)
    net = BUILDERS[name](ALIGNED)
    for mode in (True, False):
        net.train(mode)
        out = net(make_batch(ALIGNED))
        assert out["pred"].shape == (3,)
        assert torch.isfinite(out["pred"]).all()
        assert net.extra_repr()


@pytest.mark.parametrize("name", UNALIGNED_OK)
def test_unaligned_sequences(name: str) -> None:
    torch.manual_seed(0)
    net = BUILDERS[name](UNALIGNED)
    out = net(make_batch(UNALIGNED))
    assert out["pred"].shape == (3,) and torch.isfinite(out["pred"]).all()


@pytest.mark.parametrize(
    ("name", "lens"),
    [pytest.param(n, ALIGNED, id=f"{n}-aligned") for n in BUILDERS]
    + [pytest.param(n, UNALIGNED, id=f"{n}-unaligned") for n in UNALIGNED_OK],
)
def test_padding_has_no_effect(name: str, lens: dict[str, int]) -> None:
    torch.manual_seed(0)
    net = BUILDERS[name](lens).eval()
    batch = make_batch(lens)
    with torch.no_grad():
        ref = net(batch)["pred"]
        changed = net(corrupt_padding(batch))["pred"]
    assert torch.allclose(ref, changed, atol=1e-5), (ref, changed)
    # Sanity: the valid steps do matter.
    other = dict(batch, text=batch["text"] + 1.0)
    with torch.no_grad():
        assert not torch.allclose(net(other)["pred"], ref, atol=1e-5)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    net = BUILDERS[name](UNALIGNED if name in UNALIGNED_OK else ALIGNED).train()
    lens = UNALIGNED if name in UNALIGNED_OK else ALIGNED
    if name == "self_mm":
        # Documented: the unimodal losses are weighted by tanh|y_s - y_m|, which is 0 until ULGM has moved the
        # pseudo labels (updated from a sample's second pass on, used from its third), so run two passes first.
        net(make_batch(lens))
        net(make_batch(lens))
    net.zero_grad()
    total_loss(net(make_batch(lens))).backward()
    missing = [
        n for n, p in net.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing


@pytest.mark.parametrize("name", list(BUILDERS))
def test_aux_losses_only_in_training(name: str) -> None:
    torch.manual_seed(0)
    net = BUILDERS[name](ALIGNED)
    train_out = net.train()(make_batch(ALIGNED))
    eval_out = net.eval()(make_batch(ALIGNED))
    assert not eval_out.get("aux_losses")
    expected = {"misa": {"diff", "sim", "recon"}, "self_mm": {"text", "audio", "vision"}}.get(name, set())
    aux = train_out.get("aux_losses") or {}
    assert set(aux) == expected
    for value in aux.values():
        assert value.ndim == 0 and torch.isfinite(value) and value >= 0


def test_misa_loss_weights_scale_aux_losses() -> None:
    batch = make_batch(ALIGNED)
    torch.manual_seed(0)
    a = MISA(DIMS, ALIGNED, hidden_size=8).train()
    torch.manual_seed(0)
    b = MISA(DIMS, ALIGNED, hidden_size=8, diff_weight=0.2, sim_weight=0.6, recon_weight=2.0).train()
    torch.manual_seed(1)
    la = a(batch)["aux_losses"]
    torch.manual_seed(1)
    lb = b(batch)["aux_losses"]
    for k in la:
        assert torch.allclose(lb[k], 2 * la[k], rtol=1e-5), k


def test_cmd_and_diff_loss() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g)
    assert cmd(x, x).item() == pytest.approx(0.0, abs=1e-6)
    # A pure shift changes only the first (mean) term: its norm is |shift| * sqrt(D).
    assert cmd(x, x + 0.5).item() == pytest.approx(0.5 * 2.0, rel=1e-5)
    assert cmd(x, 2 * x).item() > 0
    # Soft orthogonality: a code is maximally correlated with itself, and the loss ignores row scale.
    y = torch.randn(6, 4, generator=g)
    assert diff_loss(x, x).item() > diff_loss(x, y).item() > 0
    assert diff_loss(3 * x, y).item() == pytest.approx(diff_loss(x, y).item(), rel=1e-4)


def test_mfn_rejects_unaligned() -> None:
    with pytest.raises(ValueError, match="MFN.*aligned"):
        MFN(DIMS, UNALIGNED)
    net = BUILDERS["mfn"](ALIGNED)
    with pytest.raises(ValueError, match="MFN.*aligned"):
        net(make_batch(UNALIGNED))


def test_mfn_state_frozen_after_last_valid_step() -> None:
    """A sample padded to length 5 gives the same prediction as the same 5 steps in a batch of length 5."""
    torch.manual_seed(0)
    net = BUILDERS["mfn"](ALIGNED).eval()
    batch = make_batch(ALIGNED)
    short = {k: (v[:, :5] if isinstance(v, torch.Tensor) and v.ndim >= 2 else v) for k, v in batch.items()}
    with torch.no_grad():
        full = net(batch)["pred"][1]
        cut = net(short)["pred"][1]
    assert torch.allclose(full, cut, atol=1e-6)


def test_lmf_rank_matters_and_bad_args() -> None:
    with pytest.raises(ValueError, match="LMF"):
        LMF(DIMS, ALIGNED, rank=0)
    with pytest.raises(ValueError, match="LMF.*feature_dims"):
        LMF({"text": 3, "audio": 2}, ALIGNED)
    net = BUILDERS["lmf"](ALIGNED)
    assert net.text_factor.shape == (2, 7, 1) and net.audio_factor.shape == (2, 5, 1)


def test_mult_bad_args() -> None:
    with pytest.raises(ValueError, match="MulT.*divide"):
        MulT(DIMS, ALIGNED, dim=10, num_heads=3)
    with pytest.raises(ValueError, match="MulT.*odd"):
        MulT(DIMS, ALIGNED, dim=8, num_heads=2, text_kernel_size=4)


def test_misa_and_self_mm_bad_args() -> None:
    with pytest.raises(ValueError, match="MISA"):
        MISA(DIMS, ALIGNED, hidden_size=9, fusion_heads=2)
    with pytest.raises(ValueError, match="MISA"):
        MISA(DIMS, ALIGNED, text_encoder="/nonexistent/bert")
    with pytest.raises(ValueError, match="SelfMM"):
        SelfMM(DIMS, ALIGNED, text_pool="max")


# ---------------------------------------------------------------------------------------------- Self-MM ULGM
def test_self_mm_pseudo_labels_update() -> None:
    torch.manual_seed(0)
    net = BUILDERS["self_mm"](ALIGNED).train()
    batch = make_batch(ALIGNED)
    out1 = net(batch)
    labels1 = net.pseudo_labels(batch["id"])
    # First pass: every space starts from the ground truth and the unimodal losses are zero-weighted.
    assert torch.equal(labels1, batch["label"].unsqueeze(1).expand(3, 4))
    assert all(v.item() == 0.0 for v in out1["aux_losses"].values())
    assert net.ulgm_count[:3].tolist() == [1, 1, 1]

    net(batch)  # second pass (the paper's epoch 2): unimodal labels move, the multimodal one stays
    labels2 = net.pseudo_labels(batch["id"])
    assert torch.equal(labels2[:, 0], batch["label"])
    assert not torch.allclose(labels2[:, 1:], labels1[:, 1:])
    assert labels2.abs().max() <= net.label_bound
    out3 = net(batch)
    assert any(v.item() > 0 for v in out3["aux_losses"].values())
    assert set(out3["logs"]) == {"ulgm_shift_text", "ulgm_shift_audio", "ulgm_shift_vision"}

    # Evaluation never touches the state.
    before = net.ulgm_labels.clone()
    net.eval()(make_batch(ALIGNED, seed=3))
    assert torch.equal(net.ulgm_labels, before)
    assert net.ulgm_count[:3].tolist() == [3, 3, 3]


def test_self_mm_new_ids_and_growth() -> None:
    torch.manual_seed(0)
    net = BUILDERS["self_mm"](ALIGNED).train()
    for i in range(30):  # 90 ids > the initial capacity of 64
        batch = make_batch(ALIGNED, seed=i)
        batch["id"] = [f"s{i}_{j}" for j in range(3)]
        net(batch)
    assert len(net.get_extra_state()["ids"]) == 90
    assert net.ulgm_labels.shape[0] >= 90
    assert net.pseudo_labels(["s29_2"])[0, 0].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="SelfMM.*never seen"):
        net.pseudo_labels(["unknown"])


def test_self_mm_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    net = BUILDERS["self_mm"](ALIGNED).train()
    batch = make_batch(ALIGNED)
    net(batch)
    net(batch)
    fresh = BUILDERS["self_mm"](ALIGNED)
    fresh.load_state_dict(net.state_dict())
    assert torch.equal(fresh.pseudo_labels(batch["id"]), net.pseudo_labels(batch["id"]))
    assert torch.equal(fresh.ulgm_count, net.ulgm_count)


def test_self_mm_training_needs_ids() -> None:
    net = BUILDERS["self_mm"](ALIGNED).train()
    batch = make_batch(ALIGNED)
    del batch["id"]
    with pytest.raises(ValueError, match="SelfMM.*id"):
        net(batch)
    net.eval()(batch)  # evaluation does not need them
