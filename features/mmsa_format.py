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

:func:`load_mmsa` validates a file (splits, keys, shapes, dims, lengths, labels), cleans NaN/inf to 0 with
logged counts, builds masks and converts everything once to float32/int64/bool tensors.
:class:`datamodules.datasets.mmsa_dataset.MMSADataset` serves them as batches (``docs/architecture.md``,
"Multimodal sentiment").
"""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:  # numpy >= 2
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _np_multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _np_numeric  # type: ignore[no-redef]

__all__ = [
    "LABEL_RANGE",
    "MODALITIES",
    "SPLITS",
    "STANDARD_SPLIT_SIZES",
    "MMSAData",
    "MMSADataError",
    "MMSASplit",
    "RestrictedUnpickler",
    "SplitSizeWarning",
    "detect_schema",
    "load_feature_file",
    "load_mmsa",
    "load_npz",
    "missing_file_message",
    "restricted_pickle_load",
    "save_npz",
]

log = logging.getLogger(__name__)

SPLITS: tuple[str, str, str] = ("train", "valid", "test")
MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")
LABEL_RANGE: tuple[float, float] = (-3.0, 3.0)

#: Standard split sizes (train, valid, test) per schema and dataset.
STANDARD_SPLIT_SIZES: dict[str, dict[str, tuple[int, int, int]]] = {
    "mmsa": {"mosi": (1284, 229, 686), "mosei": (16326, 1871, 4659)},
    "mult": {"mosi": (1284, 229, 686), "mosei": (16265, 1869, 4643)},
}

NPZ_HEADER_KEY = "__mmsa_header__"
NPZ_FORMAT = "affect-mmsa-npz"
NPZ_VERSION = 1

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
        "copy can be made with `python -m features.convert_mmsa SRC.pkl DST.npz`; to try the pipeline without "
        "the real files, generate a synthetic one with `python -m features.synthetic_mmsa --out "
        "data/generated/mosi_aligned.pkl`."
    )


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
    path = Path(path)
    if not path.is_file():
        raise MMSADataError(missing_file_message(path))
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
def _flatten(obj: Any, prefix: str, arrays: dict[str, np.ndarray], source: str) -> Any:
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


def save_npz(data: Mapping[str, Any], path: str | os.PathLike, *, source: str | None = None,
             schema: str | None = None) -> Path:
    """Write ``data`` (a nested dict as loaded from a feature pickle) to a pickle-free ``.npz``, atomically.

    Arrays are stored under ``"split/key"`` names; strings become fixed-width unicode (or bytes) arrays; a JSON
    header (array ``__mmsa_header__``) records the tree, so :func:`load_npz` restores dtypes, shapes, object-string
    arrays, lists and scalars exactly.

    Args:
        data: nested mapping of numpy arrays, strings, lists and scalars.
        path: destination ``.npz``; the file appears only once complete (temporary file + rename).
        source: original file name, recorded in the header.
        schema: ``"mmsa"`` or ``"mult"``, recorded in the header (detected when ``None``).

    Returns:
        The written path.
    """
    path = Path(path)
    src = source or str(path)
    arrays: dict[str, np.ndarray] = {}
    tree = _flatten(data, "", arrays, src)
    if schema is None:
        try:
            schema = detect_schema(data, src)
        except MMSADataError:
            schema = "unknown"
    header = {"format": NPZ_FORMAT, "version": NPZ_VERSION, "schema": schema, "source": Path(src).name,
              "tree": tree}
    arrays[NPZ_HEADER_KEY] = np.asarray(json.dumps(header))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)
            f.flush()
            os.fsync(f.fileno())
        _umask = os.umask(0)
        os.umask(_umask)
        os.chmod(tmp, 0o666 & ~_umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_npz(path: str | os.PathLike) -> dict[str, Any]:
    """Load a file written by :func:`save_npz` (``allow_pickle=False``) back into the nested dict.

    A plain ``.npz`` without header is accepted when its keys look like ``"split/key"``.
    """
    path = Path(path)
    if not path.is_file():
        raise MMSADataError(missing_file_message(path))
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
    """Load a feature file as a nested dict: restricted pickle, or the pickle-free ``.npz`` form.

    The format is recognised from the content (a zip archive is ``.npz``), not only the suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise MMSADataError(missing_file_message(path))
    with path.open("rb") as f:
        magic = f.read(4)
    data = load_npz(path) if magic.startswith(b"PK") else restricted_pickle_load(path)
    if not isinstance(data, Mapping):
        raise MMSADataError(f"{path}: top level is a {type(data).__name__}, expected a dict with splits "
                            f"{list(SPLITS)}.")
    return data


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

    Shapes:
        text: ``[N, Lt, Dt]`` float32; text_bert: ``[N, 3, Lt]`` int64 or ``None``;
        audio: ``[N, La, Da]`` float32; vision: ``[N, Lv, Dv]`` float32;
        text_mask / audio_mask / vision_mask: ``[N, L*]`` bool (True = valid step); label: ``[N]`` float32.
    """

    text: Tensor
    audio: Tensor
    vision: Tensor
    text_mask: Tensor
    audio_mask: Tensor
    vision_mask: Tensor
    label: Tensor
    id: np.ndarray
    text_bert: Tensor | None = None
    raw_text: list[str] | None = None

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


def _to_float_tensor(arr: np.ndarray) -> tuple[Tensor, int]:
    """float32 tensor (no copy when already contiguous float32) with NaN/inf set to 0, and the count."""
    arr32 = np.ascontiguousarray(arr, dtype=np.float32)
    if not arr32.flags.writeable:
        arr32 = arr32.copy()
    t = torch.from_numpy(arr32)
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        torch.nan_to_num_(t, nan=0.0, posinf=0.0, neginf=0.0)
    return t, bad


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


def _build_split(split_dict: Any, split: str, schema: str, source: str) -> tuple[MMSASplit, dict[str, int], bool]:
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
    if labels.dtype.kind not in "fiub":
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
    tensors: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    for m, arr in feats.items():
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
    )
    return split_obj, counts, aligned


def load_mmsa(path: str | os.PathLike, dataset_name: str | None = None) -> MMSAData:
    """Load, validate and clean an MMSA / MulT feature file (``.pkl`` or the ``.npz`` form).

    Args:
        path: feature file.
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
    raw = load_feature_file(path)
    missing = [s for s in SPLITS if s not in raw]
    if missing:
        raise MMSADataError(f"{path}: missing split(s) {missing} (top-level keys: {sorted(map(str, raw))}).")
    schema = detect_schema(raw, path)

    splits: dict[str, MMSASplit] = {}
    counts: dict[str, dict[str, int]] = {}
    alignment: dict[str, bool] = {}
    for split in SPLITS:
        splits[split], counts[split], alignment[split] = _build_split(raw[split], split, schema, str(path))
    del raw

    if len(set(alignment.values())) > 1:
        raise MMSADataError(f"{path}: splits disagree on alignment (audio_lengths/vision_lengths present in "
                            f"{[s for s, a in alignment.items() if not a]} only).")
    for m in MODALITIES:
        dims = {s: int(getattr(splits[s], m).shape[2]) for s in SPLITS}
        if len(set(dims.values())) > 1:
            raise MMSADataError(f"{path}: feature dim of '{m}' differs between splits: {dims}.")
        lens = {s: int(getattr(splits[s], m).shape[1]) for s in SPLITS}
        if len(set(lens.values())) > 1:
            raise MMSADataError(f"{path}: sequence length of '{m}' differs between splits: {lens}.")
    tb = {s: splits[s].text_bert is not None for s in SPLITS}
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
    if dataset_name is not None:
        expected = dict(zip(SPLITS, STANDARD_SPLIT_SIZES[schema][dataset_name.lower()]))
        if expected != data.split_sizes:
            msg = (f"{path}: split sizes {data.split_sizes} differ from the standard {dataset_name} "
                   f"({schema} format) sizes {expected}; results will not be comparable with published ones.")
            log.warning(msg)
            warnings.warn(msg, SplitSizeWarning, stacklevel=2)
    return data
