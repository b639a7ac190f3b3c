"""Fused CPU attention with in-kernel attention dropout (C++ extension, compiled at first use).

PyTorch's CPU flash kernel refuses ``dropout_p > 0``, so training MulT on CPU materialised every attention weight
(scores, mask, softmax, dropout mask, product; all again in backward). ``attention_cpu_vec.cpp`` computes, per (batch
b, head h, query row i) and over the valid keys j only,

.. math::
    s_j = \\frac{q_i \\cdot k_j}{\\sqrt{d_h}},\\quad P_j = \\mathrm{softmax}_j(s),\\quad
    z_j = \\frac{\\mathrm{keep}(seed, b, h, i, j)}{1 - p},\\quad o_i = \\sum_j P_j z_j v_j

and saves only the row log-sum-exp; the backward recomputes the scores and the keep decisions (a stateless
counter-based hash of ``(seed, b, h, i, j)``, so no ``Lq x Lk`` mask is stored) and accumulates
:math:`ds_j = P_j (g_j - \\sum_k P_k g_k)`, :math:`g_j = z_j (dO_i \\cdot v_j)`. The 64-bit seed is drawn from
torch's default CPU generator per call, so ``torch.manual_seed`` makes runs reproducible. The keep probability is
``round((1 - p) 2^24) / 2^24`` (24 hash bits per decision); the rescale is ``1 / (1 - p)``.

The extension is built with ``torch.utils.cpp_extension.load`` (needs a C++ compiler and ninja) into torch's
extensions cache on the first call of :func:`load_extension`; a failed build warns once with the reason and
:func:`available` returns False, so callers fall back to their torch path.

One source, ``attention_cpu_vec.cpp``, written over ATen's ``at::vec::Vectorized<float>`` (16 lanes with AVX-512,
8 with AVX2, a plain array otherwise, as ``-march=native`` finds the CPU) and built without ``-ffast-math``: IEEE
arithmetic, so NaN / inf give what torch's softmax gives. It replaced a hand-written AVX-512 / AVX2 intrinsics source
built with ``-ffast-math`` (a NaN score gave finite garbage), removed after a side-by-side run measured the same speed
(vec 20.36 vs 20.11 samples/s, ``benchmarks/bench_msa.py``, AVX-512 host, 2026-12-06; ``docs/results/benchmarks.csv``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = [
    "FLAGS",
    "SOURCE",
    "available",
    "dropout_keep_mask",
    "fused_attention",
    "fused_attention_packed",
    "load_extension",
    "source_build",
    "supports",
]

SOURCE = "attention_cpu_vec.cpp"  # next to this module
FLAGS = ("-O3", "-march=native", "-fopenmp")  # no -ffast-math: NaN / inf as torch
MAX_HEAD_DIM = 64


def _cpu_tag() -> str:
    """Short hash of the CPU's instruction-set flags: ``-march=native`` builds are cached per CPU kind.

    torch's extension cache keys on the sources and flags only; a home directory shared by machines with different
    CPUs would otherwise load a library with instructions the CPU lacks.
    """
    flags = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            flags += next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags += platform.processor()
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """Puts the interpreter's own bin folder on ``PATH`` while building when ``ninja`` is only there.

    The ``ninja`` wheel (a runtime dependency) installs its binary next to the venv's ``python``; torch looks for
    ``ninja`` on ``PATH``, which lacks that folder when the venv's python is run without activating the venv.
    """
    bin_dir = str(Path(sys.executable).parent)
    if shutil.which("ninja") is not None or shutil.which("ninja", path=bin_dir) is None:
        yield
        return
    old = os.environ.get("PATH", "")
    os.environ["PATH"] = bin_dir + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def source_build(extra_flags: tuple[str, ...] = ()) -> tuple[Path, list[str], str]:
    """The C++ file, compiler flags and extension name of the kernel, ``extra_flags`` added (tests build the narrower
    instruction sets with ``-mno-avx512f`` / ``-mno-avx2``, under their own names)."""
    module = "affect_mult_attention_cpu_vec"
    if extra_flags:
        module += "_" + hashlib.sha1(" ".join(extra_flags).encode()).hexdigest()[:8]
    return Path(__file__).with_name(SOURCE), [*FLAGS, *extra_flags], f"{module}_{_cpu_tag()}"


@functools.cache
def _build_with(extra_flags: tuple[str, ...] = ()) -> tuple[ModuleType | None, str]:
    """The kernel built with ``extra_flags`` (or loaded from torch's cache) once per process: ``(module, "")`` or
    ``(None, reason)``."""
    source, flags, module_name = source_build(extra_flags)
    cpp_log = logging.getLogger("torch.utils.cpp_extension")
    level = cpp_log.level
    cpp_log.setLevel(logging.ERROR)  # its import logs "No CUDA runtime is found": irrelevant to a CPU extension
    try:
        from torch.utils.cpp_extension import load

        with _ninja_on_path():
            module = load(
                name=module_name,
                sources=[str(source)],
                extra_cflags=flags,
                extra_ldflags=["-fopenmp"],
                verbose=False,
            )
    except Exception as err:  # noqa: BLE001 - no compiler, no ninja, a build error: callers fall back to torch
        return None, f"{type(err).__name__}: {err}".strip()
    finally:
        cpp_log.setLevel(level)
    return module, ""


def _build() -> tuple[ModuleType | None, str]:
    """The kernel built with its own flags: ``(module, "")`` or ``(None, reason)``."""
    return _build_with()


def load_extension() -> ModuleType:
    """The compiled extension (built on the first call, then cached by torch).

    Raises:
        RuntimeError: the extension cannot be built (the message carries the compiler's reason).
    """
    module, reason = _build()
    if module is None:
        raise RuntimeError(f"models.kernels: the fused CPU attention extension could not be built ({reason})")
    return module


@functools.cache
def available() -> bool:
    """Whether the extension builds here; warns once with the reason when it does not."""
    module, reason = _build()
    if module is None:
        warnings.warn(
            f"models.kernels: fused CPU attention unavailable, using the torch path ({reason[:2000]})",
            RuntimeWarning,
            stacklevel=2,
        )
    return module is not None


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether the kernel takes these inputs (CPU float32, head width <= 64); says nothing about the build."""
    return (
        q.device.type == k.device.type == v.device.type == "cpu"
        and q.dtype == k.dtype == v.dtype == torch.float32
        and q.dim() == 4
        and 1 <= q.shape[-1] <= MAX_HEAD_DIM
    )


class _FusedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, valid: Tensor, qvalid: Tensor | None, p: float,
                seed: int) -> Tensor:
        out, lse = load_extension().forward(q, k, v, valid, qvalid, p, seed)
        ctx.qvalid = qvalid
        ctx.save_for_backward(q, k, v, valid, out, lse)
        ctx.p, ctx.seed = p, seed
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        q, k, v, valid, out, lse = ctx.saved_tensors
        dq, dk, dv = load_extension().backward(grad_out, q, k, v, valid, ctx.qvalid, out, lse, ctx.p, ctx.seed)
        return dq, dk, dv, None, None, None, None


class _FusedAttentionPacked(torch.autograd.Function):
    """The kernel on views of the projections (:func:`fused_attention_packed`), gradients in the same layouts."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor | None, valid: Tensor, qvalid: Tensor | None, p: float,
                seed: int) -> Tensor:
        q, k, v = _split_packed(a, b)
        out, lse = load_extension().forward(q, k, v, valid, qvalid, p, seed)
        ctx.qvalid, ctx.p, ctx.seed = qvalid, p, seed
        ctx.save_for_backward(a, b, valid, out, lse)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        a, b, valid, out, lse = ctx.saved_tensors
        q, k, v = _split_packed(a, b)
        # dk and dv start at zero (padded keys get none); every dq row is written
        ga, gb = (torch.zeros_like(a), None) if b is None else (torch.empty_like(a), torch.zeros_like(b))
        dq, dk, dv = _split_packed(ga, gb)
        load_extension().backward(grad_out, q, k, v, valid, ctx.qvalid, out, lse, ctx.p, ctx.seed, dq, dk, dv)
        return ga, gb, None, None, None, None


def _split_packed(a: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """``q, k, v`` ``[B, h, L, dh]`` as views of ``qkv`` ``[B, L, 3, h, dh]`` (``b`` None) or of ``q``
    ``[B, Lq, h, dh]`` and ``kv`` ``[B, Lk, 2, h, dh]``."""
    if b is None:
        q, k, v = a.permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v
    k, v = b.permute(2, 0, 3, 1, 4).unbind(0)
    return a.transpose(1, 2), k, v


def _draw_seed() -> int:
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64).item())


def _checked(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor, p: float, training: bool, seed: int | None,
             query_valid: Tensor | None, caller: str) -> tuple[Tensor, Tensor | None, float, int]:
    """The arguments of both entry points, checked: ``(key_valid, query_valid, p, seed)`` as the kernel takes them."""
    if not supports(q, k, v):
        raise ValueError(
            f"{caller}: CPU float32 [B, h, L, dh] inputs with dh <= {MAX_HEAD_DIM} only, got "
            f"{q.dtype} on {q.device}, shape {tuple(q.shape)}"
        )
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{caller}: dropout p must be in [0, 1), got {p}")
    p = float(p) if training else 0.0
    if p == 0:
        seed = 0
    elif seed is None:
        seed = _draw_seed()
    if query_valid is not None:
        if tuple(query_valid.shape) != (q.shape[0], q.shape[2]):
            raise ValueError(f"{caller}: query_valid must be [B, Lq] = {(q.shape[0], q.shape[2])}, got "
                             f"{tuple(query_valid.shape)}")
        query_valid = query_valid.to(torch.bool).contiguous()
    return key_valid.to(torch.bool).contiguous(), query_valid, p, seed


def fused_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_valid: Tensor,
    p: float,
    training: bool,
    seed: int | None = None,
    query_valid: Tensor | None = None,
) -> Tensor:
    """``softmax(q k^T / sqrt(dh))`` over the valid keys, dropout ``p`` on the weights (training only), times ``v``.

    Args:
        q: queries.
        k: keys.
        v: values.
        key_valid: True on the keys to attend to (the project's ``*_mask`` convention); a row of a sample without
            any valid key gets a zero output and zero gradients.
        p: dropout rate on the attention weights, in ``[0, 1)``.
        training: apply the dropout (``False``: ``p`` is ignored).
        seed: 64-bit dropout seed (:func:`dropout_keep_mask` materialises its mask); ``None`` draws one from
            torch's default CPU generator.
        query_valid: True on the query rows to compute; the others are skipped (zero output, zero gradient for
            their queries, no gradient from them to keys and values), which saves their work where padded rows
            are inert downstream (MulT); ``None``: every row. The computed rows are exactly those of a call
            without it (same keep decisions).

    Shapes:
        q: ``[B, h, Lq, dh]``, k / v: ``[B, h, Lk, dh]`` (any strides), key_valid: ``[B, Lk]`` bool,
        query_valid: ``[B, Lq]`` bool ->
        ``[B, h, Lq, dh]`` (stored as ``[B, Lq, h, dh]``, so ``out.transpose(1, 2).reshape(B, Lq, h * dh)`` is a
        view).
    """
    valid, qvalid, p, seed = _checked(q, k, v, key_valid, p, training, seed, query_valid, "fused_attention")
    return _FusedAttention.apply(q, k, v, valid, qvalid, p, seed)


def fused_attention_packed(
    qkv: Tensor,
    kv: Tensor | None,
    key_valid: Tensor,
    p: float,
    training: bool,
    seed: int | None = None,
    query_valid: Tensor | None = None,
) -> Tensor:
    """:func:`fused_attention` on the projections' own layouts: self-attention takes ``qkv`` (``kv`` None),
    crossmodal attention ``q`` (as ``qkv``) and ``kv``. The same outputs and gradients; the gradient comes back in
    those layouts, so autograd does not stack and permute three gradients into one.

    Shapes:
        qkv: ``[B, L, 3, h, dh]`` (``kv`` None) or ``q``: ``[B, Lq, h, dh]`` with kv: ``[B, Lk, 2, h, dh]``;
        key_valid: ``[B, Lk]``, query_valid: ``[B, Lq]`` -> ``[B, h, Lq, dh]`` (as :func:`fused_attention`).
    """
    if (kv is None and qkv.dim() != 5) or (kv is not None and (qkv.dim() != 4 or kv.dim() != 5)):
        raise ValueError(f"fused_attention_packed: qkv [B, L, 3, h, dh], or q [B, Lq, h, dh] with kv "
                         f"[B, Lk, 2, h, dh], got {tuple(qkv.shape)} and {None if kv is None else tuple(kv.shape)}")
    q, k, v = _split_packed(qkv, kv)
    valid, qvalid, p, seed = _checked(q, k, v, key_valid, p, training, seed, query_valid, "fused_attention_packed")
    return _FusedAttentionPacked.apply(qkv, kv, valid, qvalid, p, seed)


def dropout_keep_mask(seed: int, shape: tuple[int, int, int, int], p: float) -> Tensor:
    """The kernel's keep decisions for ``seed`` (debug and tests): what :func:`fused_attention` uses for that seed.

    Shapes:
        shape: ``(B, h, Lq, Lk)`` -> ``[B, h, Lq, Lk]`` bool (True = kept).
    """
    B, h, Lq, Lk = shape
    return load_extension().dropout_keep_mask(seed, B, h, Lq, Lk, p)
