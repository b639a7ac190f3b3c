r"""Vision-centred multimodal graph construction of HGCL (§IV.B(2)-(3), Fig. 3).

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*,
§IV.B(2): "edges are constructed with facial expression features as the core. If the nodes come from the
same modality, they are directly connected; if they come from different modalities, such as audio and facial
expressions, or text and facial expressions, they are connected according to specific criteria". The local
graph :math:`G_L = (A_L, V_L)` uses the projected step features as nodes; the global graph
:math:`G_G = (A_G, V_G)` (§IV.B(3)) applies the same construction to the nearest-codeword sequences.

Representation (PyG dense style): nodes ``V = [X_t; X_a; X_v]`` of shape ``[B, N, d]`` with
``N = N_t + N_a + N_v``, node mask ``[B, N]`` and a float 0/1 adjacency ``[B, N, N]`` that is symmetric, has
no self-loops and no edge touching a padded node. Temporal positions are ranks among each sample's valid
steps, so any padding pattern works.

Edge criteria (the paper leaves them open; all are config strings):

- ``intra_edges``: ``"window"`` joins same-modality nodes with ``|r_i - r_j| <= window``;
  ``"full"`` joins all same-modality pairs ("directly connected").
- ``cross_edges`` (text/audio node -> vision node):
  ``"topk"``: each text/audio node joins its ``cross_k`` most cosine-similar valid vision nodes;
  ``"threshold"``: joins every vision node with cosine similarity ``>= cross_threshold``;
  ``"cooccur"``: joins the vision nodes whose relative time span ``[r/n, (r+1)/n)`` overlaps its own
  (for aligned data: the vision step at the same index).
- ``text_audio_edges``: ``"none"`` (vision-centred, the default) or ``"same"`` (also join text and audio
  nodes with the ``cross_edges`` criterion).
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import MODALITIES
from common.choices import check_choices

IntraEdges = Literal["window", "full"]
CrossEdges = Literal["topk", "threshold", "cooccur"]
TextAudioEdges = Literal["none", "same"]
INTRA_EDGES = get_args(IntraEdges)
CROSS_EDGES = get_args(CrossEdges)
TEXT_AUDIO_EDGES = get_args(TextAudioEdges)


def _ranks(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Rank of every valid step among its sample's valid steps and the valid counts ``[B, 1]``."""
    m = mask.long()
    return m.cumsum(dim=1) - 1, m.sum(dim=1, keepdim=True)


class MultimodalGraphBuilder(nn.Module):
    """Builds the dense vision-centred multimodal graph of §IV.B (used for both ``G_L`` and ``G_G``).

    Args:
        intra_edges: ``"window" | "full"``.
        window: temporal window for ``intra_edges="window"`` (>= 1).
        cross_edges: ``"topk" | "threshold" | "cooccur"``.
        cross_k: neighbours per text/audio node for ``"topk"``.
        cross_threshold: cosine threshold in [-1, 1] for ``"threshold"``.
        text_audio_edges: ``"none" | "same"``.

    Shapes:
        - feats / masks: dicts ``text|audio|vision`` -> ``[B, N_m, d]`` / ``[B, N_m]`` bool
        - output: ``(V [B, N, d], A [B, N, N] float, mask [B, N] bool)``
    """

    def __init__(
        self,
        intra_edges: IntraEdges = "window",
        window: int = 2,
        cross_edges: CrossEdges = "topk",
        cross_k: int = 3,
        cross_threshold: float = 0.5,
        text_audio_edges: TextAudioEdges = "none",
    ) -> None:
        super().__init__()
        check_choices(MultimodalGraphBuilder, locals())
        if window < 1 or cross_k < 1:
            raise ValueError(
                f"MultimodalGraphBuilder: window and cross_k must be >= 1, got {window}, {cross_k}"
            )
        if not -1.0 <= cross_threshold <= 1.0:
            raise ValueError(
                f"MultimodalGraphBuilder: cross_threshold must be in [-1, 1], got {cross_threshold}"
            )
        self.intra_edges, self.window = intra_edges, window
        self.cross_edges, self.cross_k, self.cross_threshold = cross_edges, cross_k, cross_threshold
        self.text_audio_edges = text_audio_edges
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """No parameters."""

    def intra_block(self, mask: Tensor) -> Tensor:
        """Same-modality adjacency ``[B, n, n]`` (no self-loops, valid pairs only)."""
        pair = mask.unsqueeze(2) & mask.unsqueeze(1)
        if self.intra_edges == "window":
            r, _ = _ranks(mask)
            pair = pair & ((r.unsqueeze(2) - r.unsqueeze(1)).abs() <= self.window)
        eye = torch.eye(mask.size(1), dtype=torch.bool, device=mask.device)
        return pair & ~eye

    def cross_block(self, x_src: Tensor, m_src: Tensor, x_dst: Tensor, m_dst: Tensor) -> Tensor:
        """Directed criterion edges source -> destination ``[B, n_src, n_dst]`` (valid pairs only)."""
        pair = m_src.unsqueeze(2) & m_dst.unsqueeze(1)
        if self.cross_edges == "cooccur":
            rs, ns = _ranks(m_src)
            rd, nd = _ranks(m_dst)
            rs, rd = rs.unsqueeze(2), rd.unsqueeze(1)
            ns, nd = ns.unsqueeze(2), nd.unsqueeze(1)
            # spans [rs/ns, (rs+1)/ns) and [rd/nd, (rd+1)/nd) overlap (integer arithmetic)
            overlap = (rs * nd < (rd + 1) * ns) & (rd * ns < (rs + 1) * nd)
            return pair & overlap
        with torch.no_grad():
            sim = F.normalize(x_src, dim=-1) @ F.normalize(x_dst, dim=-1).transpose(1, 2)  # [B, ns, nd]
        if self.cross_edges == "threshold":
            return pair & (sim >= self.cross_threshold)
        k = min(self.cross_k, x_dst.size(1))
        sim = sim.masked_fill(~pair, float("-inf"))
        top = sim.topk(k, dim=-1).indices
        sel = torch.zeros_like(pair).scatter_(-1, top, True)
        return sel & pair  # drops picks among padded destinations (fewer than k valid ones)

    def base_adjacency(self, masks: dict[str, Tensor]) -> Tensor:
        """Feature-independent edges (intra-modal, and co-occurrence edges for ``cross_edges="cooccur"``).

        They depend on the masks only, so :class:`~models.hgcl.hgcl.HGCL` computes them once per batch and
        shares them between the local and the global graph (pass the result as ``base`` to :meth:`forward`).

        Shapes:
            - masks: ``text|audio|vision`` -> ``[B, N_m]`` bool
            - output: ``[B, N, N]`` bool, symmetric
        """
        masks = {m: masks[m].bool() for m in MODALITIES}
        sizes = [masks[m].size(1) for m in MODALITIES]
        offs = [0, sizes[0], sizes[0] + sizes[1]]
        B, N = masks["text"].size(0), sum(sizes)
        adj = torch.zeros(B, N, N, dtype=torch.bool, device=masks["text"].device)
        for i, m in enumerate(MODALITIES):
            o, n = offs[i], sizes[i]
            adj[:, o : o + n, o : o + n] = self.intra_block(masks[m])
        if self.cross_edges == "cooccur":
            self._add_cross(adj, offs, sizes, None, masks)
        return adj

    def _add_cross(
        self,
        adj: Tensor,
        offs: list[int],
        sizes: list[int],
        feats: dict[str, Tensor] | None,
        masks: dict[str, Tensor],
    ) -> None:
        """Adds the text/audio -> vision criterion edges (and text-audio with ``"same"``) in both directions."""
        nta, ov = sizes[0] + sizes[1], offs[2]
        get = (lambda m: feats[m]) if feats is not None else (lambda m: masks[m].unsqueeze(-1).float())
        if self.cross_edges == "cooccur":  # ranks are per modality: one call each
            blk = torch.cat(
                [
                    self.cross_block(get(m), masks[m], get("vision"), masks["vision"])
                    for m in ("text", "audio")
                ],
                dim=1,
            )
        else:  # similarity criteria: one call for both source modalities
            src = torch.cat([get("text"), get("audio")], dim=1)
            src_mask = torch.cat([masks["text"], masks["audio"]], dim=1)
            blk = self.cross_block(src, src_mask, get("vision"), masks["vision"])  # [B, Nt + Na, Nv]
        adj[:, :nta, ov:] |= blk
        adj[:, ov:, :nta] |= blk.transpose(1, 2)
        if self.text_audio_edges == "same":
            nt, na = sizes[0], sizes[1]
            blk = self.cross_block(get("text"), masks["text"], get("audio"), masks["audio"])
            adj[:, :nt, nt : nt + na] |= blk
            adj[:, nt : nt + na, :nt] |= blk.transpose(1, 2)

    def forward(
        self, feats: dict[str, Tensor], masks: dict[str, Tensor], base: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        for m in MODALITIES:
            if m not in feats or m not in masks:
                raise ValueError(f"MultimodalGraphBuilder: missing modality {m!r}")
        masks = {m: masks[m].bool() for m in MODALITIES}
        sizes = [feats[m].size(1) for m in MODALITIES]
        offs = [0, sizes[0], sizes[0] + sizes[1]]
        mask = torch.cat([masks[m] for m in MODALITIES], dim=1)
        V = torch.cat([feats[m] for m in MODALITIES], dim=1) * mask.unsqueeze(-1).to(feats["text"].dtype)
        adj = self.base_adjacency(masks) if base is None else base
        if self.cross_edges != "cooccur":
            adj = adj.clone()
            self._add_cross(adj, offs, sizes, feats, masks)
        return V, adj.to(V.dtype), mask

    def extra_repr(self) -> str:
        s = f"intra_edges={self.intra_edges!r}"
        if self.intra_edges == "window":
            s += f", window={self.window}"
        s += f", cross_edges={self.cross_edges!r}"
        if self.cross_edges == "topk":
            s += f", cross_k={self.cross_k}"
        elif self.cross_edges == "threshold":
            s += f", cross_threshold={self.cross_threshold}"
        return s + f", text_audio_edges={self.text_audio_edges!r}"
