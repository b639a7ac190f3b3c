from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from callbacks.diffusion_samples import DiffusionSampleLogger
from lightning_modules.ldm import LitLDM, LitVAE, load_ldm, load_vae
from models.diffusion import ConditionalLatentUNet, build_autoencoder_kl
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






def trainer(tmp_path, **kw) -> Trainer:
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                   default_root_dir=tmp_path, **kw)


def test_vae_fast_dev_run_and_export(tmp_path):
    model = LitVAE(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16)
    trainer(tmp_path, fast_dev_run=True).fit(model, datamodule=TinyFaceData())
    assert model.vae.config.scaling_factor != 1.0  # set from the latent statistics of the epoch
    out = model.export_pretrained(tmp_path / "exported")
    assert load_vae(out).config.scaling_factor == pytest.approx(model.vae.config.scaling_factor)


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

    with Image.open(samples.last_path) as grid:  # one row per class, one column per sample
        assert grid.size == (2 * 16, 3 * 16)
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
    with pytest.raises(ValueError, match="consistency_encoder"):
        LitLDM(tiny_net(), vae_path=vae_dir, consistency="triplet")
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
    from tests.fakes_images import make_class_folders

    monkeypatch.chdir(tmp_path)
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
    c = cli.cli_main(["--config", str(CONFIGS / name), "--trainer.logger", "false"], run=False)
    assert type(c.model).__name__ in ("LitVAE", "LitLDM")
    if name == "generate_ckplus48.yaml":
        from callbacks.augmented_writer import AugmentedImageWriter

        writers = [cb for cb in c.trainer.callbacks if isinstance(cb, AugmentedImageWriter)]
        assert writers and writers[0].quality is not None
        assert type(c.datamodule.source).__name__ == "FERDataModule", type(c.datamodule.source)
        assert c.datamodule.data_root == "data/ckplus48", dict(c.datamodule.source.hparams)
