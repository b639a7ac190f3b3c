"""Tests for features/video.py: PyAV decoding (frame sampling at a rate or stride, the audio track, bad frames skipped
and counted, clear errors naming the file), live sources (frame-rate cap, Ctrl-C) and the atomic writers."""

from __future__ import annotations

import itertools
import os
import random
import signal
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from features import video
from features.video import (
    LiveReader,
    MediaError,
    MP4Writer,
    VideoReader,
    VideoSourceError,
    VideoWriter,
    decode_media,
    open_source,
    parse_source,
    write_video,
)

SR = 16000


def _grey_frames(n: int) -> np.ndarray:
    # frame t is uniformly grey level 10 * t, so a decoded frame tells which source frame it was
    return np.stack([np.full((48, 64, 3), 10 * t, dtype=np.uint8) for t in range(n)])


def test_frames_are_sampled_at_the_requested_rate(tmp_path) -> None:
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(2 * SR) / SR)).astype(np.float32)
    path = write_video(tmp_path / "a.mp4", _grey_frames(25), fps=25, audio=tone, sample_rate=SR)
    d = decode_media(path, fps=5, sample_rate=SR)
    assert d.has_video and d.has_audio
    assert len(d.frames) == 5
    np.testing.assert_allclose(d.frame_times, [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-6)
    levels = d.frames.reshape(len(d.frames), -1).mean(1)
    np.testing.assert_allclose(levels, [0, 50, 100, 150, 200], atol=4)  # frames 0, 5, 10, 15, 20
    assert d.audio.dtype == np.float32 and abs(len(d.audio) - 2 * SR) < 0.05 * SR  # AAC priming/padding
    assert np.abs(d.audio).max() == pytest.approx(0.3, abs=0.05)
    everything = decode_media(path, fps=None)
    assert len(everything.frames) == 25
    seg = d.segment(0.3, 0.7)
    np.testing.assert_allclose(seg.frame_times, [0.1, 0.3], atol=1e-6)
    assert len(seg.audio) == int(0.4 * SR)


def test_missing_streams_and_bad_files(tmp_path) -> None:
    silent = write_video(tmp_path / "silent.mp4", _grey_frames(10), fps=25)
    d = decode_media(silent)
    assert d.has_video and not d.has_audio and d.audio.size == 0
    audio_only = write_video(tmp_path / "audio.mp4", None, audio=np.zeros(SR, np.float32))
    d = decode_media(audio_only)
    assert not d.has_video and d.has_audio and len(d.frames) == 0
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video" * 50)
    with pytest.raises(MediaError, match="bad.mp4") as err:
        decode_media(bad)
    assert err.value.reason == "corrupt"
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError) as err:
        decode_media(empty)
    assert err.value.reason == "corrupt"
    with pytest.raises(MediaError) as err:
        decode_media(tmp_path / "nope.mp4")
    assert err.value.reason == "missing_file"


def _frames(n: int, h: int = 64, w: int = 96) -> list[np.ndarray]:
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        f[:, :, 0] = (i * 10) % 250
        f[10:30, 5 + 2 * (i % 30): 25 + 2 * (i % 30)] = 255
        out.append(f)
    return out


def write_mjpeg_avi(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    with av.open(str(path), "w") as c:
        s = c.add_stream("mjpeg", rate=fps)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuvj420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def corrupt_jpeg_frame(path: Path, k: int) -> None:
    """Overwrite the entropy-coded data of the k-th JPEG frame of an MJPEG file with noise."""
    data = bytearray(path.read_bytes())
    soi = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    start, n = soi[k], soi[k + 1] - soi[k]
    data[start + 2: start + n - 40] = np.random.default_rng(0).integers(0, 256, n - 42, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_parse_source() -> None:
    assert parse_source(0) == ("webcam", 0)
    assert parse_source("2") == ("webcam", 2)
    assert parse_source("webcam:1") == ("webcam", 1)
    assert parse_source("rtsp://127.0.0.1/cam") == ("stream", "rtsp://127.0.0.1/cam")
    assert parse_source("videos/lesson.mp4") == ("file", "videos/lesson.mp4")
    with pytest.raises(VideoSourceError, match="webcam:<index>"):
        parse_source("webcam:front")


def test_mp4_roundtrip_times_and_stride(tmp_path: Path) -> None:
    frames = _frames(20)
    path = tmp_path / "a.mp4"
    with MP4Writer(path, fps=10) as w:
        for f in frames:
            w.write(f)
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    r = VideoReader(path)
    assert (r.fps, r.width, r.height) == (10.0, 96, 64)
    got = list(r)
    assert [f.index for f in got] == list(range(20))
    assert got[7].time == pytest.approx(0.7)
    assert abs(float(got[5].rgb.mean()) - float(frames[5].mean())) < 4  # content survives the codec
    assert [f.index for f in VideoReader(path, stride=3)] == list(range(0, 20, 3))


def test_unreadable_frame_in_the_middle_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "b.avi"
    write_mjpeg_avi(path, _frames(12))
    corrupt_jpeg_frame(path, 6)
    r = VideoReader(path)
    idx = [f.index for f in r]
    assert 6 not in idx and idx == [i for i in range(12) if i != 6]
    assert r.stats["unreadable"] == 1 and r.stats["decoded"] == 11


def test_bad_files_give_a_clear_error_naming_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(random.Random(0).randbytes(4000))  # fixed bytes: random ones sometimes probe as a raw format
    good = tmp_path / "good.mp4"
    with MP4Writer(good, fps=10) as w:
        for f in _frames(10):
            w.write(f)
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    # junk is refused at open or, when FFmpeg's probe takes it for some format, at the first frame: both name it
    for path, problem in [(empty, "corrupt.*empty"), (junk, "corrupt.*(cannot open|no frame could be decoded)"),
                          (trunc, "corrupt.*cannot open"), (tmp_path / "none.mp4", "missing_file")]:
        with pytest.raises(VideoSourceError, match=problem) as err:
            list(VideoReader(path))
        assert str(path) in str(err.value)


def test_webcam_that_does_not_exist() -> None:
    with pytest.raises(VideoSourceError, match="no_webcam.*webcam index 97 does not exist") as err:
        open_source("webcam:97")
    assert "webcam:97" in str(err.value)


class _FileCapture:
    """cv2.VideoCapture stand-in that plays a file as if it were a camera (same read() contract)."""

    def __init__(self, path: str) -> None:
        self._cap = cv2.VideoCapture(path)

    def __getattr__(self, name: str):
        return getattr(self._cap, name)


def _camera(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, n: int = 30) -> None:
    """Camera 0 plays an MP4 of ``n`` test frames."""
    path = tmp_path / "cam.mp4"
    with MP4Writer(path, fps=10) as w:
        for f in _frames(n):
            w.write(f)
    real = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda target: _FileCapture(str(path)) if target == 0 else real(target))


def test_live_reader_records_and_stops_cleanly_on_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _camera(monkeypatch, tmp_path)
    rec = tmp_path / "recording.mp4"
    reader = LiveReader(0, record_to=rec)
    taken = []
    for frame in reader:
        taken.append(frame.index)
        if len(taken) == 5:
            os.kill(os.getpid(), signal.SIGINT)  # the user presses Ctrl-C
    assert reader.stopped_by_user and taken == [0, 1, 2, 3, 4]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert len(list(VideoReader(rec))) == 5  # the recording holds what was analysed


def test_live_reader_frame_rate_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _camera(monkeypatch, tmp_path)
    clock = iter(np.arange(0, 100, 0.01))  # frames arrive every 10 ms (100 fps)
    monkeypatch.setattr(video._time, "monotonic", lambda: float(next(clock)))
    reader = LiveReader(0, max_fps=20)
    frames = list(reader)
    assert 5 <= len(frames) <= 7 and reader.stats["dropped_by_fps_cap"] >= 22  # 30 frames over 0.3 s at <= 20/s
    assert all(b.time - a.time >= 0.05 - 1e-9 for a, b in itertools.pairwise(frames))


def test_decode_media_shares_the_reader_core_a_bad_frame_is_skipped_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "b.avi"
    write_mjpeg_avi(path, _frames(12), fps=10)
    corrupt_jpeg_frame(path, 6)
    d = decode_media(path, fps=None, audio=False, max_side=None)
    assert d.unreadable_frames == 1 and len(d.frames) == 11
    np.testing.assert_allclose(d.frame_times, [i / 10 for i in range(12) if i != 6], atol=1e-6)
    sampled = decode_media(path, fps=5, audio=False)  # targets 0.0, 0.2, 0.4, 0.6 (frame 6 is gone: 0.7), 0.8, 1.0
    np.testing.assert_allclose(sampled.frame_times, [0.0, 0.2, 0.4, 0.7, 0.8, 1.0], atol=1e-6)
    assert issubclass(VideoSourceError, MediaError)  # one error family; the classroom message names the source
    with pytest.raises(MediaError, match="no_video") as err:
        list(VideoReader(write_video(tmp_path / "audio.mp4", None, audio=np.zeros(SR, np.float32))))
    assert "audio.mp4" in str(err.value)


@pytest.mark.parametrize("writer", ["mp4writer", "write_video"])
def test_a_failed_write_leaves_no_partial_file_and_keeps_the_old_one(tmp_path: Path, writer: str) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"the user's old file")

    def frames_then_crash():
        yield from _frames(5)
        raise RuntimeError("camera unplugged")

    with pytest.raises(RuntimeError, match="camera unplugged"):
        if writer == "mp4writer":
            with MP4Writer(path, fps=10) as w:
                for f in frames_then_crash():
                    w.write(f)
        else:
            write_video(path, frames_then_crash(), fps=10, audio=np.zeros(SR, np.float32))
    assert path.read_bytes() == b"the user's old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # no temporary file left
    if writer == "mp4writer":
        with MP4Writer(path, fps=10) as w:
            for f in _frames(5):
                w.write(f)
    else:
        write_video(path, np.stack(_frames(5)), fps=10, audio=np.zeros(SR, np.float32))
    assert len(list(VideoReader(path))) == 5 and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_video_writer_streams_come_in_order(tmp_path: Path) -> None:
    w = VideoWriter(tmp_path / "a.mkv", fps=10, codec="mpeg4", audio_rate=SR)
    w.write(_frames(1)[0])
    w.write_audio(np.zeros(SR // 2, np.float32))
    with pytest.raises(ValueError, match="frames must come before the audio"):
        w.write(_frames(1)[0])
    assert w.close() == tmp_path / "a.mkv"
    d = decode_media(tmp_path / "a.mkv", fps=None)
    assert d.has_video and d.has_audio and len(d.frames) == 1
    with pytest.raises(ValueError, match="no audio track"):
        VideoWriter(tmp_path / "b.mp4", fps=10).write_audio(np.zeros(10, np.float32))
    assert not (tmp_path / "b.mp4").exists()


# ------------------------------------------------------------------ classroom sources that are not videos (issue 20)
def _source_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """{name: (source, expected reason)} of file-system sources that cannot give a single frame."""
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n" * 20)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.txt").write_text("hello")
    (junk / "b.bin").write_bytes(bytes(range(256)) * 4)
    videos_only = tmp_path / "videos_only"
    videos_only.mkdir()
    write_video(videos_only / "lesson.mp4", _grey_frames(3), fps=5)
    audio = write_video(tmp_path / "voice.m4a", None, audio=np.zeros(SR // 4, np.float32))
    empty = tmp_path / "nothing"
    empty.write_bytes(b"")
    cases = {"text file": (str(text), "not_a_video"), "junk folder": (str(junk), "no_frames"),
             "folder of videos": (str(videos_only), "no_frames"), "audio only": (str(audio), "no_video"),
             "empty file": (str(empty), "not_a_video")}
    for path, name in (("/etc/passwd", "not_a_video"), ("/dev/zero", "not_a_file")):
        if Path(path).exists():
            cases[path] = (path, name)
    return cases


def test_sources_that_are_not_videos_are_refused_naming_them_and_the_reason(tmp_path: Path) -> None:
    """A .txt, /etc/passwd, /dev/zero (endless: refused from its type, never read), an audio file, a folder of
    junk or of videos used to end as "0 frames analysed"; each is now an error naming the source and why."""
    for name, (source, reason) in _source_cases(tmp_path).items():
        with pytest.raises(VideoSourceError) as err:
            open_source(source)
        assert err.value.reason == reason, (name, str(err.value))
        assert source in str(err.value), name
    with pytest.raises(VideoSourceError, match=r"lesson\.mp4.*give one of them as the source"):
        video.check_file_source(tmp_path / "videos_only")
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        open_source(str(tmp_path / "absent.mp4"))


def test_sources_that_give_frames_are_accepted(tmp_path: Path) -> None:
    from PIL import Image

    clip = write_video(tmp_path / "clip.mp4", _grey_frames(4), fps=5)
    assert isinstance(open_source(str(clip)), VideoReader)
    odd = tmp_path / "clip.video"  # a video under an unknown extension is probed by FFmpeg
    odd.write_bytes(clip.read_bytes())
    assert isinstance(open_source(str(odd)), VideoReader)
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "readme.txt").write_text("frames of a lesson")
    Image.fromarray(_grey_frames(1)[0]).save(frames / "f0.png")
    assert open_source(str(frames)) is None and video.check_file_source(frames) == "folder"
    assert open_source(str(frames / "f0.png")) is None and video.check_file_source(frames / "f0.png") == "image"
    bad_png = tmp_path / "bad.png"  # a PNG cut after its header: an image PIL knows, but that cannot be decoded
    bad_png.write_bytes((frames / "f0.png").read_bytes()[:60])
    with pytest.raises(VideoSourceError, match=r"bad\.png.*bad_image"):
        open_source(str(bad_png))


def test_a_text_file_is_not_a_video_even_when_ffmpeg_draws_it(tmp_path: Path) -> None:
    """FFmpeg's tty demuxer opens a .txt as ANSI-art "video" frames: the reader refuses it."""
    text = tmp_path / "lesson.txt"
    text.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoSourceError, match=r"lesson\.txt.*no_video.*a text file"):
        VideoReader(text)
    with pytest.raises(VideoSourceError, match=r"lesson\.txt.*not_a_video"):
        open_source(str(text))
