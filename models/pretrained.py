"""Where a face net's initial weights come from: timm's hub, a local weight file, or a checkpoint of this project.

One value, ``pretrained: str | None``, used by every face net (:class:`models.timm_classifier.TimmClassifier`,
:class:`models.swin_two_branch.TwoBranchSwin`, :class:`models.poster.POSTER`):

* ``None``: random initialisation.
* ``"hub"`` (or ``"timm"``): timm's pretrained weights of the architecture, downloaded once by ``huggingface_hub`` (or
  ``torch.hub`` for URL-only weights) into their usual caches and read from there afterwards. With
  ``HF_HUB_OFFLINE=1`` and nothing cached it fails at once; without a network the download error is turned into
  the same message, which names the alternative: a local file.
* a weight file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``): a state dict in timm's layout of the architecture
  (what the hub serves, or ``torch.save(timm_model.state_dict())``), read weights-only
  (:func:`common.checkpoint.read_checkpoint` / safetensors). timm adapts it as it adapts hub weights: the classifier
  is dropped when the class count differs, the patch embedding is summed for another ``in_chans``, Swin position
  tables are resized.
* a shipped model's name (``"fer2013_resnet18s"``, :data:`models.shipped.SHIPPED_MODELS`): its checkpoint inside the
  package, as below (so a config needs no path that depends on the working directory);
* a ``.ckpt`` of this project (a :class:`lightning_modules.fer.LitFER` checkpoint): the whole net's weights, read
  with :func:`common.checkpoint.read_checkpoint` (weights-only; this module never imports ``lightning``):
  ``state_dict`` minus its ``net.`` prefix. The classifier head is dropped when the class count differs (logged), so
  a net trained on FER2013 initialises one trained on a small set; any other mismatch is an error naming the file and
  the first keys.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlparse

import timm
import torch
from torch import Tensor, nn

from common.checkpoint import CheckpointError, read_checkpoint

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "HUB_VALUES",
    "WEIGHT_SUFFIXES",
    "HubWeightsUnavailableError",
    "PretrainedSource",
    "PretrainedWeightsError",
    "create_timm_model",
    "load_net_checkpoint",
    "read_state_dict",
    "resolve_pretrained",
]

log = logging.getLogger(__name__)

#: Values of ``pretrained`` that mean timm's hub weights.
HUB_VALUES: tuple[str, ...] = ("hub", "timm")
#: Suffixes of plain weight files (a state dict in timm's layout).
WEIGHT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")
#: Suffixes of checkpoints of this project (LitFER: ``state_dict`` with ``net.`` keys).
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".ckpt",)
_NET_PREFIX = "net."


class PretrainedWeightsError(CheckpointError):
    """A weight file or checkpoint that cannot initialise the net (unreadable, the wrong layout, mismatching keys)."""


class HubWeightsUnavailableError(RuntimeError):
    """timm's hub weights were asked for but cannot be had (offline and not cached, or the download failed)."""


@dataclass(frozen=True)
class PretrainedSource:
    """A resolved ``pretrained`` value.

    Attributes:
        kind: ``"hub"`` (timm's weights), ``"file"`` (a state dict in timm's layout) or ``"checkpoint"`` (a
            checkpoint of this project, the whole net).
        path: the file (``None`` for the hub).
    """

    kind: Literal["hub", "file", "checkpoint"]
    path: Path | None = None

    def __str__(self) -> str:
        return "timm hub" if self.path is None else str(self.path)


def resolve_pretrained(pretrained: str | None, owner: str) -> PretrainedSource | None:
    """Resolve a ``pretrained`` value (see the module docstring); ``None`` stays ``None``.

    Args:
        pretrained: ``None``, ``"hub"``/``"timm"``, or a path to a weight file or a project checkpoint.
        owner: the class named in errors.

    Raises:
        FileNotFoundError: a path that does not exist (the message lists the accepted values).
        ValueError: a file whose suffix is neither a weight file's nor a checkpoint's.
    """
    if pretrained is None:
        return None
    value = str(pretrained)
    if value.lower() in HUB_VALUES:
        return PretrainedSource("hub")
    from models.shipped import SHIPPED_MODELS, shipped_checkpoint

    if value in SHIPPED_MODELS:
        return PretrainedSource("checkpoint", shipped_checkpoint(value))
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{owner}: pretrained={value!r} is neither 'hub' nor an existing file (accepted: 'hub' for timm's "
            f"weights, a weight file {'/'.join(WEIGHT_SUFFIXES)}, a {'/'.join(CHECKPOINT_SUFFIXES)} of this project, "
            f"or a shipped model's name: {', '.join(sorted(SHIPPED_MODELS))})"
        )
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return PretrainedSource("checkpoint", path)
    if suffix in WEIGHT_SUFFIXES:
        return PretrainedSource("file", path)
    raise ValueError(f"{owner}: pretrained file {str(path)!r} has suffix {suffix!r}; expected a weight file "
                     f"({', '.join(WEIGHT_SUFFIXES)}) or a checkpoint of this project ({', '.join(CHECKPOINT_SUFFIXES)})")


def _read_weights(path: Path) -> Any:
    """:func:`common.checkpoint.read_checkpoint` on the CPU, its errors as :class:`PretrainedWeightsError`."""
    try:
        return read_checkpoint(path, map_location="cpu")
    except CheckpointError as err:
        raise PretrainedWeightsError(str(err)) from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A state dict read weights-only from ``.safetensors`` or a ``torch.save`` file.

    A dict holding ``"state_dict"`` or ``"model"`` (common training-script layouts) is unwrapped; a ``module.``
    prefix (``DataParallel``) is stripped.

    Raises:
        PretrainedWeightsError: unreadable, code-carrying, or not a mapping of names to tensors (naming the file).
    """
    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise PretrainedWeightsError(f"{str(path)!r} is not a readable safetensors file ({err})") from None
    else:
        obj = _read_weights(path)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise PretrainedWeightsError(f"{str(path)!r} holds no state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE"):
        return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_location(model_name: str) -> tuple[str, Any]:
    """``(description, cfg)`` of timm's pretrained weights for ``model_name`` (ValueError when it has none)."""
    cfg = timm.get_pretrained_cfg(model_name, allow_unregistered=False) if timm.is_model(model_name) else None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ValueError(f"timm has no pretrained weights for {model_name!r}")
    return (f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url), cfg


def _hub_cached(cfg: Any) -> bool:
    """Whether timm's weights described by ``cfg`` are in the local huggingface / torch.hub cache."""
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        names = ["model.safetensors", cfg.hf_hub_filename or "pytorch_model.bin"]
        return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, n), str) for n in names)
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name).is_file()


def _hub_message(owner: str, model_name: str, where: str, reason: str) -> str:
    return (f"{owner}: pretrained='hub' needs timm's weights for {model_name!r} ({where}), but {reason}. Run once "
            f"with a network to cache them, or download the file elsewhere and pass it: pretrained="
            f"'/path/to/{model_name}.safetensors' (a local weight file; .pth/.bin work too)")


def create_timm_model(model_name: str, source: PretrainedSource | None, owner: str, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with weights from ``source``: the hub or a weight file (a checkpoint of this project is
    loaded by the caller into the whole net, so here it builds a randomly initialised model, as ``None`` does).

    Args:
        model_name: timm entry point.
        source: from :func:`resolve_pretrained`.
        owner: the class named in errors.
        **kwargs: further ``timm.create_model`` arguments (``num_classes``, ``in_chans``, ``features_only`` ...).

    Raises:
        HubWeightsUnavailableError: hub weights offline and not cached, or their download failed.
        PretrainedWeightsError: the weight file is unreadable or does not fit ``model_name`` (naming the file and
            the first mismatching keys).
    """
    if source is None or source.kind == "checkpoint":
        return timm.create_model(model_name, pretrained=False, **kwargs)
    if source.kind == "hub":
        where, cfg = _hub_location(model_name)
        if _offline() and not _hub_cached(cfg):
            raise HubWeightsUnavailableError(_hub_message(owner, model_name, where,
                                                          "the hub is offline (HF_HUB_OFFLINE=1) and they are not "
                                                          "in the local cache"))
        log.info("%s: loading timm's pretrained %s weights (%s)", owner, model_name, where)
        try:
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except OSError as err:  # connection errors, LocalEntryNotFoundError, URLError, HTTP errors
            raise HubWeightsUnavailableError(_hub_message(owner, model_name, where,
                                                          f"they could not be fetched ({type(err).__name__}: "
                                                          f"{str(err).splitlines()[0] if str(err) else ''})")) from err
    state = read_state_dict(source.path)
    log.info("%s: loading %s weights from %s", owner, model_name, source.path)
    where = f"{owner}: weight file {str(source.path)!r} does not fit timm model {model_name!r}"
    try:
        with _TimmLoadReport() as report:
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"state_dict": state},
                                      **kwargs)
    except RuntimeError as err:  # load_state_dict: size mismatches, missing / unexpected keys
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()][:4]
        raise PretrainedWeightsError(f"{where}: {' '.join(lines)[:600]}") from None
    # timm loads non-strictly when it drops the classifier (another class count): keys it could not place are only
    # logged there, so a file of another architecture (resnet34 into resnet18) would half-load without a word
    heads: list[str] = []
    for cfg in (getattr(model, "pretrained_cfg", None) or {}, timm.get_pretrained_cfg(model_name) or {}):
        classifier = (cfg.get("classifier") if isinstance(cfg, dict) else getattr(cfg, "classifier", None)) or ()
        heads += [classifier] if isinstance(classifier, str) else list(classifier)
    missing = [k for k in report.missing if not any(k == h or k.startswith(h + ".") for h in heads)]
    problems = [f"{len(keys)} {what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                for what, keys in (("keys missing from the file", missing),
                                   ("keys the model does not have", report.unexpected)) if keys]
    if problems:
        raise PretrainedWeightsError(f"{where}: {'; '.join(problems)}")
    return model


class _TimmLoadReport(logging.Handler):
    """Collects the missing / unexpected keys that timm's ``load_pretrained`` logs (it raises only when strict)."""

    _LOGGER = "timm.models._builder"
    _PATTERN = re.compile(r"^(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading pretrained")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self._level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        m = self._PATTERN.match(record.getMessage())
        if m:
            keys = [k for k in m.group(2).split(", ") if k]
            (self.missing if m.group(1) == "Missing" else self.unexpected).extend(keys)

    def __enter__(self) -> Self:
        logger = logging.getLogger(self._LOGGER)
        self._level = logger.level
        logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logger = logging.getLogger(self._LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._level)


def load_net_checkpoint(net: nn.Module, path: str | Path, head_prefixes: Sequence[str], owner: str,
                        shown: int = 5) -> tuple[list[str], list[str]]:
    """Load a checkpoint of this project (``state_dict`` with ``net.`` keys) into ``net``.

    Keys under ``head_prefixes`` (the classifier) whose shapes differ (another class count) keep ``net``'s new
    initialisation; every other key must match ``net`` exactly.

    Args:
        net: the freshly built net.
        path: the ``.ckpt`` file.
        head_prefixes: module paths of the classifier head inside ``net`` (``"model.fc"``, ``"head"`` ...).
        owner: the class named in errors.
        shown: how many keys an error lists.

    Returns:
        ``(loaded keys, skipped head keys)``.

    Raises:
        FileNotFoundError: no such file.
        PretrainedWeightsError: unreadable, not a checkpoint of this project, or keys/shapes that do not fit (naming
            the file and the first keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{owner}: checkpoint {str(path)!r} does not exist")
    ckpt = _read_weights(path)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise PretrainedWeightsError(f"{owner}: {str(path)!r} is not a checkpoint of this project (no 'state_dict'; "
                                     f"a plain weight file needs one of the suffixes {', '.join(WEIGHT_SUFFIXES)})")
    weights = {k[len(_NET_PREFIX):]: v for k, v in state.items() if k.startswith(_NET_PREFIX)}
    if not weights:
        raise PretrainedWeightsError(f"{owner}: checkpoint {str(path)!r} holds no '{_NET_PREFIX}*' weights (not a "
                                     "face-model checkpoint of this project)")

    def in_head(key: str) -> bool:
        return any(key == p or key.startswith(p + ".") for p in head_prefixes)

    own = net.state_dict()
    mismatched = [k for k in weights if k in own and weights[k].shape != own[k].shape]
    skipped = [k for k in mismatched if in_head(k)]
    problems = []
    bad_shapes = [f"{k} {tuple(weights[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched if not in_head(k)]
    missing = [k for k in own if k not in weights and not in_head(k)]
    unexpected = [k for k in weights if k not in own and not in_head(k)]
    for what, keys in (("shape mismatches (checkpoint vs net)", bad_shapes), ("keys missing from the checkpoint",
                                                                              missing),
                       ("keys the net does not have", unexpected)):
        if keys:
            problems.append(f"{len(keys)} {what}: {', '.join(keys[:shown])}{' ...' if len(keys) > shown else ''}")
    if problems:
        raise PretrainedWeightsError(f"{owner}: checkpoint {str(path)!r} does not fit this net (another architecture "
                                     f"or size?): {'; '.join(problems)}")
    loaded = [k for k in weights if k in own and k not in skipped]
    net.load_state_dict({k: weights[k] for k in loaded}, strict=False)
    log.info("%s: initialised %d tensors from %s", owner, len(loaded), path)
    if skipped:
        log.info("%s: kept the new initialisation of the classifier (%s): the checkpoint's has another shape "
                 "(class count)", owner, ", ".join(skipped))
    return loaded, skipped
