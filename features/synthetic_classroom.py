"""Classroom-like test frames composed from real face portraits (detector evaluation, tracking tests, benchmarks).

A :class:`Portrait` is a real photo with its face box (e.g. a JAFFE image and its Haar box on the full-resolution
portrait). :func:`compose_frame` pastes portraits into a wide frame so that each *face* has a chosen side in
pixels, with the nuisances of a classroom shot: head roll (rotation about the face centre), Gaussian blur, and
reduced contrast and brightness. Each portrait is blended in through a feathered ellipse so no rectangle edge is
left for a detector to fire on. The ground-truth face boxes are returned in frame pixels (the rotated face's box
keeps its side: a rolled face is still one face of that size).

:func:`crossing_scene` makes the frames of two faces that swap size and cross paths (the tracking test).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["Nuisances", "Portrait", "compose_frame", "crossing_scene", "paste_face"]


@dataclass(frozen=True)
class Portrait:
    """A real photo and its face box ``(x, y, w, h)`` in the photo's pixels; ``name`` identifies the person."""

    rgb: np.ndarray
    box: tuple[int, int, int, int]
    name: str = ""


@dataclass(frozen=True)
class Nuisances:
    """Ranges sampled per face (tilt, blur) and per frame (contrast, brightness).

    Attributes:
        max_tilt: head roll drawn uniformly in ``[-max_tilt, max_tilt]`` degrees.
        max_blur: Gaussian blur sigma drawn uniformly in ``[0, max_blur * face side / 100]`` pixels.
        contrast: contrast factor range (1 = unchanged).
        brightness: brightness factor range applied after contrast (1 = unchanged).
    """

    max_tilt: float = 25.0
    max_blur: float = 1.5
    contrast: tuple[float, float] = (0.45, 1.0)
    brightness: tuple[float, float] = (0.45, 1.0)


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A plain room: vertical brightness gradient, a few desk-like dark bands and sensor noise."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    base = 150 + 50 * y + np.zeros((height, width), np.float32)
    for _ in range(3):
        y0 = int(rng.integers(height // 3, height))
        base[y0: y0 + int(rng.integers(10, 40))] *= 0.6
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    tint = np.array([1.0, 0.97, 0.92], np.float32)
    return np.clip(base[..., None] * tint, 0, 255).astype(np.uint8)


def paste_face(
    frame: np.ndarray,
    portrait: Portrait,
    center: tuple[float, float],
    face_side: float,
    tilt: float = 0.0,
    blur_sigma: float = 0.0,
) -> np.ndarray:
    """Paste ``portrait`` into ``frame`` (in place) so its face box has side ``face_side`` and its centre at
    ``center``, rolled by ``tilt`` degrees; returns the ground-truth face box ``[4]`` (x, y, w, h) float64."""
    x, y, w, h = (float(v) for v in portrait.box)
    scale = face_side / max(w, h)
    fcx, fcy = x + w / 2.0, y + h / 2.0
    m = cv2.getRotationMatrix2D((fcx, fcy), tilt, scale)
    m[0, 2] += center[0] - fcx
    m[1, 2] += center[1] - fcy
    H, W = frame.shape[:2]
    src = portrait.rgb if portrait.rgb.ndim == 3 else cv2.cvtColor(portrait.rgb, cv2.COLOR_GRAY2RGB)
    warped = cv2.warpAffine(src, m, (W, H), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    if blur_sigma > 0:
        warped = cv2.GaussianBlur(warped, (0, 0), blur_sigma)
    # feathered ellipse around the face (1.5 x 1.8 face sides), within the portrait, in frame coordinates
    mask = np.zeros((H, W), np.float32)
    axes = (int(0.75 * face_side), int(0.9 * face_side))
    cv2.ellipse(mask, (int(center[0]), int(center[1] + 0.05 * face_side)), axes, -tilt, 0, 360, 1.0, -1)
    inside = cv2.warpAffine(np.ones(src.shape[:2], np.float32), m, (W, H), flags=cv2.INTER_NEAREST)
    mask = cv2.GaussianBlur(mask * inside, (0, 0), max(face_side * 0.08, 1.0))[..., None]
    frame[:] = (frame * (1 - mask) + warped * mask).astype(np.uint8)
    return np.array([center[0] - face_side / 2, center[1] - face_side / 2, face_side, face_side])


def compose_frame(
    portraits: Sequence[Portrait],
    sizes: Sequence[float],
    rng: np.random.Generator,
    width: int = 1280,
    height: int = 720,
    nuisances: Nuisances | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One frame with ``portraits[i]``'s face pasted at side ``sizes[i]`` px, at non-overlapping random places.

    Faces that do not fit after 200 tries are left out (their ground truth too).

    Returns:
        ``(frame [height, width, 3] uint8, boxes [K, 4] float64)`` with ``K <= len(sizes)``.
    """
    nz = nuisances or Nuisances()
    frame = _background(height, width, rng)
    placed: list[np.ndarray] = []
    order = np.argsort(-np.asarray(sizes, float))  # big first: they are the hardest to fit
    boxes: list[np.ndarray] = []
    for i in order:
        s = float(sizes[i])
        pad = 1.1 * s  # the pasted ellipse reaches ~1 face side around the centre
        for _ in range(200):
            cx, cy = rng.uniform(pad, width - pad), rng.uniform(pad, height - pad) if height > 2 * pad else height / 2
            foot = np.array([cx - pad, cy - pad, cx + pad, cy + pad])
            if all(foot[2] < q[0] or foot[0] > q[2] or foot[3] < q[1] or foot[1] > q[3] for q in placed):
                break
        else:
            continue
        placed.append(foot)
        tilt = float(rng.uniform(-nz.max_tilt, nz.max_tilt))
        blur = float(rng.uniform(0, nz.max_blur * s / 100.0))
        boxes.append(paste_face(frame, portraits[i % len(portraits)], (cx, cy), s, tilt, blur))
    c = rng.uniform(*nz.contrast)
    b = rng.uniform(*nz.brightness)
    f = frame.astype(np.float32)
    f = (f - f.mean()) * c + f.mean()
    frame = np.clip(f * b, 0, 255).astype(np.uint8)
    return frame, np.array(boxes, np.float64).reshape(-1, 4)


def crossing_scene(
    a: Portrait,
    b: Portrait,
    n_frames: int = 40,
    width: int = 640,
    height: int = 360,
    small: float = 50.0,
    large: float = 110.0,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Frames in which face ``a`` walks left -> right growing ``small -> large`` and face ``b`` right -> left
    shrinking ``large -> small``; they cross in the middle (``b`` drawn over ``a``), so the size rank swaps.

    Returns:
        ``(frames, boxes [n_frames, 2, 4])`` with the ground-truth boxes of ``a`` and ``b`` per frame.
    """
    rng = np.random.default_rng(0)
    bg = _background(height, width, rng)
    frames, boxes = [], []
    for k in range(n_frames):
        t = k / max(n_frames - 1, 1)
        frame = bg.copy()
        sa, sb = small + (large - small) * t, large - (large - small) * t
        ca = (0.15 * width + 0.7 * width * t, 0.5 * height)
        cb = (0.85 * width - 0.7 * width * t, 0.5 * height + 0.1 * height)
        box_a = paste_face(frame, a, ca, sa)
        box_b = paste_face(frame, b, cb, sb)
        frames.append(frame)
        boxes.append([box_a, box_b])
    return frames, np.asarray(boxes, np.float64)
