"""Tests for features/mmsa_format.py: restricted loading, schema, validation, cleaning, masks, Dataset."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

from datamodules.datasets.mmsa_dataset import MMSADataset, mmsa_collate
from features.mmsa_format import (
    MMSADataError,
    RestrictedUnpickler,
    SplitSizeWarning,
    load_mmsa,
    restricted_pickle_load,
)
from tests.fakes import (
    make_mmsa_dict,
    write_malicious_pickle,
    write_mmsa_npz,
    write_mmsa_pickle,
    write_pickle,
)


# ------------------------------------------------------------------------------------------------ schema / load
def test_mmsa_aligned_round_trip(tmp_path):
    raw = make_mmsa_dict(n_train=16, n_valid=8, n_test=8, dims=(16, 5, 7), seq_len=8)
    path = write_pickle(raw, tmp_path / "aligned_50.pkl")
    data = load_mmsa(path)
    assert data.schema == "mmsa" and data.aligned
    assert data.feature_dims == {"text": 16, "audio": 5, "vision": 7}
    assert data.seq_lens == {"text": 8, "audio": 8, "vision": 8}
    assert data.split_sizes == {"train": 16, "valid": 8, "test": 8}
    for name, split in data.splits.items():
        src = raw[name]
        assert split.text.dtype == torch.float32 and split.text.shape == (len(src["id"]), 8, 16)
        assert split.text_bert.dtype == torch.int64 and split.text_bert.shape == (len(src["id"]), 3, 8)
        assert torch.equal(split.text, torch.from_numpy(src["text"]))
        assert torch.equal(split.audio, torch.from_numpy(src["audio"]))
        assert torch.equal(split.vision, torch.from_numpy(src["vision"]))
        assert torch.equal(split.text_bert, torch.from_numpy(src["text_bert"].astype(np.int64)))
        assert torch.equal(split.label, torch.from_numpy(src["regression_labels"]))
        assert split.id.tolist() == src["id"].tolist()
        assert split.raw_text == src["raw_text"].tolist()


def test_aligned_masks_follow_text_bert(tmp_path):
    data = load_mmsa(write_mmsa_pickle(tmp_path, aligned=True))
    split = data.splits["train"]
    assert split.text_mask.dtype == torch.bool
    assert torch.equal(split.text_mask, split.text_bert[:, 1].bool())
    assert torch.equal(split.audio_mask, split.text_mask) and torch.equal(split.vision_mask, split.text_mask)
    assert not split.text_mask.all(), "fakes should contain padding"
    # padding steps carry no features
    assert split.audio[~split.audio_mask].abs().sum() == 0


def test_aligned_without_text_bert_is_all_valid(tmp_path):
    data = load_mmsa(write_mmsa_pickle(tmp_path, with_text_bert=False))
    split = data.splits["valid"]
    assert split.text_bert is None
    assert split.text_mask.all() and split.audio_mask.all() and split.vision_mask.all()


def test_unaligned_lengths_give_masks(tmp_path):
    raw = make_mmsa_dict(aligned=False, seq_len=(8, 12, 10))
    data = load_mmsa(write_pickle(raw, tmp_path / "unaligned_50.pkl"))
    assert not data.aligned
    assert data.seq_lens == {"text": 8, "audio": 12, "vision": 10}
    for name, split in data.splits.items():
        for m in ("audio", "vision"):
            lengths = torch.from_numpy(raw[name][f"{m}_lengths"])
            mask = getattr(split, f"{m}_mask")
            assert torch.equal(mask.sum(1), lengths)
            expected = torch.arange(mask.shape[1])[None] < lengths[:, None]  # valid prefix, padding at the end
            assert torch.equal(mask, expected)
        assert torch.equal(split.text_mask, split.text_bert[:, 1].bool())
    assert (torch.from_numpy(raw["train"]["audio_lengths"]) < 12).any()


def test_nan_inf_cleaned_with_counts(tmp_path, caplog):
    raw = make_mmsa_dict()
    raw["train"]["audio"][0, 0, 0] = -np.inf
    raw["train"]["audio"][1, 1, 1] = np.nan
    raw["train"]["audio"][2, 2, 2] = -np.inf
    raw["valid"]["vision"][0, 0, :3] = np.inf
    path = write_pickle(raw, tmp_path / "aligned_50.pkl")
    with caplog.at_level("INFO", logger="features.mmsa_format"):
        data = load_mmsa(path)
    assert data.nonfinite_counts["train"] == {"text": 0, "audio": 3, "vision": 0}
    assert data.nonfinite_counts["valid"] == {"text": 0, "audio": 0, "vision": 3}
    assert data.nonfinite_counts["test"] == {"text": 0, "audio": 0, "vision": 0}
    train = data.splits["train"]
    assert torch.isfinite(train.audio).all() and torch.isfinite(data.splits["valid"].vision).all()
    assert train.audio[0, 0, 0] == 0 and train.audio[1, 1, 1] == 0
    assert train.audio[3, 0, 0] == float(raw["train"]["audio"][3, 0, 0])  # untouched elsewhere
    assert any("cleaned 3 non-finite" in r.message and "audio" in r.message for r in caplog.records)


def test_split_size_warning(tmp_path):
    path = write_mmsa_pickle(tmp_path)
    with pytest.warns(SplitSizeWarning, match="1284"):
        load_mmsa(path, dataset_name="mosi")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitSizeWarning)
        load_mmsa(path)  # no name, no check


def test_standard_sizes_do_not_warn(tmp_path):
    path = write_mmsa_pickle(tmp_path, 1284, 229, 686, dims=(2, 2, 2), seq_len=3, with_text_bert=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitSizeWarning)
        data = load_mmsa(path, dataset_name="mosi")
    assert data.split_sizes == {"train": 1284, "valid": 229, "test": 686}
    with pytest.warns(SplitSizeWarning, match="16326"):
        load_mmsa(path, dataset_name="mosei")


def test_mult_format(tmp_path):
    raw = make_mmsa_dict(fmt="mult", dims=(12, 5, 7))
    path = write_pickle(raw, tmp_path / "mosi_data.pkl")
    data = load_mmsa(path)
    assert data.schema == "mult" and data.aligned
    assert data.feature_dims == {"text": 12, "audio": 5, "vision": 7}
    train = data.splits["train"]
    assert raw["train"]["labels"].shape == (16, 1, 1)
    assert torch.equal(train.label, torch.from_numpy(raw["train"]["labels"].reshape(-1)))
    assert train.text_bert is None and train.text_mask.all()
    first = [x.decode() for x in raw["train"]["id"][0]]
    assert train.id[0] == "_".join(first)
    assert len(set(train.id.tolist())) == 16


def test_mult_mosei_standard_sizes_are_distinct(tmp_path):
    path = write_mmsa_pickle(tmp_path, 16265, 1869, 4643, dims=(2, 1, 1), seq_len=2, fmt="mult")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitSizeWarning)
        assert load_mmsa(path, dataset_name="mosei").schema == "mult"


def test_npz_and_pickle_load_the_same(tmp_path):
    a = load_mmsa(write_mmsa_pickle(tmp_path / "a", aligned=False))
    b = load_mmsa(write_mmsa_npz(tmp_path / "b", aligned=False))
    for name in a.splits:
        sa, sb = a.splits[name], b.splits[name]
        for key in ("text", "audio", "vision", "text_bert", "text_mask", "audio_mask", "vision_mask", "label"):
            assert torch.equal(getattr(sa, key), getattr(sb, key)), key
        assert sa.id.tolist() == sb.id.tolist()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy_pickles(tmp_path, protocol):
    obj = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "s": np.array(["x", "yy"]),
           "o": np.array(["x", "yy"], dtype=object), "b": np.array([[b"v", b"1"]]), "f": np.float64(1.5),
           "l": [1, 2.0, "z"], "t": (1,)}
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    out = restricted_pickle_load(path)
    assert np.array_equal(out["a"], obj["a"]) and out["a"].dtype == np.float32
    assert out["o"].tolist() == ["x", "yy"] and out["b"].tolist() == [[b"v", b"1"]]
    assert out["f"] == 1.5 and out["l"] == [1, 2.0, "z"] and out["t"] == (1,)


# ------------------------------------------------------------------------------------------------ bad input
def test_missing_file_explains_where_and_source(tmp_path):
    with pytest.raises(MMSADataError) as err:
        load_mmsa(tmp_path / "nope" / "aligned_50.pkl")
    msg = str(err.value)
    assert "nope/aligned_50.pkl" in msg and "not found" in msg
    assert "data/mosi/aligned_50.pkl" in msg and "github.com/thuiar/MMSA" in msg and "Datasets" in msg


def test_not_a_pickle(tmp_path):
    path = tmp_path / "aligned_50.pkl"
    path.write_text("this is not a pickle\n")
    with pytest.raises(MMSADataError, match="aligned_50.pkl.*not a readable pickle"):
        load_mmsa(path)


def test_truncated_pickle(tmp_path):
    good = write_mmsa_pickle(tmp_path / "good")
    bad = tmp_path / "truncated.pkl"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MMSADataError, match="truncated.pkl.*not a readable pickle"):
        load_mmsa(bad)


def test_truncated_npz(tmp_path):
    good = write_mmsa_npz(tmp_path / "good")
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MMSADataError, match="truncated.npz"):
        load_mmsa(bad)


def test_missing_split(tmp_path):
    raw = make_mmsa_dict()
    del raw["valid"]
    with pytest.raises(MMSADataError, match=r"x.pkl: missing split\(s\) \['valid'\]"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


@pytest.mark.parametrize("key", ["audio", "vision", "text", "id", "regression_labels"])
def test_missing_key(tmp_path, key):
    raw = make_mmsa_dict()
    del raw["test"][key]
    with pytest.raises(MMSADataError, match=rf"x.pkl: split 'test'.*missing key.*'{key}'"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


def test_no_label_key(tmp_path):
    raw = make_mmsa_dict()
    del raw["train"]["regression_labels"]
    with pytest.raises(MMSADataError, match="no label key"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


def test_feature_dims_differ_between_splits(tmp_path):
    raw = make_mmsa_dict()
    raw["valid"]["audio"] = np.zeros((8, 8, 6), dtype=np.float32)
    with pytest.raises(MMSADataError, match=r"x.pkl: feature dim of 'audio' differs between splits.*'valid': 6"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


def test_sample_count_mismatch(tmp_path):
    raw = make_mmsa_dict()
    raw["train"]["vision"] = raw["train"]["vision"][:-1]
    with pytest.raises(MMSADataError, match=r"split 'train'/vision: has 15 samples, expected 16"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


@pytest.mark.parametrize("value, what", [(13, "exceed the sequence length 12"), (-1, "1 are negative")])
def test_bad_lengths(tmp_path, value, what):
    raw = make_mmsa_dict(aligned=False, seq_len=(8, 12, 10))
    raw["valid"]["audio_lengths"][2] = value
    with pytest.raises(MMSADataError, match=rf"x.pkl: split 'valid'/audio_lengths: .*{what}.*sample 2"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


def test_only_one_lengths_key(tmp_path):
    raw = make_mmsa_dict(aligned=False)
    del raw["train"]["vision_lengths"]
    with pytest.raises(MMSADataError, match="audio_lengths but not vision_lengths"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


@pytest.mark.parametrize("value, what", [(3.5, "1 labels outside"), (np.nan, "1 non-finite"),
                                         (-np.inf, "1 non-finite")])
def test_bad_labels(tmp_path, value, what):
    raw = make_mmsa_dict()
    raw["test"]["regression_labels"][5] = value
    with pytest.raises(MMSADataError, match=rf"x.pkl: split 'test'/regression_labels: .*{what}.*sample 5"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


def test_text_bert_shape_checked(tmp_path):
    raw = make_mmsa_dict()
    raw["train"]["text_bert"] = raw["train"]["text_bert"][:, :2]
    with pytest.raises(MMSADataError, match="text_bert: expected shape"):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


@pytest.mark.parametrize("via, forbidden", [("system", "posix.system"), ("exec", "builtins.exec")])
def test_malicious_pickle_refused_and_nothing_runs(tmp_path, via, forbidden):
    marker = tmp_path / "marker"
    path = write_malicious_pickle(tmp_path / "evil.pkl", marker, via=via)
    # the payload is real: an unrestricted load would create the marker
    assert forbidden.split(".")[1].encode() in path.read_bytes()
    with pytest.raises(MMSADataError) as err:
        load_mmsa(path)
    assert "evil.pkl" in str(err.value) and f"'{forbidden}'" in str(err.value)
    assert not marker.exists()


def test_torch_tensor_pickle_refused(tmp_path):
    raw = make_mmsa_dict()
    raw["train"]["audio"] = torch.from_numpy(raw["train"]["audio"])
    with pytest.raises(MMSADataError, match="forbidden global 'torch."):
        load_mmsa(write_pickle(raw, tmp_path / "x.pkl"))


def test_unpickler_is_a_pickle_unpickler():
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)
    assert issubclass(MMSADataError, ValueError)


# ------------------------------------------------------------------------------------------------ Dataset
def test_getitems_equals_per_item(tmp_path):
    data = load_mmsa(write_mmsa_pickle(tmp_path, aligned=False))
    ds = MMSADataset(data.splits["train"])
    idx = [5, 0, 11, 3]
    batch = mmsa_collate(ds.__getitems__(idx))
    stacked = mmsa_collate([ds[i] for i in idx])
    assert set(batch) == {"text", "text_bert", "audio", "vision", "text_mask", "audio_mask", "vision_mask",
                          "label", "id"}
    assert set(batch) == set(stacked)
    for key, value in batch.items():
        if key == "id":
            assert value == stacked["id"] == [str(data.splits["train"].id[i]) for i in idx]
            assert all(isinstance(v, str) for v in value)
        else:
            assert torch.equal(value, stacked[key]), key
    assert batch["label"].shape == (4,) and batch["text"].shape == (4, 8, 16)
    assert batch["text_bert"].dtype == torch.int64 and batch["audio_mask"].dtype == torch.bool


def test_collate_is_identity_for_batched_dicts():
    batch = {"label": torch.zeros(2), "id": ["a", "b"]}
    out = mmsa_collate(batch)
    assert out["label"] is batch["label"] and out["id"] == ["a", "b"]
