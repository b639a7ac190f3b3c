"""Checks of a dataset's splits shared by the datamodules: an empty validation split, train/test overlap, the same
content in two splits."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from collections.abc import Iterable
from typing import Literal

from common.choices import check_choices

__all__ = ["SplitContentWarning", "check_split_duplicates", "warn_split_content"]

log = logging.getLogger(__name__)


class SplitContentWarning(UserWarning):
    """A split is empty, or the same sample ids appear in the training and the test split."""


def warn_split_content(where: str, sizes: dict[str, int], ids: dict[str, Iterable] | None = None,
                       train: str = "train", val: str = "valid", test: str = "test") -> list[str]:
    """Warn (``SplitContentWarning`` and a logged warning) about an empty validation or test split and about sample ids
    present in both the training and the test split. Returns the messages.

    Args:
        where: the data source named in the messages (file or folder).
        sizes: ``{split: number of samples}``.
        ids: ``{split: iterable of sample ids}`` (``None`` skips the overlap check).
    """
    msgs = []
    if sizes.get(val, 0) == 0:
        msgs.append(f"{where}: the {val} split is empty: no validation metrics, and a checkpoint or scheduler that "
                    f"monitors a val/ metric has nothing to watch")
    if test in sizes and sizes[test] == 0:
        msgs.append(f"{where}: the {test} split is empty: no test metrics (a stratified split of classes this small "
                    f"gives the test split nothing; more samples per class or other split ratios fix it)")
    if ids is not None and train in ids and test in ids:
        common = sorted(set(map(str, ids[train])) & set(map(str, ids[test])))
        if common:
            shown = ", ".join(common[:5]) + (" ..." if len(common) > 5 else "")
            msgs.append(f"{where}: {len(common)} sample id(s) appear in both the {train} and the {test} split "
                        f"({shown}): test metrics would be measured on training samples")
    for msg in msgs:
        log.warning(msg)
        warnings.warn(msg, SplitContentWarning, stacklevel=3)
    return msgs


def check_split_duplicates(where: str, hashes: dict[str, dict[str, str | None]],
                           on_duplicate: Literal["warn", "error"] = "warn", shown: int = 5) -> list[str]:
    """Find files with the same content (hash) in two different splits: a test image that is also a training image.

    Public benchmarks ship such pairs (FER2013's Training and PublicTest splits share 239 identical images), so the
    default is a warning (``SplitContentWarning`` and a logged warning) that counts them per pair of splits and
    lists the first groups; ``on_duplicate="error"`` refuses the data instead.

    Args:
        where: the data source named in the message (folder).
        hashes: ``{split: {file: content hash or None}}`` (``None``: unreadable file, ignored).
        on_duplicate: ``"warn"`` or ``"error"``.
        shown: how many duplicate groups the message lists.

    Returns:
        The messages (empty when no content is shared across splits).

    Raises:
        ValueError: duplicates with ``on_duplicate="error"``.
    """
    check_choices(check_split_duplicates, locals())
    by_hash: dict[str, list[tuple[str, str]]] = {}
    for split, files in hashes.items():
        for path, digest in files.items():
            if digest:
                by_hash.setdefault(digest, []).append((split, str(path)))
    groups = [sorted(g) for g in by_hash.values() if len({s for s, _ in g}) > 1]
    if not groups:
        return []
    groups.sort()
    pairs = Counter("+".join(sorted({s for s, _ in g})) for g in groups)
    listed = "; ".join(" = ".join(f"{p} ({s})" for s, p in g) for g in groups[:shown])
    msg = (f"{where}: {len(groups)} image(s) have the same content in two splits ({dict(sorted(pairs.items()))}), "
           f"e.g. {listed}{' ...' if len(groups) > shown else ''}: metrics on the later split partly measure "
           "training images")
    if on_duplicate == "error":
        raise ValueError(msg + " (on_split_duplicate='error')")
    log.warning(msg)
    warnings.warn(msg, SplitContentWarning, stacklevel=2)
    return [msg]
