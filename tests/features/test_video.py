"""PyAV decoding: frame sampling at a chosen rate, the audio track, missing streams and broken files."""

from __future__ import annotations

import numpy as np
import pytest

from features.video import MediaError, decode_media, write_video

SR = 16000


def _frames(n: int) -> np.ndarray:
    # frame t is uniformly grey level 10 * t, so a decoded frame tells which source frame it was
    return np.stack([np.full((48, 64, 3), 10 * t, dtype=np.uint8) for t in range(n)])


def test_frames_are_sampled_at_the_requested_rate(tmp_path) -> None:
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(2 * SR) / SR)).astype(np.float32)
    path = write_video(tmp_path / "a.mp4", _frames(25), fps=25, audio=tone, sample_rate=SR)
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
    silent = write_video(tmp_path / "silent.mp4", _frames(10), fps=25)
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
