"""Lowest layer: small helpers every package may import (no imports from this repository, no ``lightning``).

- :mod:`common.io`: :func:`~common.io.atomic_write`, the one atomic file write (temp file + fsync + rename).
- :mod:`common.tensors`: :func:`~common.tensors.masked_mean`, the one mean over valid steps.
- :mod:`common.choices`: :func:`~common.choices.check_choices`, ``ValueError`` for a bad ``Literal`` option when a
  class is built from Python rather than through the CLI.
- :data:`MODALITIES`: the three sentiment modalities in their fixed order.
"""

from __future__ import annotations

MODALITIES: tuple[str, str, str] = ("text", "audio", "vision")

__all__ = ["MODALITIES"]
