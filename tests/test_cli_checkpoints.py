"""``--ckpt_path`` cannot lie or run code (issue 14 §2, §3).

One tiny TFN run and one tiny LDM run (both through the CLI, so their checkpoints hold LightningCLI's
``_class_path``/``_instantiator`` hyper-parameters) are shared by the tests of this module; the LDM ones are
``slow`` (the default suite checks ``load_ldm``'s allow-list in tests/lightning_modules/test_ldm.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from cli import cli_main
from lightning_modules.checkpoint_io import CheckpointError, allowed_class_paths
from tests.fakes import _WriteMarker, write_mmsa_pickle
from tests.helpers.configs import training_configs
from tests.test_cli import _tiny_tfn_config

NET = {"num_classes": 3, "sample_size": 8, "latent_channels": 4, "block_out_channels": [8, 16],
       "layers_per_block": 1, "cross_attention_dim": 16, "attention_head_dim": 4, "norm_num_groups": 4}


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tfn_run(tmp_path_factory) -> tuple[Path, Path]:
    """(config, last.ckpt) of a one-epoch tiny TFN fit."""
    tmp = tmp_path_factory.mktemp("tfn")
    data = write_mmsa_pickle(tmp / "aligned_50.pkl", n_train=16, n_valid=8, n_test=8)
    cfg = _tiny_tfn_config(tmp, data, max_epochs=1)
    cli_main(["fit", "--config", str(cfg), "--test_after_fit", "false", "--trainer.logger", "false"])
    return cfg, tmp / "run" / "checkpoints" / "last.ckpt"


def _ldm_model(vae_path: str, **overrides) -> dict:
    init = {"net": {"class_path": "models.diffusion.ConditionalLatentUNet", "init_args": NET},
            "vae_path": vae_path, "class_names": ["a", "b", "c"], "consistency": "none", "sampler": "ddim",
            "num_inference_steps": 25, "guidance_scale": 2.0, **overrides}
    return {"class_path": "lightning_modules.ldm.LitLDM", "init_args": init}


@pytest.fixture(scope="module")
def ldm_run(tmp_path_factory) -> dict[str, Path]:
    """A one-batch LDM fit through the CLI on noise faces; returns paths of the pieces."""
    from models.diffusion import build_autoencoder_kl
    from tests.fakes_images import make_class_folders

    tmp = tmp_path_factory.mktemp("ldm")
    torch.manual_seed(0)
    vae = tmp / "vae"
    build_autoencoder_kl(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
                         sample_size=16).save_pretrained(vae)
    root = tmp / "faces"
    make_class_folders(root, classes=("a", "b", "c"), subjects=3, frames=2, size=16, kind="noise")
    cfg = {
        "seed_everything": 0,
        "model": _ldm_model(str(vae)),
        "data": {"class_path": "datamodules.fer.FERDataModule",
                 "init_args": {"root": str(root), "class_names": ["a", "b", "c"],
                               "crop": {"image_size": 16, "face_detection": "none"}, "descriptor": {"kind": "none"},
                               "batch_size": 4, "cache_dir": str(tmp / "cache"), "progress": "none",
                               "normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}},
        "trainer": {"max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1, "accelerator": "cpu",
                    "enable_progress_bar": False, "logger": False, "enable_model_summary": False},
        "checkpoint": {"dirpath": str(tmp / "run" / "checkpoints"), "monitor": "val/loss", "mode": "min"},
    }
    (tmp / "ldm.yaml").write_text(yaml.safe_dump(cfg))
    cli_main(["fit", "--config", str(tmp / "ldm.yaml"), "--test_after_fit", "false"])
    return {"tmp": tmp, "vae": vae, "ckpt": tmp / "run" / "checkpoints" / "last.ckpt"}


def _generate_config(ldm_run: dict[str, Path], name: str, **model_overrides) -> Path:
    tmp = ldm_run["tmp"]
    cfg = {
        "seed_everything": 0,
        "model": _ldm_model(str(ldm_run["vae"]), num_inference_steps=2, guidance_scale=1.5, **model_overrides),
        "data": {"class_path": "datamodules.generation.GenerationDataModule",
                 "init_args": {"class_counts": {"a": 2, "b": 1, "c": 1}, "output_root": str(tmp / name),
                               "total_multiplier": 1.0, "scarce_classes": [], "batch_size": 4}},
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False,
                    "callbacks": [{"class_path": "callbacks.augmented_writer.AugmentedImageWriter",
                                   "init_args": {"image_mode": "RGB", "progress": "none"}}]},
        "checkpoint": {"dirpath": str(tmp / f"{name}_run" / "checkpoints")},  # resolved config.yaml goes there
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _manifest(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()]


def _crafted(src: Path, dst: Path, edit) -> Path:
    ckpt = torch.load(src, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, dst)
    return dst


# ------------------------------------------------------------------------------------------------ §2 wrong model
@pytest.mark.parametrize("subcommand", ["test", "fit"])
def test_checkpoint_of_another_net_is_refused_naming_both(tfn_run, tmp_path, subcommand) -> None:
    cfg, ckpt = tfn_run
    other = yaml.safe_load(cfg.read_text())
    other["model"]["init_args"]["net"] = {"class_path": "models.lmf.LMF", "init_args": {}}
    other_cfg = tmp_path / "lmf.yaml"
    other_cfg.write_text(yaml.safe_dump(other))
    with pytest.raises(CheckpointError, match=r"models\.tfn\.TFN.*models\.lmf\.LMF") as e:
        cli_main([subcommand, "--config", str(other_cfg), "--ckpt_path", str(ckpt), "--trainer.logger", "false"])
    assert str(ckpt) in str(e.value)


@pytest.mark.slow
def test_checkpoint_of_another_system_is_refused(tfn_run, ldm_run) -> None:
    """An MSA checkpoint passed to generation is refused before any model is built (was ``KeyError: 'audio'``)."""
    _, msa_ckpt = tfn_run
    cfg = _generate_config(ldm_run, "aug_msa")
    with pytest.raises(CheckpointError, match=r"LitMSA.*LitLDM"):
        cli_main(["predict", "--config", str(cfg), "--ckpt_path", str(msa_ckpt)])
    assert not (ldm_run["tmp"] / "aug_msa" / "manifest.jsonl").exists()


def test_matching_checkpoint_runs_and_says_what_came_from_it(tfn_run, caplog) -> None:
    cfg, ckpt = tfn_run
    with caplog.at_level(logging.INFO):
        cli = cli_main(["test", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.logger", "false"])
    lines = [r.getMessage() for r in caplog.records if "model settings from the checkpoint" in r.getMessage()]
    assert len(lines) == 1 and "feature_dims" in lines[0] and str(ckpt) in lines[0], lines
    assert cli.trainer.callback_metrics["test/mae"] >= 0


def test_an_explicit_model_flag_the_checkpoint_contradicts_is_an_error_naming_it(tfn_run) -> None:
    """A model setting given on the command line never silently loses to the checkpoint's (issue #24): a different
    value is an error naming the flag; the same value, or one from a config file, is fine."""
    cfg, ckpt = tfn_run
    with pytest.raises(ValueError, match=r"--model.init_args.loss \(given explicitly\) differs .*drop the flag"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.logger", "false",
                  "--model.init_args.loss", "mse"])
    cli = cli_main(["test", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.logger", "false",
                    "--model.init_args.loss", "l1"])
    assert cli.model.hparams.loss == "l1" and cli.trainer.callback_metrics["test/mae"] >= 0


def test_truncated_checkpoint_is_an_error_naming_the_file(tfn_run, tmp_path) -> None:
    cfg, ckpt = tfn_run
    cut = tmp_path / "cut.ckpt"
    data = ckpt.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.ckpt.*truncated or corrupted"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(cut), "--trainer.logger", "false"])


# ------------------------------------------------------------------------------------------------ §3 security
PAYLOADS = {
    "net_class_path": lambda hp, cmd: hp.update(net={"class_path": "os.system", "init_args": {"command": cmd}}),
    "optimizer_class_path": lambda hp, cmd: hp.update(
        optimizer={"class_path": "subprocess.getoutput", "init_args": {"cmd": cmd}}),
    "system_class_path": lambda hp, cmd: hp.update(_class_path="os.system"),
    "instantiator": lambda hp, cmd: hp.update(_instantiator="os.system"),
    "callable_string": lambda hp, cmd: hp.update(optimizer="os.system"),
}


@pytest.mark.parametrize("where", sorted(PAYLOADS))
def test_crafted_checkpoint_cannot_run_code_through_the_cli(tfn_run, tmp_path, where) -> None:
    """Probe (a) of the issue: the TFN config + a checkpoint whose hyper-parameters name ``os.system``."""
    cfg, ckpt = tfn_run
    marker = tmp_path / "pwned"
    crafted = _crafted(ckpt, tmp_path / "crafted.ckpt",
                       lambda c: PAYLOADS[where](c["hyper_parameters"], f"touch '{marker}'"))
    with pytest.raises(CheckpointError, match=r"crafted\.ckpt.*(os\.system|subprocess\.getoutput)"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(crafted), "--trainer.logger", "false"])
    assert not marker.exists()


def test_pickled_code_in_a_checkpoint_is_refused_naming_the_file(tfn_run, tmp_path) -> None:
    cfg, ckpt = tfn_run
    marker = tmp_path / "pwned"
    c = torch.load(ckpt, weights_only=True)
    c["hyper_parameters"]["loss"] = _WriteMarker(marker, "system")
    torch.save(c, tmp_path / "pickled.ckpt")
    with pytest.raises(CheckpointError, match=r"pickled\.ckpt.*refused"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(tmp_path / "pickled.ckpt"),
                  "--trainer.logger", "false"])
    assert not marker.exists()


@pytest.mark.slow
def test_load_ldm_refuses_a_crafted_module_spec(ldm_run, tmp_path) -> None:
    """Probe (b): ``ldm_modules.net`` naming ``os.system``."""
    from lightning_modules.ldm import load_ldm

    marker = tmp_path / "pwned"
    crafted = _crafted(ldm_run["ckpt"], tmp_path / "crafted_ldm.ckpt", lambda c: c["ldm_modules"].update(
        net={"class_path": "os.system", "init_args": {"command": f"touch '{marker}'"}}))
    with pytest.raises(CheckpointError, match=r"crafted_ldm\.ckpt.*os\.system"):
        load_ldm(crafted)
    assert not marker.exists()
    model = load_ldm(ldm_run["ckpt"])  # the genuine file still loads
    assert model.trained_weights == str(ldm_run["ckpt"].resolve())


@pytest.mark.slow
def test_load_ldm_and_load_vae_refuse_other_systems(tfn_run, ldm_run) -> None:
    from lightning_modules.ldm import load_ldm, load_vae

    with pytest.raises(CheckpointError, match="LitMSA"):
        load_ldm(tfn_run[1])
    with pytest.raises(CheckpointError, match="LitLDM.*not a lightning_modules.ldm.LitVAE"):
        load_vae(ldm_run["ckpt"])


def test_allow_list_is_derived_not_listed() -> None:
    allowed = allowed_class_paths()
    for name in ("lightning_modules.msa.LitMSA", "lightning_modules.ldm.LitLDM", "models.hgcl.HGCL",
                 "models.tfn.TFN", "models.diffusion.ConditionalLatentUNet", "torch.optim.Adam",
                 "torch.optim.lr_scheduler.CosineAnnealingLR", "lightning.pytorch.cli.instantiate_module"):
        assert name in allowed, name
    for name in ("os.system", "subprocess.Popen", "builtins.eval", "torch.nn.Linear", "collections.UserDict"):
        assert name not in allowed, name


def _class_paths(node):
    if isinstance(node, dict):
        if isinstance(node.get("class_path"), str):
            yield node["class_path"]
        for value in node.values():
            yield from _class_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from _class_paths(value)


@pytest.mark.parametrize("config", training_configs(), ids=lambda c: c.id)
def test_every_class_a_shipped_config_puts_into_a_checkpoint_is_allowed(config) -> None:
    """A checkpoint stores the model section of its config as hyper-parameters; `test --ckpt_path` re-reads them
    through the allow-list, so every class path there (nets, optimizers, schedulers of our own) must pass it."""
    model = config.composed()["model"]
    paths = list(_class_paths(model))
    assert paths, config.id
    refused = [p for p in paths if p not in allowed_class_paths()]
    assert not refused, f"{config.id}: {refused}"


# ------------------------------------------------------------------------------------------------ §2 generation
@pytest.mark.slow
def test_generation_settings_given_by_the_user_win_and_are_recorded(ldm_run, caplog) -> None:
    cfg = _generate_config(ldm_run, "aug_ok")
    with caplog.at_level(logging.INFO):
        cli_main(["predict", "--config", str(cfg), "--ckpt_path", str(ldm_run["ckpt"])])
    recs = _manifest(ldm_run["tmp"] / "aug_ok")
    assert len(recs) == 4
    # the config's 2 steps / guidance 1.5 ran, not the checkpoint's 25 / 2.0
    assert {r["steps"] for r in recs} == {2} and {r["guidance"] for r in recs} == {1.5}
    sha = hashlib.sha256(ldm_run["ckpt"].read_bytes()).hexdigest()
    assert {r["checkpoint"] for r in recs} == {str(ldm_run["ckpt"].resolve())}
    assert {r["checkpoint_sha256"] for r in recs} == {sha}
    line = [r.getMessage() for r in caplog.records if "model settings from the checkpoint" in r.getMessage()]
    assert len(line) == 1 and "kept from the config/command line" in line[0]
    kept = line[0].split("kept from the config/command line:")[1]
    assert "num_inference_steps" in kept and "guidance_scale" in kept and "vae_path" in kept


@pytest.mark.slow
@pytest.mark.parametrize("override,error,match", [
    (["--model.init_args.guidance_scale", "-1.0"], ValueError, "guidance_scale"),
    (["--model.init_args.num_inference_steps", "0"], ValueError, "num_inference_steps"),
    (["--model.init_args.vae_path", "no/such/vae"], FileNotFoundError, "vae_path 'no/such/vae'"),
])
def test_bad_generation_settings_are_validated_despite_the_checkpoint(ldm_run, override, error, match) -> None:
    cfg = _generate_config(ldm_run, "aug_bad")
    with pytest.raises(error, match=match):
        cli_main(["predict", "--config", str(cfg), "--ckpt_path", str(ldm_run["ckpt"]), *override])
    assert not (ldm_run["tmp"] / "aug_bad" / "manifest.jsonl").exists()


@pytest.mark.slow
def test_generation_without_a_trained_checkpoint_is_refused(ldm_run) -> None:
    cfg = _generate_config(ldm_run, "aug_untrained")
    with pytest.raises(RuntimeError, match="untrained UNet"):
        cli_main(["predict", "--config", str(cfg)])
    out = ldm_run["tmp"] / "aug_untrained"
    assert not list(out.rglob("*.png"))


# ------------------------------------------------------------------------------------------------ issue 20: remote
@pytest.fixture()
def http_dir(tmp_path, monkeypatch):
    """(folder, base URL) of a local ``http.server`` on 127.0.0.1 serving ``folder``."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # Lightning's http loader caches there
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _pickled_code(ckpt_path: Path, dst: Path, marker: Path) -> Path:
    c = torch.load(ckpt_path, weights_only=True)
    c["hyper_parameters"]["loss"] = _WriteMarker(marker, "system")
    torch.save(c, dst)
    return dst


@pytest.mark.parametrize("scheme", ["http", "file"])
@pytest.mark.parametrize("subcommand", ["test", "fit"])
def test_remote_checkpoint_with_pickled_code_is_refused(tfn_run, http_dir, tmp_path, scheme, subcommand) -> None:
    """Lightning loads ``http…`` checkpoints with ``weights_only=False``; the CLI must not (issue 20 §1)."""
    cfg, ckpt = tfn_run
    root, base = http_dir
    marker = tmp_path / "pwned"
    _pickled_code(ckpt, root / "evil.ckpt", marker)
    url = f"{base}/evil.ckpt" if scheme == "http" else (root / "evil.ckpt").as_uri()
    with pytest.raises(CheckpointError, match="refused") as e:
        cli_main([subcommand, "--config", str(cfg), "--ckpt_path", url, "--trainer.logger", "false",
                  "--test_after_fit", "false", "--trainer.max_epochs", "2"])
    assert url in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("scheme", ["http", "file"])
def test_remote_checkpoint_naming_a_forbidden_class_is_refused(tfn_run, http_dir, scheme) -> None:
    cfg, ckpt = tfn_run
    root, base = http_dir
    _crafted(ckpt, root / "crafted.ckpt", lambda c: PAYLOADS["net_class_path"](c["hyper_parameters"], "true"))
    url = f"{base}/crafted.ckpt" if scheme == "http" else (root / "crafted.ckpt").as_uri()
    with pytest.raises(CheckpointError, match=r"os\.system") as e:
        cli_main(["test", "--config", str(cfg), "--ckpt_path", url, "--trainer.logger", "false"])
    assert url in str(e.value)


def test_good_checkpoint_over_http_is_read_once_and_tests(tfn_run, http_dir, monkeypatch) -> None:
    import common.checkpoint
    import lightning_modules.checkpoint_io as cio

    cfg, ckpt = tfn_run
    root, base = http_dir
    (root / "good.ckpt").write_bytes(ckpt.read_bytes())
    reads = []
    real = common.checkpoint._read_remote  # the one reader's download
    monkeypatch.setattr(common.checkpoint, "_read_remote", lambda src: reads.append(src) or real(src))
    cli = cli_main(["test", "--config", str(cfg), "--ckpt_path", f"{base}/good.ckpt", "--trainer.logger", "false"])
    assert cli.trainer.callback_metrics["test/mae"] >= 0
    assert reads == [f"{base}/good.ckpt"]  # checked by the CLI, then handed to the trainer: one download
    assert isinstance(cli.trainer.strategy.checkpoint_io, cio.SafeCheckpointIO)


def test_missing_remote_checkpoint_and_a_directory_are_named(tfn_run, http_dir, tmp_path) -> None:
    cfg, _ = tfn_run
    _, base = http_dir
    with pytest.raises(FileNotFoundError, match=f"{base}/nothing.ckpt.*does not exist"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", f"{base}/nothing.ckpt", "--trainer.logger", "false"])
    folder = tmp_path / "a_folder.ckpt"
    folder.mkdir()
    with pytest.raises(CheckpointError, match=r"a_folder\.ckpt' is a directory, not a checkpoint file"):
        cli_main(["test", "--config", str(cfg), "--ckpt_path", str(folder), "--trainer.logger", "false"])


def test_stored_pretrained_file_is_not_opened(tfn_run, tmp_path, monkeypatch, caplog) -> None:
    """A path in a checkpoint's hyper-parameters is data (issue 20 §4): it is dropped, not followed."""
    from lightning_modules.checkpoint_io import drop_weight_files

    hp = {"net": {"class_path": "models.swin_two_branch.TwoBranchSwin",
                  "init_args": {"pretrained_file": "/nonexistent/x.pth", "depths": [1]}}, "lr": 1.0}
    out, dropped = drop_weight_files(hp, {})
    assert out["net"]["init_args"]["pretrained_file"] is None and dropped == ["net.init_args.pretrained_file"]
    assert hp["net"]["init_args"]["pretrained_file"] == "/nonexistent/x.pth"  # the checkpoint's dict is untouched
    hub = drop_weight_files({"net": {"init_args": {"pretrained": "hub"}}}, {})
    assert hub == ({"net": {"init_args": {"pretrained": None}}}, ["net.init_args.pretrained"])  # no download either
    mine = {"net": {"init_args": {"pretrained_file": "mine.pth"}}}
    assert drop_weight_files(hp, mine)[0]["net"]["init_args"]["pretrained_file"] == "mine.pth"



@pytest.fixture(scope="module")
def swin_args(tmp_path_factory) -> list[str]:
    """CLI arguments of the two-branch Swin face config on tiny fake faces (one process, CPU)."""
    from tests.helpers.configs import tiny_overrides

    tmp = tmp_path_factory.mktemp("swin")
    config = next(c for c in training_configs() if c.id == "fer/swin2b_ckplus48.yaml")
    override = tiny_overrides(config, tmp, devices=1)
    return [a for f in [*config.files, override] for a in ("--config", str(f))] + ["--trainer.logger", "false"]


def test_stored_pretrained_file_is_not_opened_by_the_cli(swin_args, tmp_path, caplog) -> None:
    """A TwoBranchSwin checkpoint whose net names ``pretrained_file``: the run builds the net without opening it
    (was: the file named by the checkpoint was loaded, here a missing one failed the run)."""
    cli = cli_main(swin_args, run=False)
    hp = json.loads(json.dumps(dict(cli.model.hparams), default=list))
    assert hp["net"]["class_path"] == "models.swin_two_branch.TwoBranchSwin"
    hp["net"]["init_args"]["pretrained_file"] = "/nonexistent/x.pth"
    hp["_class_path"] = "lightning_modules.fer.LitFER"
    ckpt = tmp_path / "swin.ckpt"
    import lightning

    torch.save({"state_dict": cli.model.state_dict(), "hyper_parameters": hp,
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    with caplog.at_level(logging.INFO):
        cli = cli_main(["test", *swin_args, "--ckpt_path", str(ckpt), "--trainer.limit_test_batches", "1"])
    assert cli.model.hparams["net"]["init_args"]["pretrained_file"] is None
    assert any("not opening the weight files" in r.getMessage() and "net.init_args.pretrained_file" in
               r.getMessage() for r in caplog.records)


def test_tta_given_by_the_user_wins_over_the_checkpoints(swin_args, tmp_path, caplog) -> None:
    """``tta`` says how to evaluate, not what the weights are: ``test --ckpt_path ... --model.init_args.tta flip``
    on a checkpoint trained (and stored) with ``tta: none`` evaluates with the flip, instead of the explicit flag
    being refused as a contradiction of the checkpoint."""
    cli = cli_main(swin_args, run=False)
    hp = json.loads(json.dumps(dict(cli.model.hparams), default=list))
    assert hp["tta"] == "none"
    hp["_class_path"] = "lightning_modules.fer.LitFER"
    ckpt = tmp_path / "swin.ckpt"
    import lightning

    torch.save({"state_dict": cli.model.state_dict(), "hyper_parameters": hp,
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    with caplog.at_level(logging.INFO):
        cli = cli_main(["test", *swin_args, "--ckpt_path", str(ckpt), "--model.init_args.tta", "flip",
                        "--trainer.limit_test_batches", "1"])
    assert cli.model.hparams["tta"] == "flip"
    assert "test/acc" in cli.trainer.callback_metrics
    assert any("kept from the config/command line: tta" in r.getMessage() for r in caplog.records)
