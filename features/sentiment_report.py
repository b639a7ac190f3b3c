"""Per-utterance sentiment of a recording as a table, a CSV and a plot over time, written once for both callers.

Used by :class:`callbacks.sentiment_writer.SentimentTimelineWriter` (``cli.py predict``) and
:class:`pipelines.recording.RecordingPipeline` (Python), so their CSVs are the same file.

Classes follow the MMSA conventions of :mod:`metrics.msa`: 2-class ``positive`` when the score is >= 0 (the "has-0"
convention of ``acc2_has0``) else ``negative``; 7-class ``round(clip(score, -3, 3))`` in -3..3 (numpy rounding, half
to even), named by :data:`CLASS7_NAMES`. Scores are rounded to 6 decimals.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.io import atomic_write

__all__ = [
    "CLASS7_NAMES",
    "CSV_COLUMNS",
    "plot_path",
    "plot_sentiment",
    "sentiment_classes",
    "sentiment_rows",
    "sentiment_table",
    "sort_rows",
    "write_sentiment_csv",
]

CLASS7_NAMES = ("strongly negative", "negative", "weakly negative", "neutral", "weakly positive", "positive",
                "strongly positive")
#: The columns of ``sentiment.csv`` (and of :func:`sentiment_table`).
CSV_COLUMNS = ("id", "source", "start_s", "end_s", "text", "score", "class2", "class7", "class7_name")


def sentiment_classes(score: float) -> tuple[str, int, str]:
    """``(class2, class7 in -3..3, class7 name)`` of a sentiment score (see the module docstring)."""
    c7 = int(np.round(np.clip(score, -3.0, 3.0)))
    return ("positive" if score >= 0 else "negative"), c7, CLASS7_NAMES[c7 + 3]


def sentiment_rows(ids: Iterable[str], scores: Iterable[float],
                   utterances: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row (:data:`CSV_COLUMNS`) per scored utterance; ``utterances``: ``{id: {"source", "start_s", "end_s",
    "text"}}``."""
    rows = []
    for uid, score in zip(ids, scores):
        c2, c7, name = sentiment_classes(score)
        rows.append({"id": uid, **utterances[uid], "score": round(float(score), 6), "class2": c2, "class7": c7,
                     "class7_name": name})
    return rows


def sort_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows in time order per source (source, start, id)."""
    return [dict(r) for r in sorted(rows, key=lambda r: (r["source"], r["start_s"], r["id"]))]


def sentiment_table(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The rows as a DataFrame with the columns of :data:`CSV_COLUMNS` (empty rows: the columns only)."""
    return pd.DataFrame([{c: r[c] for c in CSV_COLUMNS} for r in rows], columns=list(CSV_COLUMNS))


def write_sentiment_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """``sentiment.csv`` (header :data:`CSV_COLUMNS`, rows as given), written atomically."""
    path = Path(path)
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_path(output_dir: str | Path, source: str) -> Path:
    """``<output_dir>/sentiment_<source stem>.png`` (the stem made file-name safe, at most 80 characters)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem or "source")[:80]
    return Path(output_dir) / f"sentiment_{stem}.png"


def plot_sentiment(source: str, rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """The score per utterance of one source over time (one bar from start to end), written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
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
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
