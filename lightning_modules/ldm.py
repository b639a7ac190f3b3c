"""Systems for the class-conditioned latent diffusion augmenter (Ji et al. 2026, §2.1, eqs. 1-2; §3.1.1).

- :class:`LitVAE` trains the autoencoder that maps faces to latents (reconstruction + KL), an injected
  :class:`models.diffusion.LatentAutoencoder` (built from its settings or a LOCAL ``save_pretrained`` directory);
  :meth:`LitVAE.export_pretrained` writes such a directory.
- :class:`LitLDM` trains the noise predictor of eq. (1) with plain DDPM noise-prediction MSE, label dropout for
  classifier-free guidance and the contrastive consistency loss of eq. (2); ``predict_step`` turns generation jobs
  (label, seed, job index) into images.

Images arrive as the FER batch (``docs/architecture.md``): ``image`` ``[B, 3, H, W]`` normalised with the datamodule's
``mean``/``std``; the systems undo that normalisation to work in ``[-1, 1]`` (``image_mean``/``image_std``: the
CLI links them from the datamodule, so they cannot differ from it).

Epoch values (``{train,val,test}/loss`` and the loss terms) are exact sample-weighted means over all DDP processes
(:class:`lightning_modules.base.EpochMeanLogging`), so checkpoint monitoring and early stopping on ``val/loss`` see
one value on every process; the per-step training loss is ``train/loss_step``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from common.checkpoint import CheckpointError, read_checkpoint
from common.choices import check_choices
from lightning_modules.base import EpochMeanLogging, NetModule, drop_foreign_hparams
from lightning_modules.checkpoint_io import (
    check_class_path,
    check_hparams_class_paths,
    load_system,
    require_system,
)
from lightning_modules.optim import build_optimization
from models.diffusion import (
    PAIRINGS,
    ConditionalLatentUNet,
    LatentAutoencoder,
    contrastive_consistency_loss,
    decode_latents,
    encode_latents,
    load_autoencoder_kl,
    make_sampling_scheduler,
    predict_x0,
    sample_latents,
)
from models.frozen_classifier import classifier_normalisation

log = logging.getLogger(__name__)

RECON_LOSSES = ("l1", "mse")
CONSISTENCY = ("none",) + PAIRINGS
#: Samplers of :meth:`LitLDM.generate` (DDIM steps or the full DDPM chain).
Sampler = Literal["ddim", "ddpm"]
SAMPLERS: tuple[str, ...] = get_args(Sampler)
#: diffusers' beta schedules offered by the configs.
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
MAX_GUIDANCE = 50.0
#: State-dict prefixes of a LitLDM checkpoint (the frozen consistency encoder is not saved).
LDM_STATE_PREFIXES = ("net.", "vae.")


class _ImageNorm:
    """Converts between the datamodule's normalisation and ``[-1, 1]``."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(1, -1, 1, 1)
        self.std = torch.tensor(std).view(1, -1, 1, 1)

    def to_pm1(self, image: Tensor) -> Tensor:
        return (image * self.std.to(image) + self.mean.to(image)) * 2 - 1

    def from_pm1(self, x: Tensor) -> Tensor:
        return ((x + 1) / 2 - self.mean.to(x)) / self.std.to(x)


class LitVAE(EpochMeanLogging):
    """Trains an autoencoder on the train split: ``L = recon(x, D(z)) + kl_weight * KL(q(z|x) || N(0, I))``.

    After each training epoch the latent ``scaling_factor`` is set to ``1 / std`` of the posterior means seen in that
    epoch by all processes (as in Stable Diffusion), so the diffusion model sees unit-variance latents.

    Args:
        vae: the autoencoder, a :class:`models.diffusion.LatentAutoencoder` (in YAML: ``class_path`` + ``init_args``;
            its architecture, or the LOCAL ``save_pretrained`` directory to start from, is typed there only).
        kl_weight: weight of the KL term.
        recon_loss: ``"l1"`` or ``"mse"``.
        image_mean, image_std: the datamodule's normalisation (to map images back to ``[-1, 1]``); linked from
            ``data.mean``/``data.std`` by ``cli.py``, never typed in a config.
        image_size: data-derived (linked from ``data.image_size`` by ``cli.py``): the side of the images; must be
            the ``vae``'s ``sample_size`` (``ValueError`` naming both otherwise). ``None``: not checked.
        optimizer, scheduler: factories.

    The checkpoint holds the autoencoder's weights (``vae.autoencoder.*``) and its diffusers config (``vae_config``,
    the trained ``scaling_factor`` included): :func:`load_vae` (``LitLDM(vae_path=...)``) rebuilds the
    ``AutoencoderKL`` from those alone. ``LitVAE.load_from_checkpoint(path, vae=...)`` takes the module, as the
    injected ``vae`` is not a hyper-parameter.

    Shapes:
        batch["image"]: ``[B, 3, H, W]`` -> latents ``[B, latent_channels, H/f, W/f]``.
    """

    def __init__(
        self,
        vae: LatentAutoencoder,
        kl_weight: float = 1e-4,
        recon_loss: Literal["l1", "mse"] = "l1",
        image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        image_std: tuple[float, ...] = (0.5, 0.5, 0.5),
        image_size: int | None = None,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        check_choices(LitVAE, locals())
        if not isinstance(vae, LatentAutoencoder):
            raise TypeError(f"LitVAE: vae must be a models.diffusion.LatentAutoencoder, got {type(vae).__name__}")
        if kl_weight < 0:
            raise ValueError(f"LitVAE: kl_weight must be >= 0, got {kl_weight}")
        if len(image_mean) != vae.in_channels or len(image_std) != vae.in_channels:
            raise ValueError(f"LitVAE: image_mean / image_std have {len(image_mean)} / {len(image_std)} channels, "
                             f"the vae's in_channels is {vae.in_channels}")
        if image_size is not None and int(image_size) != vae.sample_size:
            raise ValueError(f"LitVAE: the data's image_size is {image_size}, the vae's sample_size is "
                             f"{vae.sample_size}: set vae.init_args.sample_size to the data's image size")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "vae"])
        drop_foreign_hparams(self)
        self.vae = vae
        self.norm = _ImageNorm(tuple(image_mean), tuple(image_std))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler

    def forward(self, x_pm1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (reconstruction, posterior mean, KL per sample)."""
        return self.vae(x_pm1)

    def _shared_step(self, batch: dict, stage: str) -> Tensor:
        x = self.norm.to_pm1(batch["image"])
        recon, mean, kl = self(x)
        fn = F.l1_loss if self.hparams.recon_loss == "l1" else F.mse_loss
        rec = fn(recon, x)
        kl = kl.mean() / mean[0].numel()  # per latent element, comparable across sizes
        loss = rec + self.hparams.kl_weight * kl
        b = x.shape[0]
        self.log_step_value(stage, "loss", loss, b)
        self.log_epoch_mean(stage, "recon", rec, b)
        self.log_epoch_mean(stage, "kl", kl, b)
        if stage == "train":  # mean square of the posterior means, weighted by their number of elements
            self.log_epoch_mean(stage, "latent_ms", mean.detach().pow(2).mean(), mean.numel())
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def on_train_epoch_end(self) -> None:
        values = self._log_epoch_metrics("train")  # global over the processes: one scaling factor everywhere
        if "train/latent_ms" in values:
            std = float(values["train/latent_ms"]) ** 0.5
            self.vae.autoencoder.register_to_config(scaling_factor=float(1.0 / max(std, 1e-6)))
            self._silence_sync_warning({"train/latent_rms": None})
            self.log("train/latent_rms", std, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vae_config"] = dict(self.vae.autoencoder.config)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict") or {}
        for key in [k for k in sd if k.startswith("vae.") and not k.startswith("vae.autoencoder.")]:
            sd["vae.autoencoder." + key[len("vae."):]] = sd.pop(key)  # written before LatentAutoencoder
        if "vae_config" in checkpoint:
            self.vae.autoencoder.register_to_config(scaling_factor=checkpoint["vae_config"]["scaling_factor"])

    def configure_optimizers(self) -> Any:
        return build_optimization(self.vae, self.optimizer_factory, self.scheduler_factory, None, "val/loss",
                                  trainer=self._trainer)

    def export_pretrained(self, local_dir: str | Path) -> Path:
        """Write the autoencoder as a diffusers ``save_pretrained`` directory (loadable by ``LitLDM(vae_path=)``)."""
        path = Path(local_dir)
        self.vae.autoencoder.save_pretrained(str(path))
        return path


def load_vae(path: str | Path) -> AutoencoderKL:
    """Load an autoencoder from a local ``save_pretrained`` directory or a :class:`LitVAE` checkpoint file.

    A checkpoint is read weights-only and checked to be a :class:`LitVAE`'s; the ``AutoencoderKL`` is rebuilt from
    its ``vae_config`` and ``vae.*`` weights alone (no ``LitVAE`` is built, no path stored in it is opened).
    Checkpoints written before :class:`models.diffusion.LatentAutoencoder` (weights under ``vae.`` directly) load
    too.

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: not a LitVAE checkpoint, or its config and weights do not fit together (naming the file).
    """
    p = Path(path)
    if p.is_dir():
        return load_autoencoder_kl(p)
    if not p.is_file():
        raise FileNotFoundError(f"VAE checkpoint not found: {p} (expected a LitVAE .ckpt or a save_pretrained "
                                "directory)")
    ckpt = read_checkpoint(p, "cpu")
    require_system(ckpt, p, LitVAE, state_prefixes=("vae.",))
    config = ckpt.get("vae_config")
    if not isinstance(config, dict):
        raise CheckpointError(f"LitVAE checkpoint {str(p)!r} has no vae_config (the autoencoder's diffusers config)")
    weights = {k[len("vae."):]: v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith("vae.")}
    weights = {k.removeprefix("autoencoder."): v for k, v in weights.items()}
    try:
        vae = AutoencoderKL.from_config(config)
        vae.load_state_dict(weights)
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"LitVAE checkpoint {str(p)!r}: its vae_config and weights do not make an "
                              f"AutoencoderKL ({err})") from err
    return vae.eval()


class LitLDM(EpochMeanLogging):
    """Class-conditioned latent DDPM (eq. 1) with the contrastive consistency loss (eq. 2).

    Training step, written out (diffusers ``PHILOSOPHY.md``): ``z_0 = s * E(x)`` with the frozen VAE, ``t ~ U{0..T-1}``,
    ``eps ~ N(0, I)``, ``z_t = scheduler.add_noise(z_0, eps, t)``; the label is replaced by the NULL label with
    probability ``p_uncond`` (classifier-free guidance); ``L = ||eps - eps_theta(z_t, t, y)||^2 +
    consistency_weight * L_con``. ``L_con`` (eq. 2, pairs documented in
    :func:`models.diffusion.contrastive_consistency_loss`) is computed on the samples with ``t <
    consistency_max_timestep`` that kept their label: the generated sample is the one-step estimate
    ``z0_hat = predict_x0(z_t, eps_theta)`` decoded by the frozen VAE, the high-level features come from the FROZEN
    ``consistency_encoder`` (gradients flow through it to the UNet, its weights never change).

    Args:
        net: the noise predictor.
        vae_path: LOCAL ``save_pretrained`` directory or :class:`LitVAE` checkpoint; required unless ``vae_config``
            is given. Given with a checkpoint (``--ckpt_path``, :func:`load_ldm`) it WINS over the checkpoint's copy
            of the VAE weights, except when it is the very path stored in that checkpoint (the path it was trained
            with): then the checkpoint's copy of those weights is used and the file is not opened, so a path read
            from a checkpoint is never followed (see "VAE weights" below).
        vae_config: the autoencoder's diffusers config (filled in automatically and saved in the checkpoint, so a
            checkpoint reloads without the original VAE file; the weights come from the state dict).
        class_names: class names (index order); default ``class_0 ...``. They must be the data's order and, when a
            checkpoint is loaded, the checkpoint's: a different order (or other names) is an error naming both,
            never images filed under the wrong class.
        num_train_timesteps: ``T``.
        beta_schedule: diffusers beta schedule (``"linear"``, ``"scaled_linear"``, ``"squaredcos_cap_v2"``).
        p_uncond: label-dropout probability.
        consistency: ``"none"``, ``"triplet"`` or ``"contrastive"`` (pairing of eq. 2).
        consistency_weight, consistency_margin, consistency_max_timestep: weight, margin ``m`` and timestep cut-off.
        consistency_encoder: frozen image encoder returning ``[B, F]`` features of normalised images (e.g.
            :class:`models.frozen_classifier.FrozenImageEncoder`); required to fit, validate or test with
            ``consistency != "none"`` (``ValueError`` when those start), never for ``predict``/:meth:`generate`
            (the loss is a training term: generating from a checkpoint trained with it needs no encoder).
        sampler, num_inference_steps, guidance_scale: generation settings of ``predict_step``/:meth:`generate`.
        image_mean, image_std: the datamodule's normalisation (for generation: the source datamodule's); linked
            from ``data.mean``/``data.std`` by ``cli.py``, never typed in a config.
        optimizer, scheduler: factories (only ``net`` is optimised).

    Shapes:
        batch["image"]: ``[B, 3, H, W]``; batch["label"]: ``[B]``.
        predict batch: ``{"label": [B], "seed": [B], "job_index": [B]}`` -> ``{"images": [B, 3, H, W] in [0, 1], ...}``.

    ``predict`` refuses an untrained UNet: the weights must come from a checkpoint (``--ckpt_path``,
    :func:`load_ldm`) or a ``fit`` in the same process.

    VAE weights, in order of precedence: ``vae_path`` alone loads that file now. ``vae_path`` with ``vae_config``
    (how ``cli.py --ckpt_path`` and :func:`load_ldm` build the system: ``vae_config`` comes from the checkpoint)
    builds the architecture from ``vae_config`` and opens no file yet; when the checkpoint is loaded
    (``on_load_checkpoint``) a ``vae_path`` other than the one stored in it is loaded and replaces the checkpoint's
    VAE weights (logged once), while the stored path itself means the checkpoint's copy. Without any checkpoint the
    file is loaded when fit/validate/test/predict start or at the first :meth:`generate`. The VAE's
    ``latent_channels`` must be the net's.
    """

    #: Settings that do not change what the trained weights mean: with ``--ckpt_path`` the values the user gives
    #: (config or command line) win over the checkpoint's (``cli.AffectCLI._parse_ckpt_path``). The generation
    #: settings, and the training-loss settings (label dropout, consistency loss): ``predict --ckpt_path ...
    #: --model.init_args.consistency none`` (as ``configs/ldm/generate_ckplus48.yaml`` says) must not be replaced
    #: by the ``triplet`` the checkpoint was trained with. The architecture (``net``, ``vae_config``,
    #: ``num_train_timesteps``, ``beta_schedule``, ``class_names``) always comes from the checkpoint.
    inference_settings: tuple[str, ...] = (
        "sampler", "num_inference_steps", "guidance_scale", "vae_path",
        "p_uncond", "consistency", "consistency_weight", "consistency_margin", "consistency_max_timestep",
    )

    def __init__(
        self,
        net: ConditionalLatentUNet,
        vae_path: str | None = None,
        vae_config: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: BetaSchedule = "linear",
        p_uncond: float = 0.1,
        consistency: Literal["none", "triplet", "contrastive"] = "triplet",
        consistency_weight: float = 0.1,
        consistency_margin: float = 1.0,
        consistency_max_timestep: int = 300,
        consistency_encoder: NetModule | None = None,
        sampler: Sampler = "ddim",
        num_inference_steps: int = 50,
        guidance_scale: float = 2.0,
        image_mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        image_std: tuple[float, ...] = (0.5, 0.5, 0.5),
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        check_choices(LitLDM, locals())
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"LitLDM: p_uncond must be in [0, 1), got {p_uncond}")
        if class_names is not None and len(class_names) != net.num_classes:
            raise ValueError(f"LitLDM: {len(class_names)} class_names for a net with {net.num_classes} classes")
        self._check_sampling(sampler, num_inference_steps, guidance_scale, num_train_timesteps)
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "net", "consistency_encoder"])
        drop_foreign_hparams(self)
        self.net = net
        self.consistency_encoder = consistency_encoder
        if consistency_encoder is not None:
            # the encoder reads the data-normalised batch: its training normalisation must be the data's
            classifier_normalisation(consistency_encoder, tuple(image_mean), tuple(image_std), owner="LitLDM")
            consistency_encoder.requires_grad_(False).eval()
        #: ``vae_path`` whose file was not opened yet (given with ``vae_config``: see "VAE weights")
        self._pending_vae_path: str | None = None
        #: the file the VAE weights were loaded from in ``__init__`` (None: built from ``vae_config``)
        self._vae_file: str | None = None
        if vae_config is not None:
            vae = AutoencoderKL.from_config(vae_config)
            self._pending_vae_path = str(vae_path) if vae_path is not None else None
        elif vae_path is not None:
            vae = _load_vae_checked(vae_path, net)
            self._vae_file = str(vae_path)
        else:
            raise ValueError("LitLDM: give vae_path (a local VAE directory or LitVAE checkpoint)")
        _check_latent_channels(vae, net, "vae_config" if vae_config is not None else f"vae_path {vae_path!r}")
        self.hparams["vae_config"] = dict(vae.config)
        self.vae = vae.requires_grad_(False).eval()
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
        self.class_names = list(class_names) if class_names is not None else [
            f"class_{i}" for i in range(net.num_classes)]
        self.norm = _ImageNorm(tuple(image_mean), tuple(image_std))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.trained_weights: str | None = None  # where the UNet weights came from (None: random init)

    @staticmethod
    def _check_sampling(sampler: str, steps: int, guidance: float, num_train_timesteps: int) -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"LitLDM: sampler must be one of {SAMPLERS}, got {sampler!r}")
        if not 1 <= steps <= num_train_timesteps:
            raise ValueError(f"LitLDM: num_inference_steps must be in [1, {num_train_timesteps}], got {steps}")
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise ValueError(f"LitLDM: guidance_scale must be in [0, {MAX_GUIDANCE}], got {guidance}")

    def _use_vae(self, vae: AutoencoderKL) -> None:
        """Replace the frozen VAE (same device and dtype as the current one)."""
        ref = next(self.vae.parameters(), None)
        if ref is not None:
            vae = vae.to(device=ref.device, dtype=ref.dtype)
        self.vae = vae.requires_grad_(False).eval()
        self.hparams["vae_config"] = dict(vae.config)

    def _load_pending_vae(self) -> None:
        """Load a ``vae_path`` given with ``vae_config`` when no checkpoint decided about it (class docstring)."""
        path, self._pending_vae_path = self._pending_vae_path, None
        if path is not None:
            self._use_vae(_load_vae_checked(path, self.net))
            rank_zero_info(f"LitLDM: VAE weights from vae_path {path}")

    def setup(self, stage: str) -> None:
        """The datamodule's classes (when it has ``class_names``) must be this system's, in the same order; a
        system built without ``class_names`` takes the datamodule's."""
        if stage in ("fit", "validate", "test"):
            self._check_consistency_encoder()
        dm = self.trainer.datamodule
        names = getattr(dm, "class_names", None) if dm is not None else None
        if names is None:
            return
        if self.hparams.class_names is None and len(names) == self.net.num_classes:
            self.class_names = list(names)
            self.hparams["class_names"] = list(names)
            return
        check_class_order(self.class_names, "LitLDM class_names", list(names),
                          f"the datamodule's class_names ({type(dm).__name__})")

    def _check_consistency_encoder(self) -> None:
        """The consistency loss (computed when fitting, validating, testing) needs its frozen encoder."""
        if self.hparams.consistency != "none" and self.consistency_encoder is None:
            raise ValueError(
                f"LitLDM: consistency={self.hparams.consistency!r} needs a consistency_encoder to compute the "
                "consistency loss (give model.init_args.consistency_encoder, or --model.init_args.consistency none)"
            )

    def on_fit_start(self) -> None:
        self._load_pending_vae()

    def on_validation_start(self) -> None:
        self._load_pending_vae()

    def on_test_start(self) -> None:
        self._load_pending_vae()

    def train(self, mode: bool = True) -> LitLDM:
        super().train(mode)
        self.vae.eval()
        if self.consistency_encoder is not None:
            self.consistency_encoder.eval()
        return self

    def forward(self, z_t: Tensor, timesteps: Tensor, labels: Tensor) -> Tensor:
        return self.net(z_t, timesteps, labels)

    def class_index(self, name: str) -> int:
        """Index of a class name; ``ValueError`` listing the known names otherwise."""
        if name not in self.class_names:
            raise ValueError(f"LitLDM: unknown class {name!r}; known classes: {self.class_names}")
        return self.class_names.index(name)

    def _diffusion_losses(self, batch: dict, generator: torch.Generator | None = None, train: bool = True
                          ) -> dict[str, Tensor]:
        image, labels = batch["image"], batch["label"]
        b = image.shape[0]
        x = self.norm.to_pm1(image)
        with torch.no_grad():
            z0 = encode_latents(self.vae, x)
        dev = z0.device
        noise = torch.randn(z0.shape, generator=generator, device="cpu").to(dev)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator).to(dev)
        z_t = self.noise_scheduler.add_noise(z0, noise, t)
        y_in = labels
        if train and self.hparams.p_uncond > 0:
            drop = torch.rand(b, device=dev) < self.hparams.p_uncond
            y_in = torch.where(drop, torch.full_like(labels, self.net.null_label), labels)
        eps = self.net(z_t, t, y_in)
        losses = {"mse": F.mse_loss(eps, noise)}
        if self.hparams.consistency != "none" and self.hparams.consistency_weight > 0:
            self._check_consistency_encoder()
            mask = (t < self.hparams.consistency_max_timestep) & (y_in == labels)
            if int(mask.sum()) >= 2:
                z0_hat = predict_x0(self.noise_scheduler, z_t[mask], eps[mask], t[mask])
                x_hat = decode_latents(self.vae, z0_hat).clamp(-1, 1)
                feat_gen = self.consistency_encoder(self.norm.from_pm1(x_hat))
                with torch.no_grad():
                    feat_real = self.consistency_encoder(image[mask])
                losses["con"] = contrastive_consistency_loss(
                    feat_gen, feat_real, z0_hat, z0[mask], labels[mask], margin=self.hparams.consistency_margin,
                    pairing=self.hparams.consistency,
                )
            else:
                losses["con"] = eps.new_zeros(())
        losses["loss"] = losses["mse"] + self.hparams.consistency_weight * losses.get("con", eps.new_zeros(()))
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        losses = self._diffusion_losses(batch, train=True)
        b = batch["image"].shape[0]
        for k, v in losses.items():
            if k == "loss":
                self.log_step_value("train", k, v, b)
            else:
                self.log_epoch_mean("train", k, v, b)
        return losses["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def _eval_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        # fixed noise and timesteps per batch index: epochs are comparable
        gen = torch.Generator().manual_seed(1000 + batch_idx)
        losses = self._diffusion_losses(batch, generator=gen, train=False)
        b = batch["image"].shape[0]
        for k, v in losses.items():
            self.log_epoch_mean(stage, k, v, b)

    @torch.no_grad()
    def generate(
        self,
        labels: Tensor,
        seeds: Tensor | list[int],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        sampler: Sampler | None = None,
    ) -> Tensor:
        """Images in ``[0, 1]`` for the given labels, one seed per image.

        Shapes:
            labels: ``[B]`` int64 -> ``[B, 3, H, W]``.
        """
        self._load_pending_vae()
        steps = self.hparams.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = self.hparams.guidance_scale if guidance_scale is None else guidance_scale
        sampler = self.hparams.sampler if sampler is None else sampler
        self._check_sampling(sampler, steps, guidance, self.noise_scheduler.config.num_train_timesteps)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.net.num_classes):
            raise ValueError(f"LitLDM: labels must be in [0, {self.net.num_classes - 1}], got {labels.tolist()}")
        sched = make_sampling_scheduler(self.noise_scheduler, sampler)
        latents = sample_latents(self.net, sched, labels.to(self.device), seeds, steps, guidance)
        return ((decode_latents(self.vae, latents).clamp(-1, 1) + 1) / 2).float()

    def on_train_end(self) -> None:
        self.trained_weights = "fit"

    def on_predict_start(self) -> None:
        self._load_pending_vae()
        if self.trained_weights is None:
            raise RuntimeError(
                "LitLDM: refusing to generate with an untrained UNet (no checkpoint was loaded): pass --ckpt_path "
                "<trained LDM checkpoint> (e.g. runs/ldm_ckplus48/checkpoints/last.ckpt) or use load_ldm()"
            )

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        images = self.generate(batch["label"], batch["seed"].tolist())
        return {
            "images": images.cpu(),
            "label": batch["label"].cpu(),
            "seed": batch["seed"].cpu(),
            "job_index": batch["job_index"].cpu(),
            "steps": self.hparams.num_inference_steps,
            "guidance": self.hparams.guidance_scale,
            "sampler": self.hparams.sampler,
        }

    def configure_optimizers(self) -> Any:
        return build_optimization(self.net, self.optimizer_factory, self.scheduler_factory, None, "val/loss",
                                  trainer=self._trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # how to rebuild the injected modules, so a checkpoint reloads on its own (see load_ldm)
        checkpoint["ldm_modules"] = {"net": _module_spec(self.net),
                                     "consistency_encoder": _module_spec(self.consistency_encoder)}
        # the frozen encoder is only a training-time loss; its weights live in its own checkpoint, so generation
        # configs need not declare it
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith("consistency_encoder.")]:
            del sd[k]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.trained_weights = "checkpoint"
        sd = checkpoint["state_dict"]
        stored = checkpoint.get("hyper_parameters") or {}
        if stored.get("class_names") is not None:  # the label order the UNet was trained with
            if self.hparams.class_names is None:
                self.class_names = list(stored["class_names"])
                self.hparams["class_names"] = list(stored["class_names"])
            check_class_order(list(stored["class_names"]), "the checkpoint's class_names", self.class_names,
                              "this LitLDM's class_names (linked from the data by cli.py)")
        self._vae_from_checkpoint(sd, stored)
        if self.consistency_encoder is not None:
            for k, v in self.consistency_encoder.state_dict().items():
                sd.setdefault(f"consistency_encoder.{k}", v)
        else:
            for k in [k for k in sd if k.startswith("consistency_encoder.")]:
                del sd[k]

    def _vae_from_checkpoint(self, sd: dict[str, Any], stored: dict[str, Any]) -> None:
        """Which VAE weights win when a checkpoint is loaded (class docstring, "VAE weights"): a ``vae_path`` other
        than the checkpoint's own replaces the checkpoint's ``vae.*`` entries of ``sd``."""
        stored_path = str(stored.get("vae_path"))
        path, self._pending_vae_path = self._pending_vae_path, None
        if path is not None and path != stored_path:
            self._use_vae(_load_vae_checked(path, self.net))
        elif path is None and self._vae_file is not None and self._vae_file != stored_path:
            path = self._vae_file  # loaded in __init__ (vae_path without vae_config)
        else:
            return  # the checkpoint's copy of the VAE weights (its vae.* entries) is loaded
        self._check_vae_geometry(path, stored.get("vae_config") or {})
        for k in [k for k in sd if k.startswith("vae.")]:
            del sd[k]
        sd.update({f"vae.{k}": v for k, v in self.vae.state_dict().items()})
        rank_zero_info(f"LitLDM: VAE weights from vae_path {path} (given explicitly), not the checkpoint's copy"
                       + (f" (it was trained with {stored_path})" if stored.get("vae_path") else ""))

    def _check_vae_geometry(self, path: str, trained: dict[str, Any]) -> None:
        """The VAE from ``path`` must make latents of the shape the UNet was trained on (``trained``: the
        checkpoint's ``vae_config``): same latent channels and down-sampling (number of blocks)."""
        for key in ("latent_channels", "block_out_channels"):
            mine, theirs, what = self.vae.config.get(key), trained.get(key), key
            if key == "block_out_channels" and theirs is not None:
                mine, theirs, what = len(mine), len(theirs), "number of down-sampling blocks"
            if theirs is not None and mine != theirs:
                raise ValueError(f"LitLDM: vae_path {path!r} (given explicitly) has {what} {mine}, the VAE the "
                                 f"checkpoint was trained with {theirs}: its latents cannot be the UNet's")


def check_class_order(a: list[str], a_name: str, b: list[str], b_name: str) -> None:
    """``ValueError`` naming both orders unless the two class lists are equal (same names, same order): a label is
    an index, so another order files every image under the wrong class."""
    if list(a) == list(b):
        return
    what = "the same classes in another order" if sorted(a) == sorted(b) else "other classes"
    raise ValueError(
        f"LitLDM: class order mismatch ({what}): {a_name} = {list(a)} but {b_name} = {list(b)}; label k means "
        f"{a_name}[k], so images would be filed under the wrong class. Give the data the checkpoint's class order "
        "(e.g. the source datamodule's class_names) or use a checkpoint trained with this order."
    )


def _check_latent_channels(vae: AutoencoderKL, net: nn.Module, source: str) -> None:
    want = getattr(net, "latent_channels", None)
    got = int(vae.config.latent_channels)
    if want is not None and int(want) != got:
        raise ValueError(f"LitLDM: the VAE of {source} has {got} latent channels, the net takes {want}")


def _load_vae_checked(path: str | Path, net: nn.Module) -> AutoencoderKL:
    """:func:`load_vae` with errors naming ``path`` (missing, not a VAE, wrong latent channels)."""
    try:
        vae = load_vae(path)
    except FileNotFoundError:
        raise
    except (CheckpointError, OSError, ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"LitLDM: vae_path {str(path)!r} cannot be loaded as a VAE: {err}") from err
    _check_latent_channels(vae, net, f"vae_path {str(path)!r}")
    return vae


def _module_spec(module: nn.Module | None) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a module exposing ``init_args`` (weights come from the state dict)."""
    if module is None or not hasattr(module, "init_args"):
        return None
    return {"class_path": f"{type(module).__module__}.{type(module).__qualname__}", "init_args": dict(module.init_args)}


def _build_module(spec: dict[str, Any] | None, source: str | Path) -> nn.Module | None:
    """Rebuild a module from a spec READ FROM ``source``: the class path must be on the checkpoint allow-list
    (``lightning_modules.checkpoint_io``) and name an ``nn.Module``."""
    if spec is None:
        return None
    import importlib

    if not isinstance(spec, dict) or not isinstance(spec.get("init_args", {}), dict):
        raise CheckpointError(f"LDM checkpoint {source}: malformed module spec {spec!r}")
    check_class_path(spec.get("class_path"), source, "ldm_modules")
    check_hparams_class_paths(spec.get("init_args", {}), source, "ldm_modules.init_args")
    mod_name, _, cls_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(mod_name), cls_name)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise CheckpointError(f"LDM checkpoint {source}: {spec['class_path']} is not an nn.Module")
    return cls(**spec.get("init_args", {}))


def load_ldm(checkpoint_path: str | Path, map_location: str = "cpu", net: nn.Module | None = None,
             consistency_encoder: nn.Module | None = None, vae_path: str | Path | None = None) -> LitLDM:
    """Reload a :class:`LitLDM` checkpoint without its config, e.g. for generation: the net is rebuilt from the
    ``init_args`` stored in the checkpoint unless given. Without ``consistency_encoder`` the model comes back with
    ``consistency="none"`` (the frozen encoder is a training-time loss, its weights are not in the checkpoint).
    The VAE is the checkpoint's copy (the path stored in it is never opened) unless ``vae_path`` names another
    VAE, which then replaces it (:class:`LitLDM`, "VAE weights")."""
    p = Path(checkpoint_path)
    if not p.is_file():
        raise FileNotFoundError(f"LDM checkpoint not found: {p}")
    ckpt = read_checkpoint(p, map_location)
    require_system(ckpt, p, LitLDM, state_prefixes=LDM_STATE_PREFIXES)
    specs = ckpt.get("ldm_modules") or {}
    net = net if net is not None else _build_module(specs.get("net"), p)
    if net is None:
        raise ValueError(f"LDM checkpoint {p} does not describe its net; pass net=")
    extra = {} if consistency_encoder is not None else {"consistency": "none"}
    if vae_path is not None and not Path(vae_path).exists():
        raise FileNotFoundError(f"load_ldm: vae_path {str(vae_path)!r} does not exist")
    model = load_system(LitLDM, p, map_location=map_location, net=net, consistency_encoder=consistency_encoder,
                        **extra)
    model.trained_weights = str(p.resolve())
    if vae_path is not None:  # (passed to load_from_checkpoint it would overwrite the stored path it is told from)
        path = str(vae_path)
        model._use_vae(_load_vae_checked(path, model.net))
        model._check_vae_geometry(path, (ckpt.get("hyper_parameters") or {}).get("vae_config") or {})
        model.hparams["vae_path"] = path
        rank_zero_info(f"LitLDM: VAE weights from vae_path {path} (given explicitly), not the checkpoint's copy")
    return model
