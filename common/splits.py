"""Checks of a dataset's splits shared by the datamodules: an empty validation split, train/test overlap."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

__all__ = ["SplitContentWarning", "warn_split_content"]

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
