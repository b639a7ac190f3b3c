"""Per-student learning-emotion outputs of ``cli.py predict`` (the classroom use case of the learning-emotion paper).

Reference: JI L X, REN H L, WANG W, et al. Multimodal and multiscale facial expression recognition analysis for
learning emotions. J. Zhengzhou Univ. (Eng. Sci.), 2026, 47(3): 126-133 (six learning emotions recognised per face).

The writer consumes :meth:`lightning_modules.fer.LitFER.predict_step` outputs: ``probs [B, K]`` plus the batch
metadata ``source`` (video/file), ``frame [B]``, ``time [B]`` (seconds), ``box [B, 4]`` (x, y, w, h, source
pixels), ``track_id [B]`` (one student across frames, :mod:`features.tracking`), ``score [B]``,
``landmarks [B, 5, 2]`` and ``path``. Missing metadata is left empty in the CSV. Tables, smoothing, summaries
and the annotated video come from :mod:`features.classroom_report`.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only

from common.choices import check_choices
from common.io import atomic_write
from features.classroom_report import (
    annotate_video,
    empty_table,
    plot_summary,
    plot_timelines,
    predictions_table,
    smooth_table,
    summarize_tracks,
    write_csv_atomic,
)

__all__ = ["AnalysedSource", "EmotionTimelineWriter", "check_output_parent", "plot_summary", "plot_timelines"]

log = logging.getLogger(__name__)


class AnalysedSource(Protocol):
    """What the writer reads from the predict datamodule about the source it analysed
    (``datamodules.face_video.FaceVideoDataModule``); a datamodule without it gives outputs from the batches alone
    (no frame counts, no recording of a live source).

    Attributes:
        sources: the analysed source(s), as named in the batches' ``source``.
        live: a webcam or stream (recorded to be annotated).
        recording: where a live source is recorded (``None``: not recorded).
        frame_stride: source frames per analysed frame (each box is held that long in the annotated video).
        stats: counts of the run (``frames``, ``unreadable``, ``stopped_by_user``, ...).
    """

    sources: list[str]
    live: bool
    recording: Path | None
    frame_stride: int
    stats: dict[str, int]

    def record_live_to(self, path: str | Path | None) -> None:
        """Record a live source's frames to ``path``."""

    def frames_summary(self) -> str:
        """``"N of M frames (one in n)"``."""


def check_output_parent(output_dir: str | Path, owner: str = "EmotionTimelineWriter") -> None:
    """``NotADirectoryError`` naming ``output_dir`` and the file in its way when the nearest existing parent of
    ``output_dir`` is not a folder (the folder could never be made)."""
    path = Path(output_dir)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(f"{owner}: output folder {str(path)!r} cannot be made: {str(parent)!r} is "
                                         "a file, not a folder")
            return


def _safe_stem(source: str) -> str:
    stem = Path(source).stem or "source"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80]


class EmotionTimelineWriter(BasePredictionWriter):
    """Writes the per-face CSV, per-student timelines and summary, and the annotated video of ``cli.py predict``.

    Args:
        output_dir: Folder for the outputs. With ``overwrite="never"`` (default) an existing non-empty folder is
            refused before prediction starts (``FileExistsError`` naming it; ``cli.py predict --overwrite true``
            or ``overwrite="replace"`` allows replacing this writer's files; other files are never touched).
        csv_name: per-face CSV file name.
        plot: ``"per_source"`` (``timeline_<source>.png``: one panel per student, class probabilities as stacked
            areas and the class as a line) or ``"none"``.
        x_axis: ``"time"`` (seconds; falls back to frames when time does not advance, e.g. still images) or
            ``"frame"``.
        overwrite: ``"never"`` or ``"replace"``.
        max_tracks: most student panels per timeline (the students seen most).
        smooth_window: moving-average window (observations) of each track's probabilities; 1 = off.
        smooth_mode: ``"centered"`` (offline) or ``"causal"`` (no look-ahead).
        min_track_observations: tracks seen fewer times are left out of the summary and plots (spurious
            detections); they stay in the CSV.
        annotated_video: ``"mp4"`` (``annotated_<source>.mp4``: boxes, track ids, current emotion; for video files
            and recorded live sources) or ``"none"``.
        summary: ``"csv_png"`` (``summary.csv`` and ``summary.png``) or ``"none"``.

    Files (written atomically): ``{csv_name}`` with columns ``source, frame, time, track_id, x, y, w, h, score,
    <landmark>_x/_y (left_eye, right_eye, nose, mouth_left, mouth_right), path, class, confidence, raw_class,
    prob_<class>...`` (``class``/``prob_*`` smoothed, ``raw_class`` the frame's own argmax); ``summary.csv``
    (:func:`features.classroom_report.summarize_tracks`); ``summary.png``; ``timeline_<source>.png``;
    ``annotated_<source>.mp4``; ``run_info.json`` (frame/face/track counts, unreadable frames skipped, notes). A
    live source is recorded to ``recording.mp4`` (the annotated video is drawn on it). With several processes each
    rank writes its own files (``.rank<r>`` before the suffix). On Ctrl-C (or another error) what was collected so
    far is written.

    Attributes:
        table: the per-face DataFrame of the last run; summary: the per-student DataFrame; notes: messages for the
            user (e.g. no face found); written: the files written.
    """

    def __init__(
        self,
        output_dir: str,
        csv_name: str = "emotions.csv",
        plot: Literal["per_source", "none"] = "per_source",
        x_axis: Literal["time", "frame"] = "time",
        overwrite: Literal["never", "replace"] = "never",
        max_tracks: int = 8,
        smooth_window: int = 5,
        smooth_mode: Literal["centered", "causal"] = "centered",
        min_track_observations: int = 3,
        annotated_video: Literal["mp4", "none"] = "mp4",
        summary: Literal["csv_png", "none"] = "csv_png",
    ) -> None:
        super().__init__(write_interval="batch")
        name = type(self).__name__
        check_choices(type(self), locals())
        if not csv_name.endswith(".csv"):
            raise ValueError(f"{name}: csv_name must end with .csv, got {csv_name!r}")
        if smooth_window < 1 or max_tracks < 1 or min_track_observations < 1:
            raise ValueError(f"{name}: smooth_window, max_tracks and min_track_observations must be >= 1")
        self.output_dir = Path(output_dir)
        self.csv_name = csv_name
        self.plot = plot
        self.x_axis = x_axis
        self.overwrite = overwrite
        self.max_tracks = max_tracks
        self.smooth_window = smooth_window
        self.smooth_mode = smooth_mode
        self.min_track_observations = min_track_observations
        self.annotated_video = annotated_video
        self.summary_kind = summary
        self._chunks: list[dict[str, Any]] = []
        self.written: list[Path] = []
        self.notes: list[str] = []
        self.table: pd.DataFrame | None = None
        self.summary: pd.DataFrame | None = None
        #: the content of run_info.json of the last run (``frames_analysed``: "N of M frames (one in n)", counts)
        self.run_info: dict | None = None
        self._done = False

    # ------------------------------------------------------------------ paths
    def _rank_name(self, trainer: Trainer, name: str) -> str:
        if trainer.world_size > 1:
            p = Path(name)
            return f"{p.stem}.rank{trainer.global_rank}{p.suffix}"
        return name

    def check_output_dir(self) -> None:
        """Refuse an output folder that cannot be made (a file in its place or in its path) and an existing
        non-empty one unless ``overwrite="replace"``.

        Raises:
            NotADirectoryError: a parent of ``output_dir`` is a file (naming both).
            FileExistsError: ``output_dir`` is a file, or a non-empty folder (without ``overwrite="replace"``).
        """
        check_output_parent(self.output_dir, type(self).__name__)
        if not self.output_dir.exists():
            return
        if not self.output_dir.is_dir():
            raise FileExistsError(f"{type(self).__name__}: output_dir {str(self.output_dir)!r} is a file, not a "
                                  "folder")
        if self.overwrite != "replace" and any(self.output_dir.iterdir()):
            raise FileExistsError(
                f"{type(self).__name__}: output folder {str(self.output_dir)!r} already exists and is not empty; "
                "choose another output_dir, or allow replacing its outputs (cli.py predict --overwrite true, "
                "overwrite='replace')"
            )

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """The output folder is checked here: before prediction starts and before the CLI saves its config.yaml
        into the run folder (the writer is one of the config's callbacks, which come first)."""
        if stage != "predict":
            return
        if trainer.global_rank == 0:
            self.check_output_dir()
        # a live source is recorded into the output folder (set here: the loader starts reading before
        # on_predict_start)
        src = self._source_info(trainer)
        if src is not None and src.live and src.recording is None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            src.record_live_to(self.output_dir / self._rank_name(trainer, "recording.mp4"))

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._chunks, self.written, self.notes = [], [], []
        self.table = self.summary = self.run_info = None
        self._done = False

    @staticmethod
    def _source_info(trainer: Trainer) -> AnalysedSource | None:
        """The datamodule when it describes the analysed source (:class:`AnalysedSource`, e.g.
        ``datamodules.face_video.FaceVideoDataModule``), else ``None`` (the outputs then come from the batches)."""
        dm = getattr(trainer, "datamodule", None)
        return dm if callable(getattr(dm, "frames_summary", None)) and hasattr(dm, "record_live_to") else None

    # ------------------------------------------------------------------ collection
    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch_indices: Any, batch: Any,
        batch_idx: int, dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict) or "probs" not in prediction:
            raise ValueError("EmotionTimelineWriter: predict_step must return a dict with 'probs' [B, K]")
        probs = prediction["probs"].detach().float().cpu()
        n = probs.shape[0]
        chunk: dict[str, Any] = {"probs": probs.numpy()}
        for key in ("frame", "time", "track_id", "score"):
            chunk[key] = _as_array(prediction.get(key), n, key)
        box = prediction.get("box")
        chunk["box"] = (torch.as_tensor(box).detach().cpu().reshape(n, 4).double().numpy()
                        if box is not None else np.full((n, 4), np.nan))
        lm = prediction.get("landmarks")
        chunk["landmarks"] = (torch.as_tensor(lm).detach().cpu().reshape(n, 5, 2).double().numpy()
                              if lm is not None else np.full((n, 5, 2), np.nan))
        for key in ("source", "path"):
            value = prediction.get(key)
            chunk[key] = list(value) if value is not None else [""] * n
        if not any(chunk["source"]):
            chunk["source"] = chunk["path"]
        self._chunks.append(chunk)

    # ------------------------------------------------------------------ output
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Ctrl-C or an error during prediction: write what was collected (if anything) before the run ends."""
        if self._done or not self._chunks:
            return
        log.warning("EmotionTimelineWriter: prediction stopped (%s): writing the %d batches collected so far",
                    type(exception).__name__, len(self._chunks))
        self.notes.append(f"prediction stopped early ({type(exception).__name__}): partial results")
        self._write(trainer, pl_module)

    def _class_names(self, pl_module: LightningModule, k: int | None) -> list[str]:
        names = list(getattr(pl_module, "class_names", None) or [])
        if k is not None and len(names) != k:
            names = [str(i) for i in range(k)]
        return names

    @rank_zero_only
    def _log_note(self, note: str) -> None:
        log.warning("EmotionTimelineWriter: %s", note)

    def _write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._done = True
        src = self._source_info(trainer)
        sources = list(src.sources) if src is not None else []
        if self._chunks:
            data = {key: np.concatenate([c[key] for c in self._chunks]) if key not in ("source", "path")
                    else [v for c in self._chunks for v in c[key]] for key in self._chunks[0]}
            names = self._class_names(pl_module, data["probs"].shape[1])
            table = predictions_table(names, data["probs"], data["source"], data["frame"], data["time"],
                                      data["track_id"], data["box"], data["score"], data["landmarks"], data["path"])
            table = smooth_table(table, names, self.smooth_window, self.smooth_mode)
            sources = list(dict.fromkeys([*sources, *table["source"]]))
        else:
            names = self._class_names(pl_module, None)
            table = empty_table(names)
        stats = dict(src.stats) if src is not None else {}
        for source in sources:
            if not (table["source"] == source).any():
                self.notes.append(f"no face was found in {source} ({stats.get('frames', 0)} frames analysed): "
                                  "no tracks")
        if stats.get("unreadable"):
            self.notes.append(f"{stats['unreadable']} unreadable frame(s) of {sources[0] if sources else '?'} "
                              "were skipped")
        if stats.get("stopped_by_user"):
            self.notes.append("the live source was stopped by Ctrl-C; results cover the frames taken until then")
        for note in self.notes:
            self._log_note(note)
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        csv_path = out / self._rank_name(trainer, self.csv_name)
        write_csv_atomic(table, csv_path)
        self.written.append(csv_path)
        summary = summarize_tracks(table, names, self.min_track_observations)
        if self.summary_kind == "csv_png":
            p = out / self._rank_name(trainer, "summary.csv")
            write_csv_atomic(summary, p)
            png = out / self._rank_name(trainer, "summary.png")
            plot_summary(summary, names, png)
            self.written += [p, png]
        used: set[str] = set()
        for source in sources:
            stem = _safe_stem(source)
            name, i = stem, 1
            while name in used:
                name, i = f"{stem}_{i}", i + 1
            used.add(name)
            sdf = table[table["source"] == source]
            if self.plot == "per_source" and len(sdf):
                p = out / self._rank_name(trainer, f"timeline_{name}.png")
                plot_timelines(sdf, source, names, p, self.max_tracks, self.min_track_observations,
                               self.x_axis == "time")
                self.written.append(p)
            if self.annotated_video == "mp4":
                self._annotate(src, source, sdf, out / self._rank_name(trainer, f"annotated_{name}.mp4"))
        frames = src.frames_summary() if src is not None else f"{stats.get('frames', 0)} frames"
        info = {"sources": sources, "frames_analysed": frames, "faces": len(table), "students": len(summary),
                "stats": {k: int(v) for k, v in stats.items()}, "notes": self.notes,
                "smooth_window": self.smooth_window, "class_names": names}
        p = out / self._rank_name(trainer, "run_info.json")
        with atomic_write(p, "w") as fh:
            fh.write(json.dumps(info, indent=1))
        self.written.append(p)
        self.table, self.summary, self.run_info = table, summary, info
        log.info("EmotionTimelineWriter: %d faces, %d students -> %s", len(table), len(summary), out)
        self._chunks = []

    def _annotate(self, src: AnalysedSource | None, source: str, sdf: pd.DataFrame, path: Path) -> None:
        from features.video import VIDEO_EXTENSIONS, VideoSourceError

        video = None
        if src is not None and src.live:
            video = src.recording if src.recording is not None and src.recording.is_file() else None
        elif Path(source).is_file() and Path(source).suffix.lower() in VIDEO_EXTENSIONS:
            video = Path(source)
        if video is None:
            return
        hold = src.frame_stride if src is not None else 1
        try:
            annotate_video(video, sdf, path, hold_frames=hold)
        except VideoSourceError as err:
            self.notes.append(f"annotated video not written: {err}")
            return
        self.written.append(path)


def _as_array(value: Any, n: int, key: str) -> np.ndarray:
    if value is None:
        return np.full(n, np.nan)
    arr = torch.as_tensor(value).detach().cpu().double().reshape(-1).numpy()
    if arr.shape[0] != n:
        raise ValueError(f"EmotionTimelineWriter: '{key}' has {arr.shape[0]} entries for {n} faces")
    return arr
