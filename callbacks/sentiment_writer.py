"""Per-utterance sentiment of a recording from ``cli.py predict``: a CSV and a plot over time.

Consumes :meth:`lightning_modules.msa.LitMSA.predict_step` outputs (``id``, ``pred`` [B]) and the utterance table
of :class:`datamodules.recording.RecordingDataModule` (``source``, ``start_s``, ``end_s``, ``text`` per id).

The rows, classes, CSV and plot are :mod:`features.sentiment_report`'s (shared with
:class:`pipelines.recording.RecordingPipeline`): 2-class ``positive`` when the score is >= 0 else ``negative``;
7-class ``round(clip(score, -3, 3))`` in -3..3, named by :data:`CLASS7_NAMES`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only

from features.sentiment_report import (
    CLASS7_NAMES,
    CSV_COLUMNS,
    plot_path,
    plot_sentiment,
    sentiment_classes,
    sentiment_rows,
    sort_rows,
    write_sentiment_csv,
)

__all__ = ["CLASS7_NAMES", "CSV_COLUMNS", "SentimentTimelineWriter", "sentiment_classes"]

log = logging.getLogger(__name__)


class SentimentTimelineWriter(BasePredictionWriter):
    """Writes ``{output_dir}/{csv_name}`` (columns :data:`CSV_COLUMNS`, utterances in time order) and
    ``{output_dir}/sentiment_<source>.png`` (score per utterance over time: one bar from start to end).

    Args:
        output_dir: folder for the outputs (created).
        csv_name: CSV file name.
        plot: ``"timeline"`` or ``"none"``.
        overwrite: ``"never"`` (refuse, before predicting, to replace an existing CSV) or ``"replace"``
            (``cli.py predict --overwrite true`` sets it).

    The run ends with one log line naming the CSV and the plot(s) written.
    """

    def __init__(
        self,
        output_dir: str = "runs/predict_recording",
        csv_name: str = "sentiment.csv",
        plot: Literal["timeline", "none"] = "timeline",
        overwrite: Literal["never", "replace"] = "never",
    ) -> None:
        super().__init__(write_interval="batch")
        if plot not in ("timeline", "none"):
            raise ValueError(f"SentimentTimelineWriter: plot must be 'timeline' or 'none', got {plot!r}")
        if overwrite not in ("never", "replace"):
            raise ValueError(f"SentimentTimelineWriter: overwrite must be 'never' or 'replace', got {overwrite!r}")
        if not csv_name.endswith(".csv"):
            raise ValueError(f"SentimentTimelineWriter: csv_name must end with .csv, got {csv_name!r}")
        self.output_dir = Path(output_dir)
        self.csv_name = csv_name
        self.plot = plot
        self.overwrite = overwrite
        self._rows: list[dict[str, Any]] = []
        self.written: list[Path] = []

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._rows, self.written = [], []
        path = self.output_dir / self.csv_name
        if self.overwrite == "never" and path.exists():
            raise FileExistsError(f"SentimentTimelineWriter: {path} already exists (an earlier prediction); add "
                                  "--overwrite true to replace it, or write elsewhere with "
                                  "--trainer.callbacks.init_args.output_dir DIR (Python: overwrite='replace')")

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch_indices: Any,
                           batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        if not isinstance(prediction, dict) or "pred" not in prediction or "id" not in prediction:
            raise ValueError("SentimentTimelineWriter: predict_step must return a dict with 'id' and 'pred'")
        table = getattr(trainer.datamodule, "utterances", None)
        if table is None:
            raise ValueError("SentimentTimelineWriter: the datamodule must expose `utterances` "
                             "(datamodules.recording.RecordingDataModule)")
        self._rows += sentiment_rows(prediction["id"], prediction["pred"].float().tolist(), table)

    @rank_zero_only
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = sort_rows(self._rows)
        path = write_sentiment_csv(rows, self.output_dir / self.csv_name)
        self.written.append(path)
        if self.plot == "timeline" and rows:
            for source in sorted({r["source"] for r in rows}):
                self.written.append(self._plot(source, [r for r in rows if r["source"] == source]))
        plots = [str(p) for p in self.written[1:]]
        log.info("Sentiment of %d utterance(s) written to %s%s", len(rows), path,
                 f" (plot: {', '.join(plots)})" if plots else "")

    def _plot(self, source: str, rows: list[dict[str, Any]]) -> Path:
        return plot_sentiment(source, rows, plot_path(self.output_dir, source))
