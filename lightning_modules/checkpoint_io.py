"""Reading checkpoints that may come from elsewhere: a file never gets to choose the code that runs.

Every checkpoint is read by :func:`common.checkpoint.read_checkpoint` (re-exported here as :func:`load_checkpoint`,
with :class:`~common.checkpoint.CheckpointError`), whatever its scheme (a local path, ``file://``, ``http(s)://``,
``s3://``/``gs://`` ... through ``fsspec``): ``torch.load(weights_only=True)`` with errors naming the file. The
trainers ``cli.py`` builds read and write through :class:`SafeCheckpointIO` (the same reader; atomic writes), and
a path stored in a checkpoint that would only initialise weights (:data:`WEIGHT_FILE_ARGS`) is dropped, not opened.

``torch.load(weights_only=True)`` keeps pickled code out of the tensors, but a checkpoint's ``hyper_parameters``
still hold *names* of classes (``{"class_path": "models.hgcl.HGCL", ...}``, Lightning's ``_class_path`` and
``_instantiator``) that LightningCLI / ``load_from_checkpoint`` / :func:`lightning_modules.ldm.load_ldm` import and
call. Every such name read from a file is checked (:class:`common.checkpoint.AllowList`, the one mechanism) against
:data:`PROJECT_CLASSES`, an allow-list DERIVED from the project:

- the project's systems and nets: every ``nn.Module`` / ``LightningModule`` class defined in the packages
  :data:`PROJECT_PACKAGES` (walked with ``pkgutil``; importing our own modules runs only our own code); the nets and
  their parts are :func:`models.registry.model_classes`, the one derivation of ``models/``'s classes, which
  ``pipelines.recording`` (``MSA_NETS``, ``MODEL_PARTS``) checks against too;
- the library classes those systems take: the classes named in the type hints of the systems' ``__init__``
  (``OptimizerCallable`` -> ``torch.optim.Optimizer``, ``LRSchedulerCallable`` -> ``LRScheduler`` /
  ``ReduceLROnPlateau``), with their public subclasses from the same library; ``nn.Module``-typed arguments accept
  the project's nets only;
- Lightning's own list of trusted instantiators (``lightning.pytorch.core.saving._ALLOWED_INSTANTIATORS``).

Anything else (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is refused with a
:class:`CheckpointError` naming the file and the class path, BEFORE anything is imported. Dotted strings elsewhere
in the hyper-parameters that name an importable module (jsonargparse turns such strings into callables for
``Callable``-typed arguments) count as class paths too. The face nets a face checkpoint may name
(:data:`models.registry.FACE_NETS`, read by ``models.shipped``) are a subset of this list.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import os
import sys
import typing
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.plugins import CheckpointIO, TorchCheckpointIO
from lightning.pytorch.plugins.io.wrapper import _WrappingCheckpointIO
from torch import nn

from common.checkpoint import (
    WEIGHT_FILE_ARGS,
    AllowList,
    CheckpointError,
    CheckpointIsADirectoryError,
    MapLocation,
    local_checkpoint_path,
    package_classes,
    read_checkpoint,
)
from common.io import atomic_path
from models.registry import model_classes

__all__ = [
    "PROJECT_CLASSES",
    "PROJECT_PACKAGES",
    "WEIGHT_FILE_ARGS",
    "CheckpointError",
    "CheckpointIsADirectoryError",
    "SafeCheckpointIO",
    "allowed_class_paths",
    "check_class_path",
    "check_hparams_class_paths",
    "checkpoint_classes",
    "drop_weight_files",
    "load_checkpoint",
    "load_system",
    "local_checkpoint_path",
    "read_checkpoint",
    "require_system",
    "with_safe_checkpoint_io",
]

#: Packages whose classes a checkpoint may name (the project's systems and nets).
PROJECT_PACKAGES: tuple[str, ...] = ("lightning_modules", "models")

log = logging.getLogger(__name__)

#: Reading is :func:`common.checkpoint.read_checkpoint`; ``load_checkpoint`` is its name here.
load_checkpoint = read_checkpoint


# ----------------------------------------------------------------------------------------------------------
# Lightning's checkpoint plugin
# ----------------------------------------------------------------------------------------------------------
class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with the project's reader and an atomic writer.

    - ``load_checkpoint`` goes through :func:`load_checkpoint` (``weights_only=True`` whatever the scheme:
      Lightning's own loader unpickles ``http(s)://`` checkpoints with ``weights_only=False``), so
      ``trainer.fit/validate/test/predict(ckpt_path=...)`` never runs code from a checkpoint;
    - ``save_checkpoint`` writes a local checkpoint to a temporary name in its folder and renames it
      (:func:`common.io.atomic_path`), so a full disk or a crash never leaves a truncated file under a checkpoint's
      name; the error names the file. Remote paths keep Lightning's fsspec transaction.

    ``cli.py`` installs it in every trainer it builds (:func:`with_safe_checkpoint_io`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: dict[str, dict[str, Any]] = {}

    def preload(self, path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
        """Hand over a checkpoint already read from ``path`` (with :func:`load_checkpoint`): the trainer's load of
        that path takes it instead of reading (downloading) the file again. Used once, then dropped."""
        self._preloaded[os.fspath(path)] = checkpoint

    def preloaded(self, path: str | os.PathLike, read: typing.Callable[[str], dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint handed over for ``path`` (kept for the trainer), else ``read(path)``."""
        ckpt = self._preloaded.get(os.fspath(path))
        return ckpt if ckpt is not None else read(os.fspath(path))

    def load_checkpoint(self, path: str | os.PathLike, map_location: MapLocation = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint at ``path`` (a local path or any fsspec URL), always ``weights_only=True``."""
        if weights_only is False:
            log.warning("Checkpoint %s: weights_only=False is ignored; checkpoints are loaded weights-only", path)
        ckpt = self._preloaded.pop(os.fspath(path), None)
        if ckpt is not None:
            return ckpt
        return load_checkpoint(path, map_location="cpu" if map_location is None else map_location)

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (local) or through fsspec (remote).

        Raises:
            TypeError: ``storage_options`` given (not supported, as in ``TorchCheckpointIO``).
            OSError: the write failed (e.g. no space left on device), naming the file; nothing is left under
                ``path`` (a previous checkpoint there is kept).
        """
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint does not take storage_options")
        local = local_checkpoint_path(path)
        try:
            if local is None:
                super().save_checkpoint(checkpoint, path)
                return
            with atomic_path(local, suffix=".tmp") as tmp:
                torch.save(checkpoint, tmp)
        except OSError as e:
            raise OSError(
                e.errno, f"Writing checkpoint {os.fspath(path)!r} failed ({e.strerror or e}); no partial "
                "checkpoint was left under that name"
            ) from e


def with_safe_checkpoint_io(plugins: Any, strategy: Any = None) -> tuple[list[Any], SafeCheckpointIO | None]:
    """``Trainer(plugins=...)`` with a :class:`SafeCheckpointIO`, and that plugin (``None`` when the user's own
    checkpoint plugin stays in charge).

    The user's plugins are kept: an ``AsyncCheckpointIO`` (or other wrapper) without a base plugin gets the safe one
    as its base; a checkpoint plugin of the user's own (in ``plugins`` or set on a ``Strategy`` instance) is left in
    place with a warning, since it loads checkpoints without the project's checks.

    Args:
        plugins: the trainer's ``plugins`` argument (``None``, one plugin, or a list).
        strategy: the trainer's ``strategy`` argument (a name or a ``Strategy`` instance).
    """
    out = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    own = [p for p in out if isinstance(p, CheckpointIO)]
    if own == [] and getattr(strategy, "_checkpoint_io", None) is not None:
        own = [strategy._checkpoint_io]
    if not own:
        safe = SafeCheckpointIO()
        return [*out, safe], safe
    io_plugin = own[0]
    if isinstance(io_plugin, _WrappingCheckpointIO):
        if io_plugin.checkpoint_io is None:
            io_plugin.checkpoint_io = SafeCheckpointIO()
        io_plugin = io_plugin.checkpoint_io
    if isinstance(io_plugin, SafeCheckpointIO):
        return out, io_plugin
    log.warning("Checkpoint plugin %s (given by the config) loads and saves checkpoints without the project's "
                "checks (weights_only, atomic writes); use lightning_modules.checkpoint_io.SafeCheckpointIO as its "
                "base to keep them", type(io_plugin).__name__)
    return out, None


# ----------------------------------------------------------------------------------------------------------
# Paths stored in a checkpoint
# ----------------------------------------------------------------------------------------------------------
# WEIGHT_FILE_ARGS is common.checkpoint's (pretrained / pretrained_file / image_weights / landmark_weights). Not
# listed, on purpose: FrozenImageEncoder.checkpoint_path (its weights are not saved in the system's checkpoint),
# LitVAE.pretrained_dir (it also fixes the architecture) and LitLDM.vae_path (handled by LitLDM.inference_settings).


def drop_weight_files(hparams: dict[str, Any], explicit: dict[str, Any] | None = None,
                      where: str = "") -> tuple[dict[str, Any], list[str]]:
    """A copy of a checkpoint's hyper-parameters with every :data:`WEIGHT_FILE_ARGS` value (at any depth, e.g.
    ``net.init_args.pretrained_file``) set to ``None``, or to the value the user gave explicitly at the same place
    in ``explicit`` (the config's ``model.init_args``); and the dotted names that were dropped.

    A path read from a checkpoint is data: opening it would read whatever file the checkpoint's author chose.
    """
    out = copy.deepcopy(hparams)
    dropped: list[str] = []

    def walk(node: Any, given: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                sub = given.get(k) if isinstance(given, dict) else None
                name = f"{prefix}{k}"
                if k in WEIGHT_FILE_ARGS and v is not None:
                    user = given.get(k) if isinstance(given, dict) and k in given else None
                    if v != user:
                        node[k] = user
                        dropped.append(name)
                else:
                    walk(v, sub, name + ".")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, None, f"{prefix[:-1]}[{i}].")

    walk(out, explicit or {}, where)
    return out, dropped


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
    importable from (re-exports such as ``models.diffusion.FrozenImageEncoder`` kept for saved configs).

    The classes of ``models/`` are :func:`models.registry.model_classes` (the one derivation, which
    ``pipelines.recording`` checks against too); the systems are walked here, in their own package."""
    found = dict(model_classes())
    for pkg_name in PROJECT_PACKAGES:
        if pkg_name != "models":
            found.update(package_classes(pkg_name, nn.Module, homes=PROJECT_PACKAGES))
    return list(dict.fromkeys(found.values())), set(found)


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


#: The project-wide allow-list (module docstring), derived from the project's classes by
#: :func:`allowed_class_paths`; checked with the one mechanism of :class:`common.checkpoint.AllowList`.
PROJECT_CLASSES = AllowList(
    "the project's systems or nets or the library classes they use", allowed_class_paths,
    hint="Only load checkpoints you trust; a model of your own must live in the project's packages "
         f"{list(PROJECT_PACKAGES)}.",
)


def check_class_path(class_path: Any, source: str | Path, where: str = "") -> None:
    """``CheckpointError`` unless ``class_path`` (read from ``source``) is on :data:`PROJECT_CLASSES`."""
    PROJECT_CLASSES.check(class_path, source, where)


def check_hparams_class_paths(hparams: Any, source: str | Path, where: str = "hyper_parameters") -> None:
    """Check every class path in (nested) hyper-parameters read from ``source`` against :data:`PROJECT_CLASSES`
    (:meth:`common.checkpoint.AllowList.check_hparams`)."""
    PROJECT_CLASSES.check_hparams(hparams, source, where)


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
