"""FERDataModule: face-expression image folders -> cached face crops + local descriptor maps -> batches.

Implements the data side of Ji et al., *Multimodal and multiscale facial expression recognition analysis for
learning emotions* (J. Zhengzhou Univ. Eng. Sci. 2026, 47(3)): faces cropped and resampled (§2.1.1, 256x256 in
the paper), a local descriptor map per face for the local branch (§2.2.2, SUN saliency by default), a 70/15/15
stratified split (§3.1.1) or a subject-disjoint split, and diffusion-generated images (§2.1.2) joining the
training split only through ``extra_roots``.

Batch (``docs/architecture.md``, "Face images"): ``image`` ``[B, 3, H, W]`` float32 (normalised),
``descriptor`` ``[B, 1, H, W]`` float32 (when ``descriptor != "none"``), ``label`` ``[B]`` int64, ``origin``
``list[str]``, ``path`` ``list[str]``. Predict batches (``predict_source``) replace ``label``/``origin`` with
``frame`` ``[B]`` int64, ``time`` ``[B]`` float32 (seconds; 0 for still images), ``box`` ``[B, 4]`` int64
``(x, y, w, h)`` in source pixels, ``face_index`` ``[B]`` int64 and ``source`` ``list[str]``.

Pipeline: ``prepare_data`` (rank 0, once) scans, detects/crops/caches faces with a manifest, writes or reuses the
split file, fits the SUN statistics on the real training images and caches descriptor maps; ``setup`` reads the
caches into uint8 tensors (fast epochs >= 2). Caches default to ``cache/fer/<hash of root + crop settings>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, WeightedRandomSampler

from datamodules.datasets.images import (
    SPLITS,
    FaceBatchTransform,
    FaceTensorDataset,
    class_balanced_weights,
    group_split,
    stack_hwc_uint8,
    stratified_split,
    subject_from_name,
)
from features.descriptors import (
    DescriptorSettings,
    SUNParams,
    compute_descriptor,
    fit_sun_params,
    to_uint8_map,
)
from features.faces import (
    FaceCropSettings,
    HaarFaceDetector,
    _progress,
    crop_face,
    preprocess_faces,
    read_manifest,
    settings_hash,
)
from features.images import REAL_ORIGIN, BadImageError, ImageRecord, load_image_rgb, scan_class_folders

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


class FERDataModule(LightningDataModule):
    """Face expression images (learning emotions, CK+, JAFFE) with cached crops and descriptor maps.

    Args:
        root: dataset root, one sub-folder per class (relative paths are resolved against the working dir).
        class_names: class list; labels index into it.
        class_aliases: folder name -> class name map.
        unknown_folders: ``"error"`` (a folder not in ``class_names``/aliases is an error naming it) or
            ``"ignore"``.
        extra_roots: folders of generated images (same class-folder layout; a top-level ``manifest.jsonl``
            is allowed and ignored by the scan). They join the TRAIN split only; ``origin`` = folder name.
        image_size: side of the square face crop (paper: 256; CPU configs 64-112).
        face_detection: ``"haar"`` (OpenCV frontal-face cascade, largest face) or ``"none"`` (pre-cropped).
        face_margin: fraction of the face side added on each side of the detected box.
        no_face: ``"keep"`` (whole image, padded square) or ``"skip"`` when no face is detected.
        on_bad_image: ``"skip"`` (corrupt / truncated / zero-byte / non-image files are counted, logged and
            recorded in the manifest) or ``"error"``.
        background: ``"black"`` or ``"white"``: colour under transparent pixels (RGBA / LA / palette).
        descriptor: ``"sun"``, ``"spectral_residual"``, ``"lbp"``, ``"energy"`` or ``"none"`` (no key).
        lbp_points: LBP neighbours P.
        lbp_radius: LBP radius R.
        energy_sigma: Gaussian window of the energy map.
        sun_sigmas: DoG centre scales of the SUN filter bank.
        sun_ratio: DoG surround/centre ratio.
        sun_channels: ``"intensity"`` or ``"opponent"`` (adds red-green / blue-yellow channels).
        sun_params_file: where the SUN statistics live (default: inside the cache); needed for prediction
            without the training root.
        split: ``"stratified"`` (paper §3.1.1) or ``"group"`` (subject-disjoint, by ``subject_pattern``).
        split_ratios: (train, val, test) fractions.
        subject_pattern: regex whose first group is the subject id (CK+ ``^(S\\d+)_``, JAFFE
            ``^([A-Z]{2})\\.``); required for ``split="group"``.
        split_file: JSON split file (split -> relative paths); default inside the cache. Reused when it
            exists; files on disk that disagree with it raise an error.
        resplit: ``"never"`` (reuse an existing split file) or ``"always"`` (recompute and overwrite).
        cache_dir: cache directory (default ``cache/fer/<hash>``).
        sampler: ``"none"`` (shuffle) or ``"class_balanced"`` (``WeightedRandomSampler``, 1/class count).
        hflip_prob: train-time horizontal flip probability.
        affine_degrees: train-time rotation range (degrees).
        affine_translate: train-time translation range (fraction of the size).
        affine_scale: train-time scale range.
        brightness: train-time brightness jitter.
        contrast: train-time contrast jitter.
        saturation: train-time saturation jitter.
        mean: RGB normalisation mean (default ImageNet, as the Swin backbones).
        std: RGB normalisation std.
        descriptor_mean: descriptor normalisation mean (maps are in [0, 1] before it).
        descriptor_std: descriptor normalisation std.
        batch_size: batch size of every loader.
        num_workers: DataLoader workers (train/val/test; prediction always runs in the main process).
        seed: seed of the split, the SUN pixel subsample and the class-balanced sampler.
        predict_source: folder of images, an image file, or a video file to run prediction on.
        predict_every_n_frames: keep one video frame in n.
        progress: ``"rich"`` progress bar during preprocessing, or ``"none"``.
        augment_policy: extra train-time policy of :class:`~datamodules.datasets.images.FaceBatchTransform`:
            ``"none"``, ``"trivial"`` (TrivialAugment) or ``"rand"`` (RandAugment) over ops chosen for grey faces.
        augment_ops: RandAugment's number of ops per face.
        augment_magnitude: RandAugment's magnitude in [0, 10].
        random_erasing: per-face probability of timm's random erasing (train only).
        cache_backend: ``"memory"`` (every crop held as a uint8 tensor, fastest for sets that fit) or ``"litdata"``
            (crops written once as litdata chunks and streamed from disk: memory stays flat as the set grows, and
            litdata shards the train split across DDP ranks and nodes; see
            :mod:`datamodules.datasets.streaming`). Same batch contract either way.
        stream_dir: where the litdata chunks go (default ``<cache>/litdata/<hash>``); a local folder, or an object
            store URL that litdata understands (``s3://...``).
    """

    def __init__(
        self,
        root: str,
        class_names: list[str],
        class_aliases: dict[str, str] | None = None,
        unknown_folders: str = "error",
        extra_roots: list[str] | None = None,
        image_size: int = 112,
        face_detection: str = "haar",
        face_margin: float = 0.2,
        no_face: str = "keep",
        on_bad_image: str = "skip",
        background: str = "black",
        descriptor: str = "sun",
        lbp_points: int = 8,
        lbp_radius: float = 1.0,
        energy_sigma: float = 2.0,
        sun_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0),
        sun_ratio: float = 1.6,
        sun_channels: str = "intensity",
        sun_params_file: str | None = None,
        split: str = "stratified",
        split_ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
        subject_pattern: str | None = None,
        split_file: str | None = None,
        resplit: str = "never",
        cache_dir: str | None = None,
        sampler: str = "none",
        hflip_prob: float = 0.5,
        affine_degrees: float = 10.0,
        affine_translate: float = 0.05,
        affine_scale: tuple[float, float] = (0.95, 1.05),
        brightness: float = 0.2,
        contrast: float = 0.2,
        saturation: float = 0.0,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        descriptor_mean: float = 0.5,
        descriptor_std: float = 0.5,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 42,
        predict_source: str | None = None,
        predict_every_n_frames: int = 1,
        progress: str = "rich",
        augment_policy: Literal["none", "trivial", "rand"] = "none",
        augment_ops: int = 2,
        augment_magnitude: float = 9.0,
        random_erasing: float = 0.0,
        cache_backend: Literal["memory", "litdata"] = "memory",
        stream_dir: str | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if cache_backend not in ("memory", "litdata"):
            raise ValueError(f"{name}: cache_backend must be 'memory' or 'litdata', got {cache_backend!r}")
        if cache_backend == "litdata" and sampler != "none":
            raise ValueError(f"{name}: sampler={sampler!r} needs random access; the litdata stream shuffles itself "
                             "(use cache_backend='memory' for class-balanced sampling)")
        if not class_names or len(set(class_names)) != len(class_names):
            raise ValueError(
                f"{name}: class_names must be a non-empty list of unique names, got {class_names}"
            )
        if split not in ("stratified", "group"):
            raise ValueError(f"{name}: split must be 'stratified' or 'group', got {split!r}")
        if split == "group" and not subject_pattern:
            raise ValueError(f"{name}: split='group' needs subject_pattern (e.g. '^(S\\d+)_' for CK+)")
        if resplit not in ("never", "always"):
            raise ValueError(f"{name}: resplit must be 'never' or 'always', got {resplit!r}")
        if sampler not in ("none", "class_balanced"):
            raise ValueError(f"{name}: sampler must be 'none' or 'class_balanced', got {sampler!r}")
        if unknown_folders not in ("error", "ignore"):
            raise ValueError(f"{name}: unknown_folders must be 'error' or 'ignore', got {unknown_folders!r}")
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"{name}: on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if progress not in ("rich", "none"):
            raise ValueError(f"{name}: progress must be 'rich' or 'none', got {progress!r}")
        if batch_size < 1 or num_workers < 0 or predict_every_n_frames < 1:
            raise ValueError(f"{name}: batch_size and predict_every_n_frames must be >= 1, num_workers >= 0")
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
        self.save_hyperparameters()
        # Validated here so that bad options fail at construction, not in prepare_data.
        self._crop_settings = FaceCropSettings(
            image_size=image_size,
            face_detection=face_detection,
            margin=face_margin,
            no_face=no_face,
            background=background,
        )
        self._desc_settings = DescriptorSettings(
            descriptor=descriptor,
            lbp_points=lbp_points,
            lbp_radius=lbp_radius,
            energy_sigma=energy_sigma,
            sun_sigmas=tuple(float(s) for s in sun_sigmas),
            sun_ratio=sun_ratio,
            sun_channels=sun_channels,
        )
        self._extra_roots = extra
        self._collate_train = FaceBatchTransform(
            mean,
            std,
            descriptor_mean,
            descriptor_std,
            hflip_prob,
            affine_degrees,
            affine_translate,
            affine_scale,
            brightness,
            contrast,
            saturation,
            augment="train",
            policy=augment_policy,
            policy_ops=augment_ops,
            policy_magnitude=augment_magnitude,
            random_erasing=random_erasing,
        )
        self._collate_eval = FaceBatchTransform(mean, std, descriptor_mean, descriptor_std, augment="none")
        self.datasets: dict[str, FaceTensorDataset] = {}
        self.predict_dataset: FacePredictDataset | None = None

    # ------------------------------------------------------------------ properties
    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.hparams.class_names)

    @property
    def cache_root(self) -> Path:
        """Cache directory (``cache_dir`` or ``cache/fer/<hash of root + crop settings>``)."""
        if self.hparams.cache_dir:
            return Path(self.hparams.cache_dir)
        key = {"root": str(Path(self.hparams.root).resolve()), "crop": self._crop_settings.as_dict()}
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
        return self.cache_root / "splits" / f"{hp.split}-{settings_hash(key)}.json"

    @property
    def sun_params_path(self) -> Path:
        """SUN statistics file (``sun_params_file`` or inside the cache, keyed by the filter bank)."""
        if self.hparams.sun_params_file:
            return Path(self.hparams.sun_params_file)
        return (
            self.cache_root
            / "descriptors"
            / f"sun_params-{settings_hash(self._desc_settings.as_dict())}.json"
        )

    # ------------------------------------------------------------------ scanning / splitting helpers
    def _scan(self) -> tuple[list[ImageRecord], list[ImageRecord]]:
        hp = self.hparams
        real = scan_class_folders(
            hp.root, hp.class_names, hp.class_aliases, hp.unknown_folders, REAL_ORIGIN, True
        )
        extra: list[ImageRecord] = []
        for r in self._extra_roots:
            extra += scan_class_folders(
                r, hp.class_names, hp.class_aliases, hp.unknown_folders, Path(r).name, False
            )
        return real, extra

    def _roots(self) -> dict[str, str]:
        roots = {REAL_ORIGIN: str(Path(self.hparams.root).resolve())}
        roots.update({Path(r).name: str(Path(r).resolve()) for r in self._extra_roots})
        return roots

    def _compute_split(self, usable: list[ImageRecord]) -> dict[str, list[str]]:
        hp = self.hparams
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
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(split, indent=1))
        log.info("Wrote split %s (%s)", path, {s: len(v) for s, v in split.items()})
        return split

    @staticmethod
    def _split_digest(split: dict[str, list[str]]) -> str:
        return hashlib.sha1(json.dumps({s: sorted(split[s]) for s in SPLITS}).encode()).hexdigest()[:16]

    def _descriptor_dir(self, sun: SUNParams | None) -> Path:
        key = {"desc": self._desc_settings.as_dict(), "crop": self._crop_settings.as_dict()}
        if sun is not None:
            key["sun"] = [sun.theta, sun.scale]
        return self.cache_root / "descriptors" / f"{self._desc_settings.descriptor}-{settings_hash(key)}"

    @staticmethod
    def _crop_path(cache: Path, entry: dict) -> Path:
        return cache / entry["cache_file"]

    def load_sun_params(self) -> SUNParams:
        """The SUN statistics fitted on the training images (clear error when missing)."""
        return SUNParams.load(self.sun_params_path)

    # ------------------------------------------------------------------ LightningDataModule hooks
    def prepare_data(self) -> None:
        """Preprocess and cache everything once (no downloads; no state is set on ``self``)."""
        hp = self.hparams
        if not Path(hp.root).is_dir():
            if hp.predict_source:
                log.info("Training root %s absent: prediction only, nothing to prepare", hp.root)
                return
            raise FileNotFoundError(
                f"Image root {hp.root!r} does not exist (the data module never downloads)"
            )
        cache = self.cache_root
        real, extra = self._scan()
        entries = preprocess_faces(
            real + extra, cache, self._crop_settings, self._roots(), hp.on_bad_image, hp.progress
        )
        split = self._load_or_make_split(real, entries, write=True)
        if hp.descriptor == "none":
            self._write_streams(real, extra, entries, split, None)
            return
        sun = None
        if hp.descriptor == "sun":
            sun = self._fit_or_load_sun(split, real, entries)
        out_dir = self._descriptor_dir(sun)
        out_dir.mkdir(parents=True, exist_ok=True)
        todo = []
        for e in entries.values():
            if e["status"] != "ok":
                continue
            target = out_dir / Path(e["cache_file"]).name
            if not target.is_file():
                todo.append((e, target))
        for e, target in _progress(todo, f"Descriptor maps ({hp.descriptor})", hp.progress == "rich"):
            crop = np.load(self._crop_path(cache, e))
            m = to_uint8_map(compute_descriptor(crop, self._desc_settings, sun))
            tmp = target.with_name(target.name + ".tmp.npy")
            np.save(tmp, m)
            tmp.replace(target)
        log.info(
            "Descriptor maps (%s): %d computed, %d cached in %s",
            hp.descriptor,
            len(todo),
            sum(e["status"] == "ok" for e in entries.values()) - len(todo),
            out_dir,
        )
        self._write_streams(real, extra, entries, split, out_dir)

    # ------------------------------------------------------------------ split members / streaming cache
    def _members(
        self, real: list[ImageRecord], extra: list[ImageRecord], entries: dict[str, dict], split: dict
    ) -> dict[str, list[ImageRecord]]:
        """The records of each split in loader order (sorted real paths; usable generated images join train)."""
        by_rel = {r.rel: r for r in real}
        members: dict[str, list[ImageRecord]] = {s: [by_rel[p] for p in sorted(split[s])] for s in SPLITS}
        members["train"] += [r for r in extra if entries[r.path]["status"] == "ok"]
        return members

    def _stream_dir(self, desc_dir: Path | None, split: dict) -> Path:
        """``stream_dir`` or ``<cache>/litdata/<hash of split + crop + descriptor settings>``."""
        if self.hparams.stream_dir:
            return Path(self.hparams.stream_dir)
        key = {"split": self._split_digest(split), "crop": self._crop_settings.as_dict(),
               "desc": desc_dir.name if desc_dir is not None else None, "extra": self._roots()}
        return self.cache_root / "litdata" / settings_hash(key)

    def _write_streams(
        self, real: list[ImageRecord], extra: list[ImageRecord], entries: dict[str, dict], split: dict,
        desc_dir: Path | None,
    ) -> None:
        """``cache_backend="litdata"``: write each split's cached crops once as litdata chunks (rank 0)."""
        if self.hparams.cache_backend != "litdata":
            return
        from datamodules.datasets.streaming import StreamRecord, write_face_stream

        root = self._stream_dir(desc_dir, split)
        for s, recs in self._members(real, extra, entries, split).items():
            if not recs:
                continue
            rows = [
                StreamRecord(
                    str(self._crop_path(self.cache_root, entries[r.path])),
                    None if desc_dir is None else str(desc_dir / Path(entries[r.path]["cache_file"]).name),
                    r.label, r.origin, r.path,
                )
                for r in recs
            ]
            write_face_stream(rows, root / s)

    def _setup_streams(self, members: dict[str, list[ImageRecord]], split: dict, desc_dir: Path | None) -> None:
        """Open the litdata streams written by :meth:`prepare_data` (same items as the in-memory datasets)."""
        from datamodules.datasets.streaming import INDEX_FILE, FaceStreamingDataset

        hp = self.hparams
        root = self._stream_dir(desc_dir, split)
        for s in SPLITS:
            folder = root / s
            if not members[s]:
                size = self._crop_settings.image_size
                descs = None if hp.descriptor == "none" else torch.zeros(0, 1, size, size, dtype=torch.uint8)
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
        log.info("FER litdata streams under %s: %s", root, {s: len(d) for s, d in self.datasets.items()})

    def _fit_or_load_sun(self, split: dict, real: list[ImageRecord], entries: dict[str, dict]) -> SUNParams:
        path = self.sun_params_path
        digest = self._split_digest(split)
        if path.is_file():
            params = SUNParams.load(path)
            if params.source.get("split_sha1") == digest or self.hparams.sun_params_file:
                return params
            log.info("SUN statistics in %s came from another split: refitting", path)
        train = set(split["train"])
        crops = [np.load(self._crop_path(self.cache_root, entries[r.path])) for r in real if r.rel in train]
        params = fit_sun_params(
            crops,
            self._desc_settings.sun_sigmas,
            self._desc_settings.sun_ratio,
            self._desc_settings.sun_channels,
            seed=self.hparams.seed,
            source={
                "split_file": str(self.split_path),
                "split_sha1": digest,
                "split": "train",
                "origin": REAL_ORIGIN,
            },
        )
        params.save(path)
        log.info("Fitted SUN statistics on %d real training images -> %s", len(crops), path)
        return params

    def setup(self, stage: str | None = None) -> None:
        """Load the cached crops/maps into uint8 tensors and build the datasets for ``stage``."""
        hp = self.hparams
        if stage == "predict":
            self._setup_predict()
            return
        if self.datasets:
            return
        cache = self.cache_root
        real, extra = self._scan()
        manifest = read_manifest(cache / "manifest.jsonl")
        missing = [r.path for r in real + extra if r.path not in manifest]
        if missing:
            raise RuntimeError(
                f"{len(missing)} image(s) (e.g. {missing[0]!r}) are not in the cache {str(cache)!r}: "
                "call prepare_data() before setup()"
            )
        entries = {r.path: manifest[r.path] for r in real + extra}
        split = self._load_or_make_split(real, entries, write=False)
        sun = None
        if hp.descriptor == "sun":
            sun = self.load_sun_params()
        desc_dir = self._descriptor_dir(sun) if hp.descriptor != "none" else None
        members = self._members(real, extra, entries, split)
        if hp.cache_backend == "litdata":
            self._setup_streams(members, split, desc_dir)
            return
        for s in SPLITS:
            recs = members[s]
            crops = [np.load(self._crop_path(cache, entries[r.path])) for r in recs]
            images = stack_hwc_uint8(crops, 3)
            descs = None
            if desc_dir is not None:
                files = [desc_dir / Path(entries[r.path]["cache_file"]).name for r in recs]
                absent = [f for f in files if not f.is_file()]
                if absent:
                    raise RuntimeError(
                        f"Descriptor map {str(absent[0])!r} missing: call prepare_data() before setup()"
                    )
                descs = stack_hwc_uint8([np.load(f) for f in files], 1)
            if not recs:
                size = self._crop_settings.image_size
                images = torch.zeros(0, 3, size, size, dtype=torch.uint8)
                descs = None if desc_dir is None else torch.zeros(0, 1, size, size, dtype=torch.uint8)
            self.datasets[s] = FaceTensorDataset(
                images,
                torch.tensor([r.label for r in recs], dtype=torch.long),
                [r.origin for r in recs],
                [r.path for r in recs],
                descs,
            )
        log.info("FER datasets: %s", {s: len(d) for s, d in self.datasets.items()})

    def _setup_predict(self) -> None:
        hp = self.hparams
        if not hp.predict_source:
            raise ValueError(f"{type(self).__name__}: predict_source is not set")
        sun = self.load_sun_params() if hp.descriptor == "sun" else None
        detector = self._crop_settings.make_detector()
        self.predict_dataset = FacePredictDataset(
            hp.predict_source,
            self._crop_settings,
            detector,
            self._desc_settings,
            sun,
            hp.predict_every_n_frames,
        )

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
        if self.hparams.sampler == "class_balanced":
            weights = class_balanced_weights(ds.labels, self.num_classes)
            gen = torch.Generator().manual_seed(self.hparams.seed)
            sampler = WeightedRandomSampler(weights, num_samples=len(ds), replacement=True, generator=gen)
            return self._loader("train", sampler=sampler)
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_dataset is None:
            self._setup_predict()
        return DataLoader(
            self.predict_dataset,
            batch_size=self.hparams.batch_size,
            num_workers=0,
            collate_fn=self._collate_eval,
        )

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


class FacePredictDataset(IterableDataset):
    """Every face in a folder of images, one image file or a video (``cv2.VideoCapture``), as samples.

    All detected faces are yielded (classroom use: several students per frame), each with its frame index,
    time, box and face index. Frames/images without a face are counted in :attr:`stats` and yield nothing;
    with ``face_detection="none"`` the whole image is one face. Unreadable images are counted and skipped.

    Args:
        source: folder (searched recursively, sorted), image file or video file.
        crop: crop settings (size, margin, detection).
        detector: Haar detector (None with ``face_detection="none"``).
        descriptor: descriptor settings.
        sun_params: SUN statistics fitted on the training images (needed for ``"sun"``).
        every_n_frames: keep one video frame in n.

    Shapes:
        Item: ``image`` ``[3, S, S]`` uint8, ``descriptor`` ``[1, S, S]`` uint8, ``frame`` ``[]`` int64,
        ``time`` ``[]`` float32, ``box`` ``[4]`` int64, ``face_index`` ``[]`` int64, ``source``/``path`` str.
    """

    def __init__(
        self,
        source: str,
        crop: FaceCropSettings,
        detector: HaarFaceDetector | None,
        descriptor: DescriptorSettings,
        sun_params: SUNParams | None,
        every_n_frames: int = 1,
    ) -> None:
        super().__init__()
        p = Path(source)
        if not p.exists():
            raise FileNotFoundError(f"predict_source {source!r} does not exist")
        if descriptor.descriptor == "sun" and sun_params is None:
            raise ValueError(
                "FacePredictDataset: descriptor 'sun' needs SUN statistics fitted on the training images"
            )
        self.source = str(p)
        self.crop = crop
        self.detector = detector
        self.descriptor = descriptor
        self.sun_params = sun_params
        self.every_n_frames = int(every_n_frames)
        self.stats: Counter = Counter()

    def _is_video(self) -> bool:
        return Path(self.source).is_file() and Path(self.source).suffix.lower() in VIDEO_EXTENSIONS

    def _frames(self) -> Iterator[tuple[int, float, np.ndarray, str]]:
        """(frame index, time in s, RGB frame, source path)."""
        p = Path(self.source)
        if self._is_video():
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                raise ValueError(f"predict_source {self.source!r}: OpenCV cannot open this video")
            fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
            idx = 0
            try:
                while True:
                    if idx % self.every_n_frames:
                        if not cap.grab():
                            break
                        idx += 1
                        continue
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    t = idx / fps if fps > 0 else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    yield idx, float(t), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.source
                    idx += 1
            finally:
                cap.release()
            return
        files = (
            [p]
            if p.is_file()
            else sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
        )
        for i, f in enumerate(files):
            try:
                rgb = load_image_rgb(f, self.crop.background)
            except BadImageError as err:
                log.warning("Prediction: skipping %s", err)
                self.stats[f"skipped:{err.reason}"] += 1
                continue
            yield i, 0.0, rgb, str(f)

    def __iter__(self) -> Iterator[dict]:
        self.stats = Counter()
        for frame, t, rgb, src in self._frames():
            self.stats["frames"] += 1
            if self.detector is None:
                boxes = np.array([[0, 0, rgb.shape[1], rgb.shape[0]]], dtype=np.int64)
                crops_boxes = [(None, boxes[0])]
            else:
                boxes = self.detector.detect(rgb)
                if len(boxes) == 0:
                    self.stats["frames_without_face"] += 1
                    continue
                crops_boxes = [(b, b) for b in boxes]
            for k, (b, box) in enumerate(crops_boxes):
                crop = crop_face(rgb, b, self.crop.image_size, self.crop.margin)
                item = {
                    "image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
                    "frame": torch.tensor(frame, dtype=torch.long),
                    "time": torch.tensor(t, dtype=torch.float32),
                    "box": torch.as_tensor(np.asarray(box, dtype=np.int64)),
                    "face_index": torch.tensor(k, dtype=torch.long),
                    "source": self.source,
                    "path": src,
                }
                if self.descriptor.descriptor != "none":
                    m = to_uint8_map(compute_descriptor(crop, self.descriptor, self.sun_params))
                    item["descriptor"] = torch.from_numpy(m[None])
                self.stats["faces"] += 1
                yield item
        log.info(
            "Prediction on %s: %d frames/images, %d faces, %d without a face, skipped %s",
            self.source,
            self.stats["frames"],
            self.stats["faces"],
            self.stats["frames_without_face"],
            {k: v for k, v in self.stats.items() if k.startswith("skipped:")} or 0,
        )
