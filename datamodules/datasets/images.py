"""Face-image datasets: splits, in-memory datasets and batched augmentation (scanning and loading of the files
are in :mod:`features.images`).

Pure torch / numpy (no ``lightning``, no OpenCV). Used by :class:`datamodules.fer.FERDataModule` for the
learning-emotion pipeline of Ji et al., *Multimodal and multiscale facial expression recognition analysis for
learning emotions* (J. Zhengzhou Univ. Eng. Sci. 2026, 47(3)), §2.1 (256x256 face crops) and §3.1.1 (70/15/15
stratified split).

Folder layout: ``<root>/<class folder>/<image file>``; class folders are mapped to ``class_names`` either by
name or through ``class_aliases`` (folder -> class). Batches follow ``docs/architecture.md`` ("Face images").
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from timm.data.random_erasing import RandomErasing
from torch import Tensor
from torch.utils.data import Dataset

from common.choices import check_choices
from common.tensors import grey_rgb

log = logging.getLogger(__name__)

#: Names of the split partitions, in order; they are the Lightning stages ("val", unlike the "valid" key of MMSA
#: files: features.mmsa_format.FILE_SPLITS).
SPLITS: tuple[str, str, str] = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------------
def subject_from_name(path: str, pattern: str) -> str:
    """Subject id from a file name with a regex whose first group (or whole match) is the id.

    Examples: CK+ ``^(S\\d+)_`` on ``S010_004_00000017.png`` -> ``S010``; JAFFE ``^([A-Z]{2})\\.`` on
    ``KA.AN1.39.tiff`` -> ``KA``.

    Raises:
        ValueError: the pattern does not match the file name (naming the file).
    """
    name = Path(path).name
    m = re.search(pattern, name)
    if m is None:
        raise ValueError(f"subject_pattern {pattern!r} does not match file name {name!r} ({path})")
    return m.group(1) if m.groups() else m.group(0)


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or r.sum() <= 0:
        raise ValueError(
            f"split ratios must be three non-negative numbers (train, val, test), got {list(ratios)}"
        )
    return r / r.sum()


def _largest_remainder(n: int, ratios: np.ndarray) -> np.ndarray:
    raw = ratios * n
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def stratified_split(labels: Sequence[int], ratios: Sequence[float], seed: int) -> list[str]:
    """Seeded per-class random split (paper §3.1.1: 70/15/15 stratified).

    Args:
        labels: class index per item.
        ratios: (train, val, test) fractions; normalised to sum 1.
        seed: RNG seed.

    Returns:
        Split name per item (``"train"``/``"val"``/``"test"``).
    """
    r = _check_ratios(ratios)
    labels = np.asarray(labels)
    out = np.empty(len(labels), dtype=object)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        counts = _largest_remainder(len(idx), r)
        bounds = np.cumsum(counts)
        for s, part in zip(SPLITS, np.split(idx, bounds[:-1])):
            out[part] = s
    return out.tolist()


def group_split(
    labels: Sequence[int], groups: Sequence[str], ratios: Sequence[float], seed: int
) -> list[str]:
    """Seeded subject-disjoint split, approximately stratified by class.

    Groups are visited largest first (ties in random order) and each goes to the split whose remaining
    per-class need (target minus assigned counts) best matches the group's class histogram, normalised by the
    split's target size. Afterwards every split with a positive ratio receives at least one group when there
    are enough groups. No group ever appears in two splits.

    Args:
        labels: class index per item.
        groups: group (subject) id per item.
        ratios: (train, val, test) fractions.
        seed: RNG seed.

    Returns:
        Split name per item.
    """
    r = _check_ratios(ratios)
    labels = np.asarray(labels)
    groups_arr = np.asarray(groups, dtype=object)
    uniq, inverse = np.unique(groups_arr.astype(str), return_inverse=True)
    classes, label_idx = np.unique(labels, return_inverse=True)
    hist = np.zeros((len(uniq), len(classes)), dtype=np.float64)
    np.add.at(hist, (inverse, label_idx), 1.0)
    target = r[:, None] * hist.sum(axis=0)[None, :]  # [3, C]
    assigned = np.zeros_like(target)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-hist[order].sum(axis=1), kind="stable")]
    group_split_idx = np.full(len(uniq), -1, dtype=np.int64)
    active = np.flatnonzero(r > 0)
    for g in order:
        need = np.clip(target - assigned, 0, None)  # [3, C]
        score = (need * hist[g][None, :]).sum(axis=1) / np.maximum(target.sum(axis=1), 1e-9)
        remaining = (target.sum(axis=1) - assigned.sum(axis=1)) / np.maximum(target.sum(axis=1), 1e-9)
        key = score + 1e-6 * remaining
        key[r == 0] = -np.inf
        s = (
            int(np.argmax(key))
            if np.isfinite(key).any() and key.max() > 0
            else int(active[np.argmax(remaining[active])])
        )
        group_split_idx[g] = s
        assigned[s] += hist[g]
    # Guarantee non-empty splits when possible: move the smallest group of the largest split.
    for s in active:
        if not (group_split_idx == s).any():
            sizes = np.array([(group_split_idx == k).sum() for k in range(3)])
            donor = int(np.argmax(sizes))
            if sizes[donor] <= 1:
                continue
            cand = np.flatnonzero(group_split_idx == donor)
            g = cand[np.argmin(hist[cand].sum(axis=1))]
            group_split_idx[g] = s
    return [SPLITS[i] for i in group_split_idx[inverse]]


# ----------------------------------------------------------------------------------------------------------
# Batched augmentation + normalisation (applied in the collate function: vectorised over the batch)
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceNormalisation:
    """How a face batch is normalised before the model (stored in checkpoints: a model predicts with the same).

    Args:
        mean: per-channel RGB mean (images first scaled to [0, 1]; default ImageNet's, as the Swin backbones).
        std: per-channel RGB std.
        descriptor_mean: mean subtracted from the [0, 1] descriptor map.
        descriptor_std: std dividing the descriptor map.
        colour: ``"grey"`` turns every face grey first (:func:`common.tensors.grey_rgb`), for models trained on grey
            faces (FER2013, CK+, JAFFE) that then predict on colour video; ``"rgb"`` keeps the pixels.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    descriptor_mean: float = 0.5
    descriptor_std: float = 0.5
    colour: Literal["rgb", "grey"] = "rgb"

    def __post_init__(self) -> None:
        check_choices(FaceNormalisation, vars(self))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"FaceNormalisation: mean and std need 3 values, got {self.mean}, {self.std}")
        if self.descriptor_std <= 0 or min(self.std) <= 0:
            raise ValueError("FaceNormalisation: std values must be positive")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


@dataclass(frozen=True)
class FaceAugment:
    """Train-time augmentation of face batches (:class:`FaceBatchTransform`).

    Args:
        hflip_prob: probability of a horizontal flip.
        affine_degrees: rotation drawn uniformly from [-d, d] degrees.
        affine_translate: translation drawn uniformly from [-t, t] as a fraction of the image size.
        affine_scale: (min, max) isotropic scale.
        brightness: brightness factor drawn from [1 - b, 1 + b].
        contrast: contrast factor drawn from [1 - c, 1 + c] (blend with the image's mean grey level).
        saturation: saturation factor drawn from [1 - s, 1 + s] (blend with the grey image).
        policy: after flip/affine/colour jitter, ``"trivial"`` applies one op of :data:`FACE_AUGMENT_OPS` per face
            with a uniformly drawn magnitude (TrivialAugment, Müller & Hutter 2021); ``"rand"`` applies
            ``policy_ops`` ops drawn uniformly at the fixed magnitude ``policy_magnitude`` / 10 of each op's
            range (RandAugment, Cubuk et al. 2020, timm's ``rand-m9-n2``); ``"none"`` skips it. The op set is
            chosen for grey face crops: no colour/hue/solarize/invert; geometric ops move the descriptor map
            with the face. The ops are torchvision's ``transforms.v2.functional``.
        policy_ops: RandAugment's N.
        policy_magnitude: RandAugment's M in [0, 10].
        random_erasing: probability of timm's ``RandomErasing`` (``mode="pixel"``: per-pixel normal noise in the
            normalised space) per face, applied after normalisation to the same box of image and descriptor.
    """

    hflip_prob: float = 0.5
    affine_degrees: float = 10.0
    affine_translate: float = 0.05
    affine_scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.0
    policy: Literal["none", "trivial", "rand"] = "none"
    policy_ops: int = 2
    policy_magnitude: float = 9.0
    random_erasing: float = 0.0

    def __post_init__(self) -> None:
        check_choices(FaceAugment, vars(self))
        if self.policy_ops < 1 or not 0 <= self.policy_magnitude <= 10:
            raise ValueError(f"FaceAugment: need policy_ops >= 1 and policy_magnitude in [0, 10], got "
                             f"{self.policy_ops}, {self.policy_magnitude}")
        if not 0.0 <= self.random_erasing <= 1.0:
            raise ValueError(f"FaceAugment: random_erasing must be in [0, 1], got {self.random_erasing}")
        if not 0.0 <= self.hflip_prob <= 1.0:
            raise ValueError(f"FaceAugment: hflip_prob must be in [0, 1], got {self.hflip_prob}")
        if len(self.affine_scale) != 2 or not 0 < self.affine_scale[0] <= self.affine_scale[1]:
            raise ValueError(f"FaceAugment: affine_scale must be (min, max) with 0 < min <= max, got "
                             f"{self.affine_scale}")
        for name in ("brightness", "contrast", "saturation"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"FaceAugment: {name} must be in [0, 1), got {getattr(self, name)}")
        object.__setattr__(self, "affine_scale", (float(self.affine_scale[0]), float(self.affine_scale[1])))


#: No train-time change: the identity augmentation (``FaceAugment`` with every probability and range at zero).
NO_AUGMENT = FaceAugment(hflip_prob=0.0, affine_degrees=0.0, affine_translate=0.0, affine_scale=(1.0, 1.0),
                         brightness=0.0, contrast=0.0)


class FaceBatchTransform:
    """Turn a list of samples into a normalised batch; optional train-time augmentation, vectorised.

    The geometric part (horizontal flip, affine rotation/translation/scale) is drawn once per sample and applied
    identically to the RGB image and the descriptor map (they are warped together as one 4-channel tensor with
    :func:`torch.nn.functional.grid_sample`, bilinear, zero padding). Colour jitter (brightness, contrast,
    saturation; no hue) is applied to the image only.

    Args:
        normalisation: mean/std of image and descriptor map, and the colour policy (:class:`FaceNormalisation`).
        augment: train-time augmentation (:class:`FaceAugment`); ``None``: none (evaluation and prediction batches
            are only converted and normalised).

    Shapes:
        Input samples: ``image`` ``[3, H, W]`` uint8, ``descriptor`` ``[1, H, W]`` uint8 (optional).
        Output: ``image`` ``[B, 3, H, W]`` float32, ``descriptor`` ``[B, 1, H, W]`` float32, other tensor
        keys stacked, string keys as lists.
    """

    def __init__(self, normalisation: FaceNormalisation | None = None, augment: FaceAugment | None = None) -> None:
        self.normalisation = normalisation = normalisation or FaceNormalisation()
        self.augment_settings = augment
        aug = augment or NO_AUGMENT
        self.mean = torch.tensor(normalisation.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(normalisation.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.descriptor_mean = float(normalisation.descriptor_mean)
        self.descriptor_std = float(normalisation.descriptor_std)
        self.colour = normalisation.colour
        self.augment = "none" if augment is None else "train"
        self.hflip_prob = aug.hflip_prob
        self.affine_degrees = aug.affine_degrees
        self.affine_translate = aug.affine_translate
        self.affine_scale = aug.affine_scale
        self.brightness = aug.brightness
        self.contrast = aug.contrast
        self.saturation = aug.saturation
        self.policy = aug.policy
        self.policy_ops = int(aug.policy_ops)
        self.policy_magnitude = float(aug.policy_magnitude)
        self.random_erasing = float(aug.random_erasing)
        self._eraser = (
            RandomErasing(probability=aug.random_erasing, mode="pixel", device="cpu") if aug.random_erasing > 0
            else None
        )
        self._grids: dict[tuple[int, int], Tensor] = {}

    def _policy(self, image: Tensor, desc: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """TrivialAugment / RandAugment over :data:`FACE_AUGMENT_OPS`, one draw per face (``[B, C, H, W]`` in [0, 1])."""
        names = list(FACE_AUGMENT_OPS)
        imgs, descs = [], []
        for i in range(image.shape[0]):
            img, d = image[i], None if desc is None else desc[i]
            n = 1 if self.policy == "trivial" else self.policy_ops
            for k in torch.randint(len(names), (n,)).tolist():
                level = float(torch.rand(())) if self.policy == "trivial" else self.policy_magnitude / 10.0
                sign = 1.0 if float(torch.rand(())) < 0.5 else -1.0
                img, d = _apply_face_op(names[k], img, d, level, sign)
            imgs.append(img)
            descs.append(d)
        return torch.stack(imgs), None if desc is None else torch.stack(descs)

    def _geometric(self, x: Tensor) -> Tensor:
        """Random flip + affine warp of ``x`` ``[B, C, H, W]`` float, same parameters for all channels."""
        b = x.shape[0]
        angle = (torch.rand(b) * 2 - 1) * math.radians(self.affine_degrees)
        lo, hi = self.affine_scale
        scale = lo + torch.rand(b) * (hi - lo)
        shift = (torch.rand(b, 2) * 2 - 1) * (2 * self.affine_translate)  # normalised coords span 2
        flip = torch.where(torch.rand(b) < self.hflip_prob, -1.0, 1.0)
        if self.affine_degrees == 0 and self.affine_translate == 0 and lo == hi == 1.0 and (flip > 0).all():
            return x
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.zeros(b, 3, 2)
        # output->input sampling grid: inverse rotation/scale, then horizontal flip of the source; rows of
        # theta (transposed affine matrix) multiply the homogeneous output coordinates (x, y, 1)
        theta[:, 0, 0], theta[:, 1, 0] = cos * flip, sin * flip
        theta[:, 0, 1], theta[:, 1, 1] = -sin, cos
        theta[:, 2, :] = -shift
        h, w = x.shape[-2:]
        grid = torch.matmul(self._base_grid(h, w), theta).view(b, h, w, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def _base_grid(self, h: int, w: int) -> Tensor:
        """Homogeneous pixel-centre coordinates in [-1, 1] (``align_corners=False``), ``[1, H*W, 3]``, cached."""
        key = (h, w)
        if key not in self._grids:
            ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
            xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            self._grids[key] = torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).view(1, h * w, 3)
        return self._grids[key]

    def _colour(self, img: Tensor) -> Tensor:
        """Brightness / contrast / saturation jitter of ``img`` ``[B, 3, H, W]`` in [0, 1]."""
        b = img.shape[0]
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        if self.brightness > 0 or self.contrast > 0:
            # brightness b then contrast c around the grey mean m of the brightened image:
            # c * (b * x) + (1 - c) * b * m, one fused pass
            fb = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * self.brightness
            fc = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * self.contrast
            m = (img.mean((2, 3), keepdim=True) * weights).sum(1, keepdim=True)
            img = torch.addcmul((1 - fc) * fb * m, img, fc * fb)
        if self.saturation > 0:
            grey = (img * weights).sum(1, keepdim=True)
            f = 1 + (torch.rand(b, 1, 1, 1) * 2 - 1) * self.saturation
            img = grey + f * (img - grey)
        return img.clamp(0, 1)

    def __call__(self, samples: list[dict]) -> dict:
        """Collate ``samples`` into a batch dict (see class docstring)."""
        batch: dict = {}
        for k in samples[0]:
            vals = [s[k] for s in samples]
            batch[k] = torch.stack(vals) if isinstance(vals[0], Tensor) else vals
        return self._transform(batch, None)

    def collate_pixels(self, pixels: Tensor, labels: Tensor, origins: list[str], paths: list[str]) -> dict:
        """The batch of faces already stacked in one buffer (the litdata stream's groups): the same batch as
        :meth:`__call__` on the equivalent items.

        Shapes:
            pixels: ``[B, 3, H, W]`` uint8, or ``[B, 4, H, W]`` with the descriptor map as channel 3;
            labels: ``[B]`` int64.
        """
        batch: dict = {"image": pixels[:, :3], "label": labels, "origin": origins, "path": paths}
        fused = None
        if pixels.shape[1] > 3:
            batch["descriptor"] = pixels[:, 3:]
            fused = pixels
        return self._transform(batch, fused)

    def _transform(self, batch: dict, fused: Tensor | None) -> dict:
        """Augmentation and normalisation of a stacked uint8 batch (``fused``: its ``[B, 4, H, W]`` buffer, or
        ``None``)."""
        has_desc = "descriptor" in batch
        if self.colour == "grey":
            batch["image"] = grey_rgb(batch["image"], channel_dim=1)
            if fused is not None:
                fused = torch.cat([batch["image"], fused[:, 3:]], dim=1)
        if self.augment == "train":
            if fused is not None:
                x = fused
            else:
                x = torch.cat([batch["image"], batch["descriptor"]], dim=1) if has_desc else batch["image"]
            x = self._geometric(x.float().div_(255.0))
            image = self._colour(x[:, :3])
            desc = x[:, 3:] if has_desc else None
            if self.policy != "none":
                image, desc = self._policy(image, desc)
        else:
            image = batch["image"].float().div_(255.0)
            desc = batch["descriptor"].float().div_(255.0) if has_desc else None
        batch["image"] = (image - self.mean) / self.std
        if desc is not None:
            batch["descriptor"] = (desc - self.descriptor_mean) / self.descriptor_std
        if self.augment == "train" and self._eraser is not None:
            # one box per face over image + descriptor together (timm erases every channel of the box)
            x = torch.cat([batch["image"], batch["descriptor"]], 1) if desc is not None else batch["image"]
            x = self._eraser(x)
            batch["image"] = x[:, :3]
            if desc is not None:
                batch["descriptor"] = x[:, 3:]
        return batch


#: Train-time policies of :class:`FaceBatchTransform`.
AUGMENT_POLICIES = ("none", "trivial", "rand")
#: Augmentation ops for grey face crops: name -> (geometric?, maximum magnitude). Geometric ops warp the
#: descriptor map with the face; photometric ops touch the image only. Magnitudes follow RandAugment's ranges,
#: narrowed for 48-64 px faces (translation 20 % of the side, rotation 30 degrees, shear 0.3).
FACE_AUGMENT_OPS: dict[str, tuple[bool, float]] = {
    "identity": (False, 0.0),
    "rotate": (True, 30.0),
    "shear_x": (True, 0.3),
    "shear_y": (True, 0.3),
    "translate_x": (True, 0.2),
    "translate_y": (True, 0.2),
    "brightness": (False, 0.9),
    "contrast": (False, 0.9),
    "sharpness": (False, 0.9),
    "autocontrast": (False, 0.0),
    "equalize": (False, 0.0),
    "posterize": (False, 4.0),
}


def _apply_face_op(name: str, img: Tensor, desc: Tensor | None, level: float, sign: float) -> tuple[Tensor, Tensor | None]:
    """One op of :data:`FACE_AUGMENT_OPS` at ``level`` in [0, 1] of its range (``sign`` for symmetric ops).

    Shapes:
        img: ``[3, H, W]`` float in [0, 1]; desc: ``[1, H, W]`` float in [0, 1] or None
    """
    geometric, top = FACE_AUGMENT_OPS[name]
    m = level * top
    if geometric:
        h, w = img.shape[-2:]
        kw = {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "shear": [0.0, 0.0]}
        if name == "rotate":
            kw["angle"] = sign * m
        elif name == "shear_x":
            kw["shear"] = [math.degrees(math.atan(sign * m)), 0.0]
        elif name == "shear_y":
            kw["shear"] = [0.0, math.degrees(math.atan(sign * m))]
        elif name == "translate_x":
            kw["translate"] = [round(sign * m * w), 0]
        else:
            kw["translate"] = [0, round(sign * m * h)]
        x = img if desc is None else torch.cat([img, desc], 0)
        x = TF.affine(x, interpolation=TF.InterpolationMode.BILINEAR, **kw)
        return (x, None) if desc is None else (x[:3], x[3:])
    if name == "brightness":
        img = TF.adjust_brightness(img, 1.0 + sign * m)
    elif name == "contrast":
        img = TF.adjust_contrast(img, 1.0 + sign * m)
    elif name == "sharpness":
        img = TF.adjust_sharpness(img, 1.0 + sign * m)
    elif name == "autocontrast":
        img = TF.autocontrast(img)
    elif name == "equalize":
        img = TF.equalize(img)
    elif name == "posterize":
        img = TF.posterize(img, int(8 - round(m)))
    return img.clamp(0, 1), desc


# ----------------------------------------------------------------------------------------------------------
# Datasets
# ----------------------------------------------------------------------------------------------------------
class FaceTensorDataset(Dataset):
    """In-memory face dataset over pre-cropped uint8 tensors (epoch >= 2 costs only indexing).

    Args:
        images: uint8 RGB faces.
        labels: class indices.
        origins: origin tag per item (``"real"`` or an extra root's name).
        paths: source file per item.
        descriptors: uint8 descriptor maps (0..255 encodes [0, 1]) or None.

    Shapes:
        images: ``[N, 3, H, W]`` uint8; descriptors: ``[N, 1, H, W]`` uint8; labels: ``[N]`` int64.
        Item: ``{"image": [3, H, W] uint8, "descriptor": [1, H, W] uint8, "label": [] int64, "origin": str,
        "path": str}`` (normalised to float by :class:`FaceBatchTransform`).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        origins: Sequence[str],
        paths: Sequence[str],
        descriptors: Tensor | None = None,
    ) -> None:
        n = images.shape[0]
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"FaceTensorDataset: images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (n,) or len(origins) != n or len(paths) != n:
            raise ValueError("FaceTensorDataset: images, labels, origins and paths must have the same length")
        if descriptors is not None and (descriptors.shape[0] != n or descriptors.shape[1] != 1):
            raise ValueError(
                f"FaceTensorDataset: descriptors must be [N, 1, H, W], got {tuple(descriptors.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.origins = list(origins)
        self.paths = list(paths)
        self.descriptors = descriptors

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        item = {
            "image": self.images[i],
            "label": self.labels[i],
            "origin": self.origins[i],
            "path": self.paths[i],
        }
        if self.descriptors is not None:
            item["descriptor"] = self.descriptors[i]
        return item


def class_balanced_weights(labels: Tensor, num_classes: int) -> Tensor:
    """Per-sample weights ``1 / count(class)`` for :class:`torch.utils.data.WeightedRandomSampler`.

    Shapes:
        labels: ``[N]`` int64 -> weights ``[N]`` float64.
    """
    counts = torch.bincount(labels, minlength=num_classes).double()
    return 1.0 / counts.clamp_min(1.0)[labels]


def stack_hwc_uint8(arrays: Sequence[np.ndarray], channels: int) -> Tensor:
    """Stack ``[H, W, C]`` (or ``[H, W]``) uint8 arrays into a ``[N, C, H, W]`` uint8 tensor."""
    if not arrays:
        return torch.zeros(0, channels, 1, 1, dtype=torch.uint8)
    a = np.stack([x if x.ndim == 3 else x[:, :, None] for x in arrays])
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def read_paths(paths: Sequence[str | Path], reader: Callable[[Path], np.ndarray]) -> list[np.ndarray]:
    """Read several cache files with ``reader`` (a loop over files, not pixels)."""
    return [reader(Path(p)) for p in paths]
