import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from callbacks.diffusion_samples import DiffusionSampleLogger
from lightning_modules.ldm import LitLDM, LitVAE, load_ldm, load_vae
from models.diffusion import ConditionalLatentUNet, LatentAutoencoder, build_autoencoder_kl
from models.frozen_classifier import FrozenImageEncoder


class TinyFaces(Dataset):
    def __init__(self, n: int = 8, size: int = 16, num_classes: int = 3) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.labels = torch.arange(n) % num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i], "origin": "real", "path": f"img{i}.png"}


class TinyFaceData(LightningDataModule):
    def __init__(self, size: int = 16) -> None:
        super().__init__()
        self.size = size
        self.class_names = ["a", "b", "c"]
        self.num_classes = 3

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TinyFaces(size=self.size), batch_size=4)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TinyFaces(size=self.size), batch_size=4)


def tiny_net() -> ConditionalLatentUNet:
    return ConditionalLatentUNet(3, sample_size=8, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                                 cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4)


@pytest.fixture
def vae_dir(tmp_path):
    torch.manual_seed(0)
    vae = build_autoencoder_kl(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / "vae")
    return str(tmp_path / "vae")






def tiny_vae(**kw) -> LitVAE:
    return LitVAE(LatentAutoencoder(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16),
                  **kw)


def trainer(tmp_path, **kw) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, **kw)


def test_vae_fast_dev_run_and_export(tmp_path):
    model = tiny_vae()
    trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=TinyFaceData())
    assert model.vae.config.scaling_factor != 1.0  # set from the latent statistics of the epoch
    out = model.export_pretrained(tmp_path / "exported")
    assert load_vae(out).config.scaling_factor == pytest.approx(model.vae.config.scaling_factor)


def test_vae_checkpoint_loads_in_the_ldm_and_round_trips(tmp_path):
    """The checkpoint a LitVAE fit writes: load_vae rebuilds the AutoencoderKL from it alone (weights and the trained
    scaling factor), LitLDM takes it as vae_path, and LitVAE.load_from_checkpoint(vae=...) restores the system."""
    torch.manual_seed(0)
    model = tiny_vae(kl_weight=1e-3)
    t = trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False)
    t.fit(model, datamodule=TinyFaceData())
    ckpt = tmp_path / "vae.ckpt"
    t.save_checkpoint(ckpt)
    stored = torch.load(ckpt, weights_only=True)
    assert "vae" not in stored["hyper_parameters"]  # the injected module is not a hyper-parameter
    assert all(k.startswith("vae.autoencoder.") for k in stored["state_dict"])
    vae = load_vae(ckpt)
    assert vae.config.scaling_factor == pytest.approx(model.vae.config.scaling_factor) != 1.0
    for k, v in model.vae.autoencoder.state_dict().items():
        torch.testing.assert_close(vae.state_dict()[k], v)
    ldm = LitLDM(tiny_net(), vae_path=str(ckpt), consistency="none")
    assert ldm.vae.config.scaling_factor == pytest.approx(model.vae.config.scaling_factor)
    torch.testing.assert_close(ldm.vae.encoder.conv_in.weight, model.vae.autoencoder.encoder.conv_in.weight)
    again = LitVAE.load_from_checkpoint(ckpt, vae=LatentAutoencoder(block_out_channels=(8, 16), latent_channels=4,
                                                                    norm_num_groups=4, sample_size=16),
                                        weights_only=True)
    assert again.hparams.kl_weight == 1e-3
    assert again.vae.config.scaling_factor == pytest.approx(model.vae.config.scaling_factor)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
    # a checkpoint written before LatentAutoencoder (weights under vae. directly) still loads, in both places
    old = dict(stored, state_dict={"vae." + k[len("vae.autoencoder."):]: v for k, v in stored["state_dict"].items()})
    torch.save(old, tmp_path / "old.ckpt")
    torch.testing.assert_close(load_vae(tmp_path / "old.ckpt").encoder.conv_in.weight,
                               model.vae.autoencoder.encoder.conv_in.weight)
    old_again = LitVAE.load_from_checkpoint(tmp_path / "old.ckpt", vae=LatentAutoencoder(
        block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16), weights_only=True)
    torch.testing.assert_close(old_again.vae.autoencoder.encoder.conv_in.weight,
                               model.vae.autoencoder.encoder.conv_in.weight)


def test_vae_settings_are_checked(tmp_path, vae_dir):
    """The data's image size must be the vae's sample_size; a pretrained_dir must have the architecture the
    arguments describe (its weights are used); a wrong module type is refused. Each error names both values."""
    with pytest.raises(ValueError, match="image_size is 32, the vae's sample_size is 16"):
        tiny_vae(image_size=32)
    assert tiny_vae(image_size=16).hparams.image_size == 16
    with pytest.raises(ValueError, match="in_channels is 3"):
        tiny_vae(image_mean=(0.5,), image_std=(0.5,))
    with pytest.raises(TypeError, match="LatentAutoencoder, got AutoencoderKL"):
        LitVAE(build_autoencoder_kl(block_out_channels=(8, 16), norm_num_groups=4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="norm_num_groups=4 must divide"):
        LatentAutoencoder(block_out_channels=(8, 18), norm_num_groups=4)
    with pytest.raises(ValueError, match=r"has block_out_channels=\(8, 16\), the arguments say "
                                         r"block_out_channels=\(32, 64, 64\)"):
        LatentAutoencoder(norm_num_groups=4, pretrained_dir=vae_dir)
    started = LatentAutoencoder(block_out_channels=(8, 16), norm_num_groups=4, sample_size=24,
                                pretrained_dir=vae_dir)
    torch.testing.assert_close(started.autoencoder.encoder.conv_in.weight,
                               load_vae(vae_dir).encoder.conv_in.weight)
    assert started.config.sample_size == 24
    with pytest.raises(FileNotFoundError, match="no AutoencoderKL"):
        LatentAutoencoder(pretrained_dir=str(tmp_path))


def test_vae_config_takes_the_image_size_from_the_data(tmp_path, monkeypatch):
    """configs/ldm/vae_ckplus48.yaml: the autoencoder is the injected module of the config; the data's image size
    reaches LitVAE through cli.py's link, and another size than the module's is an error naming both."""
    cli = pytest.importorskip("cli")
    monkeypatch.chdir(tmp_path)
    _fake_ldm_inputs(tmp_path)
    c = cli.cli_main(["--config", str(CONFIGS / "vae_ckplus48.yaml"), "--trainer.logger", "false"], run=False)
    assert isinstance(c.model.vae, LatentAutoencoder) and c.model.vae.sample_size == 48
    assert c.model.hparams.image_size == 48 and "vae" not in c.model.hparams
    with pytest.raises(ValueError, match="image_size is 32, the vae's sample_size is 48"):
        cli.cli_main(["--config", str(CONFIGS / "vae_ckplus48.yaml"), "--trainer.logger", "false",
                      "--data.init_args.crop.image_size", "32"], run=False)


def test_ldm_fast_dev_run_with_consistency_loss_updates_only_the_unet(tmp_path, vae_dir):
    torch.manual_seed(0)
    enc = FrozenImageEncoder("resnet10t", num_classes=3)
    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="triplet", consistency_weight=1.0,
                   consistency_max_timestep=1000, consistency_encoder=enc, num_train_timesteps=100,
                   num_inference_steps=2)
    vae_before = model.vae.encoder.conv_in.weight.clone()
    enc_before = enc.model.conv1[0].weight.clone() if hasattr(enc.model.conv1, "__getitem__") else None
    unet_before = model.net.unet.conv_in.weight.clone()
    losses = model._diffusion_losses(next(iter(TinyFaceData().train_dataloader())))
    assert losses["con"].requires_grad and losses["con"] >= 0
    trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=TinyFaceData())
    assert not torch.equal(model.net.unet.conv_in.weight, unet_before)
    torch.testing.assert_close(model.vae.encoder.conv_in.weight, vae_before)
    if enc_before is not None:
        torch.testing.assert_close(enc.model.conv1[0].weight, enc_before)


def test_ldm_checkpoint_round_trip_and_predict(tmp_path, vae_dir):
    torch.manual_seed(0)
    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="none", class_names=["a", "b", "c"],
                   num_train_timesteps=100, num_inference_steps=3, guidance_scale=1.5)
    samples = DiffusionSampleLogger(dirpath=str(tmp_path / "samples"), samples_per_class=2, num_inference_steps=2)
    t = trainer(tmp_path, max_steps=1, limit_val_batches=1, val_check_interval=1, enable_checkpointing=False,
                callbacks=[samples])
    t.fit(model, datamodule=TinyFaceData())
    from PIL import Image

    with Image.open(samples.last_path) as grid:  # one row per class, one column per sample, upscaled, labelled
        scale = 96 // 16
        assert grid.height == 3 * 16 * scale and grid.width > 2 * 16 * scale
        margin = grid.width - 2 * 16 * scale
        label_strip = np.asarray(grid.convert("L"))[:, :margin]
        assert (label_strip < 128).any() and (label_strip > 250).any()  # dark text on white: the class names
    ckpt = tmp_path / "ldm.ckpt"
    t.save_checkpoint(ckpt)
    import shutil

    shutil.rmtree(vae_dir)  # the checkpoint must not need the original VAE directory
    loaded = load_ldm(ckpt)
    assert loaded.class_names == ["a", "b", "c"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    batch = {"label": torch.tensor([0, 2]), "seed": torch.tensor([5, 6]), "job_index": torch.tensor([0, 1])}
    out_a = model.eval().predict_step(batch, 0)
    out_b = loaded.eval().predict_step(batch, 0)
    assert out_a["images"].shape == (2, 3, 16, 16)
    assert 0 <= out_a["images"].min() and out_a["images"].max() <= 1
    torch.testing.assert_close(out_a["images"], out_b["images"])
    assert out_a["steps"] == 3 and out_a["guidance"] == 1.5


def test_ldm_bad_input_errors(tmp_path, vae_dir):
    with pytest.raises(FileNotFoundError, match="VAE checkpoint not found"):
        LitLDM(tiny_net(), vae_path=str(tmp_path / "nope.ckpt"), consistency="none")
    with pytest.raises(ValueError, match="guidance_scale"):
        LitLDM(tiny_net(), vae_path=vae_dir, consistency="none", guidance_scale=100.0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        LitLDM(tiny_net(), vae_path=vae_dir, consistency="none", num_train_timesteps=100, num_inference_steps=500)
    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="none", class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="unknown class 'zzz'"):
        model.class_index("zzz")
    with pytest.raises(ValueError, match="labels must be in"):
        model.generate(torch.tensor([3]), [0], num_inference_steps=1)
    with pytest.raises(FileNotFoundError, match="LDM checkpoint not found"):
        load_ldm(tmp_path / "missing.ckpt")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        FrozenImageEncoder("resnet10t", num_classes=3, checkpoint_path=str(tmp_path / "clf.ckpt"))


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "ldm"
CK_CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]


@pytest.mark.parametrize("name,subcommand", [("vae_ckplus48.yaml", "fit"), ("ldm_tiny.yaml", "fit"),
                                             ("ldm_ckplus48.yaml", "fit"), ("generate_ckplus48.yaml", "predict")])
def test_ldm_configs_instantiate(tmp_path, monkeypatch, name, subcommand):
    cli = pytest.importorskip("cli")
    monkeypatch.chdir(tmp_path)
    _fake_ldm_inputs(tmp_path)
    c = cli.cli_main(["--config", str(CONFIGS / name), "--trainer.logger", "false"], run=False)
    assert type(c.model).__name__ in ("LitVAE", "LitLDM")
    if name == "generate_ckplus48.yaml":
        from callbacks.augmented_writer import AugmentedImageWriter

        writers = [cb for cb in c.trainer.callbacks if isinstance(cb, AugmentedImageWriter)]
        assert writers and writers[0].quality is not None
        assert type(c.datamodule.source).__name__ == "FERDataModule", type(c.datamodule.source)
        assert c.datamodule.data_root == "data/ckplus48", dict(c.datamodule.source.hparams)


def test_generation_source_config_takes_command_line_overrides(tmp_path, monkeypatch):
    """``--data.init_args.source_config.init_args.X`` changes that one setting of the real-data datamodule (a
    dict-typed ``source_config`` used to drop such flags silently, so the augmentation ablation read the config's
    relative ``data/ckplus48``); the nested datamodule keeps its own hyper-parameters, not the outer module's; a
    misspelt setting is an error."""
    cli = pytest.importorskip("cli")
    from tests.fakes_images import make_class_folders

    monkeypatch.chdir(tmp_path)
    _fake_ldm_inputs(tmp_path)
    other = tmp_path / "elsewhere"
    make_class_folders(other, classes=CK_CLASSES, subjects=2, frames=1, size=16, kind="noise")
    flags = ["--config", str(CONFIGS / "generate_ckplus48.yaml"), "--trainer.logger", "false",
             "--data.init_args.source_config.init_args.root", str(other),
             "--data.init_args.source_config.init_args.crop.image_size", "16"]
    c = cli.cli_main(flags, run=False)
    src = c.datamodule.source
    assert src.hparams.root == str(other) and src.image_size == 16
    assert "output_root" not in src.hparams  # not the GenerationDataModule's settings
    assert c.datamodule.data_root == str(other)
    with pytest.raises(SystemExit):
        cli.cli_main([*flags, "--data.init_args.source_config.init_args.rooot", "x"], run=False)


def _fake_ldm_inputs(tmp_path: Path) -> None:
    """The local files the configs/ldm/* configs name (faces, VAEs, the recognition checkpoint), tiny and random."""
    from tests.fakes_images import make_class_folders

    make_class_folders(tmp_path / "data" / "ckplus48", classes=CK_CLASSES, subjects=2, frames=1, size=16,
                       kind="noise")
    vae_48 = build_autoencoder_kl(block_out_channels=(32, 64, 64), norm_num_groups=16, sample_size=48)
    vae_48.save_pretrained(tmp_path / "runs" / "ldm_vae_ckplus48" / "checkpoints" / "last.ckpt")  # a local dir
    build_autoencoder_kl(block_out_channels=(8, 16, 16), norm_num_groups=8).save_pretrained(
        tmp_path / "runs" / "ldm_vae_tiny" / "vae")
    enc = FrozenImageEncoder("resnet18", num_classes=7)
    clf = tmp_path / "runs" / "fer_resnet18_ckplus48" / "checkpoints" / "last.ckpt"
    clf.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"net.model.{k}": v for k, v in enc.model.state_dict().items()}}, clf)


@pytest.mark.parametrize("name", ["vae_ckplus48.yaml", "generate_ckplus48.yaml"])
def test_ldm_systems_take_the_normalisation_from_the_data(tmp_path, monkeypatch, name):
    """``image_mean``/``image_std`` of LitVAE/LitLDM are linked from the datamodule (for generation: its source
    datamodule's): a config whose data normalisation differs ends with the system undoing THAT normalisation, even
    when a stale value is typed for the model."""
    cli = pytest.importorskip("cli")
    monkeypatch.chdir(tmp_path)
    _fake_ldm_inputs(tmp_path)
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    data = cfg["data"]["init_args"]
    data = data["source_config"]["init_args"] if "source_config" in data else data
    data["normalisation"] = {**data.get("normalisation", {}), "mean": [0.2, 0.3, 0.4], "std": [0.25, 0.5, 0.75]}
    cfg["model"]["init_args"]["image_mean"] = [0.9, 0.9, 0.9]  # typed a second time, differently: loses
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    c = cli.cli_main(["--config", str(path), "--trainer.logger", "false"], run=False)
    assert tuple(c.model.hparams.image_mean) == (0.2, 0.3, 0.4)
    assert tuple(c.model.hparams.image_std) == (0.25, 0.5, 0.75)
    assert c.model.norm.mean.flatten().tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert c.model.norm.std.flatten().tolist() == pytest.approx([0.25, 0.5, 0.75])


def test_no_ldm_config_types_the_normalisation_twice():
    """The data section is the one place of mean/std in every generation config (the systems' are linked)."""
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        if "model" not in cfg:  # a delta over a face config (swin2b_ckplus48_augmented.yaml)
            continue
        model = cfg["model"]["init_args"]
        assert not {"image_mean", "image_std"} & set(model), path.name


def test_generation_datamodule_without_a_source_has_no_normalisation():
    from datamodules.generation import GenerationDataModule

    dm = GenerationDataModule(class_counts={"a": 2, "b": 1})
    assert not hasattr(dm, "mean") and not hasattr(dm, "std")  # the CLI link is skipped, the system keeps its own


def _ldm_checkpoint(tmp_path, vae_dir) -> tuple[Path, dict]:
    """A LitLDM checkpoint written without training (the layout ``Trainer.save_checkpoint`` gives)."""
    import lightning

    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="none", class_names=["a", "b", "c"])
    ckpt = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": lightning.__version__}
    model.on_save_checkpoint(ckpt)
    path = tmp_path / "ldm.ckpt"
    torch.save(ckpt, path)
    return path, ckpt


def test_load_ldm_refuses_class_paths_outside_the_allow_list(tmp_path, vae_dir):
    """Issue 14 §3 probe (b): ``ldm_modules.net`` naming ``os.system`` must not run."""
    from lightning_modules.checkpoint_io import CheckpointError

    path, ckpt = _ldm_checkpoint(tmp_path, vae_dir)
    assert load_ldm(path).trained_weights == str(path.resolve())
    marker = tmp_path / "pwned"
    ckpt["ldm_modules"]["net"] = {"class_path": "os.system", "init_args": {"command": f"touch '{marker}'"}}
    torch.save(ckpt, tmp_path / "crafted.ckpt")
    with pytest.raises(CheckpointError, match=r"crafted\.ckpt.*'os\.system'"):
        load_ldm(tmp_path / "crafted.ckpt")
    assert not marker.exists()
    ckpt["ldm_modules"]["net"] = {"class_path": "models.diffusion.ConditionalLatentUNet",
                                  "init_args": {"num_classes": "subprocess.getoutput"}}
    torch.save(ckpt, tmp_path / "crafted2.ckpt")
    with pytest.raises(CheckpointError, match="subprocess.getoutput"):
        load_ldm(tmp_path / "crafted2.ckpt")


def test_predict_refuses_an_untrained_unet(tmp_path, vae_dir):
    from datamodules.generation import GenerationDataModule

    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="none", num_inference_steps=1)
    dm = GenerationDataModule(class_counts={"class_0": 1, "class_1": 1, "class_2": 1},
                              output_root=str(tmp_path / "out"), total_multiplier=1.0, scarce_classes=[])
    with pytest.raises(RuntimeError, match="untrained UNet"):
        trainer(tmp_path).predict(model, datamodule=dm)


def test_ldm_refuses_a_consistency_encoder_trained_with_another_normalisation(tmp_path, vae_dir):
    """The consistency encoder reads the data-normalised batch: its checkpoint's mean/std must be the data's."""
    enc = FrozenImageEncoder("resnet10t", num_classes=3)
    ckpt = tmp_path / "fer.ckpt"
    torch.save({"state_dict": {f"net.model.{k}": v for k, v in enc.model.state_dict().items()},
                "fer_preprocessing": {"settings": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}},
               ckpt)
    encoder = FrozenImageEncoder("resnet10t", num_classes=3, checkpoint_path=str(ckpt))
    with pytest.raises(ValueError, match=r"LitLDM: mean=\(0.5, 0.5, 0.5\) differs"):
        LitLDM(tiny_net(), vae_path=vae_dir, consistency="triplet", consistency_encoder=encoder)
    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="triplet", consistency_encoder=encoder,
                   image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    assert model.norm.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


# ------------------------------------------------------------------ issue 20: class order and an explicit vae_path
def _other_vae(tmp_path: Path, name: str, seed: int) -> str:
    """A VAE of the fixture's architecture with other (seeded) weights."""
    torch.manual_seed(seed)
    vae = build_autoencoder_kl(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16)
    vae.save_pretrained(tmp_path / name)
    return str(tmp_path / name)


def _built_like_the_cli(ckpt: Path, **given) -> LitLDM:
    """``cli.py predict --ckpt_path``: the checkpoint's hyper-parameters, then what the user gave explicitly."""
    hp = {k: v for k, v in torch.load(ckpt, weights_only=True)["hyper_parameters"].items() if not k.startswith("_")}
    hp.update(consistency="none", num_inference_steps=2, **given)
    return LitLDM(tiny_net(), **hp)


def _generate(tmp_path: Path, model: LitLDM, ckpt: Path | None, name: str,
              counts: dict[str, int] | None = None) -> dict[str, bytes]:
    """PNG bytes by file name of a generation run (one image per class by default)."""
    from callbacks.augmented_writer import AugmentedImageWriter
    from datamodules.generation import GenerationDataModule

    out = tmp_path / name
    dm = GenerationDataModule(class_counts=counts or {"a": 1, "b": 1, "c": 1}, output_root=str(out),
                              total_multiplier=1.0, scarce_classes=[], batch_size=4)
    writer = AugmentedImageWriter(image_mode="RGB", progress="none", max_retries=0)
    trainer(tmp_path, callbacks=[writer]).predict(model, datamodule=dm, ckpt_path=str(ckpt) if ckpt else None,
                                                  return_predictions=False)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.png"))}


def test_an_explicit_vae_path_wins_over_the_checkpoints_vae(tmp_path, vae_dir):
    """The PNGs were byte-identical whatever VAE file was given: the checkpoint's VAE weights were loaded over it."""
    ckpt, _ = _ldm_checkpoint(tmp_path, vae_dir)
    vae_b, vae_c = _other_vae(tmp_path, "vae_b", 1), _other_vae(tmp_path, "vae_c", 2)
    with_b = _generate(tmp_path, _built_like_the_cli(ckpt, vae_path=vae_b), ckpt, "out_b")
    with_c = _generate(tmp_path, _built_like_the_cli(ckpt, vae_path=vae_c), ckpt, "out_c")
    assert len(with_b) == 3 and with_b.keys() == with_c.keys()
    assert all(with_b[k] != with_c[k] for k in with_b)
    # the path stored in the checkpoint is data: never opened (the file is gone), the checkpoint's copy is used,
    # also when the user names that same path
    import shutil

    shutil.rmtree(vae_dir)
    labels, seeds = torch.tensor([0, 1]), [3, 4]
    own = load_ldm(ckpt).generate(labels, seeds, num_inference_steps=2)
    model = _built_like_the_cli(ckpt, vae_path=vae_dir)
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])  # what the trainer's restore does
    model.on_load_checkpoint(torch.load(ckpt, weights_only=True))
    model.load_state_dict(torch.load(ckpt, weights_only=True)["state_dict"])
    torch.testing.assert_close(model.generate(labels, seeds, num_inference_steps=2), own)
    # load_ldm(vae_path=): the same rule
    given_b = load_ldm(ckpt, vae_path=vae_b)
    for k, v in load_vae(vae_b).state_dict().items():
        torch.testing.assert_close(given_b.vae.state_dict()[k], v)
    assert not torch.allclose(own, given_b.generate(labels, seeds, num_inference_steps=2))


def test_a_bogus_explicit_vae_path_is_an_error_naming_it(tmp_path, vae_dir):
    ckpt, _ = _ldm_checkpoint(tmp_path, vae_dir)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"vae_path '{junk}' cannot be loaded as a VAE"):
        _generate(tmp_path, _built_like_the_cli(ckpt, vae_path=str(junk)), ckpt, "out_junk")
    with pytest.raises(FileNotFoundError, match="nope"):
        _generate(tmp_path, _built_like_the_cli(ckpt, vae_path=str(tmp_path / "nope")), ckpt, "out_nope")
    with pytest.raises(FileNotFoundError, match="load_ldm: vae_path .*nope"):
        load_ldm(ckpt, vae_path=tmp_path / "nope")
    torch.manual_seed(0)  # another latent width: its latents cannot be the UNet's
    build_autoencoder_kl(block_out_channels=(8, 16), latent_channels=3, norm_num_groups=4,
                         sample_size=16).save_pretrained(tmp_path / "vae3")
    with pytest.raises(ValueError, match="vae3.*3 latent channels, the net takes 4"):
        load_ldm(ckpt, vae_path=tmp_path / "vae3")
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.parametrize("counts,what", [({"c": 1, "a": 1, "b": 1}, "another order"),
                                         ({"x": 1, "y": 1, "z": 1}, "other classes")])
def test_a_checkpoint_with_another_class_order_is_refused_naming_both(tmp_path, vae_dir, counts, what):
    """The data's class order (linked into the system by cli.py) against the checkpoint's: images used to be filed
    under the wrong class."""
    ckpt, _ = _ldm_checkpoint(tmp_path, vae_dir)  # trained as ["a", "b", "c"]
    model = _built_like_the_cli(ckpt, class_names=list(counts))  # the link data.class_names -> model
    with pytest.raises(ValueError, match=rf"{what}.*{re.escape(str(['a', 'b', 'c']))}.*{re.escape(str(list(counts)))}"):
        _generate(tmp_path, model, ckpt, "out", counts)
    assert not list((tmp_path / "out").rglob("*.png"))
    # a model in the checkpoint's order (load_ldm) with a datamodule in another: refused, naming both orders
    with pytest.raises(ValueError, match=r"class order mismatch.*\['a', 'b', 'c'\].*GenerationDataModule"):
        _generate(tmp_path, load_ldm(ckpt), None, "out2", counts)
    assert not list((tmp_path / "out2").rglob("*.png"))


def test_ldm_fit_refuses_a_datamodule_with_another_class_order(tmp_path, vae_dir):
    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="none", class_names=["b", "a", "c"])
    with pytest.raises(ValueError, match=r"another order.*\['b', 'a', 'c'\].*\['a', 'b', 'c'\]"):
        trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=TinyFaceData())
    unnamed = LitLDM(tiny_net(), vae_path=vae_dir, consistency="none")
    trainer(tmp_path, fast_dev_run=True).fit(unnamed, datamodule=TinyFaceData())
    assert unnamed.class_names == ["a", "b", "c"] and unnamed.hparams.class_names == ["a", "b", "c"]


def test_generation_needs_no_consistency_encoder_but_training_does(tmp_path, vae_dir):
    """Issue #24: the consistency loss is a training term. A system trained with it (``consistency='triplet'``,
    as a checkpoint's hyper-parameters say) builds and generates without the encoder; fit/validate refuse to start
    without it, naming the setting."""
    model = LitLDM(tiny_net(), vae_path=vae_dir, consistency="triplet", num_train_timesteps=100)
    model.trained_weights = "test"
    images = model.eval().generate(torch.tensor([0, 1]), [0, 1], num_inference_steps=2)
    assert images.shape == (2, 3, 16, 16)
    for run in ("fit", "validate"):
        with pytest.raises(ValueError, match="consistency='triplet' needs a consistency_encoder.*consistency none"):
            getattr(trainer(tmp_path, max_steps=1, limit_val_batches=1), run)(model, datamodule=TinyFaceData())
    # an explicit consistency (e.g. the generate config's 'none') wins over a checkpoint's (cli.py keeps the
    # system's inference_settings the user gave)
    assert {"consistency", "consistency_weight", "p_uncond"} <= set(LitLDM.inference_settings)
    assert not {"net", "vae_config", "num_train_timesteps", "beta_schedule", "class_names"} & set(
        LitLDM.inference_settings)


def test_vae_writes_a_labelled_reconstruction_image_under_the_run_folder(tmp_path):
    from PIL import Image

    from callbacks.diffusion_samples import VAEReconstructionLogger

    model = tiny_vae()
    recon = VAEReconstructionLogger(num_images=3)
    ckpt = pytest.importorskip("lightning.pytorch.callbacks").ModelCheckpoint(dirpath=tmp_path / "run" / "checkpoints")
    t = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                default_root_dir=tmp_path / "elsewhere", max_epochs=1, limit_train_batches=1, limit_val_batches=2,
                callbacks=[recon, ckpt])
    t.fit(model, datamodule=TinyFaceData())
    assert recon.last_path == tmp_path / "run" / "reconstructions" / "epoch_000.png"
    with Image.open(recon.last_path) as im:  # input row above the reconstruction row, 3 faces each, 6x upscaled
        assert im.height == 2 * 16 * 6 and im.width > 3 * 16 * 6
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.slow  # ~30 s: a fit and a test through cli.py
def test_vae_fit_checkpoint_serves_cli_test_and_the_ldm(tmp_path, monkeypatch):
    """configs/ldm/vae_ckplus48.yaml through cli.py: fit (then the CLI's test of the best checkpoint), ``test
    --ckpt_path last.ckpt``, and the same checkpoint as LitLDM's vae_path."""
    from cli import cli_main
    from tests.helpers.configs import TrainingConfig, tiny_overrides

    monkeypatch.chdir(tmp_path)
    config = TrainingConfig(CONFIGS / "vae_ckplus48.yaml", None)
    override = tiny_overrides(config, tmp_path, devices=1, max_epochs=1)
    args = [a for f in [*config.files, override] for a in ("--config", str(f))]
    tiny = ["--trainer.logger", "false", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1",
            "--trainer.limit_test_batches", "1", "--trainer.callbacks", "[]"]
    fit = cli_main(["fit", *args, *tiny])
    ckpt = tmp_path / "checkpoints_d1" / "last.ckpt"
    assert ckpt.is_file()
    tested = cli_main(["test", *args, *tiny, "--ckpt_path", str(ckpt)])
    assert isinstance(tested.model.vae, LatentAutoencoder)
    for k, v in fit.model.state_dict().items():
        torch.testing.assert_close(tested.model.state_dict()[k].cpu(), v.cpu())
    assert "test/loss" in tested.trainer.callback_metrics
    ldm = LitLDM(ConditionalLatentUNet(7, sample_size=12, latent_channels=4, block_out_channels=(8, 16),
                                       cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4),
                 vae_path=str(ckpt), consistency="none")
    assert ldm.vae.config.scaling_factor == pytest.approx(fit.model.vae.config.scaling_factor)
