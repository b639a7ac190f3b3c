"""The one checkpoint reader, and the one way a class path read from a checkpoint is checked.

Every checkpoint file of the project (Lightning ``.ckpt``, weight files, shipped face models) is read by
:func:`read_checkpoint`: ``torch.load(weights_only=True)`` of a local path, a ``file://`` URL or any other fsspec URL
(``http(s)://``, ``s3://``, ``gs://`` ...), with errors that name the file. A file that would unpickle code is
refused before anything in it runs.

``weights_only=True`` keeps pickled code out, but a checkpoint's hyper-parameters still hold *names* of classes
(``{"class_path": "models.hgcl.HGCL", ...}``, Lightning's ``_class_path`` / ``_instantiator``) that the loaders
import. Each name read from a file is checked against an :class:`AllowList` before anything is imported:

- the classes of ``models/`` a checkpoint may name (every net and part, and which of them are MSA nets) are DERIVED
  once, by importing ``models/`` (:func:`package_classes`), in ``models.registry`` (``MSA_NETS``, ``MODEL_PARTS``,
  ``model_classes``), the lowest layer that can see them; ``pipelines.recording`` checks against those lists;
- the project-wide list (those model classes, the systems of ``lightning_modules/`` and the library classes they
  take) is ``lightning_modules.checkpoint_io.PROJECT_CLASSES``, built on ``models.registry``'s derivation (this layer
  imports nothing from the project);
- the face-expression nets a face checkpoint may name are ``models.registry.FACE_NETS`` (``features/`` reads no
  checkpoint of a net: it is handed a ready one).

This module never imports ``lightning`` (``models/`` and ``features/`` use it).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import io
import os
import pickle
import pkgutil
import re
import zipfile
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import fsspec.core
import fsspec.utils
import torch
from fsspec.implementations.local import LocalFileSystem

__all__ = [
    "WEIGHT_FILE_ARGS",
    "AllowList",
    "CheckpointError",
    "CheckpointIsADirectoryError",
    "MapLocation",
    "local_checkpoint_path",
    "package_classes",
    "read_checkpoint",
]

#: ``torch.load``'s ``map_location``.
MapLocation = str | torch.device | dict | Callable | None

#: Init arguments of the project's nets naming where their INITIAL weights come from (``pretrained``: ``"hub"``, a
#: weight file or a project checkpoint, and its older name ``pretrained_file``, :mod:`models.pretrained`; POSTER's
#: per-backbone ``image_weights`` / ``landmark_weights``). A checkpoint's ``state_dict`` replaces those weights, so a
#: value stored in a checkpoint is dropped rather than opened or downloaded (by ``cli.py``, the face-net readers).
WEIGHT_FILE_ARGS: tuple[str, ...] = ("pretrained", "pretrained_file", "image_weights", "landmark_weights")

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (unreadable, the wrong model, or naming code that is not allowed)."""


class CheckpointIsADirectoryError(CheckpointError, IsADirectoryError):
    """A checkpoint path that names a directory (both a :class:`CheckpointError` and an ``IsADirectoryError``)."""


# ----------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------
def local_checkpoint_path(path: str | os.PathLike) -> Path | None:
    """The file on this machine that ``path`` names (a plain path or a ``file://`` URL), ``None`` for a remote URL."""
    src = os.fspath(path)
    if fsspec.utils.get_protocol(src) not in ("file", "local"):
        return None
    if "://" in src or src.startswith("local::"):
        return Path(LocalFileSystem._strip_protocol(src))
    return Path(src)


def _read_remote(src: str) -> bytes:
    """The bytes of the remote checkpoint ``src`` (any fsspec URL: ``http(s)://``, ``s3://``, ``gs://`` ...)."""
    try:
        fs, fs_path = fsspec.core.url_to_fs(src)
    except (ImportError, ValueError) as e:  # unknown protocol, or its fsspec package (s3fs, gcsfs) missing
        raise CheckpointError(f"Checkpoint {src!r} cannot be opened: {e}") from e
    try:
        info = fs.info(fs_path)
    except FileNotFoundError:
        raise FileNotFoundError(f"Checkpoint {src!r} does not exist") from None
    except Exception as e:
        raise CheckpointError(f"Checkpoint {src!r} cannot be reached: {type(e).__name__}: {e}") from e
    if info.get("type") == "directory":
        raise CheckpointIsADirectoryError(f"Checkpoint {src!r} is a directory, not a checkpoint file")
    try:
        with fs.open(fs_path, "rb") as f:
            return f.read()
    except Exception as e:
        raise CheckpointError(f"Checkpoint {src!r} could not be read: {type(e).__name__}: {e}") from e


def _refusal_detail(err: BaseException) -> str:
    """The informative line of torch's weights-only refusal (``Unsupported global: GLOBAL posix.system ...``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return next((line for line in lines if "GLOBAL" in line or "Unsupported" in line),
                lines[0] if lines else type(err).__name__)[:300]


def read_checkpoint(path: str | os.PathLike, map_location: MapLocation = "cpu", *, mmap: bool = False,
                    allowed: AllowList | None = None) -> dict[str, Any]:
    """``torch.load(..., weights_only=True)`` of a local file or any fsspec URL, with errors that name it.

    A remote checkpoint (``http(s)://``, ``s3://``, ``gs://`` ... through ``fsspec``) is read into memory and
    loaded from there with the same ``weights_only=True``: whatever the scheme, a checkpoint never unpickles code.

    Args:
        path: a local path, a ``file://`` URL or any other fsspec URL.
        map_location: ``torch.load``'s ``map_location``.
        mmap: memory-map a local file (``torch.load(mmap=True)``: reading a few keys of a large file is cheap);
            ignored for remote URLs.
        allowed: also check every class path the ``hyper_parameters`` name against this list
            (:meth:`AllowList.check_hparams`).

    Returns:
        The checkpoint dict (a plain state dict is a dict too).

    Raises:
        FileNotFoundError: no such file.
        CheckpointIsADirectoryError: a directory (a :class:`CheckpointError` and an ``IsADirectoryError``).
        CheckpointError: unreachable; truncated / corrupted / not a checkpoint; it holds objects that need code to
            load; not a dict; or (``allowed``) it names a class path not on the list.
    """
    src = os.fspath(path)
    local = local_checkpoint_path(src)
    if local is not None:
        if local.is_dir():
            raise CheckpointIsADirectoryError(f"Checkpoint {src!r} is a directory, not a checkpoint file")
        if not local.is_file():
            raise FileNotFoundError(f"Checkpoint {src!r} does not exist")
        source: str | io.BytesIO = str(local)
        size = local.stat().st_size
    else:
        data = _read_remote(src)
        source, size, mmap = io.BytesIO(data), len(data), False
    try:
        ckpt = torch.load(source, map_location=map_location, weights_only=True, mmap=mmap or None)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Checkpoint {src!r} was refused: it holds objects that would run code when loaded "
            f"(weights_only=True; nothing in it was run): {_refusal_detail(e)}"
        ) from None
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, AttributeError,
            TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"Checkpoint {src!r} is truncated or corrupted and cannot be read ({size} bytes): "
            f"{type(e).__name__}: {first}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint {src!r} is not a checkpoint (it holds a {type(ckpt).__name__}, not a "
                              "dict)")
    if allowed is not None:
        allowed.check_hparams(ckpt.get("hyper_parameters") or {}, src)
    return ckpt


# ----------------------------------------------------------------------------------------------------------
# Class paths named in a checkpoint
# ----------------------------------------------------------------------------------------------------------
def _is_module_path(s: str) -> bool:
    """A dotted string whose top-level module is importable (imports nothing)."""
    if not _DOTTED.match(s):
        return False
    try:
        return importlib.util.find_spec(s.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def package_classes(package: str, base: type, homes: Collection[str] = ()) -> dict[str, type]:
    """``{class path: class}`` for every subclass of ``base`` importable from the package ``package`` (the package and
    all its modules, imported with ``pkgutil.walk_packages``): the path of the module defining it, and the paths of
    the modules of ``package`` that re-export it under its own name (``models.hgcl.HGCL`` beside
    ``models.hgcl.hgcl.HGCL``).

    The caller names a package of its own (or one below it): importing it runs only the project's code. This module
    imports nothing from the project itself.

    Args:
        package: the package to walk (``"models"``).
        base: the classes to collect (``torch.nn.Module``).
        homes: top-level packages a class may be defined in (default: ``package``'s own); a class re-exported from
            elsewhere (a library's) is left out.
    """
    top = package.split(".")[0]
    allowed_homes = set(homes) | {top}
    pkg = importlib.import_module(package)
    names = [package] + [m.name for m in pkgutil.walk_packages(getattr(pkg, "__path__", []), package + ".")]
    out: dict[str, type] = {}
    for name in names:
        for attr, obj in vars(importlib.import_module(name)).items():
            if (inspect.isclass(obj) and issubclass(obj, base) and attr == obj.__name__
                    and obj.__module__.split(".")[0] in allowed_homes):
                out[f"{name}.{attr}"] = obj
    return out


@dataclass(frozen=True)
class AllowList:
    """The class paths a checkpoint may name, and the one check of a name read from a file.

    The paths are given lazily (``paths()`` is called at the first check), so a layer above can derive them from
    its classes while a layer below holds the mechanism.

    Args:
        description: what the list holds, as refusals say it (``"the project's face nets"``).
        paths: returns the allowed class paths.
        hint: a sentence appended to refusals (what to do instead).
    """

    description: str
    paths: Callable[[], Collection[str]]
    hint: str = ""
    _cache: list[frozenset[str]] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def allowed(self) -> frozenset[str]:
        """The allowed class paths (computed once)."""
        if not self._cache:
            self._cache.append(frozenset(self.paths()))
        return self._cache[0]

    def __contains__(self, class_path: object) -> bool:
        return isinstance(class_path, str) and class_path in self.allowed

    def __call__(self, class_path: object) -> bool:
        return class_path in self

    def check(self, class_path: Any, source: str | os.PathLike, where: str = "") -> str:
        """``class_path`` (read from ``source``) when it is on the list, else a :class:`CheckpointError` naming the
        file, the class path and where in the checkpoint it was found; nothing is imported."""
        if class_path in self:
            return class_path
        at = f" at {where}" if where else ""
        raise CheckpointError(
            f"Checkpoint {os.fspath(source)!r} names {class_path!r}{at}, which is not one of {self.description}; "
            f"refusing to import or call it.{' ' + self.hint if self.hint else ''}"
        )

    def check_hparams(self, hparams: Any, source: str | os.PathLike, where: str = "hyper_parameters") -> None:
        """Check every class path in (nested) hyper-parameters read from ``source``: ``class_path`` /
        ``_class_path`` / ``_instantiator`` values, and dotted strings naming an importable module (jsonargparse
        turns such strings into callables for ``Callable``-typed arguments)."""
        if isinstance(hparams, dict) or hasattr(hparams, "items"):
            for k, v in hparams.items():
                key = f"{where}.{k}"
                if k in ("class_path", "_class_path", "_instantiator"):
                    self.check(v, source, key)
                else:
                    self.check_hparams(v, source, key)
        elif isinstance(hparams, (list, tuple)):
            for i, v in enumerate(hparams):
                self.check_hparams(v, source, f"{where}[{i}]")
        elif isinstance(hparams, str) and hparams not in self and _is_module_path(hparams):
            self.check(hparams, source, where)
