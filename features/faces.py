"""Face detection (OpenCV Haar cascades), square face crops and the on-disk preprocessing cache.

Paper: Ji et al., *Multimodal and multiscale facial expression recognition analysis for learning emotions*
(J. Zhengzhou Univ. Eng. Sci. 2026), §2.1.1: "images keep the face and are resampled to 256x256". Detection
uses Viola-Jones Haar cascades bundled with OpenCV (``cv2.data.haarcascades``); nothing is downloaded.

Cache layout (``cache_dir``)::

    manifest.jsonl      one JSON line per source file (latest line for a path wins), keys:
                        path, rel, root, origin, class_name, label, size, mtime_ns, sha1, status ("ok" |
                        "skipped"), reason (null | "no_face" | "empty_file" | "not_an_image" | "truncated" |
                        "corrupt" | "unsupported_mode"), box ([x, y, w, h] in source pixels, or null),
                        n_faces, face ("detected" | "not_found" | "not_run"), cache_file, settings
    faces/<sha1>.npy    uint8 [S, S, 3] RGB crop (content-addressed: identical files share one crop)

Original files are only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np

from common.choices import check_choices
from common.io import atomic_write
from features.images import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_SIDE,
    BadImageError,
    ImageRecord,
    check_image_header,
    load_image_rgb,
)

log = logging.getLogger(__name__)

FaceDetection = Literal["haar", "none"]
FACE_DETECTIONS = get_args(FaceDetection)
NoFacePolicy = Literal["keep", "skip"]
NO_FACE_POLICIES = get_args(NoFacePolicy)
BadImagePolicy = Literal["skip", "error"]
BAD_IMAGE_POLICIES = get_args(BadImagePolicy)
#: Bump when the crop algorithm changes so old caches are not reused.
CACHE_VERSION = 1


class HaarFaceDetector:
    """Frontal-face detector built on an OpenCV bundled Haar cascade.

    Args:
        cascade: file name inside ``cv2.data.haarcascades`` or a path to a cascade XML.
        scale_factor: image pyramid step of ``detectMultiScale``.
        min_neighbors: detections needed to keep a face (higher: fewer false positives).
        min_size_frac: smallest face side as a fraction of the shorter image side.

    Attributes:
        calls: number of :meth:`detect` calls (tests use it to prove the cache is reused).
    """

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_size_frac: float = 0.1,
    ) -> None:
        path = cascade if os.path.isfile(cascade) else os.path.join(cv2.data.haarcascades, cascade)
        classifier = cv2.CascadeClassifier(path)
        if classifier.empty():
            raise ValueError(f"HaarFaceDetector: could not load cascade {path!r}")
        if scale_factor <= 1.0:
            raise ValueError(f"HaarFaceDetector: scale_factor must be > 1, got {scale_factor}")
        self.cascade_path = path
        self.classifier = classifier
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size_frac = float(min_size_frac)
        self.calls = 0

    def detect(self, rgb: np.ndarray) -> np.ndarray:
        """All faces, largest first.

        Shapes:
            rgb: ``[H, W, 3]`` uint8 (or ``[H, W]`` grey) -> boxes ``[K, 4]`` int64 ``(x, y, w, h)``.
        """
        self.calls += 1
        gray = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        gray = cv2.equalizeHist(gray)
        side = max(int(min(gray.shape[:2]) * self.min_size_frac), 20)
        boxes = self.classifier.detectMultiScale(
            gray, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side)
        )
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        return boxes[np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable")]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cascade={os.path.basename(self.cascade_path)!r}, "
            f"scale_factor={self.scale_factor}, min_neighbors={self.min_neighbors}, min_size_frac={self.min_size_frac})"
        )


def crop_face(rgb: np.ndarray, box: Sequence[int] | None, image_size: int, margin: float = 0.2) -> np.ndarray:
    """Square crop around ``box`` (grown by ``margin`` of its side on each side), resampled to ``image_size``.

    With ``box=None`` the whole image is used, zero-padded (black) to a square so the aspect ratio is kept.
    Crop regions outside the image are zero-padded too. Downsampling uses area interpolation, upsampling
    bicubic.

    Shapes:
        rgb: ``[H, W, 3]`` uint8 -> ``[image_size, image_size, 3]`` uint8.
    """
    h, w = rgb.shape[:2]
    if box is None:
        side = max(h, w)
        cx, cy = w / 2.0, h / 2.0
    else:
        x, y, bw, bh = (float(v) for v in box)
        side = max(bw, bh) * (1.0 + 2.0 * margin)
        cx, cy = x + bw / 2.0, y + bh / 2.0
    side_i = max(round(side), 1)
    x0, y0 = round(cx - side_i / 2.0), round(cy - side_i / 2.0)
    canvas = np.zeros((side_i, side_i, 3), dtype=np.uint8)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + side_i, w), min(y0 + side_i, h)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side_i >= image_size else cv2.INTER_CUBIC
    return cv2.resize(canvas, (image_size, image_size), interpolation=interp)


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes (read-only)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def npy_complete(path: str | Path) -> bool:
    """Whether ``path`` is a whole ``.npy`` file: its header reads and the file holds exactly the data it announces
    (a missing file, a torn write or a copy cut short is not; the data are not read)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return False
            return os.fstat(f.fileno()).st_size == f.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError):
        return False


def settings_hash(settings: dict) -> str:
    """Short stable hash of a JSON-serialisable settings dict."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class FaceCropSettings:
    """Settings that determine a face crop (hashed into the cache key).

    Args:
        image_size: output side (paper: 256; CPU configs 64-112).
        face_detection: ``"haar"`` or ``"none"`` (already-cropped data such as CK+48).
        margin: fraction of the face side added on each side of the detected box.
        no_face: ``"keep"`` the whole image or ``"skip"`` it when no face is found.
        background: ``"black"`` or ``"white"`` under transparent pixels.
        cascade: Haar cascade file.
        scale_factor / min_neighbors / min_size_frac: detector parameters.
    """

    image_size: int = 112
    face_detection: FaceDetection = "haar"
    margin: float = 0.2
    no_face: NoFacePolicy = "keep"
    background: Literal["black", "white"] = "black"
    cascade: str = "haarcascade_frontalface_default.xml"
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size_frac: float = 0.1

    def __post_init__(self) -> None:
        check_choices(FaceCropSettings, vars(self))
        if self.image_size < 8:
            raise ValueError(f"FaceCropSettings: image_size must be >= 8, got {self.image_size}")
        if self.margin < 0:
            raise ValueError(f"FaceCropSettings: margin must be >= 0, got {self.margin}")

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["version"] = CACHE_VERSION
        if self.face_detection == "none":  # detector parameters are irrelevant then
            for k in ("margin", "no_face", "cascade", "scale_factor", "min_neighbors", "min_size_frac"):
                d.pop(k)
        return d

    def make_detector(self) -> HaarFaceDetector | None:
        if self.face_detection == "none":
            return None
        return HaarFaceDetector(self.cascade, self.scale_factor, self.min_neighbors, self.min_size_frac)


# ----------------------------------------------------------------------------------------------------------
# Manifest
# ----------------------------------------------------------------------------------------------------------
def read_manifest(path: str | Path) -> dict[str, dict]:
    """Manifest entries keyed by source path (later lines override earlier ones; a torn last line is ignored)."""
    entries: dict[str, dict] = {}
    path = Path(path)
    if not path.is_file():
        return entries
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                log.warning("Ignoring an unreadable line in %s", path)
                continue
            entries[e["path"]] = e
    return entries


def write_manifest(path: str | Path, entries: Iterable[dict]) -> None:
    """Rewrite the manifest atomically (:func:`common.io.atomic_write`)."""
    with atomic_write(path, "w") as f:
        f.writelines(json.dumps(e, sort_keys=True) + "\n" for e in entries)


def _progress(items: Sequence, description: str, enabled: bool) -> Iterator:
    """Iterate with a rich progress bar (transient) when enabled and there is enough work."""
    if not enabled or len(items) < 20:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=len(items))
        for item in items:
            yield item
            progress.advance(task)


def preprocess_faces(
    records: Sequence[ImageRecord],
    cache_dir: str | Path,
    settings: FaceCropSettings,
    roots: dict[str, str] | None = None,
    on_bad_image: BadImagePolicy = "skip",
    progress: Literal["rich", "none"] = "rich",
    detector: HaarFaceDetector | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
) -> dict[str, dict]:
    """Detect, crop and cache every record once; reuse the cache for unchanged files.

    A source file is reprocessed only if it has no manifest entry (a torn manifest line counts as none), or its
    size/mtime changed and its SHA-1 differs, or its crop file is missing or not a whole ``.npy`` file
    (:func:`npy_complete`), or the settings differ. A summary line (processed, cached,
    skipped by reason, faces not found) is logged at the end.

    Args:
        records: files to process (from :func:`features.images.scan_class_folders`).
        cache_dir: cache directory (created).
        settings: crop settings; stored in each entry.
        roots: origin -> root directory, stored in the manifest for reference.
        on_bad_image: ``"skip"`` (counted, logged, recorded with its reason) or ``"error"`` (raise
            :class:`~features.images.BadImageError`).
        progress: ``"rich"`` progress bar or ``"none"``.
        detector: detector to use (default: built from ``settings``); exposed for tests/counting.
        max_pixels: files with more pixels are skipped (reason ``"too_many_pixels"``), checked from the header.
        min_side: files with a smaller side are skipped (``"too_small"``). Cached entries are re-checked from
            the header when the limits change.

    Returns:
        Manifest entries for ``records``, keyed by source path.
    """
    check_choices(preprocess_faces, locals())
    cache_dir = Path(cache_dir)
    (cache_dir / "faces").mkdir(parents=True, exist_ok=True)
    manifest_path = cache_dir / "manifest.jsonl"
    manifest = read_manifest(manifest_path)
    sdict = settings.as_dict()
    if detector is None and settings.face_detection == "haar":
        detector = settings.make_detector()
    stats: Counter = Counter()
    out: dict[str, dict] = {}
    dirty = False
    for rec in _progress(records, "Preprocessing faces", progress == "rich"):
        st = os.stat(rec.path)
        old = manifest.get(rec.path)
        base = {
            "path": rec.path,
            "rel": rec.rel,
            "root": (roots or {}).get(rec.origin),
            "origin": rec.origin,
            "class_name": rec.class_name,
            "label": rec.label,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "settings": sdict,
        }
        if old is not None and old.get("settings") == sdict:
            unchanged = old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
            if not unchanged and st.st_size > 0 and old.get("sha1") == file_sha1(rec.path):
                unchanged = True
            crop_ok = old["status"] != "ok" or npy_complete(cache_dir / old["cache_file"])
            limits = {"max_pixels": max_pixels, "min_side": min_side}
            if unchanged and crop_ok and old.get("limits") != limits:  # also caches written before the limits
                crop_ok = _still_within(old, rec.path, max_pixels, min_side)
            if unchanged and crop_ok:
                entry = {**old, **base, "limits": limits, "cached": True}
                if entry != old:
                    dirty = True
                out[rec.path] = entry
                stats["cached"] += 1
                if entry["status"] != "ok":
                    stats[f"skipped:{entry['reason']}"] += 1
                elif entry.get("face") == "not_found":
                    stats["no_face_kept"] += 1
                if entry["status"] != "ok" and on_bad_image == "error" and entry["reason"] != "no_face":
                    raise BadImageError(rec.path, entry["reason"], "recorded in the manifest")
                continue
        dirty = True
        stats["processed"] += 1
        entry = {
            **base,
            "sha1": None,
            "status": "ok",
            "reason": None,
            "box": None,
            "n_faces": None,
            "face": "not_run",
            "cache_file": None,
            "cached": False,
            "limits": {"max_pixels": max_pixels, "min_side": min_side},
        }
        try:
            rgb = load_image_rgb(rec.path, settings.background, max_pixels, min_side)
        except BadImageError as err:
            if on_bad_image == "error":
                raise
            log.warning("Skipping %s", err)
            entry.update(status="skipped", reason=err.reason, detail=err.detail)
            stats[f"skipped:{err.reason}"] += 1
            out[rec.path] = entry
            continue
        entry["sha1"] = file_sha1(rec.path)
        box = None
        if detector is not None:
            boxes = detector.detect(rgb)
            entry["n_faces"] = len(boxes)
            if len(boxes):
                box = [int(v) for v in boxes[0]]
                entry["face"] = "detected"
            else:
                entry["face"] = "not_found"
                if settings.no_face == "skip":
                    entry.update(status="skipped", reason="no_face")
                    stats["skipped:no_face"] += 1
                    out[rec.path] = entry
                    continue
                stats["no_face_kept"] += 1
        entry["box"] = box
        crop = crop_face(rgb, box, settings.image_size, settings.margin)
        rel_file = f"faces/{entry['sha1']}-{settings_hash(sdict)}.npy"
        target = cache_dir / rel_file
        if not npy_complete(target):
            with atomic_write(target) as f:
                np.save(f, crop)
        entry["cache_file"] = rel_file
        out[rec.path] = entry
    if dirty:
        manifest.update(out)
        write_manifest(manifest_path, manifest.values())
    skipped = {k.split(":", 1)[1]: v for k, v in stats.items() if k.startswith("skipped:")}
    log.info(
        "Face preprocessing: %d files, %d processed, %d cached, %d skipped %s, %d without a detected face kept whole"
        " (cache %s)",
        len(records),
        stats["processed"],
        stats["cached"],
        sum(skipped.values()),
        skipped or "",
        stats["no_face_kept"],
        cache_dir,
    )
    return out


_SIZE_REASONS = ("too_many_pixels", "too_small")


def _still_within(entry: dict, path: str, max_pixels: int | None, min_side: int) -> bool:
    """Whether a cached entry stays valid under new size limits (header check; nothing decoded)."""
    if entry["status"] != "ok" and entry.get("reason") not in _SIZE_REASONS:
        return True  # skipped for another reason: the limits change nothing
    try:
        check_image_header(path, max_pixels, min_side)
        within = True
    except BadImageError:
        within = False
    # ok and still within -> keep; ok but now outside, or skipped for size and now within -> reprocess
    return within == (entry["status"] == "ok")


def summarize_face_manifest(entries: Iterable[dict]) -> dict[str, int]:
    """Counts: ``ok``, ``skipped:<reason>``, ``no_face_kept``, ``cached``, ``processed``."""
    c: Counter = Counter()
    for e in entries:
        if e["status"] == "ok":
            c["ok"] += 1
            if e.get("face") == "not_found":
                c["no_face_kept"] += 1
        else:
            c[f"skipped:{e['reason']}"] += 1
        c["cached" if e.get("cached") else "processed"] += 1
    return dict(c)


def detection_rate(paths: Sequence[str | Path], detector: HaarFaceDetector | None = None) -> tuple[int, int]:
    """(images with at least one detected face, readable images) over ``paths``."""
    detector = detector or HaarFaceDetector()
    found = total = 0
    for p in paths:
        try:
            rgb = load_image_rgb(p)
        except BadImageError:
            continue
        total += 1
        found += int(len(detector.detect(rgb)) > 0)
    return found, total
