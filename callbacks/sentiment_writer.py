"""Per-utterance sentiment of a recording from ``cli.py predict``: a CSV and a plot over time.

Consumes :meth:`lightning_modules.msa.LitMSA.predict_step` outputs (``id``, ``pred`` [B]) and the utterance table
of :class:`datamodules.recording.RecordingDataModule` (``source``, ``start_s``, ``end_s``, ``text`` per id).

Classes follow the MMSA conventions of :mod:`metrics.msa`: 2-class ``positive`` when the score
is >= 0 (the "has-0" convention of ``acc2_has0``) else ``negative``; 7-class ``round(clip(score, -3, 3))`` in
-3..3 (numpy rounding, half to even), named by :data:`CLASS7_NAMES`.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only

from common.io import atomic_write

__all__ = ["CLASS7_NAMES", "SentimentTimelineWriter", "sentiment_classes"]

log = logging.getLogger(__name__)

CLASS7_NAMES = ("strongly negative", "negative", "weakly negative", "neutral", "weakly positive", "positive",
                "strongly positive")
CSV_COLUMNS = ("id", "source", "start_s", "end_s", "text", "score", "class2", "class7", "class7_name")


def sentiment_classes(score: float) -> tuple[str, int, str]:
    """``(class2, class7 in -3..3, class7 name)`` of a sentiment score (see the module docstring)."""
    c7 = int(np.round(np.clip(score, -3.0, 3.0)))
    return ("positive" if score >= 0 else "negative"), c7, CLASS7_NAMES[c7 + 3]


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
        for uid, score in zip(prediction["id"], prediction["pred"].float().tolist()):
            meta = table[uid]
            c2, c7, name = sentiment_classes(score)
            self._rows.append({"id": uid, **meta, "score": round(float(score), 6), "class2": c2, "class7": c7,
                               "class7_name": name})

    @rank_zero_only
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rows = sorted(self._rows, key=lambda r: (r["source"], r["start_s"], r["id"]))
        path = self.output_dir / self.csv_name
        with atomic_write(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        self.written.append(path)
        if self.plot == "timeline" and rows:
            for source in sorted({r["source"] for r in rows}):
                self.written.append(self._plot(source, [r for r in rows if r["source"] == source]))
        plots = [str(p) for p in self.written[1:]]
        log.info("Sentiment of %d utterance(s) written to %s%s", len(rows), path,
                 f" (plot: {', '.join(plots)})" if plots else "")

    def _plot(self, source: str, rows: list[dict[str, Any]]) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows)), 3.2))
        for r in rows:
            color = "tab:green" if r["score"] >= 0 else "tab:red"
            ax.plot([r["start_s"], r["end_s"]], [r["score"], r["score"]], color=color, linewidth=4)
        mids = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
        ax.plot(mids, [r["score"] for r in rows], color="grey", linewidth=1, linestyle="--")
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylim(-3.2, 3.2)
        ax.set_xlabel("time (s)")
        ax.set_ylabel("sentiment score")
        ax.set_title(f"{source}: sentiment per utterance")
        fig.tight_layout()
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem or "source")[:80]
        path = self.output_dir / f"sentiment_{stem}.png"
        with atomic_write(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)
        return path
