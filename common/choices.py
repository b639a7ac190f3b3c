"""``ValueError`` for a bad ``typing.Literal`` option when code is called from Python, not through the CLI.

String options are annotated ``Literal[...]`` so that jsonargparse validates them and ``--help`` lists them. A
pure-Python caller bypasses jsonargparse; one call of :func:`check_choices` at the top of ``__init__`` gives it the
same check, read from the same annotations (the options are written once, in the signature)::

    def __init__(self, fusion: Literal["concat", "add"] = "concat", pool: Literal["mean", "max"] | None = None):
        check_choices(MyNet, locals())
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["check_choices", "literal_options"]


def _options(annotation: Any) -> tuple | None:
    """The allowed values of a ``Literal[...]`` annotation (with ``None`` for ``Literal[...] | None``)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        parts = [_options(a) if a is not type(None) else (None,) for a in typing.get_args(annotation)]
        if all(p is not None for p in parts) and any(typing.get_origin(a) is typing.Literal
                                                   for a in typing.get_args(annotation)):
            return tuple(v for p in parts for v in p)
    return None


@functools.cache
def literal_options(fn: Callable) -> dict[str, tuple]:
    """``{parameter: allowed values}`` for the ``Literal``-annotated parameters of ``fn``."""
    out: dict[str, tuple] = {}
    for name, ann in getattr(fn, "__annotations__", {}).items():
        if name == "return":
            continue
        if isinstance(ann, str):
            if "Literal" not in ann:
                continue
            ann = eval(ann, fn.__globals__)  # the module's own annotation text, not user input
        opts = _options(ann)
        if opts is not None:
            out[name] = opts
    return out


def check_choices(owner: type | Callable, values: Mapping[str, Any]) -> None:
    """Check every ``Literal``-annotated argument of ``owner`` (a class: its ``__init__``; or a function).

    Args:
        owner: the class (or function) whose signature holds the ``Literal`` annotations; it names the error.
        values: the arguments, usually ``locals()`` at the top of ``__init__``.

    Raises:
        ValueError: ``"<Owner>: <name> must be one of (...), got <value>"``.
    """
    fn = owner.__init__ if isinstance(owner, type) else owner
    for name, options in literal_options(fn).items():
        if name in values and values[name] not in options:
            raise ValueError(f"{owner.__name__}: {name} must be one of {options}, got {values[name]!r}")
