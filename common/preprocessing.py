"""Where a face checkpoint keeps its preprocessing, for every reader (systems, pipelines, ``features/``, ``models/``).

The face datamodule's ``state_dict()`` is its preprocessing state (class names, crop, normalisation, descriptor
settings, fitted SUN statistics; ``datamodules.fer.FERDataModule.preprocessing_state``), marked
``"kind": "face_preprocessing"``; Lightning stores a datamodule's state in every checkpoint under the datamodule's
class name (``"FERDataModule"``, or a subclass's name). Checkpoints written before that (the shipped model among
them) hold it under :data:`FER_PREPROCESSING_KEY`, written by the system. :func:`face_preprocessing` finds either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from common import FER_PREPROCESSING_KEY

__all__ = ["FER_PREPROCESSING_KEY", "PREPROCESSING_KIND", "face_preprocessing"]

#: The ``kind`` of a face preprocessing state.
PREPROCESSING_KIND = "face_preprocessing"


def face_preprocessing(checkpoint: Mapping[str, Any]) -> dict[str, Any] | None:
    """The face preprocessing state a checkpoint holds, or ``None``.

    Looks for a top-level datamodule state whose ``kind`` is :data:`PREPROCESSING_KIND` (Lightning's
    ``checkpoint[<datamodule class name>]``), then for the older :data:`FER_PREPROCESSING_KEY`.
    """
    if not isinstance(checkpoint, Mapping):
        return None
    for value in checkpoint.values():
        if isinstance(value, dict) and value.get("kind") == PREPROCESSING_KIND:
            return value
    legacy = checkpoint.get(FER_PREPROCESSING_KEY)
    return legacy if isinstance(legacy, dict) else None
