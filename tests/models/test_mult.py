"""MulT's fused attention and packed-row paths (models/mult.py) against the implementation they replaced.

The reference is the previous code path: the whole model computed on padded sequences (every step of every
layer, the last valid step read at the end) with ``nn.MultiheadAttention(batch_first=True)`` called with a key
padding mask and ``need_weights=False``, loaded with the very same weights. The comparison covers the whole model
(masks of unaligned sequences, empty sequences, last valid step) in eval mode, its gradients, train mode without
dropout, and the FLOP count (lower: padding and unread rows are skipped). ``attention="auto"`` (the fused CPU kernel of models/kernels where it builds) and
``attention="torch"`` (PyTorch's kernels) are both compared with the reference; the kernel's own tests are in
test_attention_kernel.py.
"""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from models.msa_utils import MODALITIES, last_valid, zero_padding
from models.mult import (
    CrossmodalLayer,
    CrossmodalTransformer,
    MulT,
    MultiheadAttention,
    dropout_keep_mask,
    key_mask,
    sinusoidal_positions,
)

DIMS = {"text": 12, "audio": 5, "vision": 7}
LENS = {"text": 6, "audio": 11, "vision": 9}


class ReferenceAttention(nn.Module):
    """The replaced code: ``nn.MultiheadAttention`` with the key padding mask recovered from the additive mask."""

    def __init__(self, fast: MultiheadAttention) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(fast.dim, fast.num_heads, dropout=fast.dropout, batch_first=True)
        self.mha.load_state_dict(fast.state_dict())

    def forward(self, query, mask, source=None, query_mask=None):  # computes every query row: padding must be inert
        kv = query if source is None else source
        pad = torch.isinf(mask[:, 0, 0])
        return self.mha(query, kv, kv, key_padding_mask=pad, need_weights=False)[0]


def padded_transformer(tr: CrossmodalTransformer, target, target_mask, source=None, source_mask=None):
    """The replaced ``CrossmodalTransformer.forward``: every step of every layer on the padded sequences."""

    def embed(x):
        pos = sinusoidal_positions(x.shape[1], tr.dim, x.device, x.dtype)
        return tr.embed_drop(math.sqrt(tr.dim) * x + pos)

    x = embed(target)
    src = None if source is None else embed(source)
    for layer in tr.layers:
        attended = layer.attn(layer.norm_attn(x), target_mask if src is None else source_mask,
                              None if src is None else layer.norm_attn(src))
        x = x + layer.res_drop(attended)
        x = x + layer.res_drop(layer.ff(layer.norm_ff(x)))
    return tr.norm(x)


def padded_forward(self: MulT, batch):
    """The replaced ``MulT.forward`` (padded layout, last valid step read at the end)."""
    x = {m: zero_padding(batch[m], batch[f"{m}_mask"]) for m in MODALITIES}
    masks = {m: batch[f"{m}_mask"].clone() for m in MODALITIES}
    for m in MODALITIES:
        masks[m][:, 0] |= ~masks[m].any(1)
    keys = {m: key_mask(~masks[m], x[m].dtype) for m in MODALITIES}
    x["text"] = self.text_drop(x["text"])
    z = {m: self.proj[m](x[m].transpose(1, 2)).transpose(1, 2) for m in MODALITIES}
    last = []
    for t in MODALITIES:
        h = torch.cat([padded_transformer(self.crossmodal[f"{s}_to_{t}"], z[t], keys[t], z[s], keys[s])
                       for s in MODALITIES if s != t], dim=-1)
        last.append(last_valid(padded_transformer(self.memory[t], h, keys[t]), masks[t]))
    last_hs = torch.cat(last, dim=-1)
    proj = self.out_proj2(self.out_drop(torch.relu(self.out_proj1(last_hs))))
    return {"pred": self.head(proj + last_hs).squeeze(-1)}


def reference_of(model: MulT) -> MulT:
    ref = copy.deepcopy(model)
    for layer in ref.modules():
        if isinstance(layer, CrossmodalLayer):
            layer.attn = ReferenceAttention(layer.attn)
    ref.forward = types.MethodType(padded_forward, ref)
    return ref


def make_batch(B: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = {}
    for m, L in LENS.items():
        lengths = torch.randint(1, L + 1, (B,), generator=g)
        lengths[0] = L
        if m == "audio":
            lengths[1] = 0  # an empty sequence: MulT reads its first (zeroed) step
        mask = torch.arange(L)[None] < lengths[:, None]
        batch[m] = torch.randn(B, L, DIMS[m], generator=g) * 3.0  # padding holds junk: must not matter
        batch[f"{m}_mask"] = mask
    return batch


ATTENTION = ["auto", "torch"]


def tiny(**kwargs) -> MulT:
    torch.manual_seed(0)
    return MulT(DIMS, LENS, dim=8, num_heads=2, num_layers=2, **kwargs)


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n.replace(".mha", ""): p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_state_dict_is_the_one_of_nn_multiheadattention() -> None:
    model = tiny()
    ref = reference_of(model)
    assert {k.replace(".mha", "") for k in ref.state_dict()} == set(model.state_dict())
    fresh = MultiheadAttention(8, 2)
    mha = nn.MultiheadAttention(8, 2, batch_first=True)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in mha.state_dict().items()}


@pytest.mark.parametrize("attention", ATTENTION)
def test_same_outputs_and_gradients_as_nn_multiheadattention_in_eval(attention: str) -> None:
    model = tiny(attention=attention)
    ref = reference_of(model)
    model.eval()
    ref.eval()
    batch = make_batch()
    out, out_ref = model(batch)["pred"], ref(batch)["pred"]
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    target = torch.linspace(-2, 2, out.numel())
    (out - target).abs().mean().backward()
    (out_ref - target).abs().mean().backward()
    g, g_ref = grads(model), grads(ref)
    assert set(g) == set(g_ref) == {n for n, _ in model.named_parameters()}
    for name in g:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("attention", ATTENTION)
def test_train_mode_without_dropout_matches_and_dropout_is_active(attention: str) -> None:
    zero = {k: 0.0 for k in ("text_dropout", "attn_dropout", "audio_attn_dropout", "vision_attn_dropout",
                             "relu_dropout", "res_dropout", "embed_dropout", "output_dropout")}
    model = tiny(**zero, attention=attention).train()
    ref = reference_of(model).train()
    batch = make_batch(seed=1)
    torch.testing.assert_close(model(batch)["pred"], ref(batch)["pred"], rtol=1e-5, atol=1e-5)
    # attention dropout alone changes the output from call to call in training, not in eval
    model = tiny(**{**zero, "attn_dropout": 0.5, "audio_attn_dropout": 0.5, "vision_attn_dropout": 0.5},
                 attention=attention)
    model.train()
    assert not torch.allclose(model(batch)["pred"], model(batch)["pred"])
    model.eval()
    torch.testing.assert_close(model(batch)["pred"], model(batch)["pred"])


@pytest.mark.parametrize("attention", ATTENTION)
def test_padding_has_no_effect(attention: str) -> None:
    model = tiny(attention=attention).eval()
    batch = make_batch(seed=2)
    junk = {k: v.clone() for k, v in batch.items()}
    for m in LENS:
        pad = ~batch[f"{m}_mask"]
        junk[m][pad] = 1e3
    torch.testing.assert_close(model(batch)["pred"], model(junk)["pred"])


@pytest.mark.parametrize("mode", ["eval", "train"])  # fused kernel / dropout path
def test_flop_count_is_below_the_padded_computation(mode: str) -> None:
    """On the torch path (the fused CPU kernel is invisible to the FLOP counter; the math is the same): the packed
    rows skip the padding, and the memory transformers' last layer computes the read step only."""
    model = getattr(tiny(attention="torch"), mode)()
    ref = getattr(reference_of(model), mode)()

    def flops(net: nn.Module, batch) -> int:
        with FlopCounterMode(display=False) as counter:
            net(batch)["pred"].sum().backward()
        return counter.get_total_flops()

    padded, full = make_batch(), make_batch()
    for m in LENS:
        full[f"{m}_mask"] = torch.ones_like(full[f"{m}_mask"])
    assert 0 < flops(model, full) < flops(ref, full)  # no padding: the unread rows of the last layers
    saved_full = flops(ref, full) - flops(model, full)
    assert flops(ref, padded) - flops(model, padded) > saved_full  # and the padding on top


def test_key_mask_and_bad_heads() -> None:
    pad = torch.tensor([[False, True], [False, False]])
    mask = key_mask(pad, torch.float32)
    assert mask.shape == (2, 1, 1, 2) and torch.isinf(mask[0, 0, 0, 1]) and mask.sum() == float("-inf")
    with pytest.raises(ValueError, match="MultiheadAttention"):
        MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="MultiheadAttention: attention"):
        MultiheadAttention(10, 2, attention="flash")
    with pytest.raises(ValueError, match="MulT: attention"):
        tiny(attention="flash")


def test_dropout_keep_mask_rate_and_scale() -> None:
    torch.manual_seed(0)
    keep, scale = dropout_keep_mask((301, 333), 0.3, torch.device("cpu"))
    assert keep.shape == (301, 333) and keep.dtype == torch.bool
    assert abs(keep.float().mean().item() - 0.7) < 0.005
    assert abs(scale - 1 / 0.7) < 1e-4
    assert dropout_keep_mask((5,), 1e-9, torch.device("cpu"))[0].all()  # keep probability rounds to 1


@pytest.mark.parametrize("attention", ATTENTION)
def test_dropout_path_equals_fused_path_when_nothing_is_dropped(attention: str) -> None:
    torch.manual_seed(0)
    attn = MultiheadAttention(8, 2, dropout=1e-9, attention=attention)  # the training path, keeps every weight
    q, src = torch.randn(3, 5, 8), torch.randn(3, 7, 8)
    mask = key_mask(torch.arange(7)[None] >= torch.tensor([7, 3, 1])[:, None], torch.float32)
    attn.train()
    out_train = attn(q, mask, src)
    attn.eval()
    torch.testing.assert_close(out_train, attn(q, mask, src))
    attn.train()
    torch.testing.assert_close(attn(q, key_mask(torch.zeros(3, 5, dtype=torch.bool), torch.float32)),
                               attn.eval()(q, key_mask(torch.zeros(3, 5, dtype=torch.bool), torch.float32)))


def test_accelerators_take_the_fused_kernel_with_dropout(monkeypatch) -> None:
    """Where the fused kernels accept dropout (CUDA), training attention goes through SDPA with ``dropout_p``."""
    from models import mult

    assert not mult.fused_dropout_supported(torch.device("cpu"))
    assert mult.fused_dropout_supported(torch.device("cuda"))
    calls: list[float] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, dropout_p: float = 0.0, **kwargs):
        calls.append(dropout_p)
        return sdpa(*args, dropout_p=dropout_p, **kwargs)

    monkeypatch.setattr(mult.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(mult, "fused_dropout_supported", lambda device: True)  # pretend CPU were such a device
    torch.manual_seed(0)
    attn = MultiheadAttention(8, 2, dropout=0.5, attention="torch").train()
    q = torch.randn(4, 6, 8)
    mask = key_mask(torch.zeros(4, 6, dtype=torch.bool), torch.float32)
    out = attn(q, mask)
    assert calls == [0.5]
    assert not torch.allclose(out, attn.eval()(q, mask))  # dropout was applied
    assert calls == [0.5, 0.0]
