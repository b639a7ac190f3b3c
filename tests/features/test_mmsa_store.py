"""Tests for the memory-mapped MMSA feature store (features/mmsa_format.py, features/convert_mmsa.py): exact and
verified conversion, streaming memory, interrupted conversions, the loader's checks on stores, issue #20 items."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.datasets.mmsa_dataset import MMSADataset
from features import mmsa_format
from features.convert_mmsa import convert_mmsa, main, trees_equal
from features.mmsa_format import (
    MMSADataError,
    check_feature_path,
    load_feature_file,
    load_mmsa,
    load_store,
    npz_to_store,
    open_store,
    save_npz,
    save_store,
    verify_store,
)
from features.synthetic_mmsa import main as synthetic_main
from tests.fakes import make_mmsa_dict, write_pickle

ROOT = Path(__file__).resolve().parents[2]


def _raw_with_nonfinite(aligned: bool = False) -> dict:
    raw = make_mmsa_dict(n_train=12, n_valid=4, n_test=4, aligned=aligned)
    raw["train"]["audio"][0, 0, 0] = -np.inf
    raw["train"]["audio"][1, 1, 1] = np.nan
    raw["valid"]["vision"][0, 0, :3] = np.inf
    raw["train"]["id"] = raw["train"]["id"].astype(object)  # as real pickles hold them
    raw["test"]["extra_scalar"] = 3
    return raw


@pytest.fixture
def small_mmap(monkeypatch):
    """Memory-map even the tiny arrays of the fakes (the real threshold is 1 MiB)."""
    monkeypatch.setattr(mmsa_format, "MMAP_MIN_BYTES", 64)


# ----------------------------------------------------------------------------------------- exact conversion
@pytest.mark.parametrize("source", ["pkl", "npz"])
def test_conversion_is_exact_and_complete(tmp_path, small_mmap, source):
    raw = _raw_with_nonfinite()
    src = write_pickle(raw, tmp_path / "unaligned_50.pkl") if source == "pkl" else save_npz(
        raw, tmp_path / "unaligned_50.npz")
    dst = convert_mmsa(src, tmp_path / "unaligned_50.mmsa")
    tree, header = open_store(dst)
    assert trees_equal(raw, tree) is None  # values too, read through the mappings
    assert isinstance(tree["train"]["audio"], np.memmap) and not tree["train"]["audio"].flags.writeable
    assert header["complete"] is True and header["schema"] == "mmsa" and header["source"] == src.name
    assert header["nonfinite"]["train"] == {"text": 0, "audio": 2, "vision": 0}
    assert header["nonfinite"]["valid"]["vision"] == 3
    assert header["nonfinite_rows"]["train"]["audio"] == [0, 1]  # only these samples are cleaned when read
    # plain numpy reads every array without this project, and no pickle is involved
    entry = header["arrays"]["train/audio"]
    assert np.array_equal(np.load(dst / entry["file"], allow_pickle=False), raw["train"]["audio"], equal_nan=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left
    verify_store(dst)


def test_loader_on_store_equals_in_memory_path(tmp_path, small_mmap, caplog):
    raw = _raw_with_nonfinite()
    npz = save_npz(raw, tmp_path / "u.npz")
    store = convert_mmsa(npz, tmp_path / "u.mmsa")
    with caplog.at_level("INFO", logger="features.mmsa_format"):
        mapped = load_mmsa(store)
    in_memory = load_mmsa(npz)
    assert mapped.nonfinite_counts == in_memory.nonfinite_counts  # the counts reach the user
    assert any("2 non-finite" in r.message and "audio" in r.message for r in caplog.records)
    assert isinstance(mapped.splits["train"].audio, np.memmap)
    for split in ("train", "valid"):
        a, b = MMSADataset(mapped.splits[split]), MMSADataset(in_memory.splits[split])
        idx = [3, 0, 1, 2]
        ba, bb = a.__getitems__(idx), b.__getitems__(idx)
        assert ba.keys() == bb.keys()
        for key in bb:
            assert ba[key] == bb[key] if key == "id" else torch.equal(ba[key], bb[key]), (split, key)
        assert torch.isfinite(ba["audio"]).all() and torch.isfinite(ba["vision"]).all()
        one = a[1]
        assert torch.equal(one["audio"], bb["audio"][2]) and one["audio"].dtype == torch.float32


def test_dataset_pickles_file_names_not_data(tmp_path, small_mmap):
    import pickle

    raw = make_mmsa_dict(n_train=64, aligned=False, dims=(64, 32, 32), seq_len=(8, 64, 64))
    store = save_store(raw, tmp_path / "u.mmsa")
    dataset = MMSADataset(load_mmsa(store).splits["train"])
    blob = pickle.dumps(dataset)
    assert len(blob) < raw["train"]["audio"].nbytes / 4  # not the features
    clone = pickle.loads(blob)
    assert isinstance(clone.mapped["audio"][0], np.memmap)
    assert torch.equal(clone.__getitems__([5, 2])["audio"], dataset.__getitems__([5, 2])["audio"])


# ------------------------------------------------------------------------------------------- streaming memory
def test_npz_to_store_streams_in_chunks(tmp_path, monkeypatch):
    raw = make_mmsa_dict(n_train=8, n_valid=2, n_test=2, aligned=False)
    raw["train"]["audio"] = np.random.default_rng(0).standard_normal((8, 512, 512)).astype(np.float32)  # 8 MiB
    raw["train"]["audio_lengths"][:] = 512
    npz = save_npz(raw, tmp_path / "big.npz")
    monkeypatch.setattr(mmsa_format, "CHUNK_BYTES", 2**18)
    tracemalloc.start()
    try:
        store = npz_to_store(npz, tmp_path / "big.mmsa")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 2**20, f"peak {peak / 2**20:.1f} MiB: the 8 MiB member was not streamed"
    assert np.array_equal(load_store(store)["train"]["audio"], raw["train"]["audio"])


# ---------------------------------------------------------------------------------- interrupted / bad output
_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import features.mmsa_format as mf
    from features.convert_mmsa import convert_mmsa

    real_add = mf.StoreWriter.add
    def slow_add(self, name, *args, **kwargs):
        entry = real_add(self, name, *args, **kwargs)
        if len(self.arrays) == 3:
            Path(sys.argv[3]).write_text("half")
            time.sleep(60)
        return entry
    mf.StoreWriter.add = slow_add
    convert_mmsa(sys.argv[1], sys.argv[2])
""")


@pytest.mark.parametrize("source", ["pkl", "npz"])
def test_killed_conversion_leaves_nothing_valid(tmp_path, source):
    raw = make_mmsa_dict(aligned=False)
    src = write_pickle(raw, tmp_path / "s.pkl") if source == "pkl" else save_npz(raw, tmp_path / "s.npz")
    dst, marker = tmp_path / "s.mmsa", tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(src), str(dst), str(marker)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the converter ended before it was killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert not dst.exists()
    with pytest.raises(MMSADataError, match="not found"):
        load_mmsa(dst)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".s.mmsa.")]
    assert len(leftovers) == 1 and not (leftovers[0] / "header.json").exists()  # hidden, headerless: never valid
    # a rerun converts from scratch
    assert trees_equal(raw, load_store(convert_mmsa(src, dst))) is None


def test_interrupted_in_process_removes_temporary(tmp_path, monkeypatch):
    src = write_pickle(make_mmsa_dict(), tmp_path / "s.pkl")
    calls = []
    real_add = mmsa_format.StoreWriter.add

    def failing_add(self, name, *args, **kwargs):
        calls.append(name)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_add(self, name, *args, **kwargs)

    monkeypatch.setattr(mmsa_format.StoreWriter, "add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        convert_mmsa(src, tmp_path / "s.mmsa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.pkl"]


def test_incomplete_store_is_refused(tmp_path):
    store = save_store(make_mmsa_dict(), tmp_path / "a.mmsa")
    (store / "header.json").unlink()
    with pytest.raises(MMSADataError, match="incomplete feature store"):
        load_mmsa(store)
    store2 = save_store(make_mmsa_dict(), tmp_path / "b.mmsa")
    header = json.loads((store2 / "header.json").read_text())
    header["complete"] = False
    (store2 / "header.json").write_text(json.dumps(header))
    with pytest.raises(MMSADataError, match="incomplete"):
        load_feature_file(store2)


def test_corrupted_array_is_detected(tmp_path):
    store = save_store(make_mmsa_dict(), tmp_path / "a.mmsa")
    entry = json.loads((store / "header.json").read_text())["arrays"]["train/audio"]
    with open(store / entry["file"], "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\x00\x01\x02")
    with pytest.raises(MMSADataError, match="'train/audio'.*differs"):
        verify_store(store)


def test_truncated_npz_member_writes_nothing(tmp_path):
    npz = save_npz(make_mmsa_dict(), tmp_path / "a.npz")
    data = npz.read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2] + data[-2000:])
    with pytest.raises(MMSADataError, match="cut.npz"):
        convert_mmsa(tmp_path / "cut.npz", tmp_path / "cut.mmsa")
    assert not (tmp_path / "cut.mmsa").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_invalid_source_gives_no_store(tmp_path):
    raw = make_mmsa_dict()
    raw["valid"]["regression_labels"][1] = 7.0
    src = save_npz(raw, tmp_path / "bad.npz")
    with pytest.raises(MMSADataError, match=r"bad.npz: split 'valid'/regression_labels.*outside"):
        convert_mmsa(src, tmp_path / "bad.mmsa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz"]


def test_overwrite_rules(tmp_path):
    src = write_pickle(make_mmsa_dict(), tmp_path / "a.pkl")
    dst = tmp_path / "a.mmsa"
    assert main([str(src), str(dst)]) == dst
    with pytest.raises(FileExistsError, match="--overwrite"):
        main([str(src), str(dst)])
    other = write_pickle(make_mmsa_dict(seed=3), tmp_path / "b.pkl")
    assert main([str(other), str(dst), "--overwrite"]) == dst
    assert trees_equal(load_feature_file(other), load_store(dst)) is None
    user_dir = tmp_path / "mine.mmsa"
    user_dir.mkdir()
    (user_dir / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a feature store"):
        convert_mmsa(src, user_dir, overwrite=True)
    assert (user_dir / "notes.txt").read_text() == "keep me"


# ----------------------------------------------------------------------------------- issue #20 items
def test_directory_as_feature_file_is_named_a_directory(tmp_path):
    folder = tmp_path / "mosei"
    folder.mkdir()
    write_pickle(make_mmsa_dict(), folder / "unaligned_50.pkl")
    with pytest.raises(MMSADataError, match=r"is a directory, not a feature file.*unaligned_50.pkl"):
        load_mmsa(folder)
    with pytest.raises(MMSADataError, match="is a directory"):
        check_feature_path(folder)


def test_boolean_labels_refused(tmp_path):
    raw = make_mmsa_dict()
    raw["test"]["regression_labels"] = raw["test"]["regression_labels"] > 0
    with pytest.raises(MMSADataError, match=r"b.pkl: split 'test'/regression_labels: boolean labels"):
        load_mmsa(write_pickle(raw, tmp_path / "b.pkl"))


def test_all_zero_text_mask_refused(tmp_path):
    raw = make_mmsa_dict()
    raw["valid"]["text_bert"][2, 1, :] = 0
    raw["valid"]["text_bert"][3, 1, :] = 0
    with pytest.raises(MMSADataError, match=r"split 'valid'/text_bert: 2 sample\(s\) have an all-zero attention "
                                            r"mask.*no valid text step"):
        load_mmsa(write_pickle(raw, tmp_path / "z.pkl"))


def test_synthetic_negative_count_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        synthetic_main(["--out", str(tmp_path / "x.pkl"), "--n-train", "-5"])
    assert err.value.code == 2
    assert "argument --n-train: must be >= 0, got -5" in capsys.readouterr().err
    assert not (tmp_path / "x.pkl").exists()


def test_synthetic_writes_a_store(tmp_path):
    out = synthetic_main(["--out", str(tmp_path / "g.mmsa"), "--unaligned", "--n-train", "8", "--n-valid", "2",
                          "--n-test", "2", "--dims", "8", "3", "3", "--seq-lens", "6", "9", "7"])
    data = load_mmsa(out)
    assert data.split_sizes == {"train": 8, "valid": 2, "test": 2} and data.aligned is False
