"""A callback for DDP tests: every process writes what it sees in ``trainer.callback_metrics``.

``RankMetricsWriter(dirpath)`` writes ``<dirpath>/rank<r>_<stage>_epoch<e>.json`` (``{key: float}`` of the stage's
keys) at the end of each validation (sanity check excluded) and test run, so a test can compare the processes.
Usable from a config: ``{class_path: tests.helpers.rank_metrics.RankMetricsWriter, init_args: {dirpath: ...}}``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer


class RankMetricsWriter(Callback):
    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def _write(self, trainer: Trainer, stage: str) -> None:
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(f"{stage}/")}
        self.dirpath.mkdir(parents=True, exist_ok=True)
        path = self.dirpath / f"rank{trainer.global_rank}_{stage}_epoch{trainer.current_epoch}.json"
        path.write_text(json.dumps(values, sort_keys=True))

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, "test")
