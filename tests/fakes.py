"""Tiny fake data files for tests (in the spirit of Lightning's ``boring_classes.py``).

MOSI/MOSEI: :func:`write_mmsa_pickle` writes a tiny file in the exact MMSA (or MulT) schema with the planted,
learnable signal of :mod:`features.synthetic_mmsa` (small dims by default: text 16, audio 5, vision 7, L = 8),
deterministic by seed. Use it as ``MOSEIDataModule(path=str(write_mmsa_pickle(tmp_path)))``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from features.mmsa_format import save_npz
from features.synthetic_mmsa import generate_mmsa

__all__ = [
    "make_mmsa_dict",
    "write_malicious_pickle",
    "write_mmsa_npz",
    "write_mmsa_pickle",
    "write_pickle",
]

_DEFAULT_NAMES = {("mmsa", True): "aligned_50.pkl", ("mmsa", False): "unaligned_50.pkl",
                  ("mult", True): "mosi_data.pkl", ("mult", False): "mosi_data_noalign.pkl"}


def make_mmsa_dict(
    n_train: int = 16,
    n_valid: int = 8,
    n_test: int = 8,
    aligned: bool = True,
    dims: Sequence[int] = (16, 5, 7),
    seq_len: int | Sequence[int] | None = None,
    with_text_bert: bool = True,
    fmt: str = "mmsa",
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """The feature dict (``{"train": {...}, "valid": {...}, "test": {...}}``) before it is written.

    ``seq_len``: one length for all modalities or (text, audio, vision); default 8 aligned, (8, 12, 10) unaligned.
    """
    if seq_len is None:
        seq_len = 8 if aligned else (8, 12, 10)
    lens = (seq_len,) * 3 if isinstance(seq_len, int) else tuple(seq_len)
    return generate_mmsa(
        fmt=fmt, alignment="aligned" if aligned else "unaligned", sizes=(n_train, n_valid, n_test),
        dims=tuple(dims), seq_lens=lens, text_bert="include" if with_text_bert else "omit", seed=seed,
    )


def _target(path: str | os.PathLike, fmt: str, aligned: bool, suffix: str) -> Path:
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path.mkdir(parents=True, exist_ok=True)
        path = path / _DEFAULT_NAMES[(fmt, aligned)]
        path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_pickle(obj: Any, path: str | os.PathLike) -> Path:
    """Pickle ``obj`` to ``path`` (e.g. a corrupted copy of :func:`make_mmsa_dict`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=4)
    return path


def write_mmsa_pickle(
    path: str | os.PathLike,
    n_train: int = 16,
    n_valid: int = 8,
    n_test: int = 8,
    aligned: bool = True,
    dims: Sequence[int] = (16, 5, 7),
    seq_len: int | Sequence[int] | None = None,
    with_text_bert: bool = True,
    fmt: str = "mmsa",
    seed: int = 0,
) -> Path:
    """Write a tiny MMSA-schema (``fmt="mmsa"``) or MulT-schema (``fmt="mult"``) pickle and return its path.

    ``path`` may be a directory (the file is then ``aligned_50.pkl`` / ``unaligned_50.pkl`` / ``mosi_data.pkl``
    inside it) or a file path. Other arguments as in :func:`make_mmsa_dict`.
    """
    data = make_mmsa_dict(n_train, n_valid, n_test, aligned, dims, seq_len, with_text_bert, fmt, seed)
    return write_pickle(data, _target(path, fmt, aligned, ".pkl"))


def write_mmsa_npz(
    path: str | os.PathLike,
    n_train: int = 16,
    n_valid: int = 8,
    n_test: int = 8,
    aligned: bool = True,
    dims: Sequence[int] = (16, 5, 7),
    seq_len: int | Sequence[int] | None = None,
    with_text_bert: bool = True,
    fmt: str = "mmsa",
    seed: int = 0,
) -> Path:
    """Like :func:`write_mmsa_pickle`, in the pickle-free ``.npz`` form."""
    data = make_mmsa_dict(n_train, n_valid, n_test, aligned, dims, seq_len, with_text_bert, fmt, seed)
    return save_npz(data, _target(path, fmt, aligned, ".npz"))


class _WriteMarker:
    """Unpickling this would call ``os.system`` (or ``builtins.exec``) to create a marker file."""

    def __init__(self, marker: Path, via: str) -> None:
        self.marker, self.via = marker, via

    def __reduce__(self):
        if self.via == "exec":
            return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)
        return os.system, (f"touch '{self.marker}'",)


def write_malicious_pickle(path: str | os.PathLike, marker: str | os.PathLike, via: str = "system") -> Path:
    """Write an MMSA-looking pickle whose ``train/audio`` would create ``marker`` when unpickled unsafely.

    ``via``: ``"system"`` (``os.system``, pickled as ``posix.system``) or ``"exec"`` (``builtins.exec``).
    """
    data = make_mmsa_dict(4, 2, 2)
    data["train"]["audio"] = _WriteMarker(Path(marker), via)
    return write_pickle(data, path)


def write_tiny_bert(
    path: str | os.PathLike, vocab_size: int = 30522, num_layers: int = 1, max_positions: int = 64, seed: int = 0
) -> str:
    """Save a randomly initialised 16-wide BERT with ``save_pretrained`` (a local text encoder, no hub access).

    ``vocab_size=30522`` is the uncased vocabulary of MMSA's ``text_bert`` ids (which the fakes use).
    """
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=max_positions,
    )
    BertModel(config).save_pretrained(path)
    return str(path)
