"""Video decoding (files, webcams, streams) and MP4 writing for the classroom pipeline.

Files are decoded with PyAV (``av``, FFmpeg inside the wheel) packet by packet, so a frame that fails to decode
in the middle of a file is skipped and counted (:attr:`VideoReader.stats`) instead of ending the video; a file that
cannot be opened, has no video stream or holds no decodable frame raises :class:`VideoSourceError` naming it.
Webcams (an integer index, ``"0"`` or ``"webcam:0"``) and stream URLs (``rtsp://``, ``http(s)://``, ...) are read
with ``cv2.VideoCapture``; :class:`LiveReader` caps the frame rate, stops cleanly on the first Ctrl-C (SIGINT ends
the iteration at the next frame: the pipeline then finishes and writes its files; a second Ctrl-C interrupts) and
can record the frames it used to an MP4, which is what the annotated video of a live session is drawn on.
:class:`MP4Writer` encodes H.264 (yuv420p, plays in browsers) and writes to a temporary file renamed on close.

Frames are yielded as :class:`VideoFrame` (``index``: source frame from 0 for files, frame taken for live sources;
``time``: seconds from the stream's timestamps for files, from the start for live sources; ``rgb`` ``[H, W, 3]``
uint8).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time as _time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "LiveReader",
    "MP4Writer",
    "VideoFrame",
    "VideoReader",
    "VideoSourceError",
    "is_live_source",
    "open_source",
    "parse_source",
]

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
SourceKind = Literal["file", "webcam", "stream"]


class VideoSourceError(ValueError):
    """A video source that cannot be used. Shaped like branch ``extract``'s ``features.video.MediaError``:
    ``path`` (the source), ``reason`` (``"missing_file"``, ``"corrupt"``, ``"no_video"``, ``"no_webcam"``,
    ``"no_stream"``, ``"bad_source"``) and a human ``detail``; the message names the source."""

    def __init__(self, path: str | int, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"video source {self.path!r}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: source frame ``index``, ``time`` in seconds, ``rgb`` ``[H, W, 3]`` uint8."""

    index: int
    time: float
    rgb: np.ndarray


def parse_source(source: str | int) -> tuple[SourceKind, str | int]:
    """``("webcam", index)`` for ``3`` / ``"3"`` / ``"webcam:3"``, ``("stream", url)`` for a URL, else
    ``("file", path)``."""
    if isinstance(source, int):
        return "webcam", source
    s = str(source).strip()
    if s.lower().startswith("webcam:"):
        s = s.split(":", 1)[1]
        if not s.isdigit():
            raise VideoSourceError(source, "bad_source", "a webcam is given as webcam:<index>, e.g. webcam:0")
        return "webcam", int(s)
    if s.isdigit():
        return "webcam", int(s)
    if s.lower().startswith(STREAM_SCHEMES):
        return "stream", s
    return "file", s


def is_live_source(source: str | int) -> bool:
    return parse_source(source)[0] != "file"


class VideoReader:
    """Frames of a video file via PyAV, one in ``stride``, skipping (and counting) frames that fail to decode.

    Args:
        path: video file.
        stride: keep one source frame in ``stride`` (by source frame index).

    Attributes:
        fps: average frame rate of the stream (0 when unknown).
        width / height: frame size in pixels.
        stats: ``decoded``, ``yielded``, ``unreadable`` (packets FFmpeg rejected or frames it flagged corrupt).

    Raises:
        VideoSourceError: missing, empty, unopenable file, no video stream, or no decodable frame at all.
    """

    def __init__(self, path: str | Path, stride: int = 1) -> None:
        import av

        self.path = str(path)
        if stride < 1:
            raise ValueError(f"VideoReader: stride must be >= 1, got {stride}")
        self.stride = int(stride)
        p = Path(self.path)
        if not p.is_file():
            raise VideoSourceError(self.path, "missing_file", "no such file")
        if p.stat().st_size == 0:
            raise VideoSourceError(self.path, "corrupt", "the file is empty (0 bytes)")
        try:
            with av.open(self.path) as container:
                if not container.streams.video:
                    raise VideoSourceError(self.path, "no_video", "the file has no video stream")
                stream = container.streams.video[0]
                self.fps = float(stream.average_rate or stream.guessed_rate or 0.0)
                self.width = int(stream.codec_context.width)
                self.height = int(stream.codec_context.height)
                self.n_frames = int(stream.frames or 0)
        except av.error.FFmpegError as err:
            raise VideoSourceError(self.path, "corrupt", f"FFmpeg cannot open it as a video: {err}") from err
        self.stats: Counter = Counter()

    def __iter__(self) -> Iterator[VideoFrame]:
        import av

        self.stats = Counter()
        with av.open(self.path) as container:
            stream = container.streams.video[0]
            tb = stream.time_base
            fps = self.fps
            next_index = 0

            def to_frame(frame: av.VideoFrame) -> VideoFrame | None:
                nonlocal next_index
                t = float(frame.pts * tb) if frame.pts is not None and tb is not None else None
                index = round(t * fps) if t is not None and fps > 0 else next_index
                index = max(index, next_index)
                next_index = index + 1
                if t is None:
                    t = index / fps if fps > 0 else 0.0
                if frame.is_corrupt:  # decoded with errors FFmpeg flagged: not a frame to analyse
                    self.stats["unreadable"] += 1
                    return None
                self.stats["decoded"] += 1
                if index % self.stride:
                    return None
                return VideoFrame(index, t, frame.to_ndarray(format="rgb24"))

            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError as err:  # the container itself breaks off: stop here, counted
                    self.stats["unreadable"] += 1
                    log.warning("%s: demuxing stopped (%s)", self.path, err)
                    break
                try:
                    frames = packet.decode()
                except (av.error.InvalidDataError, av.error.FFmpegError) as err:
                    self.stats["unreadable"] += 1
                    log.warning("%s: skipping an unreadable frame near %.2fs (%s)", self.path,
                                float(packet.pts * tb) if packet.pts is not None else -1.0, err)
                    continue
                for frame in frames:
                    out = to_frame(frame)
                    if out is not None:
                        self.stats["yielded"] += 1
                        yield out
        if self.stats["decoded"] == 0:
            raise VideoSourceError(self.path, "corrupt", "no frame could be decoded (corrupt or truncated video)")
        if self.stats["unreadable"]:
            log.warning("%s: %d unreadable frame(s) skipped, %d decoded", self.path, self.stats["unreadable"],
                        self.stats["decoded"])


class LiveReader:
    """Frames of a webcam or stream via ``cv2.VideoCapture`` with a frame-rate cap and a clean Ctrl-C stop.

    Args:
        source: webcam index or stream URL (see :func:`parse_source`).
        max_fps: most frames per second taken (frames arriving faster are dropped); None takes all.
        max_frames: stop after this many frames (None: until the source ends or Ctrl-C).
        record_to: optional MP4 path that receives every frame taken (the annotated video is drawn on it).

    Raises:
        VideoSourceError: the webcam index does not exist / the stream cannot be opened or gives no frame.
    """

    def __init__(
        self,
        source: str | int,
        max_fps: float | None = None,
        max_frames: int | None = None,
        record_to: str | Path | None = None,
    ) -> None:
        import cv2

        kind, target = parse_source(source)
        if kind == "file":
            raise VideoSourceError(source, "bad_source", "not a webcam index or stream URL")
        if max_fps is not None and max_fps <= 0:
            raise ValueError(f"LiveReader: max_fps must be > 0, got {max_fps}")
        self.source = source
        self.kind = kind
        self.max_fps = max_fps
        self.max_frames = max_frames
        self.record_to = Path(record_to) if record_to else None
        self.stats: Counter = Counter()
        self.stopped_by_user = False
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            cap.release()
            if kind == "webcam":
                raise VideoSourceError(source, "no_webcam", f"webcam index {target} does not exist or cannot be opened")
            raise VideoSourceError(source, "no_stream", "the stream cannot be opened")
        self._cap = cap
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.stopped_by_user = True
        log.warning("Ctrl-C: stopping the live source after this frame (press again to abort)")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __iter__(self) -> Iterator[VideoFrame]:
        import cv2

        cap = self._cap
        self.stats = Counter()
        in_main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGINT, self._on_sigint) if in_main else None
        writer: MP4Writer | None = None
        t0 = _time.monotonic()
        last = -float("inf")
        index = 0
        try:
            while not self.stopped_by_user:
                ok, bgr = cap.read()
                if not ok:
                    if index == 0 and self.stats["taken"] == 0:
                        raise VideoSourceError(self.source, "no_stream" if self.kind == "stream" else "no_webcam", "opened but gave no frame")
                    break
                now = _time.monotonic() - t0
                index += 1
                if self.max_fps and now - last < 1.0 / self.max_fps:
                    self.stats["dropped_by_fps_cap"] += 1
                    continue
                last = now
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                if self.record_to is not None:
                    if writer is None:
                        writer = MP4Writer(self.record_to, fps=self.max_fps or self.fps or 25.0)
                    writer.write(rgb)
                # frames are numbered in the order taken (= their index in the recording), timed by the clock
                yield VideoFrame(self.stats["taken"], now, rgb)
                self.stats["taken"] += 1
                if self.max_frames is not None and self.stats["taken"] >= self.max_frames:
                    break
        finally:
            if writer is not None:
                writer.close()
            cap.release()
            if in_main and old is not None and signal.getsignal(signal.SIGINT) == self._on_sigint:
                signal.signal(signal.SIGINT, old)
        log.info("Live source %s: %d frames taken, %d dropped by the frame-rate cap%s", self.source,
                 self.stats["taken"], self.stats["dropped_by_fps_cap"],
                 " (stopped by Ctrl-C)" if self.stopped_by_user else "")


def open_source(
    source: str | int,
    stride: int = 1,
    max_fps: float | None = None,
    max_frames: int | None = None,
    record_to: str | Path | None = None,
) -> VideoReader | LiveReader:
    """A :class:`VideoReader` for a file, a :class:`LiveReader` for a webcam or stream."""
    kind, target = parse_source(source)
    if kind == "file":
        return VideoReader(target, stride)
    return LiveReader(source, max_fps, max_frames, record_to)


class MP4Writer:
    """H.264 MP4 writer (PyAV); frames are ``[H, W, 3]`` uint8 RGB of one size (odd sizes are cropped by one px).

    The file appears under ``path`` only when :meth:`close` succeeds (temporary file + rename).

    Args:
        path: output ``.mp4``.
        fps: frame rate (fractional rates are kept as a fraction).
        crf: x264 quality (lower: better, bigger).
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 23) -> None:
        if fps <= 0:
            raise ValueError(f"MP4Writer: fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.crf = int(crf)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp.mp4")
        self._container = None
        self._stream = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        h, w = rgb.shape[:2]
        h2, w2 = h - h % 2, w - w % 2
        if self._container is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = w2, h2
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": str(self.crf), "preset": "veryfast"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h2, :w2]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> Path | None:
        """Flush and move into place; returns the path (None when no frame was written)."""
        if self._container is None:
            return None
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
        os.replace(self._tmp, self.path)
        return self.path

    def __enter__(self) -> MP4Writer:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._container is not None:
            self._container.close()
            self._container = None
            self._tmp.unlink(missing_ok=True)
