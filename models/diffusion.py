"""Class-conditioned latent diffusion for face-image augmentation (pure torch + diffusers, no Lightning).

Implements the generator of Ji et al., *Multimodal and multiscale facial expression recognition analysis for
learning emotions* (J. Zhengzhou Univ. Eng. Sci., 2026), §2.1.2:

- eq. (1): the noise predictor is conditioned on the class label through cross-attention,
  :math:`\\epsilon_\\theta(Z_t, y) = \\mathrm{CrossAttn}(Z_t, \\epsilon(y); \\theta)`. Here :math:`\\epsilon(y)` is a
  learned ``nn.Embedding(num_classes + 1, num_tokens * cross_attention_dim)`` whose last row (index
  ``num_classes``) is the NULL label used for classifier-free guidance, and the attention is the cross-attention of
  a diffusers ``UNet2DConditionModel`` whose ``encoder_hidden_states`` are the label tokens ``[B, T, D]``.
- eq. (2): the contrastive consistency loss
  :math:`\\mathcal{L}_{con} = \\sum_i \\max[0, m - d(x_i, x_j)^2 + d(z_i, z_j)^2]`, see
  :func:`contrastive_consistency_loss` for exactly which pairs are compared.

Schedulers (``DDPMScheduler`` for training, ``DDIMScheduler``/``DDPMScheduler`` for sampling) are separate objects
passed to the helpers (diffusers ``PHILOSOPHY.md``); nothing here owns a scheduler.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn

# saved run configs name `models.diffusion.FrozenImageEncoder`; the class lives in models/frozen_classifier.py
from common.choices import check_choices
from models.frozen_classifier import FrozenImageEncoder  # noqa: F401

log = logging.getLogger(__name__)

Pairing = Literal["triplet", "contrastive"]
PAIRINGS = get_args(Pairing)


class ClassLabelEmbedding(nn.Module):
    """Learned label embedding :math:`\\epsilon(y)` of eq. (1) with a NULL label.

    Args:
        num_classes: number of real classes ``K``; index ``K`` is the NULL (unconditional) label.
        embed_dim: token width ``D`` (the UNet's ``cross_attention_dim``).
        num_tokens: number of context tokens ``T`` per label.

    Shapes:
        labels: ``[B]`` int64 in ``[0, K]`` -> ``[B, T, D]``.
    """

    def __init__(self, num_classes: int, embed_dim: int, num_tokens: int = 1) -> None:
        super().__init__()
        if num_classes < 1 or embed_dim < 1 or num_tokens < 1:
            raise ValueError(
                f"ClassLabelEmbedding: num_classes, embed_dim and num_tokens must be >= 1, got "
                f"{num_classes}, {embed_dim}, {num_tokens}"
            )
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_tokens = num_tokens
        self.embedding = nn.Embedding(num_classes + 1, num_tokens * embed_dim)
        self.reset_parameters()

    @property
    def null_label(self) -> int:
        """Index of the NULL label (``num_classes``)."""
        return self.num_classes

    def reset_parameters(self) -> None:
        nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, labels: Tensor) -> Tensor:
        if labels.dtype != torch.long:
            raise ValueError(f"ClassLabelEmbedding: labels must be int64, got {labels.dtype}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > self.num_classes):
            raise ValueError(
                f"ClassLabelEmbedding: labels must lie in [0, {self.num_classes}] ({self.num_classes} = NULL), "
                f"got range [{int(labels.min())}, {int(labels.max())}]"
            )
        return self.embedding(labels).view(labels.shape[0], self.num_tokens, self.embed_dim)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, null_label={self.null_label}, embed_dim={self.embed_dim}, " \
            f"num_tokens={self.num_tokens}"


def build_unet(
    sample_size: int = 8,
    in_channels: int = 4,
    block_out_channels: tuple[int, ...] = (32, 64),
    layers_per_block: int = 1,
    cross_attention_dim: int = 32,
    attention_head_dim: int = 8,
    norm_num_groups: int = 8,
) -> UNet2DConditionModel:
    """Build the noise predictor of eq. (1): a ``UNet2DConditionModel`` with cross-attention in every block.

    Every down/up block is a ``CrossAttn*Block2D`` so that the label tokens condition all resolutions.
    """
    n = len(block_out_channels)
    if n < 1:
        raise ValueError("build_unet: block_out_channels must not be empty")
    if any(c % norm_num_groups for c in block_out_channels):
        raise ValueError(
            f"build_unet: every entry of block_out_channels={block_out_channels} must be divisible by "
            f"norm_num_groups={norm_num_groups}"
        )
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups,
    )


class ConditionalLatentUNet(nn.Module):
    """Noise predictor :math:`\\epsilon_\\theta(Z_t, y)` of eq. (1): UNet cross-attending to label tokens.

    Args:
        num_classes: number of real classes ``K`` (the NULL label is index ``K``).
        sample_size: latent side ``h`` (e.g. 8 for 32x32 faces with a 4x VAE).
        latent_channels: latent channels ``C`` of the VAE.
        block_out_channels: UNet widths per resolution.
        layers_per_block: resnet/attention layers per block.
        cross_attention_dim: width ``D`` of the label tokens.
        attention_head_dim: width of one attention head.
        norm_num_groups: group-norm groups (must divide every width).
        num_tokens: label tokens ``T`` per sample.

    Shapes:
        z_t: ``[B, C, h, w]``; timesteps: ``[B]`` or scalar; labels: ``[B]`` int64 -> ``[B, C, h, w]``.
    """

    def __init__(
        self,
        num_classes: int,
        sample_size: int = 8,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (32, 64),
        layers_per_block: int = 1,
        cross_attention_dim: int = 32,
        attention_head_dim: int = 8,
        norm_num_groups: int = 8,
        num_tokens: int = 1,
    ) -> None:
        super().__init__()
        self.init_args = {
            "num_classes": num_classes, "sample_size": sample_size, "latent_channels": latent_channels,
            "block_out_channels": list(block_out_channels), "layers_per_block": layers_per_block,
            "cross_attention_dim": cross_attention_dim, "attention_head_dim": attention_head_dim,
            "norm_num_groups": norm_num_groups, "num_tokens": num_tokens,
        }
        self.num_classes = num_classes
        self.sample_size = sample_size
        self.latent_channels = latent_channels
        self.label_embedding = ClassLabelEmbedding(num_classes, cross_attention_dim, num_tokens)
        self.unet = build_unet(
            sample_size=sample_size,
            in_channels=latent_channels,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=norm_num_groups,
        )

    @property
    def null_label(self) -> int:
        return self.label_embedding.null_label

    def forward(self, z_t: Tensor, timesteps: Tensor | int, labels: Tensor) -> Tensor:
        context = self.label_embedding(labels)
        return self.unet(z_t, timesteps, encoder_hidden_states=context).sample

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, sample_size={self.sample_size}, " \
            f"latent_channels={self.latent_channels}"


def build_autoencoder_kl(
    in_channels: int = 3,
    block_out_channels: tuple[int, ...] = (32, 64, 64),
    latent_channels: int = 4,
    layers_per_block: int = 1,
    norm_num_groups: int = 8,
    sample_size: int = 32,
    scaling_factor: float = 1.0,
) -> AutoencoderKL:
    """Build a small ``AutoencoderKL``; the spatial down-sampling factor is ``2 ** (len(block_out_channels) - 1)``."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=in_channels,
        out_channels=in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        scaling_factor=scaling_factor,
    )


class LatentAutoencoder(nn.Module):
    """The autoencoder of the latent diffusion (§2.1.2: the encoder maps faces to latents): a diffusers
    ``AutoencoderKL`` (:attr:`autoencoder`) built by :func:`build_autoencoder_kl` from these settings, typed once here
    (``LitVAE`` takes this module as its ``vae``); the down-sampling factor is ``f = 2 ** (len(block_out_channels) -
    1)``.

    Args:
        in_channels: image channels (3 for the FER batch); the reconstruction has as many.
        block_out_channels: encoder widths, one per resolution.
        latent_channels: latent channels ``C``.
        layers_per_block: resnet layers per block.
        norm_num_groups: group-norm groups (must divide every width).
        sample_size: image side the autoencoder is trained at.
        pretrained_dir: LOCAL ``save_pretrained`` directory whose weights to start from (never the hub). Its
            architecture must be the one the arguments above describe (``ValueError`` naming both otherwise);
            ``sample_size`` is the argument's.

    Shapes:
        x: ``[B, in_channels, H, W]`` in ``[-1, 1]`` -> reconstruction ``[B, in_channels, H, W]``, posterior mean
        ``[B, C, H/f, W/f]``, KL ``[B]``.
    """

    #: Arguments that fix the weights' shapes (checked against a ``pretrained_dir``'s config).
    ARCHITECTURE = ("in_channels", "block_out_channels", "latent_channels", "layers_per_block", "norm_num_groups")

    def __init__(
        self,
        in_channels: int = 3,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        latent_channels: int = 4,
        layers_per_block: int = 1,
        norm_num_groups: int = 8,
        sample_size: int = 32,
        pretrained_dir: str | None = None,
    ) -> None:
        super().__init__()
        settings = {
            "in_channels": in_channels, "block_out_channels": tuple(block_out_channels),
            "latent_channels": latent_channels, "layers_per_block": layers_per_block,
            "norm_num_groups": norm_num_groups, "sample_size": sample_size,
        }
        bad = [w for w in block_out_channels if w % norm_num_groups]
        if not block_out_channels or bad:
            raise ValueError(f"LatentAutoencoder: norm_num_groups={norm_num_groups} must divide every width of "
                             f"block_out_channels={tuple(block_out_channels)}")
        if pretrained_dir is None:
            self.autoencoder = build_autoencoder_kl(**settings)
        else:
            autoencoder = load_autoencoder_kl(pretrained_dir)
            for key in self.ARCHITECTURE:
                theirs = autoencoder.config.get(key)
                theirs = tuple(theirs) if isinstance(theirs, (list, tuple)) else theirs
                if theirs != settings[key]:
                    raise ValueError(f"LatentAutoencoder: pretrained_dir {pretrained_dir!r} has {key}={theirs}, the "
                                     f"arguments say {key}={settings[key]}: give the directory's architecture")
            autoencoder.register_to_config(sample_size=sample_size)
            self.autoencoder = autoencoder
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.sample_size = sample_size

    @property
    def config(self) -> Any:
        """The diffusers config of :attr:`autoencoder` (``scaling_factor``, ``latent_channels`` ...)."""
        return self.autoencoder.config

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, posterior mean, KL per sample); the latent is a posterior sample in training mode, the
        posterior mean otherwise."""
        dist = self.autoencoder.encode(x).latent_dist
        z = dist.sample() if self.training else dist.mode()
        return self.autoencoder.decode(z).sample, dist.mean, dist.kl()

    def extra_repr(self) -> str:
        f = 2 ** (len(self.autoencoder.config.block_out_channels) - 1)
        return f"in_channels={self.in_channels}, latent_channels={self.latent_channels}, " \
            f"sample_size={self.sample_size}, downsampling={f}"


def load_autoencoder_kl(local_dir: str | Path) -> AutoencoderKL:
    """Load an ``AutoencoderKL`` saved with ``save_pretrained`` from a LOCAL directory (never the hub)."""
    path = Path(local_dir)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"load_autoencoder_kl: no AutoencoderKL (config.json) in local directory {path}")
    return AutoencoderKL.from_pretrained(str(path), local_files_only=True)


def encode_latents(vae: AutoencoderKL, images: Tensor, sample: str = "mode", generator: torch.Generator | None = None
                   ) -> Tensor:
    """Map images in ``[-1, 1]`` to SCALED latents ``z = scaling_factor * E(x)``.

    Args:
        sample: ``"mode"`` (posterior mean, deterministic) or ``"sample"``.

    Shapes:
        images: ``[B, 3, H, W]`` -> ``[B, C, H/f, W/f]``.
    """
    dist = vae.encode(images).latent_dist
    if sample == "mode":
        z = dist.mode()
    elif sample == "sample":
        z = dist.sample(generator)
    else:
        raise ValueError(f"encode_latents: sample must be 'mode' or 'sample', got {sample!r}")
    return z * vae.config.scaling_factor


def decode_latents(vae: AutoencoderKL, latents: Tensor) -> Tensor:
    """Inverse of :func:`encode_latents`: scaled latents -> images in (about) ``[-1, 1]``."""
    return vae.decode(latents / vae.config.scaling_factor).sample


def predict_x0(scheduler: SchedulerMixin, z_t: Tensor, noise_pred: Tensor, timesteps: Tensor) -> Tensor:
    """One-step estimate :math:`\\hat z_0 = (z_t - \\sqrt{1-\\bar\\alpha_t}\\,\\hat\\epsilon) / \\sqrt{\\bar\\alpha_t}`.

    Exact inverse of ``scheduler.add_noise`` when ``noise_pred`` equals the true noise.

    Shapes:
        z_t, noise_pred: ``[B, C, h, w]``; timesteps: ``[B]`` int64.
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(device=z_t.device, dtype=z_t.dtype)
    a = alphas_cumprod[timesteps.to(z_t.device)].view(-1, *([1] * (z_t.dim() - 1)))
    return (z_t - (1 - a).sqrt() * noise_pred) / a.sqrt()


def contrastive_consistency_loss(
    x_gen: Tensor,
    x_real: Tensor,
    z_gen: Tensor,
    z_real: Tensor,
    labels: Tensor,
    margin: float = 1.0,
    pairing: Pairing = "triplet",
    mask: Tensor | None = None,
) -> Tensor:
    """Contrastive consistency loss of eq. (2), averaged over the anchors that take part.

    .. math::
        \\mathcal{L}_{con} = \\sum_i \\max[0,\\; m - d(x_i, x_j)^2 + d(z_i, z_j)^2]

    The paper names :math:`x_i, x_j` the high-level features of a generated and a real sample and
    :math:`z_i, z_j` their low-dimensional latent features, :math:`d` the Euclidean distance, :math:`m` the margin,
    but not which samples form the pair. How the samples are obtained during training
    (see ``lightning_modules.ldm.LitLDM``): real sample ``i`` of the batch is encoded to ``z_i`` (VAE latent), noised
    to ``z_t``; the *generated* sample ``i`` is the one-step estimate
    :math:`\\hat z_{0,i} = (z_t - \\sqrt{1-\\bar\\alpha_t}\\epsilon_\\theta(z_t, y_i))/\\sqrt{\\bar\\alpha_t}` decoded by
    the frozen VAE; :math:`x` are features of a FROZEN image encoder (L2-normalised, so ``d^2`` lies in ``[0, 4]``);
    the latent distance is the mean squared difference (squared Euclidean / dimension) so the margin does not depend
    on the latent size. Two readings, chosen by ``pairing``:

    - ``"triplet"`` (default; the literal margin-ranking form of eq. 2): for every generated anchor ``i`` the
      ``+d(z_i, z_j)^2`` term pulls the generated latent towards its OWN real source (``j = i``, same class) and the
      ``-d(x_i, x_j)^2`` term pushes the generated high-level features away from the CLOSEST real sample of ANOTHER
      class in the batch (hardest negative ``j^-``):
      :math:`\\max[0, m - d(\\hat x_i, x_{j^-})^2 + d(\\hat z_i, z_i)^2]`. Anchors whose batch holds no other class are
      left out. Zero when each generated sample reproduces its source latent and lies at least ``sqrt(m)`` from every
      other class in feature space.
    - ``"contrastive"`` (Hadsell-style pair loss): over all generated/real pairs ``(i, j)``: same-source pairs
      (``j = i``) add :math:`d(\\hat x_i, x_i)^2 + d(\\hat z_i, z_i)^2`; different-class pairs add
      :math:`\\max[0, m - d(\\hat x_i, x_j)^2]`; same-class pairs of different sources add nothing.
      Zero when generated features equal the real source's and classes are ``sqrt(m)`` apart.

    Args:
        x_gen, x_real: high-level features of generated / real samples.
        z_gen, z_real: latents of generated / real samples (any trailing shape, flattened).
        labels: class of each real source (the generated sample ``i`` is conditioned on ``labels[i]``).
        margin: ``m``.
        pairing: ``"triplet"`` or ``"contrastive"``.
        mask: optional ``[B]`` bool, anchors to use (e.g. only small timesteps, where the one-step estimate is
            meaningful).

    Shapes:
        x_gen, x_real: ``[B, F]``; z_gen, z_real: ``[B, ...]``; labels: ``[B]`` -> scalar.
    """
    check_choices(contrastive_consistency_loss, locals())
    if margin < 0:
        raise ValueError(f"contrastive_consistency_loss: margin must be >= 0, got {margin}")
    b = x_gen.shape[0]
    if mask is None:
        mask = torch.ones(b, dtype=torch.bool, device=x_gen.device)
    xg = F.normalize(x_gen.flatten(1), dim=1)
    xr = F.normalize(x_real.flatten(1), dim=1)
    dz2 = (z_gen.flatten(1) - z_real.flatten(1)).pow(2).mean(dim=1)  # [B] own-source latent distance
    dx2 = (2 - 2 * xg @ xr.t()).clamp(min=0)  # [B, B] squared distance of unit vectors, generated i vs real j
    other = labels.view(-1, 1) != labels.view(1, -1)  # [B, B] different class
    if pairing == "triplet":
        neg = dx2.masked_fill(~other, float("inf")).min(dim=1).values  # hardest negative per anchor
        valid = mask & other.any(dim=1)
        per = torch.clamp(margin - neg + dz2, min=0)
        per = torch.where(valid, per, torch.zeros_like(per))
    else:
        pos = dx2.diagonal() + dz2
        hinge = torch.clamp(margin - dx2, min=0) * other
        per = pos + hinge.sum(dim=1) / other.sum(dim=1).clamp(min=1)
        valid = mask
        per = torch.where(valid, per, torch.zeros_like(per))
    return per.sum() / valid.sum().clamp(min=1)


def make_generators(seeds: Tensor | list[int]) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per sample so each image depends only on its own seed."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def make_sampling_scheduler(train_scheduler: DDPMScheduler, sampler: str = "ddim") -> SchedulerMixin:
    """A fresh sampling scheduler with the training noise schedule: ``"ddim"`` (eta 0) or ``"ddpm"``."""
    if sampler == "ddim":
        return DDIMScheduler.from_config(train_scheduler.config)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(train_scheduler.config)
    raise ValueError(f"make_sampling_scheduler: sampler must be 'ddim' or 'ddpm', got {sampler!r}")


@torch.no_grad()
def sample_latents(
    net: ConditionalLatentUNet,
    scheduler: SchedulerMixin,
    labels: Tensor,
    seeds: Tensor | list[int],
    num_inference_steps: int = 50,
    guidance_scale: float = 2.0,
) -> Tensor:
    """Reverse diffusion with classifier-free guidance.

    :math:`\\hat\\epsilon = \\epsilon_\\theta(z_t, \\varnothing) + s\\,(\\epsilon_\\theta(z_t, y) - \\epsilon_\\theta(z_t,
    \\varnothing))`; ``s = 1`` is plain conditional sampling (one UNet call per step), ``s = 0`` unconditional.
    The initial noise and any DDPM step noise come from one generator per seed, so an image depends only on its
    (label, seed, steps, guidance) and not on the batch it was generated in.

    Args:
        scheduler: a ``DDIMScheduler`` or ``DDPMScheduler`` (its timesteps are reset here).

    Shapes:
        labels: ``[B]`` int64 -> latents ``[B, C, h, w]``.
    """
    num_train = scheduler.config.num_train_timesteps
    if not 1 <= num_inference_steps <= num_train:
        raise ValueError(f"sample_latents: num_inference_steps must be in [1, {num_train}], got {num_inference_steps}")
    if not 0.0 <= guidance_scale <= 50.0:
        raise ValueError(f"sample_latents: guidance_scale must be in [0, 50], got {guidance_scale}")
    if len(seeds) != labels.shape[0]:
        raise ValueError(f"sample_latents: {len(seeds)} seeds for {labels.shape[0]} labels")
    device = labels.device
    dtype = next(net.parameters()).dtype
    shape = (labels.shape[0], net.latent_channels, net.sample_size, net.sample_size)
    generators = make_generators(seeds)
    latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
    latents = latents * scheduler.init_noise_sigma
    scheduler.set_timesteps(num_inference_steps, device=device)
    null = torch.full_like(labels, net.null_label)
    use_cfg = guidance_scale != 1.0
    step_kwargs = {"generator": generators} if isinstance(scheduler, DDPMScheduler) else {"eta": 0.0}
    for t in scheduler.timesteps:
        z_in = scheduler.scale_model_input(latents, t)
        if use_cfg:
            eps_c, eps_u = net(torch.cat([z_in, z_in]), t, torch.cat([labels, null])).chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        else:
            eps = net(z_in, t, labels)
        latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
    return latents
