"""Streaming face caches for sets larger than memory, on Lightning's ``litdata``.

The in-memory path (:class:`datamodules.datasets.images.FaceTensorDataset`) holds every crop as a uint8 tensor;
AffectNet-sized sets (~290k faces) do not fit a node's memory at 256 px. Here each split is written ONCE with
``litdata.optimize`` into binary chunks (``<stream_dir>/<split>/``: ``index.json`` + ``chunk-*.bin``) from the
per-face ``.npy`` cache files that ``FERDataModule.prepare_data`` already writes, one face at a time (nothing is
held in memory), and read back with ``litdata.StreamingDataset`` / ``StreamingDataLoader``, which read chunks
lazily from local disk or object storage and shard them across DDP ranks, nodes and loader workers.

Batch contract: an item is exactly a :class:`FaceTensorDataset` item (``image`` ``[3, H, W]`` uint8, ``descriptor``
``[1, H, W]`` uint8 when present, ``label`` ``[]`` int64, ``origin`` str, ``path`` str), so the same
:class:`~datamodules.datasets.images.FaceBatchTransform` collate turns them into the same batches.

Order. Chunks are written in the split's order (``keep_data_ordered``, one writer), so with ``shuffle=False`` (the
eval splits; or a fixed-order training run) the batches are identical to the in-memory loader's, batch for batch.
With ``shuffle=True`` litdata permutes chunks and items within its own seeded scheme (``seed``), not torch's
``RandomSampler``: the same seed gives the same epoch order run after run, and every epoch holds exactly the
split's faces, but the order differs from the in-memory path's shuffled order (a different sampler). The tests
check both (``tests/datamodules/test_streaming.py``).

Under DDP litdata gives each rank a disjoint set of chunks. With ``drop_last=False`` (eval) no face is repeated or
dropped, so the evaluation metrics equal a single-process run (tested with 2 gloo processes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize

log = logging.getLogger(__name__)

__all__ = ["FaceStreamingDataset", "StreamRecord", "streaming_loader", "write_face_stream"]

INDEX_FILE = "index.json"
META_FILE = "face_stream.json"


@dataclass(frozen=True)
class StreamRecord:
    """One face to write: its cached crop (and descriptor map) file and labels.

    Attributes:
        crop_file: ``.npy`` uint8 ``[H, W, 3]`` face crop (the FER cache file).
        descriptor_file: ``.npy`` uint8 ``[H, W]`` descriptor map, or ``None``.
        label: class index.
        origin: ``"real"`` or the extra root's name.
        path: source image path.
    """

    crop_file: str
    descriptor_file: str | None
    label: int
    origin: str
    path: str


def _read_record(record: StreamRecord) -> tuple:
    """``litdata.optimize`` worker function: one record -> one sample ``(image, label, meta, [descriptor])``.

    ``meta`` is the JSON text ``[origin, path]``: litdata serialises a bare string that names an existing image
    file as that image (it reads the file), so the source path must not travel as a plain string.
    """
    crop = np.load(record.crop_file)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"write_face_stream: {record.crop_file}: expected an [H, W, 3] uint8 crop, got "
                         f"{crop.dtype} {crop.shape}")
    meta = json.dumps([record.origin, record.path])
    item: tuple = (np.ascontiguousarray(crop.transpose(2, 0, 1)), int(record.label), meta)
    if record.descriptor_file is not None:
        desc = np.load(record.descriptor_file)
        if desc.ndim == 3:
            desc = desc[:, :, 0]
        item += (np.ascontiguousarray(desc[None]),)
    return item


def _fingerprint(records: Sequence[StreamRecord]) -> str:
    h = hashlib.sha1()
    for r in records:
        h.update(json.dumps([r.crop_file, r.descriptor_file, r.label, r.origin, r.path]).encode())
    return h.hexdigest()


def write_face_stream(
    records: Sequence[StreamRecord], output_dir: str | Path, chunk_bytes: str = "64MB", num_workers: int = 1
) -> Path:
    """Write ``records`` as litdata chunks in ``output_dir`` (reused when it already holds the same records).

    The write goes to ``<output_dir>.tmp`` and is renamed into place when complete, so an interrupted write never
    leaves a half-written stream that a later run would read. An existing ``output_dir`` that holds a different
    record list (other split, other settings) is an error naming it, never overwritten.

    Args:
        records: the faces in split order.
        output_dir: local target folder.
        chunk_bytes: litdata chunk size.
        num_workers: writer processes; 1 keeps the chunk order equal to ``records`` (needed for the exact-order
            guarantee of the eval splits).

    Returns:
        ``output_dir``.
    """
    out = Path(output_dir)
    digest = _fingerprint(records)
    meta_path = out / META_FILE
    if (out / INDEX_FILE).is_file():
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("fingerprint") == digest:
            return out
        raise ValueError(
            f"write_face_stream: {str(out)!r} already holds a different stream (fingerprint "
            f"{meta.get('fingerprint')!r} != {digest!r}); delete it or choose another stream_dir"
        )
    if not records:
        raise ValueError(f"write_face_stream: no records to write to {str(out)!r}")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    optimize(
        fn=_read_record,
        inputs=list(records),
        output_dir=str(tmp),
        chunk_bytes=chunk_bytes,
        num_workers=num_workers,
        keep_data_ordered=True,
        reorder_files=False,
        start_method="fork",  # no re-import of the caller's __main__ in the writer process (spawn would)
        verbose=False,
    )
    (tmp / META_FILE).write_text(json.dumps({"fingerprint": digest, "n": len(records)}))
    tmp.replace(out)
    log.info("Wrote %d faces as litdata chunks to %s", len(records), out)
    return out


class FaceStreamingDataset(StreamingDataset):
    """A litdata stream of faces whose items are :class:`FaceTensorDataset` items (see module docstring).

    Args:
        input_dir: folder written by :func:`write_face_stream` (local path or an object-store URL litdata reads).
        shuffle: litdata's seeded chunk + item shuffle (train); ``False`` keeps the written order (eval).
        seed: shuffle seed.
        drop_last: drop the uneven tail across ranks (train under DDP); ``False`` keeps every face once (eval).
        labels: optional ``[N]`` labels of the written order (for ``class_counts``); read from the stream when
            ``None``.

    Shapes:
        Item: ``{"image": [3, H, W] uint8, "descriptor": [1, H, W] uint8, "label": [] int64, "origin": str,
        "path": str}``
    """

    def __init__(self, input_dir: str, shuffle: bool = False, seed: int = 42, drop_last: bool = False) -> None:
        super().__init__(input_dir=input_dir, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self._labels: torch.Tensor | None = None
        self._origins: list[str] | None = None

    def __getitem__(self, index: Any) -> dict[str, Any]:
        raw = super().__getitem__(index)
        origin, path = json.loads(raw[2])
        item = {
            "image": _uint8_tensor(raw[0]),
            "label": torch.tensor(int(raw[1]), dtype=torch.long),
            "origin": origin,
            "path": path,
        }
        if len(raw) > 3:
            item["descriptor"] = _uint8_tensor(raw[3])
        return item

    def _scan_labels(self) -> None:
        """Read every label/origin once (a full pass over the chunks; only for reporting)."""
        reader = FaceStreamingDataset(self.input_dir.path or self.input_dir.url, shuffle=False)
        labels, origins = [], []
        for i in range(len(reader)):
            item = reader[i]
            labels.append(int(item["label"]))
            origins.append(item["origin"])
        self._labels = torch.tensor(labels, dtype=torch.long)
        self._origins = origins

    @property
    def labels(self) -> torch.Tensor:
        """``[N]`` labels in written order (``FaceTensorDataset.labels``'s counterpart; scans once)."""
        if self._labels is None:
            self._scan_labels()
        return self._labels

    @property
    def origins(self) -> list[str]:
        """Origin tags in written order (scans once)."""
        if self._origins is None:
            self._scan_labels()
        return self._origins


def _uint8_tensor(x: Any) -> torch.Tensor:
    """A writable uint8 tensor from what litdata returns (numpy array or read-only tensor)."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.uint8).clone()
    return torch.from_numpy(np.array(x, dtype=np.uint8))


def streaming_loader(dataset: FaceStreamingDataset, batch_size: int, num_workers: int, collate_fn: Any) -> StreamingDataLoader:
    """``StreamingDataLoader`` with the datamodule's batch size, workers and collate (the batch contract)."""
    return StreamingDataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
        persistent_workers=num_workers > 0,
    )
