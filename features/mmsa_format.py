"""CMU-MOSI / CMU-MOSEI processed-feature files (the MMSA file format): safe loading, validation, cleaning, npz.

Two on-disk schemas are read, detected from the keys of the ``train`` split:

* ``"mmsa"``: the MMSA processed-feature pickles (``aligned_50.pkl`` / ``unaligned_50.pkl``) published by the
  MMSA project (github.com/thuiar/MMSA, "Datasets" section of its README). Top level ``train`` / ``valid`` /
  ``test``, each a dict with ``raw_text``, ``id``, ``text`` ``[N, 50, 768]`` (BERT features), ``text_bert``
  ``[N, 3, 50]`` (token ids / attention mask / segment ids), ``audio`` ``[N, La, Da]``, ``vision``
  ``[N, Lv, Dv]``, ``regression_labels`` ``[N]`` in [-3, 3], in unaligned files also ``audio_lengths`` /
  ``vision_lengths``; extra keys (``classification_labels``, ``annotations``, ...) are ignored.
* ``"mult"``: the older MulT / CMU pickles (``mosi_data.pkl``, ``mosei_senti_data.pkl``): ``text`` (300-d GloVe),
  ``audio``, ``vision``, ``labels`` ``[N, 1, 1]`` and ``id`` (often ``[N, 3]`` byte strings, joined with ``_``).

Pickles are opened only with :class:`RestrictedUnpickler`, whose ``find_class`` admits the handful of numpy
globals needed to rebuild arrays, scalars and dtypes, plus plain builtin containers. Anything else (``os.system``,
``builtins.eval``, torch tensors, ...) is refused with :class:`MMSADataError` *before* it can run.
:func:`save_npz` / :func:`load_npz` give a pickle-free ``.npz`` form (``allow_pickle=False``) that round-trips a
file exactly; ``features/convert_mmsa.py`` is the one-command converter.

The feature store (``<name>.mmsa/``, :func:`save_store` / :func:`npz_to_store` / :func:`load_store`) is the form
made for training at cluster scale (MMSA's ``mosei/unaligned_50.pkl`` is 13.7 GB): a directory with one ``.npy``
file per array (``train/audio``, ``valid/id``, ...) and a JSON header (``header.json``: format, version, schema,
source, the key tree, per-array file / shape / dtype / sha256, the non-finite counts per split and modality, the
extractor header when there is one, ``"complete": true``). Why ``.npy`` opened with ``np.load(mmap_mode="r")``
rather than HDF5 or litdata chunks:

* every DDP rank (and DataLoader worker) of a node maps the same files read-only, so the kernel keeps **one**
  copy in its page cache, counted once (PSS), and a rank's private memory holds only the batch being gathered;
  h5py reads through its own chunk cache into private buffers (one copy per process) and its file handles do not
  survive ``fork`` safely; litdata's chunks are made for streaming from object stores and would re-encode every
  sample (the converter could no longer prove the output byte-equal to the input);
* ``.npy`` is numpy's own format (no new dependency, readable without this project: ``np.load(f, mmap_mode="r")``),
  one array per file, so an array is written and verified by streaming its bytes, chunk by chunk;
* opening is instant: the header is read, big arrays are mapped, and only the small ones (labels, lengths, token
  ids, ids; arrays under ``MMAP_MIN_BYTES``) are read into memory; a sample is sliced when the loader asks for it.

Writing is streaming (:class:`StoreWriter`: one array at a time, :data:`CHUNK_BYTES` per write) into a hidden
temporary directory next to the target; every array's bytes are hashed while written and re-read from disk and
compared before the header is written, **last**, with ``"complete": true``, and the directory renamed onto the
target. A killed writer leaves only the hidden ``.<name>.<random>.tmp`` directory, which never opens as a store.
The NaN/inf counts the in-memory loader computes are computed while writing (chunk by chunk, on the float32 values
the loader would clean) and kept in the header; :func:`load_mmsa` logs them like the in-memory path, and
:class:`datamodules.datasets.mmsa_dataset.MMSADataset` cleans NaN/inf to 0 in each gathered batch of a split and
modality whose count is not 0, so the batches equal the in-memory path's.

:func:`load_mmsa` validates a file (splits, keys, shapes, dims, lengths, labels), cleans NaN/inf to 0 with
logged counts, builds masks and converts everything once to float32/int64/bool tensors.
:class:`datamodules.datasets.mmsa_dataset.MMSADataset` serves them as batches (``docs/architecture.md``,
"Multimodal sentiment").
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from common import MODALITIES
from common.io import atomic_write
from common.splits import SplitContentWarning, warn_split_content

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

__all__ = [
    "CHUNK_BYTES",
    "FILE_SPLITS",
    "LABEL_RANGE",
    "MODALITIES",
    "STANDARD_SPLIT_SIZES",
    "STORE_SUFFIX",
    "ArrayStream",
    "MMSAData",
    "MMSADataError",
    "MMSASplit",
    "RestrictedUnpickler",
    "SplitContentWarning",
    "SplitSizeWarning",
    "StoreWriter",
    "check_feature_path",
    "count_nonfinite",
    "detect_schema",
    "is_store_path",
    "load_feature_file",
    "load_mmsa",
    "load_npz",
    "load_store",
    "missing_file_message",
    "npz_to_store",
    "open_store",
    "restricted_pickle_load",
    "save_npz",
    "save_store",
    "validate_mmsa",
    "verify_store",
    "warn_split_content",
]

log = logging.getLogger(__name__)

#: Split keys as the MMSA files store them ("valid", MMSA's spelling); the datamodule serves "valid" as
#: Lightning's "val" stage (datamodules.datasets.images.SPLITS names the stages of the face pipeline).
FILE_SPLITS: tuple[str, str, str] = ("train", "valid", "test")
LABEL_RANGE: tuple[float, float] = (-3.0, 3.0)

#: Standard split sizes (train, valid, test) per schema and dataset.
STANDARD_SPLIT_SIZES: dict[str, dict[str, tuple[int, int, int]]] = {
    "mmsa": {"mosi": (1284, 229, 686), "mosei": (16326, 1871, 4659)},
    "mult": {"mosi": (1284, 229, 686), "mosei": (16265, 1869, 4643)},
}

NPZ_HEADER_KEY = "__mmsa_header__"
NPZ_FORMAT = "affect-mmsa-npz"
NPZ_VERSION = 1

STORE_SUFFIX = ".mmsa"
STORE_FORMAT = "affect-mmsa-store"
STORE_VERSION = 1
STORE_HEADER = "header.json"
#: bytes per read / write / hash / count step of the streaming code (the converter's working memory is a few chunks).
CHUNK_BYTES = 32 * 2**20
#: arrays of a store smaller than this are read into memory when it is opened; larger ones are memory-mapped.
MMAP_MIN_BYTES = 2**20

_LABEL_KEYS = {"mmsa": "regression_labels", "mult": "labels"}


class MMSADataError(ValueError):
    """A feature file is missing, unreadable, unsafe or does not follow the MMSA / MulT schema."""


class SplitSizeWarning(UserWarning):
    """Split sizes differ from the standard ones of the named dataset."""


def missing_file_message(path: str | os.PathLike) -> str:
    """Explain where a missing MOSI/MOSEI feature file must go and where to get it."""
    p = Path(path)
    return (
        f"{p}: feature file not found (resolved to {p.expanduser().resolve()}). Put the processed CMU-MOSI / "
        "CMU-MOSEI feature file there, e.g. data/mosi/aligned_50.pkl, data/mosi/unaligned_50.pkl, "
        "data/mosei/aligned_50.pkl or data/mosei/unaligned_50.pkl relative to the project root. The MMSA "
        "project (github.com/thuiar/MMSA, 'Datasets' section of its README) publishes these processed feature "
        "files; the older MulT pickles (mosi_data.pkl, mosei_senti_data.pkl) are read as well. A pickle-free "
        "copy can be made with `python -m features.convert_mmsa SRC.pkl DST.npz`, and the memory-mapped store "
        "for large files (MOSEI, DDP) with `python -m features.convert_mmsa SRC.pkl DST.mmsa`; to try the pipeline "
        "without the real files, generate a synthetic one with `python -m features.synthetic_mmsa --out "
        "data/generated/mosi_aligned.pkl`."
    )


def is_store_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a feature store (its name ends in :data:`STORE_SUFFIX`, ``.mmsa``)."""
    return Path(path).suffix == STORE_SUFFIX


def check_feature_path(path: str | os.PathLike) -> Path:
    """Check that ``path`` is a feature file (``.pkl`` / ``.npz``) or a complete feature store, without reading it.

    Raises:
        MMSADataError: missing path (with where to get the files), a directory that is not a store, a store that is
            a plain file or has no header (an interrupted or running conversion).
    """
    p = Path(path)
    if not p.exists():
        raise MMSADataError(missing_file_message(p))
    if is_store_path(p):
        if not p.is_dir():
            raise MMSADataError(f"{p}: a feature store ('{STORE_SUFFIX}') is a directory, but this is a file; "
                                "rename it if it is a .pkl / .npz feature file.")
        if not (p / STORE_HEADER).is_file():
            raise MMSADataError(f"{p}: incomplete feature store: it has no {STORE_HEADER} (written last; was its "
                                "conversion interrupted?). Convert the source again with --overwrite.")
        return p
    if p.is_dir():
        found = sorted(q.name for q in p.iterdir() if q.suffix in (".pkl", ".npz", STORE_SUFFIX)
                       and not q.name.startswith("."))
        hint = f" It holds {found[:6]}." if found else ""
        raise MMSADataError(f"{p}: is a directory, not a feature file: give the .pkl / .npz feature file inside it, "
                            f"or a feature store, a directory whose name ends in '{STORE_SUFFIX}'.{hint}")
    return p


# --------------------------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------------------------
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    # numpy arrays, scalars and dtypes (numpy 1.x and 2.x module paths; protocol 5 uses _frombuffer)
    ("numpy.core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _np_multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _np_multiarray.scalar,
    ("numpy.core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _np_numeric._frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # protocol <= 2 pickles store bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): __import__("_codecs").encode,
    # plain containers and literals
    ("collections", "OrderedDict"): OrderedDict,
}
for _name in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float", "complex",
              "bool"):
    _ALLOWED_GLOBALS[("builtins", _name)] = getattr(__import__("builtins"), _name)
    _ALLOWED_GLOBALS[("__builtin__", _name)] = getattr(__import__("builtins"), _name)  # Python 2 pickles


class RestrictedUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that only rebuilds numpy arrays/scalars/dtypes and plain containers.

    Every global a pickle refers to passes through :meth:`find_class`; anything outside the allow-list raises
    :class:`MMSADataError` naming the file and ``module.name`` before the global is even imported, so nothing
    it would call can run. Persistent ids are refused as well.

    Args:
        file: binary file object to read.
        source: file name used in error messages.
    """

    def __init__(self, file: io.BufferedIOBase, *, source: str | os.PathLike) -> None:
        # latin1 lets numpy arrays from Python 2 pickles (MulT era) load; Python 3 pickles are unaffected.
        super().__init__(file, encoding="latin1")
        self.source = str(source)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise MMSADataError(
                f"{self.source}: refusing to unpickle forbidden global '{module}.{name}': only numpy arrays, "
                "scalars, dtypes and plain containers are allowed in a feature file (the file may be malicious, "
                "or hold objects such as torch tensors; re-save it with plain numpy arrays)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise MMSADataError(f"{self.source}: refusing to unpickle a persistent id ({pid!r}).")


def restricted_pickle_load(path: str | os.PathLike) -> Any:
    """Load a pickle with :class:`RestrictedUnpickler`.

    Raises:
        MMSADataError: missing file, forbidden global, or not a (complete) pickle.
    """
    path = check_feature_path(path)
    try:
        with path.open("rb") as f:
            return RestrictedUnpickler(f, source=path).load()
    except MMSADataError:
        raise
    except Exception as err:  # EOFError, UnpicklingError, ValueError, ... from corrupt/truncated data
        raise MMSADataError(
            f"{path}: not a readable pickle (truncated or corrupted file?): {type(err).__name__}: {err}"
        ) from err


# --------------------------------------------------------------------------------------------------------------
# Pickle-free .npz form
# --------------------------------------------------------------------------------------------------------------
class ArrayStream:
    """An array written without ever being held whole: its shape, its dtype and a function giving its C-order
    values in chunks of whole samples (rows of the first axis), e.g. padded rows read from a cache one chunk at a
    time (``features.extract`` assembles MOSEI-sized files so).

    :func:`save_store` and :func:`save_npz` accept it wherever a numeric array may stand in the tree and write it
    chunk by chunk (:meth:`StoreWriter.add`; a ``.npz`` member likewise); the output is byte-equal to that of the
    array it stands for. ``chunks`` is called once per write.

    Args:
        shape: the array's shape.
        dtype: its dtype (no object dtype).
        chunks: returns the chunks, in order: arrays of ``dtype`` (any shape) holding whole samples.

    Raises:
        ValueError: object dtype.
    """

    def __init__(self, shape: Iterable[int], dtype: np.dtype | str,
                 chunks: Callable[[], Iterable[np.ndarray]]) -> None:
        self.shape, self.dtype, self._chunks = tuple(int(d) for d in shape), np.dtype(dtype), chunks
        if self.dtype.hasobject:
            raise ValueError("ArrayStream: object dtype cannot be streamed; give such arrays in memory")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"ArrayStream(shape={self.shape}, dtype={self.dtype})"

    def chunks(self) -> Iterator[np.ndarray]:
        """The chunks as contiguous arrays of :attr:`dtype` (a chunk of another dtype is refused, not cast)."""
        for chunk in self._chunks():
            chunk = np.asarray(chunk)
            if chunk.dtype != self.dtype:
                raise ValueError(f"ArrayStream: a chunk of dtype {chunk.dtype} in a stream of {self.dtype}")
            yield np.ascontiguousarray(chunk)
            chunk = None  # not kept while the next one is made

    def materialise(self) -> np.ndarray:
        """The whole array in memory (for the pickle form, which cannot be streamed)."""
        out = np.empty(self.shape, self.dtype)
        flat, pos = out.reshape(-1), 0
        for chunk in self.chunks():
            if pos + chunk.size > flat.size:
                raise ValueError(f"ArrayStream: more values than its shape {list(self.shape)} holds")
            flat[pos:pos + chunk.size] = chunk.reshape(-1)
            pos += chunk.size
        if pos != flat.size:
            raise ValueError(f"ArrayStream: {pos} values, its shape {list(self.shape)} holds {flat.size}")
        return out


def _write_npy_stream(f: io.BufferedIOBase, stream: ArrayStream) -> None:
    """Write ``stream`` as a ``.npy`` (the bytes ``np.lib.format.write_array`` writes for the whole array)."""
    header = {"descr": np.lib.format.dtype_to_descr(stream.dtype), "fortran_order": False, "shape": stream.shape}
    try:
        np.lib.format.write_array_header_1_0(f, header)
    except ValueError:  # header longer than 64 KiB
        np.lib.format.write_array_header_2_0(f, header)
    written = 0
    for chunk in stream.chunks():
        view = memoryview(chunk).cast("B")
        written += len(view)
        if written > stream.nbytes:
            raise MMSADataError(f"{stream}: more data than its shape holds")
        f.write(view)
        chunk = view = None  # not kept while the next one is made
    if written != stream.nbytes:
        raise MMSADataError(f"{stream}: {written} bytes of data, expected {stream.nbytes}")


def _flatten(obj: Any, prefix: str, arrays: dict[str, np.ndarray | ArrayStream], source: str) -> Any:
    """Return the header tree node for ``obj`` and put its arrays into ``arrays``."""
    if isinstance(obj, Mapping):
        node: dict[str, Any] = {}
        for key, value in obj.items():
            if not isinstance(key, str) or "/" in key or key == NPZ_HEADER_KEY:
                raise MMSADataError(f"{source}: key {key!r} under '{prefix or '/'}' cannot be stored in .npz "
                                    "(keys must be strings without '/').")
            node[key] = _flatten(value, f"{prefix}/{key}" if prefix else key, arrays, source)
        return {"kind": "dict", "ordered": isinstance(obj, OrderedDict), "items": node}
    if obj is None:
        return {"kind": "none"}
    if isinstance(obj, ArrayStream):
        arrays[prefix] = obj
        return {"kind": "ndarray"}
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind != "O":
            arrays[prefix] = obj
            return {"kind": "ndarray"}
        flat = obj.ravel().tolist()
        if all(isinstance(x, str) for x in flat):
            arrays[prefix] = obj.astype(str) if obj.size else np.zeros(obj.shape, dtype="U1")
            return {"kind": "object_str"}
        if all(isinstance(x, bytes) for x in flat):
            arrays[prefix] = obj.astype(bytes) if obj.size else np.zeros(obj.shape, dtype="S1")
            return {"kind": "object_bytes"}
        raise MMSADataError(f"{source}: '{prefix}' is an object array holding non-string values; it cannot be "
                            "stored without pickle.")
    if isinstance(obj, np.generic):
        arrays[prefix] = np.asarray(obj)
        return {"kind": "npscalar"}
    if isinstance(obj, (bool, int, float, complex, str, bytes)):
        arrays[prefix] = np.asarray(obj)
        return {"kind": "scalar", "type": type(obj).__name__}
    if isinstance(obj, (list, tuple)):
        kind = type(obj).__name__
        if all(isinstance(x, str) for x in obj) or all(isinstance(x, bytes) for x in obj):
            arrays[prefix] = np.asarray(obj) if len(obj) else np.zeros(0, dtype="U1")
            return {"kind": kind, "elem": "str" if obj and isinstance(obj[0], str) else "bytes"}
        if all(isinstance(x, (bool, int, float)) and not isinstance(x, np.generic) for x in obj):
            types = sorted({type(x).__name__ for x in obj})
            if len(types) <= 1:
                arrays[prefix] = np.asarray(obj)
                return {"kind": kind, "elem": types[0] if types else "float"}
        # a list of arrays / mixed values: store element-wise
        items = [_flatten(x, f"{prefix}/{i}", arrays, source) for i, x in enumerate(obj)]
        return {"kind": kind + "_items", "items": items}
    raise MMSADataError(f"{source}: '{prefix}' has type {type(obj).__name__}, which cannot be stored in .npz.")


def _unflatten(node: Mapping[str, Any], prefix: str, npz: Mapping[str, np.ndarray]) -> Any:
    kind = node["kind"]
    if kind == "dict":
        out = OrderedDict() if node.get("ordered") else {}
        for key, child in node["items"].items():
            out[key] = _unflatten(child, f"{prefix}/{key}" if prefix else key, npz)
        return out
    if kind == "none":
        return None
    if kind in ("list_items", "tuple_items"):
        items = [_unflatten(child, f"{prefix}/{i}", npz) for i, child in enumerate(node["items"])]
        return items if kind == "list_items" else tuple(items)
    arr = npz[prefix]
    if kind == "ndarray":
        return arr
    if kind in ("object_str", "object_bytes"):
        return arr.astype(object)
    if kind == "npscalar":
        return arr[()]
    if kind == "scalar":
        return {"bool": bool, "int": int, "float": float, "complex": complex, "str": str, "bytes": bytes}[
            node["type"]](arr[()])
    if kind in ("list", "tuple"):
        values = arr.tolist()
        elem = node.get("elem")
        if elem in ("bool", "int", "float"):
            cast = {"bool": bool, "int": int, "float": float}[elem]
            values = [cast(v) for v in values]
        return values if kind == "list" else tuple(values)
    raise MMSADataError(f"unknown entry kind {kind!r} for '{prefix}' in .npz header")


def _savez_deterministic(f: io.BufferedIOBase, arrays: Mapping[str, np.ndarray | ArrayStream]) -> None:
    """``np.savez`` (uncompressed, no pickle) with a fixed zip timestamp, so equal data give equal bytes; an
    :class:`ArrayStream` is written chunk by chunk."""
    import zipfile

    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as fid:
                if isinstance(value, ArrayStream):
                    _write_npy_stream(fid, value)
                else:
                    np.lib.format.write_array(fid, np.asanyarray(value), allow_pickle=False)


def save_npz(data: Mapping[str, Any], path: str | os.PathLike, *, source: str | None = None,
             schema: str | None = None) -> Path:
    """Write ``data`` (a nested dict as loaded from a feature pickle) to a pickle-free ``.npz``, atomically.

    Arrays are stored under ``"split/key"`` names; strings become fixed-width unicode (or bytes) arrays; a JSON
    header (array ``__mmsa_header__``) records the tree, so :func:`load_npz` restores dtypes, shapes, object-string
    arrays, lists and scalars exactly. An :class:`ArrayStream` is written chunk by chunk, as the array it stands for.

    Args:
        data: nested mapping of numpy arrays (or :class:`ArrayStream`), strings, lists and scalars.
        path: destination ``.npz``; the file appears only once complete (temporary file + rename).
        source: original file name, recorded in the header.
        schema: ``"mmsa"`` or ``"mult"``, recorded in the header (detected when ``None``).

    Returns:
        The written path.
    """
    path = Path(path)
    src = source or str(path)
    arrays: dict[str, np.ndarray | ArrayStream] = {}
    tree = _flatten(data, "", arrays, src)
    if schema is None:
        try:
            schema = detect_schema(data, src)
        except MMSADataError:
            schema = "unknown"
    header = {"format": NPZ_FORMAT, "version": NPZ_VERSION, "schema": schema, "source": Path(src).name,
              "tree": tree}
    arrays[NPZ_HEADER_KEY] = np.asarray(json.dumps(header))
    with atomic_write(path) as f:
        _savez_deterministic(f, arrays)
    return path


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Load a file written by :func:`save_npz` (``allow_pickle=False``) back into the nested dict.

    A plain ``.npz`` without header is accepted when its keys look like ``"split/key"``.
    """
    path = check_feature_path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as err:
        raise MMSADataError(f"{path}: not a readable pickle-free .npz feature file: {type(err).__name__}: {err}"
                            ) from err
    if NPZ_HEADER_KEY not in arrays:
        out: dict[str, Any] = {}
        for key, arr in arrays.items():
            parts = key.split("/")
            if len(parts) != 2:
                raise MMSADataError(f"{path}: .npz without '{NPZ_HEADER_KEY}' must use 'split/key' names, "
                                    f"found '{key}'.")
            out.setdefault(parts[0], {})[parts[1]] = arr
        return out
    try:
        header = json.loads(str(arrays[NPZ_HEADER_KEY][()]))
        if header.get("format") != NPZ_FORMAT:
            raise ValueError(f"format is {header.get('format')!r}, expected {NPZ_FORMAT!r}")
        return _unflatten(header["tree"], "", arrays)
    except MMSADataError:
        raise
    except Exception as err:
        raise MMSADataError(f"{path}: invalid .npz header or entries: {type(err).__name__}: {err}") from err


def load_feature_file(path: str | os.PathLike) -> dict[str, Any]:
    """Load a feature file as a nested dict: restricted pickle, the pickle-free ``.npz`` form, or a feature store.

    The file format is recognised from the content (a zip archive is ``.npz``), not only the suffix; a store (a
    ``.mmsa`` directory) gives memory-mapped arrays for its big entries (:func:`load_store`).
    """
    path = check_feature_path(path)
    if is_store_path(path):
        return load_store(path)
    with path.open("rb") as f:
        magic = f.read(4)
    data = load_npz(path) if magic.startswith(b"PK") else restricted_pickle_load(path)
    if not isinstance(data, Mapping):
        raise MMSADataError(f"{path}: top level is a {type(data).__name__}, expected a dict with splits "
                            f"{list(FILE_SPLITS)}.")
    return data


# --------------------------------------------------------------------------------------------------------------
# Memory-mapped feature store (<name>.mmsa/: one .npy per array + header.json)
# --------------------------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_exact(f: io.BufferedIOBase, n: int) -> bytes:
    """Read exactly ``n`` bytes (fewer only at the end of the stream)."""
    parts, left = [], n
    while left:
        b = f.read(left)
        if not b:
            break
        parts.append(b)
        left -= len(b)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _nonfinite_in(values: np.ndarray) -> int:
    """NaN/inf count of ``values`` as the float32 the loader makes of them (float64 beyond float32 range is inf)."""
    if values.dtype.kind != "f":
        return 0
    v = values if values.dtype == np.float32 else values.astype(np.float32)
    return int(v.size - np.count_nonzero(np.isfinite(v)))


def _array_chunks(arr: np.ndarray) -> tuple[bool, Iterator[np.ndarray]]:
    """``(fortran_order, chunks)``: the bytes of ``arr`` in ``.npy`` order as contiguous pieces of about
    :data:`CHUNK_BYTES` (whole elements; no copy of a contiguous array)."""
    fortran = bool(arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous)
    flat = arr.T if fortran else arr

    def chunks() -> Iterator[np.ndarray]:
        if flat.ndim == 0 or flat.shape[0] == 0:
            yield np.ascontiguousarray(flat).reshape(-1)
            return
        row_bytes = max(1, flat[0].nbytes)
        rows = max(1, CHUNK_BYTES // row_bytes)
        for i in range(0, flat.shape[0], rows):
            yield np.ascontiguousarray(flat[i:i + rows]).reshape(-1)

    return fortran, chunks()


def _is_feature_entry(name: str) -> tuple[str, str] | None:
    parts = name.split("/")
    if len(parts) == 2 and parts[0] in FILE_SPLITS and parts[1] in MODALITIES:
        return parts[0], parts[1]
    return None


def _tree_arrays(node: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Names of the arrays a header tree refers to, in order."""
    kind = node["kind"]
    if kind == "dict":
        return [n for key, child in node["items"].items()
                for n in _tree_arrays(child, f"{prefix}/{key}" if prefix else key)]
    if kind in ("list_items", "tuple_items"):
        return [n for i, child in enumerate(node["items"]) for n in _tree_arrays(child, f"{prefix}/{i}")]
    if kind == "none":
        return []
    return [prefix]


class StoreWriter:
    """Write a feature store array by array, streaming, into a hidden temporary directory; :meth:`commit` verifies
    it, writes ``header.json`` last (``"complete": true``) and renames the directory onto the target.

    Use as a context manager: leaving it without :meth:`commit` (an error, ``KeyboardInterrupt``) removes the
    temporary directory; a killed process leaves it behind as ``.<name>.<random>.tmp``, which never opens as a store.

    Args:
        path: the store, a directory whose name ends in ``.mmsa``.
        overwrite: replace an existing store (only a store: anything else at ``path`` is never replaced).

    Raises:
        ValueError: ``path`` does not end in ``.mmsa``.
        FileExistsError: ``path`` exists and ``overwrite`` is False, or it exists and is not a store.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        if not is_store_path(self.path):
            raise ValueError(f"StoreWriter: a feature store's name must end in '{STORE_SUFFIX}', got {self.path}")
        if self.path.exists() or self.path.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{self.path}: already exists; pass --overwrite (overwrite=True) to replace it")
            if not (self.path.is_dir() and (self.path / STORE_HEADER).is_file()):
                raise FileExistsError(f"{self.path}: exists and is not a feature store (no {STORE_HEADER}); "
                                      "refusing to replace it: move it away first")
        self.tmp: Path | None = None
        self.arrays: dict[str, dict[str, Any]] = {}
        self.nonfinite: dict[str, dict[str, int]] = {}
        self.nonfinite_rows: dict[str, dict[str, list[int] | None]] = {}

    def __enter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def add(self, name: str, shape: Iterable[int], dtype: np.dtype | str, chunks: Iterable[Any], *,
            fortran_order: bool = False, source: str = "") -> dict[str, Any]:
        """Write one array from its ``.npy``-order bytes, given in chunks of whole elements.

        The bytes are hashed (sha256) and, for the ``text`` / ``audio`` / ``vision`` arrays of a split, their
        NaN/inf values counted while written; the count of bytes must match ``shape`` and ``dtype``.

        Args:
            name: ``"split/key"`` (the tree's array name).
            shape: array shape.
            dtype: array dtype (no object dtype).
            chunks: buffers (contiguous arrays or bytes) in order.
            fortran_order: the bytes are in Fortran order.
            source: named in errors.

        Returns:
            The header entry of the array.
        """
        if self.tmp is None:
            raise RuntimeError("StoreWriter.add: use the writer as a context manager")
        dtype, shape = np.dtype(dtype), tuple(int(d) for d in shape)
        where = f"{source or self.path}: '{name}'"
        if dtype.hasobject:
            raise MMSADataError(f"{where} has object dtype; a feature store holds plain arrays only.")
        if name in self.arrays:
            raise MMSADataError(f"{where} is written twice.")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name.replace("/", "."))
        file = f"{len(self.arrays):04d}_{safe}.npy"
        expected = math.prod(shape) * dtype.itemsize
        feature = _is_feature_entry(name)
        digest, written, bad = hashlib.sha256(), 0, 0
        # samples holding NaN/inf (known when chunks hold whole C-order samples), so readers clean only those
        row_elems = math.prod(shape[1:]) if len(shape) > 1 and not fortran_order else 0
        bad_rows: list[int] | None = [] if row_elems else None
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": shape}
        with open(self.tmp / file, "wb") as f:
            try:
                np.lib.format.write_array_header_1_0(f, header)
            except ValueError:  # header longer than 64 KiB
                np.lib.format.write_array_header_2_0(f, header)
            for chunk in chunks:
                view = memoryview(chunk).cast("B")
                if written + len(view) > expected:
                    raise MMSADataError(f"{where}: more data than its shape {list(shape)} and dtype {dtype} hold.")
                f.write(view)
                digest.update(view)
                if feature is not None:
                    values = np.frombuffer(view, dtype=dtype)
                    n_bad = _nonfinite_in(values)
                    bad += n_bad
                    first_elem = written // dtype.itemsize
                    if bad_rows is not None and (values.size % row_elems or first_elem % row_elems):
                        bad_rows = None  # chunk not made of whole samples: readers clean every batch
                    elif bad_rows is not None and n_bad:
                        v = values.reshape(-1, row_elems)
                        v = v if v.dtype == np.float32 else v.astype(np.float32)
                        rows = np.flatnonzero(~np.isfinite(v).all(axis=1)) + first_elem // row_elems
                        bad_rows.extend(rows.tolist())
                written += len(view)
                chunk = view = values = v = None  # freed before the next chunk is made (a stream's are new arrays)
            if written != expected:
                raise MMSADataError(f"{where}: {written} bytes of data, expected {expected} for shape {list(shape)} "
                                    f"and dtype {dtype} (truncated source?).")
            f.flush()
            os.fsync(f.fileno())
        entry = {"file": file, "shape": list(shape), "dtype": np.lib.format.dtype_to_descr(dtype),
                 "fortran_order": fortran_order, "nbytes": expected, "sha256": digest.hexdigest()}
        self.arrays[name] = entry
        if feature is not None:
            self.nonfinite.setdefault(feature[0], {})[feature[1]] = bad
            self.nonfinite_rows.setdefault(feature[0], {})[feature[1]] = bad_rows
        return entry

    def add_array(self, name: str, arr: np.ndarray, *, source: str = "") -> dict[str, Any]:
        """Write an in-memory array (streamed from its buffer in chunks; no copy when it is contiguous)."""
        fortran, chunks = _array_chunks(arr)
        return self.add(name, arr.shape, arr.dtype, chunks, fortran_order=fortran, source=source)

    def commit(self, meta: Mapping[str, Any], *,
               check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> Path:
        """Verify the written arrays, run ``check``, write the header last and move the store into place.

        Args:
            meta: header fields (``schema``, ``source``, ``tree``, optional ``extractor``).
            check: called with ``(tree, header)`` of the store as it will open (arrays memory-mapped from the
                temporary directory) before anything is moved; it raises to abort.

        Returns:
            The store's path.
        """
        if self.tmp is None:
            raise RuntimeError("StoreWriter.commit: use the writer as a context manager")
        header = {"format": STORE_FORMAT, "version": STORE_VERSION, **meta, "arrays": self.arrays,
                  "nonfinite": self.nonfinite, "nonfinite_rows": self.nonfinite_rows}
        missing = sorted(set(_tree_arrays(header["tree"])) - set(self.arrays))
        if missing:
            raise MMSADataError(f"{self.path}: the key tree names arrays that were not written: {missing[:5]}")
        verify_store(self.tmp, header, where=str(self.path))
        if check is not None:
            check(_unflatten(header["tree"], "", _StoreArrays(self.tmp, header)), header)
        header["complete"] = True
        with atomic_write(self.tmp / STORE_HEADER, "w") as f:
            json.dump(header, f, indent=1)
        _fsync_dir(self.tmp)
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old", dir=self.path.parent))
            os.replace(self.path, old / self.path.name)
        os.rename(self.tmp, self.path)
        self.tmp = None
        _fsync_dir(self.path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.path


def verify_store(path: str | os.PathLike, header: Mapping[str, Any] | None = None, *, where: str = "") -> None:
    """Re-read every array of a store from disk (plain reads, chunk by chunk) and check its ``.npy`` header and
    sha256 against the store's header.

    Raises:
        MMSADataError: an array differs from what was written (naming the store and the array).
    """
    path = Path(path)
    if header is None:
        header = _read_store_header(path)
    where = where or str(path)
    view = memoryview(bytearray(CHUNK_BYTES))
    for name, entry in header["arrays"].items():
        file = path / entry["file"]
        digest = hashlib.sha256()
        try:
            with open(file, "rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f".npy version {version} is not written by this project")
                shape, fortran, dtype = read_header(f)
                if (list(shape), bool(fortran), np.lib.format.dtype_to_descr(dtype)) != (
                        list(entry["shape"]), bool(entry["fortran_order"]), _descr(entry["dtype"])):
                    raise ValueError(f"its .npy header says {dtype}{list(shape)}, the store's header "
                                     f"{entry['dtype']}{entry['shape']}")
                size = 0
                while n := f.readinto(view):  # one reused buffer: a chunk of memory, not two
                    digest.update(view[:n])
                    size += n
        except (OSError, ValueError) as err:
            raise MMSADataError(f"{where}: array '{name}' ({entry['file']}) cannot be verified: {err}") from err
        if size != entry["nbytes"] or digest.hexdigest() != entry["sha256"]:
            raise MMSADataError(f"{where}: array '{name}' ({entry['file']}) differs from what was written "
                                f"({size} of {entry['nbytes']} bytes, sha256 mismatch); nothing was kept.")


def _descr(descr: Any) -> Any:
    """The header's JSON dtype description back in ``dtype_to_descr`` form (JSON turns tuples into lists)."""
    if isinstance(descr, list):
        return [tuple(_descr(x) for x in field) for field in descr]
    return descr


class _StoreArrays(Mapping):
    """The arrays of a store by name, opened on access: memory-mapped read-only from :data:`MMAP_MIN_BYTES` on."""

    def __init__(self, path: Path, header: Mapping[str, Any]) -> None:
        self.path, self.entries = path, header["arrays"]

    def __getitem__(self, name: str) -> np.ndarray:
        entry = self.entries.get(name)
        if entry is None:
            raise MMSADataError(f"{self.path}: the header names no array '{name}'.")
        file = self.path / entry["file"]
        mmap = "r" if entry["nbytes"] >= MMAP_MIN_BYTES else None
        try:
            arr = np.load(file, mmap_mode=mmap, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise MMSADataError(f"{self.path}: array '{name}' ({entry['file']}) cannot be read: {err}") from err
        if list(arr.shape) != list(entry["shape"]) or np.lib.format.dtype_to_descr(arr.dtype) != _descr(entry["dtype"]):
            raise MMSADataError(f"{self.path}: array '{name}' ({entry['file']}) is {arr.dtype}{list(arr.shape)}, "
                                f"the header says {entry['dtype']}{entry['shape']} (file replaced?).")
        return arr

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


def _read_store_header(path: Path) -> dict[str, Any]:
    path = check_feature_path(path) if is_store_path(path) else path
    try:
        header = json.loads((path / STORE_HEADER).read_text())
        if header.get("format") != STORE_FORMAT:
            raise ValueError(f"format is {header.get('format')!r}, expected {STORE_FORMAT!r}")
        if header.get("version") != STORE_VERSION:
            raise ValueError(f"version {header.get('version')!r}; this code reads version {STORE_VERSION}")
        for key in ("tree", "arrays", "nonfinite"):
            if key not in header:
                raise ValueError(f"no '{key}' entry")
    except (OSError, ValueError) as err:
        raise MMSADataError(f"{path}: invalid feature store header {STORE_HEADER}: {type(err).__name__}: {err}"
                            ) from err
    if header.get("complete") is not True and is_store_path(path):
        raise MMSADataError(f"{path}: incomplete feature store (its header is not marked complete); convert the "
                            "source again with --overwrite.")
    return header


def open_store(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """Open a feature store: ``(tree, header)``, the tree as :func:`load_npz` gives it with the big arrays
    memory-mapped read-only (``np.memmap``; pages shared by every process that maps them) and the small ones read.

    Raises:
        MMSADataError: not a complete store, or an array that does not match the header.
    """
    path = Path(path)
    header = _read_store_header(path)
    try:
        tree = _unflatten(header["tree"], "", _StoreArrays(path, header))
    except MMSADataError:
        raise
    except Exception as err:
        raise MMSADataError(f"{path}: invalid key tree in {STORE_HEADER}: {type(err).__name__}: {err}") from err
    if not isinstance(tree, dict):
        raise MMSADataError(f"{path}: top level is a {type(tree).__name__}, expected a dict with splits "
                            f"{list(FILE_SPLITS)}.")
    return tree, header


def load_store(path: str | os.PathLike) -> dict[str, Any]:
    """The nested dict of a feature store (:func:`open_store` without the header)."""
    return open_store(path)[0]


def _store_meta(data: Mapping[str, Any], tree: dict[str, Any], source: str, schema: str | None) -> dict[str, Any]:
    if schema is None:
        try:
            schema = detect_schema(data, source)
        except MMSADataError:
            schema = "unknown"
    meta: dict[str, Any] = {"schema": schema, "source": Path(source).name, "tree": tree}
    extractor = _extractor_header(data.get("extractor"))
    if extractor is not None:
        meta["extractor"] = extractor
    return meta


def _extractor_header(value: Any) -> dict[str, Any] | None:
    """The ``extractor`` entry of a file written by ``features.extract`` (a JSON string), parsed; else ``None``."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if not isinstance(value, (str, np.str_)):
        return None
    try:
        parsed = json.loads(str(value))
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def save_store(data: Mapping[str, Any], path: str | os.PathLike, *, source: str | None = None,
               schema: str | None = None, overwrite: bool = False,
               check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> Path:
    """Write ``data`` (a nested dict as loaded from a feature file) as a feature store, array by array.

    The same tree as :func:`save_npz` (strings as fixed-width unicode / bytes arrays, lists and scalars restored
    exactly by :func:`load_store`). Each array is streamed from its own buffer (no copy of a contiguous array), an
    :class:`ArrayStream` from its chunks (never held whole), verified and the store moved into place only when complete (see :class:`StoreWriter`).

    Args:
        data: nested mapping of numpy arrays (or :class:`ArrayStream`), strings, lists and scalars.
        path: destination, a directory name ending in ``.mmsa``.
        source: original file name, recorded in the header.
        schema: ``"mmsa"`` or ``"mult"``, recorded in the header (detected when ``None``).
        overwrite: replace an existing store.
        check: extra verification before the store is moved into place (see :meth:`StoreWriter.commit`).

    Returns:
        The written path.
    """
    path = Path(path)
    src = source or str(path)
    arrays: dict[str, np.ndarray | ArrayStream] = {}
    tree = _flatten(data, "", arrays, src)
    meta = _store_meta(data, tree, src, schema)
    with StoreWriter(path, overwrite=overwrite) as writer:
        for name, arr in arrays.items():
            if isinstance(arr, ArrayStream):
                writer.add(name, arr.shape, arr.dtype, arr.chunks(), source=src)
            else:
                writer.add_array(name, arr, source=src)
        return writer.commit(meta, check=check)


def _npz_member_stream(zf: zipfile.ZipFile, name: str, source: str
                       ) -> tuple[tuple[int, ...], np.dtype, bool, Callable[[], Iterator[bytes]]]:
    """Shape, dtype, order and a chunk generator of the ``.npy`` member ``name`` of an open ``.npz``."""
    member = f"{name}.npy"
    try:
        f = zf.open(member)
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ValueError(f".npy version {version} is not supported")
        shape, fortran, dtype = read_header(f)
    except (KeyError, OSError, ValueError, zipfile.BadZipFile) as err:
        raise MMSADataError(f"{source}: member '{member}' cannot be read: {type(err).__name__}: {err}") from err
    if dtype.hasobject:
        f.close()
        raise MMSADataError(f"{source}: member '{member}' holds Python objects (pickled); not a pickle-free .npz.")
    total = math.prod(shape) * dtype.itemsize
    unit = dtype.itemsize * (math.prod(shape[1:]) if len(shape) > 1 else 1)  # whole samples per chunk if they fit
    if not 0 < unit <= CHUNK_BYTES:
        unit = dtype.itemsize
    step = max(unit, CHUNK_BYTES // unit * unit)

    def chunks() -> Iterator[bytes]:
        try:
            with f:
                left = total
                while left:
                    b = _read_exact(f, min(step, left))
                    if not b:
                        raise MMSADataError(f"{source}: member '{member}' is truncated ({total - left} of {total} "
                                            "data bytes).")
                    left -= len(b)
                    yield b
                if f.read(1):  # also makes zipfile check the member's CRC-32
                    raise MMSADataError(f"{source}: member '{member}' has data beyond its shape {list(shape)}.")
        except (OSError, zipfile.BadZipFile) as err:
            raise MMSADataError(f"{source}: member '{member}' is corrupt: {type(err).__name__}: {err}") from err

    return tuple(shape), dtype, bool(fortran), chunks


def npz_to_store(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False,
                 check: Callable[[dict[str, Any], dict[str, Any]], None] | None = None) -> Path:
    """Copy a pickle-free ``.npz`` (:func:`save_npz`'s form, or plain ``"split/key"`` members) into a feature store,
    streaming: each member is read from the zip archive chunk by chunk (its CRC-32 checked by ``zipfile``), hashed
    and written, so the working memory is a few :data:`CHUNK_BYTES`, whatever the file size.

    Args:
        src: the ``.npz``.
        dst: the store (``.mmsa``).
        overwrite: replace an existing store.
        check: extra verification before the store is moved into place (see :meth:`StoreWriter.commit`).

    Returns:
        The written path.

    Raises:
        MMSADataError: unreadable, corrupt or pickled members, or a header that does not match the members.
    """
    src, dst = check_feature_path(src), Path(dst)
    try:
        zf = zipfile.ZipFile(src)
    except (OSError, zipfile.BadZipFile) as err:
        raise MMSADataError(f"{src}: not a readable pickle-free .npz feature file: {type(err).__name__}: {err}"
                            ) from err
    with zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if NPZ_HEADER_KEY in names:
            try:
                with zf.open(f"{NPZ_HEADER_KEY}.npy") as f:
                    npz_header = json.loads(str(np.lib.format.read_array(f, allow_pickle=False)[()]))
            except (OSError, ValueError, zipfile.BadZipFile) as err:
                raise MMSADataError(f"{src}: invalid .npz header: {type(err).__name__}: {err}") from err
            if npz_header.get("format") != NPZ_FORMAT:
                raise MMSADataError(f"{src}: .npz header format is {npz_header.get('format')!r}, expected "
                                    f"{NPZ_FORMAT!r}")
            tree, schema = npz_header["tree"], npz_header.get("schema")
            source = npz_header.get("source") or src.name
        else:
            items: dict[str, Any] = {}
            for key in names:
                parts = key.split("/")
                if len(parts) != 2:
                    raise MMSADataError(f"{src}: .npz without '{NPZ_HEADER_KEY}' must use 'split/key' names, "
                                        f"found '{key}'.")
                items.setdefault(parts[0], {"kind": "dict", "ordered": False, "items": {}})["items"][parts[1]] = {
                    "kind": "ndarray"}
            tree, schema, source = {"kind": "dict", "ordered": False, "items": items}, None, src.name
        wanted = _tree_arrays(tree)
        with StoreWriter(dst, overwrite=overwrite) as writer:
            for name in wanted:
                shape, dtype, fortran, chunks = _npz_member_stream(zf, name, str(src))
                writer.add(name, shape, dtype, chunks(), fortran_order=fortran, source=str(src))
            if schema is None:
                labels = {k for k in tree["items"].get("train", {}).get("items", {})}
                schema = "mmsa" if "regression_labels" in labels else "mult" if "labels" in labels else "unknown"
            meta: dict[str, Any] = {"schema": schema, "source": source, "tree": tree}
            if tree["items"].get("extractor", {}).get("kind") == "scalar":
                written = np.load(writer.tmp / writer.arrays["extractor"]["file"], allow_pickle=False)
                extractor = _extractor_header(written)
                if extractor is not None:
                    meta["extractor"] = extractor
            return writer.commit(meta, check=check)


# --------------------------------------------------------------------------------------------------------------
# Validation and conversion to tensors
# --------------------------------------------------------------------------------------------------------------
def detect_schema(data: Mapping[str, Any], source: str | os.PathLike = "<data>") -> str:
    """Return ``"mmsa"`` (has ``regression_labels``) or ``"mult"`` (has ``labels``) from the train split."""
    train = data.get("train") if isinstance(data, Mapping) else None
    if not isinstance(train, Mapping):
        raise MMSADataError(f"{source}: missing split 'train' (top-level keys: {sorted(map(str, data))}).")
    if "regression_labels" in train:
        return "mmsa"
    if "labels" in train:
        return "mult"
    raise MMSADataError(f"{source}: split 'train' has no label key: expected 'regression_labels' (MMSA) or "
                        f"'labels' (MulT); keys are {sorted(map(str, train))}.")


@dataclass
class MMSASplit:
    """One split, validated and cleaned, as tensors.

    ``text`` / ``audio`` / ``vision`` are float32 tensors, cleaned, when the split was read into memory (``.pkl`` /
    ``.npz``), or the store's read-only memory-mapped arrays as stored (any float dtype, NaN/inf not cleaned):
    :class:`datamodules.datasets.mmsa_dataset.MMSADataset` slices, converts and cleans those per batch.
    ``nonfinite`` holds the NaN/inf count per modality (cleaned, or to be cleaned on read).

    Shapes:
        text: ``[N, Lt, Dt]`` float32; text_bert: ``[N, 3, Lt]`` int64 or ``None``;
        audio: ``[N, La, Da]`` float32; vision: ``[N, Lv, Dv]`` float32;
        text_mask / audio_mask / vision_mask: ``[N, L*]`` bool (True = valid step); label: ``[N]`` float32.
    """

    text: Tensor | np.ndarray
    audio: Tensor | np.ndarray
    vision: Tensor | np.ndarray
    text_mask: Tensor
    audio_mask: Tensor
    vision_mask: Tensor
    label: Tensor
    id: np.ndarray
    text_bert: Tensor | None = None
    raw_text: list[str] | None = None
    nonfinite: dict[str, int] = field(default_factory=dict)
    #: per memory-mapped modality, the indices of the samples holding NaN/inf (``None``: unknown, clean all)
    nonfinite_rows: dict[str, np.ndarray | None] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass
class MMSAData:
    """A loaded feature file: three :class:`MMSASplit` plus what the models need to know about it."""

    path: str
    schema: str
    aligned: bool
    splits: dict[str, MMSASplit]
    feature_dims: dict[str, int]
    seq_lens: dict[str, int]
    nonfinite_counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def split_sizes(self) -> dict[str, int]:
        return {name: len(split) for name, split in self.splits.items()}


def _as_array(value: Any, where: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except Exception as err:  # ragged lists etc.
        raise MMSADataError(f"{where}: cannot be read as an array: {err}") from err


def _decode_ids(raw: Any, n: int, where: str, split: str) -> np.ndarray:
    if raw is None:
        log.info("%s: no 'id' key, using '%s_<index>' ids", where, split)
        return np.array([f"{split}_{i}" for i in range(n)])
    arr = _as_array(raw, f"{where}/id")
    if arr.shape[:1] != (n,):
        raise MMSADataError(f"{where}/id: has {arr.shape[:1]} entries, expected {n} (one per sample).")
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8", errors="replace")
    elif arr.dtype.kind == "O":
        arr = np.array([x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.ravel()]
                       ).reshape(arr.shape)
    arr = arr.astype(str)
    if arr.ndim == 2:  # MulT: (video id, start, end) per sample -> "video_start_end"
        arr = np.array(["_".join(p for p in (s.strip() for s in row) if p) for row in arr.tolist()])
    elif arr.ndim != 1:
        raise MMSADataError(f"{where}/id: expected 1-D (or [N, k] MulT) ids, got shape {arr.shape}.")
    return arr


def _feature(value: Any, where: str, n: int | None) -> np.ndarray:
    arr = _as_array(value, where)
    if arr.ndim != 3:
        raise MMSADataError(f"{where}: expected a [N, L, D] array, got shape {arr.shape}.")
    if arr.dtype.kind not in "fiub":
        raise MMSADataError(f"{where}: expected numeric features, got dtype {arr.dtype}.")
    if n is not None and arr.shape[0] != n:
        raise MMSADataError(f"{where}: has {arr.shape[0]} samples, expected {n} like the labels.")
    return arr


def _row_chunks(arr: np.ndarray) -> Iterator[np.ndarray]:
    """Row slices of ``arr`` of about :data:`CHUNK_BYTES` each."""
    if arr.ndim == 0 or arr.shape[0] == 0:
        yield arr
        return
    rows = max(1, CHUNK_BYTES // max(1, arr[0].nbytes))
    for i in range(0, arr.shape[0], rows):
        yield arr[i:i + rows]


def count_nonfinite(arr: np.ndarray) -> int:
    """NaN/inf count of ``arr`` as float32, chunk by chunk (a memory-mapped array is read, never held whole)."""
    return sum(_nonfinite_in(np.asarray(chunk)) for chunk in _row_chunks(arr))


def _to_float_tensor(arr: np.ndarray) -> tuple[Tensor, int]:
    """float32 tensor (no copy when already contiguous float32) with NaN/inf set to 0, and the count.

    Counted and cleaned chunk by chunk, so the check costs a chunk of working memory, not a mask of the array."""
    arr32 = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr32.flags.writeable:
        arr32 = arr32.copy()
    bad = 0
    for chunk in _row_chunks(arr32):
        finite = np.isfinite(chunk)
        n_bad = int(finite.size - np.count_nonzero(finite))
        if n_bad:
            chunk[~finite] = 0.0
            bad += n_bad
    return torch.from_numpy(arr32), bad


def _lengths_mask(value: Any, n: int, seq_len: int, where: str) -> Tensor:
    lengths = _as_array(value, where)
    if lengths.shape != (n,) and lengths.size == n:
        lengths = lengths.reshape(n)
    if lengths.shape != (n,):
        raise MMSADataError(f"{where}: expected {n} lengths, got shape {lengths.shape}.")
    if lengths.dtype.kind == "f":
        if not np.all(np.isfinite(lengths)) or np.any(lengths != np.round(lengths)):
            raise MMSADataError(f"{where}: lengths must be whole numbers.")
    elif lengths.dtype.kind not in "iub":
        raise MMSADataError(f"{where}: lengths must be integers, got dtype {lengths.dtype}.")
    lengths = lengths.astype(np.int64)
    too_long = lengths > seq_len
    negative = lengths < 0
    if too_long.any() or negative.any():
        i = int(np.flatnonzero(too_long | negative)[0])
        raise MMSADataError(
            f"{where}: {int(too_long.sum())} lengths exceed the sequence length {seq_len} and "
            f"{int(negative.sum())} are negative (first bad: sample {i}, length {int(lengths[i])})."
        )
    empty = int((lengths == 0).sum())
    if empty:
        log.warning("%s: %d samples have length 0 (an all-padding sequence)", where, empty)
    return torch.arange(seq_len)[None, :] < torch.from_numpy(lengths)[:, None]


def _build_split(split_dict: Any, split: str, schema: str, source: str, known_counts: Mapping[str, int] | None = None,
                 known_rows: Mapping[str, list[int] | None] | None = None) -> tuple[MMSASplit, dict[str, int], bool]:
    """Validate one split; memory-mapped features (a store) stay mapped, with their NaN/inf counts from
    ``known_counts`` (the store's header) or counted here in chunks."""
    where = f"{source}: split '{split}'"
    if not isinstance(split_dict, Mapping):
        raise MMSADataError(f"{where} is a {type(split_dict).__name__}, expected a dict of arrays.")
    label_key = _LABEL_KEYS[schema]
    required = ["text", "audio", "vision", label_key] + (["id"] if schema == "mmsa" else [])
    missing = [k for k in required if k not in split_dict]
    if missing:
        raise MMSADataError(f"{where}: missing key(s) {missing} (keys present: {sorted(map(str, split_dict))}).")

    # labels
    labels = _as_array(split_dict[label_key], f"{where}/{label_key}")
    if labels.dtype.kind == "b":
        raise MMSADataError(f"{where}/{label_key}: boolean labels; expected sentiment intensities in "
                            f"[{LABEL_RANGE[0]:g}, {LABEL_RANGE[1]:g}] (a classification file? convert its labels "
                            "to the regression scores first).")
    if labels.dtype.kind not in "fiu":
        raise MMSADataError(f"{where}/{label_key}: expected numeric labels, got dtype {labels.dtype}.")
    n = labels.shape[0] if labels.ndim else 0
    if labels.ndim == 0 or labels.size != n:
        raise MMSADataError(f"{where}/{label_key}: expected one label per sample ([N], [N, 1] or [N, 1, 1]), "
                            f"got shape {labels.shape}.")
    labels = labels.reshape(n).astype(np.float64)
    finite = np.isfinite(labels)
    out_of_range = finite & ((labels < LABEL_RANGE[0]) | (labels > LABEL_RANGE[1]))
    if not finite.all() or out_of_range.any():
        i = int(np.flatnonzero(~finite | out_of_range)[0])
        raise MMSADataError(
            f"{where}/{label_key}: {int((~finite).sum())} non-finite labels and {int(out_of_range.sum())} labels "
            f"outside [{LABEL_RANGE[0]:g}, {LABEL_RANGE[1]:g}] (first bad: sample {i}, value {labels[i]})."
        )

    ids = _decode_ids(split_dict.get("id"), n, where, split)
    raw_text = split_dict.get("raw_text")
    if raw_text is not None:
        raw_arr = _as_array(raw_text, f"{where}/raw_text")
        if raw_arr.shape[:1] != (n,):
            raise MMSADataError(f"{where}/raw_text: has {raw_arr.shape[:1]} entries, expected {n}.")
        raw_text = [x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in raw_arr.tolist()]

    feats = {m: _feature(split_dict[m], f"{where}/{m}", n) for m in MODALITIES}
    tensors: dict[str, Tensor | np.ndarray] = {}
    counts: dict[str, int] = {}
    bad_rows: dict[str, np.ndarray | None] = {}
    for m, arr in feats.items():
        if isinstance(split_dict[m], np.memmap):  # a store: stays mapped, sliced and cleaned per batch
            tensors[m] = split_dict[m]
            known = (known_counts or {}).get(m)
            counts[m] = int(known) if known is not None else count_nonfinite(arr)
            rows = (known_rows or {}).get(m) if known is not None else None
            bad_rows[m] = np.asarray(rows, dtype=np.int64) if rows is not None else None
            if counts[m]:
                log.info("%s/%s: %d non-finite values (NaN/inf), cleaned to 0 as batches are read", where, m,
                         counts[m])
            continue
        tensors[m], counts[m] = _to_float_tensor(arr)
        if counts[m]:
            log.info("%s/%s: cleaned %d non-finite values (NaN/inf) to 0", where, m, counts[m])

    lt, la, lv = (feats[m].shape[1] for m in MODALITIES)
    text_bert = None
    if "text_bert" in split_dict and split_dict["text_bert"] is not None:
        tb = _as_array(split_dict["text_bert"], f"{where}/text_bert")
        if tb.ndim != 3 or tb.shape[0] != n or tb.shape[1] != 3 or tb.shape[2] != lt:
            raise MMSADataError(f"{where}/text_bert: expected shape [{n}, 3, {lt}] (token ids / attention mask "
                                f"/ segment ids over the text steps), got {tb.shape}.")
        if tb.dtype.kind not in "fiub":
            raise MMSADataError(f"{where}/text_bert: expected numeric token ids, got dtype {tb.dtype}.")
        if tb.dtype.kind == "f" and (not np.all(np.isfinite(tb)) or np.any(tb != np.round(tb))):
            raise MMSADataError(f"{where}/text_bert: token ids / masks must be whole numbers.")
        text_bert = torch.from_numpy(tb.astype(np.int64))
        if not bool(((text_bert[:, 1] == 0) | (text_bert[:, 1] == 1)).all()):
            raise MMSADataError(f"{where}/text_bert: attention mask (row 1) must hold only 0 and 1.")
        text_mask = text_bert[:, 1].bool()
        empty = ~text_mask.any(1)
        if bool(empty.any()):
            first = [str(i) for i in ids[empty.numpy()][:5]]
            raise MMSADataError(
                f"{where}/text_bert: {int(empty.sum())} sample(s) have an all-zero attention mask (row 1): no valid "
                f"text step, so nothing to read or average (first: {first}); a tokenised text has at least [CLS] "
                "and [SEP]. Fix or remove these samples."
            )
    else:
        text_mask = torch.ones(n, lt, dtype=torch.bool)

    has_al, has_vl = "audio_lengths" in split_dict, "vision_lengths" in split_dict
    if has_al != has_vl:
        raise MMSADataError(f"{where}: has {'audio_lengths' if has_al else 'vision_lengths'} but not "
                            f"{'vision_lengths' if has_al else 'audio_lengths'}; unaligned files need both.")
    aligned = not has_al
    if aligned:
        audio_mask = text_mask.clone() if la == lt else torch.ones(n, la, dtype=torch.bool)
        vision_mask = text_mask.clone() if lv == lt else torch.ones(n, lv, dtype=torch.bool)
    else:
        audio_mask = _lengths_mask(split_dict["audio_lengths"], n, la, f"{where}/audio_lengths")
        vision_mask = _lengths_mask(split_dict["vision_lengths"], n, lv, f"{where}/vision_lengths")

    split_obj = MMSASplit(
        text=tensors["text"], audio=tensors["audio"], vision=tensors["vision"],
        text_mask=text_mask, audio_mask=audio_mask, vision_mask=vision_mask,
        label=torch.from_numpy(labels.astype(np.float32)), id=ids, text_bert=text_bert, raw_text=raw_text,
        nonfinite=dict(counts), nonfinite_rows=bad_rows,
    )
    return split_obj, counts, aligned


def load_mmsa(path: str | os.PathLike, dataset_name: str | None = None) -> MMSAData:
    """Load, validate and clean an MMSA / MulT feature file (``.pkl``, the ``.npz`` form, or a ``.mmsa`` store).

    A store is opened in place: its features stay memory-mapped (shared by every process of the machine) and are
    cleaned per batch; the checks are the same, with the NaN/inf counts taken from the store's header (counted
    when it was written).

    Args:
        path: feature file or store.
        dataset_name: ``"mosi"`` / ``"mosei"`` to check split sizes against the standard ones (a mismatch is a
            logged warning and a :class:`SplitSizeWarning`), or ``None`` to skip the check.

    Returns:
        The validated :class:`MMSAData`.

    Raises:
        MMSADataError: missing/unreadable/unsafe file, missing split or key, inconsistent shapes or dims
            between splits, bad lengths, labels outside [-3, 3] or non-finite.
    """
    path = Path(path)
    if dataset_name is not None and dataset_name.lower() not in ("mosi", "mosei"):
        raise ValueError(f"load_mmsa: dataset_name must be 'mosi', 'mosei' or None, got {dataset_name!r}")
    known: Mapping[str, Mapping[str, int]] = {}
    rows: Mapping[str, Mapping[str, list[int] | None]] = {}
    if is_store_path(path):
        raw, header = open_store(check_feature_path(path))
        known, rows = header.get("nonfinite", {}), header.get("nonfinite_rows", {})
    else:
        raw = load_feature_file(path)
    return validate_mmsa(raw, path, dataset_name=dataset_name, known_counts=known, known_rows=rows)


def validate_mmsa(raw: Mapping[str, Any], path: str | os.PathLike, *, dataset_name: str | None = None,
                  known_counts: Mapping[str, Mapping[str, int]] | None = None,
                  known_rows: Mapping[str, Mapping[str, list[int] | None]] | None = None) -> MMSAData:
    """Validate and clean a loaded feature tree (see :func:`load_mmsa`); ``path`` is named in messages.

    Args:
        raw: the nested dict of a feature file.
        path: its name, for messages.
        dataset_name: as in :func:`load_mmsa`.
        known_counts: ``{split: {modality: NaN/inf count}}`` of memory-mapped features (a store's header).
        known_rows: ``{split: {modality: indices of the samples holding them}}`` (a store's header).
    """
    path = Path(path)
    missing = [s for s in FILE_SPLITS if s not in raw]
    if missing:
        raise MMSADataError(f"{path}: missing split(s) {missing} (top-level keys: {sorted(map(str, raw))}).")
    schema = detect_schema(raw, path)

    splits: dict[str, MMSASplit] = {}
    counts: dict[str, dict[str, int]] = {}
    alignment: dict[str, bool] = {}
    for split in FILE_SPLITS:
        splits[split], counts[split], alignment[split] = _build_split(
            raw[split], split, schema, str(path), (known_counts or {}).get(split), (known_rows or {}).get(split))

    if len(set(alignment.values())) > 1:
        raise MMSADataError(f"{path}: splits disagree on alignment (audio_lengths/vision_lengths present in "
                            f"{[s for s, a in alignment.items() if not a]} only).")
    for m in MODALITIES:
        dims = {s: int(getattr(splits[s], m).shape[2]) for s in FILE_SPLITS}
        if len(set(dims.values())) > 1:
            raise MMSADataError(f"{path}: feature dim of '{m}' differs between splits: {dims}.")
        lens = {s: int(getattr(splits[s], m).shape[1]) for s in FILE_SPLITS}
        if len(set(lens.values())) > 1:
            raise MMSADataError(f"{path}: sequence length of '{m}' differs between splits: {lens}.")
    tb = {s: splits[s].text_bert is not None for s in FILE_SPLITS}
    if len(set(tb.values())) > 1:
        raise MMSADataError(f"{path}: 'text_bert' is present in some splits only: {tb}.")

    train = splits["train"]
    data = MMSAData(
        path=str(path), schema=schema, aligned=alignment["train"], splits=splits,
        feature_dims={m: int(getattr(train, m).shape[2]) for m in MODALITIES},
        seq_lens={m: int(getattr(train, m).shape[1]) for m in MODALITIES},
        nonfinite_counts=counts,
    )
    total_bad = sum(sum(c.values()) for c in counts.values())
    log.info("%s: schema=%s, %s, split sizes %s, feature_dims %s, seq_lens %s, non-finite values cleaned: %d %s",
             path, schema, "aligned" if data.aligned else "unaligned", data.split_sizes, data.feature_dims,
             data.seq_lens, total_bad, counts if total_bad else "")
    warn_split_content(str(path), data.split_sizes, {s: splits[s].id for s in FILE_SPLITS})
    if dataset_name is not None:
        expected = dict(zip(FILE_SPLITS, STANDARD_SPLIT_SIZES[schema][dataset_name.lower()]))
        if expected != data.split_sizes:
            msg = (f"{path}: split sizes {data.split_sizes} differ from the standard {dataset_name} "
                   f"({schema} format) sizes {expected}; results will not be comparable with published ones.")
            log.warning(msg)
            warnings.warn(msg, SplitSizeWarning, stacklevel=2)
    return data
