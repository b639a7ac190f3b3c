r"""Graph encoder of HGCL (§IV.E, eq. 11) on batched dense graphs with torch-geometric layers.

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*,
§IV.E, eq. (11):

.. math::
    v_i^k = \sigma\Big(\sum_{j \in \mathcal{N}(i)} W_k v_j^{k-1} + b_k\Big)

i.e. sum aggregation over neighbours. ``gnn="graphconv"`` (the default) is
:class:`torch_geometric.nn.DenseGraphConv` with ``aggr="add"``: eq. (11) plus a root term
:math:`W_{root} v_i^{k-1}` (so a node keeps its own feature, which eq. 11 only does if ``N(i)`` includes
``i``). ``"gin"`` (:class:`~torch_geometric.nn.DenseGINConv`, sum aggregation with a self term and an MLP),
``"gcn"`` (:class:`~torch_geometric.nn.DenseGCNConv`, symmetric-normalised with self-loops) and ``"sage"``
(:class:`~torch_geometric.nn.DenseSAGEConv`, mean aggregation) are alternatives. The whole batch goes
through each layer at once (``[B, N, d]`` with ``[B, N, N]`` adjacency); outputs are multiplied by the node
mask after every layer, so padded nodes stay zero. Sum aggregation lets feature scales grow with the node
degree (about 10 on MOSI-sized graphs), so by default (``norm="layernorm"``) every layer output is
layer-normalised per node (``"none"`` keeps eq. 11 bare).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

from torch import Tensor, nn
from torch_geometric.nn import DenseGCNConv, DenseGINConv, DenseGraphConv, DenseSAGEConv

from common.choices import check_choices

from .attention import Activation, make_activation

GNNType = Literal["graphconv", "gcn", "gin", "sage"]
GNN_TYPES = get_args(GNNType)

#: How :class:`~models.hgcl.hgcl.HGCL` takes its GNN encoder: a factory called with the model's width ``dim``
#: (e.g. ``functools.partial(GNNEncoder, num_layers=3)``; in YAML ``class_path: models.hgcl.GNNEncoder`` and the
#: ``init_args`` other than ``dim``).
GNNFactory = Callable[[int], nn.Module]


class GNNEncoder(nn.Module):
    """Stack of dense PyG convolutions implementing eq. (11).

    Args:
        dim: input/hidden/output width ``d``.
        num_layers: number of message-passing layers (>= 1).
        gnn: ``"graphconv" | "gcn" | "gin" | "sage"``.
        activation: ``sigma`` of eq. (11), applied after every layer.
        dropout: dropout after each activation.
        residual: ``"add"`` (``h <- h + layer(h)``) or ``"none"``.
        norm: ``"layernorm"`` (per-node LayerNorm after each layer) or ``"none"``.

    Shapes:
        - x: ``[B, N, d]``, adj: ``[B, N, N]``, mask: ``[B, N]`` bool
        - output: ``[B, N, d]`` (zeros on padded nodes)
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 2,
        gnn: GNNType = "graphconv",
        activation: Activation = "relu",
        dropout: float = 0.1,
        residual: Literal["add", "none"] = "add",
        norm: Literal["layernorm", "none"] = "layernorm",
    ) -> None:
        super().__init__()
        check_choices(GNNEncoder, locals())
        if num_layers < 1 or dim < 1:
            raise ValueError(f"GNNEncoder: num_layers and dim must be >= 1, got {num_layers}, {dim}")
        self.dim, self.num_layers, self.gnn, self.residual, self.norm = dim, num_layers, gnn, residual, norm
        self.norms = nn.ModuleList(
            nn.LayerNorm(dim) if norm == "layernorm" else nn.Identity() for _ in range(num_layers)
        )
        self.convs = nn.ModuleList(self._conv(dim) for _ in range(num_layers))
        self.act = make_activation(activation, "GNNEncoder")
        self.drop = nn.Dropout(dropout)
        self.reset_parameters()

    def _conv(self, dim: int) -> nn.Module:
        if self.gnn == "graphconv":
            return DenseGraphConv(dim, dim, aggr="add")
        if self.gnn == "gcn":
            return DenseGCNConv(dim, dim)
        if self.gnn == "gin":
            return DenseGINConv(
                nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)), train_eps=True
            )
        return DenseSAGEConv(dim, dim)

    def reset_parameters(self) -> None:
        for conv in self.convs:
            conv.reset_parameters()
        for norm in self.norms:
            if isinstance(norm, nn.LayerNorm):
                norm.reset_parameters()

    def forward(self, x: Tensor, adj: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        h = x * m
        for conv, norm in zip(self.convs, self.norms):
            out = self.drop(self.act(norm(conv(h, adj, mask))))
            h = (h + out if self.residual == "add" else out) * m
        return h

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_layers={self.num_layers}, gnn={self.gnn!r}, residual={self.residual!r}, "
            f"norm={self.norm!r}"
        )
