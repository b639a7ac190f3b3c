"""Two-branch (global face + local descriptor) Swin Transformer with per-stage gated fusion.

Implements the recognition model of

    JI L X, REN H L, WANG W, et al. Multimodal and multiscale facial expression recognition analysis for learning
    emotions. Journal of Zhengzhou University (Engineering Science), 2026, 47(3): 126-133.
    doi:10.13705/j.issn.1671-6833.2025.06.016 (§2.2, eqs. 3-6)

built on timm's Swin Transformer (Liu et al., ICCV 2021, https://arxiv.org/abs/2103.14030). The gate follows the
"language gate" of LAVT (Yang et al., CVPR 2022), which the paper cites for it.

Architecture (§2.2.1). A *global* Swin encodes the RGB face, a *local* Swin (same architecture, ``in_chans =
descriptor_chans``) encodes the local-descriptor map (a saliency map in the paper, §2.2.2). Both run their four
stages side by side; at the end of every stage ``i`` (1-based in the paper) the two stage outputs
``G_i, L_i in R^{H_i x W_i x C_i}`` are fused:

.. math::

    F_i &= \\mathrm{Conv}_{3\\times3}\\big(\\mathrm{concat}(G_i, \\mathrm{tile}(L_i))\\big)       && (3)\\\\
    S_i &= \\gamma_i(F_i) = \\sigma\\big(\\mathrm{Conv}_{1\\times1}(F_i)\\big)                  && (4)\\\\
    E_i &= S_i \\odot F_i + G_i                                                         && (5)\\\\
    E'_i &= E_i + \\tanh\\big(W_{i,2} * \\mathrm{ReLU}(W_{i,1} * E_i)\\big)                 && \\text{(refinement)}

Readings chosen where the paper is vague (each one is a constructor option where cheap):

* ``tile``: both branches see inputs of the same size and share the architecture, so ``L_i`` and ``G_i`` have the same
  ``H_i x W_i`` and ``tile`` is the identity. If they differ (``local_img_size != img_size``) ``L_i`` is resized to
  ``G_i``'s grid with nearest-neighbour interpolation, i.e. each local token is tiled over the global tokens it
  covers.
* ``gamma_i`` ("a combination of activation functions", eq. 4) is a learnable 1x1 convolution ``C_i -> C_i``
  followed by a sigmoid, so each element of ``F_i`` gets a weight in (0, 1).
* Refinement ("two convolution layers on E_i: a 1x1 convolution followed by ReLU, and tanh", end of §2.2.3): two 1x1
  convolutions ``C_i -> C_i``, ReLU after the first and tanh after the second. ``refine="residual"`` (default) adds
  the result to ``E_i`` (the line above), so the global stream is never squashed through the tanh bottleneck;
  ``refine="replace"`` is the literal reading ``E'_i = tanh(W_2 * ReLU(W_1 * E_i))``; ``refine="none"`` skips it.
* How ``E_i`` is used: ``E'_i`` **replaces** ``G_i`` as the input of the NEXT global stage (its patch merging and
  blocks), and ``E'_4`` goes to the classification head (final LayerNorm, global average pool, linear). The local
  branch continues on its own features ``L_i`` (it never sees the fused map).
* Initialisation (not in the paper): by default (``fusion_init="zero"``) the fusion conv of eq. 3 and the last
  refinement conv start at zero, so at step 0 every ``E'_i = G_i`` and the network equals the global-only Swin; it
  then learns how much of the local branch to admit. ``fusion_init="default"`` uses PyTorch's conv init.
* Gate reading (``gate``). ``"sigmoid"`` (this class's default, kept so that older configs and checkpoints build
  unchanged) is eq. 4 as read above plus the refinement. ``"lavt"`` is the
  gate of LAVT (Yang et al., CVPR 2022, https://arxiv.org/abs/2112.02244, §3.3 "language gate"), which the paper
  cites for it: ``E_i = G_i + tanh(W_2 ReLU(W_1 F_i)) ⊙ F_i`` with bias-free ``W_1, W_2`` (1x1 convs ``C_i -> C_i``)
  and **no** further refinement (it needs ``refine="none"``). The paper's text (a sigmoid-free "combination of
  activation functions", then "a 1x1 conv + ReLU and tanh") fits both readings; the 3-seed ablation
  decided: on CK+48 (3 seeds, 15 epochs, README "Table 2") LAVT's gate beat the sigmoid reading in every seed
  (test accuracy 0.821 ± 0.034 vs 0.741 ± 0.073), so the shipped two-branch configs use ``gate: lavt,
  refine: none``; ``configs/fer/variants/sigmoid_gate.yaml`` is the alternative.
* Initialisation and gradient flow (``fusion_init``). ``"zero"`` zeroes the fusion conv: ``F_i = 0`` at step 0, so
  ``E'_i = G_i`` but the gate (``dL/dS = dL/dE ⊙ F = 0``) and the first refinement conv get no gradient until the
  fusion conv has moved; with the LAVT gate it is worse — ``S = tanh(W_2 ReLU(W_1 0)) = 0`` and ReLU'(0) = 0 leave
  *every* fusion parameter without gradient forever, so that combination is refused. ``"gate_closed"`` keeps the
  fusion conv at PyTorch's default init (``F_i != 0``) and closes the gate instead: the LAVT gate's last conv
  ``W_2`` is zero (``S = 0``), the sigmoid gate's bias is ``-4`` (``S ≈ 0.018``); the last refinement conv is zero.
  The model still starts (almost exactly) as the global-only Swin, and every fusion parameter except those behind
  a zero layer gets a gradient at the first step (those behind it at the second), as in zero-init residual
  branches. ``tests/models/test_swin_two_branch_gate.py`` checks both claims.
* Cross-entropy (eq. 6) is the training loss; it lives in the system (``lightning_modules.fer.LitFER``).

Cost. Eq. 3's dense 3x3 convolution ``2C_i -> C_i`` costs ``18 C_i^2`` multiply-adds per token; over the four
stages that is about 0.55 of a whole Swin-T (depths 2-2-6-2), so the two-branch model needs about 2.55x the training
FLOPs of the global-only Swin at any input size (two Swins alone: 2.0x; shallower Swins pay more, 3.2x at depths
1-1-2-1; ``benchmarks/bench_fer_models.py`` prints both). ``fusion_conv="separable"`` (not in the paper; a cheaper variant for CPU budgets) keeps eq. 3's
input (the concatenation) and its 3x3 receptive field but factorises the convolution into a depthwise 3x3 over the
``2C_i`` channels followed by a pointwise ``2C_i -> C_i`` map (``2 C_i^2 + 18 C_i`` per token, about 1/9).

Ablations: ``fusion="add"`` replaces eq. 3 by ``F_i = G_i + L_i`` (the gate and refinement stay);
``fusion="late"`` has no per-stage fusion and classifies ``concat(pool(norm_g(G_4)), pool(norm_l(L_4)))`` with a
linear layer; ``branches="global"`` is the plain global Swin ("global branch only", Table 2).

Swin stage outputs are NHWC and :class:`StageFusion` works on them directly (NHWC in, NHWC out): the 1x1
convolutions are applied as linear maps over the channel axis (same weights, same state-dict keys as ``nn.Conv2d``)
and only the 3x3 convolution of eq. 3 converts its input to NCHW.

Shapes:
    image: ``[B, 3, H, W]`` (``H = W = img_size``)
    descriptor: ``[B, descriptor_chans, H_l, W_l]`` (``H_l = W_l = local_img_size``, default ``img_size``)
    G_i, L_i, F_i, S_i, E_i: ``[B, H_i, W_i, C_i]`` with ``H_i = H / (patch_size * 2^(i-1))``,
    ``C_i = embed_dim * 2^(i-1)``
    logits: ``[B, num_classes]``
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common.choices import check_choices
from models.pretrained import PretrainedSource, create_timm_model, load_net_checkpoint, resolve_pretrained

log = logging.getLogger(__name__)

Fusion = Literal["tile_concat", "add", "late"]
FUSIONS = get_args(Fusion)
FusionConv = Literal["full", "separable"]
FUSION_CONVS = get_args(FusionConv)
Branches = Literal["two", "global"]
BRANCHES = get_args(Branches)
Refine = Literal["residual", "replace", "none"]
REFINES = get_args(Refine)
Init = Literal["zero", "default", "gate_closed"]
INITS = get_args(Init)
Gate = Literal["sigmoid", "lavt"]
GATES = get_args(Gate)
Stem = Literal["patch", "conv"]
STEMS = get_args(Stem)
#: sigmoid-gate bias of ``fusion_init="gate_closed"``: S = sigmoid(-4) ~ 0.018 at initialisation
CLOSED_GATE_BIAS = -4.0


class StageFusion(nn.Module):
    """Tile-and-concatenate fusion (eq. 3), local gate (eqs. 4-5) and refinement for one Swin stage.

    Args:
        dim: Channel count ``C_i`` of both stage outputs.
        fusion: ``"tile_concat"`` (eq. 3: 3x3 conv over the channel concatenation) or ``"add"`` (``F = G + L``).
        fusion_conv: The 3x3 convolution of eq. 3: ``"full"`` (dense ``2C -> C``, the paper) or ``"separable"``
            (depthwise 3x3 over the ``2C`` concatenated channels, then a pointwise ``2C -> C`` map; ~1/9 the cost).
            Ignored for ``fusion="add"``.
        refine: ``"residual"`` (``E + tanh(W2 ReLU(W1 E))``), ``"replace"`` (``tanh(W2 ReLU(W1 E))``) or ``"none"``.
        init: ``"zero"``: the fusion conv (the pointwise map for ``"separable"``) and (with ``refine="residual"``)
            the last refinement conv start at zero, so ``E'_i = G_i`` at initialisation and the model starts as the global-only Swin, learning how
            much local information to admit (the gradient of the fusion conv is ``S * dL/dE``, non-zero from the
            first step); ``"default"``: PyTorch's default conv initialisation everywhere; ``"gate_closed"``: default
            fusion conv, closed gate (LAVT: zero ``W_2``; sigmoid: bias ``-4``) and zero last refinement conv (see
            "Initialisation and gradient flow" in the module docstring).
        gate: ``"sigmoid"`` (eq. 4: ``S = sigmoid(Conv1x1(F))``) or ``"lavt"`` (``S = tanh(W_2 ReLU(W_1 F))``,
            bias-free, LAVT's language gate; needs ``refine="none"``).

    Shapes:
        g: ``[B, H, W, C]`` global stage output (NHWC, as timm's Swin stages emit it)
        loc: ``[B, H_l, W_l, C]`` local stage output; resized (tiled) to ``H x W`` when the grids differ
        output: ``[B, H, W, C]`` enhanced feature ``E'_i`` (NHWC)
    """

    def __init__(
        self,
        dim: int,
        fusion: Literal["tile_concat", "add"] = "tile_concat",
        refine: Refine = "residual",
        init: Init = "zero",
        fusion_conv: FusionConv = "full",
        gate: Gate = "sigmoid",
    ) -> None:
        super().__init__()
        check_choices(StageFusion, locals())
        if gate == "lavt" and refine != "none":
            raise ValueError(f"StageFusion: gate='lavt' has no refinement after eq. 5 (LAVT): set refine='none', "
                             f"got {refine!r}")
        if gate == "lavt" and init == "zero":
            raise ValueError("StageFusion: init='zero' with gate='lavt' leaves every fusion parameter without "
                             "gradient (F = 0 and S = tanh(0) = 0); use init='gate_closed'")
        self.dim = dim
        self.fusion = fusion
        self.refine = refine
        self.init = init
        self.fusion_conv = fusion_conv if fusion == "tile_concat" else None
        # fuse_conv is the layer whose output is F (zero-initialised with init="zero"): the dense 3x3 conv, or the
        # pointwise 2C -> C map after the depthwise 3x3 (fuse_dw) for the separable variant
        self.fuse_dw: nn.Conv2d | None = None
        self.fuse_conv: nn.Conv2d | None = None
        if self.fusion_conv == "full":
            self.fuse_conv = nn.Conv2d(2 * dim, dim, kernel_size=3, padding=1)
        elif self.fusion_conv == "separable":
            self.fuse_dw = nn.Conv2d(2 * dim, 2 * dim, kernel_size=3, padding=1, groups=2 * dim)
            self.fuse_conv = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.gate_type = gate
        self.gate_conv = nn.Conv2d(dim, dim, kernel_size=1, bias=gate == "sigmoid")
        # LAVT's second gate layer (W_2); None for the sigmoid gate
        self.gate_conv2 = nn.Conv2d(dim, dim, kernel_size=1, bias=False) if gate == "lavt" else None
        # parameter-free probes: forward hooks on them see F_i and S_i (callbacks.fer_diagnostics reads them)
        self.fused_probe = nn.Identity()
        self.gate_probe = nn.Identity()
        if refine != "none":
            self.refine_conv1 = nn.Conv2d(dim, dim, kernel_size=1)
            self.refine_conv2 = nn.Conv2d(dim, dim, kernel_size=1)
        else:
            self.refine_conv1 = self.refine_conv2 = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.fuse_dw, self.fuse_conv, self.gate_conv, self.gate_conv2, self.refine_conv1,
                     self.refine_conv2):
            if conv is not None:
                conv.reset_parameters()
        if self.init == "gate_closed":
            if self.gate_conv2 is not None:
                nn.init.zeros_(self.gate_conv2.weight)
            else:
                nn.init.constant_(self.gate_conv.bias, CLOSED_GATE_BIAS)
            if self.refine == "residual":
                nn.init.zeros_(self.refine_conv2.weight)
                nn.init.zeros_(self.refine_conv2.bias)
        if self.init == "zero":
            zero = [self.fuse_conv] + ([self.refine_conv2] if self.refine == "residual" else [])
            for conv in zero:
                if conv is not None:
                    nn.init.zeros_(conv.weight)
                    nn.init.zeros_(conv.bias)

    # The maths runs on NHWC tensors (the layout timm's Swin stages emit): the 1x1 convolutions are applied as
    # ``F.linear`` over the channel axis with the conv weights viewed as ``[C_out, C_in]`` (the same operation, no
    # layout round trip), and only the 3x3 convolution of eq. 3 sees an NCHW tensor. The public ``fuse`` / ``gate`` /
    # ``refine_features`` take NCHW tensors (thin wrappers around the NHWC code, kept for inspection and tests).

    def _fuse_nhwc(self, g: Tensor, loc: Tensor) -> Tensor:
        """Eq. 3 on NHWC tensors ``[B, H, W, C]``; returns ``F`` as ``[B, H, W, C]``."""
        if loc.shape[1:3] != g.shape[1:3]:  # tile L onto G's grid (identity when the grids match)
            loc = F.interpolate(loc.permute(0, 3, 1, 2), size=g.shape[1:3], mode="nearest").permute(0, 2, 3, 1)
        if self.fuse_conv is None:
            return g + loc
        if self.fuse_dw is not None:
            # separable: the NCHW view of the NHWC concat is channels_last, which oneDNN's depthwise conv takes
            # natively (several times faster than a contiguous NCHW copy here); its output permutes back for free
            x = self.fuse_dw(torch.cat([g, loc], dim=-1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            return _pointwise(self.fuse_conv, x)
        # NHWC concat, then one copy to contiguous NCHW: on CPU (oneDNN) the 3x3 conv and especially its backward
        # on the small late-stage grids are faster on contiguous NCHW than on the channels_last view
        x = torch.cat([g, loc], dim=-1).permute(0, 3, 1, 2).contiguous()
        return self.fuse_conv(x).permute(0, 2, 3, 1)

    def _gate_nhwc(self, f: Tensor) -> Tensor:
        """Eq. 4 on NHWC tensors: ``S = sigmoid(Conv1x1(F))``, or LAVT's ``S = tanh(W_2 ReLU(W_1 F))``."""
        if self.gate_conv2 is not None:
            return torch.tanh(_pointwise(self.gate_conv2, F.relu(_pointwise(self.gate_conv, f))))
        return torch.sigmoid(_pointwise(self.gate_conv, f))

    def _refine_nhwc(self, e: Tensor) -> Tensor:
        """Two-layer refinement of ``E`` on NHWC tensors (1x1 conv + ReLU, 1x1 conv + tanh)."""
        if self.refine_conv1 is None:
            return e
        r = torch.tanh(_pointwise(self.refine_conv2, F.relu(_pointwise(self.refine_conv1, e))))
        return e + r if self.refine == "residual" else r

    def fuse(self, g: Tensor, loc: Tensor) -> Tensor:
        """Eq. 3 on NCHW tensors: ``F = Conv3x3(concat(G, tile(L)))`` (or ``G + tile(L)`` for ``"add"``)."""
        return self._fuse_nhwc(g.permute(0, 2, 3, 1), loc.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def gate(self, f: Tensor) -> Tensor:
        """Eq. 4 on NCHW tensors: ``S = sigmoid(Conv1x1(F))``."""
        return self._gate_nhwc(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def refine_features(self, e: Tensor) -> Tensor:
        """Two-layer refinement of ``E`` on NCHW tensors (1x1 conv + ReLU, 1x1 conv + tanh)."""
        return self._refine_nhwc(e.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward(self, g: Tensor, loc: Tensor) -> Tensor:
        f = self.fused_probe(self._fuse_nhwc(g, loc))
        e = torch.addcmul(g, self.gate_probe(self._gate_nhwc(f)), f)  # eq. 5: E = S * F + G
        return self._refine_nhwc(e)

    def extra_repr(self) -> str:
        conv = f", fusion_conv={self.fusion_conv!r}" if self.fusion_conv else ""
        return (f"dim={self.dim}, fusion={self.fusion!r}{conv}, gate={self.gate_type!r}, refine={self.refine!r}, "
                f"init={self.init!r}")


class ConvStem(nn.Module):
    """Convolutional patch embedding for a timm Swin (``embed_layer``): ``log2(patch_size)`` stride-2 3x3 convolutions
    with BatchNorm and ReLU, a 1x1 projection to ``embed_dim`` and the Swin's LayerNorm, in place of the single
    ``patch_size x patch_size`` stride-``patch_size`` projection.

    Xiao et al., "Early Convolutions Help Transformers See Better", NeurIPS 2021 (https://arxiv.org/abs/2106.14881):
    the same token grid and width, a few percent of the FLOPs, and a transformer that optimises faster and more
    stably from scratch. Not in the learning-emotion paper (a timm Swin with hub weights keeps its patch embedding);
    an option for training from scratch on small grey faces (``TwoBranchSwin(stem="conv")``).

    Widths: ``embed_dim / 2^(k-1)``, ..., ``embed_dim / 2``, ``embed_dim`` for ``k = log2(patch_size)`` convolutions
    (at least 8 channels each).

    Shapes:
        x: ``[B, in_chans, H, W]`` with ``H, W`` multiples of ``patch_size``
        output: ``[B, H / patch_size, W / patch_size, embed_dim]`` (NHWC, as timm's Swin stages take it)
    """

    def __init__(self, img_size: int | tuple[int, int] = 224, patch_size: int | tuple[int, int] = 4,
                 in_chans: int = 3, embed_dim: int = 96, norm_layer: type[nn.Module] | None = None,
                 strict_img_size: bool = True, output_fmt: str = "NHWC", device=None, dtype=None) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = patch_size if isinstance(patch_size, int) else patch_size[0]
        if patch < 2 or patch & (patch - 1) or (not isinstance(patch_size, int) and len(set(patch_size)) != 1):
            raise ValueError(f"ConvStem: patch_size must be a square power of two >= 2, got {patch_size}")
        if output_fmt != "NHWC":
            raise ValueError(f"ConvStem: only NHWC output (timm's Swin), got {output_fmt!r}")
        if size[0] % patch or size[1] % patch:
            raise ValueError(f"ConvStem: img_size {size} is not a multiple of patch_size {patch}")
        self.img_size = size
        self.patch_size = (patch, patch)
        self.grid_size = (size[0] // patch, size[1] // patch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.strict_img_size = strict_img_size
        n = patch.bit_length() - 1
        widths = [max(8, embed_dim >> (n - 1 - i)) for i in range(n)]
        layers: list[nn.Module] = []
        c_in = in_chans
        for width in widths:
            layers += [nn.Conv2d(c_in, width, 3, stride=2, padding=1, bias=False, device=device, dtype=dtype),
                       nn.BatchNorm2d(width, device=device, dtype=dtype), nn.ReLU(inplace=True)]
            c_in = width
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, embed_dim, 1, device=device, dtype=dtype)
        self.norm = norm_layer(embed_dim, device=device, dtype=dtype) if norm_layer else nn.Identity()

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        raise ValueError("ConvStem: the input size is fixed at construction (build the net for the new size)")

    def forward(self, x: Tensor) -> Tensor:
        if self.strict_img_size and tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"ConvStem: input {tuple(x.shape[-2:])} differs from img_size {self.img_size}")
        return self.norm(self.proj(self.convs(x)).permute(0, 2, 3, 1))


class TwoBranchSwin(nn.Module):
    """Global (RGB face) + local (descriptor map) Swin Transformer with per-stage gated fusion (§2.2, eqs. 3-5).

    Args:
        num_classes: Number of emotion classes.
        model_name: timm Swin entry point; it picks the architecture (``swin_base_patch4_window7_224`` builds a
            Swin-B: its ``embed_dim``, ``depths``, ``num_heads``, ``window_size``, ``patch_size``, ``img_size``), and
            ``pretrained`` weights must match it. The six arguments below override its defaults when not ``None``.
        img_size: Side of the square RGB input (``None``: the entry point's).
        local_img_size: Side of the square descriptor input; ``None`` means ``img_size``.
        patch_size: Patch-embedding stride (``None``: the entry point's).
        embed_dim: Channels ``C_1`` of stage 1, doubling at each later stage (``None``: the entry point's).
        depths: Swin blocks per stage (``None``: the entry point's).
        num_heads: Attention heads per stage; ``None`` takes the entry point's, or ``max(1, C_i // 32)`` when
            ``embed_dim`` is given.
        window_size: Attention window side (``None``: the entry point's).
        descriptor_chans: Channels of the descriptor map (1 for a saliency/LBP/energy map).
        fusion: ``"tile_concat"`` (eq. 3, the paper), ``"add"`` or ``"late"`` (ablations, see module docstring).
        fusion_conv: Eq. 3's convolution for ``"tile_concat"``: ``"full"`` (dense 3x3, the paper) or
            ``"separable"`` (depthwise 3x3 + pointwise, ~1/9 the fusion cost; see "Cost" in the module docstring).
        branches: ``"two"`` (the paper) or ``"global"`` (global Swin only, ablation).
        refine: Refinement after eq. 5: ``"residual"``, ``"replace"`` (literal) or ``"none"``.
        fusion_init: ``"zero"`` (fusion starts as the identity on the global stream, see :class:`StageFusion`) or
            ``"default"``.
        pretrained_file: Older name of ``pretrained`` for a local weight file (kept for existing configs and
            checkpoints; give one of the two).
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic-depth rate of both Swins.
        gate: Local gate of eq. 4: ``"sigmoid"`` (default) or ``"lavt"`` (LAVT's ``tanh(W_2 ReLU(W_1 F))``,
            with ``refine="none"`` and ``fusion_init="gate_closed"``); see the module docstring.
        pretrained: Initial weights (:mod:`models.pretrained`): ``None`` (random), ``"hub"`` (timm's weights of
            ``model_name``, into both branches; offline and not cached it fails at once), a Swin weight file in
            timm's/the original layout (``.safetensors``/``.pth``/``.bin``, read weights-only) loaded into both
            branches (timm sums the RGB patch-embedding filters for the 1-channel local branch and resizes the
            position tables), or a ``.ckpt`` of this project: a LitFER checkpoint of a TwoBranchSwin of the same
            architecture (the classifier is re-initialised when the class count differs). The fusion layers start
            from their own initialisation unless they come from a checkpoint.
        stem: Patch embedding of both Swins: ``"patch"`` (timm's ``patch_size`` x ``patch_size`` projection, the
            paper's backbone, the one hub weights fit) or ``"conv"`` (:class:`ConvStem`: stride-2 3x3 convolutions to
            the same token grid, for training from scratch; not with hub or file weights).

    Shapes:
        image: ``[B, 3, img_size, img_size]``
        descriptor: ``[B, descriptor_chans, local_img_size, local_img_size]`` (ignored when ``branches="global"``)
        output: ``[B, num_classes]`` logits
    """

    def __init__(
        self,
        num_classes: int,
        model_name: str = "swin_tiny_patch4_window7_224",
        img_size: int | None = None,
        local_img_size: int | None = None,
        patch_size: int | None = None,
        embed_dim: int | None = None,
        depths: tuple[int, ...] | None = None,
        num_heads: tuple[int, ...] | None = None,
        window_size: int | None = None,
        descriptor_chans: int = 1,
        fusion: Fusion = "tile_concat",
        fusion_conv: FusionConv = "full",
        branches: Branches = "two",
        refine: Refine = "residual",
        fusion_init: Init = "zero",
        pretrained_file: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        gate: Gate = "sigmoid",
        pretrained: str | None = None,
        stem: Stem = "patch",
    ) -> None:
        super().__init__()
        check_choices(TwoBranchSwin, locals())
        if num_classes < 1:
            raise ValueError(f"TwoBranchSwin: num_classes must be >= 1, got {num_classes}")
        if pretrained is not None and pretrained_file is not None:
            raise ValueError(f"TwoBranchSwin: give pretrained ({pretrained!r}) or its older name pretrained_file "
                             f"({pretrained_file!r}), not both")
        source = resolve_pretrained(pretrained if pretrained is not None else pretrained_file, "TwoBranchSwin")
        if stem == "conv" and source is not None and source.kind != "checkpoint":
            raise ValueError(f"TwoBranchSwin: stem='conv' has no {source.kind} weights (timm's Swin weights hold a "
                             "patch embedding): use stem='patch' with them, or a checkpoint of a conv-stem net")
        depths = None if depths is None else tuple(depths)
        if num_heads is None and embed_dim is not None:
            num_heads = tuple(max(1, embed_dim * 2**i // 32) for i in range(len(depths or (0,) * 4)))
        num_heads = None if num_heads is None else tuple(num_heads)
        if num_heads is not None and depths is not None and len(num_heads) != len(depths):
            raise ValueError(f"TwoBranchSwin: num_heads {num_heads} and depths {depths} differ in length")
        if num_heads is not None and embed_dim is not None:
            for i, h in enumerate(num_heads):
                if (embed_dim * 2**i) % h:
                    raise ValueError(f"TwoBranchSwin: stage {i} width {embed_dim * 2**i} not divisible by {h} heads")
        self.num_classes = num_classes
        self.fusion = fusion
        self.fusion_conv = fusion_conv if branches == "two" and fusion == "tile_concat" else None
        self.branches = branches
        self.refine = refine
        self.inputs: tuple[str, ...] = ("image", "descriptor") if branches == "two" else ("image",)

        # explicit arguments override the entry point's defaults; None keeps them
        arch = {"patch_size": patch_size, "embed_dim": embed_dim, "depths": depths, "num_heads": num_heads,
                "window_size": window_size}
        common = {k: v for k, v in arch.items() if v is not None}
        common["drop_path_rate"] = drop_path_rate
        if stem == "conv":
            common["embed_layer"] = ConvStem
        self.stem = stem
        sizes = {"img_size": img_size} if img_size is not None else {}
        local_size = local_img_size or img_size
        local_sizes = {"img_size": local_size} if local_size is not None else {}
        late = branches == "two" and fusion == "late"
        # the global Swin owns the final norm + head (norm, pool, linear), except for late fusion
        self.global_branch = _create_swin(
            model_name, source, num_classes=0 if late else num_classes, in_chans=3, drop_rate=drop_rate,
            **sizes, **common,
        )
        self.local_branch: nn.Module | None = None
        self.fusions = nn.ModuleList()
        self.late_head: nn.Module | None = None
        dims = [int(f["num_chs"]) for f in self.global_branch.feature_info]
        if branches == "two":
            self.local_branch = _create_swin(
                model_name, source, num_classes=0, in_chans=descriptor_chans, **local_sizes, **common,
            )
            if late:
                self.late_head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(2 * dims[-1], num_classes))
            else:
                self.local_branch.norm = nn.Identity()  # L_4 only enters the stage-4 fusion, never a head
                self.fusions = nn.ModuleList(
                    StageFusion(d, fusion=fusion, refine=refine, init=fusion_init, fusion_conv=fusion_conv, gate=gate)
                    for d in dims
                )
        self.reset_parameters()
        if source is not None and source.kind == "checkpoint":
            load_net_checkpoint(self, source.path, ["global_branch.head", "late_head"], "TwoBranchSwin")

    def reset_parameters(self) -> None:
        """Re-initialise the fusion and late-head layers (the Swins keep timm's init or loaded weights)."""
        for fusion in self.fusions:
            fusion.reset_parameters()
        if self.late_head is not None:
            self.late_head[1].reset_parameters()

    def forward(self, image: Tensor, descriptor: Tensor | None = None) -> Tensor:
        g_net = self.global_branch
        if self.local_branch is None:
            return g_net.forward_head(g_net.norm(g_net.layers(g_net.patch_embed(image))))
        if descriptor is None:
            raise ValueError("TwoBranchSwin: branches='two' needs a descriptor map (batch key 'descriptor')")
        l_net = self.local_branch
        g = g_net.patch_embed(image)
        loc = l_net.patch_embed(descriptor)
        for i, (g_stage, l_stage) in enumerate(zip(g_net.layers, l_net.layers)):
            g = g_stage(g)  # G_i (NHWC), computed from E'_{i-1}
            loc = l_stage(loc)  # L_i (NHWC), the local branch never sees fused features
            if self.late_head is None:
                g = self.fusions[i](g, loc)  # E'_i feeds the next global stage / the head
        if self.late_head is None:
            return g_net.forward_head(g_net.norm(g))
        pooled_g = g_net.forward_head(g_net.norm(g), pre_logits=True)
        pooled_l = l_net.forward_head(l_net.norm(loc), pre_logits=True)
        return self.late_head(torch.cat([pooled_g, pooled_l], dim=1))

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, branches={self.branches!r}, fusion={self.fusion!r}, "
            f"fusion_conv={self.fusion_conv!r}, "
            f"refine={self.refine!r}, inputs={self.inputs}"
        )


def _pointwise(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply a 1x1 ``nn.Conv2d`` to an NHWC tensor as a linear map over the channel axis (identical maths).

    Shapes:
        x: ``[B, H, W, C_in]``
        output: ``[B, H, W, C_out]``
    """
    return F.linear(x, conv.weight.flatten(1), conv.bias)


def _create_swin(model_name: str, source: PretrainedSource | None, **kwargs) -> nn.Module:
    """Build a timm Swin with timm's hub weights or a weight file's (``source``), or randomly initialised."""
    return create_timm_model(model_name, source, "TwoBranchSwin", **kwargs)
