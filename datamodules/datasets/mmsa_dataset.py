"""The torch side of the MMSA feature files: a batched ``Dataset`` over a validated split and its collate.

Reading, validation and cleaning of the files are in :mod:`features.mmsa_format` (:func:`~features.mmsa_format.load_mmsa`
gives the :class:`~features.mmsa_format.MMSASplit` these classes serve). The batch layout is fixed in
``docs/architecture.md`` ("Multimodal sentiment").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from features.mmsa_format import MMSASplit

__all__ = ["MMSADataset", "mmsa_collate"]


class MMSADataset(Dataset):
    """Pre-stacked tensors of one split; batches are fetched with one tensor index (``__getitems__``).

    ``DataLoader`` calls ``__getitems__(indices)`` when it exists, so a batch costs one gather per tensor
    instead of a Python loop over samples; :func:`mmsa_collate` then passes the ready batch dict through.

    Args:
        split: a validated :class:`MMSASplit`.

    Shapes:
        ``__getitems__`` returns the batch of ``docs/architecture.md``: text ``[B, Lt, Dt]``, text_bert
        ``[B, 3, Lt]`` (when present), audio ``[B, La, Da]``, vision ``[B, Lv, Dv]``, ``*_mask`` ``[B, L*]`` bool,
        label ``[B]``, id ``list[str]``. ``__getitem__`` returns the same keys for one sample, without the
        batch dimension and with ``id`` a ``str``.
    """

    def __init__(self, split: MMSASplit) -> None:
        self.tensors: dict[str, Tensor] = {
            "text": split.text, "audio": split.audio, "vision": split.vision,
            "text_mask": split.text_mask, "audio_mask": split.audio_mask, "vision_mask": split.vision_mask,
            "label": split.label,
        }
        if split.text_bert is not None:
            self.tensors["text_bert"] = split.text_bert
        n = len(split)
        bad = {k: int(t.shape[0]) for k, t in self.tensors.items() if t.shape[0] != n}
        if bad or len(split.id) != n:
            raise ValueError(f"MMSADataset: tensors disagree on the number of samples ({n}): {bad}, "
                             f"ids {len(split.id)}")
        self.ids = np.asarray(split.id)

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: t[index] for k, t in self.tensors.items()}
        item["id"] = str(self.ids[index])
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch: dict[str, Any] = {k: t.index_select(0, idx) for k, t in self.tensors.items()}
        batch["id"] = self.ids[idx.numpy()].tolist()
        return batch


def mmsa_collate(batch: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate for :class:`MMSADataset`: identity for an already-batched dict, stacking for a list of items."""
    if isinstance(batch, Mapping):
        return dict(batch)
    if not batch:
        raise ValueError("mmsa_collate: empty batch")
    out: dict[str, Any] = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        out[key] = torch.stack(values) if isinstance(values[0], Tensor) else list(values)
    return out
