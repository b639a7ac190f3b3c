"""Frames -> tracked face crops: detection, tracking and alignment of every face of a classroom video.

:class:`FaceStream` is the per-frame pipeline behind ``cli.py predict`` on videos, webcams and frame folders:
detect all faces (:mod:`features.detection`), link them to tracks (:class:`features.tracking.IoUTracker`, with
appearance re-linking from :func:`features.tracking.face_embedding` when ``reid="appearance"``) and cut the face
model's input (eye-aligned when the detector gives landmarks, :func:`features.detection.face_crop`). Frame stride and
frame-rate caps belong to the frame source (:mod:`features.video`); every frame given to :meth:`FaceStream.process`
is analysed.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Literal

import numpy as np

from features.detection import Detection, FaceDetector, face_crop
from features.tracking import IoUTracker, face_embedding

__all__ = ["FaceStream", "TrackedFace"]


@dataclass(frozen=True)
class TrackedFace:
    """One face of one frame: ``track_id`` is stable across frames; ``crop`` ``[S, S, 3]`` uint8 is the model input."""

    frame: int
    time: float
    track_id: int
    detection: Detection
    crop: np.ndarray


class FaceStream:
    """Detect, track and crop the faces of consecutive frames.

    Args:
        detector: face detector, or None to treat each whole frame as one face (pre-cropped input; track 0).
        image_size: side of the crops.
        margin: crop margin around the face (as :func:`features.faces.crop_face`).
        alignment: ``"eyes"`` (similarity transform by the eye landmarks when the detector gives them) or ``"none"``.
        tracker: the tracker (default :class:`~features.tracking.IoUTracker` with its defaults).
        reid: ``"appearance"`` (embeddings of the crops re-link tracks after occlusion) or ``"none"`` (IoU only).
    """

    def __init__(
        self,
        detector: FaceDetector | None,
        image_size: int,
        margin: float = 0.2,
        alignment: Literal["eyes", "none"] = "eyes",
        tracker: IoUTracker | None = None,
        reid: Literal["appearance", "none"] = "appearance",
    ) -> None:
        if alignment not in ("eyes", "none"):
            raise ValueError(f"FaceStream: alignment must be 'eyes' or 'none', got {alignment!r}")
        if reid not in ("appearance", "none"):
            raise ValueError(f"FaceStream: reid must be 'appearance' or 'none', got {reid!r}")
        self.detector = detector
        self.image_size = int(image_size)
        self.margin = float(margin)
        self.alignment = alignment
        self.tracker = tracker or IoUTracker()
        self.reid = reid

    def reset(self) -> None:
        self.tracker.reset()

    def process(
        self, frame: int, time: float, rgb: np.ndarray, timings: dict[str, float] | None = None
    ) -> list[TrackedFace]:
        """All faces of one frame, with track ids (an empty list when there is none).

        Args:
            timings: when given, the wall seconds of the steps are added to its ``"detect"``, ``"align"`` (the
                crops) and ``"track"`` (appearance embeddings and the tracker update) entries.

        Shapes:
            rgb: ``[H, W, 3]`` uint8.
        """
        from features.faces import crop_face

        if self.detector is None:
            h, w = rgb.shape[:2]
            det = Detection((0, 0, w, h), 1.0, None)
            return [TrackedFace(frame, time, 0, det, crop_face(rgb, None, self.image_size, self.margin))]
        t0 = perf_counter()
        dets = self.detector.detect(rgb)
        t1 = perf_counter()
        crops = [face_crop(rgb, d, self.image_size, self.margin, self.alignment) for d in dets]
        t2 = perf_counter()
        boxes = np.array([d.box for d in dets], np.float64).reshape(-1, 4)
        emb = np.stack([face_embedding(c) for c in crops]) if crops and self.reid == "appearance" else None
        ids = self.tracker.update(boxes, emb)
        if timings is not None:
            for key, seconds in (("detect", t1 - t0), ("align", t2 - t1), ("track", perf_counter() - t2)):
                timings[key] = timings.get(key, 0.0) + seconds
        return [TrackedFace(frame, time, int(t), d, c) for t, d, c in zip(ids, dets, crops)]
