"""Tiny class-folder image datasets written to ``tmp_path`` for the face-image tests.

Images are synthetic "faces" (an oval with eyes and a mouth whose curvature depends on the class) saved in the
PIL modes the loader must handle: ``L``, ``RGB``, ``P`` (palette), ``RGBA``, ``LA`` and ``I;16`` (16-bit PNG).
File names follow CK+ (``S<subject>_<sequence>_<frame>.png``) so subject-grouped splits can be tested. Haar
cascades do not fire on these drawings; detection tests use the real JAFFE images when present.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO / ".." / "shared" / "data"
CK_CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
JAFFE_CLASSES = ["anger", "disgust", "fear", "happy", "neutral", "sadness", "surprise"]
MODES = ("L", "RGB", "P", "RGBA", "LA", "I;16")


def real_root(name: str) -> Path | None:
    """``<repo>/../shared/data/<name>`` when it exists, else None."""
    p = (SHARED_DATA / name).resolve()
    return p if p.is_dir() else None


def synthetic_face(size: int = 32, label: int = 0, seed: int = 0) -> np.ndarray:
    """A grey ``[size, size]`` uint8 cartoon face; mouth shape and brightness vary with ``label``/``seed``."""
    rng = np.random.default_rng(seed)
    s = size * 4  # draw large, then downsample (anti-aliasing)
    img = Image.new("L", (s, s), int(40 + 10 * (label % 3)))
    d = ImageDraw.Draw(img)
    d.ellipse([s * 0.15, s * 0.08, s * 0.85, s * 0.95], fill=int(170 + rng.integers(0, 40)))
    for ex in (0.35, 0.65):
        d.ellipse([s * (ex - 0.07), s * 0.35, s * (ex + 0.07), s * 0.45], fill=30)
    bend = (label % 5 - 2) * 0.05
    d.arc(
        [s * 0.3, s * (0.6 - bend), s * 0.7, s * (0.8 + bend)],
        0 if bend >= 0 else 180,
        180 if bend >= 0 else 360,
        fill=20,
        width=max(s // 32, 1),
    )
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.int16)
    arr = arr + rng.integers(-6, 7, size=arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def save_in_mode(gray: np.ndarray, path: Path, mode: str) -> Path:
    """Save a grey image in ``mode`` (PNG); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "L":
        Image.fromarray(gray, "L").save(path)
    elif mode == "RGB":
        rgb = np.stack([gray, (gray * 0.9).astype(np.uint8), gray // 2 + 60], axis=2)
        Image.fromarray(rgb, "RGB").save(path)
    elif mode == "P":
        Image.fromarray(np.stack([gray] * 3, axis=2), "RGB").convert(
            "P", palette=Image.ADAPTIVE, colors=64
        ).save(path)
    elif mode in ("RGBA", "LA"):
        alpha = np.full_like(gray, 255)
        alpha[: gray.shape[0] // 4] = 0  # transparent top band
        if mode == "RGBA":
            Image.fromarray(np.stack([gray, gray, gray, alpha], axis=2), "RGBA").save(path)
        else:
            Image.fromarray(np.stack([gray, alpha], axis=2), "LA").save(path)
    elif mode == "I;16":
        Image.fromarray(gray.astype(np.uint16) * 257).save(path)  # full 16-bit range
    else:
        raise ValueError(f"save_in_mode: unsupported mode {mode!r}")
    return path


def make_class_folders(
    root: Path,
    classes: Sequence[str] = ("happy", "sad", "neutral"),
    subjects: int = 4,
    frames: int = 2,
    size: int = 32,
    modes: Sequence[str] = ("L",),
    seed: int = 0,
    kind: str = "face",
) -> list[Path]:
    """Write ``classes x subjects x frames`` images named ``S<subject>_<label>_<frame>.png``.

    Modes cycle over the written files. ``kind="face"`` draws cartoon faces (Haar fires on them from about
    64 px), ``kind="noise"`` uniform noise (no face). Returns the written paths.
    """
    paths = []
    i = 0
    for label, c in enumerate(classes):
        for subj in range(subjects):
            for fr in range(frames):
                if kind == "face":
                    gray = synthetic_face(size, label, seed * 100003 + i)
                else:
                    gray = np.random.default_rng(seed * 100003 + i).integers(
                        0, 256, (size, size), dtype=np.uint8
                    )
                p = root / c / f"S{subj + 1:03d}_{label + 1:03d}_{fr + 1:08d}.png"
                paths.append(save_in_mode(gray, p, modes[i % len(modes)]))
                i += 1
    return paths


def write_bad_files(folder: Path) -> dict[str, Path]:
    """Write one file of each bad kind into ``folder``: reason -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "_tmp_good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8), "L").save(good)
    data = good.read_bytes()
    good.unlink()
    out = {
        "empty_file": folder / "zero.png",
        "not_an_image": folder / "notes.png",
        "truncated": folder / "truncated.png",
        "corrupt": folder / "corrupt.png",
    }
    out["empty_file"].write_bytes(b"")
    out["not_an_image"].write_text("this is not an image\n")
    out["truncated"].write_bytes(data[: len(data) // 2])
    # valid signature and header, garbage inside the compressed pixel data
    bad = bytearray(data)
    start = data.find(b"IDAT") + 14
    bad[start : start + 190] = bytes(np.random.default_rng(1).integers(0, 255, 190, dtype=np.uint8))
    out["corrupt"].write_bytes(bytes(bad))
    return out


def tree_fingerprint(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (mtime_ns, sha1) of every file under ``root`` (to prove originals are untouched)."""
    return {
        str(p): (p.stat().st_mtime_ns, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }
