"""Low-rank Multimodal Fusion (LMF).

Liu et al., "Efficient Low-rank Multimodal Fusion with Modality-Specific Factors", ACL 2018,
https://aclanthology.org/P18-1209/

TFN's fusion tensor :math:`\\mathcal{Z} = \\bigotimes_m [\\mathbf{z}_m; 1]` times a weight tensor
:math:`\\mathcal{W}` is never formed: :math:`\\mathcal{W}` is decomposed into rank-:math:`r` modality-specific
factors :math:`\\mathbf{w}_m^{(i)}` (the paper's eq. 6), and the output is computed as

.. math::
    h = \\sum_{i=1}^{r} \\lambda_i \\bigodot_{m \\in \\{t, a, v\\}} [\\mathbf{z}_m; 1]\\, \\mathbf{w}_m^{(i)} + b

where :math:`\\lambda` are learned rank weights (the reference implementation's linear combination of the
rank-wise terms instead of a plain sum). Sub-networks as in the paper and TFN: audio and visual features are
time-averaged (a masked mean: padding never counts) and go through an MLP; text goes through an LSTM (packed
by the mask).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.msa_utils import check_feature_dims, masked_mean, rnn_final_state
from models.tfn import SubNet

__all__ = ["LMF"]


class LMF(nn.Module):
    """Low-rank Multimodal Fusion for sentiment intensity regression.

    Defaults are MMSA's ``config_regression.json`` values for MOSI (``hidden_dims=[128, 16, 128]``,
    ``rank=3``, dropouts 0.3; text embedding = ``text_hidden // 2`` as in MMSA).

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}``.
        seq_lens: sequence length per modality (unused: LMF pools over time).
        text_hidden: LSTM width of the text sub-network.
        text_out: width of the text embedding :math:`\\mathbf{z}_t`.
        audio_hidden: width of the audio embedding :math:`\\mathbf{z}_a`.
        vision_hidden: width of the visual embedding :math:`\\mathbf{z}_v`.
        rank: rank :math:`r` of the factorised fusion weights.
        text_dropout: dropout after the text LSTM.
        audio_dropout: dropout inside the audio sub-network.
        vision_dropout: dropout inside the visual sub-network.

    Shapes:
        batch["text"]: ``[B, Lt, Dt]``, batch["audio"]: ``[B, La, Da]``, batch["vision"]: ``[B, Lv, Dv]``,
        ``*_mask``: ``[B, L]`` bool -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        text_hidden: int = 128,
        text_out: int = 64,
        audio_hidden: int = 16,
        vision_hidden: int = 128,
        rank: int = 3,
        text_dropout: float = 0.3,
        audio_dropout: float = 0.3,
        vision_dropout: float = 0.3,
    ) -> None:
        super().__init__()
        check_feature_dims("LMF", feature_dims)
        if min(text_hidden, text_out, audio_hidden, vision_hidden, rank) <= 0:
            raise ValueError("LMF: widths and rank must be positive")
        for name, p in {"text": text_dropout, "audio": audio_dropout, "vision": vision_dropout}.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"LMF: {name}_dropout must be in [0, 1), got {p}")
        self.feature_dims = dict(feature_dims)
        self.rank = rank

        self.audio_net = SubNet(feature_dims["audio"], audio_hidden, audio_dropout)
        self.vision_net = SubNet(feature_dims["vision"], vision_hidden, vision_dropout)
        self.text_lstm = nn.LSTM(feature_dims["text"], text_hidden, batch_first=True)
        self.text_drop = nn.Dropout(text_dropout)
        self.text_fc = nn.Linear(text_hidden, text_out)

        # Modality-specific factors w_m^{(i)}: [rank, d_m + 1, out] with out = 1 (regression).
        self.text_factor = nn.Parameter(torch.empty(rank, text_out + 1, 1))
        self.audio_factor = nn.Parameter(torch.empty(rank, audio_hidden + 1, 1))
        self.vision_factor = nn.Parameter(torch.empty(rank, vision_hidden + 1, 1))
        self.rank_weights = nn.Parameter(torch.empty(1, rank))
        self.fusion_bias = nn.Parameter(torch.empty(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in (self.text_factor, self.audio_factor, self.vision_factor, self.rank_weights):
            nn.init.xavier_normal_(p)
        nn.init.zeros_(self.fusion_bias)

    def extra_repr(self) -> str:
        return f"feature_dims={self.feature_dims}, rank={self.rank}"

    @staticmethod
    def _factor(z: Tensor, factor: Tensor) -> Tensor:
        """``[z; 1] @ w^{(i)}`` for every rank ``i``. Shapes: z ``[B, d]``, factor ``[r, d+1, 1]`` -> ``[r, B, 1]``."""
        z1 = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)
        return torch.matmul(z1, factor)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z_a = self.audio_net(masked_mean(batch["audio"], batch["audio_mask"]))
        z_v = self.vision_net(masked_mean(batch["vision"], batch["vision_mask"]))
        h_t = rnn_final_state(self.text_lstm, batch["text"], batch["text_mask"])[-1]
        z_t = self.text_fc(self.text_drop(h_t))
        fused = (
            self._factor(z_t, self.text_factor)
            * self._factor(z_a, self.audio_factor)
            * self._factor(z_v, self.vision_factor)
        )  # [r, B, 1]
        out = torch.einsum("r,rb->b", self.rank_weights[0], fused[..., 0]) + self.fusion_bias
        return {"pred": out}
