"""models/kernels: the fused CPU attention kernel (C++ extension) against float64 reference math, and in MulT.

The extension (``attention_cpu_vec.cpp``) is built (or loaded from torch's extensions cache) once per session by
the module-scoped ``ext`` fixture; the first build on a machine takes a minute or two, later sessions load the cached library.
Without a compiler or ninja every test here skips with the build error as the reason.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from models import kernels
from models.mult import MulT, MultiheadAttention, key_mask
from tests.models.test_mult import DIMS, LENS, make_batch  # padding holds junk; one empty audio sequence


def built(flags: tuple[str, ...] = ()):
    """The extension built with ``flags`` added (cached per process), or the test skipped with the reason."""
    module, reason = kernels._build_with(flags)
    if module is None:
        pytest.skip(f"the fused CPU attention extension ({flags}) cannot be built here: {reason}")
    return module


@pytest.fixture(scope="module")
def ext():
    """The extension as :func:`models.kernels.load_extension` gives it."""
    module = built()
    assert kernels.load_extension() is module
    return module


def reference(q, k, v, valid, keep=None, p=0.0):
    """``softmax(q k^T / sqrt(dh) + mask) v`` in float64, dropout as ``keep / (1 - p)`` on the weights."""
    q, k, v = (t.double() for t in (q, k, v))
    mask = key_mask(~valid, torch.float64)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + mask, dim=-1)
    if keep is not None:
        w = w * keep / (1 - p)
    return w @ v


def inputs(B, h, Lq, Lk, dh, seed=0, lengths=None):
    g = torch.Generator().manual_seed(seed)
    # q as a transposed view ([B, Lq, h, dh] storage), k / v contiguous: the kernel takes any strides
    q = torch.randn(B, Lq, h, dh, generator=g).transpose(1, 2).requires_grad_()
    k = torch.randn(B, h, Lk, dh, generator=g).requires_grad_()
    v = torch.randn(B, h, Lk, dh, generator=g).requires_grad_()
    if lengths is None:
        lengths = torch.randint(1, Lk + 1, (B,), generator=g)
        lengths[0] = Lk
    valid = torch.arange(Lk)[None] < torch.as_tensor(lengths)[:, None]
    return q, k, v, valid


def check_against_reference(out, q, k, v, valid, keep=None, p=0.0):
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = reference(*leaves, valid, keep, p)
    ref_grads = torch.autograd.grad(ref, leaves, grad.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    for name, got, want in zip("qkv", (dq, dk, dv), ref_grads):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=f"d{name}")


SHAPES = [  # (B, h, Lq, Lk, dh): Lq != Lk both ways, MulT's dh = 5 and 10, dh = 16, a generic dh, one key
    (3, 2, 7, 11, 5),
    (2, 3, 13, 4, 16),
    (2, 10, 20, 37, 5),
    (2, 2, 5, 9, 3),
    (3, 4, 8, 12, 10),
    (1, 1, 4, 1, 64),
    (2, 2, 11, 533, 5),  # over 512 keys: several 16-lane blocks and a ragged last one, 11 rows (not a multiple of 4)
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [False, True])
def test_without_dropout_equals_reference(ext, shape, training: bool) -> None:
    q, k, v, valid = inputs(*shape)
    p = 0.0 if training else 0.3  # eval ignores p; training with p = 0 keeps every weight
    out = kernels.fused_attention(q, k, v, valid, p, training=training)
    assert out.shape == q.shape
    check_against_reference(out, q, k, v, valid)


@pytest.mark.parametrize("shape", [*SHAPES[:3], SHAPES[4], (2, 3, 9, 40, 10)])  # dh 5, 16, 10; keys > 2 x 16 lanes
@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_equals_reference_with_the_kernel_mask(ext, shape, p: float) -> None:
    q, k, v, valid = inputs(*shape, seed=3)
    seed = 123456789
    keep = kernels.dropout_keep_mask(seed, tuple(q.shape[:3]) + (k.shape[2],), p)
    assert keep.shape == (*q.shape[:3], k.shape[2]) and keep.dtype == torch.bool
    assert not keep.all()  # something is dropped, so the comparison means something
    out = kernels.fused_attention(q, k, v, valid, p, training=True, seed=seed)
    check_against_reference(out, q, k, v, valid, keep, p)
    # the same mask regenerated in backward, not a fresh one: a second mask gives another output
    other = kernels.dropout_keep_mask(seed + 1, tuple(keep.shape), p)
    assert not torch.allclose(out.double(), reference(q, k, v, valid, other, p))


def test_seed_comes_from_torch_generator(ext) -> None:
    q, k, v, valid = inputs(2, 3, 8, 10, 5)
    torch.manual_seed(7)
    a = kernels.fused_attention(q, k, v, valid, 0.4, training=True)
    b = kernels.fused_attention(q, k, v, valid, 0.4, training=True)
    torch.manual_seed(7)
    c = kernels.fused_attention(q, k, v, valid, 0.4, training=True)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_keep_mask_rate_and_seeds(ext) -> None:
    shape = (4, 10, 200, 300)  # 2.4 M decisions
    keep = kernels.dropout_keep_mask(1, shape, 0.3)
    rate = keep.float().mean().item()
    assert abs(rate - 0.7) < 0.003  # the standard error is 3e-4
    # neighbours are independent: P(keep_j and keep_j+1) = 0.49, likewise along queries and heads
    for dim in (3, 2, 1):
        a, b = keep.narrow(dim, 0, shape[dim] - 1), keep.narrow(dim, 1, shape[dim] - 1)
        assert abs((a & b).float().mean().item() - 0.49) < 0.004, dim
    assert torch.equal(keep, kernels.dropout_keep_mask(1, shape, 0.3))
    other = kernels.dropout_keep_mask(2, shape, 0.3)
    agree = (keep == other).float().mean().item()
    assert abs(agree - (0.7**2 + 0.3**2)) < 0.003  # independent masks agree on 58 % of the elements
    assert abs(kernels.dropout_keep_mask(3, shape, 0.8).float().mean().item() - 0.2) < 0.003
    # the decision of (b, h, i, j) does not depend on the shape it sits in
    assert torch.equal(kernels.dropout_keep_mask(1, (2, 3, 5, 7), 0.3), keep[:2, :3, :5, :7])


def test_padded_keys_get_no_weight_and_no_gradient(ext) -> None:
    q, k, v, valid = inputs(3, 2, 6, 9, 5, lengths=[9, 4, 1])
    out = kernels.fused_attention(q, k, v, valid, 0.3, training=True)
    junk_k, junk_v = k.detach().clone(), v.detach().clone()
    junk_k[~valid[:, None].expand_as(junk_k[..., 0])] = 1e4
    junk_v[~valid[:, None].expand_as(junk_v[..., 0])] = -1e4
    torch.manual_seed(0)
    a = kernels.fused_attention(q, k, v, valid, 0.3, training=True)
    torch.manual_seed(0)
    b = kernels.fused_attention(q, junk_k, junk_v, valid, 0.3, training=True)
    torch.testing.assert_close(a, b)
    dk, dv = torch.autograd.grad(out.sum(), (k, v))
    pad = ~valid[:, None, :, None].expand_as(dk)
    assert (dk[pad] == 0).all() and (dv[pad] == 0).all()
    assert dv[~pad].abs().sum() > 0


def test_loading_keeps_denormals(ext) -> None:
    """-ffast-math stays out of the link: no crtfastmath flushing the whole process's denormals to zero."""
    assert (torch.tensor([1e-39]) / 10).item() > 0


def test_bad_inputs(ext) -> None:
    q, k, v, valid = inputs(2, 2, 3, 4, 5)
    with pytest.raises(ValueError, match="fused_attention: CPU float32"):
        kernels.fused_attention(q.double(), k.double(), v.double(), valid, 0.0, training=False)
    with pytest.raises(ValueError, match="fused_attention: dropout"):
        kernels.fused_attention(q, k, v, valid, 1.0, training=True)
    with pytest.raises(RuntimeError, match="key mask"):
        kernels.fused_attention(q, k, v, valid[:, :3], 0.0, training=False)
    attn = MultiheadAttention(10, 2, attention="fused_cpu").double()
    x = torch.randn(2, 3, 10, dtype=torch.float64)
    with pytest.raises(ValueError, match="MultiheadAttention: attention='fused_cpu'"):
        attn(x, key_mask(torch.zeros(2, 3, dtype=torch.bool), torch.float64))


def labelled_batch(B: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    batch = make_batch(B, seed)
    batch["label"] = torch.linspace(-2, 2, B)
    return batch


def mult(attention: str, **kwargs) -> MulT:
    torch.manual_seed(0)
    return MulT(DIMS, LENS, dim=10, num_heads=2, num_layers=2, attention=attention, **kwargs)  # dh = 5


def test_mult_auto_equals_torch_path_in_eval(ext) -> None:
    fused, plain = mult("auto").eval(), mult("torch").eval()
    plain.load_state_dict(fused.state_dict())
    batch = labelled_batch()
    calls = []
    real = kernels.fused_attention_packed
    try:
        kernels.fused_attention_packed = lambda *a, **kw: calls.append(1) or real(*a, **kw)
        out = fused(batch)["pred"]
    finally:
        kernels.fused_attention_packed = real
    assert len(calls) == 6 * 2 + 3 * 3  # every attention of the model ran the kernel
    out_ref = plain(batch)["pred"]
    torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
    F.l1_loss(out, batch["label"]).backward()
    F.l1_loss(out_ref, batch["label"]).backward()
    ref_grads = dict(plain.named_parameters())
    for name, param in fused.named_parameters():
        torch.testing.assert_close(param.grad, ref_grads[name].grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow  # ~20 s on the loaded 2-core machine
def test_mult_trains_with_the_kernel_dropout(ext) -> None:
    torch.manual_seed(0)
    model = MulT(DIMS, LENS, dim=8, num_heads=2, num_layers=1, attention="fused_cpu", attn_dropout=0.3,
                 audio_attn_dropout=0.2, vision_attn_dropout=0.1, text_dropout=0.0, embed_dropout=0.0,
                 output_dropout=0.0).train()
    batch = labelled_batch(B=8, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):  # 12 were enough before packed rows; the dropout draws differ since (0.344 vs 0.338 needed)
        loss = F.l1_loss(model(batch)["pred"], batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses


def test_build_failure_warns_once_and_falls_back(monkeypatch) -> None:
    monkeypatch.setattr(kernels, "_build", lambda: (None, "CalledProcessError: no compiler here"))
    kernels.available.cache_clear()
    try:
        attn = MultiheadAttention(8, 2, dropout=0.5).train()
        x = torch.randn(2, 5, 8)
        mask = key_mask(torch.zeros(2, 5, dtype=torch.bool), torch.float32)
        with pytest.warns(RuntimeWarning, match="no compiler here"):
            attn(x, mask)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert attn(x, mask).shape == (2, 5, 8)  # torch path, no second warning
        with pytest.raises(RuntimeError, match="no compiler here"):
            MultiheadAttention(8, 2, attention="fused_cpu")(x, mask)
    finally:
        kernels.available.cache_clear()


def test_ninja_next_to_the_interpreter_is_found_without_an_activated_venv(tmp_path, monkeypatch) -> None:
    import os
    import sys

    fake_bin = tmp_path / "venv" / "bin"
    fake_bin.mkdir(parents=True)
    (fake_bin / "ninja").write_text("#!/bin/sh\necho 1.11.1\n")
    (fake_bin / "ninja").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_bin / "python"))
    monkeypatch.setenv("PATH", "/nonexistent")
    with kernels._ninja_on_path():
        assert os.environ["PATH"].split(os.pathsep)[0] == str(fake_bin)
    assert os.environ["PATH"] == "/nonexistent"


@pytest.mark.parametrize("shape", [(3, 2, 7, 11, 5), (2, 3, 13, 40, 10), (2, 2, 9, 20, 16), (2, 2, 6, 9, 3)])
@pytest.mark.parametrize("p", [0.0, 0.3])
def test_skipped_query_rows_are_zero_and_the_others_unchanged(ext, shape, p: float) -> None:
    """query_valid: rows off get zero output and zero dq and send no gradient to k / v; rows on equal a full call
    (same dropout keep decisions), for the AVX-512 widths and a generic one (dh = 3)."""
    q, k, v, valid = inputs(*shape, seed=5)
    B, Lq = q.shape[0], q.shape[2]
    g = torch.Generator().manual_seed(2)
    qvalid = torch.rand(B, Lq, generator=g) < 0.6
    qvalid[0, 0], qvalid[-1, -1] = True, False  # both kinds present
    seed = 99
    full = kernels.fused_attention(q, k, v, valid, p, training=True, seed=seed)
    part = kernels.fused_attention(q, k, v, valid, p, training=True, seed=seed, query_valid=qvalid)
    on = qvalid[:, None, :, None].expand_as(full)
    torch.testing.assert_close(part[on], full[on], rtol=0, atol=0)
    assert (part[~on] == 0).all()
    grad = torch.randn(full.shape, generator=g)
    want = torch.autograd.grad(full, (q, k, v), grad * on)  # the full call with the skipped rows' gradient cut
    got = torch.autograd.grad(part, (q, k, v), grad)
    for name, a, b in zip("qkv", got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"d{name}")
    assert (got[0][~on] == 0).all()


def test_query_mask_of_the_wrong_shape_is_refused(ext) -> None:
    q, k, v, valid = inputs(2, 2, 5, 7, 5)
    with pytest.raises(ValueError, match=r"query_valid must be \[B, Lq\]"):
        kernels.fused_attention(q, k, v, valid, 0.0, training=False, query_valid=torch.ones(2, 7, dtype=torch.bool))


NARROW_BUILDS = [("avx2", ("-mno-avx512f",)), ("portable", ("-mno-avx512f", "-mno-avx2"))]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "flags"), NARROW_BUILDS)
def test_paths_without_avx512_equal_reference(monkeypatch, path: str, flags: tuple[str, ...]) -> None:
    """The other code paths, built here under other names: ``-mno-avx512f`` gives ATen's AVX2 vectors on a CPU with
    AVX2 (many AMD and older Intel machines; the plain-array vectors without AVX2), ``-mno-avx2`` the plain-array
    ones. The same reference checks, dropout, skipped query rows and the NaN / inf checks included; each build says
    which vectors it uses."""
    portable = built(flags)  # a compiler refusing the flag (non-x86) skips: nothing to check
    monkeypatch.setattr(kernels, "load_extension", lambda: portable)
    assert portable.capability() == ("avx2" if path == "avx2" and _cpu_has("avx2", "fma", "f16c") else "default")
    for shape in SHAPES:
        for p in (0.0, 0.3):
            q, k, v, valid = inputs(*shape, seed=3)
            keep = kernels.dropout_keep_mask(7, (*q.shape[:3], k.shape[2]), p) if p else None
            out = kernels.fused_attention(q, k, v, valid, p, training=True, seed=7)
            check_against_reference(out, q, k, v, valid, keep, p)
    for shape in [(3, 2, 7, 11, 5), (2, 3, 13, 40, 10), (2, 2, 6, 9, 3)]:
        test_skipped_query_rows_are_zero_and_the_others_unchanged(portable, shape, 0.3)
    for case in NONFINITE_CASES:
        for dh in (5, 3):  # a template width and the run-time one
            check_nonfinite_against_torch(case, dh)
    check_nonfinite_with_dropout("nan_key")


@pytest.mark.parametrize("cross", [False, True])
def test_packed_layouts_give_the_same_outputs_and_gradients(ext, cross: bool) -> None:
    """``fused_attention_packed`` (MulT's path: the gradient comes back in the projections' layout) against
    ``fused_attention`` on views of the same tensors, dropout and skipped query rows included."""
    g = torch.Generator().manual_seed(5)
    B, h, Lq, dh = 3, 2, 9, 5
    Lk = 13 if cross else Lq
    a = torch.randn(B, Lq, h, dh, generator=g) if cross else torch.randn(B, Lq, 3, h, dh, generator=g)
    b = torch.randn(B, Lk, 2, h, dh, generator=g) if cross else None
    valid = torch.arange(Lk)[None] < torch.tensor([[Lk], [4], [1]])
    qvalid = torch.arange(Lq)[None] < torch.tensor([[Lq], [6], [2]])
    grad = torch.randn(B, h, Lq, dh, generator=g)

    def run(packed: bool):
        a2 = a.clone().requires_grad_()
        b2 = None if b is None else b.clone().requires_grad_()
        if packed:
            out = kernels.fused_attention_packed(a2, b2, valid, 0.3, training=True, seed=9, query_valid=qvalid)
        else:
            q, k, v = kernels._split_packed(a2, b2)
            out = kernels.fused_attention(q, k, v, valid, 0.3, training=True, seed=9, query_valid=qvalid)
        out.backward(grad)
        return out, a2.grad, None if b2 is None else b2.grad

    got, want = run(True), run(False)
    for x, y in zip(got, want, strict=True):
        if y is None:
            assert x is None
            continue
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)
    assert got[1].abs().sum() > 0
    with pytest.raises(ValueError, match="fused_attention_packed: qkv"):
        kernels.fused_attention_packed(torch.zeros(B, Lq, h, dh), None, valid, 0.0, training=False)


def _cpu_has(*flags: str) -> bool:
    """Whether /proc/cpuinfo lists every one of ``flags`` (False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((x for x in f if x.startswith("flags")), "")
    except OSError:
        return False
    return set(flags) <= set(line.split())


def test_build_flags_and_names() -> None:
    """The kernel builds without -ffast-math (NaN / inf as torch); a build with extra flags gets a name of its own."""
    file, flags, name = kernels.source_build()
    assert file.name == kernels.SOURCE == "attention_cpu_vec.cpp" and file.is_file()
    assert not file.with_name("attention_cpu.cpp").exists()  # the -ffast-math intrinsics source is gone
    assert "-ffast-math" not in flags and {"-O3", "-march=native", "-fopenmp"} <= set(flags)
    narrow = kernels.source_build(("-mno-avx2",))
    assert narrow[1][-1] == "-mno-avx2" and narrow[2] != name


def test_kernel_uses_the_widest_vectors_of_this_cpu() -> None:
    """-march=native alone selects ATen's AVX-512 vectors on an AVX-512 CPU (AVX2 ones on an AVX2 CPU)."""
    module = built()
    if _cpu_has("avx512f", "avx512bw", "avx512dq", "avx512vl"):
        assert module.capability() == "avx512"
    elif _cpu_has("avx2", "fma", "f16c"):
        assert module.capability() == "avx2"
    else:
        assert module.capability() == "default"


# Non-finite inputs.
NONFINITE_CASES = ["nan_key", "nan_query", "nan_value", "inf_scores", "fully_masked"]


def nonfinite_inputs(case: str, dh: int = 5):
    """Inputs of ``case``: a NaN in a valid key / query / value, a query row whose scores are all +inf (so
    ``inf - inf`` in the softmax), or a sample with no valid key."""
    q, k, v, valid = inputs(2, 2, 4, 21, dh, seed=11, lengths=[21, 13])
    q, k, v = (t.detach().clone() for t in (q, k, v))
    if case == "nan_key":
        k[0, 1, 17, 1] = float("nan")  # a valid key in the partial last vector of 16
    elif case == "nan_query":
        q[1, 0, 2, 0] = float("nan")
    elif case == "nan_value":
        v[0, 0, 3, 2] = float("nan")
    elif case == "inf_scores":
        q[0, 1, 1, :] = float("inf")
        k[0, 1] = k[0, 1].abs() + 0.1
    elif case == "fully_masked":
        valid[1] = False
    return [t.requires_grad_() for t in (q, k, v)], valid


def check_nonfinite_against_torch(case: str, dh: int = 5) -> None:
    """The kernel (eval, no dropout) against the torch path of MulT (``F.scaled_dot_product_attention`` with the
    0 / -inf key mask): NaN exactly where torch has NaN, equal elsewhere, in the output and the gradients. Padded
    keys are the exception: the kernel never touches them (zero gradient), torch's NaN row of weights reaches them
    too."""
    (q, k, v), valid = nonfinite_inputs(case, dh)
    out = kernels.fused_attention(q, k, v, valid, 0.3, training=False)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask(~valid, torch.float32))
    if case != "fully_masked":
        assert want.isnan().any(), case  # the case means something
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5, equal_nan=True, msg=case)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    got_g = torch.autograd.grad(out, (q, k, v), grad)
    want_g = torch.autograd.grad(want, (q, k, v), grad)
    key_on = valid[:, None, :, None].expand_as(k)
    assert (got_g[1][~key_on] == 0).all() and (got_g[2][~key_on] == 0).all()
    for name, a, b, on in zip("qkv", got_g, want_g, (torch.ones_like(q, dtype=torch.bool), key_on, key_on)):
        torch.testing.assert_close(a[on], b[on], rtol=1e-4, atol=1e-5, equal_nan=True, msg=f"{case}: d{name}")


def check_nonfinite_with_dropout(case: str) -> None:
    """Training with dropout: NaN where the float64 reference (the kernel's keep mask) has NaN, equal elsewhere."""
    (q, k, v), valid = nonfinite_inputs(case)
    p, seed = 0.3, 5
    keep = kernels.dropout_keep_mask(seed, (*q.shape[:3], k.shape[2]), p)
    out = kernels.fused_attention(q, k, v, valid, p, training=True, seed=seed)
    ref = reference(q, k, v, valid, keep, p)
    assert ref.isnan().any()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5, equal_nan=True, msg=case)


@pytest.mark.parametrize("dh", [5, 16, 3])
@pytest.mark.parametrize("case", NONFINITE_CASES)
def test_nonfinite_inputs_give_what_torch_gives(ext, case: str, dh: int) -> None:
    """NaN in a valid key or query, +inf scores: torch's softmax gives NaN rows, and so must the kernel (never
    finite numbers: no -ffast-math, a NaN-propagating max); a NaN value spoils its output column; a sample without
    valid keys gives zeros (as torch's SDPA)."""
    check_nonfinite_against_torch(case, dh)


@pytest.mark.parametrize("case", ["nan_key", "nan_query", "inf_scores"])
def test_nonfinite_inputs_with_dropout_give_nan_rows(ext, case: str) -> None:
    check_nonfinite_with_dropout(case)
