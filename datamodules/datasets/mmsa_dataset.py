"""The torch side of the MMSA feature files: a batched ``Dataset`` over a validated split and its collate.

Reading, validation and cleaning of the files are in :mod:`features.mmsa_format` (:func:`~features.mmsa_format.load_mmsa`
gives the :class:`~features.mmsa_format.MMSASplit` these classes serve). The batch layout is fixed in
``docs/architecture.md`` ("Multimodal sentiment").

A split read from a feature store (``.mmsa``) keeps its ``text`` / ``audio`` / ``vision`` memory-mapped: a batch
gathers its rows from the mapping (the page cache, shared by every DDP rank and worker of the machine), converts them
to float32 and cleans NaN/inf to 0 when the split's count for that modality is not 0, so the batch equals the one the
in-memory path gives. Pickling the dataset (spawned DataLoader workers) sends the file names, not the data.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from features.mmsa_format import MMSASplit

__all__ = ["MMSADataset", "mmsa_collate"]


def _mapped_view(arr: np.ndarray) -> Tensor:
    """A tensor over the (read-only) mapping itself: no copy; only ever read (``index_select`` / indexing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(arr))


def _rows(view: Tensor, index: Tensor, clean: bool | Tensor) -> Tensor:
    """The rows ``index`` of a mapped array's view as a new float32 tensor with NaN/inf set to 0: in every row when
    ``clean`` is True, in the rows flagged by ``clean[index]`` when it is a per-sample bool tensor."""
    rows = view.index_select(0, index).float()
    if isinstance(clean, Tensor):
        flagged = clean.index_select(0, index)
        if bool(flagged.any()):
            rows[flagged] = torch.nan_to_num(rows[flagged], nan=0.0, posinf=0.0, neginf=0.0)
    elif clean:
        torch.nan_to_num_(rows, nan=0.0, posinf=0.0, neginf=0.0)
    return rows


class MMSADataset(Dataset):
    """One split; batches are fetched with one index per tensor (``__getitems__``).

    ``DataLoader`` calls ``__getitems__(indices)`` when it exists, so a batch costs one gather per tensor
    instead of a Python loop over samples; :func:`mmsa_collate` then passes the ready batch dict through.
    Features held as tensors (``.pkl`` / ``.npz``, already cleaned) are gathered with ``index_select``; memory-mapped
    ones (a store) are sliced from the mapping, converted to float32 and cleaned per batch.

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
            "text_mask": split.text_mask, "audio_mask": split.audio_mask, "vision_mask": split.vision_mask,
            "label": split.label,
        }
        #: memory-mapped features by key, with which rows need NaN/inf cleaning (all: True, none: False, or a
        #: per-sample bool tensor from the store's header)
        self.mapped: dict[str, tuple[np.ndarray, bool | Tensor]] = {}
        for key in ("text", "audio", "vision"):
            value = getattr(split, key)
            if isinstance(value, Tensor):
                self.tensors[key] = value
                continue
            clean: bool | Tensor = split.nonfinite.get(key) != 0
            rows = split.nonfinite_rows.get(key)
            if clean and rows is not None:
                clean = torch.zeros(len(value), dtype=torch.bool)
                clean[torch.as_tensor(rows, dtype=torch.long)] = True
            self.mapped[key] = (value, clean)
        self._views = {key: _mapped_view(arr) for key, (arr, _) in self.mapped.items()}
        if split.text_bert is not None:
            self.tensors["text_bert"] = split.text_bert
        n = len(split)
        sizes = {k: int(t.shape[0]) for k, t in self.tensors.items()} | {k: int(a.shape[0])
                                                                          for k, (a, _) in self.mapped.items()}
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad or len(split.id) != n:
            raise ValueError(f"MMSADataset: tensors disagree on the number of samples ({n}): {bad}, "
                             f"ids {len(split.id)}")
        self.ids = np.asarray(split.id)

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: t[index] for k, t in self.tensors.items()}
        for key, (_, clean) in self.mapped.items():
            item[key] = _rows(self._views[key], torch.tensor([int(index)]), clean)[0]
        item["id"] = str(self.ids[index])
        return item

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        batch: dict[str, Any] = {k: t.index_select(0, idx) for k, t in self.tensors.items()}
        for key, (_, clean) in self.mapped.items():
            batch[key] = _rows(self._views[key], idx, clean)
        batch["id"] = self.ids[idx.numpy()].tolist()
        return batch

    # memory-mapped arrays travel to spawned workers as (file, dtype, shape, offset, order), never as their data
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_views"]
        state["mapped"] = {
            key: ((arr.filename, arr.dtype.str, arr.shape, arr.offset, "F" if np.isfortran(arr) else "C"), clean)
            if isinstance(arr, np.memmap) and arr.filename else (arr, clean)
            for key, (arr, clean) in self.mapped.items()
        }
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        mapped = {}
        for key, (spec, clean) in state["mapped"].items():
            if isinstance(spec, tuple):
                file, dtype, shape, offset, order = spec
                spec = np.memmap(file, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset, order=order)
            mapped[key] = (spec, clean)
        self.__dict__.update(state, mapped=mapped)
        self._views = {key: _mapped_view(arr) for key, (arr, _) in mapped.items()}


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
