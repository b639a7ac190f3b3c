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
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.choices import check_choices
from models import kernels
from models.msa_utils import MODALITIES, check_feature_dims, last_valid, zero_padding

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
        h, dh = self.num_heads, d // self.num_heads
        if source is None:
            qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(B, Lq, 3, h, dh)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, h, L, dh], views
        else:
            w_q, w_kv = self.in_proj_weight.split([d, 2 * d])
            b_q, b_kv = self.in_proj_bias.split([d, 2 * d])
            q = F.linear(query, w_q, b_q).view(B, Lq, h, dh).transpose(1, 2)
            kv = F.linear(source, w_kv, b_kv).view(B, source.shape[1], 2, h, dh)
            k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        p = self.dropout if self.training else 0.0
        out = self._fused_cpu(q, k, v, mask, p, query_mask)
        if out is not None:
            return self.out_proj(out.transpose(1, 2).reshape(B, Lq, d))
        if p > 0 and not fused_dropout_supported(q.device):
            out = _attention_with_dropout(q, k, v, mask, p)
        else:  # PyTorch's fused kernels (CPU flash without dropout; CUDA flash / memory-efficient with dropout)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # [B, h, Lq, dh]
        return self.out_proj(out.transpose(1, 2).reshape(B, Lq, d))

    def _fused_cpu(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, p: float,
                   query_mask: Tensor | None = None) -> Tensor | None:
        """The project's fused CPU kernel where ``attention`` and the inputs allow it, else ``None``; it skips the
        query rows that ``query_mask`` marks as padding (zero output there).

        Shapes:
            q: ``[B, h, Lq, dh]``, k / v: ``[B, h, Lk, dh]``, mask: ``[B, 1, 1, Lk]``, query_mask:
            ``[B, 1, 1, Lq]`` (additive, like ``mask``) -> ``[B, h, Lq, dh]``.
        """
        if self.attention == "torch":
            return None
        forced = self.attention == "fused_cpu"
        if not kernels.supports(q, k, v) or not 0.0 <= p < 1.0:
            if forced:
                raise ValueError(
                    f"MultiheadAttention: attention='fused_cpu' needs CPU float32 inputs, head width <= "
                    f"{kernels.MAX_HEAD_DIM} and dropout < 1, got {q.dtype} on {q.device}, head width "
                    f"{q.shape[-1]}, dropout {p}"
                )
            return None
        if forced:
            kernels.load_extension()  # raises with the build error
        elif not kernels.available():  # warns once with the reason
            return None
        valid = _valid_keys(mask, q.shape[0], k.shape[2])
        if valid is None:
            if forced:
                raise ValueError("MultiheadAttention: attention='fused_cpu' needs a 0 / -inf key mask (key_mask)")
            return None
        if query_mask is None:
            qvalid = None
        elif query_mask is mask:  # self-attention: the query rows are the keys, already converted
            qvalid = valid
        else:
            qvalid = _valid_keys(query_mask, q.shape[0], q.shape[2])
        return kernels.fused_attention(q, k, v, valid, p, training=p > 0, query_valid=qvalid)

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

    Shapes:
        target: ``[B, Lq, dim]``, source: ``[B, Lk, dim]``, source_mask: ``[B, 1, 1, Lk]`` additive key mask
        (:func:`key_mask`) -> ``[B, Lq, dim]``.
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

    def forward(self, target: Tensor, source_mask: Tensor, source: Tensor | None = None,
                target_mask: Tensor | None = None) -> Tensor:
        q = self.norm_attn(target)
        attended = self.attn(q, source_mask, None if source is None else self.norm_attn(source), target_mask)
        x = target + self.res_drop(attended)
        return x + self.res_drop(self.ff(self.norm_ff(x)))


class CrossmodalTransformer(nn.Module):
    """A stack of :class:`CrossmodalLayer` with scaled embeddings, sinusoidal positions and a final LayerNorm.

    The source sequence (when given) is embedded the same way once, and every layer attends to it (the paper's
    :math:`Z^{[0]}_\\alpha`).

    Shapes:
        target: ``[B, Lq, dim]``, target_mask: ``[B, 1, 1, Lq]``; source: ``[B, Lk, dim]``, source_mask:
        ``[B, 1, 1, Lk]`` (additive key masks, :func:`key_mask`) -> ``[B, Lq, dim]``.
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

    def _embed(self, x: Tensor) -> Tensor:
        pos = sinusoidal_positions(x.shape[1], self.dim, x.device, x.dtype)
        return self.embed_drop(math.sqrt(self.dim) * x + pos)

    def forward(
        self,
        target: Tensor,
        target_mask: Tensor,
        source: Tensor | None = None,
        source_mask: Tensor | None = None,
    ) -> Tensor:
        x = self._embed(target)
        if source is None:
            for layer in self.layers:
                x = layer(x, target_mask, None, target_mask)
        else:
            src = self._embed(source)
            for layer in self.layers:
                x = layer(x, source_mask, src, target_mask)
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
        keys = {m: key_mask(~masks[m], x[m].dtype) for m in MODALITIES}  # built once, used by every layer
        x["text"] = self.text_drop(x["text"])
        z = {m: self.proj[m](x[m].transpose(1, 2)).transpose(1, 2) for m in MODALITIES}  # [B, L_m, d]

        last = []
        for t in MODALITIES:
            sources = [s for s in MODALITIES if s != t]
            h = torch.cat(
                [self.crossmodal[f"{s}_to_{t}"](z[t], keys[t], z[s], keys[s]) for s in sources], dim=-1
            )
            h = self.memory[t](h, keys[t])
            last.append(last_valid(h, masks[t]))
        last_hs = torch.cat(last, dim=-1)
        proj = self.out_proj2(self.out_drop(F.relu(self.out_proj1(last_hs))))
        return {"pred": self.head(proj + last_hs).squeeze(-1)}
