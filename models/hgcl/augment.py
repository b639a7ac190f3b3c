r"""Automatic graph data augmentation of HGCL (§IV.D, eqs. 9-10).

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*,
§IV.D. Node features are perturbed with Gaussian noise (eqs. 9-10),

.. math::
    V_L^{i\prime} = V_L^i + \delta, \qquad \delta \sim \mathcal{N}(0, \sigma^2 I_d),

and edges are randomly added (a non-adjacent pair ``a_ij = 0`` becomes 1 when ``u < p_add``,
``u ~ U[0, 1]``, with ``a_ji`` set too) and deleted (each existing edge independently with ``p_drop``, the
reading we take of the paper's "addition and deletion of edges"). Both edge operations draw one uniform
number per unordered pair, so the result stays symmetric. Padded nodes get neither noise nor edges, no
self-loops are added, and the module is the identity in eval mode.

Speed: the edge decisions need one uniform number per node pair (``B x N x N``, 720k for a MOSI batch), and
drawing float32 uniforms dominated the augmentation time on CPU. the module draws 64 random bits
per four pairs instead (:func:`uniform16`: ``int64`` split into ``int16``) and compares them with a 16-bit
threshold (:func:`bernoulli_from`), so every probability is applied with a resolution of ``2^-16``
(e.g. ``p_add=0.01`` acts as ``655/65536``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def uniform16(shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """Uniform random ``int16`` values (all 65536 equally likely), four per 64-bit draw.

    Shapes:
        - output: ``shape`` int16
    """
    numel = 1
    for s in shape:
        numel *= s
    bits = torch.randint(-(2**63), 2**63 - 1, ((numel + 3) // 4,), dtype=torch.int64, device=device)
    return bits.view(torch.int16)[:numel].view(shape)


def bernoulli_from(u16: Tensor, p: float) -> Tensor:
    """``True`` with probability ``round(p * 2^16) / 2^16`` for each uniform ``int16`` in ``u16``."""
    threshold = round(p * 65536) - 32768
    if threshold > 32767:
        return torch.ones_like(u16, dtype=torch.bool)
    return u16 < threshold


class GraphAugment(nn.Module):
    """Gaussian node noise plus symmetric random edge addition/deletion (eqs. 9-10), training only.

    Args:
        sigma: standard deviation of the node-feature noise ``delta`` (eq. 10).
        p_add: probability of adding an edge between a non-adjacent pair of valid nodes.
        p_drop: probability of deleting an existing edge.

    Shapes:
        - x: ``[B, N, d]``, adj: ``[B, N, N]`` (0/1, symmetric), mask: ``[B, N]`` bool
        - output: ``(x' [B, N, d], adj' [B, N, N])``
    """

    def __init__(self, sigma: float = 0.1, p_add: float = 0.01, p_drop: float = 0.1) -> None:
        super().__init__()
        if sigma < 0:
            raise ValueError(f"GraphAugment: sigma must be >= 0, got {sigma}")
        for name, p in (("p_add", p_add), ("p_drop", p_drop)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"GraphAugment: {name} must be in [0, 1], got {p}")
        self.sigma, self.p_add, self.p_drop = sigma, p_add, p_drop
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """No parameters."""

    def forward(self, x: Tensor, adj: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return x, adj
        B, N, _ = x.shape
        m = mask.bool()
        x = x + self.sigma * torch.randn_like(x) * m.unsqueeze(-1).to(x.dtype)
        # one uniform draw per pair; a pair flips (edge -> dropped with p_drop, non-edge -> added with p_add)
        # when the draw of its upper-triangle entry says so, mirrored -> symmetric
        edge = adj > 0
        u = uniform16((B, N, N), x.device)
        flip = (edge & bernoulli_from(u, self.p_drop)) | (~edge & bernoulli_from(u, self.p_add))
        upper = torch.ones(N, N, dtype=torch.bool, device=x.device).triu_(diagonal=1)
        flip &= m.unsqueeze(2) & m.unsqueeze(1) & upper
        flip = flip | flip.transpose(1, 2)
        return x, (edge ^ flip).to(adj.dtype)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, p_add={self.p_add}, p_drop={self.p_drop}"
