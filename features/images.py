"""Face-image folders: scanning and robust loading (media -> arrays).

Pure PIL / numpy (no ``torch`` datasets, no ``lightning``). Used by :mod:`datamodules.datasets.images` and
:class:`datamodules.fer.FERDataModule`, and by the face pre-processing of :mod:`features.faces`.

Folder layout: ``<root>/<class folder>/<image file>``; class folders are mapped to ``class_names`` either by
name or through ``class_aliases`` (folder -> class). Per-split roots (FER2013, RAF-DB, AffectNet exports) hold one
such layout per split folder: ``<root>/{train,val,test}/<class folder>/<image file>`` (:func:`scan_split_folders`).
Each real directory is walked once (symbolic-link loops and links into other class folders are skipped and counted).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.choices import check_choices

log = logging.getLogger(__name__)

#: Files in a root/class folder that are never treated as images (side-car files written by this project).
# manifest files and the augmenter's report next to the class folders of a generated root
SIDECAR_NAMES: frozenset[str] = frozenset(
    {"manifest.jsonl", "manifest.csv", "Thumbs.db", "class_distribution.png", "samples_grid.png"}
)
#: Origin tag of images from the main root (generated images carry the name of their extra root).
REAL_ORIGIN = "real"
#: Default largest image (width x height) decoded; larger files are skipped from their header (a 6300x6300 photo
#: fits; a 10000x10000 one, 0.3 GB of RGB, does not).
DEFAULT_MAX_PIXELS = 40_000_000
#: Default smallest image side: a smaller image cannot hold a face (a 1x1 file would become a uniform "face").
DEFAULT_MIN_SIDE = 16


class BadImageError(ValueError):
    """An image file that cannot be used; ``reason`` is a short machine-readable tag.

    Reasons: ``"empty_file"``, ``"not_an_image"``, ``"truncated"``, ``"corrupt"``, ``"unsupported_mode"``,
    ``"too_many_pixels"`` (more than ``max_pixels``, from the header), ``"too_small"`` (a side below ``min_side``).
    """

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class ImageRecord:
    """One image file found under a class folder.

    Attributes:
        path: absolute path of the source file.
        rel: path relative to its root, POSIX style (``"anger/S010_004_00000017.png"``); split files use it.
        label: class index into ``class_names``.
        class_name: the class the folder maps to.
        origin: ``"real"`` for the main root, otherwise the name of the extra root (generated images).
    """

    path: str
    rel: str
    label: int
    class_name: str
    origin: str


# ----------------------------------------------------------------------------------------------------------
# Scanning
# ----------------------------------------------------------------------------------------------------------
def scan_class_folders(
    root: str | Path,
    class_names: Sequence[str],
    class_aliases: dict[str, str] | None = None,
    unknown_folders: Literal["error", "ignore"] = "error",
    origin: str = REAL_ORIGIN,
    require_all_classes: bool = True,
) -> list[ImageRecord]:
    """List the files of a class-folder dataset.

    Every regular, non-hidden file under a class folder is returned (whether it is a readable image is
    decided when it is loaded, so that corrupt / non-image files end up as counted skips in the manifest).

    Args:
        root: dataset root with one sub-folder per class.
        class_names: the class list; the label is the index into it.
        class_aliases: optional folder name -> class name map (e.g. ``{"happiness": "happy"}``).
        unknown_folders: ``"error"`` (default) raises on a folder that maps to no class, naming it;
            ``"ignore"`` skips it with a log message.
        origin: origin tag stored in every record.
        require_all_classes: when True (main root) every class must have a folder; extra roots of generated
            images may cover only some classes.

    Returns:
        Records sorted by relative path. Symbolic links (files or folders) that resolve outside ``root`` are not
        followed: each is logged (under its own path in the dataset) and counted. Each real directory is walked
        once: a link to a directory already walked, to the root or into a class folder (a loop such as
        ``anger/loop -> ..``, or ``happy/sub/again -> ../../happy``) is skipped, logged and counted the same way.

    Raises:
        FileNotFoundError: ``root`` does not exist, or (``require_all_classes``) a class has no folder.
        ValueError: unknown folder (with ``unknown_folders="error"``), an empty class folder (always an error:
            an empty folder is almost always a failed copy, and silently training without a class is worse),
            loose files directly in ``root``, an alias to a class that is not in ``class_names``, or a class
            folder that is a symbolic link into another class's folder.
    """
    check_choices(scan_class_folders, locals())
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image root {str(root)!r} does not exist or is not a directory")
    aliases = dict(class_aliases or {})
    index = {name: i for i, name in enumerate(class_names)}
    for folder, target in aliases.items():
        if target not in index:
            raise ValueError(
                f"class_aliases maps folder {folder!r} to {target!r}, which is not in class_names {list(class_names)}"
            )
    records: list[ImageRecord] = []
    seen_classes: set[str] = set()
    real_root = root.resolve()
    outside: list[Path] = []  # symbolic links leading outside the root: not followed, reported
    repeated: list[Path] = []  # links to a directory walked elsewhere (loops, ancestors, class folders): skipped
    class_dirs: list[tuple[Path, str]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name in SIDECAR_NAMES:
            continue
        if not entry.is_dir():
            if entry.suffix.lower() in (".json", ".jsonl", ".csv", ".txt", ".md", ".yaml", ".yml"):
                continue  # metadata next to the class folders
            raise ValueError(
                f"{str(entry)!r}: loose file in image root {str(root)!r}; expected class folders only"
            )
        class_name = aliases.get(entry.name, entry.name)
        if class_name not in index:
            if unknown_folders == "error":
                raise ValueError(
                    f"Unknown class folder {str(entry)!r}: {entry.name!r} is not in class_names {list(class_names)}"
                    " (add it to class_aliases, or set unknown_folders='ignore')"
                )
            log.info("Ignoring folder %s (not in class_names)", entry)
            continue
        if not _inside(entry, real_root):
            outside.append(entry)
            continue
        class_dirs.append((entry, class_name))
    # every class folder is walked as itself: a link from elsewhere into one (or into the root) is never followed,
    # so no image is listed twice or under a second class
    claimed: dict[Path, Path] = {}
    for entry, class_name in class_dirs:
        real = entry.resolve()
        other = claimed.get(real) or next((c for r, c in claimed.items() if r in real.parents or real in r.parents),
                                          None)
        if other is not None:
            link, target = (entry, other) if entry.is_symlink() or not other.is_symlink() else (other, entry)
            raise ValueError(
                f"Class folder {str(link)!r} is a symbolic link into {str(target)!r}, the folder of another class "
                f"(both lead to {str(real)!r}): the same images would carry two labels"
            )
        claimed[real] = entry
    visited: set[Path] = set()
    for entry, class_name in class_dirs:
        walked = _walk_files(entry, real_root, outside, set(claimed), visited, repeated)
        files = [p for p in walked if p.name not in SIDECAR_NAMES]
        if not files:
            raise ValueError(
                f"Empty class folder {str(entry)!r} (class {class_name!r}): it holds no files"
                + (" (symbolic links that lead outside the root are not followed)" if outside else "")
            )
        seen_classes.add(class_name)
        for p in files:
            records.append(
                ImageRecord(
                    path=str(p.resolve()),
                    rel=p.relative_to(root).as_posix(),
                    label=index[class_name],
                    class_name=class_name,
                    origin=origin,
                )
            )
    for link in outside:
        log.warning("Not following %s: a symbolic link to %s, outside the image root %s", link, link.resolve(), root)
    if outside:
        log.warning("Image root %s: %d symbolic link(s) leading outside it skipped", root, len(outside))
    for link in repeated:
        log.warning("Not following %s: a symbolic link to %s, a directory walked already (a loop, an ancestor or a "
                    "class folder)", link, link.resolve())
    if repeated:
        log.warning("Image root %s: %d symbolic link(s) to a directory already walked skipped (each real directory "
                    "is read once)", root, len(repeated))
    if require_all_classes:
        missing = [c for c in class_names if c not in seen_classes]
        if missing:
            raise FileNotFoundError(f"Image root {str(root)!r} has no folder for classes {missing}")
    records.sort(key=lambda r: r.rel)
    return records


#: Split folders of a per-split class-folder root (FER2013, RAF-DB, AffectNet exports): ``<root>/<split>/<class>/``.
SPLIT_FOLDERS: tuple[str, str, str] = ("train", "val", "test")


def scan_split_folders(
    root: str | Path,
    class_names: Sequence[str],
    class_aliases: dict[str, str] | None = None,
    unknown_folders: Literal["error", "ignore"] = "error",
    origin: str = REAL_ORIGIN,
) -> dict[str, list[ImageRecord]]:
    """List the files of a per-split class-folder dataset: ``<root>/{train,val,test}/<class>/<image>``.

    Each split folder is scanned with :func:`scan_class_folders` (every class must have a folder in every split
    folder present); the records' ``rel`` keeps the split folder (``"train/angry/Training_1.png"``).

    Args:
        root: dataset root holding ``train/`` and at least one of ``val/`` and ``test/``.
        class_names: the class list; the label is the index into it.
        class_aliases: optional folder name -> class name map.
        unknown_folders: what to do with a class folder that maps to no class (see :func:`scan_class_folders`).
        origin: origin tag stored in every record.

    Returns:
        ``{split folder: records}`` for the split folders present (``"train"`` always).

    Raises:
        FileNotFoundError: ``root``, ``root/train`` or both ``root/val`` and ``root/test`` are missing, or a split
            folder lacks a class folder (the message names the split folder).
        ValueError: a folder in ``root`` other than the split folders, an empty split folder (naming it), or any
            error of :func:`scan_class_folders` inside a split folder.
    """
    check_choices(scan_split_folders, locals())
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image root {str(root)!r} does not exist or is not a directory")
    others = sorted(p.name for p in root.iterdir()
                    if p.is_dir() and not p.name.startswith(".") and p.name not in SPLIT_FOLDERS)
    if others:
        raise ValueError(f"Image root {str(root)!r} holds folders {others} besides the split folders "
                         f"{list(SPLIT_FOLDERS)} (per-split layout: <root>/<split>/<class>/<image>)")
    if not (root / "train").is_dir():
        raise FileNotFoundError(f"Image root {str(root)!r} has no train/ folder (per-split layout: "
                                "<root>/train/<class>/<image>, with val/ and/or test/ beside it)")
    present = [s for s in SPLIT_FOLDERS if (root / s).is_dir()]
    if present == ["train"]:
        raise FileNotFoundError(f"Image root {str(root)!r} has train/ but neither val/ nor test/")
    out: dict[str, list[ImageRecord]] = {}
    for split in present:
        folder = root / split
        if not any(not p.name.startswith(".") for p in folder.iterdir()):
            raise ValueError(f"Split folder {str(folder)!r} is empty (expected one folder per class: "
                             f"{list(class_names)})")
        recs = scan_class_folders(folder, class_names, class_aliases, unknown_folders, origin, True)
        out[split] = [replace(r, rel=f"{split}/{r.rel}") for r in recs]
    return out


def _inside(path: Path, real_root: Path) -> bool:
    """Whether ``path`` (after following symbolic links) lies inside the resolved ``real_root``."""
    target = path.resolve()
    return target == real_root or real_root in target.parents


def _walk_files(
    folder: Path, real_root: Path, outside: list[Path], claimed: set[Path], visited: set[Path], repeated: list[Path]
) -> list[Path]:
    """Non-hidden regular files under ``folder``, sorted; every real directory is walked once.

    Links leading outside ``real_root`` go to ``outside``. A symbolic link to a directory that was walked already
    (``visited``), to the root, or into a class folder (``claimed``: real paths of all class folders, this one
    included, which are walked as themselves) goes to ``repeated``: it would loop (``anger/loop -> ..``), list a
    folder twice (``happy/sub/again -> ../../happy``) or give another class's images this folder's label.
    """
    files: list[Path] = []
    visited.add(folder.resolve())
    todo = [folder]
    while todo:
        d = todo.pop()
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_symlink() and not _inside(p, real_root):
                outside.append(p)
            elif p.is_dir():
                real = p.resolve()
                if real in visited or (p.is_symlink() and (
                        real == real_root or any(c == real or c in real.parents for c in claimed))):
                    repeated.append(p)
                    continue
                visited.add(real)
                todo.append(p)
            elif p.is_file():
                files.append(p)
    return sorted(files)


# ----------------------------------------------------------------------------------------------------------
# Robust loading
# ----------------------------------------------------------------------------------------------------------
def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a single-channel high-bit-depth array to uint8 (scaling, never clipping)."""
    if array.dtype == np.uint8:
        return array
    a = array.astype(np.float64)
    if mode.startswith("I;16") or array.dtype == np.uint16:
        return np.round(a * (255.0 / 65535.0)).astype(np.uint8)
    if mode == "I":  # 32-bit signed; usually 16-bit data decoded into int32
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 65535:
            return np.round(a * (255.0 / 65535.0)).astype(np.uint8)
        return np.round((a - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)
    # mode "F": float data; [0, 1] is taken as normalised intensity, anything else min-max scaled
    a = np.nan_to_num(a)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(a * 255.0).astype(np.uint8)
    return np.round((a - lo) * (255.0 / max(hi - lo, 1e-12))).astype(np.uint8)


def pil_to_rgb_array(image: Image.Image, background: Literal["black", "white"] = "black") -> np.ndarray:
    """Convert any PIL image to 8-bit RGB.

    * ``1``/``L``/``P``/``RGB``/``CMYK``/``YCbCr``/``LAB``/``HSV``: PIL's own conversion (palette looked up).
    * ``LA``/``RGBA``/``PA``/palette with transparency: alpha-composited over a black (default) or white
      background, so transparent regions do not leak arbitrary colour values.
    * ``I;16*`` (16-bit) and ``I`` holding 16-bit data: scaled by 255/65535 (the full 16-bit range maps to the
      full 8-bit range; values are never clipped). ``I`` data outside [0, 65535] and ``F`` data outside
      [0, 1] are min-max scaled.

    Args:
        image: an opened (and loaded) PIL image.
        background: ``"black"`` or ``"white"``, used for transparent pixels.

    Returns:
        ``[H, W, 3]`` uint8 array.
    """
    check_choices(pil_to_rgb_array, locals())
    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("LA", "La", "RGBA", "RGBa"):
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255) if background == "black" else (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"), dtype=np.uint8).copy()
    if mode.startswith("I") or mode == "F":
        gray = _to_uint8(np.asarray(image), mode)
        return np.repeat(gray[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


@contextlib.contextmanager
def _pil_pixel_limit(max_pixels: int | None) -> Iterator[None]:
    """PIL's decompression-bomb limit set to ``max_pixels`` for the block (PIL's default when ``None``)."""
    old = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = max(int(max_pixels), 1)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def _check_size(path: Path, size: tuple[int, int], max_pixels: int | None, min_side: int) -> None:
    w, h = size
    if max_pixels is not None and w * h > max_pixels:
        raise BadImageError(path, "too_many_pixels", f"{w}x{h} = {w * h} pixels > max_pixels={max_pixels}; "
                                                     "not decoded")
    if min(w, h) < min_side:
        raise BadImageError(path, "too_small", f"{w}x{h}: a side is below min_side={min_side}")


def check_image_header(
    path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS, min_side: int = 1
) -> tuple[int, int]:
    """``(width, height)`` read from the file's header (nothing decoded); ``BadImageError`` when outside the limits
    (or not an image)."""
    path = Path(path)
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                size = im.size
    except Image.DecompressionBombError as err:
        raise BadImageError(path, "too_many_pixels", str(err)) from None
    except UnidentifiedImageError as err:
        raise BadImageError(path, "not_an_image", str(err)) from None
    except (OSError, SyntaxError, EOFError, ValueError) as err:
        raise BadImageError(path, "corrupt", str(err)) from None
    _check_size(path, size, max_pixels, min_side)
    return size


def load_image_rgb(
    path: str | Path,
    background: str = "black",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    min_side: int = 1,
) -> np.ndarray:
    """Read an image file as 8-bit RGB, never modifying it.

    The first frame of multi-frame files is used; EXIF orientation is applied. The size is checked from the
    header BEFORE decoding (a 20000x20000 PNG costs nothing).

    Args:
        path: image file.
        background: colour under transparent pixels (``"black"`` or ``"white"``).
        max_pixels: largest ``width * height`` decoded (``None``: PIL's own decompression-bomb limit).
        min_side: smallest accepted side (the datamodule uses :data:`DEFAULT_MIN_SIDE`).

    Returns:
        ``[H, W, 3]`` uint8 array.

    Raises:
        BadImageError: with ``reason`` ``"empty_file"`` (zero bytes), ``"not_an_image"`` (PIL cannot identify
            it), ``"truncated"`` or ``"corrupt"`` (decoding failed), ``"unsupported_mode"``, ``"too_many_pixels"``,
            ``"too_small"``.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty_file", "zero bytes")
    try:
        with warnings.catch_warnings(), _pil_pixel_limit(max_pixels):
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                _check_size(path, im.size, max_pixels, min_side)
                im.load()
                im = ImageOps.exif_transpose(im) if im.getexif() else im
                return pil_to_rgb_array(im, background)
    except Image.DecompressionBombError as err:
        raise BadImageError(path, "too_many_pixels", str(err)) from None
    except UnidentifiedImageError as err:
        raise BadImageError(path, "not_an_image", str(err)) from None
    except (OSError, SyntaxError, EOFError) as err:
        reason = "truncated" if "truncat" in str(err).lower() else "corrupt"
        raise BadImageError(path, reason, str(err)) from None
    except ValueError as err:
        if isinstance(err, BadImageError):
            raise
        raise BadImageError(path, "unsupported_mode", str(err)) from None
