"""Convert an MMSA / MulT feature file to the pickle-free ``.npz`` form or to the memory-mapped feature store, exactly.

Usage::

    python -m features.convert_mmsa data/mosi/aligned_50.pkl data/mosi/aligned_50.npz
    python -m features.convert_mmsa data/mosei/unaligned_50.pkl data/mosei/unaligned_50.mmsa   # store, for DDP
    python -m features.convert_mmsa data/mosei/unaligned_50.npz data/mosei/unaligned_50.mmsa   # streaming

A pickle source is read with the restricted unpickler of :mod:`features.mmsa_format` (only numpy arrays, scalars,
dtypes and plain containers; anything else is refused before it runs).

``DST.npz``: one array per entry (``train/audio``, ``train/id``, ...; strings as fixed-width unicode arrays) and a
JSON header array ``__mmsa_header__`` (format, version, detected schema, source name and the key tree), so it loads
with ``np.load(..., allow_pickle=False)`` and restores every array with its dtype and shape, object-string arrays,
lists and scalars. After writing, the file is read back and compared with the source; any difference is an error
and the output is removed.

``DST.mmsa`` (a directory; see :mod:`features.mmsa_format` for the layout and why ``.npy`` + ``mmap``): written
**streaming**, one array at a time in chunks of :data:`~features.mmsa_format.CHUNK_BYTES`, into a hidden temporary
directory renamed onto ``DST`` only at the end, after

* every array's bytes were hashed (sha256) as they were taken from the source and re-read from disk to match;
* the key tree, dtypes, shapes, strings, lists and scalars were compared with the source;
* the store passed the loader's checks (:func:`~features.mmsa_format.validate_mmsa`: splits, keys, shapes, dims,
  lengths, labels, token masks; the NaN/inf counts, computed chunk by chunk while writing, are logged and kept in
  the header, where the loader reads them).

A killed conversion leaves no ``DST`` (only the hidden ``.DST.<random>.tmp`` directory, which never opens as a
store; delete it). Memory: from an ``.npz``, each member is streamed from the zip archive (its CRC-32 checked), so
the converter needs a few chunks beside the interpreter, whatever the file size; from a ``.pkl``, unpickling
necessarily holds the whole pickle in memory (about the file's size; pickle cannot be read in parts), and the store
is then written from those arrays' own buffers without a second copy. To convert a pickle bigger than the memory,
convert it to ``.npz`` on a larger machine once, then ``.npz`` to the store anywhere.

The source file is never modified; an existing output is only replaced with ``--overwrite`` (and a store only
replaces a store). ``MMSADataModule(path=...)`` reads every form.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.mmsa_format import (
    MMSADataError,
    check_feature_path,
    detect_schema,
    is_store_path,
    load_feature_file,
    load_npz,
    npz_to_store,
    save_npz,
    save_store,
    validate_mmsa,
)

__all__ = ["convert_mmsa", "main", "trees_equal"]

log = logging.getLogger(__name__)


def trees_equal(a: Any, b: Any, path: str = "", *, mapped_values: bool = True) -> str | None:
    """Compare two loaded feature trees exactly (types, dtypes, shapes, values; NaN equals NaN).

    A memory-mapped array (``np.memmap``, from a store) counts as an ``np.ndarray``.

    Args:
        a, b: the trees.
        path: prefix of the names in the returned description.
        mapped_values: compare the values of memory-mapped arrays too; ``False`` compares their dtype and shape
            only (the converter has checked their bytes by sha256; reading them again would map the whole store).

    Returns:
        ``None`` when equal, otherwise a description of the first difference.
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            return f"{path or '/'}: {type(a).__name__} vs {type(b).__name__}"
        if list(a) != list(b):
            return f"{path or '/'}: keys {list(a)} vs {list(b)}"
        for k in a:
            diff = trees_equal(a[k], b[k], f"{path}/{k}" if path else str(k), mapped_values=mapped_values)
            if diff:
                return diff
        return None
    kind_a = np.ndarray if isinstance(a, np.memmap) else type(a)
    kind_b = np.ndarray if isinstance(b, np.memmap) else type(b)
    if kind_a is not kind_b:
        return f"{path}: type {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if not mapped_values and (isinstance(a, np.memmap) or isinstance(b, np.memmap)):
            return None
        if a.dtype.kind == "O":
            return None if a.tolist() == b.tolist() else f"{path}: object values differ"
        equal = np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        return None if equal else f"{path}: values differ"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = trees_equal(x, y, f"{path}/{i}", mapped_values=mapped_values)
            if diff:
                return diff
        return None
    if isinstance(a, np.generic):
        same = a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b), equal_nan=a.dtype.kind in "fc")
        return None if same else f"{path}: scalar differs"
    both_nan = isinstance(a, float) and np.isnan(a) and np.isnan(b)
    return None if (a == b or both_nan) else f"{path}: {a!r} vs {b!r}"


def convert_mmsa(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert ``src`` (feature pickle, read safely, or ``.npz``) to ``dst`` (``.npz`` or a ``.mmsa`` store) and
    verify that the output equals the input.

    Args:
        src: MMSA or MulT feature pickle, or its ``.npz`` form (a store source is allowed for ``.npz`` output).
        dst: output path; must end in ``.npz`` or ``.mmsa``.
        overwrite: replace ``dst`` when it exists.

    Returns:
        The written path.

    Raises:
        MMSADataError: unreadable/unsafe source, content that cannot be stored without pickle, a store that fails
            the loader's checks, or an output that differs from the input (nothing is written then).
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
        ValueError: ``dst`` does not end in ``.npz`` / ``.mmsa``, or is the source itself.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix not in (".npz", ".mmsa"):
        raise ValueError(f"convert_mmsa: destination must end in .npz (pickle-free file) or .mmsa (feature store), "
                         f"got {dst}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"convert_mmsa: destination {dst} is the source file")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: already exists; pass --overwrite (overwrite=True) to replace it")
    check_feature_path(src)
    if is_store_path(dst):
        out = _convert_to_store(src, dst, overwrite=overwrite)
    else:
        data = load_feature_file(src)
        schema = detect_schema(data, src)
        save_npz(data, dst, source=str(src), schema=schema)
        diff = trees_equal(data, load_npz(dst))
        if diff is not None:
            dst.unlink(missing_ok=True)
            raise MMSADataError(f"{src}: the .npz copy does not round-trip exactly ({diff}); nothing was written.")
        out = dst
    size = sum(p.stat().st_size for p in out.iterdir()) if out.is_dir() else out.stat().st_size
    log.info("converted %s (%.1f MB) -> %s (%.1f MB), output verified equal to the input", src,
             src.stat().st_size / 2**20 if src.is_file() else 0.0, out, size / 2**20)
    return out


def _convert_to_store(src: Path, dst: Path, *, overwrite: bool) -> Path:
    """``.npz`` (streamed) or pickle (unpickled, then written from its buffers) to a verified store."""
    if is_store_path(src):
        raise ValueError(f"convert_mmsa: {src} is already a feature store")
    with src.open("rb") as f:
        is_zip = f.read(4).startswith(b"PK")
    if is_zip:
        def check(tree: dict[str, Any], header: dict[str, Any]) -> None:
            validate_mmsa(tree, src, known_counts=header["nonfinite"])

        return npz_to_store(src, dst, overwrite=overwrite, check=check)

    data = load_feature_file(src)
    schema = detect_schema(data, src)

    def check_pickle(tree: dict[str, Any], header: dict[str, Any]) -> None:
        diff = trees_equal(data, tree, mapped_values=False)  # mapped arrays: bytes checked by sha256
        if diff is not None:
            raise MMSADataError(f"{src}: the store does not equal the source ({diff}); nothing was written.")
        validate_mmsa(tree, src, known_counts=header["nonfinite"])

    return save_store(data, dst, source=str(src), schema=schema, overwrite=overwrite, check=check_pickle)


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point: ``python -m features.convert_mmsa SRC DST.{npz,mmsa} [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m features.convert_mmsa",
                                     description="Convert an MMSA/MulT feature file to a pickle-free .npz or to a "
                                                 "memory-mapped .mmsa feature store (streaming from .npz).")
    parser.add_argument("src", help="feature pickle or .npz (e.g. data/mosei/unaligned_50.pkl)")
    parser.add_argument("dst", help="output .npz, or .mmsa store directory (e.g. data/mosei/unaligned_50.mmsa)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return convert_mmsa(args.src, args.dst, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
