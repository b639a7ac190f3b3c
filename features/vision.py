"""Per-frame vision features of the speaker's face: face geometry plus an expression model or a descriptor fallback.

Paper: Li et al., HGCL, §II.C (1): "keyframes ... facial muscle movements and morphological changes ... poses".
Frames are sampled by :func:`features.video.decode_media` (default 5 fps). In every frame the faces are detected
(:mod:`features.detection`, MTCNN by default) and linked into tracks (:mod:`features.tracking`); the speaker is
the track with the largest summed box area (the largest track). Each
sampled frame gives one row:

Geometry (always; in frame-relative units so resolution does not matter):

===========================  ========================================================================================
``face_present``             1 when the speaker's face was found in this frame, else 0 (the row is masked, see below)
``box_w_rel`` / ``box_h_rel``  box width / frame width, box height / frame height
``box_cx_rel`` / ``box_cy_rel``  box centre / frame width, height
``box_dx_per_s`` / ``box_dy_per_s``  centre velocity to the previous face frame (frame widths / heights per second)
``box_scale_per_s``          d log(box width) / dt (1/s; > 0 approaching)
``det_score``                detector confidence (MTCNN O-Net probability; 1 for Haar, which has no score)
``landmarks_present``        1 when the detector gave 5 landmarks (eyes, nose, mouth corners)
``head_roll_deg``            angle of the eye line (degrees, + = clockwise in the image)
``eye_dist_rel``             inter-ocular distance / box width
``mouth_width_rel``          mouth-corner distance / inter-ocular distance (smile / mouth stretch)
``nose_offset_rel``          horizontal nose offset from the eye midpoint / inter-ocular (yaw proxy)
``nose_height_rel``          (nose - eye line) / (mouth line - eye line) heights (pitch proxy)
===========================  ========================================================================================

Landmark columns are 0 when the detector gives no landmarks. Eye and mouth *opening* need contour landmarks
(e.g. 68 points); the 5-point detectors give corners only, so opening is not measured.

Appearance (on the face crop of :func:`features.detection.face_crop`: eye-aligned when landmarks exist):

* with a face-expression model (:class:`FaceExpressionModel`: the ready net of a LitFER checkpoint written by
  ``cli.py fit`` and its stored preprocessing, given by the caller: ``python -m pipelines.extract --face-model CKPT``
  or :func:`models.shipped.load_face_expression_model`): ``prob_<class>`` (softmax class probabilities) and
  ``emb_<i>`` (the pooled embedding: the input of the classifier's last linear layer); the crop, normalisation and
  descriptor maps (SUN with its fitted statistics included) follow the preprocessing stored in the checkpoint;
* without one, the documented fallback: ``hog_<i>`` (``skimage.feature.hog`` of the grey ``crop_size`` crop,
  9 orientations, 16-pixel cells, 2x2-cell blocks, L2-Hys) and ``lbp_<cell>_<code>`` (uniform LBP, P=8, R=1,
  histograms of the 2x2 quadrants, each summing to 1).

Masking: a frame without the speaker's face has ``face_present = 0`` and all other columns 0; the extractor also
stores the boolean per-frame ``vision_face_mask``, and with ``no_face_frames="drop"`` removes such frames from the
sequence so that ``vision_lengths`` counts face frames only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from common.tensors import grey_rgb
from features.detection import Detection, FaceDetector, build_detector, face_crop
from features.tracking import IoUTracker

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

__all__ = [
    "GEOMETRY_FEATURES",
    "FaceExpressionModel",
    "VisionExtractor",
    "VisionSettings",
    "check_face_model",
    "descriptor_features",
    "face_geometry",
    "follow_speaker",
]

GEOMETRY_FEATURES: tuple[str, ...] = (
    "face_present", "box_w_rel", "box_h_rel", "box_cx_rel", "box_cy_rel", "box_dx_per_s", "box_dy_per_s",
    "box_scale_per_s", "det_score", "landmarks_present", "head_roll_deg", "eye_dist_rel", "mouth_width_rel",
    "nose_offset_rel", "nose_height_rel",
)


@dataclass(frozen=True)
class VisionSettings:
    """Vision settings (recorded in the feature file header).

    Args:
        fps: frames sampled per second of video.
        max_side: frames are downscaled to this longest side before detection (pixels).
        detector: face detector of :mod:`features.detection`: ``"mtcnn"`` (CNN with 5 landmarks) or ``"haar"``
            (OpenCV cascade, no landmarks).
        min_face_size: smallest face side searched, in pixels of the (downscaled) frame.
        descriptor: fallback appearance features without a face model: ``"hog_lbp"``, ``"hog"`` or ``"lbp"``.
        crop_size: side of the face crop for the descriptors (pixels).
        margin: crop margin, fraction of the face side added on each side.
        face_model: the face-expression checkpoint (``.ckpt``) the :class:`FaceExpressionModel` given to
            :class:`VisionExtractor` was read from, or ``None``: recorded by file name (and SHA-1 in the extractor's
            cache key); ``features/`` never reads it.
        no_face_frames: ``"flag"`` (keep faceless frames, masked) or ``"drop"`` (remove them from the sequence).
    """

    fps: float = 5.0
    max_side: int = 640
    detector: Literal["mtcnn", "haar"] = "mtcnn"
    min_face_size: int = 40
    descriptor: Literal["hog_lbp", "hog", "lbp"] = "hog_lbp"
    crop_size: int = 64
    margin: float = 0.2
    face_model: str | None = None
    no_face_frames: Literal["flag", "drop"] = "flag"

    def __post_init__(self) -> None:
        if self.detector not in ("mtcnn", "haar"):
            raise ValueError(f"VisionSettings: detector must be 'mtcnn' or 'haar', got {self.detector!r}")
        if self.descriptor not in ("hog_lbp", "hog", "lbp"):
            raise ValueError(f"VisionSettings: descriptor must be 'hog_lbp', 'hog' or 'lbp', got {self.descriptor!r}")
        if self.no_face_frames not in ("flag", "drop"):
            raise ValueError(f"VisionSettings: no_face_frames must be 'flag' or 'drop', got {self.no_face_frames!r}")
        if self.fps <= 0 or self.crop_size < 32 or self.crop_size % 16:
            raise ValueError(f"VisionSettings: need fps > 0 and crop_size a multiple of 16 >= 32, got fps={self.fps}, "
                             f"crop_size={self.crop_size}")

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.face_model is not None:
            d["face_model"] = Path(self.face_model).name
        return d


# ------------------------------------------------------------------------------------------------------ tracking
def follow_speaker(detections: Sequence[list[Detection]], tracker: IoUTracker | None = None) -> np.ndarray:
    """Index of the speaker's face in every frame (``-1``: not found).

    Faces are linked over the frames by :class:`features.tracking.IoUTracker`; the speaker is the track with the
    largest summed box area (the face that is biggest for longest).

    Returns:
        ``[T]`` int64 indices into each frame's detection list.
    """
    tracker = tracker or IoUTracker()
    tracker.reset()
    ids = [tracker.update(np.array([d.box for d in dets], np.float64).reshape(-1, 4)) for dets in detections]
    area: dict[int, float] = {}
    for dets, tid in zip(detections, ids):
        for d, i in zip(dets, tid.tolist()):
            area[i] = area.get(i, 0.0) + float(d.area)
    out = np.full(len(detections), -1, dtype=np.int64)
    if not area:
        return out
    best = min(area, key=lambda i: (-area[i], i))
    for t, tid in enumerate(ids):
        hit = np.flatnonzero(tid == best)
        if len(hit):
            out[t] = int(hit[0])
    return out


# ------------------------------------------------------------------------------------------------------ geometry
def _roll_deg(lm: np.ndarray) -> float:
    (lx, ly), (rx, ry) = lm[0], lm[1]
    return float(np.degrees(np.arctan2(ry - ly, rx - lx)))


def face_geometry(boxes: np.ndarray, present: np.ndarray, times: np.ndarray, frame_wh: tuple[int, int],
                  scores: np.ndarray, landmarks: np.ndarray | None) -> np.ndarray:
    """Geometry rows (:data:`GEOMETRY_FEATURES`) of the followed face.

    Shapes:
        boxes: ``[T, 4]`` (x, y, w, h) pixels (ignored where not present); present: ``[T]`` bool; times: ``[T]`` s;
        scores: ``[T]``; landmarks: ``[T, 5, 2]`` (NaN where absent) or ``None`` -> ``[T, 15]`` float32.
    """
    w, h = float(frame_wh[0]), float(frame_wh[1])
    t_n = len(boxes)
    out = np.zeros((t_n, len(GEOMETRY_FEATURES)), dtype=np.float64)
    prev: int | None = None
    for t in range(t_n):
        if not present[t]:
            continue
        x, y, bw, bh = boxes[t]
        cx, cy = (x + bw / 2) / w, (y + bh / 2) / h
        row = out[t]
        row[0:5] = 1.0, bw / w, bh / h, cx, cy
        if prev is not None and times[t] > times[prev]:
            dt = times[t] - times[prev]
            row[5] = (cx - out[prev, 3]) / dt
            row[6] = (cy - out[prev, 4]) / dt
            row[7] = np.log(max(bw, 1.0) / max(boxes[prev][2], 1.0)) / dt
        row[8] = scores[t]
        if landmarks is not None and np.all(np.isfinite(landmarks[t])):
            lm = landmarks[t]
            eye_mid = (lm[0] + lm[1]) / 2
            iod = float(np.linalg.norm(lm[1] - lm[0]))
            if iod > 1e-6:
                roll = np.radians(_roll_deg(lm))
                rot = np.array([[np.cos(roll), np.sin(roll)], [-np.sin(roll), np.cos(roll)]])  # undo the roll
                p = (lm - eye_mid) @ rot.T
                mouth_mid_y = (p[3, 1] + p[4, 1]) / 2
                row[9] = 1.0
                row[10] = np.degrees(roll)
                row[11] = iod / max(bw, 1.0)
                row[12] = float(np.linalg.norm(lm[4] - lm[3])) / iod
                row[13] = p[2, 0] / iod
                row[14] = p[2, 1] / mouth_mid_y if abs(mouth_mid_y) > 1e-6 else 0.0
        prev = t
    return out.astype(np.float32)


# ------------------------------------------------------------------------------------------------------ appearance
def descriptor_names(settings: VisionSettings) -> list[str]:
    names: list[str] = []
    if settings.descriptor in ("hog_lbp", "hog"):
        cells = settings.crop_size // 16
        n = (cells - 1) ** 2 * 2 * 2 * 9
        names += [f"hog_{i}" for i in range(n)]
    if settings.descriptor in ("hog_lbp", "lbp"):
        names += [f"lbp_q{q}_{c}" for q in range(4) for c in range(10)]
    return names


def descriptor_features(crop: np.ndarray, settings: VisionSettings) -> np.ndarray:
    """HOG and/or quadrant uniform-LBP histograms of a face crop (names: :func:`descriptor_names`).

    Shapes:
        crop: ``[S, S, 3]`` uint8 -> ``[len(descriptor_names(settings))]`` float32.
    """
    from skimage.feature import hog, local_binary_pattern

    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    parts = []
    if settings.descriptor in ("hog_lbp", "hog"):
        parts.append(hog(gray, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2),
                         block_norm="L2-Hys", feature_vector=True))
    if settings.descriptor in ("hog_lbp", "lbp"):
        codes = local_binary_pattern(gray, P=8, R=1, method="uniform")
        half = gray.shape[0] // 2
        for q in range(4):
            r, c = divmod(q, 2)
            block = codes[r * half:(r + 1) * half, c * half:(c + 1) * half]
            hist = np.bincount(block.astype(np.int64).ravel(), minlength=10)[:10].astype(np.float64)
            parts.append(hist / max(hist.sum(), 1.0))
    return np.concatenate(parts).astype(np.float32)


class FaceExpressionModel:
    """A face-expression net with the preprocessing it was trained with: face crops -> class probabilities and the
    pooled embedding.

    ``features/`` reads no model checkpoint and imports no model code: the caller, in a layer that may import
    ``models/``, gives the ready net and its preprocessing as plain data. :func:`models.shipped.read_face_net` returns
    both for any face checkpoint of the project (its class path checked against :data:`models.registry.FACE_NETS`,
    read with ``weights_only=True``), :func:`models.shipped.load_face_expression_model` builds this class from a
    checkpoint, and ``python -m pipelines.extract --face-model CKPT`` does it for the extractor's command line.

    Crops are normalised as in training (grey faces for ``colour: grey``, then ``mean``/``std``); nets that also take
    a descriptor map get it computed per crop as in training (quantised to 8 bits, then normalised with
    ``descriptor_mean``/``descriptor_std``), ``sun`` with the fitted SUN statistics (``sun_params``).

    Args:
        net: the face net (eval mode), called as ``net(image)`` or ``net(image, descriptor)`` (see ``inputs``) and
            returning logits ``[B, K]``; its last ``nn.Linear`` with ``K`` outputs gives the pooled embedding (that
            layer's input).
        preprocessing: plain data, as :func:`models.shipped.read_face_net` returns it: ``class_names``,
            ``num_classes`` (default: the number of names), ``image_size`` (default 112), ``face_margin`` (0.2),
            ``mean`` / ``std`` (ImageNet's), ``colour`` (``"rgb"``), ``inputs`` (default ``net.inputs``, else
            ``("image",)``), ``descriptor`` (``"none"``) with ``lbp_points``, ``lbp_radius``, ``energy_sigma``,
            ``sun_sigmas``, ``sun_ratio``, ``sun_channels``, ``descriptor_mean`` / ``descriptor_std`` (0.5), and
            ``sun_params`` (the fitted SUN statistics).
        source: where net and preprocessing were read from (the checkpoint file): named in errors, and the file
            :attr:`VisionSettings.face_model` must name.

    Shapes:
        crops: ``N`` RGB uint8 ``[image_size, image_size, 3]`` -> ``[N, K + E]`` float32.

    Raises:
        ValueError: preprocessing the net cannot be fed with (a descriptor net without a descriptor, SUN maps without
            statistics, bad descriptor settings), class names that do not match the outputs, or a net without a final
            linear layer of ``K`` outputs (all naming ``source``).
    """

    def __init__(self, net: nn.Module, preprocessing: Mapping[str, Any], source: str = "") -> None:
        from torch import nn

        from features.descriptors import DescriptorSettings, SUNParams

        name = f"FaceExpressionModel: {source or type(net).__name__}"
        cfg = dict(preprocessing)
        self.net = net
        self.source = str(source)
        self.image_size = int(cfg.get("image_size") or 112)
        self.margin = float(cfg.get("face_margin", 0.2))
        self.mean = np.asarray(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=np.float32)
        self.std = np.asarray(cfg.get("std", (0.229, 0.224, 0.225)), dtype=np.float32)
        self.colour = cfg.get("colour", "rgb")  # "grey": the model was trained on grey faces (common.tensors.grey_rgb)
        inputs = tuple(cfg.get("inputs") or getattr(net, "inputs", ("image",)))
        self.descriptor = str(cfg.get("descriptor") or "none") if "descriptor" in inputs else "none"
        if "descriptor" in inputs and self.descriptor == "none":
            raise ValueError(f"{name}: net {type(net).__name__} takes a descriptor map but the preprocessing names no "
                             "descriptor")
        self.descriptor_settings: DescriptorSettings | None = None
        self.sun_params: SUNParams | None = None
        if self.descriptor != "none":
            try:
                self.descriptor_settings = DescriptorSettings(
                    kind=self.descriptor, lbp_points=int(cfg.get("lbp_points", 8)),
                    lbp_radius=float(cfg.get("lbp_radius", 1.0)), energy_sigma=float(cfg.get("energy_sigma", 2.0)),
                    sun_sigmas=tuple(float(v) for v in cfg.get("sun_sigmas", (1.0, 2.0, 4.0, 8.0))),
                    sun_ratio=float(cfg.get("sun_ratio", 1.6)), sun_channels=cfg.get("sun_channels", "intensity"))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{name}: bad descriptor settings ({err})") from err
        if self.descriptor == "sun":
            sun = cfg.get("sun_params")
            if not isinstance(sun, Mapping) or not sun:
                raise ValueError(f"{name} uses SUN descriptor maps but holds no fitted SUN statistics (the stored "
                                 "preprocessing state's sun_params are empty: the model was saved before "
                                 "FERDataModule.prepare_data fitted them); retrain it, or use a global-only or "
                                 "LBP/energy face model")
            try:
                self.sun_params = SUNParams(**sun)
            except TypeError as err:
                raise ValueError(f"{name}: unreadable SUN statistics ({err})") from err
        self.d_mean = float(cfg.get("descriptor_mean", 0.5))
        self.d_std = float(cfg.get("descriptor_std", 0.5))
        names = cfg.get("class_names") or []
        num_classes = int(cfg.get("num_classes") or len(names))
        self.class_names = [str(n) for n in names] or [str(i) for i in range(num_classes)]
        if not num_classes or len(self.class_names) != num_classes:
            raise ValueError(f"{name} names {len(self.class_names)} classes for a net of {num_classes} outputs")
        linears = ([m for m in net.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
                   if isinstance(net, nn.Module) else [])
        if not linears:
            raise ValueError(f"{name}: {type(net).__name__} is not a torch nn.Module with a final linear layer of "
                             f"{num_classes} outputs (its input is the pooled embedding)")
        self._head = linears[-1]
        self.embed_dim = int(self._head.in_features)

    def feature_names(self) -> list[str]:
        return [f"prob_{c}" for c in self.class_names] + [f"emb_{i}" for i in range(self.embed_dim)]

    def __call__(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, K + E]`` float32 (probabilities, pooled embedding) of ``N`` RGB crops of ``image_size``."""
        import torch

        from features.descriptors import compute_descriptor, to_uint8_map

        if not len(crops):
            return np.zeros((0, len(self.feature_names())), np.float32)
        device = self._head.weight.device
        x = np.stack(crops)
        x = (grey_rgb(x) if self.colour == "grey" else x).astype(np.float32) / 255.0
        x = (x - self.mean) / self.std
        tensors = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))]
        if self.descriptor_settings is not None:  # as in training: the [0, 1] map stored as uint8, then normalised
            maps = np.stack([to_uint8_map(compute_descriptor(c, self.descriptor_settings, self.sun_params))
                             for c in crops]).astype(np.float32) / 255.0
            tensors.append(torch.from_numpy((maps[:, None] - self.d_mean) / self.d_std))
        pooled: list[torch.Tensor] = []
        # hooked for this call only: the net stays free of hooks (it can be pickled to worker processes and shared)
        hook = self._head.register_forward_pre_hook(lambda mod, inp: pooled.append(inp[0].detach()))
        try:
            with torch.inference_mode():
                logits = self.net(*(t.to(device) for t in tensors))
        finally:
            hook.remove()
        emb = pooled[-1].reshape(len(crops), -1)
        return torch.cat([logits.float().softmax(1), emb.float()], 1).cpu().numpy().astype(np.float32)


# ------------------------------------------------------------------------------------------------------ extractor
def check_face_model(settings: VisionSettings, face_model: FaceExpressionModel | None, owner: str) -> None:
    """The face model given agrees with ``settings.face_model`` (the checkpoint file the settings record).

    Raises:
        ValueError: the settings name a checkpoint but no model was given (``features/`` does not read it), a model
            was given but the settings name none, or the model was read from another file (naming ``owner``).
    """
    if settings.face_model and face_model is None:
        raise ValueError(f"{owner}: the settings name the face model {settings.face_model}, but no face model was "
                         "given: features/ reads no model checkpoints. Build it where models/ may be imported "
                         f"(models.shipped.load_face_expression_model({str(settings.face_model)!r})) and pass it as "
                         "face_model, or run the command `python -m pipelines.extract ... --face-model "
                         f"{settings.face_model}`")
    if face_model is not None and not settings.face_model:
        raise ValueError(f"{owner}: a face model ({face_model.source or type(face_model.net).__name__}) was given but "
                         "the settings name none: set VisionSettings.face_model to its checkpoint file (recorded in "
                         "the feature file's header and the cache key)")
    if (face_model is not None and face_model.source
            and os.path.abspath(face_model.source) != os.path.abspath(settings.face_model)):
        raise ValueError(f"{owner}: the face model was read from {face_model.source} but the settings name "
                         f"{settings.face_model}")


class VisionExtractor:
    """Frames -> per-frame speaker-face features (see the module docstring).

    Args:
        settings: :class:`VisionSettings`.
        face_model: the face-expression model of ``settings.face_model`` (built by the caller, see
            :class:`FaceExpressionModel`); ``None``: the descriptor fallback.

    Raises:
        ValueError: ``face_model`` and ``settings.face_model`` disagree (:func:`check_face_model`).
    """

    def __init__(self, settings: VisionSettings = VisionSettings(),
                 face_model: FaceExpressionModel | None = None) -> None:
        check_face_model(settings, face_model, "VisionExtractor")
        self.settings = settings
        self.detector: FaceDetector = build_detector(settings.detector, min_face_size=settings.min_face_size)
        self.face_model = face_model

    def feature_names(self) -> list[str]:
        appearance = self.face_model.feature_names() if self.face_model else descriptor_names(self.settings)
        return list(GEOMETRY_FEATURES) + appearance

    def __call__(self, frames: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[T, D]`` float32 and the face mask ``[T]`` bool of frames ``[T, H, W, 3]`` at ``times`` [T] s."""
        s = self.settings
        t_n = len(frames)
        dets = [self.detector.detect(f) for f in frames]
        chosen = follow_speaker(dets)
        present = chosen >= 0
        boxes = np.zeros((t_n, 4))
        scores = np.zeros(t_n)
        lms = np.full((t_n, 5, 2), np.nan) if self.detector.kind == "mtcnn" else None
        for t, k in enumerate(chosen):
            if k >= 0:
                d = dets[t][k]
                boxes[t] = d.box
                scores[t] = d.score if np.isfinite(d.score) else 1.0
                if lms is not None and d.landmarks is not None:
                    lms[t] = d.landmarks
        wh = (frames.shape[2], frames.shape[1]) if t_n else (1, 1)
        geom = face_geometry(boxes, present, times, wh, scores, lms)
        names = self.feature_names()
        app = np.zeros((t_n, len(names) - geom.shape[1]), np.float32)
        idx = np.flatnonzero(present)
        if len(idx):
            size = self.face_model.image_size if self.face_model else s.crop_size
            margin = self.face_model.margin if self.face_model else s.margin
            crops = [face_crop(frames[t], dets[t][chosen[t]], size, margin, alignment="eyes") for t in idx]
            if self.face_model is not None:
                app[idx] = self.face_model(crops)
            else:
                app[idx] = np.stack([descriptor_features(c, s) for c in crops])
        return np.concatenate([geom, app], axis=1), present
