"""Convert an MMSA / MulT feature pickle to the pickle-free ``.npz`` form, exactly.

Usage::

    python -m features.convert_mmsa data/mosi/aligned_50.pkl data/mosi/aligned_50.npz

The source is read with the restricted unpickler of :mod:`features.mmsa_format` (only numpy arrays, scalars,
dtypes and plain containers; anything else is refused before it runs). The destination holds one array per entry
(``train/audio``, ``train/id``, ...; strings as fixed-width unicode arrays) and a JSON header array
``__mmsa_header__`` (format, version, detected schema, source name and the key tree), so it loads with
``np.load(..., allow_pickle=False)`` and restores every array with its dtype and shape, object-string arrays, lists
and scalars. After writing, the file is read back and compared with the source; any difference is an error and the
output is removed. The source file is never modified; the output is written atomically and an existing output is
only replaced with ``--overwrite``. ``MOSEIDataModule(path=...)`` reads either form.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from features.mmsa_format import MMSADataError, detect_schema, load_feature_file, load_npz, save_npz

__all__ = ["convert_mmsa", "main", "trees_equal"]

log = logging.getLogger(__name__)


def trees_equal(a: Any, b: Any, path: str = "") -> str | None:
    """Compare two loaded feature trees exactly (types, dtypes, shapes, values; NaN equals NaN).

    Returns:
        ``None`` when equal, otherwise a description of the first difference.
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            return f"{path or '/'}: {type(a).__name__} vs {type(b).__name__}"
        if list(a) != list(b):
            return f"{path or '/'}: keys {list(a)} vs {list(b)}"
        for k in a:
            diff = trees_equal(a[k], b[k], f"{path}/{k}" if path else str(k))
            if diff:
                return diff
        return None
    if type(a) is not type(b):
        return f"{path}: type {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, np.ndarray):
        if a.dtype != b.dtype or a.shape != b.shape:
            return f"{path}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}"
        if a.dtype.kind == "O":
            return None if a.tolist() == b.tolist() else f"{path}: object values differ"
        equal = np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        return None if equal else f"{path}: values differ"
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return f"{path}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = trees_equal(x, y, f"{path}/{i}")
            if diff:
                return diff
        return None
    if isinstance(a, np.generic):
        same = a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b), equal_nan=a.dtype.kind in "fc")
        return None if same else f"{path}: scalar differs"
    both_nan = isinstance(a, float) and np.isnan(a) and np.isnan(b)
    return None if (a == b or both_nan) else f"{path}: {a!r} vs {b!r}"


def convert_mmsa(src: str | os.PathLike, dst: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Convert ``src`` (feature pickle, read safely) to ``dst`` (``.npz``) and verify the exact round trip.

    Args:
        src: MMSA or MulT feature pickle.
        dst: output path; must end in ``.npz``.
        overwrite: replace ``dst`` when it exists.

    Returns:
        The written path.

    Raises:
        MMSADataError: unreadable/unsafe source, content that cannot be stored without pickle, or a round-trip
            mismatch.
        FileExistsError: ``dst`` exists and ``overwrite`` is False.
        ValueError: ``dst`` does not end in ``.npz`` or is the source itself.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".npz":
        raise ValueError(f"convert_mmsa: destination must end in .npz, got {dst}")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"convert_mmsa: destination {dst} is the source file")
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst}: already exists; pass --overwrite (overwrite=True) to replace it")
    data = load_feature_file(src)
    schema = detect_schema(data, src)
    save_npz(data, dst, source=str(src), schema=schema)
    diff = trees_equal(data, load_npz(dst))
    if diff is not None:
        dst.unlink(missing_ok=True)
        raise MMSADataError(f"{src}: the .npz copy does not round-trip exactly ({diff}); nothing was written.")
    log.info("converted %s (%s schema, %.1f MB) -> %s (%.1f MB), round trip verified", src, schema,
             src.stat().st_size / 2**20, dst, dst.stat().st_size / 2**20)
    return dst


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point: ``python -m features.convert_mmsa SRC.pkl DST.npz [--overwrite]``."""
    parser = argparse.ArgumentParser(prog="python -m features.convert_mmsa",
                                     description="Convert an MMSA/MulT feature pickle to a pickle-free .npz.")
    parser.add_argument("src", help="feature pickle (e.g. data/mosi/aligned_50.pkl)")
    parser.add_argument("dst", help="output .npz (e.g. data/mosi/aligned_50.npz)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return convert_mmsa(args.src, args.dst, overwrite=args.overwrite)


if __name__ == "__main__":
    main()
