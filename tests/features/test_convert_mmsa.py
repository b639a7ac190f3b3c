"""Tests for features/convert_mmsa.py: exact, pickle-free round trip of MMSA/MulT feature files."""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import numpy as np
import pytest

from features.convert_mmsa import convert_mmsa, main, trees_equal
from features.mmsa_format import MMSADataError, load_npz, restricted_pickle_load
from tests.fakes import make_mmsa_dict, write_malicious_pickle, write_pickle


def _assert_same(a, b):
    for split in a:
        assert list(a[split]) == list(b[split])
        for key, value in a[split].items():
            other = b[split][key]
            assert type(other) is type(value), (split, key)
            if isinstance(value, np.ndarray):
                assert other.dtype == value.dtype and other.shape == value.shape, (split, key)
                if value.dtype.kind == "O":
                    assert other.tolist() == value.tolist()
                else:
                    assert np.array_equal(other, value, equal_nan=value.dtype.kind == "f"), (split, key)
            else:
                assert other == value, (split, key)


@pytest.mark.parametrize("aligned", [True, False])
def test_exact_round_trip(tmp_path, aligned):
    raw = make_mmsa_dict(aligned=aligned)
    # the variety real files show: object-dtype string arrays, lists of strings, NaN/-inf, extra keys
    raw["train"]["id"] = raw["train"]["id"].astype(object)
    raw["valid"]["raw_text"] = raw["valid"]["raw_text"].tolist()
    raw["train"]["audio"][0, 0, 0] = -np.inf
    raw["train"]["vision"][0, 0, 0] = np.nan
    raw["test"]["extra_scalar"] = 3
    raw["test"]["extra_float"] = np.float64(0.25)
    src = write_pickle(raw, tmp_path / "aligned_50.pkl")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    dst = convert_mmsa(src, tmp_path / "out" / "aligned_50.npz")
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # source untouched
    back = load_npz(dst)
    _assert_same(raw, back)
    assert trees_equal(raw, back) is None
    assert back["train"]["id"].dtype == object and isinstance(back["valid"]["raw_text"], list)
    with np.load(dst, allow_pickle=False) as npz:  # plain numpy, no pickle needed
        assert "train/audio" in npz.files and npz["train/id"].dtype.kind == "U"
        header = json.loads(str(npz["__mmsa_header__"][()]))
    assert header["schema"] == "mmsa" and header["source"] == "aligned_50.pkl"


def test_mult_round_trip(tmp_path):
    raw = make_mmsa_dict(fmt="mult")
    raw["train"] = OrderedDict(raw["train"])
    dst = convert_mmsa(write_pickle(raw, tmp_path / "mosi_data.pkl"), tmp_path / "mosi_data.npz")
    back = load_npz(dst)
    _assert_same(raw, back)
    assert back["train"]["id"].dtype.kind == "S" and back["train"]["id"].shape == (16, 3)
    assert isinstance(back["train"], OrderedDict)


def test_trees_equal_detects_differences():
    a = make_mmsa_dict(n_train=4, n_valid=2, n_test=2)
    b = make_mmsa_dict(n_train=4, n_valid=2, n_test=2)
    assert trees_equal(a, b) is None
    b["train"]["audio"] = b["train"]["audio"].astype(np.float64)
    assert "train/audio" in trees_equal(a, b)
    b = make_mmsa_dict(n_train=4, n_valid=2, n_test=2)
    b["valid"]["regression_labels"][0] += 1
    assert "valid/regression_labels" in trees_equal(a, b)


def test_cli_and_overwrite(tmp_path):
    src = write_pickle(make_mmsa_dict(), tmp_path / "a.pkl")
    dst = tmp_path / "a.npz"
    assert main([str(src), str(dst)]) == dst and dst.is_file()
    with pytest.raises(FileExistsError, match="--overwrite"):
        main([str(src), str(dst)])
    assert main([str(src), str(dst), "--overwrite"]) == dst
    with pytest.raises(ValueError, match=r"must end in \.npz"):
        convert_mmsa(src, tmp_path / "a.pkl2")


def test_malicious_source_refused(tmp_path):
    marker = tmp_path / "marker"
    src = write_malicious_pickle(tmp_path / "evil.pkl", marker)
    with pytest.raises(MMSADataError, match="forbidden global 'posix.system'"):
        convert_mmsa(src, tmp_path / "evil.npz")
    assert not marker.exists() and not (tmp_path / "evil.npz").exists()


def test_unstorable_content_refused(tmp_path):
    raw = make_mmsa_dict()
    raw["train"]["weird"] = np.array([1, "a"], dtype=object)
    with pytest.raises(MMSADataError, match="train/weird"):
        convert_mmsa(write_pickle(raw, tmp_path / "x.pkl"), tmp_path / "x.npz")
    assert not any(p.suffix in (".npz", ".tmp") for p in tmp_path.iterdir())


def test_round_trip_of_converted_file_loads_like_source(tmp_path):
    raw = make_mmsa_dict()
    src = write_pickle(raw, tmp_path / "s.pkl")
    dst = convert_mmsa(src, tmp_path / "s.npz")
    assert trees_equal(restricted_pickle_load(src), load_npz(dst)) is None
