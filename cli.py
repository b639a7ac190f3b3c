"""Command line for every experiment of the project (LightningCLI).

Usage::

    python cli.py fit      --config configs/hgcl_mosei.yaml
    python cli.py validate --config configs/hgcl_mosei.yaml --ckpt_path runs/hgcl_mosei/checkpoints/last.ckpt
    python cli.py test     --config configs/hgcl_mosei.yaml --ckpt_path best
    python cli.py predict  --config configs/fer/predict_video.yaml
    python cli.py fit      --config configs/hgcl_mosei.yaml --ckpt_path last      # resume

Generic trainer pieces merge in with a second ``--config`` (``configs/trainer/{cpu,gpu,...}.yaml``).

Defaults added to every run:

- ``seed_everything`` (42 unless the config says otherwise);
- a ``ModelCheckpoint`` (:class:`callbacks.checkpoint.EpochCheckpoint`) on the monitored validation metric plus
  ``last.ckpt`` refreshed every epoch, configured under ``checkpoint:``
  (``checkpoint.monitor``, ``checkpoint.mode``, ``checkpoint.dirpath``);
- a learning-rate monitor (when a logger is active) and a rich progress bar (unless
  ``trainer.enable_progress_bar: false``);
- a W&B logger (:class:`callbacks.loggers.AutoWandbLogger`) that runs offline when there is no API key or network;
  ``trainer.logger: {class_path: lightning.pytorch.loggers.CSVLogger, ...}`` selects CSV instead;
- the resolved config saved as ``config.yaml`` in the run directory (the parent of the checkpoint directory) by
  ``fit`` (overwritten on resume), as ``config_<subcommand>.yaml`` by the others (``predict``: in its writer's
  output folder), so a ``test`` or ``predict`` never replaces the training run's ``config.yaml``; every command ends
  with one line saying where its outputs are;
- ``cli.py --help`` alone prints an overview (subcommands, the project's systems, nets and datamodules) without
  importing Lightning; ``cli.py fit --help`` lists every option;
- checkpoints read weights-only and written atomically
  (:class:`lightning_modules.checkpoint_io.SafeCheckpointIO`); ``--ckpt_path`` may be a local file or any fsspec URL
  (``file://``, ``http(s)://``, ``s3://`` ...), checked against the config's model before anything is built.
"""

from __future__ import annotations

# the --help fast path below runs before Lightning (seconds to import) is imported
import sys

if __name__ == "__main__" and sys.argv[1:] in (["--help"], ["-h"]):
    from lightning_modules.cli_support import overview

    sys.stdout.write(overview())
    raise SystemExit(0)

import logging
import os
import re
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from lightning.pytorch.utilities.model_helpers import is_overridden

from callbacks.checkpoint import EpochCheckpoint
from callbacks.loggers import AutoWandbLogger
from common.distributed import shutdown_process_group
from lightning_modules.checkpoint_io import (
    CheckpointError,
    check_hparams_class_paths,
    checkpoint_classes,
    drop_weight_files,
    load_checkpoint,
    local_checkpoint_path,
    with_safe_checkpoint_io,
)
from lightning_modules.cli_support import (
    asks_for_help,
    command_line_keys,
    import_project_classes,
    outputs_line,
    prediction_output_dir,
    saved_config_name,
)

__all__ = ["DATA_LINKS", "AffectCLI", "RunDirSaveConfig", "cli_main", "compose_configs", "config_chain",
           "link_data_derived"]

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent

#: Settings that must agree, given once: (datamodule attribute, system argument). Applied when the datamodule has
#: been instantiated; a link whose source attribute the datamodule lacks, or whose target the chosen system does not
#: take, is skipped by jsonargparse (targets are top-level system arguments only: Lightning records applied links
#: in the saved hyper-parameters, and a nested target missing from a system would break its instantiation). The
#: saved ``config.yaml`` holds the linked values, so the system is rebuilt from its config alone
#: (``load_from_checkpoint`` included).
DATA_LINKS: tuple[tuple[str, str], ...] = (
    ("data.feature_dims", "model.init_args.feature_dims"),  # MSA: read from the feature file
    ("data.seq_lens", "model.init_args.seq_lens"),
    ("data.num_classes", "model.init_args.num_classes"),  # faces: from the class list
    ("data.class_names", "model.init_args.class_names"),
    ("data.image_size", "model.init_args.image_size"),  # face crop side -> LitFER builds the net with img_size
    ("data.mean", "model.init_args.image_mean"),  # the batch normalisation, undone by LitVAE/LitLDM (generation:
    # GenerationDataModule.mean/std are its source datamodule's)
    ("data.std", "model.init_args.image_std"),
)


def link_data_derived(parser: LightningArgumentParser) -> None:
    """Link every data-derived system argument of :data:`DATA_LINKS` (``apply_on="instantiate"``)."""
    for source, target in DATA_LINKS:
        parser.link_arguments(source, target, apply_on="instantiate")


# ---------------------------------------------------------------------- delta configs
# A config that is a small delta over another names its base in its leading comment block, ``# base: <path>``
# (repository-relative), and runs as ``--config <base> --config <delta>``. One reader for the runner scripts and
# the tests.
def config_chain(path: str | os.PathLike, root: Path = PROJECT_ROOT) -> list[Path]:
    """The config files to pass, base first: follows ``# base: <path>`` lines of each file's leading comment block
    (paths relative to ``root``), so a delta config brings its base along.

    Raises:
        ValueError: on a missing base file or a cycle, naming the file.
    """
    chain: list[Path] = []
    current = Path(path) if Path(path).is_absolute() else root / path
    while True:
        if not current.is_file():
            who = f"(base of {chain[0]})" if chain else ""
            raise ValueError(f"config_chain: {current} does not exist {who}".rstrip())
        if current in chain:
            raise ValueError(f"config_chain: cycle of '# base:' lines through {current}")
        chain.insert(0, current)
        base = None
        for line in current.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            text = line.lstrip("#").strip()
            if text.startswith("base:"):
                base = text.split(":", 1)[1].strip()
                break
        if base is None:
            return chain
        current = Path(base) if Path(base).is_absolute() else root / base


def _merge(base: Any, delta: Any) -> Any:
    """jsonargparse's composition of several ``--config`` files for plain values: mappings merge key by key, a
    later ``class_path`` that differs replaces the whole entry, anything else (lists included) is replaced."""
    if not (isinstance(base, dict) and isinstance(delta, dict)):
        return delta
    if "class_path" in delta and delta["class_path"] != base.get("class_path"):
        return dict(delta)
    out = dict(base)
    for key, value in delta.items():
        out[key] = _merge(out[key], value) if key in out else value
    return out


def compose_configs(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The composed YAML of several config files (later files win), e.g. ``compose_configs(config_chain(delta))``."""
    out: dict[str, Any] = {}
    for p in paths:
        out = _merge(out, yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {})
    return out



class RunDirSaveConfig(SaveConfigCallback):
    """Saves the resolved config in the run directory: the parent of the checkpoint directory
    (``runs/<experiment>/`` when ``checkpoint.dirpath`` is ``runs/<experiment>/checkpoints``), else the trainer's
    ``log_dir``. ``fit`` writes ``config.yaml`` (a resumed run overwrites it); the other subcommands write
    ``config_<subcommand>.yaml`` (:func:`~lightning_modules.cli_support.saved_config_name`), ``predict`` into its
    prediction writer's output folder when it has one, so they never replace the training run's config."""

    def __init__(
        self,
        parser: LightningArgumentParser,
        config: Any,
        config_filename: str = "config.yaml",
        overwrite: bool = True,
        multifile: bool = False,
    ) -> None:
        super().__init__(
            parser, config, config_filename=config_filename, overwrite=overwrite, multifile=multifile,
            save_to_log_dir=False,
        )
        #: where the config of the last stage was saved (named by the closing outputs line)
        self.saved_path: Path | None = None

    @staticmethod
    def run_dir(trainer: Trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        dirpath = getattr(ckpt, "dirpath", None)
        if dirpath:
            return Path(dirpath).parent
        return Path(trainer.log_dir or trainer.default_root_dir)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = (prediction_output_dir(trainer) if stage == "predict" else None) or self.run_dir(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / saved_config_name(stage, self.config_filename)
        self.parser.save(self.config, str(path), overwrite=True, multifile=self.multifile)
        self.saved_path = path
        rank_zero_info(f"Resolved config saved to {path}")


class AffectCLI(LightningCLI):
    """LightningCLI with the project's defaults (see the module docstring)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        link_data_derived(parser)
        parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
        parser.add_argument(
            "--test_after_fit", type=bool, default=True,
            help="after fit, validate and test the best checkpoint so the run prints its final metrics",
        )
        parser.add_argument(
            "--overwrite", type=bool, default=False,
            help="predict: let the prediction writers replace the outputs of an earlier run in their output folder",
        )
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.mode": "min",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:03d}",
                "checkpoint.auto_insert_metric_name": False,
                "trainer.logger": {
                    "class_path": f"{AutoWandbLogger.__module__}.{AutoWandbLogger.__name__}",
                    "init_args": {"save_dir": "runs"},
                },
            }
        )

    def _resolve_best_checkpoint(self) -> None:
        """``--ckpt_path best`` outside ``fit``: read the best checkpoint's path from the run's ``last.ckpt``
        (the checkpoint callback's saved state), since a fresh process has not tracked it."""
        cfg = self.config_init[self.subcommand]
        ckpt = self.trainer.checkpoint_callback
        if cfg.get("ckpt_path") != "best" or ckpt is None or getattr(ckpt, "best_model_path", ""):
            return
        if not ckpt.dirpath:
            raise ValueError("--ckpt_path best needs checkpoint.dirpath in the config (where fit wrote last.ckpt)")
        dirpath = str(ckpt.dirpath)
        local = local_checkpoint_path(dirpath)
        last = str(local / "last.ckpt") if local is not None else f"{dirpath.rstrip('/')}/last.ckpt"
        try:
            state = load_checkpoint(last).get("callbacks", {}).get(ckpt.state_key, {})
        except FileNotFoundError:
            raise FileNotFoundError(
                f"--ckpt_path best: {last} does not exist; run fit first or give a checkpoint file") from None
        best = state.get("best_model_path", "")
        if not best:
            raise FileNotFoundError(f"--ckpt_path best: {last} names no best checkpoint")
        try:
            self._read_checked_checkpoint(best, self.config[self.subcommand]["model"])
        except FileNotFoundError:
            raise FileNotFoundError(f"--ckpt_path best: {last} names no existing best checkpoint ({best!r})") from None
        rank_zero_info(f"--ckpt_path best resolved to {best}")
        cfg["ckpt_path"] = best

    # ------------------------------------------------------------------ --ckpt_path
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        self._given_args = args  # re-parsed without defaults to tell the user's explicit settings (see below)

    def _explicit_model_args(self, subcommand: str) -> dict[str, Any]:
        """``model.init_args`` the user set in a config file or on the command line (defaults excluded)."""
        args = getattr(self, "_given_args", None)
        try:
            if isinstance(args, dict):
                ns = self.parser.parse_object(args, defaults=False)
            else:
                ns = self.parser.parse_args(args, defaults=False)
        except (SystemExit, Exception) as e:  # noqa: BLE001 - then nothing counts as explicit; say so
            log.warning("Could not tell which model settings were given explicitly (%s); the checkpoint's win", e)
            return {}
        model = ns.get(subcommand, {}).get("model") if hasattr(ns, "get") else None
        init = model.get("init_args") if hasattr(model, "get") else None
        return _as_dict(init)

    @staticmethod
    def _resolve_class(class_path: str) -> type | None:
        """Class of an (already allow-listed or user-written) class path; ``None`` when it does not import."""
        import importlib

        mod, _, name = class_path.rpartition(".")
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError, ValueError):
            return None

    def _check_checkpoint_model(self, ckpt: dict[str, Any], path: str | Path, model_cfg: Any) -> None:
        """``CheckpointError`` when the checkpoint's system or net class differs from the config's, naming both.
        ``predict`` with a system whose ``predict_net_from_checkpoint`` is true (``LitFER``) takes the checkpoint's
        net whatever net the config names (logged once)."""
        ckpt_system, ckpt_net = checkpoint_classes(ckpt)
        cfg_system = model_cfg.get("class_path") if hasattr(model_cfg, "get") else None
        init = model_cfg.get("init_args") if hasattr(model_cfg, "get") else None
        net = init.get("net") if hasattr(init, "get") else None
        cfg_net = net.get("class_path") if hasattr(net, "get") else None
        system_cls = self._resolve_class(ckpt_system) if ckpt_system else None
        net_from_ckpt = (self.config.get("subcommand") == "predict" and ckpt_net is not None
                         and getattr(system_cls, "predict_net_from_checkpoint", False))
        if net_from_ckpt and cfg_net not in (None, ckpt_net):
            rank_zero_info(f"Checkpoint {path}: predicting with its net {ckpt_net} (the config names {cfg_net})")
        for what, ours, theirs in (("system", cfg_system, ckpt_system), ("net", cfg_net, ckpt_net)):
            if ours is None or theirs is None or ours == theirs or (what == "net" and net_from_ckpt):
                continue
            a, b = self._resolve_class(ours), self._resolve_class(theirs)
            if a is None or a is not b:
                raise CheckpointError(
                    f"Checkpoint {str(path)!r} holds a {ckpt_system or '?'} with net {ckpt_net or '?'}, but the "
                    f"config asks for a {cfg_system or '?'} with net {cfg_net or '?'} (the {what} class differs). "
                    "Use the config the checkpoint was trained with, or a checkpoint of this model."
                )
        if ckpt_system is None and cfg_system is not None:
            # checkpoint written without the CLI: its hyper-parameters must at least be arguments of the system
            cls = self._resolve_class(cfg_system)
            hp = {k for k in (ckpt.get("hyper_parameters") or {}) if not k.startswith("_")}
            if cls is not None and hp:
                import inspect

                params = inspect.signature(cls.__init__).parameters
                if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                    unknown = sorted(hp - set(params))
                    if unknown:
                        raise CheckpointError(
                            f"Checkpoint {str(path)!r} does not hold a {cfg_system}: its hyper-parameters "
                            f"{unknown} are not arguments of {cls.__name__}"
                        )

    def _read_checked_checkpoint(self, path: str, model_cfg: Any) -> dict[str, Any]:
        """The checkpoint at ``path`` (local or any fsspec URL) read once, weights-only, after the checks: class
        paths on the allow-list, the config's system and net. A remote one is handed to the trainer's
        :class:`~lightning_modules.checkpoint_io.SafeCheckpointIO`, so it is not downloaded twice."""
        ckpt = load_checkpoint(path)
        check_hparams_class_paths(ckpt.get("hyper_parameters") or {}, path)
        self._check_checkpoint_model(ckpt, path, model_cfg)
        if local_checkpoint_path(path) is None:
            self._pending_preload = (path, ckpt)
            self._hand_over_preload()
        return ckpt

    def _hand_over_preload(self) -> None:
        """Give a remote checkpoint already read to the trainer's SafeCheckpointIO (once it exists)."""
        pending, safe_io = getattr(self, "_pending_preload", None), getattr(self, "_safe_io", None)
        if pending is not None and safe_io is not None:
            safe_io.preload(*pending)
            self._pending_preload = None

    def _default_predict_checkpoint(self, sub: str) -> str | None:
        """``predict`` without ``--ckpt_path``: the system's ``default_predict_checkpoint()`` if it has one (LitFER:
        the shipped face model), set as the run's ``ckpt_path`` and said once."""
        cls = self._resolve_class(self.config[sub]["model"].get("class_path") or "")
        default = getattr(cls, "default_predict_checkpoint", None)
        if default is None:
            return None
        path = self.config[sub]["ckpt_path"] = str(default())
        rank_zero_info(f"predict without --ckpt_path: {cls.__name__}'s default checkpoint {path}")
        return path

    def _parse_ckpt_path(self) -> None:
        """Replaces ``LightningCLI._parse_ckpt_path`` (which merges the checkpoint's hyper-parameters into the
        model config unchecked): the file must be readable (error naming it), name only allowed class paths
        (``lightning_modules.checkpoint_io``), and hold the config's system and net classes. The checkpoint's
        hyper-parameters then replace the config's model settings, EXCEPT the system's ``inference_settings``
        (e.g. ``LitLDM``: sampler, steps, guidance, vae_path) that the user gave explicitly in a config file or on
        the command line: those are kept and validated by the system's constructor. One line reports which
        settings came from the checkpoint."""
        sub = self.config.get("subcommand")
        if not sub:
            return
        ckpt_path = self.config[sub].get("ckpt_path")
        if not ckpt_path and sub == "predict":
            ckpt_path = self._default_predict_checkpoint(sub)
        if not ckpt_path or ckpt_path in ("best", "last", "hpc"):
            return  # resolved later (before_<stage>, Lightning), then loaded by SafeCheckpointIO
        model_cfg = self.config[sub]["model"]
        ckpt = self._read_checked_checkpoint(str(ckpt_path), model_cfg)
        hparams = dict(ckpt.get("hyper_parameters") or {})
        hparams.pop("_instantiator", None)
        if not hparams:
            return
        cls = self._resolve_class(model_cfg["class_path"]) if model_cfg.get("class_path") else None
        explicit = self._explicit_model_args(sub)
        hparams, dropped = drop_weight_files(hparams, explicit)
        if dropped:
            rank_zero_info(f"Checkpoint {ckpt_path}: not opening the weight files it names ({', '.join(dropped)}); "
                           "the weights come from its state_dict")
        kept = [k for k in getattr(cls, "inference_settings", ()) if k in explicit and k in hparams]
        for k in kept:
            hparams.pop(k)
            if k.endswith("_path") and explicit[k] is not None and not Path(explicit[k]).exists():
                raise FileNotFoundError(f"{cls.__name__}: {k} {explicit[k]!r} (given explicitly) does not exist")
        current = _as_dict(model_cfg.get("init_args"))
        changed = sorted(k for k, v in hparams.items() if not k.startswith("_") and current.get(k) != v)
        same = sorted(k for k in hparams if not k.startswith("_") and k not in changed)
        rank_zero_info(
            f"Checkpoint {ckpt_path}: model settings from the checkpoint: {', '.join(changed) or 'none'}"
            f" (same as the config: {', '.join(same) or 'none'}); kept from the config/command line: "
            f"{', '.join(kept) or 'none'}"
        )
        self._data_from_checkpoint(sub, hparams, ckpt_path)
        if "_class_path" in hparams:
            hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
        try:
            self.config = self.parser.parse_object({sub: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write(f"Parsing the hyper-parameters of checkpoint {ckpt_path} failed!\n")
            raise

    def _data_from_checkpoint(self, sub: str, hparams: dict[str, Any], ckpt_path: str) -> None:
        """The data-derived system arguments of :data:`DATA_LINKS` are applied when the classes are instantiated,
        i.e. after the checkpoint's hyper-parameters were merged, so a data setting such as ``image_size`` would
        override the checkpoint's and build a different net. Where the datamodule takes the link's source as an
        argument, set it to the checkpoint's value, so the link reproduces the trained net (logged when it
        changes the config)."""
        data_cfg = self.config[sub].get("data")
        if data_cfg is None or not data_cfg.get("init_args"):
            return
        init = data_cfg["init_args"]
        given = command_line_keys(getattr(self, "_given_args", None), "data")
        for source, target in DATA_LINKS:
            src, dst = source.removeprefix("data."), target.removeprefix("model.init_args.")
            if dst not in hparams or hparams[dst] is None or src not in init:
                continue
            value = hparams[dst]
            if isinstance(init[src], (list, tuple)) and isinstance(value, (list, tuple)):
                value = type(init[src])(value)
            if init[src] != value and src in given:
                raise ValueError(f"--data.init_args.{src} {init[src]!r} (given explicitly) differs from "
                                 f"{value!r}, the trained model's in checkpoint {ckpt_path}: drop the flag")
            if init[src] != value:
                rank_zero_info(f"Checkpoint {ckpt_path}: data.{src} = {value!r} (the trained model's; the config "
                               f"said {init[src]!r})")
                init[src] = value

    def before_validate(self) -> None:
        self._resolve_best_checkpoint()

    def before_test(self) -> None:
        self._resolve_best_checkpoint()

    def before_predict(self) -> None:
        self._resolve_best_checkpoint()
        self._apply_checkpoint_preprocessing()
        # datamodules that check the checkpoint against their data (datamodules.recording) learn its path here:
        # the trainer only knows it after the datamodule's prepare_data/setup have run
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt and hasattr(self.datamodule, "set_checkpoint"):
            self.datamodule.set_checkpoint(ckpt)

    def _apply_checkpoint_preprocessing(self) -> None:
        """Portable face-expression checkpoints: the preprocessing stored in a LitFER checkpoint (class names, crop
        and alignment, descriptor settings, fitted SUN statistics) replaces the datamodule's, so predicting needs no
        training cache; a checkpoint of another model kind is refused naming the file. ``--overwrite true`` lets
        the prediction writers replace earlier outputs."""
        from lightning_modules.fer import PREPROCESSING_CKPT_KEY, LitFER, read_fer_preprocessing

        cfg = self.config_init[self.subcommand]
        if cfg.get("overwrite"):
            for cb in self.trainer.callbacks:
                if hasattr(cb, "overwrite"):
                    cb.overwrite = "replace"
        ckpt_path = cfg.get("ckpt_path")
        if not isinstance(self.model, LitFER) or not ckpt_path or ckpt_path in ("best", "last"):
            return
        local = local_checkpoint_path(ckpt_path)
        if local is not None or self._safe_io is None:
            state = read_fer_preprocessing(local or ckpt_path)
        else:  # read (and checked) once, by _parse_ckpt_path
            state = self._safe_io.preloaded(ckpt_path, load_checkpoint).get(PREPROCESSING_CKPT_KEY)
        if state is None:
            rank_zero_info(f"{ckpt_path} holds no preprocessing state (an older checkpoint): using the config's")
        elif hasattr(self.datamodule, "apply_preprocessing_state"):
            self.datamodule.apply_preprocessing_state(
                state, origin=str(ckpt_path), inputs=getattr(self.model.net, "inputs", None),
                explicit=command_line_keys(getattr(self, "_given_args", None), "data"))

    def _report_outputs(self, stage: str) -> None:
        """The closing line of every command: where its outputs are (rank 0)."""
        saver = next((c for c in self.trainer.callbacks if isinstance(c, RunDirSaveConfig)), None)
        run_dir = RunDirSaveConfig.run_dir(self.trainer)
        rank_zero_info(outputs_line(stage, self.trainer, run_dir, getattr(saver, "saved_path", None)))

    def after_validate(self) -> None:
        self._report_outputs("validate")

    def after_test(self) -> None:
        self._report_outputs("test")

    def after_predict(self) -> None:
        self._report_outputs("predict")

    def after_fit(self) -> None:
        """Validate and test the best checkpoint (``last`` when none is monitored) so that every ``fit`` prints its
        validation and test metrics; ``--test_after_fit false`` skips it. Ends with the outputs line."""
        self._evaluate_after_fit()
        self._report_outputs("fit")

    def _evaluate_after_fit(self) -> None:
        if not self.config.fit.get("test_after_fit", True) or self.trainer.fast_dev_run:
            return
        if self.trainer.interrupted:
            return
        ckpt = self.trainer.checkpoint_callback
        ckpt_path = None
        if ckpt is not None and getattr(ckpt, "best_model_path", ""):
            ckpt_path = ckpt.best_model_path
        elif ckpt is not None and getattr(ckpt, "last_model_path", ""):
            ckpt_path = ckpt.last_model_path
        # every process evaluates rank 0's file: processes that disagreed on the best checkpoint (a metric not
        # reduced across them) would otherwise load different files and enter different collectives (a hang)
        ckpt_path = self.trainer.strategy.broadcast(ckpt_path, src=0)
        rank_zero_info(f"Evaluating {ckpt_path or 'the final weights'} on the validation and test splits")
        dm = self.datamodule
        if is_overridden("validation_step", self.model) and dm is not None and is_overridden("val_dataloader", dm):
            self.trainer.validate(self.model, datamodule=dm, ckpt_path=ckpt_path)
        if is_overridden("test_step", self.model) and dm is not None and is_overridden("test_dataloader", dm):
            self.trainer.test(self.model, datamodule=dm, ckpt_path=ckpt_path)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> Trainer:
        callbacks = list(callbacks)
        user_callbacks = config.get("callbacks") or []
        if not isinstance(user_callbacks, list):
            user_callbacks = [user_callbacks]
        if config.get("logger") not in (False, None) and not any(
            isinstance(c, LearningRateMonitor) for c in user_callbacks
        ):
            callbacks.append(LearningRateMonitor(logging_interval="epoch"))
        if config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in user_callbacks
        ):
            callbacks.append(RichProgressBar())
        # every checkpoint the trainer reads or writes goes through the project's reader / atomic writer
        config = {**config}
        config["plugins"], self._safe_io = with_safe_checkpoint_io(config.get("plugins"), config.get("strategy"))
        self._hand_over_preload()
        self._pending_preload = None
        return super()._instantiate_trainer(config, callbacks)


def _as_dict(ns: Any) -> dict[str, Any]:
    """A jsonargparse ``Namespace`` (or dict / None) as a nested dict."""
    if ns is None:
        return {}
    return ns.as_dict() if hasattr(ns, "as_dict") else dict(ns)


#: The project's top-level packages, whose INFO lines (NaN/inf cleaned per modality and split, faces skipped by
#: reason, split sizes, the generation plan, parameter counts) the CLI shows.
PROJECT_PACKAGES = ("common", "datamodules", "features", "lightning_modules", "callbacks", "models", "metrics",
                    "scripts")


class _RankZeroInfo(logging.Filter):
    """INFO and below on global rank 0 only (one copy under DDP); warnings and errors from every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or rank_zero_only.rank == 0


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one of its creation: tests and tools swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_PROJECT_HANDLER: logging.Handler | None = None


def show_project_logs(level: int = logging.INFO) -> None:
    """Send the project's log records at ``level`` and above to stderr (INFO on rank 0 only). Python shows only
    WARNING and above of a logger without handlers, so without this a CLI user never sees the counts the project
    logs. Idempotent."""
    global _PROJECT_HANDLER
    if _PROJECT_HANDLER is None:
        _PROJECT_HANDLER = _StderrHandler()
        _PROJECT_HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        _PROJECT_HANDLER.addFilter(_RankZeroInfo())
    for name in PROJECT_PACKAGES:
        logger = logging.getLogger(name)
        if _PROJECT_HANDLER not in logger.handlers:
            logger.addHandler(_PROJECT_HANDLER)
        logger.setLevel(level)


def _in_project(filename: str) -> bool:
    path = Path(filename).resolve()
    return PROJECT_ROOT in path.parents and not any(p in path.parts for p in (".venv", "site-packages"))


def _project_errors(err: BaseException) -> list[BaseException]:
    """The exceptions of ``err``'s chain (``__cause__``/``__context__``, outermost first) raised in project code."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    return [e for e in chain if (frames := traceback.extract_tb(e.__traceback__)) and _in_project(frames[-1].filename)]


def innermost_project_error(err: BaseException) -> BaseException:
    """The deepest exception of ``err``'s chain (``__cause__``/``__context__``) raised in the project's own code,
    e.g. the ``ValueError`` of a constructor that jsonargparse wrapped into "Does not validate against any of the
    Union subtypes"; ``err`` itself when there is none."""
    ours = _project_errors(err)
    return ours[-1] if ours else err


#: A file or URL in an error message: ``scheme://...``, a path with a separator, or a name with a file extension.
_NAMES_A_FILE = re.compile(r"\w+://\S+|[\w.~-]*/[\w.-]|\b[\w-]+\.(ckpt|pt|pth|bin|safetensors|ya?ml|jsonl?|pkl|npz|npy|csv)\b")


def reported_error(err: BaseException) -> BaseException:
    """The exception whose message ends a failed command: the OUTERMOST project error that names a file (e.g.
    ``CheckpointError: Checkpoint 'runs/x/best.ckpt' is truncated ...`` rather than the bare ``EOFError`` or
    ``KeyError`` inside it), else :func:`innermost_project_error`."""
    ours = _project_errors(err)
    named = [e for e in ours if getattr(e, "filename", None) or _NAMES_A_FILE.search(str(e))]
    return named[0] if named else ours[-1] if ours else err


def parser_error_summary(message: str) -> str | None:
    """One line naming the bad setting and what was expected, from a jsonargparse error ``message`` that nests
    ``Parser key "..."`` sections (a class path that does not import or is of the wrong kind, an option the class
    does not take, a value outside a ``Literal``); ``None`` for other messages (already one line)."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        return None
    where = ".init_args.".join(keys)
    given = re.findall(r"(?:Expected a path but (\S+) either|Given value: (\S+)$)", message, re.MULTILINE)
    value = next((a or b for a, b in given), None)
    base = re.search(r"Subtypes: \[<class '[\w.]*?(\w+)'>", message)
    expected = f" (expected a subclass of {base.group(1)})" if base else ""
    if m := re.search(r"Problem with given class_path '([^']+)':\n\s*(?!\s|Parser key)(.+)", message):
        cp, reason = m.groups()
        if re.search(r"has no attribute|No module named", reason):
            return f"{keys[0]}.class_path {cp!r} does not import: {reason}{expected}"
        return f"{keys[0]}.class_path {cp!r}: {reason}"
    if m := re.search(r"Import path does not correspond to a subclass of (\w+)", message):
        return f"{where}.class_path {value!r} is not a subclass of {m.group(1)}"
    if m := re.search(r"expects a function or a callable class: (.+?)\. Got value: ", message):
        reason = m.group(1)
        if re.search(r"has no attribute|No module named", reason):
            return f"{where} {value!r} does not import: {reason}"
        return f"{where}: {reason}"
    if m := re.search(r"Expected a typing\.Literal\[(.+?)\]\. Got value: (.+)", message):
        return f"{where}: got {m.group(2)!r}, expected one of {m.group(1)}"
    lines = [ln.strip(" -") for ln in message.splitlines()]
    skip = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")
    reasons = [ln for ln in lines if ln and not ln.startswith(skip)]
    return f"{where}: {reasons[-1]}" if reasons else None


class _ArgumentParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose usage errors end with :func:`parser_error_summary` (jsonargparse's full
    message stays above it)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        try:
            super().error(message, ex)
        except SystemExit:
            if summary := parser_error_summary(message):
                sys.stderr.write(f"error: {summary}\n")
            raise


def main(args: ArgsType = None) -> None:
    """The command line: :func:`cli_main` with the project's INFO lines shown, and the project error that explains a
    failure (:func:`reported_error`: one naming the file, or the one raised inside a constructor) printed as the
    last line, after the full traceback (kept for debugging; not for errors marked ``user_error``, which are about
    the user's input and say what to do). A usage error ends with
    :func:`parser_error_summary`'s line (exit status 2)."""
    show_project_logs()
    try:
        cli_main(args)
    except Exception as err:
        root = reported_error(err)
        if root is err and not _project_errors(err):
            raise
        if not getattr(root, "user_error", False):  # a user's input error (e.g. RecordingInputError) needs no trace
            traceback.print_exception(err)
        print(f"\nerror: {type(root).__name__}: {root}", file=sys.stderr)
        sys.exit(1)
    finally:
        shutdown_process_group()


def cli_main(args: ArgsType = None, run: bool = True) -> AffectCLI:
    """Entry point, also used by the tests: ``cli_main(["fit", "--config", ...])``."""
    if asks_for_help(sys.argv[1:] if args is None else args):
        import_project_classes()  # jsonargparse's "known subclasses" are the imported ones: list the project's
    return AffectCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_callback=RunDirSaveConfig,
        parser_class=_ArgumentParser,
        seed_everything_default=42,
        args=args,
        run=run,
    )


if __name__ == "__main__":
    main()
