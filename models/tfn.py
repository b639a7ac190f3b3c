"""Tensor Fusion Network (TFN).

Zadeh et al., "Tensor Fusion Network for Multimodal Sentiment Analysis", EMNLP 2017,
https://aclanthology.org/D17-1115/

Each modality is embedded by its own sub-network; the embeddings, each extended by a constant 1, are fused by a
three-way outer product so that unimodal, bimodal and trimodal interactions are all present:

.. math::
    z^m = [\\mathbf{z}_t; 1] \\otimes [\\mathbf{z}_a; 1] \\otimes [\\mathbf{z}_v; 1]

followed by a fully connected sentiment inference network. As in the paper (and MMSA), audio and visual
sub-networks read the time-average of their features (a masked mean: padding never counts) and the text
sub-network is an LSTM over the word features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from common.tensors import masked_mean

__all__ = ["TFN", "SubNet"]


class SubNet(nn.Module):
    """BatchNorm -> dropout -> three ReLU layers: the audio/visual sub-network of TFN (and LMF).

    Shapes:
        x: ``[B, in_dim]`` -> ``[B, hidden]``.
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(in_dim),
            nn.Dropout(dropout),
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TFN(nn.Module):
    """Tensor Fusion Network for sentiment intensity regression.

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}`` (from the data).
        seq_lens: sequence length per modality (from the data; TFN does not depend on it).
        text_hidden: LSTM width of the text sub-network.
        text_out: width of the text embedding.
        audio_hidden: width of the audio embedding.
        vision_hidden: width of the visual embedding.
        post_fusion_dim: width of the sentiment inference network.
        dropout: dropout of the sub-networks and of the fusion network, where the per-part values below are None.
        audio_dropout: dropout of the audio sub-network (MMSA's ``dropouts[0]``); ``None``: ``dropout``.
        vision_dropout: dropout of the visual sub-network (``dropouts[1]``); ``None``: ``dropout``.
        text_dropout: dropout of the text sub-network (``dropouts[2]``); ``None``: ``dropout``.
        post_fusion_dropout: dropout before the inference network (``dropouts[3]``); ``None``: ``dropout``.
        output_range: the output is ``sigmoid(x) * output_range + output_shift`` (TFN's bounded regression);
            ``None`` for an unbounded linear output.
        output_shift: see ``output_range``.

    Shapes:
        batch["text"]: ``[B, Lt, Dt]``, batch["audio"]: ``[B, La, Da]``, batch["vision"]: ``[B, Lv, Dv]``,
        ``*_mask``: ``[B, L]`` bool -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        text_hidden: int = 64,
        text_out: int = 64,
        audio_hidden: int = 8,
        vision_hidden: int = 16,
        post_fusion_dim: int = 64,
        dropout: float = 0.2,
        audio_dropout: float | None = None,
        vision_dropout: float | None = None,
        text_dropout: float | None = None,
        post_fusion_dropout: float | None = None,
        output_range: float | None = 6.0,
        output_shift: float = -3.0,
    ) -> None:
        super().__init__()
        missing = {"text", "audio", "vision"} - set(feature_dims)
        if missing:
            raise ValueError(f"TFN: feature_dims lacks {sorted(missing)}")
        if min(text_hidden, text_out, audio_hidden, vision_hidden, post_fusion_dim) <= 0:
            raise ValueError("TFN: every width must be positive")
        drops = {
            name: dropout if value is None else value
            for name, value in (("audio", audio_dropout), ("vision", vision_dropout), ("text", text_dropout),
                                ("post_fusion", post_fusion_dropout))
        }
        for name, p in {"dropout": dropout, **drops}.items():
            if not 0.0 <= p < 1.0:
                raise ValueError(f"TFN: {name} dropout must be in [0, 1), got {p}")
        self.feature_dims = dict(feature_dims)
        self.output_range = output_range
        self.output_shift = output_shift

        self.audio_net = SubNet(feature_dims["audio"], audio_hidden, drops["audio"])
        self.vision_net = SubNet(feature_dims["vision"], vision_hidden, drops["vision"])
        self.text_lstm = nn.LSTM(feature_dims["text"], text_hidden, batch_first=True)
        self.text_drop = nn.Dropout(drops["text"])
        self.text_fc = nn.Linear(text_hidden, text_out)

        fused = (text_out + 1) * (audio_hidden + 1) * (vision_hidden + 1)
        self.post_fusion = nn.Sequential(
            nn.Dropout(drops["post_fusion"]),
            nn.Linear(fused, post_fusion_dim),
            nn.ReLU(),
            nn.Linear(post_fusion_dim, post_fusion_dim),
            nn.ReLU(),
            nn.Linear(post_fusion_dim, 1),
        )

    def extra_repr(self) -> str:
        return f"feature_dims={self.feature_dims}, output_range={self.output_range}"

    def _text(self, x: Tensor, mask: Tensor) -> Tensor:
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.text_lstm(packed)
        return self.text_fc(self.text_drop(h[-1]))

    @staticmethod
    def fuse(z_t: Tensor, z_a: Tensor, z_v: Tensor) -> Tensor:
        """Three-way outer product of the 1-extended embeddings, flattened.

        Shapes:
            z_t: ``[B, Dt]``, z_a: ``[B, Da]``, z_v: ``[B, Dv]`` -> ``[B, (Dt+1)(Da+1)(Dv+1)]``.
        """
        one = z_t.new_ones(z_t.shape[0], 1)
        t, a, v = torch.cat([z_t, one], 1), torch.cat([z_a, one], 1), torch.cat([z_v, one], 1)
        return torch.einsum("bi,bj,bk->bijk", t, a, v).flatten(1)

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        z_a = self.audio_net(masked_mean(batch["audio"], batch["audio_mask"]))
        z_v = self.vision_net(masked_mean(batch["vision"], batch["vision_mask"]))
        z_t = self._text(batch["text"], batch["text_mask"])
        out = self.post_fusion(self.fuse(z_t, z_a, z_v)).squeeze(-1)
        if self.output_range is not None:
            out = torch.sigmoid(out) * self.output_range + self.output_shift
        return {"pred": out}
