"""Per-student emotion reports from tracked face predictions: table, smoothing, summary, plots, HTML, video.

The input is one row per analysed face (see :func:`predictions_table`): ``source, frame, time, track_id, x, y, w,
h`` (box in source pixels), ``score``, the five landmarks, and one probability per class. A *student* is one
``(source, track_id)``.

* :func:`smooth_table` averages each track's probabilities over a window of its observations
  (:func:`features.tracking.smooth_track_probabilities`) and sets ``class`` / ``confidence`` from the smoothed
  values (``raw_class`` keeps the frame's own argmax).
* :func:`summarize_tracks`: per student, the share of its observed time in each class (observations are evenly
  spaced by the frame stride, so the share of observations is the share of the time the student was seen),
  the number of class transitions and the longest spell of one class (seconds).
* :func:`plot_timelines` / :func:`plot_summary`: per-student figures (PNG bytes, optionally written atomically);
  :func:`html_report`: a one-page, self-contained HTML report (figures embedded). Titles name no class set: the
  class names are the model's (a FER2013 model's basic emotions, or the paper's learning emotions).
* :func:`annotate_video`: the source re-decoded with boxes, track ids and the current emotion drawn on it.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import pandas as pd

from common.io import atomic_write
from features.detection import LANDMARK_NAMES
from features.tracking import smooth_track_probabilities

__all__ = [
    "BASE_COLUMNS",
    "annotate_video",
    "empty_table",
    "html_report",
    "palette",
    "plot_summary",
    "plot_timelines",
    "predictions_table",
    "prob_columns",
    "smooth_table",
    "summarize_tracks",
    "write_csv_atomic",
]

log = logging.getLogger(__name__)

BASE_COLUMNS = ("source", "frame", "time", "track_id", "x", "y", "w", "h", "score")
LANDMARK_COLUMNS = tuple(f"{n}_{a}" for n in LANDMARK_NAMES for a in ("x", "y"))


def prob_columns(class_names: Sequence[str]) -> list[str]:
    return [f"prob_{c}" for c in class_names]


def empty_table(class_names: Sequence[str]) -> pd.DataFrame:
    cols = [*BASE_COLUMNS, *LANDMARK_COLUMNS, "path", "class", "confidence", "raw_class", *prob_columns(class_names)]
    return pd.DataFrame({c: pd.Series(dtype=object if c in ("source", "path", "class", "raw_class") else float)
                         for c in cols})


def _as_int(values: np.ndarray) -> pd.Series:
    """Integers (nullable: missing metadata stays empty in the CSV)."""
    return pd.Series(np.round(np.asarray(values, np.float64))).astype("Int64")


def predictions_table(
    class_names: Sequence[str],
    probs: np.ndarray,
    source: Sequence[str],
    frame: np.ndarray,
    time: np.ndarray,
    track_id: np.ndarray,
    box: np.ndarray,
    score: np.ndarray | None = None,
    landmarks: np.ndarray | None = None,
    path: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The per-face table (unsmoothed: ``class`` = ``raw_class``), sorted by source, frame, track.

    Shapes:
        probs: ``[N, K]``; frame, time, track_id, score: ``[N]``; box: ``[N, 4]``; landmarks: ``[N, 5, 2]``.
    """
    n = len(probs)
    probs = np.asarray(probs, np.float64).reshape(n, len(class_names))
    df = pd.DataFrame({
        "source": list(source), "frame": _as_int(frame), "time": np.asarray(time, np.float64),
        "track_id": _as_int(track_id),
    })
    box = np.asarray(box, np.float64).reshape(n, 4)
    for j, c in enumerate(("x", "y", "w", "h")):
        df[c] = _as_int(box[:, j])
    df["score"] = np.full(n, np.nan) if score is None else np.asarray(score, np.float64)
    lm = np.full((n, 5, 2), np.nan) if landmarks is None else np.asarray(landmarks, np.float64).reshape(n, 5, 2)
    for k, name in enumerate(LANDMARK_NAMES):
        df[f"{name}_x"], df[f"{name}_y"] = lm[:, k, 0], lm[:, k, 1]
    df["path"] = list(path) if path is not None else [""] * n
    pred = probs.argmax(axis=1) if n else np.zeros(0, int)
    names = np.asarray(class_names, dtype=object)
    df["class"] = names[pred] if n else pd.Series(dtype=object)
    df["confidence"] = probs[np.arange(n), pred] if n else np.zeros(0)
    df["raw_class"] = df["class"]
    for j, col in enumerate(prob_columns(class_names)):
        df[col] = probs[:, j]
    return df.sort_values(["source", "frame", "track_id"], kind="stable").reset_index(drop=True)


def smooth_table(
    df: pd.DataFrame, class_names: Sequence[str], window: int, mode: Literal["centered", "causal"] = "centered"
) -> pd.DataFrame:
    """Per-track moving average of the probabilities; ``class`` / ``confidence`` follow the smoothed values."""
    out = df.copy()
    if len(out) == 0 or window <= 1:
        return out
    cols = prob_columns(class_names)
    key = out.groupby(["source", "track_id"], sort=False, dropna=False).ngroup().to_numpy()
    smoothed = smooth_track_probabilities(key, out["frame"].to_numpy(), out[cols].to_numpy(), window, mode)
    out[cols] = smoothed
    pred = smoothed.argmax(axis=1)
    out["class"] = np.asarray(class_names, dtype=object)[pred]
    out["confidence"] = smoothed[np.arange(len(out)), pred]
    return out


def _frame_step(times: np.ndarray) -> float:
    d = np.diff(np.unique(times))
    return float(np.median(d)) if len(d) else 0.0


def summarize_tracks(df: pd.DataFrame, class_names: Sequence[str], min_observations: int = 3) -> pd.DataFrame:
    """One row per student (tracks with at least ``min_observations`` faces): ``source, track_id, observations,
    first_s, last_s, seen_s, share_<class>..., transitions, longest_spell_class, longest_spell_s``.

    ``seen_s`` = observations x the source's analysed-frame step (time between analysed frames; for still images
    the step is 0 and the spell lengths count observations).
    """
    cols = ["source", "track_id", "observations", "first_s", "last_s", "seen_s",
            *[f"share_{c}" for c in class_names], "transitions", "longest_spell_class", "longest_spell_s"]
    rows = []
    for source, sdf in df.groupby("source", sort=False):
        step = _frame_step(sdf["time"].to_numpy())
        for tid, t in sdf.groupby("track_id", sort=True):
            if len(t) < min_observations:
                continue
            t = t.sort_values("frame", kind="stable")
            cls = t["class"].to_numpy()
            change = np.flatnonzero(cls[1:] != cls[:-1]) + 1
            starts = np.concatenate([[0], change])
            lengths = np.diff(np.concatenate([starts, [len(cls)]]))
            best = int(np.argmax(lengths))
            unit = step if step > 0 else 1.0
            rows.append({
                "source": source, "track_id": int(tid), "observations": len(t),
                "first_s": float(t["time"].min()), "last_s": float(t["time"].max()), "seen_s": len(t) * step,
                **{f"share_{c}": float(np.mean(cls == c)) for c in class_names},
                "transitions": len(change), "longest_spell_class": cls[starts[best]],
                "longest_spell_s": float(lengths[best] * unit),
            })
    return pd.DataFrame(rows, columns=cols)


def write_csv_atomic(df: pd.DataFrame, path: Path, float_format: str = "%.4f") -> None:
    """CSV through :func:`common.io.atomic_write` (never a half-written file)."""
    with atomic_write(path, "w", newline="") as fh:
        df.to_csv(fh, index=False, float_format=float_format)


def palette(k: int) -> np.ndarray:
    import matplotlib

    return matplotlib.colormaps["tab10" if k <= 10 else "tab20"](np.arange(k))


def _track_color(tid: int) -> tuple[int, int, int]:
    rgb = palette(10)[int(tid) % 10][:3]
    return tuple(int(255 * v) for v in rgb)


def annotate_video(video: str | Path, df: pd.DataFrame, out: Path, hold_frames: int = 1,
                   max_side: int | None = 1280) -> Path | None:
    """Re-decode ``video`` and draw each analysed face (box, ``#track class confidence``) into an H.264 MP4.

    Faces of an analysed frame stay drawn for the next ``hold_frames - 1`` frames (the frame stride), so the video
    plays at the source rate. Frames wider than ``max_side`` are shrunk (labels stay readable). Returns ``out``.
    """
    from features.video import MP4Writer, VideoReader

    reader = VideoReader(video)
    by_frame = {int(f): g for f, g in df.groupby("frame")} if len(df) else {}
    current = None
    current_frame = -(10**9)
    with MP4Writer(out, fps=reader.fps or 25.0) as writer:
        for f in reader:
            if f.index in by_frame:
                current, current_frame = by_frame[f.index], f.index
            rgb = f.rgb.copy()
            scale = 1.0
            if max_side and max(rgb.shape[:2]) > max_side:
                scale = max_side / max(rgb.shape[:2])
                rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            if current is not None and f.index - current_frame < max(hold_frames, 1):
                for tid, x, y, w, h, cls, conf in current[["track_id", "x", "y", "w", "h", "class",
                                                          "confidence"]].itertuples(index=False, name=None):
                    x, y, w, h = (round(v * scale) for v in (x, y, w, h))
                    color = _track_color(tid)
                    thick = max(1, round(min(rgb.shape[:2]) / 360))
                    cv2.rectangle(rgb, (x, y), (x + w, y + h), color, thick)
                    label = f"#{int(tid)} {cls} {conf:.0%}"
                    fs = max(0.4, min(rgb.shape[:2]) / 900)
                    (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
                    ty = max(y - 4, th + 2)
                    tx = max(min(x, rgb.shape[1] - tw - 3), 0)  # keep the label inside the frame
                    cv2.rectangle(rgb, (tx, ty - th - 3), (tx + tw + 2, ty + 2), color, -1)
                    cv2.putText(rgb, label, (tx + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1,
                                cv2.LINE_AA)
            writer.write(rgb)
    return out


def _save_png(fig: Any, path: Path | None) -> bytes:
    """PNG bytes of a matplotlib figure (closed afterwards), written atomically to ``path`` unless it is None."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=120, format="png")
    finally:
        plt.close(fig)
    png = buf.getvalue()
    if path is not None:
        with atomic_write(path) as fh:
            fh.write(png)
    return png


def plot_timelines(
    df: pd.DataFrame, source: str, class_names: Sequence[str], path: Path | None, max_tracks: int = 8,
    min_observations: int = 3, time_axis: bool = True,
) -> bytes:
    """One panel per student of ``source`` (the ``max_tracks`` seen most): class probabilities as stacked areas and
    the (smoothed) class as a step line, over time (or frame index when time does not advance).

    Returns the PNG bytes, also written (atomically) to ``path`` unless it is None."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sdf = df[df["source"] == source]
    counts = sdf["track_id"].value_counts()
    ids = sorted(counts[counts >= min_observations].index[:max_tracks].tolist())
    use_time = time_axis and sdf["time"].max() > sdf["time"].min()
    k = len(class_names)
    colors = palette(k)
    fig, axes = plt.subplots(max(len(ids), 1), 1, figsize=(10, 1.8 * max(len(ids), 1) + 0.8), sharex=True,
                             squeeze=False)
    cols = prob_columns(class_names)
    for ax, tid in zip(axes[:, 0], ids):
        t = sdf[sdf["track_id"] == tid].sort_values("frame")
        x = t["time"].to_numpy() if use_time else t["frame"].to_numpy()
        ax.stackplot(x, t[cols].to_numpy().T, colors=colors, alpha=0.35, labels=list(class_names))
        ax2 = ax.twinx()
        pred = np.array([list(class_names).index(c) for c in t["class"]])
        ax2.step(x, pred, where="post", color="black", linewidth=1.2)
        ax2.set_yticks(range(k), labels=list(class_names), fontsize=7)
        ax2.set_ylim(-0.5, k - 0.5)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"student {tid}\nprob", fontsize=8)
    if not ids:
        axes[0, 0].text(0.5, 0.5, "no face tracked", ha="center", va="center", transform=axes[0, 0].transAxes)
    else:
        axes[0, 0].legend(loc="upper left", bbox_to_anchor=(0, 1.35), ncol=min(k, 7), fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("time [s]" if use_time else "frame")
    fig.suptitle(f"Emotion timeline per student: {Path(source).name}", fontsize=10)
    fig.tight_layout()
    return _save_png(fig, path)


def plot_summary(summary: pd.DataFrame, class_names: Sequence[str], path: Path | None) -> bytes:
    """One horizontal stacked bar per student: share of time in each class; transitions and longest spell.

    Returns the PNG bytes, also written (atomically) to ``path`` unless it is None."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n = len(summary)
    fig, ax = plt.subplots(figsize=(10, 0.45 * max(n, 1) + 1.6))
    colors = palette(len(class_names))
    multi = summary["source"].nunique() > 1 if n else False
    labels = [f"{Path(s).stem}: student {t}" if multi else f"student {t}"
              for s, t in zip(summary["source"], summary["track_id"])]
    left = np.zeros(n)
    for j, c in enumerate(class_names):
        v = summary[f"share_{c}"].to_numpy() if n else np.zeros(0)
        ax.barh(range(n), v, left=left, color=colors[j], label=c)
        left += v
    for i, row in enumerate(summary.itertuples(index=False)):
        ax.text(1.01, i, f"{row.transitions} changes, longest {row.longest_spell_class} {row.longest_spell_s:.1f}s",
                va="center", fontsize=7)
    ax.set_yticks(range(n), labels=labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the time the student was seen")
    if n == 0:
        ax.text(0.5, 0.5, "no face tracked", ha="center", va="center", transform=ax.transAxes)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(class_names), 7), fontsize=7,
              frameon=False)
    fig.tight_layout()
    return _save_png(fig, path)


_REPORT_CSS = (
    "body{font-family:sans-serif;margin:1.5em;max-width:1100px}table{border-collapse:collapse;font-size:0.9em}"
    "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}img{max-width:100%}"
    "dt{font-weight:bold;float:left;clear:left;width:12em}dd{margin-left:12em}"
)


def html_report(
    title: str,
    class_names: Sequence[str],
    summary: pd.DataFrame,
    images: Sequence[tuple[str, bytes]] = (),
    facts: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
) -> str:
    """A one-page, self-contained HTML report: facts, the per-student table, the figures (PNG embedded as base64
    ``data:`` URIs: the file opens in any browser, offline, without the app) and notes.

    Args:
        title: page title (e.g. the video's name).
        class_names: the model's classes (from its checkpoint), listed and used for the share columns.
        summary: :func:`summarize_tracks` output.
        images: ``(caption, png bytes)`` pairs, e.g. from :func:`plot_summary` / :func:`plot_timelines`.
        facts: ``(label, value)`` pairs shown above the table (model, frames analysed, ...).
        notes: messages for the reader (no face found, cancelled, ...).
    """
    import base64
    import html

    esc = html.escape
    shares = [f"share_{c}" for c in class_names]
    head = ["student", "observations", "first seen [s]", "last seen [s]", "seen [s]",
            *[esc(str(c)) for c in class_names], "changes", "longest spell"]
    rows = []
    for r in summary.to_dict("records"):
        cells = [f"#{int(r['track_id'])}", str(int(r["observations"])), f"{r['first_s']:.1f}", f"{r['last_s']:.1f}",
                 f"{r['seen_s']:.1f}", *[f"{100 * float(r[s]):.0f}%" for s in shares], str(int(r["transitions"])),
                 f"{esc(str(r['longest_spell_class']))} {r['longest_spell_s']:.1f}s"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if not rows:
        rows.append(f'<tr><td colspan="{len(head)}">no student was tracked</td></tr>')
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
        f"<style>{_REPORT_CSS}</style>",
        "</head><body>", f"<h1>{esc(title)}</h1>",
        "<p>Classes (from the model's checkpoint): " + ", ".join(esc(str(c)) for c in class_names) + "</p>",
        "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>",
        "<h2>Per student</h2>",
        "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>", *rows, "</table>",
    ]
    if notes:
        parts += ["<h2>Notes</h2><ul>", *[f"<li>{esc(n)}</li>" for n in notes], "</ul>"]
    for caption, png in images:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img alt="{esc(caption)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
