"""POSTER-style pyramid cross-fusion of image and landmark features (a compact re-implementation, Table 1 baseline).

    ZHENG C, MENDIETA M, CHEN C. POSTER: a pyramid cross-fusion transformer network for facial expression
    recognition. ICCV Workshops 2023, https://arxiv.org/abs/2204.04083 (POSTER++: Mao et al. 2023,
    https://arxiv.org/abs/2301.12149).

What is kept from POSTER: two streams — an image backbone and a facial-landmark backbone — whose features at
several scales are fused by **two-way cross-attention** (image queries attend landmark keys/values and landmark
queries attend image keys/values, eq. 1-3 of POSTER), and a **pyramid**: the fused tokens of all scales are
concatenated and encoded by a small transformer, then pooled into the classifier. What differs (say so when you
report it): POSTER uses an IR-50 image backbone and a frozen MobileFaceNet landmark detector, both pretrained;
here both are timm backbones (``image_backbone``, ``landmark_backbone``), initialised from timm's hub
(``pretrained="hub"``), from local weight files (``image_weights``, ``landmark_weights``; a MobileFaceNet-like
landmark network goes in ``landmark_backbone``) or from a checkpoint of this project (``pretrained="<x>.ckpt"``),
otherwise trained from scratch — and then the "landmark" stream is just a second CNN over the face, not a landmark
detector. POSTER's window attention is replaced by attention over a pooled ``tokens x tokens`` grid per scale.

Shapes:
    image: ``[B, 3, H, W]``
    per-scale tokens: ``[B, tokens^2, dim]`` (both streams), pyramid: ``[B, 2 * n_scales * tokens^2, dim]``
    logits: ``[B, num_classes]``
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from models.pretrained import PretrainedSource, create_timm_model, load_net_checkpoint, resolve_pretrained

log = logging.getLogger(__name__)


def _backbone(name: str, source: PretrainedSource | None, out_indices: tuple[int, ...]) -> nn.Module:
    """A timm ``features_only`` backbone, with timm's hub weights or a weight file's (``source``), or random."""
    return create_timm_model(name, source, "POSTER", features_only=True, out_indices=out_indices)


class CrossFusionBlock(nn.Module):
    """Two-way cross-attention between image tokens and landmark tokens (POSTER's cross-fusion), pre-norm + MLP.

    Shapes:
        img, lmk: ``[B, N, dim]`` -> ``(img', lmk')`` ``[B, N, dim]`` each
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.norm_i, self.norm_l = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.img_from_lmk = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.lmk_from_img = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        hidden = int(dim * mlp_ratio)
        self.mlp_i = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.mlp_l = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, img: Tensor, lmk: Tensor) -> tuple[Tensor, Tensor]:
        i, l_ = self.norm_i(img), self.norm_l(lmk)
        img = img + self.img_from_lmk(i, l_, l_, need_weights=False)[0]  # image queries, landmark keys/values
        lmk = lmk + self.lmk_from_img(l_, i, i, need_weights=False)[0]  # landmark queries, image keys/values
        return img + self.mlp_i(img), lmk + self.mlp_l(lmk)


class POSTER(nn.Module):
    """Image + landmark streams, per-scale two-way cross-fusion, pyramid transformer, classifier (see module doc).

    Args:
        num_classes: Number of classes.
        image_backbone: timm model name of the image stream.
        landmark_backbone: timm model name of the landmark stream (input: the grey face, 1 channel mean of RGB).
        image_weights: weights of ``image_backbone`` alone: a local weight file in timm's layout
            (``.safetensors``/``.pth``/``.bin``, read weights-only), ``"hub"``, or ``None`` (random init).
        landmark_weights: the same for ``landmark_backbone``.
        out_indices: backbone stages fused (the pyramid's scales).
        dim: token width after the per-scale 1x1 projections.
        tokens: side of the pooled token grid per scale.
        num_heads: attention heads.
        depth: layers of the pyramid transformer.
        drop_rate: dropout before the classifier.
        pretrained: initial weights of the whole net (:mod:`models.pretrained`): ``"hub"`` (timm's weights for both
            backbones; offline and not cached it fails at once) or a ``.ckpt`` of this project (a LitFER checkpoint of
            a POSTER of the same sizes; the classifier is re-initialised when the class count differs). Per-backbone
            weight files go in ``image_weights`` / ``landmark_weights``; give those or ``pretrained``.
    """

    def __init__(
        self,
        num_classes: int,
        image_backbone: str = "resnet18",
        landmark_backbone: str = "mobilenetv3_small_100",
        image_weights: str | None = None,
        landmark_weights: str | None = None,
        out_indices: tuple[int, ...] = (2, 3, 4),
        dim: int = 128,
        tokens: int = 4,
        num_heads: int = 4,
        depth: int = 2,
        drop_rate: float = 0.1,
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1 or dim % num_heads or tokens < 1 or depth < 0:
            raise ValueError(f"POSTER: bad sizes num_classes={num_classes}, dim={dim}, heads={num_heads}, "
                             f"tokens={tokens}, depth={depth}")
        source = resolve_pretrained(pretrained, "POSTER")
        if source is not None and (image_weights is not None or landmark_weights is not None):
            raise ValueError(f"POSTER: give pretrained ({pretrained!r}) or per-backbone image_weights/landmark_weights "
                             f"({image_weights!r}, {landmark_weights!r}), not both")
        if source is not None and source.kind == "file":
            raise ValueError(f"POSTER: pretrained={pretrained!r} is a weight file of one backbone: pass it as "
                             "image_weights or landmark_weights (pretrained takes 'hub' or a .ckpt of this project)")
        backbone_sources = []
        for arg, value in (("image_weights", image_weights), ("landmark_weights", landmark_weights)):
            src = resolve_pretrained(value, "POSTER")
            if src is not None and src.kind == "checkpoint":
                raise ValueError(f"POSTER: {arg}={value!r} is a checkpoint of a whole net: pass it as pretrained")
            backbone_sources.append(src if src is not None else source)
        out_indices = tuple(out_indices)
        self.num_classes = num_classes
        self.inputs: tuple[str, ...] = ("image",)
        self.image_net = _backbone(image_backbone, backbone_sources[0], out_indices)
        self.landmark_net = _backbone(landmark_backbone, backbone_sources[1], out_indices)
        img_ch = self.image_net.feature_info.channels()
        lmk_ch = self.landmark_net.feature_info.channels()
        self.proj_i = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in img_ch)
        self.proj_l = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in lmk_ch)
        self.pool = nn.AdaptiveAvgPool2d(tokens)
        n = len(out_indices) * 2 * tokens * tokens
        self.pos = nn.Parameter(torch.zeros(1, n, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.fusions = nn.ModuleList(CrossFusionBlock(dim, num_heads) for _ in out_indices)
        layer = nn.TransformerEncoderLayer(dim, num_heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
        self.pyramid = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False) if depth else nn.Identity()
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Dropout(drop_rate), nn.Linear(dim, num_classes))
        if source is not None and source.kind == "checkpoint":
            load_net_checkpoint(self, source.path, ["head.2"], "POSTER")

    def forward(self, image: Tensor) -> Tensor:
        grey = image.mean(dim=1, keepdim=True).expand(-1, 3, -1, -1)  # landmark stream sees the grey face
        tokens = []
        for k, (fi, fl) in enumerate(zip(self.image_net(image), self.landmark_net(grey))):
            ti = self.pool(self.proj_i[k](fi)).flatten(2).transpose(1, 2)
            tl = self.pool(self.proj_l[k](fl)).flatten(2).transpose(1, 2)
            ti, tl = self.fusions[k](ti, tl)
            tokens += [ti, tl]
        x = self.pyramid(torch.cat(tokens, dim=1) + self.pos)
        return self.head(x.mean(dim=1))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, scales={len(self.fusions)}"
