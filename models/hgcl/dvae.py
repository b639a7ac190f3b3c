r"""dVAE codebooks of HGCL (§IV.B(1)) and nearest-codeword quantisation (§IV.B(3)).

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*,
§IV.B(1): "the discrete variational autoencoder (dVAE) ... takes the ... sequence features of all samples in
the training set as input and ... obtains the codebook :math:`CB_a \in R^{K_a \times d_a}`"; §IV.B(3):
:math:`id_i = \arg\min_k \|CB^k - x^i\|` maps every step to its nearest codeword.

Training choice (the paper gives no schedule): the codebooks are trained **jointly**, as an auxiliary loss of
the HGCL model, on the training batches' projected sequence features, **detached** so that the dVAE does not
pull the projections (``HGCL(lambda_dvae=...)``, optional ``dvae_warmup_steps``). One step of the dVAE:

.. math::
    \ell = E(x) \in \mathbb{R}^K,\quad y = \mathrm{GumbelSoftmax}_{\tau}(\ell)\ \text{(straight-through)},
    \quad z = y\,CB,\quad \hat x = D(z)

.. math::
    \mathcal{L}_{dVAE} = \|\hat x - x\|^2 + \|z - x\|^2
        + \beta\,\mathrm{KL}\big(\mathrm{softmax}(\ell)\,\|\,\mathcal{U}(K)\big)

averaged over valid steps. The middle term (a VQ-style codebook term) keeps the codewords in the feature
space, which §IV.B(3) needs because it compares codewords and features by Euclidean distance. Codes unused
(neither sampled by the encoder nor nearest to any feature) for ``dead_code_steps`` training steps are
re-initialised from random valid features of the current batch; the whole codebook is initialised from the
first training batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import Activation, make_activation


def nearest_codeword(x: Tensor, codebook: Tensor) -> tuple[Tensor, Tensor]:
    r"""Nearest codeword of every vector (§IV.B(3)): :math:`id = \arg\min_k \|CB^k - x\|_2`.

    Uses :math:`\|x\|^2 - 2 x\cdot c + \|c\|^2` (no ``[.., K, d]`` intermediate).

    Shapes:
        - x: ``[..., d]``, codebook: ``[K, d]``
        - output: ``(ids [...] int64, codewords [..., d])``
    """
    flat = x.reshape(-1, x.size(-1))
    dist = (
        flat.pow(2).sum(-1, keepdim=True) - 2.0 * flat @ codebook.t() + codebook.pow(2).sum(-1).unsqueeze(0)
    )
    ids = dist.argmin(dim=-1)
    return ids.view(x.shape[:-1]), codebook[ids].view(x.shape)


def perplexity(ids: Tensor, mask: Tensor, num_codes: int) -> Tensor:
    """Codebook usage perplexity ``exp(H(p))`` of the code histogram over valid positions (1 ... K)."""
    counts = torch.bincount(ids[mask.bool()].flatten(), minlength=num_codes).float()
    p = counts / counts.sum().clamp(min=1.0)
    return torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())


class DVAECodebook(nn.Module):
    """One modality's dVAE: encoder -> Gumbel-softmax (straight-through) -> codebook mixture -> decoder.

    Args:
        dim: feature width ``d`` (codewords have the same width).
        num_codes: codebook size ``K``.
        temperature: Gumbel-softmax temperature ``tau``.
        kl_weight: ``beta``, weight of the KL to the uniform prior.
        dead_code_steps: re-initialise a code after this many training steps without use (0 disables).
        activation: activation of the encoder/decoder MLPs.

    Shapes:
        - x: ``[B, L, d]``, mask: ``[B, L]`` bool
        - :meth:`loss` output: ``(loss scalar, perplexity scalar)``
        - :meth:`quantize` output: ``(ids [B, L], codewords [B, L, d])``
    """

    def __init__(
        self,
        dim: int,
        num_codes: int = 64,
        temperature: float = 1.0,
        kl_weight: float = 0.1,
        dead_code_steps: int = 100,
        activation: Activation = "gelu",
    ) -> None:
        super().__init__()
        if dim < 1 or num_codes < 2:
            raise ValueError(f"DVAECodebook: need dim >= 1 and num_codes >= 2, got {dim}, {num_codes}")
        if temperature <= 0:
            raise ValueError(f"DVAECodebook: temperature must be > 0, got {temperature}")
        if kl_weight < 0 or dead_code_steps < 0:
            raise ValueError(
                f"DVAECodebook: kl_weight and dead_code_steps must be >= 0, got {kl_weight}, {dead_code_steps}"
            )
        self.dim, self.num_codes, self.temperature = dim, num_codes, temperature
        self.kl_weight, self.dead_code_steps = kl_weight, dead_code_steps
        self.encoder = nn.Sequential(
            nn.Linear(dim, dim), make_activation(activation, "DVAECodebook"), nn.Linear(dim, num_codes)
        )
        self.codebook = nn.Parameter(torch.empty(num_codes, dim))
        self.decoder = nn.Sequential(
            nn.Linear(dim, dim), make_activation(activation, "DVAECodebook"), nn.Linear(dim, dim)
        )
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("used", torch.zeros(num_codes, dtype=torch.bool), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.encoder[0], self.encoder[2], self.decoder[0], self.decoder[2]):
            lin.reset_parameters()
        nn.init.normal_(self.codebook, std=1.0)
        self.steps_unused.zero_()
        self.initialized.fill_(False)
        self.used.zero_()

    @torch.no_grad()
    def _reinit(self, codes: Tensor, feats: Tensor) -> None:
        """Copy random rows of ``feats`` [M, d] into the codebook rows selected by the bool ``codes`` [K]."""
        n = int(codes.sum())
        if n == 0 or feats.size(0) == 0:
            return
        pick = torch.randint(feats.size(0), (n,), device=feats.device)
        self.codebook.data[codes] = feats[pick].to(self.codebook.dtype)
        self.steps_unused[codes] = 0

    @torch.no_grad()
    def update_codes(self, x: Tensor, mask: Tensor) -> None:
        """Codebook maintenance; call once per training step **before** the codebook is used.

        Initialises the codebook from random valid rows of ``x`` on the first call, then counts the steps
        each code went unused (usage recorded by :meth:`loss` and :meth:`quantize` since the previous call)
        and re-initialises codes unused for ``dead_code_steps`` steps from random valid rows of ``x``.

        Shapes:
            - x: ``[B, L, d]``, mask: ``[B, L]`` bool
        """
        feats = x[mask.bool()].detach()
        if not bool(self.initialized):
            self._reinit(torch.ones(self.num_codes, dtype=torch.bool, device=x.device), feats)
            self.initialized.fill_(feats.size(0) > 0)
        elif self.dead_code_steps > 0:
            self.steps_unused.add_(1).masked_fill_(self.used, 0)
            self._reinit(self.steps_unused >= self.dead_code_steps, feats)
        self.used.zero_()

    def quantize(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Nearest codeword per step (§IV.B(3)); see :func:`nearest_codeword`. Records usage in training."""
        ids, codes = nearest_codeword(x, self.codebook)
        if self.training and mask is not None:
            with torch.no_grad():
                self.used |= torch.bincount(ids[mask.bool()].flatten(), minlength=self.num_codes) > 0
        return ids, codes

    def loss(self, x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """dVAE loss averaged over the valid steps of ``x`` (detach ``x`` first to keep it off the projection).

        Returns:
            ``(loss, perplexity)``: scalar loss and the usage perplexity of the sampled codes.
        """
        feats = x[mask.bool()]  # [M, d] valid steps only
        if feats.size(0) == 0:
            zero = self.codebook.sum() * 0.0
            return zero, zero.detach() + 1.0
        logits = self.encoder(feats)  # [M, K]
        if self.training:
            y = F.gumbel_softmax(logits, tau=self.temperature, hard=True)
        else:
            y = F.one_hot(logits.argmax(-1), self.num_codes).to(logits.dtype)
        z = y @ self.codebook  # [M, d]
        recon = self.decoder(z)
        q = torch.softmax(logits, dim=-1)
        kl = (q * torch.log(q.clamp(min=1e-12) * self.num_codes)).sum(-1).mean()
        loss = F.mse_loss(recon, feats) + F.mse_loss(z, feats) + self.kl_weight * kl
        sampled = y.detach().argmax(-1)
        if self.training:
            self.used |= torch.bincount(sampled, minlength=self.num_codes) > 0
        ppl = perplexity(sampled, torch.ones_like(sampled, dtype=torch.bool), self.num_codes)
        return loss, ppl

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_codes={self.num_codes}, temperature={self.temperature}, "
            f"kl_weight={self.kl_weight}, dead_code_steps={self.dead_code_steps}"
        )
