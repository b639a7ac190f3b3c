"""``callbacks.sentiment_writer.SentimentTimelineWriter``: an existing CSV is refused naming the flag that replaces
it (``--overwrite true``), and the run ends with a line saying where the CSV went."""

from __future__ import annotations

import csv
import logging
from types import SimpleNamespace

import pytest
import torch

from callbacks.sentiment_writer import SentimentTimelineWriter


def test_existing_csv_names_the_real_flag(tmp_path) -> None:
    (tmp_path / "sentiment.csv").write_text("id\n")
    writer = SentimentTimelineWriter(output_dir=str(tmp_path), plot="none")
    with pytest.raises(FileExistsError, match=r"sentiment\.csv already exists .*--overwrite true"):
        writer.on_predict_start(None, None)  # type: ignore[arg-type]
    writer.overwrite = "replace"  # what cli.py predict --overwrite true sets
    writer.on_predict_start(None, None)  # type: ignore[arg-type]


def test_rows_written_and_the_last_line_names_the_csv(tmp_path, caplog) -> None:
    writer = SentimentTimelineWriter(output_dir=str(tmp_path / "out"), plot="none")
    table = {"t$_$2": {"source": "t.mp4", "start_s": 1.0, "end_s": 2.0, "text": "b"},
             "t$_$1": {"source": "t.mp4", "start_s": 0.0, "end_s": 1.0, "text": "a"}}
    trainer = SimpleNamespace(datamodule=SimpleNamespace(utterances=table))
    writer.on_predict_start(trainer, None)  # type: ignore[arg-type]
    writer.write_on_batch_end(trainer, None, {"id": ["t$_$2", "t$_$1"], "pred": torch.tensor([-1.2, 2.6])},  # type: ignore[arg-type]
                              None, None, 0, 0)
    with caplog.at_level(logging.INFO, logger="callbacks.sentiment_writer"):
        writer.on_predict_end(trainer, None)  # type: ignore[arg-type]
    path = tmp_path / "out" / "sentiment.csv"
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["t$_$1", "t$_$2"] and rows[0]["class7"] == "3"
    assert f"Sentiment of 2 utterance(s) written to {path}" in caplog.records[-1].getMessage()
