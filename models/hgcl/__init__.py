"""HGCL: hierarchical graph contrastive learning for multimodal sentiment (CMU-MOSI / CMU-MOSEI).

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*
(§III-IV, eqs. 1-14). :class:`HGCL` is the model; the building blocks are exported for reuse and tests.
"""

from .attention import (
    AttentionBlock,
    CrossModalAttention,
    FusionEncoder,
    ModalityProjection,
    TextGuidedAttention,
)
from .augment import GraphAugment
from .dvae import DVAECodebook, nearest_codeword, perplexity
from .encoder import GNNEncoder, GNNFactory
from .graphs import MultimodalGraphBuilder
from .hgcl import HGCL
from .inputs import SegmentPool, TextEncoder
from .losses import (
    LocalGraphLoss,
    ProjectionHead,
    graph_distance_loss,
    info_nce,
    masked_readout,
    node_reconstruction_loss,
)

__all__ = [
    "HGCL",
    "AttentionBlock",
    "CrossModalAttention",
    "DVAECodebook",
    "FusionEncoder",
    "GNNEncoder",
    "GNNFactory",
    "GraphAugment",
    "LocalGraphLoss",
    "ModalityProjection",
    "MultimodalGraphBuilder",
    "ProjectionHead",
    "SegmentPool",
    "TextEncoder",
    "TextGuidedAttention",
    "graph_distance_loss",
    "info_nce",
    "masked_readout",
    "nearest_codeword",
    "node_reconstruction_loss",
    "perplexity",
]
