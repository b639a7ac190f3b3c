"""Python API of the classroom analysis: ``analyze_video(path, ckpt) -> pandas.DataFrame``.

A video file analysed by a face model that reads the face image only (the shipped model, a timm classifier such as
ResNet-18, POSTER) goes through :class:`pipelines.classroom.ClassroomPipeline`: inference only, frames decoded and
detected ahead of the model in a worker thread, crops batched at the model's input size, progress with an ETA and
cancellation, a one-page ``report.html``. A webcam, stream, folder of frames or image, and a net that also reads
descriptor maps (the paper's two-branch Swin), go through what ``cli.py predict --config
configs/fer/predict_video.yaml --ckpt_path model.ckpt`` runs (the LightningCLI with the config's model and
:class:`callbacks.emotion_timeline.EmotionTimelineWriter`). Both give the same rows at the same settings
(``tests/pipelines``). The checkpoint brings its own net and preprocessing (class names, crops, descriptor settings,
SUN statistics); the settings below (detector, frame stride, smoothing) are the config's defaults.

Example::

    from apps.classroom_api import analyze_video
    df = analyze_video("lesson.mp4")   # the shipped FER2013 model; or analyze_video("lesson.mp4", "best.ckpt")
    df.attrs["summary"]      # one row per student: share of time per emotion, transitions, longest spell
    df.attrs["files"]        # emotions.csv, summary.csv/png, timeline_*.png, annotated_*.mp4, run_info.json
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml

__all__ = ["DEFAULT_CONFIG", "analyze_video", "default_every_n_frames"]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "fer" / "predict_video.yaml"


def default_every_n_frames(config: str | Path = DEFAULT_CONFIG) -> int:
    """The frame stride of the prediction config (``data.init_args.every_n_frames`` of its
    ``datamodules.face_video.FaceVideoDataModule``; 1 when it sets none): the one default of ``cli.py predict``,
    :func:`analyze_video` and the page."""
    cfg = yaml.safe_load(Path(config).read_text()) or {}
    value = (((cfg.get("data") or {}).get("init_args") or {}).get("every_n_frames"))
    return int(value) if value is not None else 1


def _writer_entry(callbacks: list) -> dict:
    for cb in callbacks:
        if isinstance(cb, dict) and cb.get("class_path", "").endswith("EmotionTimelineWriter"):
            return cb
    raise ValueError("the config has no callbacks.emotion_timeline.EmotionTimelineWriter under trainer.callbacks")


def analyze_video(
    source: str | int,
    ckpt: str | Path | None = None,
    output_dir: str | Path | None = None,
    config: str | Path = DEFAULT_CONFIG,
    overwrite: bool = False,
    detector: Literal["mtcnn", "haar", "none"] = "mtcnn",
    min_face_size: int = 20,
    every_n_frames: int | None = None,
    smooth_window: int = 5,
    max_fps: float | None = None,
    max_frames: int | None = None,
    batch_size: int = 64,
    annotated_video: Literal["mp4", "none"] = "mp4",
    progress: Callable[[int, int | None, float | None], bool | None] | None = None,
    cancel: threading.Event | None = None,
    engine: Literal["auto", "lightning"] = "auto",
) -> pd.DataFrame:
    """Per-student learning emotions of a video, webcam or stream.

    Args:
        source: video file, webcam index (``0`` / ``"webcam:0"``), stream URL or folder of frames.
        ckpt: a LitFER checkpoint (from ``cli.py fit`` with a ``configs/fer/`` config); ``None``: the face model
            shipped in the package (:data:`models.shipped.DEFAULT_MODEL`, FER2013's seven basic emotions).
        output_dir: where the files go (default ``runs/classroom/<source stem>-<time>``); an existing non-empty
            folder is refused unless ``overwrite``.
        config: the prediction config (its model section is replaced by the checkpoint's net and settings).
        overwrite: replace the outputs of an earlier run in ``output_dir``.
        detector / min_face_size / every_n_frames / max_fps / max_frames: see
            ``datamodules.face_video.FaceVideoDataModule``; ``every_n_frames=None`` takes the config's
            ``every_n_frames`` (:func:`default_every_n_frames`: 5 in ``predict_video.yaml``), so the API, the page
            and ``cli.py predict`` analyse the same frames.
        smooth_window: per-student moving average of the probabilities (observations).
        batch_size: faces per forward pass.
        annotated_video: ``"mp4"`` or ``"none"``.
        progress: ``progress(frames_done, frames_total, eta_seconds)`` after every analysed frame of a video file
            (the pipeline); returning ``False`` cancels.
        cancel: set it from another thread to stop a video file's analysis (the page's cancel button); the table
            then holds the frames done and ``attrs["cancelled"]`` is true.
        engine: ``"auto"`` (the inference pipeline where it applies, see the module docstring) or ``"lightning"``
            (always ``cli.py predict``'s path; for comparisons).

    Returns:
        The per-face table (columns of the CSV); ``attrs``: ``summary`` (DataFrame), ``notes`` (list of str),
        ``files`` (list of paths), ``output_dir``, ``frames_analysed`` (``"N of M frames (one in n)"``),
        ``cancelled`` (bool), ``pipeline`` (``"inference"`` or ``"lightning"``).

    Raises:
        FileNotFoundError / ValueError: missing or foreign checkpoint, a missing source, a bad video or a source
            that is no video (``features.video.VideoSourceError``: a text file, a device such as ``/dev/zero``, a
            folder without frame images), each naming the file.
        FileExistsError: the output folder exists and is not empty (or is a file).
        NotADirectoryError: the output folder cannot be made because a file stands in its path.
    """
    from callbacks.emotion_timeline import check_output_parent
    from cli import cli_main
    from common.checkpoint import CheckpointError
    from features.video import check_file_source, is_live_source
    from lightning_modules.fer import read_fer_preprocessing
    from models.shipped import shipped_checkpoint
    from pipelines.classroom import ClassroomPipeline

    ckpt = shipped_checkpoint() if ckpt is None else Path(ckpt)
    read_fer_preprocessing(ckpt)  # fail fast, naming the file, on a missing or foreign checkpoint
    if not is_live_source(source):
        check_file_source(str(source))  # fail fast: not a video, image or folder of frames (the datamodule checks too)
    if output_dir is None:
        stem = Path(str(source)).stem if not str(source).isdigit() else f"webcam{source}"
        output_dir = Path("runs") / "classroom" / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_output_parent(output_dir, "analyze_video")  # the writer checks the folder itself before predicting
    cfg = yaml.safe_load(Path(config).read_text())
    data = cfg["data"]["init_args"]
    if every_n_frames is None:
        every_n_frames = default_every_n_frames(config)
    if engine == "auto" and not is_live_source(source) and detector != "none" \
            and check_file_source(str(source)) == "video":
        try:
            pipe = ClassroomPipeline.from_checkpoint(
                ckpt, detector=detector, min_face_size=int(min_face_size), every_n_frames=int(every_n_frames),
                smooth_window=int(smooth_window), batch_size=int(batch_size),
                annotated_video=annotated_video, overwrite="replace" if overwrite else "never")
        except CheckpointError as err:
            if "descriptor" not in str(err):
                raise
            log.info("%s reads descriptor maps: analysing %s through cli.py predict", ckpt, source)
        else:
            result = pipe(source, output_dir, progress=progress, cancel=cancel)
            table = result.table
            table.attrs.update(summary=result.summary, notes=list(result.notes), files=[str(f) for f in result.files],
                               output_dir=str(output_dir), frames_analysed=result.frames_summary(),
                               cancelled=result.cancelled, pipeline="inference")
            return table
    data.update(
        source=str(source), detector=detector, min_face_size=int(min_face_size), every_n_frames=int(every_n_frames),
        max_fps=max_fps, max_frames=max_frames, batch_size=int(batch_size), progress="none",
    )
    trainer = cfg.setdefault("trainer", {})
    trainer["logger"] = False
    trainer["enable_progress_bar"] = False
    writer = _writer_entry(trainer.setdefault("callbacks", []))["init_args"]
    writer.update(output_dir=str(output_dir), smooth_window=int(smooth_window), annotated_video=annotated_video,
                  overwrite="replace" if overwrite else "never")
    # the resolved config.yaml goes to the run folder: the parent of checkpoint.dirpath (nothing is saved there)
    cfg["checkpoint"] = {**(cfg.get("checkpoint") or {}), "dirpath": str(Path(output_dir) / "checkpoints")}
    cli = cli_main(["predict", "--config", yaml.safe_dump(cfg), "--ckpt_path", str(ckpt)])
    cb = next(c for c in cli.trainer.callbacks if type(c).__name__ == "EmotionTimelineWriter")
    table = cb.table if cb.table is not None else pd.DataFrame()
    table.attrs.update(summary=cb.summary, notes=list(cb.notes), files=[str(p) for p in cb.written],
                       output_dir=str(output_dir), frames_analysed=(cb.run_info or {}).get("frames_analysed", ""),
                       cancelled=False, pipeline="lightning")
    return table
