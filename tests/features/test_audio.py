"""Audio descriptors on signals with known answers, and on real speech (shipped WAVs, espeak-ng)."""

from __future__ import annotations

import numpy as np
import pytest

from features.audio import (
    FRAME_FEATURES,
    PROSODY_FEATURES,
    AudioSettings,
    audio_feature_names,
    egemaps,
    extract_audio,
    frame_descriptors,
    pause_intervals,
    prosody,
)
from features.synthetic_recordings import espeak, espeak_available

SR = 16000
S = AudioSettings()
COL = {n: i for i, n in enumerate(FRAME_FEATURES)}
PRO = {n: i for i, n in enumerate(PROSODY_FEATURES)}


def tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SR), np.float32)


def interior(frames: np.ndarray, k: int = 5) -> np.ndarray:
    return frames[k:-k]


def test_sine_pitch_voicing_loudness_zcr_centroid() -> None:
    y = tone(220.0, 1.5, amp=0.5)
    f = interior(frame_descriptors(y, S))
    assert f.shape[1] == len(FRAME_FEATURES)
    assert np.median(f[:, COL["f0_hz"]]) == pytest.approx(220.0, rel=0.01)
    assert f[:, COL["voiced"]].mean() > 0.95 and f[:, COL["voicing_prob"]].mean() > 0.8
    # RMS of a sine of amplitude a is a / sqrt(2): 20 log10(0.5 / sqrt 2) = -9.03 dB
    assert np.median(f[:, COL["loudness_rms_db"]]) == pytest.approx(-9.03, abs=0.3)
    # a 1 kHz sine crosses zero 2000 times per second: 2000 / 16000 = 0.125 of sample pairs
    g = interior(frame_descriptors(tone(1000.0, 1.0), S))
    assert np.median(g[:, COL["zcr"]]) == pytest.approx(0.125, abs=0.01)
    assert np.median(g[:, COL["spectral_centroid_hz"]]) == pytest.approx(1000.0, rel=0.05)
    # a stationary tone has (near) zero MFCC deltas and spectral flux
    d = g[:, [COL[f"dmfcc_{i}"] for i in range(1, 14)]]
    assert np.abs(d).max() < 0.5
    assert np.median(g[:, COL["spectral_flux"]]) < 0.5


def test_silence_is_unvoiced_and_quiet() -> None:
    f = frame_descriptors(silence(1.0), S)
    assert f[:, COL["voiced"]].sum() == 0 and np.all(f[:, COL["f0_hz"]] == 0)
    assert np.all(f[:, COL["loudness_rms_db"]] <= -99.0)


def test_spectral_flux_peaks_at_an_onset() -> None:
    y = np.concatenate([silence(0.5), tone(440.0, 0.5)])
    f = frame_descriptors(y, S)
    onset_frame = int(np.argmax(f[:, COL["spectral_flux"]]))
    assert abs(onset_frame * S.hop_s - 0.5) <= 2 * S.hop_s


def test_pitch_slope_and_range_of_a_glide() -> None:
    # f0 doubles over 2 s: +12 semitones, 6 st/s
    t = np.arange(2 * SR) / SR
    f0 = 150.0 * 2.0 ** (t / 2.0)
    y = (0.5 * np.sin(2 * np.pi * np.cumsum(f0) / SR)).astype(np.float32)
    p = prosody(y, frame_descriptors(y, S), S)
    assert p[PRO["pitch_slope_st_per_s"]] == pytest.approx(6.0, rel=0.05)
    assert p[PRO["pitch_range_st"]] == pytest.approx(12.0 * 0.9, abs=0.7)  # 95th - 5th percentile
    flat = tone(200.0, 2.0)
    q = prosody(flat, frame_descriptors(flat, S), S)
    assert abs(q[PRO["pitch_slope_st_per_s"]]) < 0.1 and q[PRO["pitch_range_st"]] < 0.3


def test_inserted_silences_are_the_pauses() -> None:
    y = np.concatenate([tone(200, 0.6), silence(0.4), tone(200, 0.6), silence(0.25), tone(200, 0.6), silence(0.5)])
    pauses = pause_intervals(y, S)
    assert len(pauses) == 2  # trailing silence is not a pause
    assert pauses[0] == pytest.approx([0.6, 1.0], abs=0.05)
    assert pauses[1] == pytest.approx([1.6, 1.85], abs=0.05)
    p = prosody(y, frame_descriptors(y, S), S)
    assert p[PRO["pause_count"]] == 2
    assert p[PRO["pause_ratio"]] == pytest.approx(0.65 / 2.45, abs=0.04)
    # a gap shorter than min_pause_s is not a pause
    short = np.concatenate([tone(200, 0.5), silence(0.08), tone(200, 0.5)])
    assert len(pause_intervals(short, S)) == 0


def test_click_rate_gives_the_speech_rate() -> None:
    import librosa

    for rate in (3.0, 6.0):
        times = np.arange(0.2, 3.0, 1.0 / rate)
        y = librosa.clicks(times=times, sr=SR, length=3 * SR, click_duration=0.05).astype(np.float32)
        s = AudioSettings(nucleus_voicing="ignored", min_pause_s=0.5)
        p = prosody(y, frame_descriptors(y, s), s)
        nuclei = p[PRO["speech_rate_syll_per_s"]] * p[PRO["phonation_s"]]
        assert nuclei == pytest.approx(len(times), abs=1)
    # with voicing required, unvoiced (noise) bursts are not syllables; with it ignored they are counted
    rng = np.random.default_rng(0)
    bursts = np.concatenate([np.concatenate([0.3 * rng.standard_normal(int(0.08 * SR)), silence(0.25)])
                             for _ in range(8)]).astype(np.float32)
    ignored = AudioSettings(nucleus_voicing="ignored", min_pause_s=0.5)
    p_req = prosody(bursts, frame_descriptors(bursts, S), S)
    p_ign = prosody(bursts, frame_descriptors(bursts, ignored), ignored)
    assert p_req[PRO["speech_rate_syll_per_s"]] * p_req[PRO["phonation_s"]] <= 1
    assert p_ign[PRO["speech_rate_syll_per_s"]] * p_ign[PRO["phonation_s"]] == pytest.approx(8, abs=1)


def test_extract_audio_repeats_prosody_on_every_step() -> None:
    y = tone(180, 1.0)
    feats, pros = extract_audio(y, S)
    assert feats.shape == (1 + len(y) // S.hop_length, len(audio_feature_names(S)))
    np.testing.assert_array_equal(feats[:, len(FRAME_FEATURES):], np.broadcast_to(pros, (len(feats), len(pros))))
    assert feats.dtype == np.float32 and np.isfinite(feats).all()


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="AudioSettings"):
        AudioSettings(fmin=600, fmax=500)
    with pytest.raises(ValueError, match="nucleus_voicing"):
        AudioSettings(nucleus_voicing="maybe")  # type: ignore[arg-type]


def test_egemaps_without_opensmile_is_a_clear_error() -> None:
    pytest.importorskip  # noqa: B018 - documentation: the package is deliberately not a dependency
    try:
        import opensmile  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="research and non-commercial"):
            egemaps(tone(200, 0.5), SR)
    else:
        pytest.skip("opensmile is installed here; the missing-package error cannot be shown")


# ------------------------------------------------------------------------------------------------ real speech
def test_shipped_wavs_pitch_and_inserted_pause(shared_data) -> None:
    import librosa

    wav = shared_data / "speech" / "pos.wav"
    if not wav.is_file():
        pytest.skip(f"{wav} is absent")
    y, _ = librosa.load(wav, sr=SR)
    f = frame_descriptors(y, S)
    voiced = f[f[:, COL["voiced"]] > 0, COL["f0_hz"]]
    assert len(voiced) > 20
    assert 70 <= np.median(voiced) <= 200  # espeak-ng's default English voice is a low male voice
    before = pause_intervals(y, S)
    cut = len(y) // 2
    cut += int(np.argmin(np.abs(y[cut:cut + 4000])))  # next quiet sample
    y2 = np.concatenate([y[:cut], silence(0.8), y[cut:]])
    after = pause_intervals(y2, S)
    assert len(after) >= len(before)
    t = cut / SR
    hit = [p for p in after if p[0] <= t + 0.05 and p[1] >= t + 0.75]
    assert hit, f"no pause around the inserted silence at {t:.2f}-{t + 0.8:.2f} s: {after}"


@pytest.mark.slow
@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_espeak_pitch_and_rate_follow_the_voice_settings() -> None:
    import subprocess

    text = "the quick brown fox jumps over the lazy dog and runs far away into the forest"

    def speak(pitch: int, wpm: int) -> np.ndarray:
        import shutil
        import tempfile

        import librosa

        with tempfile.TemporaryDirectory() as d:
            out = f"{d}/s.wav"
            subprocess.run([shutil.which("espeak-ng"), "-p", str(pitch), "-s", str(wpm), "-w", out, text], check=True,
                           capture_output=True)
            return librosa.load(out, sr=SR)[0]

    low, high = speak(20, 150), speak(90, 150)
    f0 = {}
    for name, y in (("low", low), ("high", high)):
        f = frame_descriptors(y, S)
        v = f[f[:, COL["voiced"]] > 0, COL["f0_hz"]]
        f0[name] = float(np.median(v))
        assert S.fmin < f0[name] < 300
    assert f0["high"] > f0["low"] * 1.2
    slow, fast = speak(50, 100), speak(50, 260)
    rate = {n: prosody(y, frame_descriptors(y, S), S)[PRO["speech_rate_syll_per_s"]] for n, y in
            (("slow", slow), ("fast", fast))}
    assert 1.0 < rate["slow"] < rate["fast"] / 1.3
    assert espeak("hello there").size > SR // 4
