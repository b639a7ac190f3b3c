"""Face tracks across video frames and per-track smoothing of class probabilities.

Matching follows SORT (Bewley et al., *Simple Online and Realtime Tracking*, ICIP 2016,
https://arxiv.org/abs/1602.00763) without the Kalman filter: each frame, the detections are assigned to the live
tracks by the Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) on the cost ``1 - IoU`` between
each detection and the track's predicted box (last box moved by its smoothed velocity); a pair is accepted when
its IoU reaches ``iou_threshold``. A track not matched for more than ``max_age`` processed frames stops being
matched by IoU. With appearance embeddings (DeepSORT's idea, Wojke et al. 2017, https://arxiv.org/abs/1703.07402)
the detections left over are then matched, again by the Hungarian algorithm, on cosine distance to the tracks'
mean embeddings -- including the tracks lost for up to ``reid_max_age`` frames -- so a student hidden by
another for a moment gets the old id back; the rest start new tracks.

:func:`face_embedding` is a cheap appearance descriptor (a normalised grey thumbnail of the face crop).
:func:`smooth_track_probabilities` averages class probabilities over a window of a track's observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["IoUTracker", "Track", "box_iou", "face_embedding", "smooth_track_probabilities"]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of ``(x, y, w, h)`` boxes.

    Shapes:
        a: ``[N, 4]``, b: ``[M, 4]`` -> ``[N, M]`` float64.
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def face_embedding(crop: np.ndarray, size: int = 24) -> np.ndarray:
    """Appearance vector of a face crop: grey, histogram-equalised ``size x size`` thumbnail, zero mean, unit norm.

    Cheap and lighting-robust enough to tell the students of one shot apart over seconds; not an identity model.

    Shapes:
        crop: ``[S, S, 3]`` or ``[S, S]`` uint8 -> ``[size * size]`` float32.
    """
    grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    thumb = cv2.equalizeHist(cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA)).astype(np.float32)
    thumb -= thumb.mean()
    n = float(np.linalg.norm(thumb))
    return (thumb / n if n > 1e-6 else thumb).ravel()


@dataclass
class Track:
    """State of one face track.

    Attributes:
        track_id: id (0, 1, 2, ... in order of creation).
        box: last matched box ``(x, y, w, h)`` float64 ``[4]``.
        velocity: smoothed box change per processed frame ``[4]``.
        last_step: index of the processed frame it was last matched in.
        hits: number of matched detections.
        embedding: running mean of its appearance embeddings (unit norm), or None.
    """

    track_id: int
    box: np.ndarray
    last_step: int
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    hits: int = 1
    embedding: np.ndarray | None = None

    def predicted(self, step: int) -> np.ndarray:
        return self.box + self.velocity * (step - self.last_step)


class IoUTracker:
    """Online multi-face tracker: Hungarian IoU matching, max-age for gaps, optional appearance re-linking.

    Call :meth:`update` once per processed frame (frames skipped by a detection stride simply are not passed:
    ages count processed frames).

    Args:
        iou_threshold: least IoU between a detection and a track's predicted box to link them.
        max_age: processed frames a track may go unmatched and still be matched by IoU.
        motion: ``"constant_velocity"`` (predict the box from the smoothed velocity, helps faces that move
            across each other) or ``"none"`` (last box).
        velocity_momentum: weight of the old velocity in its exponential smoothing.
        embedding_threshold: least cosine similarity for an appearance match (used only when :meth:`update`
            gets embeddings).
        reid_max_age: processed frames a lost track stays available for appearance re-linking.
        embedding_momentum: weight of the old mean in the track's running embedding.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_age: int = 10,
        motion: Literal["constant_velocity", "none"] = "constant_velocity",
        velocity_momentum: float = 0.6,
        embedding_threshold: float = 0.75,
        reid_max_age: int = 150,
        embedding_momentum: float = 0.9,
    ) -> None:
        name = type(self).__name__
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"{name}: iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_age < 0 or reid_max_age < 0:
            raise ValueError(f"{name}: max_age and reid_max_age must be >= 0, got {max_age}, {reid_max_age}")
        if motion not in ("constant_velocity", "none"):
            raise ValueError(f"{name}: motion must be 'constant_velocity' or 'none', got {motion!r}")
        if not -1.0 <= embedding_threshold <= 1.0:
            raise ValueError(f"{name}: embedding_threshold must be a cosine in [-1, 1], got {embedding_threshold}")
        for label, v in (("velocity_momentum", velocity_momentum), ("embedding_momentum", embedding_momentum)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name}: {label} must be in [0, 1), got {v}")
        self.iou_threshold = float(iou_threshold)
        self.max_age = int(max_age)
        self.motion = motion
        self.velocity_momentum = float(velocity_momentum)
        self.embedding_threshold = float(embedding_threshold)
        self.reid_max_age = int(reid_max_age)
        self.embedding_momentum = float(embedding_momentum)
        self.tracks: list[Track] = []
        self.step = -1
        self._next_id = 0

    def reset(self) -> None:
        self.tracks, self.step, self._next_id = [], -1, 0

    def _assign(self, score: np.ndarray, threshold: float) -> list[tuple[int, int]]:
        """Hungarian assignment maximising ``score`` [N, M]; pairs below ``threshold`` are dropped."""
        if score.size == 0:
            return []
        rows, cols = linear_sum_assignment(-score)
        return [(int(r), int(c)) for r, c in zip(rows, cols) if score[r, c] >= threshold]

    def _new_track(self, box: np.ndarray, emb: np.ndarray | None) -> Track:
        t = Track(self._next_id, box.copy(), self.step, embedding=None if emb is None else emb.copy())
        self._next_id += 1
        self.tracks.append(t)
        return t

    def _match(self, t: Track, box: np.ndarray, emb: np.ndarray | None) -> None:
        gap = max(self.step - t.last_step, 1)
        if self.motion == "constant_velocity":
            v = (box - t.box) / gap
            t.velocity = self.velocity_momentum * t.velocity + (1 - self.velocity_momentum) * v if t.hits > 1 else v
        t.box = box.copy()
        t.last_step = self.step
        t.hits += 1
        if emb is not None:
            if t.embedding is None:
                t.embedding = emb.copy()
            else:
                m = self.embedding_momentum * t.embedding + (1 - self.embedding_momentum) * emb
                t.embedding = m / max(float(np.linalg.norm(m)), 1e-12)

    def update(self, boxes: np.ndarray, embeddings: np.ndarray | None = None) -> np.ndarray:
        """Link one processed frame's detections to tracks.

        Args:
            boxes: detections of this frame ``(x, y, w, h)``.
            embeddings: optional unit-norm appearance vectors of the detections (:func:`face_embedding`).

        Returns:
            Track id of each detection.

        Shapes:
            boxes: ``[K, 4]``; embeddings: ``[K, D]`` -> ``[K]`` int64.
        """
        self.step += 1
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        k = len(boxes)
        if embeddings is not None:
            embeddings = np.asarray(embeddings, np.float32).reshape(k, -1)
        ids = np.full(k, -1, dtype=np.int64)
        # misses of a track before this frame: self.step - t.last_step - 1
        keep = max(self.max_age, self.reid_max_age)
        self.tracks = [t for t in self.tracks if self.step - t.last_step - 1 <= keep]
        live = [t for t in self.tracks if self.step - t.last_step - 1 <= self.max_age]
        # 1) IoU against the predicted boxes of the live tracks
        if live and k:
            pred = np.stack([t.predicted(self.step) if self.motion != "none" else t.box for t in live])
            for r, c in self._assign(box_iou(pred, boxes), self.iou_threshold):
                ids[c] = live[r].track_id
                self._match(live[r], boxes[c], None if embeddings is None else embeddings[c])
        # 2) appearance against every unmatched track still kept (live or recently lost)
        todo = np.flatnonzero(ids < 0)
        if embeddings is not None and len(todo):
            matched = set(ids[ids >= 0].tolist())
            cand = [t for t in self.tracks if t.embedding is not None and t.track_id not in matched
                    and t.last_step < self.step]
            if cand:
                sim = np.stack([t.embedding for t in cand]) @ embeddings[todo].T
                for r, c in self._assign(sim, self.embedding_threshold):
                    det = todo[c]
                    ids[det] = cand[r].track_id
                    cand[r].velocity = np.zeros(4)  # a re-found face: its old motion no longer applies
                    cand[r].hits = 1
                    self._match(cand[r], boxes[det], embeddings[det])
        # 3) the rest start tracks
        for det in np.flatnonzero(ids < 0):
            ids[det] = self._new_track(boxes[det], None if embeddings is None else embeddings[det]).track_id
        return ids


def smooth_track_probabilities(
    track_ids: np.ndarray,
    order: np.ndarray,
    probs: np.ndarray,
    window: int,
    mode: Literal["centered", "causal"] = "centered",
) -> np.ndarray:
    """Moving average of each track's class probabilities over ``window`` of its observations.

    ``"centered"`` averages the ``window`` observations around each one (offline analysis), ``"causal"`` the
    current one and the ``window - 1`` before it (live use: no look-ahead). At track ends the window is shorter.
    ``window=1`` returns the probabilities unchanged. Rows stay in their input order.

    Shapes:
        track_ids: ``[N]``; order: ``[N]`` (frame index or time, sorts a track's rows); probs: ``[N, K]``
        -> ``[N, K]`` float64 (rows still sum to 1).
    """
    if window < 1:
        raise ValueError(f"smooth_track_probabilities: window must be >= 1, got {window}")
    if mode not in ("centered", "causal"):
        raise ValueError(f"smooth_track_probabilities: mode must be 'centered' or 'causal', got {mode!r}")
    track_ids = np.asarray(track_ids)
    probs = np.asarray(probs, np.float64)
    out = probs.copy()
    if window == 1 or len(probs) == 0:
        return out
    before = window - 1 if mode == "causal" else (window - 1) // 2
    after = 0 if mode == "causal" else window - 1 - before
    for tid in np.unique(track_ids):
        rows = np.flatnonzero(track_ids == tid)
        rows = rows[np.argsort(np.asarray(order)[rows], kind="stable")]
        p = probs[rows]
        csum = np.vstack([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])
        i = np.arange(len(rows))
        lo, hi = np.clip(i - before, 0, None), np.clip(i + after + 1, None, len(rows))
        out[rows] = (csum[hi] - csum[lo]) / (hi - lo)[:, None]
    return out
