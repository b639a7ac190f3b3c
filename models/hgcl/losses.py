r"""Losses and heads of HGCL: local graph loss (eqs. 3-8) and cross-level InfoNCE (eqs. 12-14).

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*,
§IV.C and §IV.E.

Local loss (eq. 6): :math:`\mathcal{L}_{local} = \mathcal{L}_{(L,n)} + \alpha\,\mathcal{L}_{(L,g)}` with

.. math::
    z_L = \mathrm{AvgPool}(H_L),\; z'_L = \mathrm{AvgPool}(H'_L) \quad (3, 4) \qquad
    V_{(L,r)} = \mathrm{Decoder}(H_L) \quad (5)

.. math::
    \mathcal{L}_{(L,n)} = \frac{1}{N}\sum_i \frac{\|V_L^i - V_{(L,r)}^i\|^2}{\|V_L^i\|} \quad (7) \qquad
    \mathcal{L}_{(L,g)} = \frac{1}{N}\sum_i \|z_L^i - z_L^{\prime i}\| \quad (8)

Norms are Frobenius norms over the valid nodes of graph ``i`` (padded nodes never count); ``||V||`` is
guarded by ``eps``. The reconstruction target ``V_L`` is detached (stop-gradient): eq. (7) divides a
squared norm by a plain norm, so a trainable target could lower the loss just by shrinking the features.

InfoNCE (eq. 14) on the projected readouts (eqs. 12-13), cosine similarity, temperature ``tau``:

.. math::
    \zeta = -\frac{1}{N}\sum_i \log \frac{\exp(\mathrm{sim}(z_i^L, z_i^G)/\tau)}
        {\sum_j \exp(\mathrm{sim}(z_i^L, z_j^G)/\tau)}

``direction="local_to_global"`` is eq. (14) verbatim; ``"symmetric"`` averages it with the
global-to-local term (same positives, in-batch negatives in both directions).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.choices import check_choices
from common.tensors import masked_mean

from .attention import Activation, make_activation

InfoNCEDirection = Literal["symmetric", "local_to_global"]
INFONCE = get_args(InfoNCEDirection)


def masked_readout(h: Tensor, mask: Tensor) -> Tensor:
    """Global average pooling over valid nodes (ALLOUTPUT of eqs. 3-4).

    Shapes:
        - h: ``[B, N, d]``, mask: ``[B, N]`` bool
        - output: ``[B, d]``
    """
    return masked_mean(h, mask)


def node_reconstruction_loss(v: Tensor, v_rec: Tensor, mask: Tensor, eps: float = 1e-6) -> Tensor:
    """Eq. (7): mean over graphs of ``||V - V_r||^2 / ||V||`` over valid nodes (``V`` is detached).

    Shapes:
        - v, v_rec: ``[B, N, d]``, mask: ``[B, N]`` bool
        - output: scalar
    """
    m = mask.unsqueeze(-1).to(v.dtype)
    target = v.detach()
    sq = ((target - v_rec) * m).pow(2).sum(dim=(1, 2))
    norm = (target * m).pow(2).sum(dim=(1, 2)).sqrt()
    return (sq / (norm + eps)).mean()


def graph_distance_loss(z: Tensor, z_aug: Tensor, eps: float = 1e-8) -> Tensor:
    """Eq. (8): mean Euclidean distance between original and augmented readouts (smooth at 0).

    Shapes:
        - z, z_aug: ``[B, d]``
        - output: scalar
    """
    return ((z - z_aug).pow(2).sum(-1) + eps).sqrt().mean()


def info_nce(z_local: Tensor, z_global: Tensor, tau: float = 0.2, direction: InfoNCEDirection = "symmetric") -> Tensor:
    """Eq. (14) with cosine similarity and in-batch negatives.

    Shapes:
        - z_local, z_global: ``[B, p]`` (row ``i`` of both from the same sample)
        - output: scalar
    """
    check_choices(info_nce, locals())
    logits = F.normalize(z_local, dim=-1) @ F.normalize(z_global, dim=-1).t() / tau  # [B, B]
    target = torch.arange(logits.size(0), device=logits.device)
    loss = F.cross_entropy(logits, target)
    if direction == "symmetric":
        loss = 0.5 * (loss + F.cross_entropy(logits.t(), target))
    return loss


class ProjectionHead(nn.Module):
    """Non-linear projection MLP of eqs. (12)-(13): ``Linear -> act -> Linear``.

    Args:
        dim: input width ``d``. out_dim: projection width ``p``. activation: activation name.

    Shapes:
        - input ``[B, d]`` -> output ``[B, p]``
    """

    def __init__(self, dim: int, out_dim: int, activation: Activation = "relu") -> None:
        super().__init__()
        if dim < 1 or out_dim < 1:
            raise ValueError(f"ProjectionHead: dim and out_dim must be >= 1, got {dim}, {out_dim}")
        self.dim, self.out_dim = dim, out_dim
        self.fc1 = nn.Linear(dim, dim)
        self.act = make_activation(activation, "ProjectionHead")
        self.fc2 = nn.Linear(dim, out_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def extra_repr(self) -> str:
        return f"{self.dim} -> {self.out_dim}"


class LocalGraphLoss(nn.Module):
    """Local graph contrastive loss (eqs. 3-8) with its fully-connected node decoder (eq. 5).

    Args:
        dim: node width ``d``.
        alpha: weight of the graph-level term (eq. 6).
        eps: guard on ``||V||`` in eq. (7).

    Shapes:
        - v: ``[B, N, d]`` original node features ``V_L``; h: ``[B, N, d]`` encoded ``H_L``;
          mask: ``[B, N]``; z, z_aug: ``[B, d]`` readouts of the original and augmented graph (or ``None``)
        - output: ``(loss, node_term, graph_term)`` scalars (``graph_term`` is 0 without ``z_aug``)
    """

    def __init__(self, dim: int, alpha: float = 1.0, eps: float = 1e-6) -> None:
        super().__init__()
        if alpha < 0 or eps <= 0:
            raise ValueError(f"LocalGraphLoss: need alpha >= 0 and eps > 0, got {alpha}, {eps}")
        self.dim, self.alpha, self.eps = dim, alpha, eps
        self.decoder = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.decoder.reset_parameters()

    def forward(
        self, v: Tensor, h: Tensor, mask: Tensor, z: Tensor, z_aug: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        node = node_reconstruction_loss(v, self.decoder(h), mask, self.eps)
        graph = graph_distance_loss(z, z_aug) if z_aug is not None else node.new_zeros(())
        return node + self.alpha * graph, node.detach(), graph.detach()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, alpha={self.alpha}, eps={self.eps}"
