"""What ``cli.py`` adds around a run: the resolved config saved in the run folder, the default callbacks, the
evaluation after ``fit`` and the closing line naming where the outputs are.

* :class:`RunDirSaveConfig`: ``config.yaml`` beside the checkpoints after ``fit``; ``config_<subcommand>.yaml`` for
  the other subcommands (``predict``: in its writer's output folder), so a ``test`` or ``predict`` never replaces the
  training run's config.
* :func:`default_callbacks`: a learning-rate monitor (when a logger is active) and a rich progress bar (unless
  ``trainer.enable_progress_bar: false``), each only when the user's config has none of its kind.
* :func:`evaluate_after_fit`: validate and test the best checkpoint (``last`` when none is monitored).
* :func:`report_outputs`: the closing line of every command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_modules.cli_support import outputs_line, prediction_output_dir, saved_config_name

__all__ = ["RunDirSaveConfig", "allow_overwrite", "default_callbacks", "evaluate_after_fit", "report_outputs"]


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
        dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
        return Path(dirpath).parent if dirpath else Path(trainer.log_dir or trainer.default_root_dir)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        run_dir = (prediction_output_dir(trainer) if stage == "predict" else None) or self.run_dir(trainer)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / saved_config_name(stage, self.config_filename)
        self.parser.save(self.config, str(path), overwrite=True, multifile=self.multifile)
        self.saved_path = path
        rank_zero_info(f"Resolved config saved to {path}")


def default_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """The user's callbacks (``trainer.callbacks``) plus a learning-rate monitor when a logger is active and a rich
    progress bar unless ``enable_progress_bar`` is false, each only when the user gave none of its kind."""
    user = trainer_config.get("callbacks") or []
    user = list(user) if isinstance(user, (list, tuple)) else [user]
    extra: list[Callback] = []
    if trainer_config.get("logger") not in (False, None) and not any(isinstance(c, LearningRateMonitor) for c in user):
        extra.append(LearningRateMonitor(logging_interval="epoch"))
    if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in user):
        extra.append(RichProgressBar())
    return [*user, *extra]


def evaluate_after_fit(trainer: Trainer, model: LightningModule, datamodule: Any) -> None:
    """Validate and test the best checkpoint (``last`` when none is monitored; the final weights without either)."""
    if trainer.fast_dev_run or trainer.interrupted:
        return
    ckpt = trainer.checkpoint_callback
    ckpt_path = getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "") or None
    # every process evaluates rank 0's file: processes that disagreed on the best checkpoint (a metric not
    # reduced across them) would otherwise load different files and enter different collectives (a hang)
    ckpt_path = trainer.strategy.broadcast(ckpt_path, src=0)
    rank_zero_info(f"Evaluating {ckpt_path or 'the final weights'} on the validation and test splits")
    if is_overridden("validation_step", model) and datamodule is not None and \
            is_overridden("val_dataloader", datamodule):
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if is_overridden("test_step", model) and datamodule is not None and is_overridden("test_dataloader", datamodule):
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path)


def report_outputs(stage: str, trainer: Trainer) -> None:
    """The closing line of every command: where its outputs are (rank 0)."""
    saver = next((c for c in trainer.callbacks if isinstance(c, RunDirSaveConfig)), None)
    rank_zero_info(outputs_line(stage, trainer, RunDirSaveConfig.run_dir(trainer), getattr(saver, "saved_path", None)))


def allow_overwrite(trainer: Trainer) -> None:
    """``--overwrite true``: the prediction writers (callbacks with an ``overwrite`` setting) replace earlier
    outputs in their folder."""
    for cb in trainer.callbacks:
        if hasattr(cb, "overwrite"):
            cb.overwrite = "replace"
