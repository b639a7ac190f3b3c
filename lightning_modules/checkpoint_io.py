"""Reading checkpoints that may come from elsewhere: a file never gets to choose the code that runs.

``torch.load(weights_only=True)`` keeps pickled code out of the tensors, but a checkpoint's ``hyper_parameters``
still hold *names* of classes (``{"class_path": "models.hgcl.HGCL", ...}``, Lightning's ``_class_path`` and
``_instantiator``) that LightningCLI / ``load_from_checkpoint`` / :func:`lightning_modules.ldm.load_ldm` import and
call. Every such name read from a file is checked here against an allow-list DERIVED from the project:

- the project's systems and nets: every ``nn.Module`` / ``LightningModule`` class defined in the packages
  :data:`PROJECT_PACKAGES` (walked with ``pkgutil``; importing our own modules runs only our own code);
- the library classes those systems take: the classes named in the type hints of the systems' ``__init__``
  (``OptimizerCallable`` -> ``torch.optim.Optimizer``, ``LRSchedulerCallable`` -> ``LRScheduler`` /
  ``ReduceLROnPlateau``), with their public subclasses from the same library; ``nn.Module``-typed arguments accept
  the project's nets only;
- Lightning's own list of trusted instantiators (``lightning.pytorch.core.saving._ALLOWED_INSTANTIATORS``).

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is refused with a
:class:`CheckpointError` naming the file and the class path, BEFORE anything is imported. Dotted strings elsewhere
in the hyper-parameters that name an importable module (jsonargparse turns such strings into callables for
``Callable``-typed arguments) count as class paths too.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import pickle
import pkgutil
import re
import sys
import typing
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

__all__ = [
    "PROJECT_PACKAGES",
    "CheckpointError",
    "allowed_class_paths",
    "check_class_path",
    "check_hparams_class_paths",
    "checkpoint_classes",
    "load_checkpoint",
    "load_system",
    "require_system",
]

#: Packages whose classes a checkpoint may name (the project's systems and nets).
PROJECT_PACKAGES: tuple[str, ...] = ("lightning_modules", "models")

_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (unreadable, the wrong model, or naming code that is not allowed)."""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: truncated / corrupted / not a checkpoint, or it holds objects that need code to load.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Checkpoint {str(p)!r} does not exist")
    try:
        ckpt = torch.load(str(p), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"Checkpoint {str(p)!r} was refused: it holds objects that would run code when loaded "
            f"(weights_only=True): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    except (OSError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError, AttributeError) as e:
        raise CheckpointError(
            f"Checkpoint {str(p)!r} is truncated or corrupted and cannot be read ({p.stat().st_size} bytes): "
            f"{type(e).__name__}: {e}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint {str(p)!r} is not a Lightning checkpoint (a {type(ckpt).__name__})")
    return ckpt


# ----------------------------------------------------------------------------------------------------------
# The allow-list
# ----------------------------------------------------------------------------------------------------------
def _class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _public_paths(cls: type) -> set[str]:
    """The defining path of ``cls`` plus the packages above it that re-export it (``torch.optim.Adam`` for
    ``torch.optim.adam.Adam``, ``models.hgcl.HGCL`` for ``models.hgcl.hgcl.HGCL``)."""
    paths = {_class_path(cls)}
    parts = cls.__module__.split(".")
    for i in range(1, len(parts)):
        pkg = sys.modules.get(".".join(parts[:i]))
        if pkg is not None and getattr(pkg, cls.__name__, None) is cls:
            paths.add(f"{pkg.__name__}.{cls.__name__}")
    return paths


def _project_classes() -> tuple[list[type], set[str]]:
    """The ``nn.Module`` classes defined in :data:`PROJECT_PACKAGES`, and every project module path they are
    importable from (re-exports such as ``models.diffusion.FrozenImageEncoder`` kept for saved configs)."""
    classes: list[type] = []
    paths: set[str] = set()
    for pkg_name in PROJECT_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names = [pkg_name] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
        for name in names:
            mod = importlib.import_module(name)
            for attr, obj in vars(mod).items():
                if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
                    continue
                if obj.__module__.split(".")[0] not in PROJECT_PACKAGES or attr != obj.__name__:
                    continue
                paths.add(f"{name}.{attr}")
                if obj.__module__ == name:
                    classes.append(obj)
    return classes, paths


def _hinted_classes(fn: Any) -> set[type]:
    """Classes named anywhere in the type hints of ``fn`` (through ``Optional``, ``Union``, ``Callable[..., T]``)."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001 - unresolvable forward references: nothing derivable
        return set()
    out: set[type] = set()
    todo = list(hints.values())
    while todo:
        t = todo.pop()
        if inspect.isclass(t) and t.__module__.split(".")[0] not in sys.stdlib_module_names:
            out.add(t)
        todo.extend(a for a in typing.get_args(t) if a is not Ellipsis and not isinstance(a, list))
        for a in typing.get_args(t):
            if isinstance(a, list):
                todo.extend(a)
    return out


def _library_subclasses(base: type) -> set[type]:
    """``base`` and its public subclasses defined in the library of ``base`` or in the project's packages (the
    project's own schedulers, e.g. ``lightning_modules.schedulers.WarmupCosineLR``, subclass torch's)."""
    homes = {base.__module__.split(".")[0], *PROJECT_PACKAGES}
    out, todo = {base}, [base]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in out and sub.__module__.split(".")[0] in homes and not sub.__name__.startswith("_"):
                out.add(sub)
                todo.append(sub)
    return out


@functools.cache
def allowed_class_paths() -> frozenset[str]:
    """The class paths a checkpoint may name (module docstring)."""
    from lightning.pytorch.core.saving import _ALLOWED_INSTANTIATORS

    project, allowed = _project_classes()
    for system in (c for c in project if issubclass(c, LightningModule)):
        for hinted in _hinted_classes(system.__init__):
            if issubclass(hinted, nn.Module) or hinted.__module__.split(".")[0] in PROJECT_PACKAGES:
                continue  # nn.Module-typed arguments: the project's nets only (already listed)
            allowed |= {p for c in _library_subclasses(hinted) for p in _public_paths(c)}
    return frozenset(allowed | set(_ALLOWED_INSTANTIATORS))


def check_class_path(class_path: Any, source: str | Path, where: str = "") -> None:
    """``CheckpointError`` unless ``class_path`` (read from ``source``) is on the allow-list."""
    if not isinstance(class_path, str) or class_path not in allowed_class_paths():
        at = f" at {where}" if where else ""
        raise CheckpointError(
            f"Checkpoint {str(source)!r} names {class_path!r}{at}, which is not one of the project's systems or "
            "nets or the library classes they use; refusing to import or call it. Only load checkpoints you "
            "trust; a model of your own must live in the project's packages "
            f"{list(PROJECT_PACKAGES)}."
        )


def _is_module_path(s: str) -> bool:
    if not _DOTTED.match(s):
        return False
    try:
        return importlib.util.find_spec(s.split(".")[0]) is not None  # top level only: imports nothing
    except (ImportError, ValueError):
        return False


def check_hparams_class_paths(hparams: Any, source: str | Path, where: str = "hyper_parameters") -> None:
    """Check every class path in (nested) hyper-parameters read from ``source``: ``class_path`` / ``_class_path``
    / ``_instantiator`` values and dotted strings naming an importable module."""
    if isinstance(hparams, dict) or hasattr(hparams, "items"):
        for k, v in hparams.items():
            key = f"{where}.{k}"
            if k in ("class_path", "_class_path", "_instantiator"):
                check_class_path(v, source, key)
            else:
                check_hparams_class_paths(v, source, key)
    elif isinstance(hparams, (list, tuple)):
        for i, v in enumerate(hparams):
            check_hparams_class_paths(v, source, f"{where}[{i}]")
    elif isinstance(hparams, str) and _is_module_path(hparams) and hparams not in allowed_class_paths():
        check_class_path(hparams, source, where)


# ----------------------------------------------------------------------------------------------------------
# Which model a checkpoint holds
# ----------------------------------------------------------------------------------------------------------
def checkpoint_classes(ckpt: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(system class path, net class path)`` recorded in a checkpoint (``None`` when it does not say)."""
    hp = ckpt.get("hyper_parameters") or {}
    system = hp.get("_class_path")
    net = hp.get("net")
    net_path = net.get("class_path") if isinstance(net, dict) else None
    if net_path is None and isinstance(ckpt.get("ldm_modules"), dict):
        spec = ckpt["ldm_modules"].get("net")
        net_path = spec.get("class_path") if isinstance(spec, dict) else None
    return system, net_path


def require_system(ckpt: dict[str, Any], source: str | Path, cls: type[LightningModule],
                   state_prefixes: tuple[str, ...] = ()) -> None:
    """``CheckpointError`` unless the checkpoint holds a ``cls`` system: its recorded ``_class_path`` (written by
    LightningCLI) when present, else its state-dict keys must all start with one of ``state_prefixes`` and cover
    each of them."""
    system, net = checkpoint_classes(ckpt)
    want = _class_path(cls)
    if system is not None:
        if system != want:
            raise CheckpointError(
                f"Checkpoint {str(source)!r} holds a {system} (net {net or 'not recorded'}), not a {want}"
            )
        return
    keys = list((ckpt.get("state_dict") or {}).keys())
    if state_prefixes and (
        not keys
        or any(not k.startswith(state_prefixes) for k in keys)
        or any(not any(k.startswith(p) for k in keys) for p in state_prefixes)
    ):
        seen = sorted({k.split(".")[0] for k in keys})
        raise CheckpointError(
            f"Checkpoint {str(source)!r} is not a {want} checkpoint: its weights are under {seen}, expected "
            f"{list(state_prefixes)}"
        )


def load_system(cls: type[LightningModule], path: str | Path, state_prefixes: tuple[str, ...] = (),
                **kwargs: Any) -> LightningModule:
    """``cls.load_from_checkpoint(path, **kwargs)`` after checking the file: readable, a ``cls`` checkpoint, and
    naming only allowed class paths (module docstring)."""
    ckpt = load_checkpoint(path, kwargs.get("map_location") or "cpu")
    require_system(ckpt, path, cls, state_prefixes)
    check_hparams_class_paths(ckpt.get("hyper_parameters") or {}, path)
    kwargs.setdefault("weights_only", True)
    return cls.load_from_checkpoint(str(path), **kwargs)
