"""Multimodal fusion framework of HGCL (§III, eqs. 1-2) and the per-modality projection of §IV.B(2).

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*,
§III.A (intra/cross-modal attention, eq. 1), §III.B (fusion encoder ``R_m = F(R_t, R_a, R_v)``, eq. 2) and
§IV.B(2) ("a dedicated feed-forward network" maps every modality to the same width).

Reading of the paper (it is vague on the wiring): each modality first attends to itself (intra-modal
attention, eq. 1 with ``M' = N``), then audio and video attend to text (text-guided cross-modal attention,
eq. 1 with ``M'`` = text), giving ``R_a`` and ``R_v``; ``R_t`` is the (self-attended) text. ``F`` pools each
of ``R_t, R_a, R_v`` over valid steps, concatenates them and applies a two-layer MLP.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.choices import check_choices
from common.tensors import masked_mean

from .inputs import sinusoidal_positions

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh}
Activation = Literal["relu", "gelu", "elu", "tanh"]  # the keys of ACTIVATIONS
Positional = Literal["sinusoidal", "none"]
POSITIONAL = get_args(Positional)


def make_activation(name: str, owner: str) -> nn.Module:
    """Activation module by name, raising ``ValueError`` naming ``owner`` on an unknown name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"{owner}: activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


class ModalityProjection(nn.Module):
    r"""Dedicated feed-forward projection of one modality to the common width ``d`` (§IV.B(2)).

    .. math::
        X' = \big(W_2\,\sigma(W_1\,\mathrm{LN}(X) + b_1) + b_2 + P\big) \odot M

    with optional sinusoidal positions ``P`` and the step mask ``M``.

    Args:
        in_dim: input feature width ``D_m``.
        dim: common width ``d``.
        dropout: dropout after the activation.
        activation: ``"relu" | "gelu" | "elu" | "tanh"``.
        positional: ``"sinusoidal"`` (add fixed positions) or ``"none"``.

    Shapes:
        - x: ``[B, L, D_m]``, mask: ``[B, L]`` bool
        - output: ``[B, L, d]`` (zeros on padding)
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        dropout: float = 0.1,
        activation: Activation = "gelu",
        positional: Positional = "sinusoidal",
    ) -> None:
        super().__init__()
        check_choices(ModalityProjection, locals())
        if in_dim < 1 or dim < 1:
            raise ValueError(f"ModalityProjection: in_dim and dim must be >= 1, got {in_dim}, {dim}")
        self.in_dim, self.dim, self.positional = in_dim, dim, positional
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, dim)
        self.act = make_activation(activation, "ModalityProjection")
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.norm.reset_parameters()
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if x.size(-1) != self.in_dim:
            raise ValueError(f"ModalityProjection: expected last dim {self.in_dim}, got {x.size(-1)}")
        out = self.fc2(self.drop(self.act(self.fc1(self.norm(x)))))
        if self.positional == "sinusoidal":
            out = out + sinusoidal_positions(x.size(1), self.dim, x.device).to(out.dtype)
        return out * mask.unsqueeze(-1).to(out.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.dim}, positional={self.positional!r}"


class CrossModalAttention(nn.Module):
    r"""Scaled dot-product attention between modalities, eq. (1) of HGCL.

    .. math::
        \mathrm{inter}(N, M') = \mathrm{softmax}\!\left(\frac{N W_Q (M' W_K)^\top}{\sqrt{d}}\right) M' W_V

    split into ``heads`` heads (``heads=1`` is eq. 1 verbatim) and followed by an output projection.
    Keys on padding get zero weight; a query whose context has no valid step returns zeros.
    With ``context = query`` this is the intra-modal self-attention of §III.A.

    Args:
        dim: model width ``d`` (queries and context).
        heads: number of heads (must divide ``dim``).
        dropout: dropout on the attention weights.

    Shapes:
        - query: ``[B, Lq, d]``, context: ``[B, Lk, d]``, context_mask: ``[B, Lk]`` bool
        - output: ``[B, Lq, d]``
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        if dim < 1 or heads < 1 or dim % heads != 0:
            raise ValueError(f"CrossModalAttention: heads ({heads}) must divide dim ({dim}), both >= 1")
        self.dim, self.heads, self.dropout = dim, heads, dropout
        self.w_q = nn.Linear(dim, dim, bias=False)
        self.w_k = nn.Linear(dim, dim, bias=False)
        self.w_v = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.w_q, self.w_k, self.w_v, self.out):
            lin.reset_parameters()

    def forward(self, query: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        B, Lq, d = query.shape
        Lk = context.size(1)
        h, dh = self.heads, d // self.heads
        q = self.w_q(query).view(B, Lq, h, dh).transpose(1, 2)
        k = self.w_k(context).view(B, Lk, h, dh).transpose(1, 2)
        v = self.w_v(context).view(B, Lk, h, dh).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(dh)  # [B, h, Lq, Lk]
        key_mask = context_mask.bool().view(B, 1, 1, Lk)
        scores = scores.masked_fill(~key_mask, torch.finfo(scores.dtype).min)
        attn = torch.softmax(scores, dim=-1) * key_mask.to(scores.dtype)  # exact zeros on padded keys
        attn = F.dropout(attn, self.dropout, self.training)
        out = (attn @ v).transpose(1, 2).reshape(B, Lq, d)
        return self.out(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.heads}, dropout={self.dropout}"


class AttentionBlock(nn.Module):
    """Post-norm transformer block around :class:`CrossModalAttention` (eq. 1) plus a feed-forward layer.

    Args:
        dim: width ``d``. heads: attention heads. dropout: dropout rate. activation: FFN activation name.

    Shapes:
        - x: ``[B, Lq, d]``, x_mask: ``[B, Lq]``, context: ``[B, Lk, d]``, context_mask: ``[B, Lk]``
        - output: ``[B, Lq, d]`` (zeros on padded queries)
    """

    def __init__(self, dim: int, heads: int = 4, dropout: float = 0.1, activation: Activation = "gelu") -> None:
        super().__init__()
        self.attn = CrossModalAttention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, 2 * dim),
            make_activation(activation, "AttentionBlock"),
            nn.Dropout(dropout),
            nn.Linear(2 * dim, dim),
        )
        self.norm2 = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.attn.reset_parameters()
        self.norm1.reset_parameters()
        self.norm2.reset_parameters()
        self.ffn[0].reset_parameters()
        self.ffn[3].reset_parameters()

    def forward(self, x: Tensor, x_mask: Tensor, context: Tensor, context_mask: Tensor) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, context, context_mask)))
        x = self.norm2(x + self.drop(self.ffn(x)))
        return x * x_mask.unsqueeze(-1).to(x.dtype)


class TextGuidedAttention(nn.Module):
    """Intra-modal self-attention then text-guided cross-modal attention (§III.A, eq. 1).

    ``R_t = SelfAttn_t(X_t)``, ``R_a = Cross(SelfAttn_a(X_a), R_t)``, ``R_v = Cross(SelfAttn_v(X_v), R_t)``;
    every stage is an :class:`AttentionBlock`, repeated ``num_layers`` times.

    Args:
        dim: width ``d``. heads: attention heads. num_layers: stacked intra+cross stages.
        dropout: dropout rate. activation: FFN activation.

    Shapes:
        - feats / masks: dicts with ``"text" | "audio" | "vision"`` -> ``[B, L_m, d]`` / ``[B, L_m]``
        - output: dict ``{"text": R_t, "audio": R_a, "vision": R_v}`` with the input shapes
    """

    def __init__(
        self, dim: int, heads: int = 4, num_layers: int = 1, dropout: float = 0.1, activation: Activation = "gelu"
    ) -> None:
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"TextGuidedAttention: num_layers must be >= 0, got {num_layers}")
        self.dim, self.num_layers = dim, num_layers
        self.intra = nn.ModuleList(
            nn.ModuleDict(
                {m: AttentionBlock(dim, heads, dropout, activation) for m in ("text", "audio", "vision")}
            )
            for _ in range(num_layers)
        )
        self.cross = nn.ModuleList(
            nn.ModuleDict({m: AttentionBlock(dim, heads, dropout, activation) for m in ("audio", "vision")})
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (*self.intra, *self.cross):
            for block in layer.values():
                block.reset_parameters()

    def forward(self, feats: dict[str, Tensor], masks: dict[str, Tensor]) -> dict[str, Tensor]:
        out = dict(feats)
        for intra, cross in zip(self.intra, self.cross):
            out = {m: intra[m](out[m], masks[m], out[m], masks[m]) for m in out}
            for m in ("audio", "vision"):
                out[m] = cross[m](out[m], masks[m], out["text"], masks["text"])
        return out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_layers={self.num_layers}"


class FusionEncoder(nn.Module):
    r"""Fusion encoder ``F`` of eq. (2): :math:`R_m = F(R_t, R_a, R_v)`.

    Masked mean over valid steps of each modality, concatenation, then ``Linear -> act -> Dropout -> Linear``.

    Args:
        dim: width ``d`` of each input and of ``R_m``. dropout: dropout rate. activation: activation name.

    Shapes:
        - feats / masks: dicts of ``[B, L_m, d]`` / ``[B, L_m]`` for ``text, audio, vision``
        - output: ``[B, d]``
    """

    def __init__(self, dim: int, dropout: float = 0.1, activation: Activation = "gelu") -> None:
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(3 * dim, dim)
        self.act = make_activation(activation, "FusionEncoder")
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, feats: dict[str, Tensor], masks: dict[str, Tensor]) -> Tensor:
        pooled = torch.cat([masked_mean(feats[m], masks[m]) for m in ("text", "audio", "vision")], dim=-1)
        return self.fc2(self.drop(self.act(self.fc1(pooled))))

    def extra_repr(self) -> str:
        return f"3x{self.dim} -> {self.dim}"
