"""The face cache keeps its layout: a cache built by ``FERDataModule`` is byte for byte the one the code before
``features.face_cache`` built, so caches on users' machines (``cache/fer/<hash>/``) stay valid.

``fer_cache_tree.json`` (next to this file) is the fingerprint of such a cache (relative path -> SHA-1 of the content,
the temporary folder replaced by ``<TMP>`` in JSON files) recorded with the code of commit 4d4bb5e, before the cache
moved out of the datamodule: crops, manifest, split files, SUN statistics (in the cache and in a ``sun_params_file``)
and descriptor maps of several settings. The inputs are deterministic (uncompressed BMP images at the crop size, so
no resampling, fixed modification times). Regenerate it (``python -m tests.datamodules.test_fer_cache_layout``) only
for a deliberate layout change, which must also change the keys (``features.faces.CACHE_VERSION``) so old caches are
not misread.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from datamodules.fer import FERDataModule
from features.faces import settings_hash
from tests.fakes_images import synthetic_face
from tests.helpers.fer import fer_datamodule

TREE_FILE = Path(__file__).with_name("fer_cache_tree.json")
CLASSES = ["happy", "sad", "neutral"]
MTIME_NS = 1_700_000_000_000_000_000
#: The settings of the successive runs over one cache: a second descriptor, a new split (SUN refit), SUN statistics
#: in a file of their own, another crop size (a second set of crops in the same cache folder).
RUNS = (
    {"descriptor": "sun"},
    {"descriptor": "lbp"},
    {"descriptor": "sun", "seed": 7},
    {"descriptor": "sun", "sun_params_file": "{tmp}/sun_params.json", "seed": 3},
    {"descriptor": "none", "image_size": 12},
)


def _write_root(root: Path, classes: list[str], n: int, seed: int) -> None:
    i = 0
    for label, c in enumerate(classes):
        for k in range(n):
            p = root / c / f"S{k + 1:03d}_{label + 1:03d}_{1:08d}.bmp"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic_face(16, label, seed * 1000 + i), "L").save(p, format="BMP")
            i += 1


def _build(tmp: Path, after: Callable[[FERDataModule], None] = lambda dm: None, **kwargs) -> None:
    """Write the images, then prepare and set up one datamodule per run of :data:`RUNS` over ``tmp/cache`` (``after``
    sees each one before the next run)."""
    data, gen = tmp / "data", tmp / "ldm_gen"
    _write_root(data, CLASSES, 8, 0)
    _write_root(gen, ["sad"], 3, 1)
    (data / "happy" / "zero.bmp").write_bytes(b"")  # a skipped entry in the manifest
    for p in [*data.rglob("*"), *gen.rglob("*")]:
        if p.is_file():
            os.utime(p, ns=(MTIME_NS, MTIME_NS))
    base = {"class_names": CLASSES, "image_size": 16, "face_detection": "none", "batch_size": 4, "progress": "none",
            "cache_dir": str(tmp / "cache"), "sun_sigmas": (1.0, 2.0), "extra_roots": [str(gen)], **kwargs}
    for run in RUNS:
        run = {k: v.format(tmp=tmp) if isinstance(v, str) else v for k, v in run.items()}
        dm = fer_datamodule(str(data), **{**base, **run})
        dm.prepare_data()
        dm.setup("fit")
        after(dm)


def cache_tree(tmp: Path, **kwargs) -> dict[str, str]:
    """Build the caches of :data:`RUNS` under ``tmp``; relative path -> SHA-1 of every file but the litdata streams
    (their keys hold absolute paths; see :func:`test_litdata_streams_keep_their_folder_keys`)."""
    _build(tmp, **kwargs)
    out = {}
    for p in sorted([*(tmp / "cache").rglob("*"), tmp / "sun_params.json"]):
        rel = p.relative_to(tmp).as_posix()
        if not p.is_file() or rel.startswith("cache/litdata/"):
            continue
        data = p.read_bytes()
        if p.suffix in (".json", ".jsonl"):
            for t in {str(tmp.resolve()), str(tmp)}:
                data = data.replace(t.encode(), b"<TMP>")
        out[rel] = hashlib.sha1(data).hexdigest()
    return out


def _split_by_float_dependence(tree: dict[str, str]) -> tuple[dict[str, str], Counter]:
    """The fingerprint in two parts: files compared byte for byte, and the files that depend on the fitted SUN
    statistics (floating-point sums whose last bits may differ between CPUs: the SUN statistics files, and the SUN
    descriptor folders, whose names hash those statistics), compared by name within their folder only."""
    exact, loose = {}, Counter()
    for path, sha in tree.items():
        parts = path.split("/")
        if "sun_params" in parts[-1]:
            loose[path] += 1
        elif len(parts) > 2 and parts[1] == "descriptors" and parts[2].startswith("sun-"):
            loose["/".join([*parts[:2], "sun-*", *parts[3:]])] += 1
        else:
            exact[path] = sha
    return exact, loose


def test_cache_tree_is_byte_identical_to_the_layout_before_face_cache(tmp_path: Path) -> None:
    expected, expected_loose = _split_by_float_dependence(json.loads(TREE_FILE.read_text()))
    got, got_loose = _split_by_float_dependence(cache_tree(tmp_path))
    assert sorted(got) == sorted(expected), "cache files added or missing"
    changed = [p for p in expected if got[p] != expected[p]]
    assert not changed, f"cache files with other content than before: {changed}"
    assert got_loose == expected_loose, "SUN statistics or SUN descriptor maps added or missing"


def test_litdata_streams_keep_their_folder_keys(tmp_path: Path) -> None:
    """The litdata backend writes the same cache plus streams in the folders keyed as before."""
    from datamodules.datasets.streaming import FORMAT_VERSION, TRAIN_WRITE_ORDER

    keys = set()

    def key_of_stream(dm: FERDataModule) -> None:
        split = json.loads(dm.split_path.read_text())
        digest = hashlib.sha1(json.dumps({s: sorted(split[s]) for s in ("train", "val", "test")}).encode()
                              ).hexdigest()[:16]
        desc = None
        if dm.descriptor.kind != "none":
            desc = dm.cache.descriptor_dir(dm.load_sun_params() if dm.descriptor.kind == "sun" else None).name
        key = {"split": digest, "crop": dm.crop.as_dict(), "desc": desc,
               "extra": {"real": str((tmp_path / "data").resolve()), "ldm_gen": str((tmp_path / "ldm_gen").resolve())},
               "format": FORMAT_VERSION, "train_order": TRAIN_WRITE_ORDER, "group": 4}
        keys.add(settings_hash(key))
        assert all((dm.cache_root / "litdata" / settings_hash(key) / s / "index.json").is_file()
                   for s in ("train", "val", "test"))

    _build(tmp_path, key_of_stream, cache_backend="litdata")
    expected = json.loads(TREE_FILE.read_text())
    tree = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert (_split_by_float_dependence(dict.fromkeys(tree - {p for p in tree if p.startswith("cache/litdata/")}, ""))[1]
            == _split_by_float_dependence(dict.fromkeys(set(expected) - {"sun_params.json"}, ""))[1])
    assert ({p for p in tree if not p.startswith("cache/litdata/")} - {p for p in tree if "sun" in p}
            == set(expected) - {p for p in expected if "sun" in p})
    assert {p.split("/")[2] for p in tree if p.startswith("cache/litdata/")} == keys


@pytest.mark.parametrize("split", ["stratified", "folders"])
def test_default_cache_root_keeps_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split: str) -> None:
    monkeypatch.chdir(tmp_path)
    dm = fer_datamodule("data", CLASSES, image_size=16, face_detection="none", split=split)
    key = {"root": str((tmp_path / "data").resolve()), "crop": dm.crop.as_dict()}
    if split == "folders":
        key["layout"] = "split_folders"
    assert dm.cache_root == Path("cache") / "fer" / settings_hash(key)
    assert dm.cache.root == dm.cache_root



def test_the_cache_follows_applied_preprocessing(tmp_path: Path) -> None:
    """A checkpoint's settings replace the datamodule's: the face cache is rebuilt with them."""
    dm = fer_datamodule(str(tmp_path / "data"), CLASSES, image_size=16, face_detection="none", descriptor="lbp")
    state = dm.preprocessing_state()
    state["settings"].update(image_size=24, descriptor="sun", sun_sigmas=[1.0, 2.0])
    old_root = dm.cache_root
    dm.apply_preprocessing_state(state)
    assert dm.cache.crop == dm.crop and dm.crop.image_size == 24 and dm.cache.descriptor.kind == "sun"
    assert dm.cache.root == dm.cache_root != old_root
    assert dm.sun_params_path == dm.cache.sun_params_path
    assert dm.sun_params_path.name == f"sun_params-{settings_hash(dm.descriptor.as_dict())}.json"


if __name__ == "__main__":  # regenerate the fingerprint (a deliberate layout change only)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        TREE_FILE.write_text(json.dumps(cache_tree(Path(tmp)), indent=1, sort_keys=True) + "\n")
    sys.stdout.write(f"wrote {TREE_FILE}\n")
