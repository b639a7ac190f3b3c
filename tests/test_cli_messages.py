"""What a CLI user sees: the project's INFO counts (rank 0 only), split warnings, constructor errors as the last
line."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from lightning.pytorch.utilities import rank_zero_only

import cli
from common.splits import warn_split_content
from features.mmsa_format import SplitContentWarning, load_mmsa
from lightning_modules import cli_errors
from lightning_modules.checkpoint_io import CheckpointError
from tests.fakes import make_mmsa_dict, write_pickle


@pytest.fixture()
def project_logs():
    cli_errors.show_project_logs()
    yield
    for name in cli_errors.PROJECT_PACKAGES:
        logger = logging.getLogger(name)
        logger.removeHandler(cli_errors._PROJECT_HANDLER)
        logger.setLevel(logging.NOTSET)


def _nan_file(tmp_path: Path) -> Path:
    data = make_mmsa_dict(n_train=8, n_valid=4, n_test=4)
    data["train"]["audio"][0, 0, :3] = np.nan
    data["test"]["vision"][1, 2, 0] = np.inf
    return write_pickle(data, tmp_path / "aligned_50.pkl")


def test_info_counts_reach_stderr_on_rank_zero(tmp_path: Path, project_logs, capsys) -> None:
    load_mmsa(_nan_file(tmp_path))
    err = capsys.readouterr().err
    assert "split 'train'/audio: cleaned 3 non-finite values" in err
    assert "split 'test'/vision: cleaned 1 non-finite values" in err
    assert "split sizes {'train': 8, 'valid': 4, 'test': 4}" in err


def test_info_is_hidden_on_other_ranks_but_warnings_are_not(tmp_path: Path, project_logs, capsys,
                                                            monkeypatch) -> None:
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    load_mmsa(_nan_file(tmp_path))
    logging.getLogger("datamodules.x").warning("a warning from rank 1")
    err = capsys.readouterr().err
    assert "cleaned" not in err and "a warning from rank 1" in err


def test_without_the_handler_python_shows_no_info(tmp_path: Path, capsys) -> None:
    # the reason for show_project_logs: a logger without handlers shows WARNING and above only
    load_mmsa(_nan_file(tmp_path))
    assert "cleaned" not in capsys.readouterr().err


def test_empty_validation_split_warns(tmp_path: Path) -> None:
    path = write_pickle(make_mmsa_dict(n_train=8, n_valid=0, n_test=4), tmp_path / "aligned_50.pkl")
    with pytest.warns(SplitContentWarning, match="valid split is empty"):
        load_mmsa(path)


def test_empty_test_split_warns(tmp_path: Path) -> None:
    path = write_pickle(make_mmsa_dict(n_train=8, n_valid=4, n_test=0), tmp_path / "aligned_50.pkl")
    with pytest.warns(SplitContentWarning, match="test split is empty"):
        load_mmsa(path)


def test_identical_ids_in_train_and_test_warn(tmp_path: Path) -> None:
    data = make_mmsa_dict(n_train=8, n_valid=4, n_test=4)
    test_ids = data["test"]["id"].astype(data["train"]["id"].dtype)
    test_ids[:2] = data["train"]["id"][3:5]
    data["test"]["id"] = test_ids
    path = write_pickle(data, tmp_path / "aligned_50.pkl")
    with pytest.warns(SplitContentWarning, match=r"2 sample id\(s\) appear in both the train and the test split"):
        load_mmsa(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitContentWarning)
        load_mmsa(write_pickle(make_mmsa_dict(n_train=8, n_valid=4, n_test=4), tmp_path / "clean.pkl"))


def test_face_split_names() -> None:
    with pytest.warns(SplitContentWarning, match="the val split is empty"):
        warn_split_content("faces/", {"train": 3, "val": 0, "test": 1}, {"train": ["a"], "test": ["b"]}, val="val")


def _bad_batch_config(tmp_path: Path) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"class_path": "lightning_modules.msa.LitMSA",
                  "init_args": {"net": {"class_path": "models.tfn.TFN"}}},
        "data": {"class_path": "datamodules.mosei.MOSEIDataModule",
                 "init_args": {"path": str(tmp_path / "x.pkl"), "batch_size": 0}},
        "trainer": {"logger": False},
    }))
    return path


def test_constructor_error_is_the_last_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["cli.py"])
    cfg = _bad_batch_config(tmp_path)
    with pytest.raises(Exception) as info:
        cli.cli_main(["fit", "--config", str(cfg)])
    root = cli_errors.innermost_project_error(info.value)
    assert isinstance(root, ValueError) and "MMSADataModule: batch sizes must be >= 1" in str(root)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "--config", str(cfg)])
    assert exit_info.value.code == 1
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: ValueError: MMSADataModule: batch sizes must be >= 1"), lines[-3:]


# ------------------------------------------------------------------------------------------------ issue 20 §2, §6
REPO = Path(__file__).resolve().parents[1]


def _last_line(capsys) -> str:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()][-1]


@pytest.mark.parametrize("override,last", [
    (["--model", "lightning_modules.msa.LitMSAX"],
     ("error: model.class_path 'lightning_modules.msa.LitMSAX' does not import: module 'lightning_modules.msa' has no "
     "attribute 'LitMSAX' (expected a subclass of EpochMeanLogging)")),
    (["--data", "datamodules.fer.FERDataModuleX"],
     ("error: data.class_path 'datamodules.fer.FERDataModuleX' does not import: module 'datamodules.fer' has no "
     "attribute 'FERDataModuleX' (expected a subclass of AffectDataModule)")),
    (["--data", "datamodules.fer.FERDataModule"],  # the face datamodule for an MSA config
     ("error: data.class_path 'datamodules.fer.FERDataModule': the following arguments are required: root, "
     "class_names")),
    (["--data", "models.tfn.TFN"], "error: data.class_path 'models.tfn.TFN' is not a subclass of AffectDataModule"),
    (["--model.init_args.net", "models.tfn.TFNX"],
     "error: model.init_args.net 'models.tfn.TFNX' does not import: module 'models.tfn' has no attribute 'TFNX'"),
    (["--model.init_args.loss", "l3"],
     "error: model.init_args.loss: got 'l3', expected one of 'l1', 'mse', 'smooth_l1'"),
])
def test_bad_class_path_is_named_on_the_last_line(override, last, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["cli.py"])
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", "--config", str(REPO / "configs" / "tfn_demo.yaml"), *override])
    assert info.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == last, lines[-12:]
    assert any(ln.startswith('error: Parser key "') for ln in lines)  # jsonargparse's full message stays above


def _raise_chain(path: str) -> None:
    def inner() -> None:
        raise KeyError(("posix", "system"))  # a bare error raised in project code (this file)

    try:
        inner()
    except KeyError as e:
        raise CheckpointError(f"Checkpoint {path!r} was refused: it names posix.system") from e


def test_reported_error_is_the_outer_one_naming_the_file() -> None:
    with pytest.raises(CheckpointError) as info:
        _raise_chain("runs/x/best.ckpt")
    assert isinstance(cli_errors.innermost_project_error(info.value), KeyError)  # what the last line used to show
    assert cli_errors.reported_error(info.value) is info.value
    try:
        try:
            _raise_chain("runs/x/best.ckpt")
        except CheckpointError as e:
            raise RuntimeError("wrapped by a library") from e
    except RuntimeError as outer:
        assert cli_errors.reported_error(outer) is outer.__cause__


def test_full_disk_while_saving_ends_with_the_checkpoint_path(tmp_path: Path, capsys, monkeypatch) -> None:
    """Disk full while a checkpoint is written: the last line names the file (was ``OSError: [Errno 28] No space
    left on device``), and no ``*.ckpt`` is left."""
    import errno

    import torch

    from tests.fakes import write_mmsa_pickle
    from tests.test_cli import _tiny_tfn_config

    monkeypatch.setattr("sys.argv", ["cli.py"])
    cfg = _tiny_tfn_config(tmp_path, write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=8, n_valid=4, n_test=4),
                           max_epochs=1)

    def full(obj, f, *args, **kwargs) -> None:
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as info:
        cli.main(["fit", "--config", str(cfg), "--trainer.logger", "false"])
    assert info.value.code == 1
    last = _last_line(capsys)
    assert last.startswith("error: OSError: [Errno 28] Writing checkpoint '"), last
    assert str(tmp_path / "run" / "checkpoints") in last and "No space left on device" in last
    assert not list((tmp_path / "run").rglob("*.ckpt*"))
