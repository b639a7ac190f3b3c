"""Recurrent Attended Variation Embedding Network (RAVEN).

Wang et al., "Words Can Shift: Dynamically Adjusting Word Representations Using Nonverbal Behaviors", AAAI 2019,
https://arxiv.org/abs/1811.09362 (authors' code: https://github.com/victorywys/RAVEN)

Three stages per word :math:`i` with word representation :math:`e^{(i)}` (paper §3):

1. **Nonverbal sub-networks**: the visual and acoustic frames that occur *during* word :math:`i` are each read by an
   LSTM, :math:`h_v^{(i)} = \\mathrm{LSTM}_v(v^{(i)})`, :math:`h_a^{(i)} = \\mathrm{LSTM}_a(a^{(i)})` (last state;
   each frame first goes through dropout and a linear map, as in the authors' code).
2. **Gated modality-mixing network**: attention gates
   :math:`w_v^{(i)} = \\sigma(W_{hv} [h_v^{(i)}; e^{(i)}] + b_v)`, :math:`w_a^{(i)} = \\sigma(W_{ha} [h_a^{(i)};
   e^{(i)}] + b_a)` and the nonverbal shift vector
   :math:`h_m^{(i)} = w_v^{(i)} (W_v h_v^{(i)}) + w_a^{(i)} (W_a h_a^{(i)}) + b_h`.
3. **Multimodal shifting**: :math:`e_m^{(i)} = e^{(i)} + \\alpha h_m^{(i)}` with
   :math:`\\alpha = \\min(\\beta \\, \\|e^{(i)}\\|_2 / \\|h_m^{(i)}\\|_2, 1)`, so a shift never exceeds
   :math:`\\beta \\|e^{(i)}\\|_2`; then a sentence-level LSTM over the shifted words, its last valid state and a linear
   map give the sentiment intensity.

**Word boundaries (a stated approximation).** RAVEN needs the frames of every word, and MMSA's feature files carry
no per-word frame boundaries. On an *unaligned* file each nonverbal sequence is therefore split into one segment per
valid text token, proportionally to the valid lengths: with :math:`n_t` valid tokens and :math:`n_f` valid frames,
token :math:`j` gets frames :math:`[\\lfloor j n_f / n_t \\rfloor, \\max(\\lfloor (j+1) n_f / n_t \\rfloor,
\\lfloor j n_f / n_t \\rfloor + 1))` (at least one frame; neighbouring tokens share a frame when
:math:`n_f < n_t`), i.e. every token is assumed to last equally long. The text tokens are the file's tokens (BERT
word pieces with ``[CLS]``/``[SEP]`` in MMSA files), not words. Segments longer than ``max_frames_per_word`` are
subsampled evenly to that many frames (the authors pad or subsample each word to 20 frames). On an *aligned* file
(equal lengths, MMSA's word-aligned averages) the same rule gives exactly one step per token: the word-aligned step.
The segmenting is vectorised (gather indices for the whole batch, no loop over samples).

Other choices: the gates use the paper's sigmoid (the authors' code leaves them linear) and the shift uses the
paper's :math:`\\alpha` (the authors' code rescales the shift to at most :math:`\\beta \\|e\\|`, but differently
for small shifts); the authors' per-position BatchNorm of the acoustic frames is left out. RAVEN is not in MMSA:
the defaults are the authors' released settings (``code/consts.py``: frame projection and nonverbal LSTM 150,
sentence LSTM 300, dropout 0.2, :math:`\\beta = 0.2`, 20 frames per word).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from models.msa_utils import check_feature_dims, rnn_final_state

__all__ = ["RAVEN", "shift_words", "word_segments"]

_NONVERBAL = ("audio", "vision")


def word_segments(text_mask: Tensor, frame_mask: Tensor, max_frames: int) -> tuple[Tensor, Tensor]:
    """Frame indices of every text token, by splitting the valid frames proportionally to the valid tokens.

    See the module docstring for the rule. Vectorised over the batch.

    Args:
        text_mask: valid text tokens (right padding).
        frame_mask: valid nonverbal frames (right padding).
        max_frames: cap on the frames per token; longer segments are subsampled evenly.

    Returns:
        ``(index, valid)``: frame index of slot ``k`` of token ``j`` (clamped into range, meaningful where
        ``valid``), and whether that slot holds a frame (False for padded tokens and unused slots). The slot
        dimension ``S`` is the longest segment of the batch, at most ``max_frames``.

    Shapes:
        text_mask: ``[B, Lt]`` bool, frame_mask: ``[B, Lf]`` bool -> ``[B, Lt, S]`` int64, ``[B, Lt, S]`` bool.
    """
    if max_frames < 1:
        raise ValueError(f"word_segments: max_frames must be >= 1, got {max_frames}")
    device = text_mask.device
    n_tok = text_mask.sum(1, keepdim=True)  # [B, 1]
    n_frm = frame_mask.sum(1, keepdim=True).to(device)
    j = torch.arange(text_mask.shape[1], device=device).unsqueeze(0)  # [1, Lt]
    denom = n_tok.clamp_min(1)
    start = torch.div(j * n_frm, denom, rounding_mode="floor")
    end = torch.div((j + 1) * n_frm, denom, rounding_mode="floor")
    end = torch.minimum(torch.maximum(end, start + 1), n_frm)
    length = (end - start).clamp_min(0) * text_mask  # [B, Lt]; 0 for padded tokens or no frames
    slots = int(min(max_frames, max(int(length.max()), 1)))
    k = torch.arange(slots, device=device).view(1, 1, -1)
    seg = length.unsqueeze(-1)
    offset = torch.where(seg > slots, torch.div(k * seg, slots, rounding_mode="floor"), k)
    index = (start.unsqueeze(-1) + offset).clamp(0, max(frame_mask.shape[1] - 1, 0))
    valid = k < seg
    return index, valid


def shift_words(words: Tensor, shift: Tensor, beta: float, eps: float = 1e-8) -> Tensor:
    """Multimodal shifting :math:`e + \\min(\\beta \\|e\\| / \\|h_m\\|, 1) \\, h_m`.

    Shapes:
        words, shift: ``[..., D]`` -> ``[..., D]``.
    """
    alpha = (beta * words.norm(dim=-1, keepdim=True) / shift.norm(dim=-1, keepdim=True).clamp_min(eps)).clamp(max=1.0)
    return words + alpha * shift


class _NonverbalNet(nn.Module):
    """Dropout -> linear -> LSTM over the frames of each word; the last state per word (0 for a word without
    frames).

    Shapes:
        frames: ``[N, S, D]``, valid: ``[N, S]`` bool -> ``[N, H]``.
    """

    def __init__(self, in_dim: int, proj_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.proj = nn.Linear(in_dim, proj_dim)
        self.rnn = nn.LSTM(proj_dim, hidden, batch_first=True)
        self.hidden = hidden

    def forward(self, frames: Tensor, valid: Tensor) -> Tensor:
        out = frames.new_zeros(frames.shape[0], self.hidden)
        rows = valid.any(1).nonzero(as_tuple=True)[0]
        if rows.numel():
            x = self.proj(self.drop(frames[rows]))
            out = out.index_copy(0, rows, rnn_final_state(self.rnn, x, valid[rows])[-1])
        return out


class RAVEN(nn.Module):
    """RAVEN for sentiment intensity regression (aligned or unaligned files; see the module docstring).

    Args:
        feature_dims: feature width per modality, ``{"text": Dt, "audio": Da, "vision": Dv}``; the text features
            are the word representations :math:`e^{(i)}`.
        seq_lens: sequence length per modality (unused: segments are built per batch).
        frame_dim: width of the linear map applied to each nonverbal frame (``normDim``).
        nonverbal_hidden: width of the nonverbal LSTMs (``cellDim``).
        sentence_hidden: width of the sentence-level LSTM (``hiddenDim``).
        dropout: dropout of the nonverbal frames and of the shifted words (``dropProb``).
        shift_weight: :math:`\\beta`, the largest shift relative to :math:`\\|e\\|` (``shift_weight``).
        max_frames_per_word: frames kept per token (``shift_padding_len``).

    Shapes:
        batch["text"]: ``[B, Lt, Dt]``, batch["audio"]: ``[B, La, Da]``, batch["vision"]: ``[B, Lv, Dv]``,
        ``*_mask``: ``[B, L]`` bool -> ``{"pred": [B]}``.
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int] | None = None,
        *,
        frame_dim: int = 150,
        nonverbal_hidden: int = 150,
        sentence_hidden: int = 300,
        dropout: float = 0.2,
        shift_weight: float = 0.2,
        max_frames_per_word: int = 20,
    ) -> None:
        super().__init__()
        check_feature_dims("RAVEN", feature_dims)
        if min(frame_dim, nonverbal_hidden, sentence_hidden, max_frames_per_word) <= 0:
            raise ValueError("RAVEN: widths and max_frames_per_word must be positive")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"RAVEN: dropout must be in [0, 1), got {dropout}")
        if shift_weight < 0:
            raise ValueError(f"RAVEN: shift_weight must be non-negative, got {shift_weight}")
        self.feature_dims = dict(feature_dims)
        self.shift_weight = shift_weight
        self.max_frames_per_word = max_frames_per_word
        d_word = feature_dims["text"]
        self.nonverbal = nn.ModuleDict(
            {m: _NonverbalNet(feature_dims[m], frame_dim, nonverbal_hidden, dropout) for m in _NONVERBAL}
        )
        self.gates = nn.ModuleDict({m: nn.Linear(nonverbal_hidden + d_word, 1) for m in _NONVERBAL})
        # W_a h_a + W_v h_v + b_h as one linear map of the gated [h_a; h_v].
        self.shift = nn.Linear(2 * nonverbal_hidden, d_word)
        self.word_drop = nn.Dropout(dropout)
        self.sentence = nn.LSTM(d_word, sentence_hidden, batch_first=True)
        self.head = nn.Linear(sentence_hidden, 1)

    def extra_repr(self) -> str:
        return (f"feature_dims={self.feature_dims}, shift_weight={self.shift_weight}, "
                f"max_frames_per_word={self.max_frames_per_word}")

    def nonverbal_states(self, batch: dict[str, Tensor], modality: str) -> Tensor:
        """:math:`h_m^{(i)}` of every token for one nonverbal modality.

        Shapes:
            -> ``[B, Lt, nonverbal_hidden]`` (0 on padded tokens).
        """
        text_mask = batch["text_mask"]
        x, mask = batch[modality], batch[f"{modality}_mask"]
        index, valid = word_segments(text_mask, mask, self.max_frames_per_word)
        b, lt, s = index.shape
        frames = x.gather(1, index.reshape(b, lt * s, 1).expand(-1, -1, x.shape[-1])).view(b, lt, s, -1)
        states = self.nonverbal[modality](frames.view(b * lt, s, -1), valid.view(b * lt, s))
        return states.view(b, lt, -1)

    def shifted_words(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The shifted word representations :math:`e_m^{(i)}` and the gates :math:`w_a, w_v`.

        Shapes:
            -> (``[B, Lt, Dt]``, ``{"audio": [B, Lt], "vision": [B, Lt]}``).
        """
        words = batch["text"]
        gated, gates = [], {}
        for m in _NONVERBAL:
            h = self.nonverbal_states(batch, m)
            w = torch.sigmoid(self.gates[m](torch.cat([h, words], dim=-1)))
            gated.append(w * h)
            gates[m] = w.squeeze(-1)
        return shift_words(words, self.shift(torch.cat(gated, dim=-1)), self.shift_weight), gates

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        shifted, _ = self.shifted_words(batch)
        mask = batch["text_mask"]
        shifted = self.word_drop(shifted) * mask.unsqueeze(-1).to(shifted.dtype)
        return {"pred": self.head(rnn_final_state(self.sentence, shifted, mask)[-1]).squeeze(-1)}
