"""Recordings built from real parts for tests, demos and benchmarks: a real face photo moving over a background,
real (espeak-ng) speech as the audio track, muxed with PyAV (:func:`features.video.write_video`).

Nothing here is used by the extractor itself; it only produces inputs for it. As a command, a folder of labelled
recordings in the form ``python -m features.extract`` reads (``<stem>.mp4`` + ``<stem>.csv`` with columns
``start,end,text,label``, one row per utterance)::

    python -m features.synthetic_recordings --out my_videos --recordings 4 --faces ../shared/data/jaffe

Each recording holds ``--utterances`` spoken sentences of :data:`SENTENCES` (a positive or negative label in
[-3, 3]) separated by short pauses. ``--faces`` is a folder of face photos (searched recursively; e.g. JAFFE's
portraits, not shipped); without it the frames hold no face (the extractor then masks vision). Needs ``espeak-ng``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from common.io import atomic_write
from features.video import write_video

__all__ = ["SENTENCES", "espeak", "espeak_available", "main", "talking_frames", "write_labelled_folder",
           "write_recording"]

log = logging.getLogger(__name__)

#: Sentences with a sentiment label in [-3, 3] for labelled test recordings.
SENTENCES: tuple[tuple[str, float], ...] = (
    ("I really love this, it is wonderful", 2.4), ("this is terrible and boring", -2.2),
    ("it was great fun", 1.8), ("what an awful mess", -1.6), ("a lovely happy day", 2.0),
    ("I hate it so much", -2.6), ("that was quite nice", 1.2), ("it is bad and sad", -1.8),
)
IMAGE_EXTENSIONS = (".tiff", ".tif", ".png", ".jpg", ".jpeg")


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


def _load_faces(folder: str | os.PathLike, count: int) -> list[np.ndarray]:
    from PIL import Image

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(f"{folder}: no face photos ({', '.join(IMAGE_EXTENSIONS)}) found")
    step = max(len(files) // max(count, 1), 1)
    return [np.array(Image.open(f).convert("RGB")) for f in files[::step][:count]]


def write_labelled_folder(out: str | os.PathLike, recordings: int = 4, utterances: int = 2,
                          faces: str | os.PathLike | None = None, size: tuple[int, int] = (192, 144),
                          pause_s: float = 0.3, sample_rate: int = 16000) -> list[Path]:
    """Write ``recordings`` labelled recordings ``rec_<k>.mp4`` + ``rec_<k>.csv`` (``start,end,text,label``) into
    ``out``, each with ``utterances`` sentences of :data:`SENTENCES` (taken in turn) separated by ``pause_s``.

    Returns:
        The video paths.

    Raises:
        FileExistsError: a file to write exists already (nothing is overwritten).
        FileNotFoundError: ``espeak-ng`` is missing, or ``faces`` holds no photo.
        ValueError: a count below 1.
    """
    if recordings < 1 or utterances < 1:
        raise ValueError(f"write_labelled_folder: recordings and utterances must be >= 1, got {recordings}, "
                         f"{utterances}")
    out = Path(out)
    stems = [f"rec_{k + 1}" for k in range(recordings)]
    clash = [out / f"{s}{e}" for s in stems for e in (".mp4", ".csv") if (out / f"{s}{e}").exists()]
    if clash:
        raise FileExistsError(f"{clash[0]}: already exists; give another --out folder (nothing is overwritten)")
    photos = _load_faces(faces, recordings) if faces is not None else []
    if faces is None:
        log.warning("no --faces: the recordings show no face (the extractor masks their vision features)")
    out.mkdir(parents=True, exist_ok=True)
    videos = []
    k = 0
    for r, stem in enumerate(stems):
        parts, rows, t = [], [], 0.0
        for _ in range(utterances):
            text, label = SENTENCES[k % len(SENTENCES)]
            k += 1
            y = espeak(text, sample_rate)
            parts += [y, np.zeros(int(pause_s * sample_rate), np.float32)]
            end = t + len(y) / sample_rate + pause_s
            rows.append({"start": f"{t:.3f}", "end": f"{end:.3f}", "text": text, "label": label})
            t = end
        face = photos[r % len(photos)] if photos else None
        videos.append(write_recording(out / f"{stem}.mp4", face, np.concatenate(parts), sample_rate, size=size,
                                      seed=r))
        with atomic_write(out / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["start", "end", "text", "label"], lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return videos


def _size(value: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT (even numbers), got {value!r}") from err
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"--size must be WIDTHxHEIGHT, even and >= 16, got {value!r}")
    return w, h


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return n


def main(argv: list[str] | None = None) -> list[Path]:
    """``python -m features.synthetic_recordings`` (see the module docstring); ends by printing where the files are."""
    p = argparse.ArgumentParser(prog="python -m features.synthetic_recordings",
                                description="Write a folder of labelled test recordings (espeak-ng speech, face photos).")
    p.add_argument("--out", required=True, help="output folder (created; existing files are never replaced)")
    p.add_argument("--recordings", type=_positive, default=4, help="number of recordings (default 4)")
    p.add_argument("--utterances", type=_positive, default=2, help="utterances per recording (default 2)")
    p.add_argument("--faces", default=None, help="folder of face photos (e.g. JAFFE); default: no face")
    p.add_argument("--size", type=_size, default=(192, 144), help="frame WIDTHxHEIGHT (default 192x144)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        videos = write_labelled_folder(args.out, args.recordings, args.utterances, args.faces, args.size)
    except (ValueError, OSError) as err:
        p.exit(1, f"error: {type(err).__name__}: {err}\n")
    print(f"wrote {len(videos)} recordings ({len(videos) * args.utterances} labelled utterances) to {args.out} "
          "(<stem>.mp4 + <stem>.csv)", file=sys.stdout)
    return videos


if __name__ == "__main__":
    main()
