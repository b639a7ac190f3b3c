"""``--ckpt_path`` of ``cli.py``: a checkpoint read once, checked, and merged into the run's config.

What LightningCLI does by itself (merge the checkpoint's ``hyper_parameters`` into the model config, unchecked) is
replaced by :func:`checkpoint_model_config`:

1. the file is read weights-only (a local path or any fsspec URL; errors name it), every class path it names must be
   on the project's allow-list (:mod:`lightning_modules.checkpoint_io`), and its system and net classes must be the
   config's (``predict`` with a system whose ``predict_net_from_checkpoint`` is true, ``LitFER``, takes the
   checkpoint's net whatever net the config names);
2. the checkpoint's hyper-parameters replace the config's model settings, EXCEPT the system's
   ``inference_settings`` (``LitLDM``: sampler, steps, guidance, ``vae_path``, the training-loss settings), which
   always come from the run's config (a predict config, its defaults or the command line): they do not change what
   the weights mean. Weight files the checkpoint names are never opened (:func:`drop_weight_files`);
3. data-derived settings (``cli.DATA_LINKS``) follow the checkpoint (:func:`data_settings_from_checkpoint`): the
   datamodule's source value is set to the trained model's, and one given on the command line that differs is an
   error naming the flag to drop.

One line reports which settings came from the checkpoint.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from lightning_modules.checkpoint_io import (
    CheckpointError,
    check_hparams_class_paths,
    checkpoint_classes,
    drop_weight_files,
    load_checkpoint,
    local_checkpoint_path,
)

__all__ = ["apply_face_preprocessing", "as_dict", "best_checkpoint", "check_checkpoint_model", "checkpoint_model_config",
           "data_settings_from_checkpoint", "read_checked_checkpoint", "resolve_class"]

log = logging.getLogger(__name__)


def as_dict(ns: Any) -> dict[str, Any]:
    """A jsonargparse ``Namespace`` (or dict / None) as a nested dict."""
    if ns is None:
        return {}
    return ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)


def resolve_class(class_path: str) -> type | None:
    """Class of an (already allow-listed or user-written) class path; ``None`` when it does not import."""
    mod, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError, ValueError):
        return None


def check_checkpoint_model(ckpt: dict[str, Any], path: str | Path, model_cfg: Any, subcommand: str) -> None:
    """``CheckpointError`` when the checkpoint's system or net class differs from the config's, naming both."""
    ckpt_system, ckpt_net = checkpoint_classes(ckpt)
    cfg_system = model_cfg.get("class_path") if hasattr(model_cfg, "get") else None
    init = model_cfg.get("init_args") if hasattr(model_cfg, "get") else None
    net = init.get("net") if hasattr(init, "get") else None
    cfg_net = net.get("class_path") if hasattr(net, "get") else None
    system_cls = resolve_class(ckpt_system) if ckpt_system else None
    net_from_ckpt = (subcommand == "predict" and ckpt_net is not None
                     and getattr(system_cls, "predict_net_from_checkpoint", False))
    if net_from_ckpt and cfg_net not in (None, ckpt_net):
        rank_zero_info(f"Checkpoint {path}: predicting with its net {ckpt_net} (the config names {cfg_net})")
    for what, ours, theirs in (("system", cfg_system, ckpt_system), ("net", cfg_net, ckpt_net)):
        if ours is None or theirs is None or ours == theirs or (what == "net" and net_from_ckpt):
            continue
        a, b = resolve_class(ours), resolve_class(theirs)
        if a is None or a is not b:
            raise CheckpointError(
                f"Checkpoint {str(path)!r} holds a {ckpt_system or '?'} with net {ckpt_net or '?'}, but the "
                f"config asks for a {cfg_system or '?'} with net {cfg_net or '?'} (the {what} class differs). "
                "Use the config the checkpoint was trained with, or a checkpoint of this model."
            )
    if ckpt_system is None and cfg_system is not None:
        # a checkpoint written without the CLI: its hyper-parameters must at least be arguments of the system
        cls = resolve_class(cfg_system)
        hp = {k for k in (ckpt.get("hyper_parameters") or {}) if not k.startswith("_")}
        if cls is not None and hp:
            params = inspect.signature(cls.__init__).parameters
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()) and (unknown := sorted(hp - set(params))):
                raise CheckpointError(f"Checkpoint {str(path)!r} does not hold a {cfg_system}: its hyper-parameters "
                                      f"{unknown} are not arguments of {cls.__name__}")


def read_checked_checkpoint(path: str, model_cfg: Any, subcommand: str) -> dict[str, Any]:
    """The checkpoint at ``path`` (local or any fsspec URL) read once, weights-only, after the checks: class paths on
    the allow-list, the config's system and net."""
    ckpt = load_checkpoint(path)
    check_hparams_class_paths(ckpt.get("hyper_parameters") or {}, path)
    check_checkpoint_model(ckpt, path, model_cfg, subcommand)
    return ckpt


def best_checkpoint(dirpath: str, state_key: str, model_cfg: Any, subcommand: str) -> str:
    """``--ckpt_path best`` outside ``fit``: the best checkpoint's path, read from the run's ``last.ckpt`` (the
    checkpoint callback's saved state under ``state_key``), since a fresh process has not tracked it."""
    local = local_checkpoint_path(dirpath)
    last = str(local / "last.ckpt") if local is not None else f"{dirpath.rstrip('/')}/last.ckpt"
    try:
        state = load_checkpoint(last).get("callbacks", {}).get(state_key, {})
    except FileNotFoundError:
        raise FileNotFoundError(f"--ckpt_path best: {last} does not exist; run fit first or give a checkpoint file") \
            from None
    best = state.get("best_model_path", "")
    if not best:
        raise FileNotFoundError(f"--ckpt_path best: {last} names no best checkpoint")
    try:
        read_checked_checkpoint(best, model_cfg, subcommand)
    except FileNotFoundError:
        raise FileNotFoundError(f"--ckpt_path best: {last} names no existing best checkpoint ({best!r})") from None
    rank_zero_info(f"--ckpt_path best resolved to {best}")
    return best


def checkpoint_model_config(ckpt: dict[str, Any], ckpt_path: str, model_cfg: Any,
                            given: Collection[str] = ()) -> dict[str, Any] | None:
    """The model section to merge over the config (``{"class_path"?, "init_args" or "dict_kwargs"}``), or
    ``None`` when the checkpoint stores no hyper-parameters (module docstring, step 2). A model setting the user
    gave on the command line (``given``: top-level ``model.init_args`` keys) that the checkpoint would replace by
    another value is an error naming the flag: it defines what the trained weights mean."""
    hparams = dict(ckpt.get("hyper_parameters") or {})
    hparams.pop("_instantiator", None)
    if not hparams:
        return None
    cls = resolve_class(model_cfg["class_path"]) if model_cfg.get("class_path") else None
    current = as_dict(model_cfg.get("init_args"))
    hparams, dropped = drop_weight_files(hparams, current)
    if dropped:
        rank_zero_info(f"Checkpoint {ckpt_path}: not opening the weight files it names ({', '.join(dropped)}); "
                       "the weights come from its state_dict")
    kept = [k for k in getattr(cls, "inference_settings", ()) if k in hparams]
    for k in kept:
        hparams.pop(k)
        if k.endswith("_path") and current.get(k) is not None and not Path(current[k]).exists():
            raise FileNotFoundError(f"{cls.__name__}: {k} {current[k]!r} (from the config) does not exist")
    changed = sorted(k for k, v in hparams.items() if not k.startswith("_") and current.get(k) != v)
    for k in changed:
        if k in given:
            raise ValueError(f"--model.init_args.{k} (given explicitly) differs from the value in checkpoint "
                             f"{ckpt_path}, which the trained weights were built with ({hparams[k]!r}): drop the flag")
    same = sorted(k for k in hparams if not k.startswith("_") and k not in changed)
    rank_zero_info(
        f"Checkpoint {ckpt_path}: model settings from the checkpoint: {', '.join(changed) or 'none'}"
        f" (same as the config: {', '.join(same) or 'none'}); kept from the config/command line: "
        f"{', '.join(kept) or 'none'}"
    )
    if "_class_path" in hparams:
        return {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    return hparams


def data_settings_from_checkpoint(data_cfg: Any, hparams: dict[str, Any], links: Sequence[tuple[str, str]],
                                  given: Collection[str], ckpt_path: str) -> None:
    """Set the datamodule's link sources (``links``: ``(data.<attr>, model.init_args.<arg>)``) to the checkpoint's
    values, so the links reproduce the trained net (a data setting such as ``image_size`` would otherwise override
    the checkpoint's, applied after it at instantiation). A source the user gave on the command line (``given``)
    that differs is an error naming the flag; other changes are logged."""
    if data_cfg is None or not data_cfg.get("init_args"):
        return
    init = data_cfg["init_args"]
    for source, target in links:
        src, dst = source.removeprefix("data."), target.removeprefix("model.init_args.")
        if dst not in hparams or hparams[dst] is None or src not in init:
            continue
        value = hparams[dst]
        if isinstance(init[src], (list, tuple)) and isinstance(value, (list, tuple)):
            value = type(init[src])(value)
        if init[src] == value:
            continue
        if src in given:
            raise ValueError(f"--data.init_args.{src} {init[src]!r} (given explicitly) differs from "
                             f"{value!r}, the trained model's in checkpoint {ckpt_path}: drop the flag")
        rank_zero_info(f"Checkpoint {ckpt_path}: data.{src} = {value!r} (the trained model's; the config "
                       f"said {init[src]!r})")
        init[src] = value


def apply_face_preprocessing(model: Any, datamodule: Any, ckpt_path: str | None, preloaded: dict[str, Any] | None,
                             given: Collection[str]) -> None:
    """Portable face-expression checkpoints: the preprocessing stored in a LitFER checkpoint (class names, crop size
    and margin, normalisation, descriptor settings, fitted SUN statistics) is handed to the datamodule, so predicting
    needs no training cache. ``datamodules.face_video.FaceVideoDataModule`` has no preprocessing of its own and takes
    it (``use_preprocessing``, with the net's ``inputs``: a net without a descriptor input gets no descriptor maps);
    a training datamodule's settings are replaced by it (``apply_preprocessing_state``; a differing setting ``given``
    on the command line is an error naming the flag). ``preloaded``: the checkpoint already read (a remote one is not
    downloaded twice).

    Raises:
        ValueError: the checkpoint holds no preprocessing state and the datamodule has none of its own.
    """
    from common.preprocessing import face_preprocessing
    from lightning_modules.fer import LitFER, read_fer_preprocessing

    if not isinstance(model, LitFER) or not ckpt_path or ckpt_path in ("best", "last"):
        return
    if preloaded is not None:
        state = face_preprocessing(preloaded)
    else:
        state = read_fer_preprocessing(local_checkpoint_path(ckpt_path) or ckpt_path)
    inputs = getattr(getattr(model, "net", None), "inputs", None)
    if hasattr(datamodule, "use_preprocessing"):
        if state is None:
            raise ValueError(
                f"checkpoint {ckpt_path} holds no face preprocessing state (class names, crops, normalisation, "
                f"descriptor settings), and {type(datamodule).__name__} has none of its own: use a checkpoint "
                "written by cli.py fit with a configs/fer/ config (or the shipped model: no --ckpt_path)"
            )
        datamodule.use_preprocessing(state, origin=str(ckpt_path), inputs=inputs)
    elif state is None:
        rank_zero_info(f"{ckpt_path} holds no preprocessing state (an older checkpoint): using the config's")
    elif hasattr(datamodule, "apply_preprocessing_state"):
        datamodule.apply_preprocessing_state(state, origin=str(ckpt_path), inputs=inputs, explicit=given)


def parse_ckpt_path(cli: Any, links: Sequence[tuple[str, str]]) -> None:
    """``AffectCLI._parse_ckpt_path``: the checkpoint is read and checked before its hyper-parameters reach the
    config; ``predict`` without one uses the system's default checkpoint (LitFER: the shipped face model). The file
    read is kept in ``cli.checkpoint`` (read once)."""
    sub = cli.config.get("subcommand")
    if not sub:
        return
    cfg = cli.config[sub]
    model_cls = resolve_class(cfg["model"].get("class_path") or "")
    if not cfg.get("ckpt_path") and sub == "predict" and hasattr(model_cls, "default_predict_checkpoint"):
        cfg["ckpt_path"] = str(model_cls.default_predict_checkpoint())
        print(f"predict without --ckpt_path: {model_cls.__name__}'s default checkpoint {cfg['ckpt_path']}")
    path = cfg.get("ckpt_path")
    if not path or path in ("best", "last", "hpc"):
        return  # resolved later (before_<stage>, Lightning), then loaded by SafeCheckpointIO
    cli.checkpoint = read_checked_checkpoint(str(path), cfg["model"], sub)
    model = checkpoint_model_config(cli.checkpoint, str(path), cfg["model"], cli.model_flags)
    if model is not None:
        data_settings_from_checkpoint(cfg.get("data"), cli.checkpoint.get("hyper_parameters") or {}, links,
                                      cli.data_flags, str(path))
        try:
            cli.config = cli.parser.parse_object({sub: {"model": model}}, cli.config)
        except SystemExit:
            sys.stderr.write(f"Parsing the hyper-parameters of checkpoint {path} failed!\n")
            raise


def resolve_best_checkpoint(cli: Any) -> None:
    """Before validate/test/predict: ``--ckpt_path best`` in a fresh process is the best checkpoint that fit wrote
    under ``checkpoint.dirpath`` (checked like any other)."""
    cfg, ckpt = cli.config_init[cli.subcommand], cli.trainer.checkpoint_callback
    if cfg.get("ckpt_path") == "best" and ckpt is not None and not getattr(ckpt, "best_model_path", ""):
        if not ckpt.dirpath:
            raise ValueError("--ckpt_path best needs checkpoint.dirpath in the config (where fit wrote last.ckpt)")
        cfg["ckpt_path"] = best_checkpoint(str(ckpt.dirpath), ckpt.state_key, cli.config[cli.subcommand]["model"],
                                           cli.subcommand)
