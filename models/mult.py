"""Multimodal Transformer (MulT).

Tsai et al., "Multimodal Transformer for Unaligned Multimodal Language Sequences", ACL 2019,
https://aclanthology.org/P19-1656/

1. Temporal 1D convolutions project every modality to a common width :math:`d` (paper eq. 3).
2. Sinusoidal positions are added (eq. 4) and six **crossmodal transformers** let each target modality
   :math:`\\beta` attend to each source :math:`\\alpha` (eqs. 5-6, pre-LayerNorm blocks):

   .. math::
       Z^{[i]}_{\\alpha \\to \\beta} = \\mathrm{CM}_{\\beta \\alpha}(\\mathrm{LN}(Z^{[i-1]}_{\\alpha \\to \\beta}),
       \\mathrm{LN}(Z^{[0]}_{\\alpha})) + \\mathrm{LN}(Z^{[i-1]}_{\\alpha \\to \\beta}),\\quad
       Z^{[i]} = f_\\theta(\\mathrm{LN}(\\hat{Z}^{[i]})) + \\mathrm{LN}(\\hat{Z}^{[i]})

   where :math:`\\mathrm{CM}_{\\beta\\alpha}` is multi-head attention with queries from :math:`\\beta` and
   keys/values from :math:`\\alpha`.
3. The two crossmodal outputs per target are concatenated and passed through a self-attention transformer; the
   last element of each sequence is kept, the three are concatenated and a residual MLP predicts the score.

Works on unaligned sequences: attention masks exclude every padded key, and the "last element" is each sample's
last valid step. Two documented deviations from the reference code, both to make padding exactly inert: the
convolutions use "same" zero padding on zeroed padded steps (the reference uses ``padding=0``, which shortens the
sequences by ``kernel_size - 1``), and no causal attention mask is used.

Cost: every row-wise part (projections, LayerNorm, feed-forward, residuals) runs on the valid steps only
(:class:`~models.msa_utils.RowPacking`), attention skips padded queries and keys, and the last layer of each
memory transformer computes only the step that is read; the outputs at the valid steps are those of the padded
computation, which spends a third or more of its work on MMSA's unaligned padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.choices import check_choices
from models import kernels
from models.msa_utils import MODALITIES, RowPacking, check_feature_dims, zero_padding

__all__ = ["MulT", "MultiheadAttention", "dropout_keep_mask", "fused_dropout_supported", "key_mask"]

AttentionImpl = Literal["auto", "fused_cpu", "torch"]


def sinusoidal_positions(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Sinusoidal position table of Vaswani et al. (sin on the first half, cos on the second, as fairseq).

    Shapes:
        -> ``[length, dim]``.
    """
    half = dim // 2
    freq = torch.exp(
        torch.arange(half, device=device, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1))
    )
    angles = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1) * freq.unsqueeze(0)
    table = torch.cat([angles.sin(), angles.cos()], dim=1)
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table.to(dtype)


def key_mask(pad: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention mask from a key padding mask, built once per forward and shared by every layer.

    Shapes:
        pad: ``[B, Lk]`` bool (True = padding) -> ``[B, 1, 1, Lk]`` (0 on valid keys, -inf on padding).
    """
    return torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill(pad, float("-inf"))[:, None, None]


_LEVELS = 1 << 16  # dropout decisions from 16 random bits


def dropout_keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> tuple[Tensor, float]:
    """Keep mask of dropout with rate ``p`` from 16 random bits per element, and the matching rescale factor.

    ``torch.bernoulli_`` draws one random number per element and was 37 % of a MulT training step (profile in
    ``benchmarks/bench_msa.py``'s docstring); here one 32-bit draw decides two elements. The keep probability is
    ``round((1 - p) 2^16) / 2^16`` (within 7.7e-6 of ``1 - p``) and the returned scale is its exact inverse, so
    the dropped tensor stays unbiased.

    Shapes:
        -> (``shape`` bool, float scale).
    """
    n = math.prod(shape)
    keep_levels = round((1.0 - p) * _LEVELS)
    if keep_levels >= _LEVELS:  # the int16 threshold below would overflow
        return torch.ones(shape, dtype=torch.bool, device=device), 1.0
    bits = torch.randint(-(1 << 31), 1 << 31, ((n + 1) // 2,), dtype=torch.int32, device=device)
    keep = bits.view(torch.int16)[:n].view(shape) < keep_levels - _LEVELS // 2
    return keep, _LEVELS / max(keep_levels, 1)


def fused_dropout_supported(device: torch.device) -> bool:
    """Whether PyTorch's fused attention kernels on ``device`` take ``dropout_p > 0``.

    CUDA's flash and memory-efficient kernels do (training on GPUs runs fused); the CPU flash kernel does not, and
    SDPA's CPU math fallback is slower than :func:`_attention_with_dropout`.
    """
    return device.type != "cpu"


def _attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p: float) -> Tensor:
    """``softmax(q k^T / sqrt(dh) + mask)`` with dropout on the weights, times ``v`` (training path).

    PyTorch's fused CPU kernel refuses ``dropout_p > 0`` and its math fallback adds a "safe softmax" (three
    full passes) and a Bernoulli draw per weight. Here: one ``baddbmm`` (scale and mask fused), a plain softmax
    (every row has a valid key, see :meth:`MulT.forward`), the 16-bit keep mask and the rescale folded into ``v``.

    Shapes:
        q: ``[B, h, Lq, dh]``, k / v: ``[B, h, Lk, dh]``, mask: ``[B, 1, 1, Lk]`` -> ``[B, h, Lq, dh]``.
    """
    B, h, Lq, dh = q.shape
    Lk = k.shape[2]
    bias = mask.expand(B, h, 1, Lk).reshape(B * h, 1, Lk)
    scores = torch.baddbmm(
        bias, q.reshape(B * h, Lq, dh), k.reshape(B * h, Lk, dh).transpose(1, 2), alpha=1.0 / math.sqrt(dh)
    )
    keep, scale = dropout_keep_mask(scores.shape, p, scores.device)
    weights = torch.softmax(scores, dim=-1) * keep  # a bool factor: cheaper than where/masked_fill on CPU
    return torch.bmm(weights, v.reshape(B * h, Lk, dh) * scale).view(B, h, Lq, dh)


def _valid_keys(mask: Tensor, batch: int, num_keys: int) -> Tensor | None:
    """The keys a 0 / -inf additive mask lets through, or ``None`` when the mask holds other values.

    Shapes:
        mask: broadcastable to ``[B, 1, 1, Lk]`` -> ``[B, Lk]`` bool (True = valid key).
    """
    m = mask.expand(batch, 1, 1, num_keys).reshape(batch, num_keys)
    valid = m == 0
    if not bool((valid | torch.isneginf(m)).all()):
        return None
    return valid


class MultiheadAttention(nn.Module):
    """Multi-head attention on fused kernels (:mod:`models.kernels` on CPU, ``F.scaled_dot_product_attention``).

    The same parameters (names, shapes, initialisation) and the same math as ``nn.MultiheadAttention(dim,
    num_heads, dropout, batch_first=True)`` with a key padding mask and ``need_weights=False``, which this layer
    replaces (checkpoints load unchanged): queries, keys and values come from one packed projection
    (``in_proj_weight``; one matmul for self-attention, two for crossmodal attention), heads are views of it (no
    transposed copies), the mask is an additive ``[B, 1, 1, Lk]`` tensor built once per forward.

    Kernels (``attention``): on CPU float32, ``"auto"`` runs the project's fused kernel
    (:func:`models.kernels.fused_attention`, attention dropout inside the kernel, built at first use) in training
    and eval; when it cannot be built (a warning says why), on other devices or dtypes, with ``"torch"``, or with
    a mask that is not 0 / -inf, the torch path runs: without attention dropout PyTorch's fused (flash) kernel;
    with it, a lean math path (:func:`_attention_with_dropout`) on CPU, whose fused kernel has no dropout; on CUDA
    the fused kernels take the dropout themselves (:func:`fused_dropout_supported`). ``"fused_cpu"`` insists on
    the project's kernel and raises where it cannot run. Deviations: the dropout keep probability is ``1 - p``
    rounded to a multiple of ``2^-24`` (fused kernel) or ``2^-16`` (:func:`dropout_keep_mask`); the fused kernel
    is invisible to ``torch.utils.flop_counter`` (count FLOPs with ``attention="torch"``, same math).

    Args:
        dim: model width.
        num_heads: heads (must divide ``dim``).
        dropout: dropout on the attention weights (training only).
        attention: ``"auto"`` (the fused CPU kernel where it runs, else torch), ``"fused_cpu"`` (the fused CPU
            kernel or an error), ``"torch"`` (PyTorch's kernels and the math path above).

    ``query_mask`` (optional, forward) marks the padded query rows: the fused CPU kernel skips them (their
    attention output is zero; the torch path computes them), which is exact wherever padded positions are inert
    downstream, as in :class:`MulT` (their keys are masked and only each sample's last valid step is read).

    Shapes:
        query: ``[B, Lq, dim]``, mask: ``[B, 1, 1, Lk]`` additive (:func:`key_mask`), source: ``[B, Lk, dim]``
        (``None``: self-attention, ``Lk = Lq``), query_mask: ``[B, 1, 1, Lq]`` additive -> ``[B, Lq, dim]``.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, attention: AttentionImpl = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"MultiheadAttention: num_heads ({num_heads}) must divide dim ({dim})")
        check_choices(MultiheadAttention, locals())
        self.dim, self.num_heads, self.dropout, self.attention = dim, num_heads, dropout, attention
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        self.out_proj.reset_parameters()
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, mask: Tensor, source: Tensor | None = None,
                query_mask: Tensor | None = None) -> Tensor:
        B, Lq, d = query.shape
        q, k, v, parts = self._project(query, source)
        valid = qvalid = None
        fused = self._fused_wanted(q, k, v)
        if fused:
            valid = _valid_keys(mask, B, k.shape[2])
            if valid is None and self.attention == "fused_cpu":
                raise ValueError("MultiheadAttention: attention='fused_cpu' needs a 0 / -inf key mask (key_mask)")
            if valid is not None and query_mask is not None:
                # self-attention: the query rows are the keys, already converted
                qvalid = valid if query_mask is mask else _valid_keys(query_mask, B, Lq)
        out = self._attend(q, k, v, fused and valid is not None, valid, qvalid, lambda: mask, parts)
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, d))

    def packed(self, query: Tensor, query_rows: RowPacking, source: Tensor | None = None,
               source_rows: RowPacking | None = None) -> Tensor:
        """Attention on packed rows (:class:`~models.msa_utils.RowPacking`): the projections run on the valid rows
        only and are unpacked for the kernels (zeros at the padding); padded query rows are skipped by the fused
        CPU kernel and dropped from the output.

        Shapes:
            query: ``[Nq, dim]`` (the rows of ``query_rows``), source: ``[Nk, dim]`` (of ``source_rows``;
            ``None``: self-attention) -> ``[Nq, dim]``.
        """
        key_rows = query_rows if source is None else source_rows
        if key_rows is None:
            raise ValueError("MultiheadAttention.packed: a source needs its source_rows")
        B, Lq, d = query_rows.batch, query_rows.length, self.dim
        q, k, v, parts = self._project(query, source, query_rows, key_rows)
        qvalid = None if query_rows.all_valid else query_rows.valid
        out = self._attend(q, k, v, self._fused_wanted(q, k, v), key_rows.valid, qvalid,
                           lambda: key_mask(~key_rows.valid, q.dtype), parts)
        return self.out_proj(query_rows.pack(out.transpose(1, 2).reshape(B, Lq, d)))

    def _project(self, query: Tensor, source: Tensor | None, query_rows: RowPacking | None = None,
                 key_rows: RowPacking | None = None) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor | None]]:
        """Queries, keys and values ``[B, h, L, dh]`` (views of one or two projections) from padded inputs, or from
        packed rows unpacked after the projection, and the projections themselves (``qkv`` ``[B, L, 3, h, dh]``
        and None, or ``q`` ``[B, Lq, h, dh]`` and ``kv`` ``[B, Lk, 2, h, dh]``: what the fused kernel takes)."""
        h, d = self.num_heads, self.dim
        dh = d // h

        def unpacked(x: Tensor, rows: RowPacking | None) -> Tensor:
            return x if rows is None else rows.unpack(x)

        if source is None:
            qkv = unpacked(F.linear(query, self.in_proj_weight, self.in_proj_bias), query_rows)
            qkv = qkv.view(*qkv.shape[:2], 3, h, dh)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            return q, k, v, (qkv, None)
        w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
        b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
        q = unpacked(F.linear(query, w_q, b_q), query_rows)
        q = q.view(*q.shape[:2], h, dh)
        kv = unpacked(F.linear(source, w_kv, b_kv), key_rows)
        kv = kv.view(*kv.shape[:2], 2, h, dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return q.transpose(1, 2), k, v, (q, kv)

    def _fused_wanted(self, q: Tensor, k: Tensor, v: Tensor) -> bool:
        """Whether the project's fused CPU kernel runs on these inputs (``"fused_cpu"``: or raise why not)."""
        if self.attention == "torch":
            return False
        p = self.dropout if self.training else 0.0
        if not kernels.supports(q, k, v) or not 0.0 <= p < 1.0:
            if self.attention == "fused_cpu":
                raise ValueError(
                    f"MultiheadAttention: attention='fused_cpu' needs CPU float32 inputs, head width <= "
                    f"{kernels.MAX_HEAD_DIM} and dropout < 1, got {q.dtype} on {q.device}, head width "
                    f"{q.shape[-1]}, dropout {p}"
                )
            return False
        if self.attention == "fused_cpu":
            kernels.load_extension()  # raises with the build error
            return True
        return kernels.available()  # warns once with the reason

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, fused: bool, valid: Tensor | None, qvalid: Tensor | None,
                additive: Callable[[], Tensor], parts: tuple[Tensor, Tensor | None]) -> Tensor:
        """With ``fused`` (:meth:`_fused_wanted`, decided once by the caller) the fused CPU kernel over the
        ``valid`` keys, skipping the query rows ``qvalid`` marks as padding, on the projections ``parts`` that ``q``,
        ``k``, ``v`` view (their gradient comes back in that layout); else the torch path with the additive mask
        ``additive()``.

        Shapes:
            q: ``[B, h, Lq, dh]``, k / v: ``[B, h, Lk, dh]``, valid: ``[B, Lk]`` bool, qvalid: ``[B, Lq]`` bool
            -> ``[B, h, Lq, dh]``.
        """
        p = self.dropout if self.training else 0.0
        if fused:
            return kernels.fused_attention_packed(*parts, valid, p, training=p > 0, query_valid=qvalid)
        mask = additive()
        if p > 0 and not fused_dropout_supported(q.device):
            return _attention_with_dropout(q, k, v, mask, p)
        # PyTorch's fused kernels (CPU flash without dropout; CUDA flash / memory-efficient with dropout)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, dropout={self.dropout}, attention={self.attention!r}"


class CrossmodalLayer(nn.Module):
    """One pre-LayerNorm transformer block; crossmodal when ``source`` is given, self-attention otherwise.

    Args:
        dim: model width.
        num_heads: attention heads.
        attn_dropout: dropout on the attention weights.
        relu_dropout: dropout after the feed-forward ReLU.
        res_dropout: dropout on both residual branches.
        attention: attention kernels (:class:`MultiheadAttention`).

    Works on packed rows (:class:`~models.msa_utils.RowPacking`): every row-wise part runs on the valid steps only.
    ``last_only`` computes the self-attention block at each sample's last valid step only (queries from those
    rows, keys and values from all): exactly those rows of the full block, for a last layer whose other rows
    nothing reads.

    Shapes:
        x: ``[Nq, dim]`` (rows of ``rows``), source: ``[Nk, dim]`` (rows of ``source_rows``) -> ``[Nq, dim]``
        (``last_only``: ``[B, dim]``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        attention: AttentionImpl = "auto",
    ):
        super().__init__()
        self.attn = MultiheadAttention(dim, num_heads, attn_dropout, attention)
        self.norm_attn = nn.LayerNorm(dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.ReLU(), nn.Dropout(relu_dropout), nn.Linear(4 * dim, dim)
        )
        self.res_drop = nn.Dropout(res_dropout)

    def forward(self, x: Tensor, rows: RowPacking, source: Tensor | None = None,
                source_rows: RowPacking | None = None, last_only: bool = False) -> Tensor:
        nx = self.norm_attn(x)
        if last_only:  # self-attention whose output is read at each sample's last valid step only
            if source is not None:
                raise ValueError("CrossmodalLayer: last_only is for self-attention (no source)")
            x = x.index_select(0, rows.last)
            attended = self.attn.packed(nx.index_select(0, rows.last), RowPacking(torch.ones_like(rows.valid[:, :1])),
                                        nx, rows)
        elif source is None:
            attended = self.attn.packed(nx, rows)
        else:
            attended = self.attn.packed(nx, rows, self.norm_attn(source), source_rows)
        x = x + self.res_drop(attended)
        return x + self.res_drop(self.ff(self.norm_ff(x)))


class CrossmodalTransformer(nn.Module):
    """A stack of :class:`CrossmodalLayer` with scaled embeddings, sinusoidal positions and a final LayerNorm.

    The source sequence (when given) is embedded the same way once, and every layer attends to it (the paper's
    :math:`Z^{[0]}_\\alpha`).

    On packed rows (:class:`~models.msa_utils.RowPacking`); ``last_only`` (self-attention) returns each sample's
    last valid step only, and its last layer computes nothing else.

    Shapes:
        target: ``[Nq, dim]`` (rows of ``target_rows``), source: ``[Nk, dim]`` (rows of ``source_rows``) ->
        ``[Nq, dim]`` (``last_only``: ``[B, dim]``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_layers: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        attention: AttentionImpl = "auto",
    ) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(
            CrossmodalLayer(dim, num_heads, attn_dropout, relu_dropout, res_dropout, attention)
            for _ in range(num_layers)
        )
        self.embed_drop = nn.Dropout(embed_dropout)
        self.norm = nn.LayerNorm(dim)

    def _embed(self, x: Tensor, rows: RowPacking) -> Tensor:
        pos = sinusoidal_positions(rows.length, self.dim, x.device, x.dtype).index_select(0, rows.positions)
        return self.embed_drop(math.sqrt(self.dim) * x + pos)

    def forward(
        self,
        target: Tensor,
        target_rows: RowPacking,
        source: Tensor | None = None,
        source_rows: RowPacking | None = None,
        last_only: bool = False,
    ) -> Tensor:
        x = self._embed(target, target_rows)
        src = None if source is None else self._embed(source, source_rows)
        if last_only and src is not None:
            raise ValueError("CrossmodalTransformer: last_only is for self-attention (no source)")
        for i, layer in enumerate(self.layers):
            x = layer(x, target_rows, src, source_rows, last_only=last_only and i == len(self.layers) - 1)
        return self.norm(x)


class MulT(nn.Module):
    """Multimodal Transformer for sentiment intensity regression on aligned or unaligned sequences.

    Defaults are MMSA's ``config_regression.json`` values for MOSI (``dst_feature_dim_nheads=[50, 10]``,
    ``nlevels=4``, kernel sizes 5, the dropouts below). The self-attention memory transformers have
    ``max(num_layers, 3)`` layers, as in the reference code.

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}``.
        seq_lens: sequence length per modality (MulT handles any lengths; unused).
        dim: common width :math:`d` after the 1D convolutions (per modality; memories are ``2 d`` wide).
        num_heads: attention heads (must divide ``dim``).
        num_layers: depth of each crossmodal transformer (``nlevels``).
        text_kernel_size: kernel of the text 1D convolution.
        audio_kernel_size: kernel of the audio 1D convolution.
        vision_kernel_size: kernel of the visual 1D convolution.
        text_dropout: dropout on the input text features.
        attn_dropout: attention dropout of transformers whose target is text, and of the memory transformers.
        audio_attn_dropout: attention dropout of transformers whose target is audio.
        vision_attn_dropout: attention dropout of transformers whose target is vision.
        relu_dropout: feed-forward dropout.
        res_dropout: residual dropout.
        embed_dropout: dropout after embedding + positions.
        output_dropout: dropout inside the residual output block.
        attention: attention kernels: ``"auto"`` (the fused CPU kernel of :mod:`models.kernels` on CPU float32
            where it builds, else PyTorch's), ``"fused_cpu"`` (that kernel or an error), ``"torch"``
            (:class:`MultiheadAttention`). Same math and parameters for all three.

    Shapes:
        batch["text"]: ``[B, Lt, Dt]``, batch["audio"]: ``[B, La, Da]``, batch["vision"]: ``[B, Lv, Dv]``,
        ``*_mask``: ``[B, L]`` bool -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        dim: int = 50,
        num_heads: int = 10,
        num_layers: int = 4,
        text_kernel_size: int = 5,
        audio_kernel_size: int = 5,
        vision_kernel_size: int = 5,
        text_dropout: float = 0.5,
        attn_dropout: float = 0.3,
        audio_attn_dropout: float = 0.2,
        vision_attn_dropout: float = 0.0,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        embed_dropout: float = 0.2,
        output_dropout: float = 0.5,
        attention: AttentionImpl = "auto",
    ) -> None:
        super().__init__()
        check_feature_dims("MulT", feature_dims)
        check_choices(MulT, locals())
        if dim <= 0 or num_heads <= 0 or num_layers <= 0:
            raise ValueError("MulT: dim, num_heads and num_layers must be positive")
        if dim % num_heads:
            raise ValueError(f"MulT: num_heads ({num_heads}) must divide dim ({dim})")
        kernels = {"text": text_kernel_size, "audio": audio_kernel_size, "vision": vision_kernel_size}
        if any(k <= 0 or k % 2 == 0 for k in kernels.values()):
            raise ValueError(f"MulT: kernel sizes must be positive and odd ('same' padding), got {kernels}")
        self.feature_dims = dict(feature_dims)
        self.dim = dim
        self.num_layers = num_layers

        self.proj = nn.ModuleDict(
            {
                m: nn.Conv1d(feature_dims[m], dim, kernels[m], padding=kernels[m] // 2, bias=False)
                for m in MODALITIES
            }
        )
        self.text_drop = nn.Dropout(text_dropout)
        target_attn = {"text": attn_dropout, "audio": audio_attn_dropout, "vision": vision_attn_dropout}

        def transformer(width: int, layers: int, p_attn: float) -> CrossmodalTransformer:
            return CrossmodalTransformer(
                width, num_heads, layers, p_attn, relu_dropout, res_dropout, embed_dropout, attention
            )

        # crossmodal[f"{source}_to_{target}"]: target attends to source.
        self.crossmodal = nn.ModuleDict(
            {
                f"{s}_to_{t}": transformer(dim, num_layers, target_attn[t])
                for t in MODALITIES
                for s in MODALITIES
                if s != t
            }
        )
        self.memory = nn.ModuleDict(
            {m: transformer(2 * dim, max(num_layers, 3), attn_dropout) for m in MODALITIES}
        )
        combined = 6 * dim
        self.out_proj1 = nn.Linear(combined, combined)
        self.out_proj2 = nn.Linear(combined, combined)
        self.out_drop = nn.Dropout(output_dropout)
        self.head = nn.Linear(combined, 1)

    def extra_repr(self) -> str:
        return f"feature_dims={self.feature_dims}, dim={self.dim}, num_layers={self.num_layers}"

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = {m: zero_padding(batch[m], batch[f"{m}_mask"]) for m in MODALITIES}
        masks = {m: batch[f"{m}_mask"].clone() for m in MODALITIES}
        for m in MODALITIES:  # an empty sequence keeps its first (zeroed) step, so attention is defined
            masks[m][:, 0] |= ~masks[m].any(1)
        rows = {m: RowPacking(masks[m]) for m in MODALITIES}  # row-wise work on the valid steps only
        x["text"] = self.text_drop(x["text"])
        z = {m: rows[m].pack(self.proj[m](x[m].transpose(1, 2)).transpose(1, 2)) for m in MODALITIES}  # [N_m, d]

        last = []
        for t in MODALITIES:
            sources = [s for s in MODALITIES if s != t]
            h = torch.cat(
                [self.crossmodal[f"{s}_to_{t}"](z[t], rows[t], z[s], rows[s]) for s in sources], dim=-1
            )
            last.append(self.memory[t](h, rows[t], last_only=True))  # [B, 2d]
        last_hs = torch.cat(last, dim=-1)
        proj = self.out_proj2(self.out_drop(F.relu(self.out_proj1(last_hs))))
        return {"pred": self.head(proj + last_hs).squeeze(-1)}
