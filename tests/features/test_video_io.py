"""Tests for features/video_io.py: PyAV decoding with skipped bad frames, clear errors, live sources, MP4 writing."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from features import video_io
from features.video_io import LiveReader, MP4Writer, VideoReader, VideoSourceError, open_source, parse_source


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
    junk.write_bytes(os.urandom(4000))
    good = tmp_path / "good.mp4"
    with MP4Writer(good, fps=10) as w:
        for f in _frames(10):
            w.write(f)
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    for path, problem in [(empty, "corrupt.*empty"), (junk, "corrupt.*cannot open"),
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


def _camera(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    real = cv2.VideoCapture
    monkeypatch.setattr(cv2, "VideoCapture", lambda target: _FileCapture(str(path)) if target == 0 else real(target))


def test_live_reader_records_and_stops_cleanly_on_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "cam.mp4"
    with MP4Writer(src, fps=10) as w:
        for f in _frames(30):
            w.write(f)
    _camera(monkeypatch, src)
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
    src = tmp_path / "cam.mp4"
    with MP4Writer(src, fps=10) as w:
        for f in _frames(30):
            w.write(f)
    _camera(monkeypatch, src)
    clock = iter(np.arange(0, 100, 0.01))  # frames arrive every 10 ms (100 fps)
    monkeypatch.setattr(video_io._time, "monotonic", lambda: float(next(clock)))
    reader = LiveReader(0, max_fps=20)
    frames = list(reader)
    assert 5 <= len(frames) <= 7 and reader.stats["dropped_by_fps_cap"] >= 22  # 30 frames over 0.3 s at <= 20/s
    assert all(b.time - a.time >= 0.05 - 1e-9 for a, b in itertools.pairwise(frames))
