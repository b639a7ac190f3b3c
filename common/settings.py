"""Nested settings objects (frozen dataclasses) given to a constructor: from a config, from Python, or left out.

LightningCLI parses a dataclass-typed argument into the dataclass (``--data.init_args.crop.image_size 64`` sets one
field, a misspelt field is an error); Python callers may pass the dataclass or a plain dict of its fields; ``None``
means the dataclass's defaults (a constructor never takes an instance as its default). Checkpoints store the plain
dict (:func:`plain_settings`), never the dataclass: a weights-only reader refuses pickled classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["as_settings", "plain_settings"]

T = TypeVar("T")


def as_settings(cls: type[T], value: T | Mapping[str, Any] | None, owner: str, key: str) -> T:
    """``value`` as a ``cls`` instance (``None``: ``cls()``; a mapping: ``cls(**value)``).

    Raises:
        ValueError: a mapping with fields ``cls`` lacks or values it refuses, or a value of another type (naming
            ``owner`` and ``key``).
    """
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise ValueError(f"{owner}: {key} has no setting(s) {unknown}; known: {sorted(fields)}")
        try:
            return cls(**dict(value))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{owner}: {key}: {err}") from err
    raise ValueError(f"{owner}: {key} must be a {cls.__name__} or a mapping of its fields, got {type(value).__name__}")


def plain_settings(value: Any) -> dict[str, Any]:
    """A settings dataclass as a plain dict (tuples kept), for hyper-parameters and checkpoints."""
    return dataclasses.asdict(value)
