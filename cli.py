"""Command line for every experiment of the project (LightningCLI); docs/cli.md has the details::

    python cli.py fit      --config configs/hgcl_mosei.yaml
    python cli.py test     --config configs/hgcl_mosei.yaml --ckpt_path best
    python cli.py predict  --config configs/fer/predict_video.yaml          # the shipped face model by default
    python cli.py fit      --config configs/hgcl_mosei.yaml --ckpt_path last   # resume

Here: the data-derived links, the defaults (seed 42, a checkpoint callback under ``checkpoint:``, a W&B logger that
runs offline without a key or network) and the one override, a checked ``--ckpt_path``
(:mod:`lightning_modules.cli_checkpoints`); the rest is delegated to ``lightning_modules.cli_run`` (saved configs,
default callbacks, evaluation after fit, the outputs line) and ``cli_errors`` (log lines, a failed command's last
line). ``cli.py --help`` alone prints an overview without importing Lightning.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and sys.argv[1:] in (["--help"], ["-h"]):  # before Lightning (seconds) is imported
    from lightning_modules.cli_support import overview

    sys.stdout.write(overview())
    raise SystemExit(0)

from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from callbacks.checkpoint import EpochCheckpoint
from callbacks.loggers import AutoWandbLogger
from common.distributed import shutdown_process_group
from datamodules.base import AffectDataModule
from lightning_modules import cli_checkpoints as ckpts
from lightning_modules import cli_run as run_tools
from lightning_modules.base import EpochMeanLogging
from lightning_modules.checkpoint_io import local_checkpoint_path, with_safe_checkpoint_io
from lightning_modules.cli_errors import ErrorSummaryParser, run_reporting_errors
from lightning_modules.cli_support import (
    asks_for_help,
    command_line_keys,
    import_project_classes,
    whole_model_flags,
)

__all__ = ["DATA_LINKS", "AffectCLI", "cli_main", "main"]

#: Settings that must agree, given once: (datamodule attribute, system argument), applied when the datamodule has been
#: instantiated (skipped by jsonargparse where the datamodule lacks the attribute or the system the argument). The
#: saved ``config.yaml`` holds the linked values, so the system is rebuilt from its config alone.
DATA_LINKS: tuple[tuple[str, str], ...] = (
    ("data.feature_dims", "model.init_args.feature_dims"),  # MSA: read from the feature file
    ("data.seq_lens", "model.init_args.seq_lens"),
    ("data.num_classes", "model.init_args.num_classes"),  # faces: from the class list
    ("data.class_names", "model.init_args.class_names"),
    ("data.image_size", "model.init_args.image_size"),  # the face crop side: LitFER builds the net for it
    ("data.mean", "model.init_args.image_mean"),  # the batch normalisation, undone by LitVAE/LitLDM
    ("data.std", "model.init_args.image_std"),
)


class AffectCLI(LightningCLI):
    """LightningCLI with the project's links and defaults and a checked ``--ckpt_path`` (module docstring)."""

    def __init__(self, *args: Any, args_given: ArgsType = None, **kwargs: Any) -> None:
        given = args_given if args_given is not None else sys.argv[1:]  # a flag on it, not in a config file
        self.data_flags, self.model_flags = command_line_keys(given, "data"), whole_model_flags(given)
        self.checkpoint: dict[str, Any] | None = None  # the --ckpt_path file, read once
        self.safe_io = None
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in DATA_LINKS:
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_lightning_class_args(EpochCheckpoint, "checkpoint")
        parser.add_argument("--test_after_fit", type=bool, default=True,
                            help="after fit, validate and test the best checkpoint so the run prints its final metrics")
        parser.add_argument("--overwrite", type=bool, default=False,
                            help="predict: let the prediction writers replace an earlier run's outputs")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss", "checkpoint.mode": "min", "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch:03d}", "checkpoint.auto_insert_metric_name": False,
            "trainer.logger": {"class_path": f"{AutoWandbLogger.__module__}.{AutoWandbLogger.__name__}",
                               "init_args": {"save_dir": "runs"}},
        })

    def _parse_ckpt_path(self) -> None:
        """The one override: the checkpoint is read and checked before its hyper-parameters reach the config."""
        ckpts.parse_ckpt_path(self, DATA_LINKS)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_cfg = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        plugins, self.safe_io = with_safe_checkpoint_io(trainer_cfg.get("plugins"), trainer_cfg.get("strategy"))
        path = self.config_init[self.subcommand].get("ckpt_path") if self.subcommand else None
        if self.checkpoint is not None and path and local_checkpoint_path(path) is None and self.safe_io is not None:
            self.safe_io.preload(path, self.checkpoint)  # a remote checkpoint is not downloaded twice
        callbacks = run_tools.default_callbacks(trainer_cfg)
        return super().instantiate_trainer(callbacks=callbacks, plugins=plugins, **kwargs)

    def _before_evaluation(self) -> None:
        ckpts.resolve_best_checkpoint(self)

    before_validate = before_test = _before_evaluation

    def before_predict(self) -> None:
        self._before_evaluation()
        cfg = self.config_init[self.subcommand]
        if cfg.get("overwrite"):
            run_tools.allow_overwrite(self.trainer)
        ckpts.apply_face_preprocessing(self.model, self.datamodule, cfg.get("ckpt_path"), self.checkpoint,
                                       self.data_flags)
        if cfg.get("ckpt_path") and hasattr(self.datamodule, "set_checkpoint"):  # e.g. datamodules.recording
            self.datamodule.set_checkpoint(cfg["ckpt_path"])

    def after_fit(self) -> None:
        if self.config.fit.get("test_after_fit", True):
            run_tools.evaluate_after_fit(self.trainer, self.model, self.datamodule)
        run_tools.report_outputs("fit", self.trainer)

    def after_validate(self) -> None:
        run_tools.report_outputs("validate", self.trainer)

    def after_test(self) -> None:
        run_tools.report_outputs("test", self.trainer)

    def after_predict(self) -> None:
        run_tools.report_outputs("predict", self.trainer)


def cli_main(args: ArgsType = None, run: bool = True) -> AffectCLI:
    """Entry point, also used by the tests: ``cli_main(["fit", "--config", ...])``."""
    if asks_for_help(sys.argv[1:] if args is None else args):
        import_project_classes()  # jsonargparse's "known subclasses" are the imported ones: list the project's
    return AffectCLI(EpochMeanLogging, AffectDataModule, subclass_mode_model=True, subclass_mode_data=True,
                     auto_configure_optimizers=False, save_config_callback=run_tools.RunDirSaveConfig,
                     parser_class=ErrorSummaryParser, seed_everything_default=42, args=args, run=run, args_given=args)


def main(args: ArgsType = None) -> None:
    """:func:`cli_main`, its failure reported as one last line (:func:`lightning_modules.cli_errors.run_reporting_errors`)."""
    run_reporting_errors(lambda: cli_main(args), cleanup=shutdown_process_group)


if __name__ == "__main__":
    main()
