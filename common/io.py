"""The one atomic file write of the project: a reader never sees a half-written file, and a crash leaves none.

:func:`atomic_path` is the core (a temporary path next to the target, fsynced and renamed onto it on success,
removed on error); :func:`atomic_write` opens that path as a file object. Writers that need a path rather than a file
object (PyAV's muxer, which picks the format from the extension) use :func:`atomic_path` directly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

__all__ = ["atomic_path", "atomic_write"]


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit fsync it and rename it onto ``path``.

    The temporary file is hidden (``.<name>.<random><suffix>``, so folder scans skip it) and lives in the target's
    folder (the rename stays on one file system). It exists (empty) when yielded; the caller may overwrite it. The
    final file gets the permissions a plain ``open`` would give (``0o666`` minus the umask). On any exception the
    temporary file is removed and ``path`` is left as it was. Parent folders are created.

    Args:
        path: final file.
        suffix: end of the temporary name; a writer that chooses its format from the extension passes one that ends
            with it (e.g. ``".tmp.mp4"``).

    Example:
        >>> with atomic_path("clip.mp4", suffix=".tmp.mp4") as tmp:  # doctest: +SKIP
        ...     write_with_some_library(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: Literal["wb", "w"] = "wb",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Iterator[IO]:
    """Open a temporary file next to ``path`` (:func:`atomic_path`); on a clean exit it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is left as it was. Parent folders are created.

    Args:
        path: final file.
        mode: ``"wb"`` (bytes) or ``"w"`` (text).
        encoding: text encoding (text mode only).
        newline: ``newline`` of :func:`open` (text mode only; ``""`` for CSV writers).

    Example:
        >>> with atomic_write("out.npz") as f:  # doctest: +SKIP
        ...     np.savez(f, a=a)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w', got {mode!r}")
    text = {"encoding": encoding, "newline": newline} if mode == "w" else {}
    with atomic_path(path) as tmp, open(tmp, mode, **text) as f:
        yield f
