"""Face datamodules built from flat setting names in tests (``image_size=16, descriptor="none"``), nested the way
``FERDataModule`` takes them (:func:`datamodules.fer.nest_flat_settings`)."""

from __future__ import annotations

from typing import Any

from datamodules.fer import FERDataModule, nest_flat_settings


def fer_datamodule(*args: Any, **flat: Any) -> FERDataModule:
    """``FERDataModule(*args, **nest_flat_settings(flat))``."""
    return FERDataModule(*args, **nest_flat_settings(flat))


def batch_transform(augment: str = "none", **kw: Any):
    """A ``FaceBatchTransform`` from flat settings: normalisation fields, and augmentation fields over the identity
    augmentation (``NO_AUGMENT``) when ``augment="train"``, ``augment="none"``: no augmentation."""
    import dataclasses

    from datamodules.datasets.images import NO_AUGMENT, FaceAugment, FaceBatchTransform, FaceNormalisation

    norm_fields = {f.name for f in dataclasses.fields(FaceNormalisation)}
    aug_fields = {f.name for f in dataclasses.fields(FaceAugment)}
    unknown = set(kw) - norm_fields - aug_fields
    if unknown:
        raise TypeError(f"batch_transform: unknown settings {sorted(unknown)}")
    norm = FaceNormalisation(**{k: v for k, v in kw.items() if k in norm_fields})
    aug = {k: v for k, v in kw.items() if k in aug_fields}
    if augment == "train":
        return FaceBatchTransform(norm, dataclasses.replace(NO_AUGMENT, **aug))
    if augment != "none":
        raise ValueError(f"FaceBatchTransform: augment must be 'train' or 'none', got {augment!r}")
    FaceAugment(**{**dataclasses.asdict(NO_AUGMENT), **aug})  # validated even when unused
    return FaceBatchTransform(norm)
