"""Issue 24, discovery and run outputs: ``cli.py --help`` is an overview printed without importing Lightning;
``fit --help`` names the project's systems and datamodules; string options with fixed values are ``Literal``;
``test``/``predict`` never replace the training run's ``config.yaml``; every command ends naming its outputs."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cli import cli_main
from lightning_modules.cli_support import asks_for_help, overview, saved_config_name
from tests.fakes import write_mmsa_pickle
from tests.test_cli import _tiny_tfn_config

REPO = Path(__file__).resolve().parents[1]


def test_help_alone_is_a_fast_overview_without_lightning() -> None:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "cli.py", "--help"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=False)
    elapsed = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert not any(m.split(".")[0] in ("lightning", "torch", "jsonargparse") for m in imported)
    for name in ("fit", "predict", "lightning_modules.fer.LitFER", "models.swin_two_branch.TwoBranchSwin",
                 "models.timm_classifier.TimmClassifier", "models.poster.POSTER", "datamodules.fer.FERDataModule",
                 "fit --help", "--print_config"):
        assert name in out.stdout, name
    assert all(len(line) <= 118 for line in out.stdout.splitlines())
    assert elapsed < 3.0, f"cli.py --help took {elapsed:.1f} s"
    assert overview() == out.stdout


def test_subcommand_help_lists_the_project_classes_and_literal_choices(monkeypatch) -> None:
    assert asks_for_help(["fit", "--help"]) and not asks_for_help(["fit", "--model.help", "LitFER"])
    monkeypatch.setattr("sys.argv", ["cli.py"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli_main(["fit", "--help"])
    text = " ".join(buf.getvalue().split())
    for cls in ("lightning_modules.fer.LitFER", "lightning_modules.msa.LitMSA", "lightning_modules.ldm.LitLDM",
                "datamodules.fer.FERDataModule", "datamodules.recording.RecordingDataModule"):
        assert cls in text, cls
    # the subclass lists name the project's systems and datamodules only: no Lightning base, no abstract project base
    for base in ("lightning.LightningModule", "lightning.LightningDataModule", "lightning_modules.base.",
                 "datamodules.base."):
        assert f"known subclasses: {base}" not in text and f", {base}" not in text, base
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli_main(["fit", "--data.help", "datamodules.fer.FERDataModule"])
    for option in ("--data.crop.face_detection {haar,none}", "--data.crop.no_face {keep,skip}",
                   "--data.descriptor.kind {sun,spectral_residual,lbp,energy,none}",
                   "--data.augment.policy {none,trivial,rand}", "--data.normalisation.colour {rgb,grey}"):
        assert option in buf.getvalue(), option


def test_face_detection_is_checked_for_python_callers_too() -> None:
    from datamodules.fer import FERDataModule

    with pytest.raises(ValueError, match="face_detection must be one of .'haar', 'none'., got 'mtcnn'"):
        FERDataModule(root="x", class_names=["a", "b"], crop={"face_detection": "mtcnn"})


def test_test_writes_its_own_config_and_every_command_names_its_outputs(tmp_path, caplog) -> None:
    assert saved_config_name("fit") == "config.yaml" and saved_config_name("test") == "config_test.yaml"
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=16, n_valid=8, n_test=8)
    cfg = _tiny_tfn_config(tmp_path, data, max_epochs=1)
    run = tmp_path / "run"
    with caplog.at_level("INFO"):
        cli_main(["fit", "--config", str(cfg), "--test_after_fit", "false"])
    assert any(r.getMessage().startswith(f"fit outputs: {run}") and "checkpoints" in r.getMessage()
               for r in caplog.records)
    trained = (run / "config.yaml").read_text()
    caplog.clear()
    with caplog.at_level("INFO"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                  "--seed_everything", "11"])
    assert (run / "config.yaml").read_text() == trained  # the training run's config is never replaced
    assert yaml.safe_load((run / "config_test.yaml").read_text())["seed_everything"] == 11
    assert any(r.getMessage().startswith("test outputs:") and "config_test.yaml" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("system", ["lightning_modules.fer.LitFER", "lightning_modules.msa.LitMSA"])
def test_model_help_of_a_system_lists_no_torch_nn_classes(monkeypatch, system) -> None:
    """``net`` is typed with a protocol (``NetModule``): LitFER's help was 792 lines and LitMSA's 786, mostly every
    imported ``torch.nn`` class."""
    monkeypatch.setattr("sys.argv", ["cli.py"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        cli_main(["fit", "--model.help", system])
    text = buf.getvalue()
    assert "--model.net NET" in text
    assert "torch.nn.modules" not in text and "torch.nn.Linear" not in " ".join(text.split())
    assert "torchvision" not in text and len(text.splitlines()) < 200, len(text.splitlines())
    if system.endswith("LitFER"):
        assert "models.timm_classifier.TimmClassifier" in " ".join(text.split())


def test_a_net_that_is_no_module_is_refused_naming_it(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.argv", ["cli.py"])
    with pytest.raises(SystemExit):
        cli_main(["fit", "--config", str(REPO / "configs/fer/baselines/resnet18_ckplus48.yaml"),
                  "--model.init_args.net", "collections.OrderedDict"], run=False)
    assert "collections.OrderedDict" in capsys.readouterr().err
