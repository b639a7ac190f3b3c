"""Decoding (and, for tests and demos, writing) video files with PyAV: frames at a chosen rate and the audio track.

PyAV (the ``av`` wheel) ships its own FFmpeg libraries, so nothing outside ``pip install`` is needed; no system
``ffmpeg`` binary is ever called. Paper: Li et al., HGCL (``/work/shared/papers``), §II.C (1) "extract keyframes
at appropriate rates".

Frame sampling: with ``fps = r`` the decoder keeps, for every target time ``k / r`` (k = 0, 1, ...), the first
decoded frame whose presentation time is >= that target, so a 25 fps clip sampled at 5 fps keeps every 5th frame
and the kept frames carry their true presentation times (seconds from the start of the stream). Audio is decoded,
down-mixed to mono and resampled to ``sample_rate`` by FFmpeg's resampler (``av.AudioResampler``), float32 in
[-1, 1].

Errors are :class:`MediaError` with a ``reason`` (``"missing_file"``, ``"corrupt"``, ``"no_video"``,
``"no_audio"``) and the file name, so the extractor can count and list bad clips instead of crashing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["VIDEO_EXTENSIONS", "DecodedMedia", "MediaError", "decode_media", "media_duration", "write_video"]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


class MediaError(ValueError):
    """A media file cannot be used: ``reason`` is ``missing_file``, ``corrupt``, ``no_video`` or ``no_audio``."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass
class DecodedMedia:
    """Frames and audio of one media file (or of the ``[start, end)`` part of it).

    Shapes:
        frames: ``[T, H, W, 3]`` uint8 RGB (``T = 0`` when video was not requested or absent);
        frame_times: ``[T]`` float64 seconds from the start of the file;
        audio: ``[S]`` float32 mono in [-1, 1] at ``sample_rate`` Hz (``S = 0`` without an audio stream).
    """

    frames: np.ndarray
    frame_times: np.ndarray
    audio: np.ndarray
    sample_rate: int
    duration: float
    has_video: bool
    has_audio: bool

    def segment(self, start: float, end: float) -> DecodedMedia:
        """The ``[start, end)`` seconds of this recording (frames by time, audio by sample)."""
        keep = (self.frame_times >= start) & (self.frame_times < end)
        s0 = max(round(start * self.sample_rate), 0)
        s1 = min(round(end * self.sample_rate), len(self.audio))
        return DecodedMedia(
            frames=self.frames[keep], frame_times=self.frame_times[keep] - start,
            audio=self.audio[s0:max(s1, s0)], sample_rate=self.sample_rate,
            duration=max(min(end, self.duration) - start, 0.0), has_video=self.has_video, has_audio=self.has_audio,
        )


def _resize_max_side(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side is None or max(rgb.shape[:2]) <= max_side:
        return rgb
    import cv2

    scale = max_side / max(rgb.shape[:2])
    size = (max(round(rgb.shape[1] * scale), 1), max(round(rgb.shape[0] * scale), 1))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def decode_media(
    path: str | os.PathLike,
    fps: float | None = 5.0,
    sample_rate: int = 16000,
    video: bool = True,
    audio: bool = True,
    max_side: int | None = 640,
) -> DecodedMedia:
    """Decode frames at ``fps`` and the mono audio track at ``sample_rate`` with PyAV.

    Args:
        path: media file.
        fps: frames kept per second (``None``: every decoded frame).
        sample_rate: audio output rate in Hz.
        video: decode frames (when the file has a video stream).
        audio: decode the audio track (when the file has one).
        max_side: frames larger than this (longest side, pixels) are downscaled with area interpolation
            (``None``: keep the original size).

    Returns:
        The :class:`DecodedMedia`; missing streams give empty arrays and ``has_video`` / ``has_audio`` False.

    Raises:
        MediaError: the file is missing or FFmpeg cannot read it (``corrupt``).
    """
    import av

    path = Path(path)
    if fps is not None and fps <= 0:
        raise ValueError(f"decode_media: fps must be > 0 or None, got {fps}")
    if not path.is_file():
        raise MediaError(path, "missing_file")
    if path.stat().st_size == 0:
        raise MediaError(path, "corrupt", "empty file")
    frames: list[np.ndarray] = []
    times: list[float] = []
    chunks: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            has_video = bool(container.streams.video)
            has_audio = bool(container.streams.audio)
            duration = float(container.duration / av.time_base) if container.duration else 0.0
            if video and has_video:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                next_t = 0.0
                for frame in container.decode(stream):
                    t = float(frame.time) if frame.time is not None else len(times) / float(stream.average_rate or 25)
                    if fps is not None and t + 1e-6 < next_t:
                        continue
                    frames.append(_resize_max_side(frame.to_ndarray(format="rgb24"), max_side))
                    times.append(t)
                    if fps is not None:
                        next_t = (np.floor(t * fps + 1e-6) + 1.0) / fps
            if audio and has_audio:
                container.seek(0)
                resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                for frame in container.decode(container.streams.audio[0]):
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
    except av.error.FFmpegError as err:
        raise MediaError(path, "corrupt", f"{type(err).__name__}: {err}") from err
    except (UnicodeDecodeError, EOFError) as err:
        raise MediaError(path, "corrupt", f"{type(err).__name__}: {err}") from err
    wav = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if frames:
        frame_arr = np.stack(frames)
    else:
        frame_arr = np.zeros((0, 1, 1, 3), np.uint8)
    duration = max(duration, len(wav) / sample_rate, (times[-1] if times else 0.0))
    return DecodedMedia(frames=frame_arr, frame_times=np.asarray(times, dtype=np.float64), audio=wav,
                        sample_rate=sample_rate, duration=duration, has_video=has_video, has_audio=has_audio)


def media_duration(path: str | os.PathLike) -> float:
    """Container duration in seconds (0 when unknown)."""
    import av

    try:
        with av.open(str(path)) as container:
            return float(container.duration / av.time_base) if container.duration else 0.0
    except av.error.FFmpegError as err:
        raise MediaError(path, "corrupt", str(err)) from err


def write_video(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray] | np.ndarray | None,
    fps: int = 25,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    codec: str = "mpeg4",
) -> Path:
    """Mux RGB frames and/or mono audio into a media file with PyAV (tests, demos, benchmarks).

    Args:
        path: output (``.mp4``, ``.mkv``, ...); written to a temporary name first, then renamed.
        frames: ``[T, H, W, 3]`` uint8 RGB with even H and W, or ``None`` for an audio-only file.
        fps: frame rate of the written video.
        audio: ``[S]`` float mono in [-1, 1], or ``None`` for a silent (video-only) file.
        sample_rate: audio rate in Hz.
        codec: video codec (``mpeg4`` ships with every PyAV wheel); audio is AAC.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), mode="w") as container:
            vstream = astream = None
            if frames is not None and len(frames):
                h, w = frames[0].shape[:2]
                vstream = container.add_stream(codec, rate=fps)
                vstream.width, vstream.height = w, h
                vstream.pix_fmt = "yuv420p"
                vstream.options = {"qscale": "3"}
            if audio is not None:
                astream = container.add_stream("aac", rate=sample_rate)
                astream.layout = "mono"
            if vstream is not None:
                for rgb in frames:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
                    for packet in vstream.encode(frame):
                        container.mux(packet)
                for packet in vstream.encode():
                    container.mux(packet)
            if astream is not None:
                pcm = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
                step = 1024
                for i in range(0, len(pcm), step):
                    chunk = pcm[i:i + step][None, :]
                    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
                    frame.sample_rate = sample_rate
                    frame.pts = i
                    frame.time_base = Fraction(1, sample_rate)
                    for packet in astream.encode(frame):
                        container.mux(packet)
                for packet in astream.encode():
                    container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
