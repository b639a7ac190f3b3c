"""Recordings built from real parts for tests, demos and benchmarks: a real face photo moving over a background,
real (espeak-ng) speech as the audio track, muxed with PyAV (:func:`features.video.write_video`).

Nothing here is used by the extractor itself; it only produces inputs for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from features.video import write_video

__all__ = ["espeak", "espeak_available", "talking_frames", "write_recording"]


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, sample_rate: int = 16000, words_per_minute: int = 160, voice: str = "en") -> np.ndarray:
    """Speech for ``text`` from the ``espeak-ng`` synthesiser, mono float32 at ``sample_rate``.

    Raises:
        FileNotFoundError: ``espeak-ng`` is not installed.
    """
    import librosa

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "speech.wav"
        subprocess.run([exe, "-v", voice, "-s", str(words_per_minute), "-w", str(wav), text], check=True,
                       capture_output=True, timeout=60)
        y, _ = librosa.load(wav, sr=sample_rate, mono=True)
    return y.astype(np.float32)


def talking_frames(face: np.ndarray, n_frames: int, size: tuple[int, int] = (320, 240), seed: int = 0,
                   face_frac: float = 0.6) -> np.ndarray:
    """``n_frames`` RGB frames ``[T, H, W, 3]`` showing ``face`` (a photo) drifting slowly over a grey background.

    Args:
        face: ``[h, w, 3]`` or ``[h, w]`` uint8 photo.
        size: frame ``(width, height)`` (even numbers).
        face_frac: photo height as a fraction of the frame height.
    """
    import cv2

    w, h = size
    if face.ndim == 2:
        face = np.repeat(face[..., None], 3, axis=2)
    side = int(h * face_frac)
    photo = cv2.resize(face, (int(side * face.shape[1] / face.shape[0]), side), interpolation=cv2.INTER_AREA)
    rng = np.random.default_rng(seed)
    frames = np.full((n_frames, h, w, 3), 96, dtype=np.uint8)
    x0, y0 = (w - photo.shape[1]) // 2, (h - photo.shape[0]) // 2
    drift = np.cumsum(rng.normal(0, 0.7, size=(n_frames, 2)), axis=0).round().astype(int)
    for t in range(n_frames):
        dx = int(np.clip(x0 + drift[t, 0], 0, w - photo.shape[1]))
        dy = int(np.clip(y0 + drift[t, 1], 0, h - photo.shape[0]))
        frames[t, dy:dy + photo.shape[0], dx:dx + photo.shape[1]] = photo
    return frames


def write_recording(path: str | os.PathLike, face: np.ndarray | None, audio: np.ndarray | None,
                    sample_rate: int = 16000, fps: int = 25, size: tuple[int, int] = (320, 240),
                    duration: float | None = None, seed: int = 0) -> Path:
    """A video file of ``face`` (``None``: background only) with ``audio`` (``None``: no audio stream).

    The video lasts ``duration`` seconds (default: the audio's length).
    """
    if duration is None:
        duration = len(audio) / sample_rate if audio is not None else 1.0
    n = max(round(duration * fps), 1)
    if face is None:
        frames = np.full((n, size[1], size[0], 3), 96, dtype=np.uint8)
    else:
        frames = talking_frames(face, n, size, seed)
    return write_video(path, frames, fps=fps, audio=audio, sample_rate=sample_rate)
