"""The on-disk face cache: cropped faces with their manifest, SUN statistics and descriptor maps of one image root.

:class:`FaceCache` is the cache as an object of its own (no ``lightning``): built from a folder, the crop settings and
the descriptor settings, it crops and records the scanned images (:func:`features.faces.preprocess_faces`), fits or
reads the SUN statistics of a split, computes the descriptor maps and reads crops and maps back as uint8 tensors.
The face-image datamodule (``FERDataModule``) decides where the cache lives (``cache/fer/<hash of root + crop
settings>``), scans the folders and owns the split; it delegates the rest here.

Layout (``root``)::

    manifest.jsonl                         one JSON line per source file (see :mod:`features.faces`)
    faces/<sha1>-<crop hash>.npy           uint8 [S, S, 3] RGB crop (content-addressed)
    descriptors/sun_params-<hash>.json     SUN statistics fitted on the real training images (keyed by the filter
                                           bank; ``source.split_sha1`` names the split they came from)
    descriptors/<kind>-<hash>/<crop name>  uint8 [S, S] descriptor map of each crop (keyed by descriptor + crop
                                           settings, and for SUN by the fitted statistics)

plus what the datamodule keeps beside them (``splits/``, ``litdata/``). Every file is written atomically
(:func:`common.io.atomic_write`), and a crop or map that is not a whole ``.npy`` file (a copy cut short, a full disk) is
computed again, as is an image whose manifest line is torn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from common.choices import check_choices
from common.io import atomic_write
from features.descriptors import (
    DescriptorSettings,
    SUNParams,
    compute_descriptor,
    fit_sun_params,
    to_uint8_map,
)
from features.faces import (
    BadImagePolicy,
    FaceCropSettings,
    _progress,
    npy_complete,
    preprocess_faces,
    read_manifest,
    settings_hash,
)
from features.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, REAL_ORIGIN, ImageRecord

__all__ = ["FaceCache", "FaceCacheMiss"]

log = logging.getLogger(__name__)


class FaceCacheMiss(RuntimeError):
    """Something a reader of the cache needs was never computed (the message names it)."""


class FaceCache:
    """Cropped faces, their manifest, the SUN statistics and the descriptor maps under one folder.

    The folder's name is the caller's key (the datamodule hashes the image root and the crop settings into it); inside,
    crops are keyed by the crop settings and maps by the descriptor settings, so several settings share one folder and
    a second cache on the same folder reuses everything that is there.

    Args:
        root: the cache folder (created when something is written).
        crop: how faces are found and cropped (:class:`features.faces.FaceCropSettings`).
        descriptor: the descriptor map (:class:`features.descriptors.DescriptorSettings`; ``kind="none"``: no maps).
        sun_params_file: where the SUN statistics live (default: ``descriptors/sun_params-<hash>.json`` in the cache).
            A file given here is used as it is, whichever split it was fitted on (prediction without the training
            data); it is fitted and written only when it does not exist.
        on_bad_image: ``"skip"`` (unreadable files are recorded in the manifest with their reason) or ``"error"``.
        max_pixels: files with more pixels are bad images (``"too_many_pixels"``); ``None``: PIL's limit only.
        min_side: files with a smaller side are bad images (``"too_small"``).
        progress: ``"rich"`` progress bars while cropping and computing maps, or ``"none"``.
    """

    def __init__(
        self,
        root: str | Path,
        crop: FaceCropSettings,
        descriptor: DescriptorSettings,
        *,
        sun_params_file: str | Path | None = None,
        on_bad_image: BadImagePolicy = "skip",
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        min_side: int = DEFAULT_MIN_SIDE,
        progress: Literal["rich", "none"] = "rich",
    ) -> None:
        check_choices(FaceCache, locals())
        if not isinstance(crop, FaceCropSettings) or not isinstance(descriptor, DescriptorSettings):
            raise TypeError(f"FaceCache: crop and descriptor must be FaceCropSettings and DescriptorSettings, got "
                            f"{type(crop).__name__} and {type(descriptor).__name__}")
        self.root = Path(root)
        self.crop = crop
        self.descriptor = descriptor
        self.sun_params_file = None if sun_params_file is None else Path(sun_params_file)
        self.on_bad_image = on_bad_image
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.progress = progress
        self._dirs: dict[tuple | None, Path] = {}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, image_size={self.crop.image_size}, "
                f"descriptor={self.descriptor.kind!r})")

    # ------------------------------------------------------------------ crops and manifest
    @property
    def manifest_path(self) -> Path:
        """``<root>/manifest.jsonl``."""
        return self.root / "manifest.jsonl"

    def crop_faces(self, records: Sequence[ImageRecord], roots: Mapping[str, str] | None = None) -> dict[str, dict]:
        """Detect, crop and record every image once (:func:`features.faces.preprocess_faces`): unchanged files with a
        whole crop are reused, the others (new, changed, torn manifest line, crop cut short) are processed.

        Args:
            records: the scanned images.
            roots: origin -> root folder, stored in the manifest for reference.

        Returns:
            The manifest entries of ``records``, keyed by source path, in the order of ``records``.
        """
        return preprocess_faces(
            records, self.root, self.crop, dict(roots) if roots is not None else None, self.on_bad_image,
            self.progress, max_pixels=self.max_pixels, min_side=self.min_side,
        )

    def entries(self, records: Sequence[ImageRecord]) -> dict[str, dict]:
        """The manifest entries of ``records`` (keyed by source path, in their order) without processing anything.

        Raises:
            FaceCacheMiss: some records are not in the manifest (never cropped).
        """
        manifest = read_manifest(self.manifest_path)
        missing = [r.path for r in records if r.path not in manifest]
        if missing:
            raise FaceCacheMiss(
                f"{len(missing)} image(s) (e.g. {missing[0]!r}) are not in the cache {str(self.root)!r}"
            )
        return {r.path: manifest[r.path] for r in records}

    def crop_path(self, entry: Mapping) -> Path:
        """The crop file of a manifest entry (``<root>/faces/<sha1>-<hash>.npy``)."""
        return self.root / entry["cache_file"]

    def load_crops(self, entries: Sequence[Mapping]) -> Tensor:
        """The crops of usable manifest entries, in order.

        Shapes:
            -> ``[N, 3, S, S]`` uint8 (``S`` = ``crop.image_size``; ``N = 0`` for no entries).
        """
        return _stack([np.load(self.crop_path(e)) for e in entries], 3, self.crop.image_size)

    # ------------------------------------------------------------------ SUN statistics
    @property
    def sun_params_path(self) -> Path:
        """``sun_params_file``, or ``<root>/descriptors/sun_params-<hash of the filter bank>.json``."""
        if self.sun_params_file is not None:
            return self.sun_params_file
        return self.root / "descriptors" / f"sun_params-{settings_hash(self.descriptor.as_dict())}.json"

    def load_sun(self) -> SUNParams:
        """The stored SUN statistics (:attr:`sun_params_path`; ``FileNotFoundError`` naming it when missing)."""
        return SUNParams.load(self.sun_params_path)

    def fit_or_load_sun(
        self, train: Sequence[Mapping], split_sha1: str, split_file: str | Path, seed: int
    ) -> SUNParams:
        """The SUN statistics of a split: read when the stored ones came from the same split (``source.split_sha1``)
        or live in a ``sun_params_file``, else fitted on ``train`` and written.

        Args:
            train: the manifest entries of the split's real training images, in order (never val/test).
            split_sha1: digest of the split, stored with the statistics and compared on the next call.
            split_file: the split file, stored as provenance.
            seed: seed of the pixel subsample of the fit.
        """
        path = self.sun_params_path
        if path.is_file():
            try:
                params = SUNParams.load(path)
            except ValueError:
                if self.sun_params_file is not None:
                    raise  # a file the user named is never overwritten
                log.warning("SUN statistics in %s are unreadable: refitting", path)
            else:
                if params.source.get("split_sha1") == split_sha1 or self.sun_params_file is not None:
                    return params
                log.info("SUN statistics in %s came from another split: refitting", path)
        crops = [np.load(self.crop_path(e)) for e in train]
        params = fit_sun_params(
            crops,
            self.descriptor.sun_sigmas,
            self.descriptor.sun_ratio,
            self.descriptor.sun_channels,
            seed=seed,
            source={"split_file": str(split_file), "split_sha1": split_sha1, "split": "train", "origin": REAL_ORIGIN},
        )
        params.save(path)
        log.info("Fitted SUN statistics on %d real training images -> %s", len(crops), path)
        return params

    # ------------------------------------------------------------------ descriptor maps
    def descriptor_dir(self, sun: SUNParams | None = None) -> Path:
        """``<root>/descriptors/<kind>-<hash of descriptor + crop settings (+ SUN statistics)>``.

        Raises:
            ValueError: ``descriptor.kind`` is ``"none"``, or ``"sun"`` without ``sun``.
        """
        self._check_kind(sun)
        sun = sun if self.descriptor.kind == "sun" else None  # the statistics key the SUN maps only
        memo = None if sun is None else (tuple(sun.theta), tuple(sun.scale))
        if memo not in self._dirs:
            key = {"desc": self.descriptor.as_dict(), "crop": self.crop.as_dict()}
            if sun is not None:
                key["sun"] = [sun.theta, sun.scale]
            self._dirs[memo] = self.root / "descriptors" / f"{self.descriptor.kind}-{settings_hash(key)}"
        return self._dirs[memo]

    def map_path(self, entry: Mapping, sun: SUNParams | None = None) -> Path:
        """The descriptor map file of a manifest entry (named as its crop, in :meth:`descriptor_dir`)."""
        return self.descriptor_dir(sun) / Path(entry["cache_file"]).name

    def compute_maps(self, entries: Mapping[str, Mapping] | Sequence[Mapping], sun: SUNParams | None = None) -> Path:
        """Compute the descriptor map of every usable entry that has no whole map yet; returns :meth:`descriptor_dir`.

        Args:
            entries: manifest entries (skipped ones are ignored).
            sun: the SUN statistics (``kind="sun"`` only).
        """
        out_dir = self.descriptor_dir(sun)
        out_dir.mkdir(parents=True, exist_ok=True)
        usable = [e for e in (entries.values() if isinstance(entries, Mapping) else entries) if e["status"] == "ok"]
        todo = [e for e in usable if not npy_complete(self.map_path(e, sun))]
        for e in _progress(todo, f"Descriptor maps ({self.descriptor.kind})", self.progress == "rich"):
            m = to_uint8_map(compute_descriptor(np.load(self.crop_path(e)), self.descriptor, sun))
            with atomic_write(self.map_path(e, sun)) as f:
                np.save(f, m)
        log.info("Descriptor maps (%s): %d computed, %d cached in %s", self.descriptor.kind, len(todo),
                 len(usable) - len(todo), out_dir)
        return out_dir

    def load_maps(self, entries: Sequence[Mapping], sun: SUNParams | None = None) -> Tensor:
        """The descriptor maps of usable manifest entries, in order.

        Shapes:
            -> ``[N, 1, S, S]`` uint8.

        Raises:
            FaceCacheMiss: a map was never computed (the message names the file).
        """
        files = [self.map_path(e, sun) for e in entries]
        absent = next((f for f in files if not f.is_file()), None)
        if absent is not None:
            raise FaceCacheMiss(f"Descriptor map {str(absent)!r} missing")
        return _stack([np.load(f) for f in files], 1, self.crop.image_size)

    def _check_kind(self, sun: SUNParams | None) -> None:
        if self.descriptor.kind == "none":
            raise ValueError("FaceCache: descriptor kind 'none' has no descriptor maps")
        if self.descriptor.kind == "sun" and sun is None:
            raise ValueError("FaceCache: the 'sun' descriptor maps need the SUN statistics (fit_or_load_sun)")


def _stack(arrays: list[np.ndarray], channels: int, size: int) -> Tensor:
    """``[H, W, C]`` (or ``[H, W]``) uint8 arrays -> ``[N, C, H, W]`` uint8 (``[0, C, size, size]`` for none)."""
    if not arrays:
        return torch.zeros(0, channels, size, size, dtype=torch.uint8)
    a = np.stack([x if x.ndim == 3 else x[:, :, None] for x in arrays])
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))
