"""Lowest layer: small helpers every package may import (no imports from this repository, no ``lightning``).

- :mod:`common.io`: :func:`~common.io.atomic_write`, the one atomic file write (temp file + fsync + rename).
- :mod:`common.tensors`: :func:`~common.tensors.masked_mean`, the one mean over valid steps.
- :mod:`common.choices`: :func:`~common.choices.check_choices`, ``ValueError`` for a bad ``Literal`` option when a
  class is built from Python rather than through the CLI.
- :mod:`common.splits`: :func:`~common.splits.warn_split_content`, the one warning about an empty validation split
  or sample ids shared by train and test.
- :data:`MODALITIES`: the three sentiment modalities in their fixed order.
- :data:`FER_PREPROCESSING_KEY`: the checkpoint key under which a face-expression system stores its datamodule's
  preprocessing (``lightning_modules.fer``) and from which a frozen classifier reads its normalisation
  (``models.frozen_classifier``).
"""

from __future__ import annotations

MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")
FER_PREPROCESSING_KEY: str = "fer_preprocessing"

__all__ = ["FER_PREPROCESSING_KEY", "MODALITIES"]
