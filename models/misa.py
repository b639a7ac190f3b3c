"""MISA: Modality-Invariant and -Specific representations.

Hazarika et al., "MISA: Modality-Invariant and -Specific Representations for Multimodal Sentiment Analysis",
ACM MM 2020, https://arxiv.org/abs/2005.03545

Each modality's utterance vector :math:`u_m` is projected to a common width and split into a shared
(modality-invariant) code :math:`h^c_m = E_c(u_m)` -- one encoder for all modalities -- and a private
(modality-specific) code :math:`h^p_m = E^p_m(u_m)`. The six codes are fused by a one-layer transformer over
the six tokens and an MLP predicts the score. Three auxiliary losses (paper §3.4, eq. 9) shape the codes:

- ``sim``: central moment discrepancy (CMD, Zellinger et al. 2017; paper eq. 10) up to order 5 between the shared
  codes of every modality pair, averaged over the three pairs;
- ``diff``: soft orthogonality :math:`\\lVert {H^c_m}^\\top H^p_m \\rVert_F^2` between the shared and private
  codes of each modality and between every pair of private codes (eq. 11; rows centred over the batch and
  L2-normalised, mean over the entries, as the reference code);
- ``recon``: mean squared error between :math:`u_m` and its reconstruction :math:`D_m(h^c_m + h^p_m)`,
  averaged over the modalities (eq. 12).

Utterance vectors: audio and vision go through two stacked bidirectional LSTMs with a LayerNorm between them
(packed by the masks), the utterance being the final states of both layers and directions; text is the masked
mean of the ready text features (BERT features in MMSA files, as MISA's BERT variant) or, with
``text_encoder``, of a local BERT fine-tuned on ``batch["text_bert"]``. The paper's adversarial alternative to CMD
and the reference code's unused shared/private discriminator are not implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.msa_utils import (
    check_feature_dims,
    load_local_encoder,
    masked_mean,
    rnn_final_state,
    rnn_sequence,
)

__all__ = ["MISA", "cmd", "diff_loss"]


def cmd(x1: Tensor, x2: Tensor, n_moments: int = 5) -> Tensor:
    """Central moment discrepancy between two batches of codes (norm of the mean and central moment gaps).

    .. math::
        \\mathrm{CMD}_K = \\lVert \\mathbf{E}(X_1) - \\mathbf{E}(X_2) \\rVert_2
        + \\sum_{k=2}^{K} \\lVert C_k(X_1) - C_k(X_2) \\rVert_2

    Shapes:
        x1: ``[B, D]``, x2: ``[B, D]`` -> scalar.
    """
    m1, m2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - m1, x2 - m2
    total = torch.linalg.vector_norm(m1 - m2)
    for k in range(2, n_moments + 1):
        total = total + torch.linalg.vector_norm(c1.pow(k).mean(0) - c2.pow(k).mean(0))
    return total


def diff_loss(x1: Tensor, x2: Tensor) -> Tensor:
    """Soft orthogonality: mean squared entry of the correlation of centred, row-normalised codes.

    Shapes:
        x1: ``[B, D1]``, x2: ``[B, D2]`` -> scalar.
    """
    x1 = x1 - x1.mean(0, keepdim=True)
    x2 = x2 - x2.mean(0, keepdim=True)
    x1 = x1 / (x1.norm(dim=1, keepdim=True).detach() + 1e-6)
    x2 = x2 / (x2.norm(dim=1, keepdim=True).detach() + 1e-6)
    return (x1.t() @ x2).pow(2).mean()


class _AVEncoder(nn.Module):
    """Two stacked bidirectional LSTMs with a LayerNorm in between; returns all four final states, concatenated.

    Shapes:
        x: ``[B, L, D]``, mask: ``[B, L]`` -> ``[B, 4 * hidden]``.
    """

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.rnn1 = nn.LSTM(in_dim, hidden, bidirectional=True, batch_first=True)
        self.norm = nn.LayerNorm(2 * hidden)
        self.rnn2 = nn.LSTM(2 * hidden, hidden, bidirectional=True, batch_first=True)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out1, h1 = rnn_sequence(self.rnn1, x, mask)
        h2 = rnn_final_state(self.rnn2, self.norm(out1), mask)
        return torch.cat([h1, h2], dim=0).transpose(0, 1).flatten(1)


def _project(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.LayerNorm(hidden))


class MISA(nn.Module):
    """MISA for sentiment intensity regression.

    Defaults are MMSA's ``config_regression.json`` values for MOSI (``hidden_size=128``, ``dropout=0.2``,
    ``diff_weight=0.1``, ``sim_weight=0.3``, ``recon_weight=1.0``; LSTM widths equal to the input widths).

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}``.
        seq_lens: sequence length per modality (unused).
        hidden_size: width of the shared and private codes.
        dropout: dropout of the fusion MLP.
        audio_rnn_hidden: LSTM width of the audio encoder; ``None`` = the audio feature width (reference code).
        vision_rnn_hidden: LSTM width of the visual encoder; ``None`` = the visual feature width.
        fusion_heads: heads of the one-layer fusion transformer (must divide ``hidden_size``).
        diff_weight: weight of the ``diff`` loss.
        sim_weight: weight of the ``sim`` (CMD) loss.
        recon_weight: weight of the ``recon`` loss.
        cmd_moments: highest central moment in CMD.
        text_encoder: ``None`` to read ``batch["text"]``; else a local BERT directory (``save_pretrained``
            layout, never a hub name) run on ``batch["text_bert"]`` and fine-tuned.

    Returns (forward):
        ``{"pred": [B]}``, plus in training ``"aux_losses": {"diff", "sim", "recon"}`` already weighted.

    Shapes:
        batch["text"]: ``[B, Lt, Dt]`` (or batch["text_bert"]: ``[B, 3, Lt]``), batch["audio"]: ``[B, La, Da]``,
        batch["vision"]: ``[B, Lv, Dv]``, ``*_mask``: ``[B, L]`` bool -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        hidden_size: int = 128,
        dropout: float = 0.2,
        audio_rnn_hidden: int | None = None,
        vision_rnn_hidden: int | None = None,
        fusion_heads: int = 2,
        diff_weight: float = 0.1,
        sim_weight: float = 0.3,
        recon_weight: float = 1.0,
        cmd_moments: int = 5,
        text_encoder: str | None = None,
    ) -> None:
        super().__init__()
        check_feature_dims("MISA", feature_dims)
        if hidden_size <= 0 or fusion_heads <= 0 or hidden_size % fusion_heads:
            raise ValueError(
                f"MISA: fusion_heads ({fusion_heads}) must divide hidden_size ({hidden_size}) > 0"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MISA: dropout must be in [0, 1), got {dropout}")
        if min(diff_weight, sim_weight, recon_weight) < 0:
            raise ValueError("MISA: loss weights must be non-negative")
        if cmd_moments < 1:
            raise ValueError(f"MISA: cmd_moments must be >= 1, got {cmd_moments}")
        self.feature_dims = dict(feature_dims)
        self.hidden_size = hidden_size
        self.weights = {"diff": diff_weight, "sim": sim_weight, "recon": recon_weight}
        self.cmd_moments = cmd_moments
        self.text_encoder_path = text_encoder

        self.text_encoder = load_local_encoder("MISA", text_encoder, pooler="drop") if text_encoder is not None else None
        text_dim = (
            self.text_encoder.config.hidden_size if self.text_encoder is not None else feature_dims["text"]
        )
        a_hidden = audio_rnn_hidden or feature_dims["audio"]
        v_hidden = vision_rnn_hidden or feature_dims["vision"]
        self.audio_rnn = _AVEncoder(feature_dims["audio"], a_hidden)
        self.vision_rnn = _AVEncoder(feature_dims["vision"], v_hidden)

        self.project = nn.ModuleDict(
            {
                "text": _project(text_dim, hidden_size),
                "audio": _project(4 * a_hidden, hidden_size),
                "vision": _project(4 * v_hidden, hidden_size),
            }
        )
        self.private = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Sigmoid()) for m in self.project}
        )
        self.shared = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.Sigmoid())
        self.recon = nn.ModuleDict({m: nn.Linear(hidden_size, hidden_size) for m in self.project})
        self.fusion_transformer = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(hidden_size, fusion_heads, batch_first=True),
            num_layers=1,
            enable_nested_tensor=False,
        )
        self.head = nn.Sequential(
            nn.Linear(6 * hidden_size, 3 * hidden_size),
            nn.Dropout(dropout),
            nn.ReLU(),
            nn.Linear(3 * hidden_size, 1),
        )

    def extra_repr(self) -> str:
        return (
            f"feature_dims={self.feature_dims}, hidden_size={self.hidden_size}, weights={self.weights}, "
            f"text_encoder={self.text_encoder_path!r}"
        )

    def _text(self, batch: dict[str, Tensor]) -> Tensor:
        if self.text_encoder is None:
            return masked_mean(batch["text"], batch["text_mask"])
        ids, att, seg = batch["text_bert"].unbind(1)
        hidden = self.text_encoder(input_ids=ids, attention_mask=att, token_type_ids=seg).last_hidden_state
        return masked_mean(hidden, att.bool())

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor | dict[str, Tensor]]:
        utt = {
            "text": self._text(batch),
            "audio": self.audio_rnn(batch["audio"], batch["audio_mask"]),
            "vision": self.vision_rnn(batch["vision"], batch["vision_mask"]),
        }
        orig = {m: self.project[m](u) for m, u in utt.items()}
        private = {m: self.private[m](u) for m, u in orig.items()}
        shared = {m: self.shared(u) for m, u in orig.items()}
        order = ("text", "vision", "audio")  # token order of the reference fusion
        tokens = torch.stack([private[m] for m in order] + [shared[m] for m in order], dim=1)  # [B, 6, H]
        fused = self.fusion_transformer(tokens).flatten(1)
        out: dict[str, Tensor | dict[str, Tensor]] = {"pred": self.head(fused).squeeze(-1)}
        if self.training:
            out["aux_losses"] = self.aux_losses(orig, private, shared)
        return out

    def aux_losses(
        self, orig: dict[str, Tensor], private: dict[str, Tensor], shared: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The weighted ``diff``, ``sim`` and ``recon`` losses (paper eqs. 10-12).

        Shapes:
            every input: ``{modality: [B, H]}`` -> ``{name: scalar}``.
        """
        pairs = (("text", "audio"), ("text", "vision"), ("audio", "vision"))
        sim = sum(cmd(shared[a], shared[b], self.cmd_moments) for a, b in pairs) / 3.0
        diff = sum(diff_loss(private[m], shared[m]) for m in orig) + sum(
            diff_loss(private[a], private[b]) for a, b in pairs
        )
        recon = sum(F.mse_loss(self.recon[m](private[m] + shared[m]), orig[m]) for m in orig) / 3.0
        return {
            "diff": self.weights["diff"] * diff,
            "sim": self.weights["sim"] * sim,
            "recon": self.weights["recon"] * recon,
        }
