"""The one atomic file write of the project: a reader never sees a half-written file, and a crash leaves none."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: Literal["wb", "w"] = "wb",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on a clean exit flush, fsync and rename it onto ``path``.

    The temporary file is hidden (``.<name>.<random>.tmp``, so folder scans skip it) and lives in the target's
    folder (the rename stays on one file system). It gets the permissions a plain ``open`` would give (``0o666``
    minus the umask). On any exception it is removed and ``path`` is left as it was. Parent folders are created.

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        text = {"encoding": encoding, "newline": newline} if mode == "w" else {}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
