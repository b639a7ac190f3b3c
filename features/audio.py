"""Audio descriptors with librosa: frame-level features and utterance-level prosody.

Paper: Li et al., HGCL, §II.C (2): "Extract pitch, speech rate, volume, pauses, and intonation using Librosa".

Frame-level descriptors (one row per hop of ``hop_s`` seconds, analysis window ``win_s`` seconds, centred frames;
defaults 20 ms hop, 40 ms window, 16 kHz mono):

==========================  ================================================================================
name                        meaning (unit)
==========================  ================================================================================
``f0_hz``                   fundamental frequency from ``librosa.pyin`` (Hz; 0 in unvoiced frames)
``voicing_prob``            pYIN voicing probability (0..1)
``voiced``                  pYIN voiced decision (0 / 1)
``loudness_rms_db``         RMS level, ``20 log10(rms)`` (dB re full scale, floored at -100 dB)
``mfcc_1`` .. ``mfcc_13``   MFCCs 1-13 of a 40-band log-mel spectrum (``librosa.feature.mfcc``; dB-scaled)
``dmfcc_1`` .. ``dmfcc_13`` their first-order deltas (``librosa.feature.delta``, 9-frame window; per frame)
``spectral_centroid_hz``    spectral centroid (Hz)
``spectral_flux``           onset strength: mean positive log-mel difference to the previous frame (dB)
``zcr``                     zero-crossing rate (fraction of sample pairs changing sign, 0..1)
==========================  ================================================================================

Utterance-level prosody (:func:`prosody`; repeated on every step of the ``audio`` sequence, and stored on its own
as ``prosody`` by the extractor):

===============================  ===========================================================================
``duration_s``                   utterance length (s)
``phonation_s``                  sounding (non-silent) time (s)
``speech_rate_syll_per_s``       syllable nuclei per second of phonation time (de Jong & Wempe 2009 style:
                                 loudness peaks, >= ``min_prominence_db`` above the neighbouring dips, at least
                                 ``min_syllable_gap_s`` apart, inside non-silent audio and, with
                                 ``nucleus_voicing="required"``, voiced)
``pause_count``                  silences of >= ``min_pause_s`` between sounding parts (leading and trailing
                                 silence are not pauses)
``pause_ratio``                  total pause time / (end of last sounding part - start of the first)
``f0_median_hz``                 median f0 over voiced frames (Hz; 0 without voiced frames)
``pitch_range_st``               95th - 5th percentile of voiced f0 (semitones)
``pitch_slope_st_per_s``         least-squares slope of voiced f0 over time (semitones per second: intonation)
===============================  ===========================================================================

Silence is detected by ``librosa.effects.split`` (frames more than ``silence_top_db`` below the utterance's
loudest frame). Optional eGeMAPS functionals (88 values) come from audEERING's ``opensmile`` package
(``pip install opensmile``): its licence allows research and non-commercial use only, so it is not a
dependency of the project and :func:`egemaps` raises a clear error when it is absent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

__all__ = [
    "FRAME_FEATURES",
    "PROSODY_FEATURES",
    "AudioSettings",
    "audio_feature_names",
    "egemaps",
    "extract_audio",
    "frame_descriptors",
    "pause_intervals",
    "prosody",
    "sounding_intervals",
]

N_MFCC = 13
FRAME_FEATURES: tuple[str, ...] = (
    "f0_hz", "voicing_prob", "voiced", "loudness_rms_db",
    *(f"mfcc_{i}" for i in range(1, N_MFCC + 1)),
    *(f"dmfcc_{i}" for i in range(1, N_MFCC + 1)),
    "spectral_centroid_hz", "spectral_flux", "zcr",
)
PROSODY_FEATURES: tuple[str, ...] = (
    "duration_s", "phonation_s", "speech_rate_syll_per_s", "pause_count", "pause_ratio", "f0_median_hz",
    "pitch_range_st", "pitch_slope_st_per_s",
)
EGEMAPS_DIM = 88


@dataclass(frozen=True)
class AudioSettings:
    """Audio analysis settings (recorded in the feature file header).

    Args:
        sample_rate: analysis rate (Hz); audio is resampled to it when decoded.
        hop_s: hop between frames (s).
        win_s: analysis window (s) of the spectral descriptors and RMS.
        pyin_frame_s: pYIN frame length (s); must hold >= 2 periods of ``fmin``.
        fmin: lowest f0 searched (Hz).
        fmax: highest f0 searched (Hz).
        silence_top_db: a frame is silent when its level is this many dB below the loudest frame.
        min_pause_s: shortest silence counted as a pause (s).
        min_prominence_db: a syllable nucleus is a loudness peak at least this far above its dips (dB).
        min_syllable_gap_s: nuclei closer than this are merged (s).
        nucleus_voicing: ``"required"`` (only voiced peaks are nuclei: speech) or ``"ignored"`` (any peak).
        opensmile: ``"none"`` or ``"egemaps"`` (append the 88 eGeMAPS v02 functionals; needs ``opensmile``).
    """

    sample_rate: int = 16000
    hop_s: float = 0.02
    win_s: float = 0.04
    pyin_frame_s: float = 0.064
    fmin: float = 65.0
    fmax: float = 500.0
    silence_top_db: float = 35.0
    min_pause_s: float = 0.15
    min_prominence_db: float = 2.0
    min_syllable_gap_s: float = 0.1
    nucleus_voicing: Literal["required", "ignored"] = "required"
    opensmile: Literal["none", "egemaps"] = "none"

    def __post_init__(self) -> None:
        if self.nucleus_voicing not in ("required", "ignored"):
            raise ValueError(f"AudioSettings: nucleus_voicing must be 'required' or 'ignored', "
                             f"got {self.nucleus_voicing!r}")
        if self.opensmile not in ("none", "egemaps"):
            raise ValueError(f"AudioSettings: opensmile must be 'none' or 'egemaps', got {self.opensmile!r}")
        if not 0 < self.fmin < self.fmax < self.sample_rate / 2:
            raise ValueError(f"AudioSettings: need 0 < fmin < fmax < sample_rate/2, got {self.fmin}, {self.fmax}")
        if self.pyin_frame_s * self.fmin < 2:
            raise ValueError(f"AudioSettings: pyin_frame_s={self.pyin_frame_s} holds fewer than 2 periods of "
                             f"fmin={self.fmin} Hz")
        if self.hop_s <= 0 or self.win_s < self.hop_s:
            raise ValueError(f"AudioSettings: need 0 < hop_s <= win_s, got hop_s={self.hop_s}, win_s={self.win_s}")

    @property
    def hop_length(self) -> int:
        return round(self.hop_s * self.sample_rate)

    @property
    def win_length(self) -> int:
        return round(self.win_s * self.sample_rate)

    def as_dict(self) -> dict:
        return asdict(self)


def audio_feature_names(settings: AudioSettings) -> list[str]:
    """Column names of the per-step ``audio`` features (frame descriptors, prosody, optional eGeMAPS)."""
    names = list(FRAME_FEATURES) + [f"utt_{n}" for n in PROSODY_FEATURES]
    if settings.opensmile == "egemaps":
        names += [f"egemaps_{i}" for i in range(EGEMAPS_DIM)]
    return names


def _n_frames(n_samples: int, hop: int) -> int:
    return 1 + n_samples // hop


def frame_descriptors(y: np.ndarray, settings: AudioSettings = AudioSettings()) -> np.ndarray:
    """Frame-level descriptors of ``y`` (see the module table for names and units).

    Shapes:
        y: ``[S]`` float mono at ``settings.sample_rate`` -> ``[T, len(FRAME_FEATURES)]`` float32,
        ``T = 1 + S // hop_length`` (centred frames).
    """
    import librosa

    y = np.ascontiguousarray(y, dtype=np.float32)
    sr, hop, win = settings.sample_rate, settings.hop_length, settings.win_length
    n_fft = 1 << int(np.ceil(np.log2(win)))
    t = _n_frames(len(y), hop)
    if len(y) < n_fft:  # too short for a frame: pad with silence (the frames beyond the signal stay quiet)
        y = np.pad(y, (0, n_fft - len(y)))
    pyin_len = 1 << int(np.ceil(np.log2(settings.pyin_frame_s * sr)))
    f0, voiced, vprob = librosa.pyin(y, fmin=settings.fmin, fmax=settings.fmax, sr=sr, frame_length=pyin_len,
                                     hop_length=hop, center=True, fill_na=0.0)
    rms = librosa.feature.rms(y=y, frame_length=win, hop_length=hop, center=True)[0]
    loud = 20.0 * np.log10(np.maximum(rms, 1e-5))
    stft = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=hop, win_length=win, center=True))
    mel = librosa.feature.melspectrogram(S=stft**2, sr=sr, n_mels=40)
    log_mel = librosa.power_to_db(mel, ref=1.0, amin=1e-10)
    mfcc = librosa.feature.mfcc(S=log_mel, n_mfcc=N_MFCC)
    dmfcc = librosa.feature.delta(mfcc, width=9, mode="nearest") if mfcc.shape[1] >= 3 else np.zeros_like(mfcc)
    centroid = librosa.feature.spectral_centroid(S=stft, sr=sr, n_fft=n_fft)[0]
    flux = librosa.onset.onset_strength(S=log_mel, sr=sr, lag=1, max_size=1, aggregate=np.mean, center=False)
    zcr = librosa.feature.zero_crossing_rate(y, frame_length=win, hop_length=hop, center=True)[0]
    cols = [f0, vprob, voiced.astype(np.float32), loud, *mfcc, *dmfcc, centroid, flux, zcr]
    out = np.zeros((t, len(cols)), dtype=np.float32)
    for j, c in enumerate(cols):
        c = np.nan_to_num(np.asarray(c, dtype=np.float64), nan=0.0)
        n = min(t, len(c))
        out[:n, j] = c[:n]
        if n < t and n:  # a 1-frame shortfall from a different centring convention: repeat the last value
            out[n:, j] = c[n - 1]
    return out


def sounding_intervals(y: np.ndarray, settings: AudioSettings = AudioSettings()) -> np.ndarray:
    """Non-silent ``[start, end)`` parts of ``y`` in seconds, ``[K, 2]``: ``librosa.effects.split`` (frames more
    than ``silence_top_db`` below the loudest), with parts closer than ``min_pause_s`` merged."""
    import librosa

    y = np.asarray(y, dtype=np.float32)
    if len(y) == 0 or float(np.max(np.abs(y))) < 1e-6:
        return np.zeros((0, 2))
    iv = librosa.effects.split(y, top_db=settings.silence_top_db, frame_length=settings.win_length,
                               hop_length=settings.hop_length).astype(np.float64) / settings.sample_rate
    merged: list[list[float]] = []
    for s, e in iv.tolist():
        if merged and s - merged[-1][1] < settings.min_pause_s:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return np.asarray(merged, dtype=np.float64).reshape(-1, 2)


def pause_intervals(y: np.ndarray, settings: AudioSettings = AudioSettings()) -> np.ndarray:
    """Pauses ``[K, 2]`` (start, end in s): the silences of >= ``min_pause_s`` between sounding parts."""
    s = sounding_intervals(y, settings)
    return np.stack([s[:-1, 1], s[1:, 0]], axis=1) if len(s) > 1 else np.zeros((0, 2))


def prosody(y: np.ndarray, frames: np.ndarray, settings: AudioSettings = AudioSettings()) -> np.ndarray:
    """Utterance-level prosody of ``y`` (names and units: :data:`PROSODY_FEATURES` and the module table).

    Args:
        y: ``[S]`` mono signal at ``settings.sample_rate``.
        frames: its :func:`frame_descriptors` ``[T, F]``.

    Returns:
        ``[len(PROSODY_FEATURES)]`` float32.
    """
    from scipy.signal import find_peaks

    hop_s = settings.hop_length / settings.sample_rate
    duration = len(y) / settings.sample_rate
    merged = sounding_intervals(y, settings)
    phonation = float(np.sum(merged[:, 1] - merged[:, 0]))
    pauses = merged[1:, 0] - merged[:-1, 1]
    span = float(merged[-1, 1] - merged[0, 0]) if len(merged) else 0.0
    pause_ratio = float(pauses.sum() / span) if span > 0 else 0.0

    f0, voiced, loud = frames[:, 0], frames[:, 2] > 0.5, frames[:, 3].astype(np.float64)
    times = np.arange(len(frames)) * hop_s
    in_sound = np.zeros(len(frames), dtype=bool)
    for s, e in merged.tolist():
        in_sound |= (times >= s) & (times < e)
    # syllable nuclei: prominent peaks of the (lightly smoothed) loudness contour
    kernel = np.array([0.25, 0.5, 0.25])
    smooth = np.convolve(np.pad(loud, 1, mode="edge"), kernel, mode="valid") if len(loud) else loud
    distance = max(round(settings.min_syllable_gap_s / hop_s), 1)
    peaks, _ = find_peaks(smooth, prominence=settings.min_prominence_db, distance=distance)
    keep = in_sound[peaks]
    if settings.nucleus_voicing == "required":
        keep &= voiced[peaks]
    n_nuclei = int(keep.sum())
    rate = n_nuclei / phonation if phonation > 0 else 0.0

    vf0 = f0[voiced & (f0 > 0)].astype(np.float64)
    if len(vf0) >= 2:
        st = 12.0 * np.log2(vf0 / 55.0)
        f0_med = float(np.median(vf0))
        prange = float(np.percentile(st, 95) - np.percentile(st, 5))
        slope = float(np.polyfit(times[voiced & (f0 > 0)], st, 1)[0])
    else:
        f0_med = float(vf0[0]) if len(vf0) else 0.0
        prange = slope = 0.0
    return np.array([duration, phonation, rate, len(pauses), pause_ratio, f0_med, prange, slope], dtype=np.float32)


def egemaps(y: np.ndarray, sample_rate: int) -> np.ndarray:
    """The 88 eGeMAPS v02 functionals of ``y`` from audEERING's ``opensmile`` package (optional extra).

    openSMILE is licensed for research and non-commercial use only (audEERING's licence); install it yourself
    with ``pip install opensmile`` if that licence fits your use.

    Raises:
        ImportError: ``opensmile`` is not installed.
    """
    try:
        import opensmile
    except ImportError as err:
        raise ImportError(
            "AudioSettings(opensmile='egemaps') needs audEERING's `opensmile` package, which is not installed "
            "(pip install opensmile). Note its licence: research and non-commercial use only. Use "
            "opensmile='none' for the librosa descriptors alone."
        ) from err
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    values = smile.process_signal(np.asarray(y, dtype=np.float32), sample_rate).to_numpy().reshape(-1)
    if values.shape != (EGEMAPS_DIM,):
        raise ValueError(f"egemaps: expected {EGEMAPS_DIM} functionals, got {values.shape}")
    return values.astype(np.float32)


def extract_audio(y: np.ndarray, settings: AudioSettings = AudioSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Per-step audio features and the prosody vector of one utterance.

    Returns:
        ``(features [T, len(audio_feature_names(settings))], prosody [len(PROSODY_FEATURES)])``, float32: each
        step holds the frame descriptors followed by the utterance prosody (and eGeMAPS) repeated.
    """
    frames = frame_descriptors(y, settings)
    pros = prosody(y, frames, settings)
    utt = [pros]
    if settings.opensmile == "egemaps":
        utt.append(egemaps(y, settings.sample_rate))
    utt_vec = np.concatenate(utt)
    feats = np.concatenate([frames, np.broadcast_to(utt_vec, (len(frames), len(utt_vec)))], axis=1)
    return np.ascontiguousarray(feats, dtype=np.float32), pros
