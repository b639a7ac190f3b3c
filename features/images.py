"""Face-image folders: scanning and robust loading (media -> arrays).

Pure PIL / numpy (no ``torch`` datasets, no ``lightning``). Used by :mod:`datamodules.datasets.images` and
:class:`datamodules.fer.FERDataModule`, and by the face pre-processing of :mod:`features.faces`.

Folder layout: ``<root>/<class folder>/<image file>``; class folders are mapped to ``class_names`` either by
name or through ``class_aliases`` (folder -> class).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Files in a root/class folder that are never treated as images (side-car files written by this project).
# manifest files and the augmenter's report next to the class folders of a generated root
SIDECAR_NAMES: frozenset[str] = frozenset(
    {"manifest.jsonl", "manifest.csv", "Thumbs.db", "class_distribution.png", "samples_grid.png"}
)
#: Origin tag of images from the main root (generated images carry the name of their extra root).
REAL_ORIGIN = "real"


class BadImageError(ValueError):
    """An image file that cannot be used; ``reason`` is a short machine-readable tag.

    Reasons: ``"empty_file"``, ``"not_an_image"``, ``"truncated"``, ``"corrupt"``, ``"unsupported_mode"``.
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
    unknown_folders: str = "error",
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
        Records sorted by relative path.

    Raises:
        FileNotFoundError: ``root`` does not exist, or (``require_all_classes``) a class has no folder.
        ValueError: unknown folder (with ``unknown_folders="error"``), an empty class folder (always an error:
            an empty folder is almost always a failed copy, and silently training without a class is worse),
            loose files directly in ``root``, or an alias to a class that is not in ``class_names``.
    """
    if unknown_folders not in ("error", "ignore"):
        raise ValueError(
            f"scan_class_folders: unknown_folders must be 'error' or 'ignore', got {unknown_folders!r}"
        )
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
        files = sorted(p for p in entry.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if p.name not in SIDECAR_NAMES]
        if not files:
            raise ValueError(f"Empty class folder {str(entry)!r} (class {class_name!r}): it holds no files")
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
    if require_all_classes:
        missing = [c for c in class_names if c not in seen_classes]
        if missing:
            raise FileNotFoundError(f"Image root {str(root)!r} has no folder for classes {missing}")
    records.sort(key=lambda r: r.rel)
    return records


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


def pil_to_rgb_array(image: Image.Image, background: str = "black") -> np.ndarray:
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
    if background not in ("black", "white"):
        raise ValueError(f"pil_to_rgb_array: background must be 'black' or 'white', got {background!r}")
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


def load_image_rgb(path: str | Path, background: str = "black") -> np.ndarray:
    """Read an image file as 8-bit RGB, never modifying it.

    The first frame of multi-frame files is used; EXIF orientation is applied.

    Args:
        path: image file.
        background: colour under transparent pixels (``"black"`` or ``"white"``).

    Returns:
        ``[H, W, 3]`` uint8 array.

    Raises:
        BadImageError: with ``reason`` ``"empty_file"`` (zero bytes), ``"not_an_image"`` (PIL cannot identify
            it), ``"truncated"`` or ``"corrupt"`` (decoding failed), ``"unsupported_mode"``.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise BadImageError(path, "empty_file", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im) if im.getexif() else im
                return pil_to_rgb_array(im, background)
    except UnidentifiedImageError as err:
        raise BadImageError(path, "not_an_image", str(err)) from None
    except (OSError, SyntaxError, EOFError) as err:
        reason = "truncated" if "truncat" in str(err).lower() else "corrupt"
        raise BadImageError(path, reason, str(err)) from None
    except ValueError as err:
        if isinstance(err, BadImageError):
            raise
        raise BadImageError(path, "unsupported_mode", str(err)) from None
