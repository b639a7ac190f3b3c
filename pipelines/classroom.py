"""Classroom video -> per-face emotion table and per-student summary, inference only (no Lightning).

A pipeline in the diffusers sense: built once from a face checkpoint (or the shipped default,
:data:`models.shipped.DEFAULT_MODEL`), then called on videos::

    from pipelines import ClassroomPipeline

    pipe = ClassroomPipeline.from_checkpoint()             # or from_checkpoint("best.ckpt", detector="haar")
    result = pipe("lesson.mp4", output_dir="runs/lesson", progress=lambda done, total, eta: print(done, total, eta))
    result.table      # one row per face (features.classroom_report.predictions_table columns, smoothed)
    result.summary    # one row per student (features.classroom_report.summarize_tracks)

It analyses the frames the way ``cli.py predict --config configs/fer/predict_video.yaml`` does (same detector,
tracker, alignment and crops, :class:`features.face_stream.FaceStream`), so at the same settings it gives the same
rows (frames, track ids, boxes), but:

* a worker thread decodes, detects, crops and tracks the frames ahead of the model, through a bounded queue
  (``queue_size`` frames), so decoding and detection overlap the model;
* the crops of consecutive frames are batched through the model: one forward pass per ``batch_size`` crops;
* crops are cut at the model's input size (:attr:`models.shipped.FaceModel.image_size`, 64 px for the shipped
  model), not at the paper's 256 px;
* the forward runs on ``model_threads`` torch threads (1) beside the worker, whose detector uses OpenCV's threads;
* ``progress(frames_done, frames_total, eta_seconds)`` is called after every analysed frame (``frames_total`` and
  the ETA are None when the container gives no frame count); returning ``False`` from it, or setting the
  ``cancel`` event, stops the run cleanly (the worker is joined; the result holds the frames done so far and says
  ``cancelled``).

Frame sampling: ``every_n_frames`` is the primary setting (one source frame in n, the same stride as
``cli.py predict``'s ``--data.init_args.every_n_frames``; default 5); ``sample_fps`` is the alternative (frames per second of
video time, turned into a stride ``round(video fps / sample_fps)`` once the video is opened). Give one of them.

Stages timed (:attr:`ClassroomResult.seconds`): ``decode`` (PyAV, all frames incl. the skipped ones), ``detect``,
``align`` (eye-aligned crops), ``track`` (appearance embeddings and the tracker), ``descriptor`` (always 0 here:
:func:`models.shipped.load_face_model` reads image-only nets; descriptor-map nets go through ``cli.py predict``),
``model`` (preprocessing and forward) and ``write`` (tables, smoothing, summary, files). ``decode`` to ``track``
run in the worker thread, the rest in the caller's, so the stage seconds can add up to more than the wall time.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from common.checkpoint import read_checkpoint
from common.io import atomic_write
from features.classroom_report import (
    annotate_video,
    empty_table,
    html_report,
    plot_summary,
    plot_timelines,
    predictions_table,
    smooth_table,
    summarize_tracks,
    write_csv_atomic,
)
from features.detection import build_detector
from features.face_stream import FaceStream, TrackedFace
from features.tracking import IoUTracker
from features.video import VideoReader, VideoSourceError, check_file_source
from models.shipped import DEFAULT_MODEL, FaceModel, load_face_model

__all__ = ["STAGES", "ClassroomPipeline", "ClassroomResult", "Progress"]

log = logging.getLogger(__name__)

#: The timed stages, in pipeline order.
STAGES = ("decode", "detect", "track", "align", "descriptor", "model", "write")
#: ``progress(frames_done, frames_total, eta_seconds)``; returning ``False`` cancels the run.
Progress = Callable[[int, "int | None", "float | None"], "bool | None"]

_DONE = object()


@dataclass
class _Failure:
    """An exception of the worker, handed to the caller's thread."""

    error: BaseException
    frames: int

    def named(self, owner: str, source: str) -> RuntimeError:
        return RuntimeError(f"{owner}: reading {source!r} failed after {self.frames} analysed frame(s): "
                            f"{type(self.error).__name__}: {self.error}")


@dataclass
class ClassroomResult:
    """What one video gave.

    Attributes:
        source: the video.
        class_names: the model's classes (from its checkpoint).
        table: one row per analysed face (:func:`features.classroom_report.predictions_table` columns; ``class``
            and ``prob_*`` smoothed per track, ``raw_class`` the frame's own argmax).
        summary: one row per student (:func:`features.classroom_report.summarize_tracks`).
        every_n_frames: the frame stride used.
        frames_analysed: frames that went through detection.
        source_frames: frames of the video (decoded, unreadable ones included); the container's count when
            cancelled; None when unknown.
        seconds: wall seconds per stage (:data:`STAGES`).
        wall_s: wall seconds of the whole call.
        cancelled: the run was stopped by ``cancel`` or the progress callback (partial results).
        notes: messages for the user (no face found, unreadable frames, cancelled).
        files: the files written to ``output_dir`` (empty without one).
    """

    source: str
    class_names: list[str]
    table: pd.DataFrame
    summary: pd.DataFrame
    every_n_frames: int
    frames_analysed: int
    source_frames: int | None
    seconds: dict[str, float]
    wall_s: float
    cancelled: bool = False
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def faces(self) -> int:
        return len(self.table)

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.wall_s if self.wall_s > 0 else 0.0

    def stage_shares(self) -> dict[str, float]:
        """Each stage's share of the summed stage seconds (the stages overlap in time: worker and caller)."""
        total = sum(self.seconds.get(s, 0.0) for s in STAGES)
        return {s: self.seconds.get(s, 0.0) / total if total > 0 else 0.0 for s in STAGES}

    def frames_summary(self) -> str:
        """``"N of M frames (one in n)"``, as ``cli.py predict``'s run_info.json says it."""
        stride = "every frame" if self.every_n_frames == 1 else f"one in {self.every_n_frames}"
        return f"{self.frames_analysed} of {self.source_frames or '?'} frames ({stride})"


def _face_columns(faces: list[TrackedFace], probs: np.ndarray) -> dict[str, np.ndarray]:
    """The table's inputs for a batch of faces (the crops are dropped: a lesson has tens of thousands)."""
    no_landmarks = np.full((5, 2), np.nan)
    return {
        "probs": probs, "frame": np.array([f.frame for f in faces], np.int64),
        "time": np.array([f.time for f in faces], np.float64), "track_id": np.array([f.track_id for f in faces]),
        "box": np.array([f.detection.box for f in faces], np.float64).reshape(-1, 4),
        "score": np.array([f.detection.score for f in faces], np.float64),
        "landmarks": np.stack([no_landmarks if f.detection.landmarks is None else f.detection.landmarks
                               for f in faces]).astype(np.float64),
    }


class ClassroomPipeline:
    """Detect, track and classify every face of a classroom video with one face model.

    Args:
        model: the face model (:func:`models.shipped.load_face_model`, or an ONNX Runtime
            :class:`models.onnx_export.OnnxFaceModel`); its ``image_size`` is the crop size.
        detector: ``"mtcnn"`` (CNN with eye landmarks: aligned crops; the default of ``cli.py predict``) or
            ``"haar"`` (OpenCV cascade, no landmarks).
        min_face_size: smallest face side in source pixels; with MTCNN it bounds the image pyramid, so it is the
            speed knob of detection (detecting on a frame downscaled by s is MTCNN with ``min_face_size / s``).
        every_n_frames: analyse one source frame in n (primary; default 5 when ``sample_fps`` is not given).
        sample_fps: analyse this many frames per second of video instead (stride ``round(fps / sample_fps)``).
        alignment: ``"eyes"`` (eye-aligned crops when the detector gives landmarks) or ``"none"``.
        margin: crop margin around the face box (the training crops': 0.2).
        reid: ``"appearance"`` (a lost student is re-linked to its id by a face embedding) or ``"none"``.
        track_max_age: analysed frames a track may miss and keep its id by IoU.
        reid_max_age: analysed frames a lost track stays available for appearance re-linking.
        detector_thresholds / min_score: MTCNN's stage thresholds and least final confidence.
        batch_size: face crops per forward pass (crops of consecutive frames are batched together).
        model_threads: torch intra-op threads during the call (``torch.set_num_threads``, process-wide, restored
            afterwards); ``None`` leaves torch's setting. Default 1: the worker's detector (OpenCV's own threads)
            keeps the cores busy, and a multi-threaded OpenMP forward beside it oversubscribes them (on 2 loaded
            cores the model's seconds fell about 4x and detection's by a quarter with 1 thread instead of 2).
        queue_size: analysed frames the worker may run ahead of the model.
        smooth_window / smooth_mode: per-student moving average of the probabilities (observations).
        min_track_observations: students seen fewer times are left out of the summary and plots.
        max_tracks: most student panels in the timeline figure.
        annotated_video: ``"mp4"`` (re-decode the video with boxes and classes drawn: costs about a decode and an
            H.264 encode of the whole video) or ``"none"``.
        overwrite: ``"never"`` (an existing non-empty ``output_dir`` is refused before anything runs) or
            ``"replace"`` (this pipeline's files are replaced; others are never touched).
    """

    def __init__(
        self,
        model: FaceModel,
        detector: Literal["mtcnn", "haar"] = "mtcnn",
        min_face_size: int = 20,
        every_n_frames: int | None = None,
        sample_fps: float | None = None,
        alignment: Literal["eyes", "none"] = "eyes",
        margin: float = 0.2,
        reid: Literal["appearance", "none"] = "appearance",
        track_max_age: int = 10,
        reid_max_age: int = 150,
        detector_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
        batch_size: int = 64,
        model_threads: int | None = 1,
        queue_size: int = 8,
        smooth_window: int = 5,
        smooth_mode: Literal["centered", "causal"] = "centered",
        min_track_observations: int = 3,
        max_tracks: int = 8,
        annotated_video: Literal["mp4", "none"] = "none",
        overwrite: Literal["never", "replace"] = "never",
    ) -> None:
        name = type(self).__name__
        for label, value, allowed in (
            ("detector", detector, ("mtcnn", "haar")), ("alignment", alignment, ("eyes", "none")),
            ("reid", reid, ("appearance", "none")), ("smooth_mode", smooth_mode, ("centered", "causal")),
            ("annotated_video", annotated_video, ("mp4", "none")), ("overwrite", overwrite, ("never", "replace")),
        ):
            if value not in allowed:
                raise ValueError(f"{name}: {label} must be one of {allowed}, got {value!r}")
        if every_n_frames is not None and sample_fps is not None:
            raise ValueError(f"{name}: give every_n_frames or sample_fps, not both (got {every_n_frames} and "
                             f"{sample_fps})")
        if every_n_frames is not None and every_n_frames < 1:
            raise ValueError(f"{name}: every_n_frames must be >= 1, got {every_n_frames}")
        if sample_fps is not None and not sample_fps > 0:
            raise ValueError(f"{name}: sample_fps must be > 0, got {sample_fps}")
        if model_threads is not None and model_threads < 1:
            raise ValueError(f"{name}: model_threads must be >= 1 or None, got {model_threads}")
        for label, value in (("batch_size", batch_size), ("queue_size", queue_size), ("smooth_window", smooth_window),
                             ("min_track_observations", min_track_observations), ("max_tracks", max_tracks)):
            if value < 1:
                raise ValueError(f"{name}: {label} must be >= 1, got {value}")
        self.model = model
        self.detector = detector
        self.min_face_size = int(min_face_size)
        self.every_n_frames = None if every_n_frames is None else int(every_n_frames)
        self.sample_fps = None if sample_fps is None else float(sample_fps)
        self.alignment = alignment
        self.margin = float(margin)
        self.reid = reid
        self.track_max_age = int(track_max_age)
        self.reid_max_age = int(reid_max_age)
        self.detector_thresholds = tuple(float(t) for t in detector_thresholds)
        self.min_score = float(min_score)
        self.batch_size = int(batch_size)
        self.model_threads = None if model_threads is None else int(model_threads)
        self.queue_size = int(queue_size)
        self.smooth_window = int(smooth_window)
        self.smooth_mode = smooth_mode
        self.min_track_observations = int(min_track_observations)
        self.max_tracks = int(max_tracks)
        self.annotated_video = annotated_video
        self.overwrite = overwrite
        self._build_detector()  # bad detector settings fail here, not in the worker

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, device: str = "cpu",
                        backend: Literal["torch", "onnxruntime"] = "torch", **settings: Any) -> ClassroomPipeline:
        """The pipeline of a face checkpoint of this project (or a shipped model's name); ``None``: the shipped
        default (:data:`models.shipped.DEFAULT_MODEL`). ``settings`` are the constructor's; ``margin`` defaults to
        the checkpoint's stored crop margin (``face_margin``), as ``cli.py predict`` takes it; ``alignment`` is the
        pipeline's own setting (``"eyes"``), as it is ``cli.py predict``'s datamodule's (a stored
        ``predict_alignment`` is not read). ``backend="onnxruntime"`` runs the model through ONNX Runtime
        (:func:`models.onnx_export.load_face_runner`: exported in memory and checked against torch within 1e-4 at
        load; needs ``pip install 'affect-lightning[onnx]'``), on ``model_threads`` intra-op threads."""
        name = DEFAULT_MODEL if path is None else path
        if backend == "onnxruntime":
            from models.onnx_export import load_face_runner

            model = load_face_runner(name, backend="onnxruntime", threads=settings.get("model_threads", 1))
        elif backend == "torch":
            model = load_face_model(name, device=device)
        else:
            raise ValueError(f"{cls.__name__}: backend must be 'torch' or 'onnxruntime', got {backend!r}")
        stored = read_checkpoint(model.source, mmap=True).get("fer_preprocessing") or {}
        crop = stored.get("settings") or {} if isinstance(stored, dict) else {}
        settings = {"margin": float(crop.get("face_margin", 0.2)), **settings}
        return cls(model, **settings)

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    def _build_detector(self):
        return build_detector(self.detector, min_face_size=self.min_face_size, thresholds=self.detector_thresholds,
                              min_score=self.min_score)

    def face_stream(self) -> FaceStream:
        """A fresh detect -> crop -> track stream with this pipeline's settings (crops at the model's input size)."""
        return FaceStream(self._build_detector(), self.model.image_size, self.margin, self.alignment,
                          IoUTracker(max_age=self.track_max_age, reid_max_age=self.reid_max_age), self.reid)

    def __repr__(self) -> str:
        sampling = (f"sample_fps={self.sample_fps}" if self.sample_fps is not None
                    else f"every_n_frames={self.every_n_frames or 5}")
        return (f"{type(self).__name__}(model={self.model.source!r}, classes={self.class_names}, "
                f"detector={self.detector!r}, min_face_size={self.min_face_size}, {sampling}, "
                f"image_size={self.model.image_size}, batch_size={self.batch_size}, "
                f"model_threads={self.model_threads})")

    # ------------------------------------------------------------------ the run
    def _open(self, video: str | Path) -> tuple[VideoReader, int]:
        """The video's reader at the stride of the settings; errors name the video."""
        source = str(video)
        if not Path(source).exists():
            raise FileNotFoundError(f"{type(self).__name__}: video {source!r} does not exist")
        if check_file_source(source) != "video":  # missing, a device, a text file...: raised naming it
            raise VideoSourceError(source, "not_a_video", f"{type(self).__name__} analyses video files; use cli.py "
                                   "predict for images, folders of frames and live sources")
        probe = VideoReader(source)
        if self.sample_fps is not None:
            if probe.fps <= 0:
                raise VideoSourceError(source, "bad_source", "the container gives no frame rate: use every_n_frames "
                                       "instead of sample_fps")
            stride = max(1, round(probe.fps / self.sample_fps))
        else:
            stride = self.every_n_frames or 5
        return VideoReader(source, stride), stride

    def _check_output_dir(self, output_dir: Path) -> None:
        name = type(self).__name__
        for parent in output_dir.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise NotADirectoryError(f"{name}: output folder {str(output_dir)!r} cannot be made: "
                                             f"{str(parent)!r} is a file")
                break
        if output_dir.exists() and not output_dir.is_dir():
            raise FileExistsError(f"{name}: output_dir {str(output_dir)!r} is a file, not a folder")
        if output_dir.is_dir() and self.overwrite != "replace" and any(output_dir.iterdir()):
            raise FileExistsError(f"{name}: output folder {str(output_dir)!r} already exists and is not empty; choose "
                                  "another one or overwrite='replace'")

    @staticmethod
    def _put(q: queue.Queue, item: object, stop: threading.Event) -> bool:
        """Put ``item`` unless ``stop`` is set first (the consumer may have gone)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, reader: VideoReader, stream: FaceStream, q: queue.Queue, stop: threading.Event,
                 timings: dict[str, float]) -> None:
        """The worker: decode, detect, crop and track each sampled frame, then hand its faces on."""
        frames = iter(reader)
        n = 0
        try:
            while not stop.is_set():
                t0 = perf_counter()
                try:
                    f = next(frames)
                except StopIteration:
                    break
                finally:
                    timings["decode"] += perf_counter() - t0
                faces = stream.process(f.index, f.time, f.rgb, timings)
                n += 1
                if not self._put(q, (f.index, f.time, faces), stop):
                    return
            self._put(q, _DONE, stop)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread, which raises it
            self._put(q, _Failure(err, n), stop)
        finally:
            frames.close()  # closes the container (a generator)

    def __call__(
        self,
        video: str | Path,
        output_dir: str | Path | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> ClassroomResult:
        """Analyse ``video``; write the report files into ``output_dir`` when given.

        Args:
            video: a video file.
            output_dir: folder for ``emotions.csv``, ``summary.csv``, ``summary.png``, ``timeline_<video>.png``,
                ``report.html`` (one self-contained page), ``run_info.json`` (and ``annotated_<video>.mp4`` with
                ``annotated_video="mp4"``); every file is written atomically. None: nothing is written.
            progress: ``progress(frames_done, frames_total, eta_seconds)`` after each analysed frame; ``False``
                returned cancels.
            cancel: set it (from any thread) to stop the run.

        Raises:
            FileNotFoundError / VideoSourceError: the video is missing or not a video (naming it).
            FileExistsError: ``output_dir`` is not empty and ``overwrite="never"``.
            RuntimeError: the frame reader failed mid-video (naming the video and the frames done; the cause is
                chained).
        """
        t_start = perf_counter()
        source = str(video)
        out = Path(output_dir) if output_dir is not None else None
        if out is not None:
            self._check_output_dir(out)
        reader, stride = self._open(source)
        total = -(-reader.n_frames // stride) if reader.n_frames else None
        stream = self.face_stream()
        worker_t = dict.fromkeys(STAGES, 0.0)
        main_t = dict.fromkeys(STAGES, 0.0)
        q: queue.Queue = queue.Queue(maxsize=self.queue_size)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(reader, stream, q, stop, worker_t),
                                  name=f"{type(self).__name__}-reader", daemon=True)
        pending: list[TrackedFace] = []
        chunks: list[dict[str, np.ndarray]] = []  # per batch: probabilities and face metadata (no crops kept)
        done = 0
        cancelled = False

        def flush() -> None:
            if not pending:
                return
            t0 = perf_counter()
            probs = self.model.predict([f.crop for f in pending], batch_size=len(pending))
            main_t["model"] += perf_counter() - t0
            chunks.append(_face_columns(pending, probs))
            pending.clear()

        threads_before = torch.get_num_threads()
        if self.model_threads is not None:
            torch.set_num_threads(self.model_threads)
        worker.start()
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    cancelled = True
                    break
                try:
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    break
                if isinstance(item, _Failure):
                    raise item.named(type(self).__name__, source) from item.error
                pending.extend(item[2])
                if len(pending) >= self.batch_size:
                    flush()
                done += 1
                if progress is not None:
                    elapsed = perf_counter() - t_start
                    eta = elapsed / done * max(total - done, 0) if total else None
                    if progress(done, total, eta) is False:
                        cancelled = True
                        break
            flush()
        finally:
            torch.set_num_threads(threads_before)
            stop.set()
            while worker.is_alive():  # unblock a worker waiting on a full queue, then let it end
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
                worker.join(timeout=0.05)
        seconds = {s: worker_t[s] + main_t[s] for s in STAGES}
        t0 = perf_counter()
        result = self._result(source, reader, stride, done, chunks, cancelled, seconds)
        if out is not None:
            self._write(out, result)
        result.seconds["write"] += perf_counter() - t0
        result.wall_s = perf_counter() - t_start
        if out is not None:
            self._write_run_info(out, result)
        log.info("%s: %s: %s, %d faces, %d students%s", type(self).__name__, source, result.frames_summary(),
                 result.faces, len(result.summary), " (cancelled)" if cancelled else "")
        return result

    # ------------------------------------------------------------------ outputs
    def _result(self, source: str, reader: VideoReader, stride: int, done: int,
                chunks: list[dict[str, np.ndarray]], cancelled: bool,
                seconds: dict[str, float]) -> ClassroomResult:
        names = self.class_names
        n_faces = sum(len(c["probs"]) for c in chunks)
        if n_faces:
            col = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
            table = predictions_table(names, col["probs"], [source] * n_faces, col["frame"], col["time"],
                                      col["track_id"], col["box"], col["score"], col["landmarks"], [source] * n_faces)
            table = smooth_table(table, names, self.smooth_window, self.smooth_mode)
        else:
            table = empty_table(names)
        summary = summarize_tracks(table, names, self.min_track_observations)
        unreadable = int(reader.stats.get("unreadable", 0))
        source_frames = (int(reader.stats.get("decoded", 0)) + unreadable) if not cancelled else None
        notes = []
        if cancelled:
            notes.append(f"cancelled after {done} analysed frame(s): partial results")
        if not n_faces:
            notes.append(f"no face was found in {source} ({done} frames analysed): no tracks")
        if unreadable:
            notes.append(f"{unreadable} unreadable frame(s) of {source} were skipped")
        return ClassroomResult(source, names, table, summary, stride, done, source_frames or reader.n_frames or None,
                               seconds, 0.0, cancelled, notes)

    def _write(self, out: Path, r: ClassroomResult) -> None:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(r.source).stem or "video")[:80]
        out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(r.table, out / "emotions.csv")
        write_csv_atomic(r.summary, out / "summary.csv")
        summary_png = plot_summary(r.summary, r.class_names, out / "summary.png")
        r.files += [out / "emotions.csv", out / "summary.csv", out / "summary.png"]
        images = [("Share of the time each student was seen in each class", summary_png)]
        if len(r.table):
            timeline = out / f"timeline_{stem}.png"
            png = plot_timelines(r.table, r.source, r.class_names, timeline, self.max_tracks,
                                 self.min_track_observations)
            images.append((f"Timelines of the {self.max_tracks} students seen most", png))
            r.files.append(timeline)
        if self.annotated_video == "mp4" and not r.cancelled:
            path = out / f"annotated_{stem}.mp4"
            annotate_video(r.source, r.table, path, hold_frames=r.every_n_frames)
            r.files.append(path)
        facts = [("Video", r.source), ("Model", f"{self.model.source} ({len(r.class_names)} classes)"),
                 ("Frames analysed", r.frames_summary()), ("Faces", str(r.faces)), ("Students", str(len(r.summary))),
                 ("Smoothing", f"{self.smooth_window} observations ({self.smooth_mode})")]
        page = html_report(f"Classroom emotions: {Path(r.source).name}", r.class_names, r.summary, images, facts,
                           r.notes)
        with atomic_write(out / "report.html", "w") as fh:
            fh.write(page)
        r.files.append(out / "report.html")

    def _write_run_info(self, out: Path, r: ClassroomResult) -> None:
        info = {"sources": [r.source], "frames_analysed": r.frames_summary(), "faces": r.faces,
                "students": len(r.summary), "notes": r.notes, "smooth_window": self.smooth_window,
                "class_names": r.class_names, "model": self.model.source, "cancelled": r.cancelled,
                "settings": {"detector": self.detector, "min_face_size": self.min_face_size,
                             "every_n_frames": r.every_n_frames, "sample_fps": self.sample_fps,
                             "image_size": self.model.image_size, "batch_size": self.batch_size,
                             "model_threads": self.model_threads},
                "seconds": {k: round(v, 4) for k, v in r.seconds.items()}, "wall_s": round(r.wall_s, 4)}
        with atomic_write(out / "run_info.json", "w") as fh:
            fh.write(json.dumps(info, indent=1))
        r.files.append(out / "run_info.json")


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.classroom lesson.mp4 [--ckpt model.ckpt] [--out DIR]``: one video through the pipeline,
    with a progress line and an ETA; Ctrl-C stops it cleanly, keeping (and writing) what was analysed."""
    import argparse
    import sys
    import time

    p = argparse.ArgumentParser(prog="python -m pipelines.classroom",
                                description="Per-student emotions of a classroom video (inference pipeline).")
    p.add_argument("video", help="a video file")
    p.add_argument("--ckpt", default=None, help="a face checkpoint of this project (default: the shipped model)")
    p.add_argument("--out", default=None, help="output folder (default runs/classroom/<video stem>-<time>)")
    p.add_argument("--every-n-frames", type=int, default=None, help="analyse one frame in n (default 5)")
    p.add_argument("--sample-fps", type=float, default=None, help="or: analysed frames per second of video")
    p.add_argument("--detector", choices=["mtcnn", "haar"], default="mtcnn")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch", help="the model's runtime")
    p.add_argument("--annotated-video", choices=["mp4", "none"], default="none")
    p.add_argument("--overwrite", choices=["never", "replace"], default="never")
    a = p.parse_args(argv)
    out = Path(a.out) if a.out else Path("runs") / "classroom" / f"{Path(a.video).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        pipe = ClassroomPipeline.from_checkpoint(
            a.ckpt, backend=a.backend, every_n_frames=a.every_n_frames, sample_fps=a.sample_fps, detector=a.detector,
            min_face_size=a.min_face_size, annotated_video=a.annotated_video, overwrite=a.overwrite)
    except (OSError, ValueError) as err:
        p.exit(2, f"error: {err}\n")
    cancel = threading.Event()

    def show(done: int, total: int | None, eta: float | None) -> None:
        left = f", about {eta:.0f} s left" if eta is not None else ""
        sys.stderr.write(f"\ranalysed {done} of {total or '?'} frames{left}   ")

    try:
        result = pipe(a.video, out, progress=show, cancel=cancel)
    except KeyboardInterrupt:  # the worker is joined by the pipeline; nothing half-written is left
        cancel.set()
        return 130
    except (OSError, ValueError, RuntimeError) as err:
        p.exit(1, f"\nerror: {err}\n")
    sys.stderr.write("\n")
    print(f"{len(result.summary)} student(s), {result.faces} faces in {result.frames_summary()} "
          f"({result.faces_per_s:.1f} faces/s){' (cancelled)' if result.cancelled else ''}")
    print(f"classroom outputs: {out}/ ({', '.join(sorted(f.name for f in result.files))})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
