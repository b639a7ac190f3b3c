"""Quality of diffusion-generated faces (Ji et al. 2026, §2.1.2 quality control, §3.4.2 Table 4: FID / IS).

The paper reports FID and IS from an ImageNet InceptionV3. No Inception weights can be downloaded here, so the
default scores are computed in the feature space of a classifier TRAINED IN THE PROJECT on the real faces, and are
named for what they are:

- ``fd_clf``: Fréchet distance between generated and real features of that classifier ("FD-clf", NOT FID), via
  ``torchmetrics.image.FrechetInceptionDistance(feature=<module>)``;
- ``kid_clf``: kernel (polynomial MMD) distance, ``KernelInceptionDistance(feature=<module>)`` ("KID-clf");
- ``fd_clf_floor`` / ``kid_clf_floor``: the same scores between two DISJOINT halves of the real images (the value a
  perfect generator would get at that sample size); the generated set is compared with the first half, subsampled to
  the size of the second, so both numbers use the same sample sizes;
- ``is_clf``: Inception-Score-style ``exp E[KL(p(y|x) || p(y))]`` of the classifier's softmax
  (``InceptionScore(feature=<logits module>)``), for generated and real images;
- ``acc_clf/<class>``: the classifier's accuracy on generated images w.r.t. the conditioned class.

With ``inception_weights`` (a LOCAL file) the standard ``FID``/``IS`` of torchmetrics are added; they need the
``torch-fidelity`` package.

:class:`QualityFilter` is the per-image gate used by ``callbacks.augmented_writer.AugmentedImageWriter``: a generated
image is rejected when the classifier's probability of the conditioned class is below ``min_confidence``
(``"low_confidence"``) or when it is a near-duplicate of a real image (``"memorised"``: cosine similarity of
classifier features >= ``duplicate_threshold``, or pixel MSE <= ``duplicate_threshold`` for
``duplicate_metric="mse"``), or (with ``ood_quantile``) when its classifier features lie outside the real faces'
(``"out_of_distribution"``).

Why an out-of-distribution check: the softmax confidence alone accepts pure noise whenever the classifier happens to
be confident on it (a classifier is only calibrated on the inputs it was trained on; noise is far outside them, and
the issue saw two noise images accepted as "disgust" at ``min_confidence=0.5``). The check is the class-conditional
Gaussian / Mahalanobis test of Lee et al. 2018 ("A simple unified framework for detecting out-of-distribution
samples", NeurIPS): on the real reference images' classifier features, class means and a shared within-class
covariance (Ledoit-Wolf shrinkage, since there are fewer images than feature dimensions) are fitted on one half of
the references; the threshold is the ``ood_quantile`` quantile of the Mahalanobis distances of the OTHER (held-out)
half to their own class mean. A generated image farther than that from the mean of the class it was conditioned on
is rejected: a real face of that class would be at most that far with probability ``ood_quantile``.

All images here are float ``[B, 3, H, W]`` in ``[0, 1]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from common.checkpoint import CheckpointError, read_checkpoint
from common.choices import check_choices
from models.frozen_classifier import ClassifierView

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DuplicateMetric = Literal["cosine", "mse", "none"]
DUPLICATE_METRICS = get_args(DuplicateMetric)


def load_image_folder(root: str | Path, class_names: list[str], size: int) -> tuple[Tensor, Tensor, list[str]]:
    """Read ``root/<class>/*`` images as RGB ``[N, 3, size, size]`` in ``[0, 1]`` (read only, never modified)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"load_image_folder: image folder not found: {root}")
    images, labels, paths = [], [], []
    for k, c in enumerate(class_names):
        folder = root / c
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            with Image.open(p) as im:
                arr = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)
            images.append(arr)
            labels.append(k)
            paths.append(str(p))
    if not images:
        raise ValueError(f"load_image_folder: no images of classes {class_names} under {root}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels), paths


def _batched(fn: nn.Module, x: Tensor, batch_size: int = 64) -> Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def generation_quality(
    classifier: nn.Module,
    real: Tensor,
    generated: Tensor,
    generated_labels: Tensor,
    class_names: list[str],
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    image_size: int | None = None,
    kid_subsets: int = 50,
    seed: int = 0,
    inception_weights: str | None = None,
) -> dict[str, float]:
    """FD-clf, KID-clf (with real-vs-real floors), IS-clf and per-class classifier accuracy (module docstring).

    Shapes:
        real: ``[N, 3, H, W]``; generated: ``[M, 3, H', W']`` in ``[0, 1]``; generated_labels: ``[M]``.
    """
    # torchmetrics.image only re-exports these when torch-fidelity is installed; a custom `feature` module
    # does not need it
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.image.kid import KernelInceptionDistance

    if len(real) < 8 or len(generated) < 4:
        raise ValueError(f"generation_quality: need >= 8 real and >= 4 generated images, got {len(real)}, "
                         f"{len(generated)}")
    g = torch.Generator().manual_seed(seed)
    feat = ClassifierView(classifier, "features", mean, std, image_size)
    logit = ClassifierView(classifier, "logits", mean, std, image_size)
    size = real.shape[-1]
    if generated.shape[-1] != size:
        generated = F.interpolate(generated, size=(size, size), mode="bilinear", align_corners=False)
    perm = torch.randperm(len(real), generator=g)
    half_a, half_b = real[perm[: len(real) // 2]], real[perm[len(real) // 2:]]
    n = min(len(half_b), len(generated))
    gen_sub = generated[torch.randperm(len(generated), generator=g)[:n]]
    half_b = half_b[:n]
    out: dict[str, float] = {}
    for name, other in (("fd_clf", gen_sub), ("fd_clf_floor", half_b)):
        fid = FrechetInceptionDistance(feature=feat)
        for i in range(0, len(half_a), 64):
            fid.update(half_a[i:i + 64], real=True)
        for i in range(0, len(other), 64):
            fid.update(other[i:i + 64], real=False)
        out[name] = float(fid.compute())
    subset = min(len(half_a), n, 100)
    for name, other in (("kid_clf", gen_sub), ("kid_clf_floor", half_b)):
        torch.manual_seed(seed)
        kid = KernelInceptionDistance(feature=feat, subsets=kid_subsets, subset_size=subset)
        kid.update(half_a, real=True)
        kid.update(other, real=False)
        out[name] = float(kid.compute()[0])
    for name, imgs in (("is_clf", generated), ("is_clf_real", real)):
        torch.manual_seed(seed)
        score = InceptionScore(feature=logit, splits=1)
        score.update(imgs)
        out[name] = float(score.compute()[0])
    pred = _batched(logit, generated).argmax(dim=1)
    for k, c in enumerate(class_names):
        sel = generated_labels == k
        if sel.any():
            out[f"acc_clf/{c}"] = float((pred[sel] == k).float().mean())
    out["acc_clf/all"] = float((pred == generated_labels).float().mean())
    if inception_weights is not None:
        out.update(inception_scores(real, generated, inception_weights))
    return out


def inception_scores(real: Tensor, generated: Tensor, weights_file: str) -> dict[str, float]:
    """Standard FID and Inception Score (torchmetrics + ``torch-fidelity``'s InceptionV3) from a LOCAL weights file.

    The file must hold a plain state dict (torch-fidelity's ``pt_inception-2015-12-05`` weights): it is first read with
    ``torch.load(weights_only=True)``, so a file that would execute code is refused before torch-fidelity loads it.

    Shapes:
        real, generated: ``[N, 3, H, W]`` float in [0, 1] (resized to 299 inside).

    Returns:
        ``{"fid_inception": ..., "is_inception": ...}`` (IS of the generated images, one split).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.inception import InceptionScore
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if not Path(weights_file).is_file():
        raise FileNotFoundError(f"inception_scores: InceptionV3 weights file not found: {weights_file}")
    if not _TORCH_FIDELITY_AVAILABLE:
        raise ImportError("inception_scores: the standard FID/IS need the 'torch-fidelity' package")
    try:
        read_checkpoint(weights_file)  # weights-only: the file may hold tensors only
    except CheckpointError as err:
        raise ValueError(f"inception_scores: {weights_file} is not a plain InceptionV3 state dict ({err})") from err
    fid = FrechetInceptionDistance(feature=2048, normalize=True, feature_extractor_weights_path=weights_file)
    fid.update(real, real=True)
    fid.update(generated, real=False)
    logits = NoTrainInceptionV3(
        name="inception-v3-compat", features_list=["logits_unbiased"], feature_extractor_weights_path=weights_file
    )
    score = InceptionScore(feature=logits, normalize=True, splits=1)
    score.update(generated)
    return {"fid_inception": float(fid.compute()), "is_inception": float(score.compute()[0])}


class QualityFilter:
    """Per-image acceptance test for generated faces (module docstring).

    Args:
        classifier: recognition classifier trained in the project (timm model or module with ``.model``), e.g.
            ``models.frozen_classifier.FrozenImageEncoder`` built from its checkpoint.
        min_confidence: minimum softmax probability of the conditioned class (0 disables).
        duplicate_metric: ``"cosine"`` (classifier features), ``"mse"`` (pixels) or ``"none"``.
        duplicate_threshold: cosine similarity >= threshold, or pixel MSE <= threshold, means memorised.
        reference_root: real image folder (``<root>/<class>/*``) to compare against, read only.
        class_names: class order of the labels.
        mean, std: the classifier's normalisation; ``None``: the classifier's own (from its checkpoint, see
            :func:`models.frozen_classifier.classifier_normalisation`).
        image_size: classifier input side (``None`` = generated size).
        ood_quantile: reject images whose Mahalanobis feature distance to the conditioned class exceeds this
            quantile of held-out real images' distances (module docstring); ``None`` disables the check. Needs
            ``reference_root`` with at least :data:`MIN_OOD_REFERENCES` images.
    """

    def __init__(
        self,
        classifier: nn.Module,
        min_confidence: float = 0.5,
        duplicate_metric: DuplicateMetric = "cosine",
        duplicate_threshold: float = 0.995,
        reference_root: str | None = None,
        class_names: list[str] | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        image_size: int | None = None,
        ood_quantile: float | None = None,
    ) -> None:
        check_choices(QualityFilter, locals())
        if ood_quantile is not None and not 0.0 < ood_quantile < 1.0:
            raise ValueError(f"QualityFilter: ood_quantile must be in (0, 1) or None, got {ood_quantile}")
        if ood_quantile is not None and reference_root is None:
            raise ValueError("QualityFilter: ood_quantile needs reference_root (the real training images whose "
                             "feature statistics define 'in distribution')")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"QualityFilter: min_confidence must be in [0, 1], got {min_confidence}")
        if duplicate_metric != "none" and reference_root is None:
            raise ValueError("QualityFilter: duplicate_metric needs reference_root (the real training images)")
        if reference_root is not None and class_names is None:
            raise ValueError("QualityFilter: reference_root needs class_names")
        self.features = ClassifierView(classifier, "features", mean, std, image_size)
        self.logits = ClassifierView(classifier, "logits", mean, std, image_size)
        self.min_confidence = min_confidence
        self.duplicate_metric = duplicate_metric
        self.duplicate_threshold = duplicate_threshold
        self.reference_root = reference_root
        self.class_names = class_names
        self.ood_quantile = ood_quantile
        self._ref: Tensor | None = None
        self._ref_size: int | None = None
        self._ood: FeatureGaussian | None = None

    def _reference(self, size: int) -> Tensor:
        if self._ref is None or self._ref_size != size:
            images, labels, _ = load_image_folder(self.reference_root, self.class_names, size)
            self._ref_pixels = images.flatten(1)
            feats = _batched(self.features, images)
            self._ref = F.normalize(feats, dim=1)
            self._ref_size = size
            log.info("QualityFilter: %d reference images from %s", len(images), self.reference_root)
            if self.ood_quantile is not None:
                self._ood = FeatureGaussian.fit(feats, labels, len(self.class_names), self.ood_quantile,
                                                source=str(self.reference_root))
        return self._ref

    @torch.no_grad()
    def __call__(self, images: Tensor, labels: Tensor) -> dict[str, Tensor | list[str]]:
        """Scores and decisions. Returns ``confidence`` ``[B]``, ``similarity`` ``[B]`` (max cosine or min MSE to
        the references; NaN when not checked), ``accept`` ``[B]`` bool and ``reason`` (``"ok"``,
        ``"low_confidence"``, ``"memorised"``, ``"out_of_distribution"``) and ``ood_distance`` ``[B]``
        (Mahalanobis feature distance to the conditioned class; NaN when not checked)."""
        images = images.float()
        probs = self.logits(images).softmax(dim=1)
        conf = probs.gather(1, labels.view(-1, 1).long()).squeeze(1)
        sim = torch.full_like(conf, float("nan"))
        memorised = torch.zeros_like(conf, dtype=torch.bool)
        if self.duplicate_metric == "cosine":
            ref = self._reference(images.shape[-1])
            sim = (F.normalize(self.features(images), dim=1) @ ref.t()).max(dim=1).values
            memorised = sim >= self.duplicate_threshold
        elif self.duplicate_metric == "mse":
            self._reference(images.shape[-1])
            sim = torch.cdist(images.flatten(1), self._ref_pixels).pow(2).min(dim=1).values / images[0].numel()
            memorised = sim <= self.duplicate_threshold
        dist = torch.full_like(conf, float("nan"))
        ood = torch.zeros_like(conf, dtype=torch.bool)
        if self.ood_quantile is not None:
            self._reference(images.shape[-1])
            dist = self._ood.distance(self.features(images), labels)
            ood = dist > self._ood.threshold
        low = conf < self.min_confidence
        reason = ["memorised" if m else "out_of_distribution" if o else "low_confidence" if lo else "ok"
                  for m, o, lo in zip(memorised, ood, low)]
        return {"confidence": conf, "similarity": sim, "ood_distance": dist, "accept": ~(memorised | ood | low),
                "reason": reason}


#: Fewest reference images the out-of-distribution check accepts (half fit the Gaussian, half set the threshold).
MIN_OOD_REFERENCES = 8


class FeatureGaussian:
    """Class-conditional Gaussian of classifier features with one shared covariance (Lee et al. 2018) and a
    distance threshold from held-out real images (:class:`QualityFilter`, module docstring).

    Args:
        means: ``[K, F]`` class means.
        precision: ``[F, F]`` inverse of the shared (shrunk) covariance.
        threshold: distances above it are out of distribution.
    """

    def __init__(self, means: Tensor, precision: Tensor, threshold: float) -> None:
        self.means = means
        self.precision = precision
        self.threshold = float(threshold)

    @classmethod
    def fit(cls, features: Tensor, labels: Tensor, num_classes: int, quantile: float, source: str = "",
            seed: int = 0) -> FeatureGaussian:
        """Fit on a random half of ``features`` (per class), threshold = ``quantile`` of the other half's distances
        to their own class mean.

        Shapes:
            features: ``[N, F]``; labels: ``[N]``.

        Raises:
            ValueError: fewer than :data:`MIN_OOD_REFERENCES` reference images (naming ``source``).
        """
        from sklearn.covariance import ledoit_wolf

        if len(features) < MIN_OOD_REFERENCES:
            raise ValueError(f"QualityFilter: the out-of-distribution check needs >= {MIN_OOD_REFERENCES} reference "
                             f"images, {source} has {len(features)}")
        feats = features.double()
        g = torch.Generator().manual_seed(seed)
        fit_mask = torch.zeros(len(feats), dtype=torch.bool)
        for k in range(num_classes):  # half of every class fits, the other half is held out
            idx = (labels == k).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            fit_mask[idx[: (len(idx) + 1) // 2]] = True
        means = torch.zeros(num_classes, feats.shape[1], dtype=torch.float64)
        overall = feats[fit_mask].mean(dim=0)
        for k in range(num_classes):
            sel = fit_mask & (labels == k)
            means[k] = feats[sel].mean(dim=0) if sel.any() else overall
        centred = feats[fit_mask] - means[labels[fit_mask]]
        cov, _ = ledoit_wolf(centred.numpy(), assume_centered=True)
        precision = torch.linalg.pinv(torch.from_numpy(cov), hermitian=True)
        model = cls(means, precision, float("inf"))
        held = ~fit_mask
        dist = model.distance(features[held], labels[held])
        model.threshold = float(torch.quantile(dist, quantile))
        log.info("QualityFilter: out-of-distribution threshold %.3f (Mahalanobis, %.3f quantile of %d held-out "
                 "reference images; fitted on %d)", model.threshold, quantile, int(held.sum()), int(fit_mask.sum()))
        return model

    def distance(self, features: Tensor, labels: Tensor) -> Tensor:
        """Mahalanobis distance of each feature vector to the mean of its class.

        Shapes:
            features: ``[B, F]``; labels: ``[B]`` -> ``[B]``.
        """
        diff = features.double().cpu() - self.means[labels.long().cpu()]
        return ((diff @ self.precision) * diff).sum(dim=1).clamp_min(0).sqrt().to(features.dtype)
