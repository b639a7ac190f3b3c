"""Video with PyAV: decoding files (frames at a chosen rate or stride, the audio track), webcams and streams, writing.

PyAV (the ``av`` wheel) ships its own FFmpeg libraries, so nothing outside ``pip install`` is needed; no system
``ffmpeg`` binary is ever called. Paper: Li et al., HGCL (``/work/shared/papers``), §II.C (1) "extract keyframes
at appropriate rates".

One frame-reading core serves both readers: a file is checked (missing, empty, unopenable, no video stream) and
decoded packet by packet, so a frame that fails to decode in the middle of a file is skipped and counted instead of
ending the video, and a video stream without one decodable frame is an error naming the file. Frames are kept either
one in ``stride`` (by source frame index) or at ``fps`` frames per second: for every target time ``k / fps``
(k = 0, 1, ...) the first decoded frame whose presentation time is >= that target, so a 25 fps clip sampled at 5 fps
keeps every 5th frame and the kept frames carry their true presentation times (seconds from the start of the
stream).

- :func:`decode_media` (the feature extractor, :mod:`features.extract`): frames at ``fps`` plus the audio track,
  down-mixed to mono and resampled to ``sample_rate`` by FFmpeg's resampler (``av.AudioResampler``), float32 in
  [-1, 1]. Errors are :class:`MediaError` with a ``reason`` (``"missing_file"``, ``"corrupt"``, ``"no_video"``,
  ``"no_audio"``) and the file name, so the extractor can count and list bad clips instead of crashing.
- :class:`VideoReader` (the classroom pipeline): :class:`VideoFrame` s of a file, one in ``stride``, with
  :attr:`VideoReader.stats`. Webcams (an integer index, ``"0"`` or ``"webcam:0"``) and stream URLs (``rtsp://``,
  ``http(s)://``, ...) are read with ``cv2.VideoCapture`` by :class:`LiveReader`, which caps the frame rate, stops
  cleanly on the first Ctrl-C (SIGINT ends the iteration at the next frame: the pipeline then finishes and writes its
  files; a second Ctrl-C interrupts) and can record the frames it used to an MP4, which is what the annotated video of
  a live session is drawn on. Errors are :class:`VideoSourceError` (a :class:`MediaError`).
- :class:`VideoWriter` muxes frames and/or mono audio; the file appears only when it is complete
  (:func:`common.io.atomic_path`). :class:`MP4Writer` is its H.264 (yuv420p, plays in browsers) form;
  :func:`write_video` writes a whole clip in one call (tests, demos, benchmarks).

:class:`VideoFrame`: ``index`` (source frame from 0 for files, frame taken for live sources), ``time`` (seconds from
the stream's timestamps for files, from the start for live sources), ``rgb`` ``[H, W, 3]`` uint8.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time as _time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "STREAM_SCHEMES",
    "VIDEO_EXTENSIONS",
    "DecodedMedia",
    "LiveReader",
    "MP4Writer",
    "MediaError",
    "VideoFrame",
    "VideoReader",
    "VideoSourceError",
    "VideoWriter",
    "check_file_source",
    "decode_media",
    "is_live_source",
    "media_duration",
    "open_source",
    "parse_source",
    "write_video",
]

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
SourceKind = Literal["file", "webcam", "stream"]
#: FFmpeg "video" codecs that draw text files (ANSI art: a ``.txt`` opens as a tty "video"): never a video to analyse.
TEXT_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})
_TEXT_DETAIL = "a text file, not a video"


class MediaError(ValueError):
    """A media file cannot be used: ``reason`` is ``missing_file``, ``corrupt``, ``no_video`` or ``no_audio``."""

    def __init__(self, path: str | os.PathLike | int, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.path}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


class VideoSourceError(MediaError):
    """A video source of the classroom pipeline that cannot be used (file, webcam or stream).

    ``reason`` is also ``"no_webcam"``, ``"no_stream"``, ``"bad_source"``, ``"not_a_file"``, ``"not_a_video"``,
    ``"bad_image"`` or ``"no_frames"`` (:func:`check_file_source`); the message names the source.
    """

    def _message(self) -> str:
        return f"video source {self.path!r}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: source frame ``index``, ``time`` in seconds, ``rgb`` ``[H, W, 3]`` uint8."""

    index: int
    time: float
    rgb: np.ndarray


@dataclass
class DecodedMedia:
    """Frames and audio of one media file (or of the ``[start, end)`` part of it).

    Shapes:
        frames: ``[T, H, W, 3]`` uint8 RGB (``T = 0`` when video was not requested or absent);
        frame_times: ``[T]`` float64 seconds from the start of the file;
        audio: ``[S]`` float32 mono in [-1, 1] at ``sample_rate`` Hz (``S = 0`` without an audio stream).

    ``unreadable_frames`` counts the frames skipped because they failed to decode.
    """

    frames: np.ndarray
    frame_times: np.ndarray
    audio: np.ndarray
    sample_rate: int
    duration: float
    has_video: bool
    has_audio: bool
    unreadable_frames: int = 0

    def segment(self, start: float, end: float) -> DecodedMedia:
        """The ``[start, end)`` seconds of this recording (frames by time, audio by sample)."""
        keep = (self.frame_times >= start) & (self.frame_times < end)
        s0 = max(round(start * self.sample_rate), 0)
        s1 = min(round(end * self.sample_rate), len(self.audio))
        return DecodedMedia(
            frames=self.frames[keep], frame_times=self.frame_times[keep] - start,
            audio=self.audio[s0:max(s1, s0)], sample_rate=self.sample_rate,
            duration=max(min(end, self.duration) - start, 0.0), has_video=self.has_video, has_audio=self.has_audio,
            unreadable_frames=self.unreadable_frames,
        )


# ---------------------------------------------------------------------------------------------------------------
# The frame-reading core: open/probe, decode loop with counted bad frames, stride / fps sampling.


@contextmanager
def _open_media(path: str | os.PathLike, error: type[MediaError], need_video: bool) -> Iterator[Any]:
    """An open PyAV input container of ``path``; ``error`` names the file when it is missing, empty, cannot be
    opened or (``need_video``) has no video stream."""
    import av

    p = Path(path)
    if not p.is_file():  # (a folder or a device is no media file either: same reason, said in the detail)
        raise error(path, "missing_file", f"{_file_type(p)}, not a regular file" if p.exists() else "no such file")
    if p.stat().st_size == 0:
        raise error(path, "corrupt", "the file is empty (0 bytes)")
    try:
        container = av.open(str(p))
    except (av.error.FFmpegError, UnicodeDecodeError, EOFError) as err:
        raise error(path, "corrupt", f"FFmpeg cannot open it: {type(err).__name__}: {err}") from err
    with container:
        if need_video and not container.streams.video:
            raise error(path, "no_video", "the file has no video stream")
        if need_video and container.streams.video[0].codec_context.name in TEXT_CODECS:
            raise error(path, "no_video", f"{_TEXT_DETAIL} (FFmpeg's {container.format.name} demuxer would render it "
                                          f"as {container.streams.video[0].codec_context.name} art)")
        yield container


def _stream_fps(stream: Any) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0.0)


def _decode_frames(
    container: Any,
    path: str | os.PathLike,
    stats: Counter,
    error: type[MediaError],
    stride: int = 1,
    fps: float | None = None,
    thread_type: str | None = None,
) -> Iterator[tuple[int, float, Any]]:
    """``(index, time, av.VideoFrame)`` of the first video stream, one in ``stride`` and at most ``fps`` per second.

    Packets FFmpeg rejects and frames it flags corrupt are skipped and counted in ``stats["unreadable"]``; a broken
    container ends the video (counted). ``stats["decoded"]`` counts good frames, ``stats["yielded"]`` kept ones.

    Raises:
        error: not one frame could be decoded.
    """
    import av

    stream = container.streams.video[0]
    if thread_type is not None:
        stream.thread_type = thread_type
    tb = stream.time_base
    rate = _stream_fps(stream)
    next_index = 0
    next_t = 0.0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as err:  # the container itself breaks off: stop here, counted
            stats["unreadable"] += 1
            log.warning("%s: demuxing stopped (%s)", path, err)
            break
        try:
            frames = packet.decode()
        except av.error.FFmpegError as err:
            stats["unreadable"] += 1
            log.warning("%s: skipping an unreadable frame near %.2fs (%s)", path,
                        float(packet.pts * tb) if packet.pts is not None else -1.0, err)
            continue
        for frame in frames:
            t = float(frame.pts * tb) if frame.pts is not None and tb is not None else None
            index = max(round(t * rate) if t is not None and rate > 0 else next_index, next_index)
            next_index = index + 1
            if t is None:
                t = index / rate if rate > 0 else 0.0
            if frame.is_corrupt:  # decoded with errors FFmpeg flagged: not a frame to analyse
                stats["unreadable"] += 1
                continue
            stats["decoded"] += 1
            if index % stride or (fps is not None and t + 1e-6 < next_t):
                continue
            if fps is not None:
                next_t = (np.floor(t * fps + 1e-6) + 1.0) / fps
            stats["yielded"] += 1
            yield index, t, frame
    if stats["decoded"] == 0:
        raise error(path, "corrupt", "no frame could be decoded (corrupt or truncated video)")
    if stats["unreadable"]:
        log.warning("%s: %d unreadable frame(s) skipped, %d decoded", path, stats["unreadable"], stats["decoded"])


# ---------------------------------------------------------------------------------------------------------------
# Files for the feature extractor: frames at a rate plus the audio track.


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
        The :class:`DecodedMedia`; missing streams give empty arrays and ``has_video`` / ``has_audio`` False;
        frames that fail to decode are skipped and counted in ``unreadable_frames``.

    Raises:
        MediaError: the file is missing or FFmpeg cannot read it (``corrupt``).
    """
    import av

    path = Path(path)
    if fps is not None and fps <= 0:
        raise ValueError(f"decode_media: fps must be > 0 or None, got {fps}")
    frames: list[np.ndarray] = []
    times: list[float] = []
    chunks: list[np.ndarray] = []
    stats: Counter = Counter()
    with _open_media(path, MediaError, need_video=False) as container:
        has_video = bool(container.streams.video)
        has_audio = bool(container.streams.audio)
        duration = float(container.duration / av.time_base) if container.duration else 0.0
        try:
            if video and has_video:
                for _, t, frame in _decode_frames(container, path, stats, MediaError, fps=fps, thread_type="AUTO"):
                    frames.append(_resize_max_side(frame.to_ndarray(format="rgb24"), max_side))
                    times.append(t)
            if audio and has_audio:
                container.seek(0)
                resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                for frame in container.decode(container.streams.audio[0]):
                    for out in resampler.resample(frame):
                        chunks.append(out.to_ndarray().reshape(-1))
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
        except (av.error.FFmpegError, UnicodeDecodeError, EOFError) as err:
            raise MediaError(path, "corrupt", f"{type(err).__name__}: {err}") from err
    wav = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    frame_arr = np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8)
    duration = max(duration, len(wav) / sample_rate, (times[-1] if times else 0.0))
    return DecodedMedia(frames=frame_arr, frame_times=np.asarray(times, dtype=np.float64), audio=wav,
                        sample_rate=sample_rate, duration=duration, has_video=has_video, has_audio=has_audio,
                        unreadable_frames=int(stats["unreadable"]))


def media_duration(path: str | os.PathLike) -> float:
    """Container duration in seconds (0 when unknown)."""
    import av

    with _open_media(path, MediaError, need_video=False) as container:
        return float(container.duration / av.time_base) if container.duration else 0.0


# ---------------------------------------------------------------------------------------------------------------
# Sources of the classroom pipeline: files frame by frame, webcams and streams.


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
        self.path = str(path)
        if stride < 1:
            raise ValueError(f"VideoReader: stride must be >= 1, got {stride}")
        self.stride = int(stride)
        with _open_media(self.path, VideoSourceError, need_video=True) as container:
            stream = container.streams.video[0]
            self.fps = _stream_fps(stream)
            self.width = int(stream.codec_context.width)
            self.height = int(stream.codec_context.height)
            self.n_frames = int(stream.frames or 0)
        self.stats: Counter = Counter()

    def __iter__(self) -> Iterator[VideoFrame]:
        self.stats = Counter()
        with _open_media(self.path, VideoSourceError, need_video=True) as container:
            for index, t, frame in _decode_frames(container, self.path, self.stats, VideoSourceError, self.stride):
                yield VideoFrame(index, t, frame.to_ndarray(format="rgb24"))


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
                        raise VideoSourceError(self.source, "no_stream" if self.kind == "stream" else "no_webcam",
                                               "opened but gave no frame")
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


def _file_type(p: Path) -> str:
    """What a path that is not a regular file is (for messages)."""
    import stat

    mode = p.stat().st_mode
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _image_problem(path: Path, decode: bool = False) -> Exception | None:
    """None when PIL reads the header (``decode``: the whole image) of an image within the size limits, else the
    ``BadImageError``."""
    from features.images import BadImageError, check_image_header, load_image_rgb

    try:
        load_image_rgb(path) if decode else check_image_header(path)
    except BadImageError as err:
        return err
    return None


def check_file_source(source: str | os.PathLike) -> Literal["video", "image", "folder"]:
    """What a file-system classroom source is, refusing what cannot give a single frame, BEFORE anything is read.

    - a regular file with a video extension (:data:`VIDEO_EXTENSIONS`): ``"video"`` (:class:`VideoReader` checks
      the rest: empty, corrupt, no video stream, no decodable frame);
    - another regular file: ``"image"`` when PIL decodes it, else ``"video"`` when FFmpeg opens it with a video
      stream (a video under another extension), else an error;
    - a folder: ``"folder"`` when at least one of its files (recursive, hidden ones skipped) is an image; a folder
      is read as a sequence of frame images, so one without an image is an error (naming the videos in it, if any).

    Little is read: image headers (a folder stops at its first image; a single image is decoded), FFmpeg's bounded
    probe of a regular file; a device, pipe or socket (e.g. ``/dev/zero``, which never ends) is refused from its
    type without reading it.

    Raises:
        FileNotFoundError: the path does not exist.
        VideoSourceError: naming the source, with ``reason`` ``"not_a_file"`` (a device, pipe or socket),
            ``"not_a_video"`` (a file that is neither an image nor a video FFmpeg can open), ``"bad_image"`` (an
            image PIL cannot use: corrupt, too large, too small), ``"no_video"`` (a media file without a video
            stream, e.g. audio only) or ``"no_frames"`` (a folder without an image file).
    """
    p = Path(source)
    if not p.exists():
        raise FileNotFoundError(f"source {str(source)!r} does not exist")
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        if any(_image_problem(f) is None for f in files):
            return "folder"
        videos = [f.name for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
        detail = (f"a folder is read as frame images and it has none ({len(files)} file(s), none an image)"
                  + (f"; it holds the video file(s) {videos[:5]}: give one of them as the source" if videos else ""))
        raise VideoSourceError(source, "no_frames", detail)
    if not p.is_file():
        raise VideoSourceError(source, "not_a_file", f"{_file_type(p)}, not a video file, image or folder")
    if p.suffix.lower() in VIDEO_EXTENSIONS:
        return "video"
    problem = _image_problem(p, decode=True)  # one image: decoded once here, so a broken one is refused
    if problem is None:
        return "image"
    if problem.reason not in ("not_an_image", "empty_file"):  # PIL knows the format, but cannot use the image
        raise VideoSourceError(source, "bad_image", str(problem))
    try:
        with _open_media(p, VideoSourceError, need_video=True):
            return "video"
    except VideoSourceError as err:
        if err.reason == "corrupt" or err.detail.startswith(_TEXT_DETAIL):
            raise VideoSourceError(source, "not_a_video", f"neither an image nor a video ({err.detail})") from None
        raise


def open_source(
    source: str | int,
    stride: int = 1,
    max_fps: float | None = None,
    max_frames: int | None = None,
    record_to: str | Path | None = None,
) -> VideoReader | LiveReader | None:
    """A :class:`LiveReader` for a webcam or stream, a :class:`VideoReader` for a video file, ``None`` for an image
    file or a folder of frame images (the caller reads those); anything else is refused by
    :func:`check_file_source` (errors naming the source)."""
    kind, target = parse_source(source)
    if kind != "file":
        return LiveReader(source, max_fps, max_frames, record_to)
    if check_file_source(target) == "video":
        return VideoReader(target, stride)
    return None


# ---------------------------------------------------------------------------------------------------------------
# Writing.


class VideoWriter:
    """Streaming PyAV muxer: RGB frames, then (optionally) a mono audio track; the file appears only when complete.

    The container is opened at the first :meth:`write` / :meth:`write_audio` on a temporary path next to ``path``
    (:func:`common.io.atomic_path`); :meth:`close` flushes the encoders, fsyncs and renames it onto ``path``. An
    exception inside a ``with`` block (or in :meth:`close`) removes the temporary file and leaves an existing
    ``path`` as it was. Frames are ``[H, W, 3]`` uint8 RGB of one size (odd sizes are cropped by one pixel, as
    yuv420p needs even sizes).

    Args:
        path: output file; the format follows its extension unless ``container_format`` is given.
        fps: frame rate (fractional rates are kept as a fraction).
        codec: video codec (``libx264`` and ``mpeg4`` ship with every PyAV wheel).
        options: encoder options (e.g. ``{"crf": "23"}`` for x264, ``{"qscale": "3"}`` for mpeg4).
        audio_rate: sample rate of the mono AAC track, or ``None`` for a silent file.
        container_format: FFmpeg muxer name (``None``: from the extension).
    """

    def __init__(
        self,
        path: str | Path,
        fps: float,
        codec: str = "libx264",
        options: dict[str, str] | None = None,
        audio_rate: int | None = None,
        container_format: str | None = None,
    ) -> None:
        if fps <= 0:
            raise ValueError(f"{type(self).__name__}: fps must be > 0, got {fps}")
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1001)
        self.codec = codec
        self.options = dict(options or {})
        self.audio_rate = audio_rate
        self.container_format = container_format
        self.frames = 0
        self._container = None
        self._vstream = None
        self._astream = None
        self._audio_samples = 0
        self._audio_started = False
        self._atomic: ExitStack | None = None

    def _open(self, size: tuple[int, int] | None) -> None:
        import av

        self._atomic = ExitStack()
        tmp = self._atomic.enter_context(atomic_path(self.path, suffix=".tmp" + self.path.suffix))
        try:
            self._container = av.open(str(tmp), mode="w", format=self.container_format)
            if size is not None:
                self._vstream = self._container.add_stream(self.codec, rate=self.fps)
                self._vstream.width, self._vstream.height = size
                self._vstream.pix_fmt = "yuv420p"
                self._vstream.options = self.options
            if self.audio_rate is not None:
                self._astream = self._container.add_stream("aac", rate=self.audio_rate)
                self._astream.layout = "mono"
        except BaseException as err:
            self._discard(err)
            raise

    def _discard(self, err: BaseException) -> None:
        container, self._container = self._container, None
        try:
            if container is not None:
                container.close()
        finally:
            if self._atomic is not None:
                atomic, self._atomic = self._atomic, None
                atomic.__exit__(type(err), err, err.__traceback__)  # removes the temporary file

    def write(self, rgb: np.ndarray) -> None:
        """Encode one ``[H, W, 3]`` uint8 RGB frame (frames come before the audio)."""
        import av

        h, w = rgb.shape[:2]
        h2, w2 = h - h % 2, w - w % 2
        if self._container is None:
            self._open((w2, h2))
        if self._vstream is None or self._audio_started:
            raise ValueError(f"{type(self).__name__}: {self.path}: frames must come before the audio track")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:h2, :w2], dtype=np.uint8), format="rgb24")
        for packet in self._vstream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def write_audio(self, pcm: np.ndarray) -> None:
        """Encode ``[S]`` float mono samples in [-1, 1] (clipped); the video stream ends when the audio starts."""
        import av

        if self.audio_rate is None:
            raise ValueError(f"{type(self).__name__}: {self.path}: audio_rate is None, the file has no audio track")
        if self._container is None:
            self._open(None)
        if self._vstream is not None and not self._audio_started:
            self._flush(self._vstream)
        self._audio_started = True
        pcm = np.clip(np.asarray(pcm, dtype=np.float32), -1.0, 1.0)
        step = 1024
        for i in range(0, len(pcm), step):
            chunk = pcm[i:i + step][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="flt", layout="mono")
            frame.sample_rate = self.audio_rate
            frame.pts = self._audio_samples
            frame.time_base = Fraction(1, self.audio_rate)
            for packet in self._astream.encode(frame):
                self._container.mux(packet)
            self._audio_samples += chunk.shape[1]

    def _flush(self, stream: Any) -> None:
        for packet in stream.encode():
            self._container.mux(packet)

    def close(self) -> Path | None:
        """Flush and move into place; returns the path (None when nothing was written)."""
        if self._container is None:
            return None
        try:
            if self._vstream is not None and not self._audio_started:
                self._flush(self._vstream)
            if self._astream is not None:
                self._flush(self._astream)
            container, self._container = self._container, None
            container.close()
        except BaseException as err:
            self._discard(err)
            raise
        atomic, self._atomic = self._atomic, None
        atomic.close()  # fsync + rename onto self.path
        return self.path

    def __enter__(self) -> VideoWriter:  # noqa: PYI034
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self._container is not None:
            self._discard(exc)


class MP4Writer(VideoWriter):
    """H.264 MP4 writer (yuv420p, plays in browsers): a :class:`VideoWriter` with x264 settings.

    Args:
        path: output ``.mp4``.
        fps: frame rate (fractional rates are kept as a fraction).
        crf: x264 quality (lower: better, bigger).
    """

    def __init__(self, path: str | Path, fps: float, crf: int = 23) -> None:
        super().__init__(path, fps, codec="libx264", options={"crf": str(int(crf)), "preset": "veryfast"},
                         container_format="mp4")
        self.crf = int(crf)


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
        path: output (``.mp4``, ``.mkv``, ...); it appears only when complete (:class:`VideoWriter`).
        frames: ``[T, H, W, 3]`` uint8 RGB with even H and W, or ``None`` for an audio-only file.
        fps: frame rate of the written video.
        audio: ``[S]`` float mono in [-1, 1], or ``None`` for a silent (video-only) file.
        sample_rate: audio rate in Hz.
        codec: video codec (``mpeg4`` ships with every PyAV wheel); audio is AAC.
    """
    path = Path(path)
    with VideoWriter(path, fps, codec=codec, options={"qscale": "3"},
                     audio_rate=sample_rate if audio is not None else None) as writer:
        for rgb in frames if frames is not None else ():
            writer.write(rgb)
        if audio is not None:
            writer.write_audio(audio)
    return path
