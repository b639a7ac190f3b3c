"""Memory Fusion Network (MFN).

Zadeh et al., "Memory Fusion Network for Multi-View Sequential Learning", AAAI 2018,
https://arxiv.org/abs/1802.00927

Three components, run jointly over the (word-aligned) time steps:

1. **System of LSTMs** -- one recurrent cell per modality (view). ``cell="lstm"`` is the paper's plain LSTM;
   ``cell="lsthm"`` feeds the previous multi-view memory :math:`u_{t-1}` to every gate as well, i.e. the
   Long-short Term Hybrid Memory of Zadeh et al.'s MARN (AAAI 2018) with the gated memory as its hybrid code.
2. **Delta-memory Attention Network** (paper eqs. 1-2): the memories of two consecutive steps,
   :math:`c^{[t-1, t]} = [c_{t-1}; c_t]` over all views, are weighted by a softmax attention
   :math:`a^{[t-1,t]} = \\mathcal{D}_a(c^{[t-1,t]})`, giving :math:`\\hat{c}^{[t-1,t]} = c^{[t-1,t]} \\odot a`.
3. **Multi-view Gated Memory** (eqs. 3-5): a proposal :math:`\\hat{u}_t = \\mathcal{D}_u(\\hat{c})`, a retain gate
   :math:`\\gamma_1 = \\sigma(\\mathcal{D}_{\\gamma_1}(\\hat{c}))` and an update gate
   :math:`\\gamma_2 = \\sigma(\\mathcal{D}_{\\gamma_2}(\\hat{c}))`, and
   :math:`u_t = \\gamma_1 \\odot u_{t-1} + \\gamma_2 \\odot \\tanh(\\hat{u}_t)`.

As in the reference code the gates read :math:`[\\hat{c}; u_{t-1}]`, and the prediction reads
:math:`[h_T^t; h_T^a; h_T^v; u_T]`. MFN needs word-aligned data (one step of every view per word): unequal
sequence lengths raise a ``ValueError``. Padded steps leave every state unchanged (so :math:`T` is each sample's
own last valid step, taken from ``text_mask``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.choices import check_choices
from models.msa_utils import MODALITIES, check_feature_dims

__all__ = ["MFN"]



def _mlp(in_dim: int, hidden: int, out_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


class MFN(nn.Module):
    """Memory Fusion Network for sentiment intensity regression on word-aligned sequences.

    Defaults are MMSA's ``config_regression.json`` values for MOSI (hidden 256/32/256, memory 400, window 2,
    attention MLPs 32 and 64, gate MLPs 256 and 32, output MLP 128, with their dropouts).

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}``.
        seq_lens: sequence length per modality; all three must be equal (aligned data).
        text_hidden: LSTM width of the text view.
        audio_hidden: LSTM width of the audio view.
        vision_hidden: LSTM width of the visual view.
        memory_dim: width of the multi-view gated memory :math:`u`.
        cell: ``"lstm"`` (the MFN paper) or ``"lsthm"`` (gates also read :math:`u_{t-1}`).
        attention_hidden: hidden width of :math:`\\mathcal{D}_a` (``NN1Config.shapes`` in MMSA).
        attention_dropout: dropout of :math:`\\mathcal{D}_a`.
        proposal_hidden: hidden width of :math:`\\mathcal{D}_u` (``NN2Config.shapes``).
        proposal_dropout: dropout of :math:`\\mathcal{D}_u`.
        retain_hidden: hidden width of :math:`\\mathcal{D}_{\\gamma_1}` (``gamma1Config.shapes``).
        retain_dropout: dropout of :math:`\\mathcal{D}_{\\gamma_1}`.
        update_hidden: hidden width of :math:`\\mathcal{D}_{\\gamma_2}` (``gamma2Config.shapes``).
        update_dropout: dropout of :math:`\\mathcal{D}_{\\gamma_2}`.
        output_hidden: hidden width of the output MLP (``outConfig.shapes``).
        output_dropout: dropout of the output MLP.
        head: ``"mlp"`` (the output MLP, :meth:`forward` predicts) or ``"none"`` (no output MLP: for models that
            read :meth:`encode` as their sentence representation, e.g. MFM's :math:`z_y` encoder).

    Shapes:
        batch["text"]: ``[B, L, Dt]``, batch["audio"]: ``[B, L, Da]``, batch["vision"]: ``[B, L, Dv]``,
        batch["text_mask"]: ``[B, L]`` bool -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        text_hidden: int = 256,
        audio_hidden: int = 32,
        vision_hidden: int = 256,
        memory_dim: int = 400,
        cell: Literal["lstm", "lsthm"] = "lstm",
        attention_hidden: int = 32,
        attention_dropout: float = 0.2,
        proposal_hidden: int = 64,
        proposal_dropout: float = 0.0,
        retain_hidden: int = 256,
        retain_dropout: float = 0.7,
        update_hidden: int = 32,
        update_dropout: float = 0.5,
        output_hidden: int = 128,
        output_dropout: float = 0.0,
        head: Literal["mlp", "none"] = "mlp",
    ) -> None:
        super().__init__()
        check_choices(MFN, locals())
        check_feature_dims("MFN", feature_dims)
        if seq_lens is not None:
            self._check_aligned({m: seq_lens[m] for m in MODALITIES if m in seq_lens}, "seq_lens")
        widths = (
            text_hidden,
            audio_hidden,
            vision_hidden,
            memory_dim,
            attention_hidden,
            proposal_hidden,
            retain_hidden,
            update_hidden,
            output_hidden,
        )
        if min(widths) <= 0:
            raise ValueError("MFN: every width must be positive")
        for p in (attention_dropout, proposal_dropout, retain_dropout, update_dropout, output_dropout):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"MFN: dropouts must be in [0, 1), got {p}")
        self.feature_dims = dict(feature_dims)
        self.hidden = {"text": text_hidden, "audio": audio_hidden, "vision": vision_hidden}
        self.memory_dim = memory_dim
        self.cell = cell

        extra = memory_dim if cell == "lsthm" else 0
        self.cells = nn.ModuleDict(
            {m: nn.LSTMCell(feature_dims[m] + extra, self.hidden[m]) for m in MODALITIES}
        )
        total = sum(self.hidden.values())
        window = 2 * total  # c^{[t-1, t]}: window size 2, as in the paper
        self.delta_attention = _mlp(window, attention_hidden, window, attention_dropout)
        self.proposal = _mlp(window, proposal_hidden, memory_dim, proposal_dropout)
        self.retain_gate = _mlp(window + memory_dim, retain_hidden, memory_dim, retain_dropout)
        self.update_gate = _mlp(window + memory_dim, update_hidden, memory_dim, update_dropout)
        self.out_dim = total + memory_dim
        self.head = _mlp(self.out_dim, output_hidden, 1, output_dropout) if head == "mlp" else None

    def extra_repr(self) -> str:
        return f"feature_dims={self.feature_dims}, hidden={self.hidden}, memory_dim={self.memory_dim}, cell={self.cell!r}"

    @staticmethod
    def _check_aligned(lengths: dict[str, int], what: str) -> None:
        if len(set(lengths.values())) > 1:
            raise ValueError(
                f"MFN: needs word-aligned data (equal sequence lengths), got {what} {lengths}; "
                "use an aligned feature file (e.g. aligned_50.pkl)"
            )

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.head is None:
            raise RuntimeError("MFN: built with head='none'; call encode() for the sentence representation")
        return {"pred": self.head(self.encode(batch)).squeeze(-1)}

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        """The final states of the three LSTMs and the gated memory, :math:`[h_T^t; h_T^a; h_T^v; u_T]`.

        Shapes:
            batch as in the class docstring -> ``[B, text_hidden + audio_hidden + vision_hidden + memory_dim]``.
        """
        xs = {m: batch[m] for m in MODALITIES}
        self._check_aligned({m: x.shape[1] for m, x in xs.items()}, "batch lengths")
        valid = batch["text_mask"]
        b, steps = valid.shape
        h = {m: xs[m].new_zeros(b, self.hidden[m]) for m in MODALITIES}
        c = {m: xs[m].new_zeros(b, self.hidden[m]) for m in MODALITIES}
        mem = xs["text"].new_zeros(b, self.memory_dim)
        for t in range(steps):
            keep = valid[:, t].unsqueeze(-1)
            c_prev = torch.cat([c[m] for m in MODALITIES], dim=-1)
            new_h, new_c = {}, {}
            for m in MODALITIES:
                x_t = xs[m][:, t]
                if self.cell == "lsthm":
                    x_t = torch.cat([x_t, mem], dim=-1)
                new_h[m], new_c[m] = self.cells[m](x_t, (h[m], c[m]))
            c_star = torch.cat([c_prev] + [new_c[m] for m in MODALITIES], dim=-1)
            attended = c_star * F.softmax(self.delta_attention(c_star), dim=-1)
            proposal = torch.tanh(self.proposal(attended))
            both = torch.cat([attended, mem], dim=-1)
            gamma1 = torch.sigmoid(self.retain_gate(both))
            gamma2 = torch.sigmoid(self.update_gate(both))
            # Padded steps leave every state unchanged.
            mem = torch.where(keep, gamma1 * mem + gamma2 * proposal, mem)
            h = {m: torch.where(keep, new_h[m], h[m]) for m in MODALITIES}
            c = {m: torch.where(keep, new_c[m], c[m]) for m in MODALITIES}
        return torch.cat([h[m] for m in MODALITIES] + [mem], dim=-1)
