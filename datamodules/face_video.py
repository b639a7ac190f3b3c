"""FaceVideoDataModule: every face of a video, a webcam, a stream or a folder of frames as prediction batches.

Prediction only (``cli.py predict --config configs/fer/predict_video.yaml``, the classroom analysis): each frame is
decoded, its faces are detected, tracked across frames (one ``track_id`` per student), aligned and cropped
(:class:`features.face_stream.FaceStream`), and each face becomes one sample.

The datamodule has no preprocessing of its own: the class names, crop size/margin/background, normalisation, colour
policy, descriptor settings and fitted SUN statistics are the trained model's, read from its checkpoint as plain
data: ``FERDataModule.preprocessing_state``, ``{"version": 1, "kind": "face_preprocessing", "settings": {...},
"sun_params": dict | None}``, which checkpoints hold as the training datamodule's state (older ones under
``checkpoint["fer_preprocessing"]``; :func:`common.preprocessing.face_preprocessing` finds either).
:meth:`FaceVideoDataModule.use_preprocessing` takes that state (``cli.py predict`` hands it over,
:func:`lightning_modules.cli_checkpoints.apply_face_preprocessing`; without ``--ckpt_path`` it is the shipped
model's); :meth:`~FaceVideoDataModule.load_state_dict`, Lightning's datamodule hook, does the same. Its own
settings are how the source is read: frame stride, detector, alignment, tracking, live-source limits. The stored
``predict_alignment`` of older checkpoints is not used: ``alignment`` is this datamodule's setting.

Batch (``docs/architecture.md``, "Face images"; ``docs/classroom.md``): ``image`` ``[B, 3, S, S]`` float32
(normalised as the model was trained), ``descriptor`` ``[B, 1, S, S]`` float32 (when the model takes descriptor
maps), ``frame`` ``[B]`` int64, ``time`` ``[B]`` float32 (seconds; 0 for still images), ``box`` ``[B, 4]`` int64
``(x, y, w, h)`` in source pixels, ``track_id`` ``[B]`` int64, ``score`` ``[B]`` float32, ``landmarks``
``[B, 5, 2]`` float32 (NaN without), ``source`` and ``path`` ``list[str]``.

What the writers read about the run (:class:`callbacks.emotion_timeline.EmotionTimelineWriter`): :attr:`sources`,
:attr:`live`, :meth:`record_live_to` / :attr:`recording`, :attr:`frame_stride`, :attr:`fps`, :attr:`stats` and
:meth:`frames_summary`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from common.choices import check_choices
from common.preprocessing import PREPROCESSING_KIND
from datamodules.base import AffectDataModule
from datamodules.datasets.images import FaceBatchTransform, FaceNormalisation
from datamodules.fer import (
    PREPROCESSING_DEFAULTS,
    PREPROCESSING_FIELDS,
    PREPROCESSING_VERSION,
    nest_flat_settings,
)
from features.descriptors import DescriptorSettings, SUNParams, compute_descriptor, to_uint8_map
from features.detection import build_detector
from features.face_stream import FaceStream
from features.faces import FaceCropSettings
from features.images import BadImageError, load_image_rgb
from features.tracking import IoUTracker
from features.video import VIDEO_EXTENSIONS, is_live_source, open_source

__all__ = ["FacePredictDataset", "FacePreprocessing", "FaceVideoDataModule"]

log = logging.getLogger(__name__)

OWNER = "FaceVideoDataModule"
#: What to do when there is no preprocessing (named in the errors).
_HOW = ("predict through `cli.py predict --config configs/fer/predict_video.yaml` (with --ckpt_path model.ckpt, or "
        "without it for the shipped model), or from Python call use_preprocessing(state) or load_state_dict(state) "
        "with the checkpoint's state (common.preprocessing.face_preprocessing(checkpoint)) first")


@dataclass(frozen=True)
class FacePreprocessing:
    """A trained face model's preprocessing, read from its checkpoint (:meth:`from_state`).

    Args:
        class_names: the model's classes (its output order).
        crop: crop size, margin and background of the training crops.
        descriptor: descriptor-map settings (``kind="none"``: no map).
        normalisation: mean/std of image and descriptor map, colour policy.
        sun_params: SUN statistics fitted on the training images (``descriptor.kind == "sun"`` only).
        origin: where it was read (named in messages).
    """

    class_names: tuple[str, ...]
    crop: FaceCropSettings
    descriptor: DescriptorSettings
    normalisation: FaceNormalisation
    sun_params: SUNParams | None = None
    origin: str = "the checkpoint"

    @classmethod
    def from_state(cls, state: dict[str, Any], origin: str = "the checkpoint",
                   inputs: Sequence[str] | None = None) -> FacePreprocessing:
        """Parse a stored preprocessing state (module docstring).

        Args:
            state: ``{"version": 1, "settings": {...}, "sun_params": dict | None}`` (plain data).
            origin: where it comes from (named in messages).
            inputs: the batch keys the model's net takes (``net.inputs``); a net without a ``descriptor`` input (a
                timm classifier) gets no descriptor maps (nothing computed, no SUN statistics needed), whatever
                descriptor its training used. ``None``: as stored.

        Raises:
            ValueError: not a preprocessing state of a known version, settings missing or invalid, or SUN descriptor
                maps without SUN statistics (each naming ``origin``).
        """
        if not isinstance(state, dict) or state.get("version") != PREPROCESSING_VERSION \
                or not isinstance(state.get("settings"), dict) or state.get("kind", PREPROCESSING_KIND) \
                != PREPROCESSING_KIND:
            raise ValueError(f"{OWNER}: {origin} holds no usable preprocessing state (version "
                             f"{state.get('version') if isinstance(state, dict) else None!r}, kind "
                             f"{state.get('kind') if isinstance(state, dict) else None!r}; expected version "
                             f"{PREPROCESSING_VERSION} with 'settings', kind {PREPROCESSING_KIND!r})")
        stored = {**PREPROCESSING_DEFAULTS, **state["settings"]}
        missing = [k for k in ("class_names", *PREPROCESSING_FIELDS) if k not in stored]
        if missing:
            raise ValueError(f"{OWNER}: {origin} lacks the preprocessing settings {missing}")
        names = stored["class_names"]
        if not isinstance(names, (list, tuple)) or not names or len(set(names)) != len(names):
            raise ValueError(f"{OWNER}: {origin} holds no usable class_names ({names!r})")
        groups = nest_flat_settings({k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()
                                     if k in PREPROCESSING_FIELDS})
        sun = state.get("sun_params")
        if inputs is not None and "descriptor" not in inputs and groups["descriptor"]["kind"] != "none":
            log.info("%s: no descriptor maps (the model of %s takes %s; trained with descriptor %r)", OWNER, origin,
                     tuple(inputs), groups["descriptor"]["kind"])
            groups["descriptor"]["kind"] = "none"
            sun = None
        try:
            crop = FaceCropSettings(**groups["crop"])
            descriptor = DescriptorSettings(**groups["descriptor"])
            normalisation = FaceNormalisation(**groups["normalisation"])
            sun_params = SUNParams(**sun) if sun and descriptor.kind == "sun" else None
        except (TypeError, ValueError) as err:
            raise ValueError(f"{OWNER}: {origin} holds invalid preprocessing settings: {err}") from err
        if descriptor.kind == "sun" and sun_params is None:
            raise ValueError(f"{OWNER}: {origin} computes SUN descriptor maps but holds no SUN statistics (a "
                             "checkpoint saved before the training data was prepared): save the checkpoint again "
                             "after prepare_data, or use a model that takes no descriptor map")
        return cls(tuple(str(n) for n in names), crop, descriptor, normalisation, sun_params, str(origin))


class FaceVideoDataModule(AffectDataModule):
    """Prediction batches of every face of one source, tracked across frames, with a trained model's preprocessing.

    Args:
        source: what to analyse: a video file, a webcam (``0`` or ``webcam:0``), a stream URL (``rtsp://...``), a
            folder of frames/images (sorted, tracked as a sequence) or one image.
        every_n_frames: frame stride of a video file: analyse one frame in n.
        detector: ``"mtcnn"`` (CNN with landmarks, the default), ``"haar"`` or ``"none"`` (each frame/image is one
            face, e.g. pre-cropped faces).
        min_face_size: smallest face side in source pixels (MTCNN: bounds its image pyramid).
        detector_thresholds: MTCNN P-/R-/O-Net thresholds.
        min_score: least MTCNN confidence of a kept face.
        alignment: ``"eyes"`` (similarity alignment by the eye landmarks, framed like the training crops) or
            ``"none"`` (box crop).
        reid: ``"appearance"`` (re-link a track after occlusion by a face embedding) or ``"none"``.
        track_max_age: analysed frames a track may miss and keep its id by IoU.
        max_fps: frame-rate cap of live sources (webcam/stream).
        max_frames: stop a live source after this many frames (``None``: until it ends or Ctrl-C).
        batch_size: faces per batch.
        progress: ``"rich"`` progress bar over the frames (total and ETA for a video file or a folder) or
            ``"none"``.

    The preprocessing (class names, crops, normalisation, descriptor maps) is the trained model's:
    :meth:`use_preprocessing` / :meth:`load_state_dict` (module docstring). Before it, :meth:`setup` and the loader
    raise an error saying how to give it, and :attr:`class_names` / :attr:`num_classes` / :attr:`image_size` do
    not exist (``cli.py``'s data links then leave the checkpoint's model settings alone).
    """

    def __init__(
        self,
        source: str,
        every_n_frames: int = 1,
        detector: Literal["mtcnn", "haar", "none"] = "mtcnn",
        min_face_size: int = 20,
        detector_thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_score: float = 0.9,
        alignment: Literal["eyes", "none"] = "eyes",
        reid: Literal["appearance", "none"] = "appearance",
        track_max_age: int = 10,
        max_fps: float | None = None,
        max_frames: int | None = None,
        batch_size: int = 32,
        progress: Literal["rich", "none"] = "rich",
    ) -> None:
        super().__init__()
        check_choices(FaceVideoDataModule, locals())
        if source is None or str(source) == "":
            raise ValueError(f"{OWNER}: source is empty: give a video file, a webcam (0, webcam:0), a stream URL, a "
                             "folder of frames or an image (--data.init_args.source lesson.mp4)")
        if every_n_frames < 1 or batch_size < 1 or min_face_size < 1 or track_max_age < 0:
            raise ValueError(f"{OWNER}: every_n_frames, batch_size and min_face_size must be >= 1 and track_max_age "
                             f">= 0, got {every_n_frames}, {batch_size}, {min_face_size}, {track_max_age}")
        if max_fps is not None and max_fps <= 0:
            raise ValueError(f"{OWNER}: max_fps must be > 0, got {max_fps}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"{OWNER}: max_frames must be >= 1, got {max_frames}")
        if len(detector_thresholds) != 3:
            raise ValueError(f"{OWNER}: detector_thresholds needs 3 values (P-, R-, O-Net), got "
                             f"{detector_thresholds}")
        self.save_hyperparameters()
        self._preprocessing: FacePreprocessing | None = None
        self._state: dict[str, Any] | None = None
        self._inputs: tuple[str, ...] | None = None
        self._collate: FaceBatchTransform | None = None
        self._dataset: FacePredictDataset | None = None
        self._record_to: Path | None = None

    # ------------------------------------------------------------------ the trained model's preprocessing
    def use_preprocessing(self, state: dict[str, Any], origin: str = "the checkpoint",
                          inputs: Sequence[str] | None = None) -> None:
        """Use a trained model's preprocessing (the state stored in its checkpoint; module docstring).

        Args:
            state: the checkpoint's preprocessing state (plain data,
                :func:`common.preprocessing.face_preprocessing`).
            origin: where it comes from (named in messages).
            inputs: the batch keys the model's net takes (``net.inputs``): without ``descriptor``, no descriptor
                maps are computed. ``None``: the inputs given before, else as stored.

        Raises:
            ValueError: see :meth:`FacePreprocessing.from_state`.
        """
        if inputs is not None:
            self._inputs = tuple(inputs)
        prep = FacePreprocessing.from_state(state, origin, self._inputs)
        if self._preprocessing is not None and _same(prep, self._preprocessing):
            return
        self._preprocessing, self._state = prep, state
        self._collate = FaceBatchTransform(prep.normalisation)
        self._dataset = None  # built again (setup / the loader) with these settings
        log.info("%s: preprocessing of %s: %d classes %s, %d px crops (margin %g), descriptor %r, colour %r", OWNER,
                 origin, len(prep.class_names), list(prep.class_names), prep.crop.image_size, prep.crop.margin,
                 prep.descriptor.kind, prep.normalisation.colour)

    def state_dict(self) -> dict[str, Any]:
        """Lightning's datamodule hook: the preprocessing state in use (``{}`` before one is given)."""
        return dict(self._state) if self._state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's datamodule hook: :meth:`use_preprocessing` (the net's inputs given before still apply)."""
        self.use_preprocessing(state_dict, origin="the restored checkpoint")

    @property
    def preprocessing(self) -> FacePreprocessing:
        """The trained model's preprocessing in use.

        Raises:
            RuntimeError: none given yet (the message says how to give it).
        """
        if self._preprocessing is None:
            raise RuntimeError(f"{OWNER}: no preprocessing: the face crops, normalisation and descriptor maps are "
                               f"the trained model's, read from its checkpoint; {_HOW}")
        return self._preprocessing

    @property
    def class_names(self) -> list[str]:
        """The model's classes (from its checkpoint)."""
        return list(self._known("class_names").class_names)

    @property
    def num_classes(self) -> int:
        return len(self._known("num_classes").class_names)

    @property
    def image_size(self) -> int:
        """Side of the face crops (the model's input size, from its checkpoint)."""
        return int(self._known("image_size").crop.image_size)

    def _known(self, name: str) -> FacePreprocessing:
        # AttributeError (not RuntimeError): jsonargparse then skips cli.py's data link of this attribute
        if self._preprocessing is None:
            raise AttributeError(f"{OWNER} has no {name} before the trained model's preprocessing is given: {_HOW}")
        return self._preprocessing

    # ------------------------------------------------------------------ LightningDataModule hooks
    def setup(self, stage: str | None = None) -> None:
        """Open the source and build the prediction dataset (a bad source fails here, before any prediction)."""
        if stage not in (None, "predict"):
            raise ValueError(f"{OWNER} serves prediction only (cli.py predict), not {stage!r}: fit, validate and "
                             "test take a training datamodule such as datamodules.fer.FERDataModule")
        if self._dataset is None:
            self._dataset = self._build_dataset()

    def _build_dataset(self) -> FacePredictDataset:
        prep, hp = self.preprocessing, self.hparams
        detector = None
        if hp.detector != "none":
            detector = build_detector(hp.detector, min_face_size=hp.min_face_size,
                                      thresholds=tuple(hp.detector_thresholds), min_score=hp.min_score)
        stream = FaceStream(detector, prep.crop.image_size, prep.crop.margin, hp.alignment,
                            IoUTracker(max_age=hp.track_max_age), hp.reid)
        dataset = FacePredictDataset(str(hp.source), prep.crop, stream, prep.descriptor, prep.sun_params,
                                     hp.every_n_frames, hp.max_fps, hp.max_frames, progress=hp.progress == "rich")
        dataset.record_to = self._record_to
        return dataset

    def predict_dataloader(self) -> DataLoader:
        """Faces in frame order (one process: a source is read once, in order)."""
        self.setup("predict")
        return DataLoader(self._dataset, batch_size=self.hparams.batch_size, num_workers=0, collate_fn=self._collate)

    # ------------------------------------------------------------------ what the writers read about the run
    @property
    def sources(self) -> list[str]:
        """The source(s) analysed, as named in the batches' ``source``."""
        return [str(self.hparams.source)]

    @property
    def live(self) -> bool:
        """Whether the source is a webcam or a stream (frames taken as they come, no total)."""
        return is_live_source(str(self.hparams.source))

    @property
    def frame_stride(self) -> int:
        """Source frames per analysed frame: ``every_n_frames`` for a video file, 1 for images and live sources."""
        return 1 if self.live else int(self.hparams.every_n_frames)

    @property
    def fps(self) -> float:
        """Frame rate of the source (0 when unknown or before :meth:`setup`)."""
        return self._dataset.fps if self._dataset is not None else 0.0

    @property
    def face_stream(self) -> FaceStream:
        """The per-frame detect -> track -> crop stream (after :meth:`setup`)."""
        if self._dataset is None:
            raise RuntimeError(f"{OWNER}: call setup('predict') before face_stream")
        return self._dataset.stream

    def record_live_to(self, path: str | Path | None) -> None:
        """Record a live source's frames to ``path`` while it is analysed (the annotated video is drawn on it); set
        before prediction starts. No effect on files and folders."""
        self._record_to = Path(path) if path is not None else None
        if self._dataset is not None:
            self._dataset.record_to = self._record_to

    @property
    def recording(self) -> Path | None:
        """Where a live source is recorded (:meth:`record_live_to`; ``None``: not recorded)."""
        return self._record_to if self.live else None

    @property
    def stats(self) -> dict[str, int]:
        """Counts of the last run: ``frames``, ``faces``, ``tracks``, ``frames_without_face``, ``unreadable``,
        ``source_frames``, ``dropped_by_fps_cap``, ``stopped_by_user``, ``skipped:<reason>`` (``{}`` before)."""
        return {k: int(v) for k, v in self._dataset.stats.items()} if self._dataset is not None else {}

    def frames_summary(self) -> str:
        """``"N of M frames (one in n)"`` after a run: frames analysed of the frames the source had."""
        if self._dataset is None:
            return "0 frames"
        return self._dataset.frames_summary()


def _same(a: FacePreprocessing, b: FacePreprocessing) -> bool:
    """The same preprocessing, wherever it was read."""
    return dataclasses.replace(a, origin=b.origin) == b


class FacePredictDataset(IterableDataset):
    """Every face of a video, a live source, a folder of frames or one image, tracked across frames, as samples.

    Each frame goes through a :class:`features.face_stream.FaceStream` (detect all faces, link them to tracks,
    eye-aligned crops), so a student keeps one ``track_id`` over the lesson. Frames without a face are counted in
    :attr:`stats` and yield nothing; unreadable video frames and images are skipped and counted (``unreadable``,
    ``skipped:<reason>``). A video that cannot be opened raises :class:`features.video.VideoSourceError` naming
    it, at construction.

    Args:
        source: video file, webcam index / ``webcam:N``, stream URL, folder (searched recursively, sorted) or image.
        crop: crop settings (background colour of images).
        stream: the per-frame detect/track/crop pipeline.
        descriptor: descriptor settings.
        sun_params: SUN statistics fitted on the training images (needed for ``"sun"``).
        every_n_frames: frame stride of videos.
        max_fps: frame-rate cap of live sources.
        max_frames: frame limit of live sources.
        progress: show a progress bar over the frames (with a total and an ETA for a video file or a folder).

    Attributes:
        record_to: path where a live source's frames are recorded (set before iterating; the annotated video of a
            live session is drawn on it).

    Shapes:
        Item: ``image`` ``[3, S, S]`` uint8, ``descriptor`` ``[1, S, S]`` uint8, ``frame`` ``[]`` int64,
        ``time`` ``[]`` float32, ``box`` ``[4]`` int64, ``track_id`` ``[]`` int64, ``score`` ``[]`` float32,
        ``landmarks`` ``[5, 2]`` float32 (NaN without), ``source``/``path`` str.
    """

    def __init__(
        self,
        source: str,
        crop: FaceCropSettings,
        stream: FaceStream,
        descriptor: DescriptorSettings,
        sun_params: SUNParams | None,
        every_n_frames: int = 1,
        max_fps: float | None = None,
        max_frames: int | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if descriptor.kind == "sun" and sun_params is None:
            raise ValueError(
                "FacePredictDataset: descriptor 'sun' needs SUN statistics fitted on the training images"
            )
        self.source = str(source)
        self.live = is_live_source(self.source)
        self._reader = None
        if self.live:
            self._reader = open_source(self.source, max_fps=max_fps, max_frames=max_frames)
        else:
            # a video file gets a reader; an image or a folder of frame images gives None (read by _frames); a
            # missing path, a device, a non-video file or a folder without images is an error naming the source
            self._reader = open_source(self.source, stride=every_n_frames)
        self.crop = crop
        self.stream = stream
        self.descriptor = descriptor
        self.sun_params = sun_params
        self.every_n_frames = int(every_n_frames)
        self.progress = bool(progress)
        self.record_to: str | Path | None = None
        self.stats: Counter = Counter()

    @property
    def fps(self) -> float:
        return float(getattr(self._reader, "fps", 0.0) or 0.0)

    def _image_files(self) -> list[Path]:
        p = Path(self.source)
        return [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))

    @property
    def source_frames(self) -> int | None:
        """Frames of the source before the stride: the container's frame count of a video file (``None`` when the
        container does not say), the number of images of a folder, ``None`` for a live source."""
        if self.live:
            return None
        if self._reader is not None:
            return int(getattr(self._reader, "n_frames", 0) or 0) or None
        return len(self._image_files())

    @property
    def expected_frames(self) -> int | None:
        """Frames that will be analysed (the progress total): ``ceil(source_frames / every_n_frames)`` for a video
        file, every image of a folder, ``None`` when unknown (a live source, a container without a frame count)."""
        total = self.source_frames
        if total is None:
            return None
        return -(-total // self.every_n_frames) if self._reader is not None else total

    def frames_summary(self) -> str:
        """``"N of M frames (one in n)"`` after iterating: frames analysed of the frames the source had."""
        n = int(self.stats.get("frames", 0))
        if self.live:
            return f"{n} frames taken from the live source"
        if self._reader is None:
            return f"{n} of {self.source_frames} images"
        total = int(self.stats.get("source_frames", 0)) or self.source_frames
        stride = "every frame" if self.every_n_frames == 1 else f"one in {self.every_n_frames}"
        return f"{n} of {total if total else '?'} frames ({stride})"

    def _with_progress(self, frames: Iterator) -> Iterator:
        """``frames`` with a rich progress bar (frames analysed, total and ETA when known) when enabled."""
        if not self.progress:
            yield from frames
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      transient=True) as bar:
            task = bar.add_task(f"Frames of {Path(self.source).name or self.source}", total=self.expected_frames)
            for item in frames:
                yield item
                bar.advance(task)

    def _is_video(self) -> bool:
        return Path(self.source).is_file() and Path(self.source).suffix.lower() in VIDEO_EXTENSIONS

    def _frames(self) -> Iterator[tuple[int, float, np.ndarray, str]]:
        """(frame index, time in s, RGB frame, source path)."""
        if self._reader is not None:
            if self.live:
                self._reader.record_to = Path(self.record_to) if self.record_to else None
            for f in self._reader:
                yield f.index, f.time, f.rgb, self.source
            for k, v in self._reader.stats.items():
                if k in ("unreadable", "dropped_by_fps_cap"):
                    self.stats[k] += v
            if not self.live:  # frames read from the container (kept or not by the stride), unreadable ones too
                self.stats["source_frames"] = self._reader.stats.get("decoded", 0) + self._reader.stats.get(
                    "unreadable", 0)
            if getattr(self._reader, "stopped_by_user", False):
                self.stats["stopped_by_user"] = 1
            return
        for i, f in enumerate(self._image_files()):
            try:
                rgb = load_image_rgb(f, self.crop.background)
            except BadImageError as err:
                log.warning("Prediction: skipping %s", err)
                self.stats[f"skipped:{err.reason}"] += 1
                continue
            yield i, 0.0, rgb, str(f)

    def __iter__(self) -> Iterator[dict]:
        self.stats = Counter()
        self.stream.reset()
        no_landmarks = torch.full((5, 2), float("nan"))
        tracks: set[int] = set()
        for frame, t, rgb, src in self._with_progress(self._frames()):
            self.stats["frames"] += 1
            faces = self.stream.process(frame, t, rgb)
            if not faces:
                self.stats["frames_without_face"] += 1
                continue
            for face in faces:
                tracks.add(face.track_id)
                det = face.detection
                item = {
                    "image": torch.from_numpy(np.ascontiguousarray(face.crop.transpose(2, 0, 1))),
                    "frame": torch.tensor(frame, dtype=torch.long),
                    "time": torch.tensor(t, dtype=torch.float32),
                    "box": torch.tensor(det.box, dtype=torch.long),
                    "track_id": torch.tensor(face.track_id, dtype=torch.long),
                    "score": torch.tensor(det.score, dtype=torch.float32),
                    "landmarks": torch.from_numpy(det.landmarks) if det.landmarks is not None else no_landmarks,
                    "source": self.source,
                    "path": src,
                }
                if self.descriptor.kind != "none":
                    m = to_uint8_map(compute_descriptor(face.crop, self.descriptor, self.sun_params))
                    item["descriptor"] = torch.from_numpy(m[None])
                self.stats["faces"] += 1
                yield item
        self.stats["tracks"] = len(tracks)
        log.info(
            "Prediction on %s: %s analysed, %d faces in %d tracks, %d frames without a face, %d unreadable "
            "frames skipped, skipped images %s",
            self.source,
            self.frames_summary(),
            self.stats["faces"],
            self.stats["tracks"],
            self.stats["frames_without_face"],
            self.stats["unreadable"],
            {k: v for k, v in self.stats.items() if k.startswith("skipped:")} or 0,
        )
        if self.stats["faces"] == 0:
            log.warning("Prediction on %s: no face found in %d frames (no tracks)", self.source, self.stats["frames"])
