"""Streaming face caches for sets larger than memory, on Lightning's ``litdata``.

The in-memory path (:class:`datamodules.datasets.images.FaceTensorDataset`) holds every crop as a uint8 tensor;
AffectNet-sized sets (~290k faces) do not fit a node's memory at 256 px. Here each split is written ONCE with
``litdata.optimize`` into binary chunks (``<stream_dir>/<split>/``: ``index.json`` + ``chunk-*.bin``) from the
per-face ``.npy`` cache files that ``FERDataModule.prepare_data`` already writes, one face at a time (nothing is
held in memory), and read back with ``litdata.StreamingDataset`` / ``StreamingDataLoader``, which read chunks
lazily from local disk or object storage and shard them across DDP ranks, nodes and loader workers.

Batch contract: the batches are exactly the in-memory path's. A dataset item is a group (``pixels``, ``label``,
``origin``, ``path``; :func:`group_items` turns it into :class:`FaceTensorDataset` items: ``image`` ``[3, H, W]``
uint8, ``descriptor`` ``[1, H, W]`` uint8 when present, ``label`` ``[]`` int64, ``origin`` str, ``path`` str), and
the loader's collate hands the concatenated pixels to the same
:class:`~datamodules.datasets.images.FaceBatchTransform`, or the items to any other collate.

Sample layout (``FORMAT_VERSION`` 3). One litdata sample holds a **group** of ``group_size`` consecutive faces of
the written order (the last group may be shorter) as three leaves: ``pixels`` ``[g, C, H, W]`` uint8 (each face's RGB
crop with its descriptor map as a 4th channel when present: ONE numpy leaf, so one deserialisation and one copy out
of the chunk per group), ``label`` ``[g]`` int64 and ``meta`` (``origin\0path`` per face, NUL-joined; a NUL cannot
occur in a POSIX path, and litdata would read a bare string that names an existing file as that file). The loader
asks litdata for ``batch_size / group_size`` groups per batch and :class:`GroupCollate` concatenates them into the
batch (one more copy, which the in-memory path's stack makes too): litdata's per-sample reader (its Python calls,
the chunk lookup, the deserialiser) then runs once per group instead of once per face; it was the whole throughput
gap to the in-memory path (``benchmarks/bench_fer_stream.py``). The price: the faces of a group always share a
batch. Groups are cut from the train split's fixed random write order (below), so a group is a random set of faces
of mixed classes, and every batch still draws ``batch_size / group_size`` random groups. ``group_size=1`` is the
face-per-sample layout. Version-1/2 streams are refused with an error naming the folder.

Reading (the cause of the version-1 slowness, found by profiling one epoch): litdata's default ``batch_decode="auto"``
decodes a window of 16 MB / mean sample size = 255 rows of a 128 px face sample at a time, while its default
``item_shuffle_window`` shuffles aligned blocks of 256 items: every shuffle block straddled two decode windows, the
shuffled order ping-ponged between them and each face was deserialised ~4 times per epoch. Here each face is decoded
once (``batch_decode=1``: only the requested row, litdata's own setting for image samples) and the train order is
a full in-chunk permutation (``item_shuffle_window=0``).

Order. Chunks are written in the order given (``keep_data_ordered``, one writer). Eval splits are written in the
split's order, so their batches are identical to the in-memory loader's, batch for batch (the batch size is a
multiple of the group size). The train split is written
in a fixed pseudo-random permutation of the split's order (:func:`train_write_order`, seeded by the split's digest,
not by the training seed, so one stream serves every seed): litdata shuffles chunk order and items *within* a chunk,
and a chunk of the class-sorted order (~975 faces at 128 px) would hold one or two classes, so on a large set every
shuffled batch would too. With ``shuffle=False`` the train batches equal the in-memory loader's batches over the
same permutation. With ``shuffle=True`` litdata permutes chunks and items within its own seeded scheme (``seed``), not torch's
``RandomSampler``: the same seed gives the same epoch order run after run, and every epoch holds exactly the
split's faces, but the order differs from the in-memory path's shuffled order (a different sampler). The tests
check both (``tests/datamodules/test_streaming.py``).

Under DDP litdata gives each rank whole batches' worth of groups (``floor(n / batch) // world_size`` batches each, cut
out of the chunks by item interval, so chunk size does not matter) and the remainder to the last rank. With
``drop_last=False`` (eval) no face is repeated or dropped, so the evaluation metrics equal a single-process run
(tested with 2 gloo processes); a split with fewer than ``world_size * batch_size`` faces goes whole to the last rank.
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

__all__ = [
    "FORMAT_VERSION", "TRAIN_WRITE_ORDER", "FaceStreamingDataset", "GroupCollate", "StreamRecord", "group_items",
    "streaming_loader", "train_write_order", "write_face_stream",
]

#: the train split's written order (part of the default stream folder's key, so streams written class-sorted by
#: earlier versions stay untouched in their own folders)
TRAIN_WRITE_ORDER = "permuted-1"


def train_write_order(records: Sequence[Any], key: str) -> list[Any]:
    """``records`` in a fixed pseudo-random order seeded by ``key`` (a split digest): same key, same order.

    Shapes:
        records: ``N`` items -> the same ``N`` items, permuted.
    """
    seed = int(hashlib.sha1(f"train-write-order:{key}".encode()).hexdigest()[:16], 16)
    return [records[i] for i in np.random.default_rng(seed).permutation(len(records))]

INDEX_FILE = "index.json"
META_FILE = "face_stream.json"
#: Sample layout written by :func:`write_face_stream` (see the module docstring); 1 = four leaves, 2 = one face per
#: sample (both old).
FORMAT_VERSION = 3
#: litdata read settings (module docstring): decode only the requested face; full in-chunk shuffle.
BATCH_DECODE = 1
ITEM_SHUFFLE_WINDOW = 0
_META_SEP = "\0"


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


def _read_record(record: StreamRecord) -> tuple[np.ndarray, int, str]:
    """``litdata.optimize`` worker function: one record -> one sample ``(pixels, label, meta)``.

    Shapes:
        pixels: ``[3, H, W]`` uint8, or ``[4, H, W]`` with the descriptor map as channel 3.
    """
    crop = np.load(record.crop_file)
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"write_face_stream: {record.crop_file}: expected an [H, W, 3] uint8 crop, got "
                         f"{crop.dtype} {crop.shape}")
    for name, text in (("origin", record.origin), ("path", record.path)):
        if _META_SEP in text:
            raise ValueError(f"write_face_stream: {record.crop_file}: the {name} {text!r} contains a NUL character")
    planes = [crop.transpose(2, 0, 1)]
    if record.descriptor_file is not None:
        desc = np.load(record.descriptor_file)
        if desc.ndim == 3:
            desc = desc[:, :, 0]
        if desc.shape != crop.shape[:2] or desc.dtype != np.uint8:
            raise ValueError(f"write_face_stream: {record.descriptor_file}: expected a {crop.shape[:2]} uint8 map, "
                             f"got {desc.dtype} {desc.shape}")
        planes.append(desc[None])
    pixels = np.ascontiguousarray(np.concatenate(planes, axis=0))
    return pixels, int(record.label), record.origin + _META_SEP + record.path


def _read_group(records: Sequence[StreamRecord]) -> tuple[np.ndarray, np.ndarray, str]:
    """``litdata.optimize`` worker function: a group of records -> one sample ``(pixels, labels, meta)``.

    Shapes:
        pixels: ``[g, C, H, W]`` uint8 (``C`` = 3, or 4 with the descriptor maps), labels: ``[g]`` int64.
    """
    faces = [_read_record(r) for r in records]
    shapes = {f[0].shape for f in faces}
    if len(shapes) > 1:
        raise ValueError(f"write_face_stream: faces of different shapes {sorted(shapes)} in one group (first file "
                         f"{records[0].crop_file}): every crop of a split must have the same size")
    pixels = np.ascontiguousarray(np.stack([f[0] for f in faces]))
    return pixels, np.array([f[1] for f in faces], dtype=np.int64), _META_SEP.join(f[2] for f in faces)


def _fingerprint(records: Sequence[StreamRecord], group_size: int) -> str:
    h = hashlib.sha1(f"face_stream v{FORMAT_VERSION} group {group_size}".encode())
    for r in records:
        h.update(json.dumps([r.crop_file, r.descriptor_file, r.label, r.origin, r.path]).encode())
    return h.hexdigest()


def _read_meta(folder: str | Path) -> dict | None:
    """The ``face_stream.json`` metadata that :func:`write_face_stream` leaves in ``folder``, or ``None``."""
    meta_path = Path(folder) / META_FILE
    return json.loads(meta_path.read_text()) if meta_path.is_file() else None


def _meta_format(meta: dict | None) -> int | None:
    return None if meta is None else int(meta.get("format", 1))


def stream_format(folder: str | Path) -> int | None:
    """The ``FORMAT_VERSION`` of a stream written by :func:`write_face_stream` (1 for the old layout without the
    key), or ``None`` when ``folder`` holds no such stream."""
    return _meta_format(_read_meta(folder))


def write_face_stream(
    records: Sequence[StreamRecord], output_dir: str | Path, group_size: int = 1, chunk_bytes: str = "64MB",
    num_workers: int = 1,
) -> Path:
    """Write ``records`` as litdata chunks in ``output_dir`` (reused when it already holds the same records).

    The write goes to ``<output_dir>.tmp`` and is renamed into place when complete, so an interrupted write never
    leaves a half-written stream that a later run would read. An existing ``output_dir`` that holds a different
    record list (other split, other settings, an older sample layout) is an error naming it, never overwritten.

    Args:
        records: the faces in split order.
        output_dir: local target folder.
        group_size: faces per litdata sample (module docstring); the batch size must be a multiple of it.
        chunk_bytes: litdata chunk size.
        num_workers: writer processes; 1 keeps the chunk order equal to ``records`` (needed for the exact-order
            guarantee of the eval splits).

    Returns:
        ``output_dir``.
    """
    if group_size < 1:
        raise ValueError(f"write_face_stream: group_size must be >= 1, got {group_size}")
    out = Path(output_dir)
    digest = _fingerprint(records, group_size)
    if (out / INDEX_FILE).is_file():
        meta = _read_meta(out) or {}
        if meta.get("fingerprint") == digest:
            return out
        raise ValueError(
            f"write_face_stream: {str(out)!r} already holds a different stream (format {meta.get('format', 1)}, "
            f"group size {meta.get('group_size', 1)}, fingerprint {meta.get('fingerprint')!r}; this write: format "
            f"{FORMAT_VERSION}, group size {group_size}, {digest!r}); delete it or choose another stream_dir"
        )
    if not records:
        raise ValueError(f"write_face_stream: no records to write to {str(out)!r}")
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    optimize(
        fn=_read_group,
        inputs=[list(records[i:i + group_size]) for i in range(0, len(records), group_size)],
        output_dir=str(tmp),
        chunk_bytes=chunk_bytes,
        num_workers=num_workers,
        keep_data_ordered=True,
        reorder_files=False,
        start_method="fork",  # no re-import of the caller's __main__ in the writer process (spawn would)
        verbose=False,
    )
    (tmp / META_FILE).write_text(json.dumps({"fingerprint": digest, "n": len(records), "format": FORMAT_VERSION,
                                             "group_size": group_size}))
    tmp.replace(out)
    log.info("Wrote %d faces (groups of %d) as litdata chunks to %s", len(records), group_size, out)
    return out


class FaceStreamingDataset(StreamingDataset):
    """A litdata stream of face groups written by :func:`write_face_stream` (see module docstring).

    An item is one group: ``{"pixels": [g, C, H, W] uint8, "label": [g] int64, "origin": list[str],
    "path": list[str]}``; :func:`group_items` gives its :class:`FaceTensorDataset` items, and
    :func:`streaming_loader` makes the batches. ``len()`` counts groups (litdata's items); :attr:`num_faces` faces.

    Args:
        input_dir: folder written by :func:`write_face_stream` (local path or an object-store URL litdata reads).
        shuffle: litdata's seeded chunk + full in-chunk shuffle of the groups (train); ``False`` keeps the written
            order (eval).
        seed: shuffle seed.
        drop_last: drop the uneven tail across ranks (train under DDP); ``False`` keeps every face once (eval).
    """

    def __init__(self, input_dir: str, shuffle: bool = False, seed: int = 42, drop_last: bool | None = False) -> None:
        # local streams: the metadata is read once (format check, group size, face count)
        self._meta = _read_meta(input_dir) if "://" not in str(input_dir) else None
        version = _meta_format(self._meta) if self._meta is not None else None
        if version is not None and version != FORMAT_VERSION:
            raise ValueError(
                f"FaceStreamingDataset: {str(input_dir)!r} holds a format-{version} face stream; this version reads "
                f"format {FORMAT_VERSION} (groups of faces per sample): delete the folder and let prepare_data() "
                "write it again"
            )
        super().__init__(input_dir=input_dir, shuffle=shuffle, seed=seed, drop_last=drop_last,
                         batch_decode=BATCH_DECODE, item_shuffle_window=ITEM_SHUFFLE_WINDOW)
        self._group_size = None if self._meta is None else self._meta.get("group_size")
        self._labels: torch.Tensor | None = None
        self._origins: list[str] | None = None
        self._paths: list[str] | None = None

    def __getitem__(self, index: Any) -> dict[str, Any]:
        pixels, labels, meta = super().__getitem__(index)
        parts = meta.split(_META_SEP)
        return {"pixels": _uint8_tensor(pixels), "label": torch.from_numpy(np.asarray(labels, dtype=np.int64)),
                "origin": parts[0::2], "path": parts[1::2]}

    @property
    def group_size(self) -> int:
        """Faces per sample (the last group of the stream may be shorter)."""
        if self._group_size is None:  # a remote stream: the first group is full unless the split is smaller
            self._group_size = len(FaceStreamingDataset(self.input_dir.url or self.input_dir.path)[0]["path"])
        return self._group_size

    def _scan(self) -> None:
        """Read every label/origin/path once in written order (a full pass over the chunks; only for reporting)."""
        reader = FaceStreamingDataset(self.input_dir.url or self.input_dir.path, shuffle=False)
        labels, origins, paths = [], [], []
        for i in range(len(reader)):
            group = reader[i]
            labels += group["label"].tolist()
            origins += group["origin"]
            paths += group["path"]
        self._labels = torch.tensor(labels, dtype=torch.long)
        self._origins, self._paths = origins, paths

    @property
    def labels(self) -> torch.Tensor:
        """``[N]`` face labels in written order (``FaceTensorDataset.labels``'s counterpart; scans once)."""
        if self._labels is None:
            self._scan()
        return self._labels

    @property
    def origins(self) -> list[str]:
        """Face origin tags in written order (scans once)."""
        if self._origins is None:
            self._scan()
        return self._origins

    @property
    def paths(self) -> list[str]:
        """Face source paths in written order (scans once)."""
        if self._paths is None:
            self._scan()
        return self._paths

    @property
    def num_faces(self) -> int:
        """Faces in the whole stream (all ranks; from the stream's metadata, or a scan for a remote stream)."""
        if self._meta is not None:
            return int(self._meta["n"])
        return len(self.labels)


def group_items(group: dict[str, Any]) -> list[dict[str, Any]]:
    """The :class:`FaceTensorDataset` items of one stream group (views of its pixel buffer)."""
    x = group["pixels"]
    items = []
    for j in range(x.shape[0]):
        item = {"image": x[j, :3], "label": group["label"][j], "origin": group["origin"][j],
                "path": group["path"][j]}
        if x.shape[1] > 3:
            item["descriptor"] = x[j, 3:]
        items.append(item)
    return items


class GroupCollate:
    """Collate of a batch of stream groups: the groups' pixels concatenated once and handed to a
    :class:`~datamodules.datasets.images.FaceBatchTransform` (``collate_pixels``), or the groups' items to any
    other collate (``list``, say). Picklable, for loader workers.
    """

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn

    def __call__(self, groups: list[dict[str, Any]]) -> Any:
        if hasattr(self.collate_fn, "collate_pixels"):
            pixels = groups[0]["pixels"] if len(groups) == 1 else torch.cat([g["pixels"] for g in groups])
            labels = groups[0]["label"] if len(groups) == 1 else torch.cat([g["label"] for g in groups])
            return self.collate_fn.collate_pixels(pixels, labels, [o for g in groups for o in g["origin"]],
                                                  [p for g in groups for p in g["path"]])
        return self.collate_fn([item for g in groups for item in group_items(g)])


def _uint8_tensor(x: Any) -> torch.Tensor:
    """A writable uint8 tensor sharing ``x``'s memory when litdata handed over its own writable copy (its numpy
    deserialiser copies out of the chunk), else a copy."""
    if isinstance(x, torch.Tensor):
        return x.to(torch.uint8).clone()
    if x.dtype == np.uint8 and x.flags.writeable:
        return torch.from_numpy(x)
    return torch.from_numpy(np.array(x, dtype=np.uint8))


def streaming_loader(dataset: FaceStreamingDataset, batch_size: int, num_workers: int, collate_fn: Any) -> StreamingDataLoader:
    """``StreamingDataLoader`` giving batches of ``batch_size`` faces (``batch_size / group_size`` groups each) through
    ``collate_fn`` (the batch contract; :class:`GroupCollate`).

    Raises:
        ValueError: ``batch_size`` is not a multiple of the stream's group size.
    """
    g = dataset.group_size
    if batch_size % g:
        raise ValueError(
            f"streaming_loader: batch_size {batch_size} is not a multiple of the group size {g} of the stream "
            f"{dataset.input_dir.path or dataset.input_dir.url!r}: choose a batch size divisible by {g}, or write the "
            "stream with a group size that divides the batch size (FERDataModule(stream_group_size=...))"
        )
    return StreamingDataLoader(
        dataset, batch_size=batch_size // g, num_workers=num_workers, collate_fn=GroupCollate(collate_fn),
        persistent_workers=num_workers > 0,
    )
