"""scripts/run_fer_transfer.py: the arms it launches, the rows it records, the report it writes (no training)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import experiments as ex
from scripts import run_fer_transfer as tr

REPO = Path(__file__).resolve().parents[1]


def _args(tmp_path: Path, **kw):
    import argparse

    base = {"data_root": str(tmp_path / "data"), "datasets": ["jaffe", "ckplus48"], "inits": ["scratch", "fer2013"],
                "seeds": [1, 2], "epochs": None, "swin2b_source": None}
    return argparse.Namespace(**{**base, **kw})


def test_runs_cover_datasets_arms_and_seeds_with_their_configs(tmp_path: Path) -> None:
    runs = tr.runs(_args(tmp_path), tmp_path / "out")
    assert len(runs) == 8 and {r.name for r in runs} == {"scratch", "fer2013"}
    by = {(r.labels["dataset"], r.name, r.seed): r for r in runs}
    fer = by["jaffe", "fer2013", 1]
    assert [c.name for c in fer.configs] == ["resnet18s_jaffe.yaml", "resnet18s_jaffe_from_fer2013.yaml"]
    assert str(tmp_path / "data" / "jaffe") in fer.args and "--trainer.max_epochs" not in fer.args
    lr = tr.runs(_args(tmp_path, inits=["fer2013_lr1e-3"], seeds=[1], datasets=["ckplus48"], epochs=2),
                 tmp_path / "out")[0]
    assert lr.args[-2:] == ("--model.init_args.optimizer.init_args.lr", "1e-3") and "2" in lr.args
    for r in runs:  # every config the script names exists and loads the shipped model where it says so
        for c in r.configs:
            assert c.is_file(), c
    text = (REPO / "configs/fer/transfer/resnet18s_ckplus48_from_fer2013.yaml").read_text()
    assert "pretrained: fer2013_resnet18s" in text


def test_swin2b_arms_compose_the_conv_stem_delta_and_load_the_given_source(tmp_path: Path) -> None:
    src = tmp_path / "fer" / "checkpoints" / "best-023.ckpt"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"not read here")
    arms = ["swin2b_scratch", "swin2b_fer2013", "swin2b_fer2013_lr5e-4"]
    runs = tr.runs(_args(tmp_path, inits=arms, seeds=[1], swin2b_source=src), tmp_path / "out")
    by = {(r.labels["dataset"], r.name): r for r in runs}
    assert [c.relative_to(REPO).as_posix() for c in by["jaffe", "swin2b_scratch"].configs] == [
        "configs/fer/swin2b_jaffe.yaml", "configs/fer/transfer/swin2b_jaffe.yaml"]
    pretrained = "--model.init_args.net.init_args.pretrained"
    for (ds, arm), r in by.items():
        run_dir = tmp_path / "out" / "runs" / ds / arm / "seed1"
        assert str(run_dir / "confusion_matrices") in r.args  # nothing written under the config's own run folder
        if arm == "swin2b_scratch":
            assert pretrained not in r.args and "--model.init_args.optimizer.init_args.lr" not in r.args
        else:
            assert r.args[r.args.index(pretrained) + 1] == str(src)
    assert by["ckplus48", "swin2b_fer2013"].args[-2:] == ("--model.init_args.optimizer.init_args.lr", "1e-4")
    # a run folder resolves to its one best checkpoint; anything else is refused naming the path
    assert tr.swin2b_source(str(tmp_path / "fer")) == src
    (src.parent / "best-030.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="exactly one best-"):
        tr.swin2b_source(str(tmp_path / "fer"))
    with pytest.raises(ValueError, match="no such checkpoint file or run folder"):
        tr.swin2b_source(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="--swin2b-source"):
        tr.runs(_args(tmp_path, inits=["swin2b_fer2013"], seeds=[1]), tmp_path / "out")


def test_swin2b_source_is_required_and_checked_before_any_run(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    for ds in ("jaffe", "ckplus48"):
        (data / ds).mkdir(parents=True)
    out = tmp_path / "out"
    for extra, said in (([], "need --swin2b-source"), (["--swin2b-source", str(tmp_path / "nope")], "no such")):
        with pytest.raises(SystemExit):
            tr.main(["--out", str(out), "--data-root", str(data), "--inits", "swin2b_fer2013", *extra])
        assert said in capsys.readouterr().err
    assert not (out / "transfer.csv").exists()


def test_rows_and_report_from_records_and_resumed_strings(tmp_path: Path) -> None:
    run = tr.runs(_args(tmp_path, seeds=[1], datasets=["jaffe"]), tmp_path)[0]
    record = {"test": {"test/acc": 0.5, "test/f1_macro": 0.4, "test/mean_class_acc": 0.45, "test/recall_happy": 1.0},
              "fit_seconds": 12.0, "epochs": 3, "confusion": [[2, 1], [0, 1]], "class_names": ["happy", "sad"]}
    row = {**tr.to_row(run, record), "status": "ok", "error": ""}
    assert row["accuracy"] == 0.5 and row["n_test"] == 4 and row["recall_happy"] == 1.0
    resumed = {k: str(v) for k, v in {**row, "seed": 2}.items()}  # as ex.read_rows gives them back
    tr.write_report([row, resumed], tmp_path, "note")
    md = (tmp_path / "transfer.md").read_text()
    assert "| jaffe | scratch | 1 | 0.5000 |" in md and "| jaffe | scratch | 2 | 0.5000 |" in md
    assert "0.500 ± 0.000" in md and (tmp_path / "transfer_summary.csv").is_file()
    failed = {**run.identity("init"), "status": "failed", "error": "boom"}
    tr.write_report([row, failed], tmp_path, "note")  # a failed run stays failed when read back (--resume)
    back = ex.read_rows(tmp_path / "transfer.csv")
    assert [ex.ok(r) for r in back] == [True, False] and back[1]["error"] == "boom"
    assert "recall_happy" in back[0]
    try:
        tr.to_row(run, {"test": {}})
    except ex.RunFailed as e:
        assert "no test metrics" in str(e)
    else:
        raise AssertionError("a record without test metrics must fail the run")
