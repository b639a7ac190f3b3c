"""Self-MM: self-supervised multi-task multimodal sentiment analysis.

Yu et al., "Learning Modality-Specific Representations with Self-Supervised Multi-Task Learning for Multimodal
Sentiment Analysis", AAAI 2021, https://arxiv.org/abs/2102.04830

A multimodal head (on the concatenated text/audio/vision representations) and three unimodal heads are trained
jointly. The unimodal heads learn from *pseudo labels* made by the Unimodal Label Generation Module (ULGM, paper
§3.3, eqs. 5-10), which moves each sample's multimodal label by how much closer the sample sits to the positive
than to the negative class centre in that modality's feature space, relative to the same quantity in the fused
space:

.. math::
    \\alpha_s = \\frac{d^n_s - d^p_s}{d^p_s}, \\quad
    \\hat{y}_s = \\tfrac12 \\frac{\\alpha_s}{\\alpha_m} y_m + \\tfrac12 (y_m + \\alpha_s - \\alpha_m)
    \\quad (\\text{clipped to } [-H, H]),

with centres :math:`C^{p/n}_s` = the mean stored feature of the training samples whose current label in that
space is positive/negative (zero excluded, MMSA's ``excludeZero``). Labels are smoothed over epochs with the
momentum of eq. 10, :math:`y^{(n)}_s = \\frac{n-1}{n+1} y^{(n-1)}_s + \\frac{2}{n+1} \\hat{y}_s`, starting
from :math:`y^{(1)}_s = y_m` and updated from the second epoch on. Each unimodal loss is
:math:`\\frac{1}{B} \\sum_i \\tanh(|y_s^i - y_m^i|)\\, |\\hat{y}^i_s - y^i_s|` (eq. 11); the multimodal L1 loss
is the system's task loss.

**Per-sample state.** ULGM needs each training sample's last feature and current pseudo labels. They live in
buffers of this module (``ulgm_labels`` ``[N, 4]`` = multimodal, text, audio, vision labels; ``ulgm_count``
``[N]`` = how many training passes saw the sample; ``ulgm_feat_<space>`` ``[N, d]``), indexed by the sample's
segment id ``batch["id"]`` through a dict kept in ``get_extra_state`` (so checkpoints carry it). A sample is
registered the first time a training forward sees it; its own pass count plays the role of the epoch :math:`n`.
Buffers grow geometrically. Evaluation forwards never touch the state. The state is per process: under DDP the
buffers would be overwritten by rank 0's (``broadcast_buffers``), so train Self-MM on one device, as MMSA does.

Text is the first token (``text_pool="first"``: the ``[CLS]`` vector of BERT features, as the reference) or the
masked mean of ``batch["text"]``, or of a local BERT run on ``batch["text_bert"]`` when ``text_encoder`` is given.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.choices import check_choices
from models.msa_utils import check_feature_dims, load_local_encoder, masked_mean, rnn_final_state

__all__ = ["SelfMM"]

_SPACES = ("fusion", "text", "audio", "vision")


class _Head(nn.Module):
    """dropout -> Linear -> ReLU (the representation ULGM reads) -> Linear -> ReLU -> Linear(1)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feat = F.relu(self.fc1(self.drop(x)))
        return self.out(F.relu(self.fc2(feat))).squeeze(-1), feat


class _AVSubNet(nn.Module):
    """LSTM over the valid steps -> final hidden state -> dropout -> Linear (Self-MM's ``AuViSubNet``)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.rnn = nn.LSTM(
            in_dim,
            hidden,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.fc(self.drop(rnn_final_state(self.rnn, x, mask)[-1]))


class SelfMM(nn.Module):
    """Self-MM for sentiment intensity regression, with ULGM pseudo labels kept per sample id.

    Defaults are MMSA's ``config_regression.json`` values for MOSI.

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}``.
        seq_lens: sequence length per modality (unused).
        text_pool: ``"first"`` (the ``[CLS]`` step, reference) or ``"mean"`` (masked mean) of the text sequence.
        text_encoder: ``None`` to read ``batch["text"]``; else a local BERT directory run on ``batch["text_bert"]``
            and fine-tuned (never a hub name).
        audio_rnn_hidden: audio LSTM width (``a_lstm_hidden_size``).
        vision_rnn_hidden: visual LSTM width (``v_lstm_hidden_size``).
        audio_out: audio representation width.
        vision_out: visual representation width.
        rnn_layers: LSTM layers of both sub-networks.
        audio_rnn_dropout: dropout of the audio sub-network.
        vision_rnn_dropout: dropout of the visual sub-network.
        fusion_dim: hidden width of the multimodal head (``post_fusion_dim``).
        text_dim: hidden width of the text head.
        audio_dim: hidden width of the audio head.
        vision_dim: hidden width of the visual head.
        fusion_dropout: input dropout of the multimodal head.
        text_dropout: input dropout of the text head.
        audio_dropout: input dropout of the audio head.
        vision_dropout: input dropout of the visual head.
        label_bound: :math:`H`, pseudo labels are clipped to ``[-H, H]``.
        unimodal_weight: weight of each unimodal loss (1 in the paper).

    Returns (forward):
        ``{"pred": [B]}`` (the multimodal head); in training also ``"aux_losses": {"text", "audio", "vision"}``
        (weighted unimodal losses) and ``"logs": {"ulgm_shift_<m>"}`` (mean :math:`|y_s - y_m|` of the batch).
        Training forwards need ``batch["label"]`` and ``batch["id"]``.

    Shapes:
        batch["text"]: ``[B, Lt, Dt]`` (or batch["text_bert"]: ``[B, 3, Lt]``), batch["audio"]: ``[B, La, Da]``,
        batch["vision"]: ``[B, Lv, Dv]``, ``*_mask``: ``[B, L]`` bool, batch["label"]: ``[B]``,
        batch["id"]: ``list[str]`` of length B.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        text_pool: Literal["first", "mean"] = "first",
        text_encoder: str | None = None,
        audio_rnn_hidden: int = 16,
        vision_rnn_hidden: int = 32,
        audio_out: int = 16,
        vision_out: int = 32,
        rnn_layers: int = 1,
        audio_rnn_dropout: float = 0.0,
        vision_rnn_dropout: float = 0.0,
        fusion_dim: int = 128,
        text_dim: int = 32,
        audio_dim: int = 16,
        vision_dim: int = 32,
        fusion_dropout: float = 0.0,
        text_dropout: float = 0.1,
        audio_dropout: float = 0.1,
        vision_dropout: float = 0.0,
        label_bound: float = 3.0,
        unimodal_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_choices(SelfMM, locals())
        check_feature_dims("SelfMM", feature_dims)
        widths = (
            audio_rnn_hidden,
            vision_rnn_hidden,
            audio_out,
            vision_out,
            rnn_layers,
            fusion_dim,
            text_dim,
            audio_dim,
            vision_dim,
        )
        if min(widths) <= 0:
            raise ValueError("SelfMM: widths and rnn_layers must be positive")
        for p in (
            audio_rnn_dropout,
            vision_rnn_dropout,
            fusion_dropout,
            text_dropout,
            audio_dropout,
            vision_dropout,
        ):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"SelfMM: dropouts must be in [0, 1), got {p}")
        if label_bound <= 0 or unimodal_weight < 0:
            raise ValueError("SelfMM: label_bound must be positive and unimodal_weight non-negative")
        self.feature_dims = dict(feature_dims)
        self.text_pool = text_pool
        self.text_encoder_path = text_encoder
        self.label_bound = label_bound
        self.unimodal_weight = unimodal_weight

        self.text_encoder = load_local_encoder("SelfMM", text_encoder, pooler="drop") if text_encoder is not None else None
        text_out = (
            self.text_encoder.config.hidden_size if self.text_encoder is not None else feature_dims["text"]
        )
        self.audio_net = _AVSubNet(
            feature_dims["audio"], audio_rnn_hidden, audio_out, rnn_layers, audio_rnn_dropout
        )
        self.vision_net = _AVSubNet(
            feature_dims["vision"], vision_rnn_hidden, vision_out, rnn_layers, vision_rnn_dropout
        )
        self.heads = nn.ModuleDict(
            {
                "fusion": _Head(text_out + audio_out + vision_out, fusion_dim, fusion_dropout),
                "text": _Head(text_out, text_dim, text_dropout),
                "audio": _Head(audio_out, audio_dim, audio_dropout),
                "vision": _Head(vision_out, vision_dim, vision_dropout),
            }
        )
        self.feat_dims = {"fusion": fusion_dim, "text": text_dim, "audio": audio_dim, "vision": vision_dim}
        # ULGM state (see the module docstring); rows 0..len(_ids)-1 are in use.
        self._ids: dict[str, int] = {}
        self.register_buffer("ulgm_labels", torch.zeros(0, len(_SPACES)))
        self.register_buffer("ulgm_count", torch.zeros(0, dtype=torch.long))
        for s in _SPACES:
            self.register_buffer(f"ulgm_feat_{s}", torch.zeros(0, self.feat_dims[s]))

    def extra_repr(self) -> str:
        return (
            f"feature_dims={self.feature_dims}, text_pool={self.text_pool!r}, text_encoder={self.text_encoder_path!r}, "
            f"label_bound={self.label_bound}, tracked_samples={len(self._ids)}"
        )

    # ------------------------------------------------------------------ ULGM state
    def _state_names(self) -> list[str]:
        return ["ulgm_labels", "ulgm_count"] + [f"ulgm_feat_{s}" for s in _SPACES]

    def get_extra_state(self) -> dict[str, list[str]]:
        return {"ids": list(self._ids)}

    def set_extra_state(self, state: dict[str, list[str]]) -> None:
        self._ids = {sid: i for i, sid in enumerate(state["ids"])}

    def _load_from_state_dict(
        self, state_dict: dict[str, Tensor], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # The ULGM buffers grow with the training set: take the stored sizes before copying.
        for name in self._state_names():
            stored = state_dict.get(prefix + name)
            if stored is not None:
                setattr(self, name, getattr(self, name).new_zeros(stored.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _register(self, ids: list[str], label: Tensor) -> Tensor:
        """Row index of each id, registering new ids with every label set to the ground truth."""
        new = [sid for sid in dict.fromkeys(ids) if sid not in self._ids]
        if new:
            start = len(self._ids)
            needed = start + len(new)
            if needed > self.ulgm_labels.shape[0]:
                capacity = max(needed, 2 * self.ulgm_labels.shape[0], 64)
                for name in self._state_names():
                    old = getattr(self, name)
                    grown = old.new_zeros((capacity, *old.shape[1:]))
                    grown[: old.shape[0]] = old
                    setattr(self, name, grown)
            self._ids.update({sid: start + i for i, sid in enumerate(new)})
        idx = torch.tensor([self._ids[sid] for sid in ids], device=self.ulgm_labels.device)
        fresh = self.ulgm_count[idx] == 0
        self.ulgm_labels[idx[fresh]] = label[fresh].detach().to(self.ulgm_labels.dtype).unsqueeze(1)
        return idx

    def pseudo_labels(self, ids: list[str]) -> Tensor:
        """Current labels ``[multimodal, text, audio, vision]`` of tracked ids. Shapes: -> ``[len(ids), 4]``."""
        unknown = [sid for sid in ids if sid not in self._ids]
        if unknown:
            raise ValueError(f"SelfMM: ids never seen in training: {unknown[:5]}")
        return self.ulgm_labels[torch.tensor([self._ids[sid] for sid in ids], device=self.ulgm_labels.device)]

    @torch.no_grad()
    def _update_ulgm(self, idx: Tensor, feats: dict[str, Tensor]) -> None:
        """Eqs. 5-10 for the batch rows ``idx`` (seen before), then store their features and count the pass."""
        eps = 1e-8
        n = len(self._ids)
        seen = self.ulgm_count[:n] > 0
        labels = self.ulgm_labels[:n]

        def centre_distances(space: str, col: int, f: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            bank = getattr(self, f"ulgm_feat_{space}")[:n]
            pos, neg = seen & (labels[:, col] > 0), seen & (labels[:, col] < 0)
            ok = pos.any() & neg.any()
            c_pos = (bank * pos.unsqueeze(1)).sum(0) / pos.sum().clamp_min(1)
            c_neg = (bank * neg.unsqueeze(1)).sum(0) / neg.sum().clamp_min(1)
            return (f - c_pos).norm(dim=-1), (f - c_neg).norm(dim=-1), ok

        old = self.ulgm_count[idx] > 0
        epoch = (self.ulgm_count[idx] + 1).to(labels.dtype)  # the paper's n: this sample's pass number
        d_fp, d_fn, ok_f = centre_distances("fusion", 0, feats["fusion"])
        delta_f = (d_fn - d_fp) / (d_fp + eps)
        y_m = self.ulgm_labels[idx, 0]
        for col, space in enumerate(_SPACES[1:], start=1):
            d_sp, d_sn, ok_s = centre_distances(space, col, feats[space])
            delta_s = (d_sn - d_sp) / (d_sp + eps)
            alpha = delta_s / (delta_f + eps)
            new = 0.5 * alpha * y_m + 0.5 * (y_m + delta_s - delta_f)
            new = new.clamp(-self.label_bound, self.label_bound)
            current = self.ulgm_labels[idx, col]
            smoothed = (epoch - 1) / (epoch + 1) * current + 2 / (epoch + 1) * new
            self.ulgm_labels[idx, col] = torch.where(old & ok_f & ok_s, smoothed, current)
        for space in _SPACES:
            getattr(self, f"ulgm_feat_{space}")[idx] = feats[space].to(self.ulgm_labels.dtype)
        self.ulgm_count[idx] += 1

    # ------------------------------------------------------------------ forward
    def _text(self, batch: dict[str, Tensor]) -> Tensor:
        if self.text_encoder is None:
            seq, mask = batch["text"], batch["text_mask"]
        else:
            ids, mask, seg = batch["text_bert"].unbind(1)
            seq = self.text_encoder(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
            mask = mask.bool()
        return seq[:, 0] if self.text_pool == "first" else masked_mean(seq, mask)

    def forward(self, batch: dict) -> dict:
        reps = {
            "text": self._text(batch),
            "audio": self.audio_net(batch["audio"], batch["audio_mask"]),
            "vision": self.vision_net(batch["vision"], batch["vision_mask"]),
        }
        reps["fusion"] = torch.cat([reps["text"], reps["audio"], reps["vision"]], dim=-1)
        preds, feats = {}, {}
        for space in _SPACES:
            preds[space], feats[space] = self.heads[space](reps[space])
        out: dict = {"pred": preds["fusion"]}
        if not self.training:
            return out
        if "label" not in batch or "id" not in batch:
            raise ValueError(
                "SelfMM: training forwards need batch['label'] and batch['id'] (ULGM pseudo labels)"
            )
        if len(batch["id"]) != preds["fusion"].shape[0]:
            raise ValueError(
                f"SelfMM: batch['id'] has {len(batch['id'])} ids for a batch of {preds['fusion'].shape[0]}"
            )
        idx = self._register(list(batch["id"]), batch["label"])
        targets = self.ulgm_labels[idx].clone()  # labels before this step's update
        y_m = targets[:, 0]
        aux, logs = {}, {}
        for col, space in enumerate(_SPACES[1:], start=1):
            weight = torch.tanh((targets[:, col] - y_m).abs())
            aux[space] = self.unimodal_weight * (weight * (preds[space] - targets[:, col]).abs()).mean()
            logs[f"ulgm_shift_{space}"] = (targets[:, col] - y_m).abs().mean()
        self._update_ulgm(idx, {s: f.detach() for s, f in feats.items()})
        out["aux_losses"] = aux
        out["logs"] = logs
        return out
