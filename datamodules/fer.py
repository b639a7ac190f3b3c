"""FERDataModule: face-expression image folders -> cached face crops + local descriptor maps -> batches.

Implements the data side of Ji et al., *Multimodal and multiscale facial expression recognition analysis for
learning emotions* (J. Zhengzhou Univ. Eng. Sci. 2026, 47(3)): faces cropped and resampled (§2.1.1, 256x256 in
the paper), a local descriptor map per face for the local branch (§2.2.2, SUN saliency by default), a 70/15/15
stratified split (§3.1.1), a subject-disjoint split, or the split folders a dataset is shared with
(``split="folders"``: FER2013, RAF-DB, AffectNet exports), and diffusion-generated images (§2.1.2) joining the
training split only through ``extra_roots``.

Batch (``docs/architecture.md``, "Face images"): ``image`` ``[B, 3, H, W]`` float32 (normalised),
``descriptor`` ``[B, 1, H, W]`` float32 (when ``descriptor != "none"``), ``label`` ``[B]`` int64, ``origin``
``list[str]``, ``path`` ``list[str]``. Prediction batches come from :mod:`datamodules.face_video` (this module keeps
training data only).

Settings typed once: crop, descriptor, augmentation and normalisation are nested settings objects (``crop:
{image_size: 64, face_detection: none}``, ``descriptor: {kind: none}``, ``augment: {...}``, ``normalisation:
{...}``; on the command line ``--data.init_args.crop.image_size 64``).

Portable checkpoints: the datamodule's :meth:`FERDataModule.state_dict` (Lightning stores it in every checkpoint,
under ``"FERDataModule"``) is :meth:`FERDataModule.preprocessing_state`: class names, crop, normalisation and
descriptor settings and the fitted SUN statistics, as plain data; :meth:`FERDataModule.load_state_dict` /
:meth:`FERDataModule.apply_preprocessing_state` make a datamodule use them, so predicting needs no training cache
(:func:`common.preprocessing.face_preprocessing` finds the state in a checkpoint, old ones included).

Pipeline: ``prepare_data`` (rank 0, once) scans the folders, has the face cache (:class:`features.face_cache.FaceCache`,
:attr:`FERDataModule.cache`) detect/crop/record the faces, writes or reuses the split file, has the cache fit the SUN
statistics on the real training images and compute the descriptor maps; ``setup`` reads crops and maps back as uint8
tensors (fast epochs >= 2). The cache lives in ``cache/fer/<hash of root + crop settings>`` by default; split files
and litdata streams are written beside it by this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from common.choices import check_choices
from common.io import atomic_write
from common.preprocessing import PREPROCESSING_KIND
from common.settings import as_settings, plain_settings
from common.splits import check_split_duplicates, warn_split_content
from datamodules.base import AffectDataModule
from datamodules.datasets.images import (
    SPLITS,
    FaceAugment,
    FaceBatchTransform,
    FaceNormalisation,
    FaceTensorDataset,
    class_balanced_weights,
    group_split,
    stratified_split,
    subject_from_name,
)
from datamodules.distributed import eval_sampler
from features.descriptors import DescriptorSettings, SUNParams
from features.face_cache import FaceCache, FaceCacheMiss
from features.faces import FaceCropSettings, settings_hash
from features.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    REAL_ORIGIN,
    ImageRecord,
    scan_class_folders,
    scan_split_folders,
)

log = logging.getLogger(__name__)

#: Settings a model depends on at prediction time (stored in LitFER checkpoints, see ``preprocessing_state``).
PREPROCESSING_KEYS = (
    "class_names", "image_size", "face_detection", "face_margin", "background", "descriptor", "lbp_points",
    "lbp_radius", "energy_sigma", "sun_sigmas", "sun_ratio", "sun_channels", "mean", "std", "descriptor_mean",
    "descriptor_std", "colour",
)
#: Preprocessing settings that checkpoints written before they existed lack, with the value those models used.
PREPROCESSING_DEFAULTS: dict[str, Any] = {"colour": "rgb"}
#: The defaults of the nested settings: frozen dataclasses (immutable values, so sharing one default is safe, and
#: jsonargparse lists each field with its default and choices in ``--help``).
DEFAULT_CROP = FaceCropSettings()
DEFAULT_DESCRIPTOR = DescriptorSettings()
DEFAULT_AUGMENT = FaceAugment()
DEFAULT_NORMALISATION = FaceNormalisation()
#: The nested settings objects of :class:`FERDataModule` (attributes and hyper-parameters of these names).
NESTED_SETTINGS = ("crop", "descriptor", "augment", "normalisation")
#: Flat name of a setting (the stored preprocessing state's keys, and the arguments before the settings were nested)
#: -> (nested settings, field) of :class:`FERDataModule`.
FLAT_SETTINGS: dict[str, tuple[str, str]] = {
    "image_size": ("crop", "image_size"), "face_detection": ("crop", "face_detection"),
    "face_margin": ("crop", "margin"), "no_face": ("crop", "no_face"), "background": ("crop", "background"),
    "descriptor": ("descriptor", "kind"), "lbp_points": ("descriptor", "lbp_points"),
    "lbp_radius": ("descriptor", "lbp_radius"), "energy_sigma": ("descriptor", "energy_sigma"),
    "sun_sigmas": ("descriptor", "sun_sigmas"), "sun_ratio": ("descriptor", "sun_ratio"),
    "sun_channels": ("descriptor", "sun_channels"),
    "hflip_prob": ("augment", "hflip_prob"), "affine_degrees": ("augment", "affine_degrees"),
    "affine_translate": ("augment", "affine_translate"), "affine_scale": ("augment", "affine_scale"),
    "brightness": ("augment", "brightness"), "contrast": ("augment", "contrast"),
    "saturation": ("augment", "saturation"), "augment_policy": ("augment", "policy"),
    "augment_ops": ("augment", "policy_ops"), "augment_magnitude": ("augment", "policy_magnitude"),
    "random_erasing": ("augment", "random_erasing"),
    "mean": ("normalisation", "mean"), "std": ("normalisation", "std"),
    "descriptor_mean": ("normalisation", "descriptor_mean"), "descriptor_std": ("normalisation", "descriptor_std"),
    "colour": ("normalisation", "colour"),
}
#: The flat keys of the stored preprocessing state that map to nested settings.
PREPROCESSING_FIELDS: dict[str, tuple[str, str]] = {
    k: FLAT_SETTINGS[k] for k in PREPROCESSING_KEYS if k in FLAT_SETTINGS
}


def nest_flat_settings(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"image_size": 64, "descriptor": "none", "root": ...}`` -> ``{"crop": {"image_size": 64}, "descriptor":
    {"kind": "none"}, "root": ...}``: flat setting names (:data:`FLAT_SETTINGS`; the stored preprocessing state,
    older configs) as :class:`FERDataModule`'s nested settings; other keys unchanged, nested ones merged."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in FLAT_SETTINGS and not isinstance(value, Mapping):
            group, field = FLAT_SETTINGS[key]
            out.setdefault(group, {})[field] = value
        elif key in NESTED_SETTINGS and isinstance(value, Mapping):
            out.setdefault(key, {}).update(value)
        else:
            out[key] = value
    return out

PREPROCESSING_VERSION = 1


class FERDataModule(AffectDataModule):
    """Face expression images (learning emotions, CK+, JAFFE) with cached crops and descriptor maps.

    Args:
        root: dataset root, one sub-folder per class (relative paths are resolved against the working dir).
        class_names: class list; labels index into it.
        class_aliases: folder name -> class name map.
        unknown_folders: ``"error"`` (a folder not in ``class_names``/aliases is an error naming it) or
            ``"ignore"``.
        extra_roots: folders of generated images (same class-folder layout; a top-level ``manifest.jsonl``
            is allowed and ignored by the scan). They join the TRAIN split only; ``origin`` = folder name.
        crop: how faces are found and cropped (:class:`features.faces.FaceCropSettings`: ``image_size``, the side of
            the square crop (paper: 256; CPU configs 48-112); ``face_detection`` ``"haar"`` (OpenCV frontal-face
            cascade, largest face) or ``"none"`` (pre-cropped); ``margin`` added on each side of the detected box;
            ``no_face`` ``"keep"`` (whole image, padded square) or ``"skip"``; ``background`` under transparent
            pixels; the cascade's parameters).
        on_bad_image: ``"skip"`` (corrupt / truncated / zero-byte / non-image files are counted, logged and
            recorded in the manifest) or ``"error"``.
        max_pixels: files with more pixels (``width * height``, read from the header before decoding) are bad
            images (reason ``"too_many_pixels"``: counted and logged skips, or an error with
            ``on_bad_image="error"``); ``None`` leaves only PIL's decompression-bomb limit.
        min_image_side: files with a smaller side are bad images (``"too_small"``).

        A class folder whose files are all unusable is an error naming the folder (every file unusable: an error
        naming the root); the same file content under two classes is a warning listing the files.
        descriptor: the local descriptor map of the local branch (:class:`features.descriptors.DescriptorSettings`:
            ``kind`` ``"sun"``, ``"spectral_residual"``, ``"lbp"``, ``"energy"`` or ``"none"`` (no ``descriptor``
            key in batches), and each kind's parameters); default SUN.
        sun_params_file: where the SUN statistics live (default: inside the cache); needed for prediction
            without the training root.
        split: ``"stratified"`` (paper §3.1.1), ``"group"`` (subject-disjoint, by ``subject_pattern``) or
            ``"folders"``: the root holds per-split class folders, ``<root>/train/<class>/``, ``<root>/val/<class>/``
            and/or ``<root>/test/<class>/``, as FER2013, RAF-DB and AffectNet exports are shared. It is an explicit
            value rather than detected from the folder names, so that a root is never read in a way the config does
            not say (a class-folder root with the split values above and ``train/`` + ``val/`` folders is an error
            that points here). Every class must have a folder in every split folder; ``train/`` plus ``val/``
            and/or ``test/`` are needed. Which folder feeds which stage is ``val_from``'s choice.
        split_ratios: (train, val, test) fractions (not used by ``split="folders"``).
        subject_pattern: regex whose first group is the subject id (CK+ ``^(S\\d+)_``, JAFFE
            ``^([A-Z]{2})\\.``); required for ``split="group"``; with ``split="folders"`` and
            ``val_from="train"`` it makes the validation carve subject-disjoint.
        val_from: ``split="folders"`` only: where the validation split comes from.
            ``"train"``: a seeded, stratified ``val_fraction`` of ``train/`` (subject-disjoint with
            ``subject_pattern``); the test split is ``test/``, or ``val/`` when there is no ``test/``. This is the
            honest reading of FER2013 as distributed here (``val/`` IS the PublicTest split that papers report, and
            PrivateTest is withheld): checkpoint selection, early stopping and learning-rate plateaus then never see
            the reported images. ``"folder"``: validation = ``val/``, test = ``test/`` (empty without one: selecting
            on the reported set is then the user's explicit choice). ``"auto"`` (default): ``"folder"`` when both
            ``val/`` and ``test/`` exist, otherwise ``"train"``. ``"train"`` with both ``val/`` and ``test/`` is an
            error (``val/`` would go unused).
        val_fraction: fraction of ``train/`` carved out for validation with ``val_from="train"``.
        on_split_duplicate: files with identical content (SHA-1) in two splits (a test image also trained on):
            ``"warn"`` (default; counted and listed; FER2013's Training and PublicTest share 239 such images, and
            a benchmark split is not ours to change) or ``"error"``.
        split_file: JSON split file (split -> relative paths); default inside the cache. Reused when it
            exists; files on disk that disagree with it raise an error.
        resplit: ``"never"`` (reuse an existing split file) or ``"always"`` (recompute and overwrite).
        cache_dir: cache directory (default ``cache/fer/<hash>``).
        train_sampler: ``"none"`` (shuffle) or ``"class_balanced"`` (``WeightedRandomSampler``, 1/class count).
            (Not ``sampler``: Lightning logs the system's and the datamodule's hyper-parameters together and refuses
            a key both have with different values, and ``LitLDM.sampler`` is the diffusion sampler.)
        augment: train-time augmentation of the batches (:class:`datamodules.datasets.images.FaceAugment`: flip,
            affine, colour jitter, TrivialAugment/RandAugment policy, random erasing).
        normalisation: normalisation of image and descriptor map and the colour policy
            (:class:`datamodules.datasets.images.FaceNormalisation`: ``mean``/``std`` (default ImageNet's),
            ``descriptor_mean``/``descriptor_std``, ``colour`` ``"grey"`` turns every face grey before the model,
            in training, evaluation and prediction alike, for models trained on grey faces). Stored in checkpoints
            with the rest of the preprocessing (:meth:`state_dict`).
        batch_size: batch size of every loader.
        num_workers: DataLoader workers.
        seed: seed of the split, the SUN pixel subsample and the class-balanced sampler.
        progress: ``"rich"`` progress bar during preprocessing, or ``"none"``.
        cache_backend: ``"memory"`` (every crop held as a uint8 tensor, fastest for sets that fit) or ``"litdata"``
            (crops written once as litdata chunks and streamed from disk: memory stays flat as the set grows, and
            litdata shards the train split across DDP ranks and nodes; see
            :mod:`datamodules.datasets.streaming`). Same batch contract either way.
        stream_dir: where the litdata chunks go (default ``<cache>/litdata/<hash>``); a local folder, or an object
            store URL that litdata understands (``s3://...``).
        stream_group_size: faces per litdata sample (``cache_backend="litdata"``): litdata's per-sample reader runs
            once per group, the faces of a group always share a batch (groups are random sets of faces; see
            :mod:`datamodules.datasets.streaming`). ``None``: the largest of 8, 4, 2, 1 that divides
            ``batch_size``. Must divide ``batch_size``; part of the default stream folder's key.
    """

    def __init__(
        self,
        root: str,
        class_names: list[str],
        class_aliases: dict[str, str] | None = None,
        unknown_folders: Literal["error", "ignore"] = "error",
        extra_roots: list[str] | None = None,
        crop: FaceCropSettings = DEFAULT_CROP,
        on_bad_image: Literal["skip", "error"] = "skip",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        min_image_side: int = DEFAULT_MIN_SIDE,
        descriptor: DescriptorSettings = DEFAULT_DESCRIPTOR,
        sun_params_file: str | None = None,
        split: Literal["stratified", "group", "folders"] = "stratified",
        split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
        subject_pattern: str | None = None,
        val_from: Literal["auto", "train", "folder"] = "auto",
        val_fraction: float = 0.1,
        on_split_duplicate: Literal["warn", "error"] = "warn",
        split_file: str | None = None,
        resplit: Literal["never", "always"] = "never",
        cache_dir: str | None = None,
        train_sampler: Literal["none", "class_balanced"] = "none",
        augment: FaceAugment = DEFAULT_AUGMENT,
        normalisation: FaceNormalisation = DEFAULT_NORMALISATION,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 42,
        progress: Literal["rich", "none"] = "rich",
        cache_backend: Literal["memory", "litdata"] = "memory",
        stream_dir: str | None = None,
        stream_group_size: int | None = None,
    ) -> None:
        super().__init__()
        check_choices(FERDataModule, locals())
        name = type(self).__name__
        if stream_group_size is not None and (stream_group_size < 1 or batch_size % stream_group_size):
            raise ValueError(f"{name}: stream_group_size={stream_group_size} must be >= 1 and divide batch_size "
                             f"({batch_size})")
        if cache_backend == "litdata" and train_sampler != "none":
            raise ValueError(f"{name}: train_sampler={train_sampler!r} needs random access; the litdata stream shuffles itself "
                             "(use cache_backend='memory' for class-balanced sampling)")
        if not class_names or len(set(class_names)) != len(class_names):
            raise ValueError(
                f"{name}: class_names must be a non-empty list of unique names, got {class_names}"
            )
        if split == "group" and not subject_pattern:
            raise ValueError(f"{name}: split='group' needs subject_pattern (e.g. '^(S\\d+)_' for CK+)")
        if (max_pixels is not None and max_pixels < 1) or min_image_side < 1:
            raise ValueError(f"{name}: max_pixels and min_image_side must be >= 1, got {max_pixels}, {min_image_side}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"{name}: batch_size must be >= 1 and num_workers >= 0")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"{name}: val_fraction must be in (0, 1), got {val_fraction}")
        if len(split_ratios) != 3 or min(split_ratios) < 0 or split_ratios[0] <= 0:
            raise ValueError(
                f"{name}: split_ratios must be (train > 0, val >= 0, test >= 0), got {split_ratios}"
            )
        extra = [str(p) for p in (extra_roots or [])]
        extra_names = [Path(p).name for p in extra]
        if len(set(extra_names)) != len(extra_names) or REAL_ORIGIN in extra_names:
            raise ValueError(
                f"{name}: extra_roots need distinct folder names other than 'real', got {extra_names}"
            )
        # the nested settings, validated by their own classes (a dict from Python is accepted too)
        self.crop = as_settings(FaceCropSettings, crop, name, "crop")
        self.descriptor = as_settings(DescriptorSettings, descriptor, name, "descriptor")
        self.augment = as_settings(FaceAugment, augment, name, "augment")
        self.normalisation = as_settings(FaceNormalisation, normalisation, name, "normalisation")
        self.save_hyperparameters()
        # checkpoints hold plain data only (a weights-only reader refuses pickled dataclasses)
        for key in NESTED_SETTINGS:
            self.hparams[key] = plain_settings(getattr(self, key))
        self._extra_roots = extra
        self._collate_train = FaceBatchTransform(self.normalisation, self.augment)
        self._collate_eval = FaceBatchTransform(self.normalisation)
        self.datasets: dict[str, FaceTensorDataset] = {}
        self._sun_params: SUNParams | None = None  # from a checkpoint (load_state_dict)
        self.cache = self._make_cache()

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.hparams.class_names)

    @property
    def image_size(self) -> int:
        """Side of the square face crops (the CLI links it to the net's ``img_size``)."""
        return int(self.crop.image_size)

    @property
    def mean(self) -> tuple[float, float, float]:
        """RGB normalisation mean of the batches (linked to ``LitVAE``/``LitLDM`` ``image_mean``)."""
        return tuple(float(v) for v in self.normalisation.mean)

    @property
    def std(self) -> tuple[float, float, float]:
        """RGB normalisation std of the batches (linked to ``image_std``)."""
        return tuple(float(v) for v in self.normalisation.std)

    @property
    def cache_root(self) -> Path:
        """Cache directory (``cache_dir`` or ``cache/fer/<hash of root + crop settings>``)."""
        if self.hparams.cache_dir:
            return Path(self.hparams.cache_dir)
        key = {"root": str(Path(self.hparams.root).resolve()), "crop": self.crop.as_dict()}
        if self.hparams.split == "folders":  # another reading of the root: its own manifest and maps
            key["layout"] = "split_folders"
        return Path("cache") / "fer" / settings_hash(key)

    @property
    def split_path(self) -> Path:
        """Split file: ``split_file`` or ``<cache>/splits/<split>-<hash of split settings>.json``."""
        if self.hparams.split_file:
            return Path(self.hparams.split_file)
        hp = self.hparams
        key = {
            "split": hp.split,
            "ratios": list(hp.split_ratios),
            "seed": hp.seed,
            "pattern": hp.subject_pattern,
            "classes": list(hp.class_names),
            "aliases": hp.class_aliases,
        }
        if hp.split == "folders":
            key.update(folders=self._folder_roles(), val_fraction=hp.val_fraction)
        return self.cache_root / "splits" / f"{hp.split}-{settings_hash(key)}.json"

    @property
    def sun_params_path(self) -> Path:
        """SUN statistics file (``sun_params_file`` or inside the cache, keyed by the filter bank)."""
        return self.cache.sun_params_path

    def _make_cache(self) -> FaceCache:
        """The face cache of the current settings (:attr:`cache`; rebuilt when a checkpoint's settings are applied)."""
        hp = self.hparams
        return FaceCache(self.cache_root, self.crop, self.descriptor, sun_params_file=hp.sun_params_file or None,
                         on_bad_image=hp.on_bad_image, max_pixels=hp.max_pixels, min_side=hp.min_image_side,
                         progress=hp.progress)

    # ------------------------------------------------------------------ scanning / splitting helpers
    def _folder_roles(self) -> dict[str, str | None]:
        """``split="folders"``: the split folder each stage reads, ``{"train": "train", "val": "train" | "val",
        "test": "test" | "val" | None}`` (``val`` = ``"train"``: carved from ``train/``; see ``val_from``)."""
        hp = self.hparams
        root = Path(hp.root)
        has_val, has_test = (root / "val").is_dir(), (root / "test").is_dir()
        mode = hp.val_from if hp.val_from != "auto" else ("folder" if has_val and has_test else "train")
        if mode == "train":
            if has_val and has_test:
                raise ValueError(f"{type(self).__name__}: val_from='train' with both {str(root / 'val')!r} and "
                                 f"{str(root / 'test')!r}: the val/ folder would go unused (use val_from='folder')")
            return {"train": "train", "val": "train", "test": "test" if has_test else "val"}
        if not has_val:
            raise FileNotFoundError(f"{type(self).__name__}: val_from='folder' needs the folder {str(root / 'val')!r}")
        return {"train": "train", "val": "val", "test": "test" if has_test else None}

    def _scan(self) -> tuple[list[ImageRecord], list[ImageRecord]]:
        hp = self.hparams
        root = Path(hp.root)
        if hp.split == "folders":
            self._folder_roles()  # option errors before the (slower) scan
            parts = scan_split_folders(root, hp.class_names, hp.class_aliases, hp.unknown_folders, REAL_ORIGIN)
            real = [r for recs in parts.values() for r in recs]
        else:
            names = set(hp.class_names) | set(hp.class_aliases or {})
            if (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()) \
                    and "train" not in names:
                raise ValueError(f"{type(self).__name__}: image root {str(root)!r} holds per-split folders (train/, "
                                 f"val/ or test/), not class folders: use split='folders' (split={hp.split!r})")
            real = scan_class_folders(
                hp.root, hp.class_names, hp.class_aliases, hp.unknown_folders, REAL_ORIGIN, True
            )
        extra: list[ImageRecord] = []
        for r in self._extra_roots:
            extra += scan_class_folders(
                r, hp.class_names, hp.class_aliases, hp.unknown_folders, Path(r).name, False
            )
        return real, extra

    def _check_usable(self, real: list[ImageRecord], extra: list[ImageRecord], entries: dict[str, dict],
                      warn: bool = True) -> None:
        """Errors for a root / class folder without one usable image; a warning (``warn``) for the same content
        under two classes."""
        roots = {REAL_ORIGIN: self.hparams.root, **{Path(r).name: r for r in self._extra_roots}}
        for origin, recs in ((REAL_ORIGIN, real), *((Path(r).name, [e for e in extra if e.origin == Path(r).name])
                                                     for r in self._extra_roots)):
            if not recs:
                continue
            reasons = Counter(entries[r.path]["reason"] for r in recs if entries[r.path]["status"] != "ok")
            if sum(reasons.values()) == len(recs):
                raise ValueError(
                    f"Image root {roots[origin]!r}: none of its {len(recs)} files is usable (skipped: "
                    f"{dict(reasons)}); see the warnings above for each file"
                )
            by_folder: dict[str, list[ImageRecord]] = {}
            depth = 2 if origin == REAL_ORIGIN and self.hparams.split == "folders" else 1  # <split>/<class>
            for r in recs:
                by_folder.setdefault("/".join(r.rel.split("/")[:depth]), []).append(r)
            for folder, frecs in sorted(by_folder.items()):
                bad = Counter(entries[r.path]["reason"] for r in frecs if entries[r.path]["status"] != "ok")
                if sum(bad.values()) == len(frecs):
                    raise ValueError(
                        f"Class folder {str(Path(roots[origin]) / folder)!r} (class {frecs[0].class_name!r}): none "
                        f"of its {len(frecs)} files is usable (skipped: {dict(bad)}); a model would train without "
                        "this class. Fix or replace the files."
                    )
        if not warn:
            return
        by_hash: dict[str, list[ImageRecord]] = {}
        for r in real + extra:
            e = entries[r.path]
            if e["status"] == "ok" and e.get("sha1"):
                by_hash.setdefault(e["sha1"], []).append(r)
        for recs in by_hash.values():
            if len({r.label for r in recs}) > 1:
                log.warning(
                    "The same image (same SHA-1) is labelled with %d classes: %s",
                    len({r.label for r in recs}), ", ".join(f"{r.path} ({r.class_name})" for r in recs),
                )

    def _roots(self) -> dict[str, str]:
        roots = {REAL_ORIGIN: str(Path(self.hparams.root).resolve())}
        roots.update({Path(r).name: str(Path(r).resolve()) for r in self._extra_roots})
        return roots

    def _compute_split(self, usable: list[ImageRecord]) -> dict[str, list[str]]:
        hp = self.hparams
        if hp.split == "folders":
            return self._compute_folder_split(usable)
        labels = [r.label for r in usable]
        if hp.split == "group":
            groups = [subject_from_name(r.path, hp.subject_pattern) for r in usable]
            assign = group_split(labels, groups, hp.split_ratios, hp.seed)
        else:
            assign = stratified_split(labels, hp.split_ratios, hp.seed)
        out: dict[str, list[str]] = {s: [] for s in SPLITS}
        for r, s in zip(usable, assign):
            out[s].append(r.rel)
        return out

    def _compute_folder_split(self, usable: list[ImageRecord]) -> dict[str, list[str]]:
        """``split="folders"``: each stage from its folder; validation carved from ``train/`` for
        ``val_from="train"`` (seeded; stratified, or subject-disjoint with ``subject_pattern``)."""
        hp = self.hparams
        roles = self._folder_roles()
        by_folder: dict[str, list[ImageRecord]] = {}
        for r in usable:
            by_folder.setdefault(r.rel.split("/", 1)[0], []).append(r)
        out: dict[str, list[str]] = {s: [] for s in SPLITS}
        train = by_folder.get("train", [])
        if roles["val"] == "train":
            ratios = (1.0 - hp.val_fraction, hp.val_fraction, 0.0)
            labels = [r.label for r in train]
            if hp.subject_pattern:
                groups = [subject_from_name(r.path, hp.subject_pattern) for r in train]
                assign = group_split(labels, groups, ratios, hp.seed)
            else:
                assign = stratified_split(labels, ratios, hp.seed)
            for r, s in zip(train, assign):
                out[s].append(r.rel)
        else:
            out["train"] = [r.rel for r in train]
            out["val"] = [r.rel for r in by_folder.get("val", [])]
        if roles["test"] is not None:
            out["test"] = [r.rel for r in by_folder.get(roles["test"], [])]
        return out

    def _check_split(self, split: dict[str, list[str]], usable: list[ImageRecord], path: Path) -> None:
        if set(split) != set(SPLITS):
            raise ValueError(
                f"Split file {str(path)!r} must have exactly the keys {list(SPLITS)}, got {sorted(split)}"
            )
        listed = [p for s in SPLITS for p in split[s]]
        dup = [p for p, c in Counter(listed).items() if c > 1]
        if dup:
            raise ValueError(
                f"Split file {str(path)!r} lists {len(dup)} file(s) in several splits, e.g. {dup[:3]}"
            )
        if self.hparams.split == "folders":
            roles = self._folder_roles()
            allowed = {s: {roles[s]} - {None} for s in SPLITS}
            wrong = [f"{p} in {s}" for s in SPLITS for p in split[s] if p.split("/", 1)[0] not in allowed[s]]
            if wrong:
                raise ValueError(
                    f"Split file {str(path)!r} puts {len(wrong)} file(s) in a split their folder does not feed "
                    f"(split='folders', stages from folders {roles}), e.g. {wrong[:3]}. Pass resplit='always' to "
                    "recompute it, or another split_file."
                )
        on_disk = {r.rel for r in usable}
        missing, new = sorted(set(listed) - on_disk), sorted(on_disk - set(listed))
        if missing or new:
            raise ValueError(
                f"Split file {str(path)!r} does not match the usable images under {self.hparams.root!r}: "
                f"{len(missing)} listed file(s) missing or unusable (e.g. {missing[:3]}), {len(new)} file(s) not in "
                f"the split (e.g. {new[:3]}). Pass resplit='always' to recompute it, or another split_file."
            )

    def _load_or_make_split(self, real: list[ImageRecord], entries: dict[str, dict], write: bool) -> dict:
        usable = [r for r in real if entries[r.path]["status"] == "ok"]
        path = self.split_path
        if path.is_file() and (self.hparams.resplit == "never" or not write):
            split = json.loads(path.read_text())
            self._check_split(split, usable, path)
            return split
        if not write:
            raise RuntimeError(f"Split file {str(path)!r} is missing: call prepare_data() before setup()")
        split = self._compute_split(usable)
        with atomic_write(path, "w") as f:
            f.write(json.dumps(split, indent=1))
        log.info("Wrote split %s (%s)", path, {s: len(v) for s, v in split.items()})
        return split

    @staticmethod
    def _split_digest(split: dict[str, list[str]]) -> str:
        return hashlib.sha1(json.dumps({s: sorted(split[s]) for s in SPLITS}).encode()).hexdigest()[:16]

    def load_sun_params(self) -> SUNParams:
        """The SUN statistics fitted on the training images: from the checkpoint when one was applied
        (:meth:`apply_preprocessing_state`), else from :attr:`sun_params_path` (clear error when missing)."""
        if self._sun_params is not None:
            return self._sun_params
        return self.cache.load_sun()

    # ------------------------------------------------------------------ portable checkpoints
    def preprocessing_state(self) -> dict[str, Any]:
        """What a trained model needs to predict, as plain JSON types:
        ``{"version", "kind", "settings": {<PREPROCESSING_KEYS>}, "sun_params": dict | None}``.

        It is this datamodule's :meth:`state_dict`, which Lightning stores in every checkpoint (under
        ``"FERDataModule"``, the class name); the settings are flat (``image_size``, ``face_margin``, ``descriptor``,
        ``mean``...), the schema every reader of face checkpoints knows (:data:`PREPROCESSING_FIELDS` maps them to
        the nested settings)."""
        settings = self._preprocessing_settings()
        sun = None
        if self.descriptor.kind == "sun":
            try:
                sun = dict(self.load_sun_params().__dict__)
            except FileNotFoundError:
                log.warning("%s: no SUN statistics yet (prepare_data not run): the checkpoint will not hold them",
                            type(self).__name__)
        return {"version": PREPROCESSING_VERSION, "kind": PREPROCESSING_KIND, "settings": settings,
                "sun_params": sun}

    def _preprocessing_settings(self) -> dict[str, Any]:
        """The flat ``settings`` of :meth:`preprocessing_state` (plain JSON types)."""
        settings: dict[str, Any] = {"class_names": list(self.class_names)}
        for key, (group, field) in PREPROCESSING_FIELDS.items():
            value = getattr(getattr(self, group), field)
            settings[key] = list(value) if isinstance(value, tuple) else value
        return settings

    def state_dict(self) -> dict[str, Any]:
        """Lightning's datamodule hook: the :meth:`preprocessing_state`, stored in every checkpoint."""
        return self.preprocessing_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Lightning's datamodule hook (a checkpoint restored by ``trainer.fit/validate/test/predict(ckpt_path=)``):
        :meth:`apply_preprocessing_state`. ``cli.py`` applies the checkpoint's state before any data is prepared;
        when Lightning restores it again after ``setup`` it changes nothing. A state that differs from the settings
        the datasets were already built with is an error (the model would see other crops than it was trained on)."""
        self.apply_preprocessing_state(state_dict, origin="the restored checkpoint")

    def apply_preprocessing_state(
        self, state: dict[str, Any], origin: str = "the checkpoint", inputs: tuple[str, ...] | None = None,
        explicit: Collection[str] = (),
    ) -> None:
        """Use a trained model's preprocessing (see :meth:`preprocessing_state`).

        The stored settings replace this datamodule's (a model only works with the crops and descriptors it was
        trained on); every value that changes is logged.

        Args:
            state: the stored preprocessing state.
            origin: where it comes from (named in messages).
            inputs: the batch keys the model's net takes (``net.inputs``); a net that takes no ``descriptor``
                (a timm classifier) gets no descriptor maps (``descriptor: {kind: none}``: nothing computed, no SUN
                statistics needed), whatever descriptor its training used.
            explicit: top-level settings the user gave explicitly (on the command line, e.g. ``crop`` for
                ``--data.init_args.crop.image_size``): one whose stored value differs is an error naming the flag,
                instead of being replaced.

        Raises:
            ValueError: the state is not of a known version or lacks settings, a setting given explicitly differs,
                or the datasets were already built with other settings (all naming ``origin``).
        """
        name = type(self).__name__
        if not isinstance(state, dict) or state.get("version") != PREPROCESSING_VERSION or "settings" not in state:
            raise ValueError(f"{name}: {origin} holds no usable preprocessing state (version "
                             f"{state.get('version') if isinstance(state, dict) else None!r})")
        stored = {**PREPROCESSING_DEFAULTS, **state["settings"]}
        missing = [k for k in PREPROCESSING_KEYS if k not in stored]
        if missing:
            raise ValueError(f"{name}: {origin} lacks the preprocessing settings {missing}")
        current = self._preprocessing_settings()
        changed = {k: (current[k], stored[k]) for k in PREPROCESSING_KEYS if current[k] != stored[k]}
        clashes = [k for k in changed if PREPROCESSING_FIELDS.get(k, (k,))[0] in explicit]
        if clashes:
            flags = sorted({"--data.init_args." + ".".join(PREPROCESSING_FIELDS.get(k, (k,))) for k in clashes})
            raise ValueError(
                f"{name}: " + "; ".join(f"{k} {changed[k][0]!r} (given explicitly) differs from {changed[k][1]!r} "
                                       f"stored in {origin}" for k in clashes)
                + ". The model only works with the preprocessing it was trained with: drop " + ", ".join(flags)
            )
        if changed and self.datasets:
            raise ValueError(f"{name}: {origin} holds other preprocessing than the datasets were built with "
                             f"({', '.join(f'{k}: {o!r} -> {n!r}' for k, (o, n) in changed.items())}); apply it "
                             "before prepare_data/setup")
        for k, (old, new) in changed.items():
            log.warning("%s: %s = %r from %s (was %r)", name, k, new, origin, old)
        groups = nest_flat_settings({k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()
                                     if k in PREPROCESSING_FIELDS})
        if inputs is not None and "descriptor" not in inputs and groups["descriptor"]["kind"] != "none":
            log.info("%s: descriptor kind 'none' (the model of %s takes %s, no descriptor map; trained with %r)",
                     name, origin, tuple(inputs), groups["descriptor"]["kind"])
            groups["descriptor"]["kind"] = "none"
            state = {**state, "sun_params": None}
        for group, fields in groups.items():
            setattr(self, group, dataclasses.replace(getattr(self, group), **fields))
            self.hparams[group] = plain_settings(getattr(self, group))
        self.hparams["class_names"] = list(stored["class_names"])
        self._collate_train = FaceBatchTransform(self.normalisation, self.augment)
        self._collate_eval = FaceBatchTransform(self.normalisation)
        sun = state.get("sun_params")
        self._sun_params = SUNParams(**sun) if sun else None
        self.cache = self._make_cache()
        if self.descriptor.kind == "sun" and self._sun_params is None:
            log.warning("%s: %s has no SUN statistics; they will be read from %s", name, origin,
                        self.sun_params_path)

    # ------------------------------------------------------------------ LightningDataModule hooks
    def prepare_data(self) -> None:
        """Preprocess and cache everything once (no downloads; no state is set on ``self``)."""
        hp = self.hparams
        if not Path(hp.root).is_dir():
            raise FileNotFoundError(
                f"Image root {hp.root!r} does not exist (the data module never downloads)"
            )
        real, extra = self._scan()
        entries = self.cache.crop_faces(real + extra, self._roots())
        self._check_usable(real, extra, entries)
        split = self._load_or_make_split(real, entries, write=True)
        by_rel = {r.rel: r.path for r in real}
        check_split_duplicates(str(hp.root), {s: {by_rel[rel]: entries[by_rel[rel]].get("sha1") for rel in split[s]}
                                              for s in SPLITS}, hp.on_split_duplicate)
        sun = None
        if self.descriptor.kind == "sun":
            train = set(split["train"])
            sun = self.cache.fit_or_load_sun([entries[r.path] for r in real if r.rel in train],
                                             self._split_digest(split), self.split_path, hp.seed)
        if self.descriptor.kind != "none":
            self.cache.compute_maps(entries, sun)
        self._write_streams(real, extra, entries, split, sun)

    # ------------------------------------------------------------------ split members / streaming cache
    def _members(
        self, real: list[ImageRecord], extra: list[ImageRecord], entries: dict[str, dict], split: dict
    ) -> dict[str, list[ImageRecord]]:
        """The records of each split in loader order (sorted real paths; usable generated images join train)."""
        by_rel = {r.rel: r for r in real}
        members: dict[str, list[ImageRecord]] = {s: [by_rel[p] for p in sorted(split[s])] for s in SPLITS}
        members["train"] += [r for r in extra if entries[r.path]["status"] == "ok"]
        return members

    def _stream_dir(self, split: dict, sun: SUNParams | None) -> Path:
        """``stream_dir`` or ``<cache>/litdata/<hash of split + crop + descriptor settings>``."""
        if self.hparams.stream_dir:
            return Path(self.hparams.stream_dir)
        from datamodules.datasets.streaming import FORMAT_VERSION, TRAIN_WRITE_ORDER

        # the sample layout's version is part of the key: a stream of an older layout stays untouched in its folder
        desc = None if self.descriptor.kind == "none" else self.cache.descriptor_dir(sun).name
        key = {"split": self._split_digest(split), "crop": self.crop.as_dict(), "desc": desc, "extra": self._roots(),
               "format": FORMAT_VERSION, "train_order": TRAIN_WRITE_ORDER, "group": self.stream_group_size}
        return self.cache_root / "litdata" / settings_hash(key)

    @property
    def stream_group_size(self) -> int:
        """Faces per litdata sample: ``stream_group_size``, or the largest of 8, 4, 2, 1 dividing ``batch_size``."""
        if self.hparams.stream_group_size is not None:
            return int(self.hparams.stream_group_size)
        return next(g for g in (8, 4, 2, 1) if self.hparams.batch_size % g == 0)

    def _write_streams(
        self, real: list[ImageRecord], extra: list[ImageRecord], entries: dict[str, dict], split: dict,
        sun: SUNParams | None,
    ) -> None:
        """``cache_backend="litdata"``: write each split's cached crops once as litdata chunks (rank 0)."""
        if self.hparams.cache_backend != "litdata":
            return
        from datamodules.datasets.streaming import StreamRecord, train_write_order, write_face_stream

        root = self._stream_dir(split, sun)
        maps = self.descriptor.kind != "none"
        for s, recs in self._members(real, extra, entries, split).items():
            if not recs:
                continue
            if s == "train":  # a fixed permutation, so that every chunk (and shuffled batch) mixes the classes
                recs = train_write_order(recs, self._split_digest(split))
            rows = [
                StreamRecord(
                    str(self.cache.crop_path(entries[r.path])),
                    str(self.cache.map_path(entries[r.path], sun)) if maps else None,
                    r.label, r.origin, r.path,
                )
                for r in recs
            ]
            write_face_stream(rows, root / s, group_size=self.stream_group_size)

    def _setup_streams(self, members: dict[str, list[ImageRecord]], split: dict, sun: SUNParams | None) -> None:
        """Open the litdata streams written by :meth:`prepare_data` (same items as the in-memory datasets)."""
        from datamodules.datasets.streaming import INDEX_FILE, FaceStreamingDataset

        hp = self.hparams
        root = self._stream_dir(split, sun)
        for s in SPLITS:
            folder = root / s
            if not members[s]:
                size = self.crop.image_size
                descs = None if self.descriptor.kind == "none" else torch.zeros(0, 1, size, size, dtype=torch.uint8)
                self.datasets[s] = FaceTensorDataset(torch.zeros(0, 3, size, size, dtype=torch.uint8),
                                                     torch.zeros(0, dtype=torch.long), [], [], descs)
                continue
            if not (folder / INDEX_FILE).is_file():
                raise RuntimeError(f"litdata stream {str(folder)!r} missing: call prepare_data() before setup()")
            # train: litdata's seeded shuffle, and its default tail handling across DDP ranks (equal batch
            # counts per rank); eval: written order, every face exactly once
            self.datasets[s] = FaceStreamingDataset(
                str(folder), shuffle=s == "train", seed=hp.seed, drop_last=None if s == "train" else False
            )
        log.info("FER litdata streams under %s (groups of %d faces): %s", root, self.stream_group_size,
                 {s: getattr(d, "num_faces", len(d)) for s, d in self.datasets.items()})

    def setup(self, stage: str | None = None) -> None:
        """Load the cached crops/maps into uint8 tensors and build the datasets for ``stage``."""
        hp = self.hparams
        if stage == "predict":
            raise ValueError(f"{type(self).__name__} holds training data only: predict with "
                             "datamodules.face_video.FaceVideoDataModule (configs/fer/predict_video.yaml)")
        if self.datasets:
            return
        real, extra = self._scan()
        try:
            entries = self.cache.entries(real + extra)
            self._check_usable(real, extra, entries, warn=False)
            split = self._load_or_make_split(real, entries, write=False)
            sun = self.load_sun_params() if self.descriptor.kind == "sun" else None
            members = self._members(real, extra, entries, split)
            if hp.cache_backend == "litdata":
                self._setup_streams(members, split, sun)
                return
            datasets = {}
            for s in SPLITS:  # all splits read before any is kept: a missing file leaves no half-built datasets
                recs = [entries[r.path] for r in members[s]]
                datasets[s] = FaceTensorDataset(
                    self.cache.load_crops(recs),
                    torch.tensor([r.label for r in members[s]], dtype=torch.long),
                    [r.origin for r in members[s]],
                    [r.path for r in members[s]],
                    None if self.descriptor.kind == "none" else self.cache.load_maps(recs, sun),
                )
        except FaceCacheMiss as err:
            raise RuntimeError(f"{err}: call prepare_data() before setup()") from None
        self.datasets = datasets
        log.info("FER datasets: %s", {s: len(d) for s, d in self.datasets.items()})
        warn_split_content(str(self.hparams.root), {s: len(d) for s, d in self.datasets.items()},
                           {s: d.paths for s, d in self.datasets.items()}, val="val")

    # ------------------------------------------------------------------ loaders
    def _require(self, split: str) -> FaceTensorDataset:
        if split not in self.datasets:
            raise RuntimeError(
                f"{type(self).__name__}: call prepare_data() and setup() before the {split} loader"
            )
        return self.datasets[split]

    def _loader(self, split: str, **kwargs) -> DataLoader:
        nw = self.hparams.num_workers
        collate = self._collate_train if split == "train" else self._collate_eval
        if self.hparams.cache_backend == "litdata" and not isinstance(self._require(split), FaceTensorDataset):
            from datamodules.datasets.streaming import streaming_loader

            return streaming_loader(self._require(split), self.hparams.batch_size, nw, collate)
        return DataLoader(
            self._require(split),
            batch_size=self.hparams.batch_size,
            num_workers=nw,
            persistent_workers=nw > 0,
            collate_fn=collate,
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        ds = self._require("train")
        if self.hparams.train_sampler == "class_balanced":
            weights = class_balanced_weights(ds.labels, self.num_classes)
            gen = torch.Generator().manual_seed(self.hparams.seed)
            sampler = WeightedRandomSampler(weights, num_samples=len(ds), replacement=True, generator=gen)
            return self._loader("train", sampler=sampler)
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False, sampler=eval_sampler(self._require("val")))

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, sampler=eval_sampler(self._require("test")))

    # ------------------------------------------------------------------ reporting
    def class_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """``{split: {class: {origin: count}}}`` after ``setup``; every class appears (``{"real": 0}`` if empty)."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        for s in SPLITS:
            ds = self._require(s)
            c = Counter(zip(ds.labels.tolist(), ds.origins))
            per: dict[str, dict[str, int]] = {name: {} for name in self.class_names}
            for (label, origin), n in sorted(c.items()):
                per[self.class_names[label]][origin] = n
            for by_origin in per.values():
                by_origin.setdefault(REAL_ORIGIN, 0)
            out[s] = per
        return out
