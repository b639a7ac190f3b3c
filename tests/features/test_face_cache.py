"""Tests for features/face_cache.py (FaceCache): reuse, keys, repair of damaged entries, SUN statistics per split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import features.face_cache as face_cache_module
import features.faces as faces_module
from features.descriptors import DescriptorSettings
from features.face_cache import FaceCache, FaceCacheMiss
from features.faces import FaceCropSettings, read_manifest
from features.images import ImageRecord, scan_class_folders
from tests.fakes_images import make_class_folders, tree_fingerprint

CLASSES = ["happy", "sad"]
CROP = FaceCropSettings(image_size=16, face_detection="none")
SUN = DescriptorSettings(kind="sun", sun_sigmas=(1.0, 2.0))


class Calls:
    """Counts the images decoded, the SUN fits and the descriptor maps computed (the real functions still run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.decoded: list[str] = []
        self.fits = 0
        self.maps = 0
        load, fit, compute = faces_module.load_image_rgb, face_cache_module.fit_sun_params, \
            face_cache_module.compute_descriptor

        def counted_load(path, *a, **k):
            self.decoded.append(str(path))
            return load(path, *a, **k)

        def counted_fit(*a, **k):
            self.fits += 1
            return fit(*a, **k)

        def counted_compute(*a, **k):
            self.maps += 1
            return compute(*a, **k)

        monkeypatch.setattr(faces_module, "load_image_rgb", counted_load)
        monkeypatch.setattr(face_cache_module, "fit_sun_params", counted_fit)
        monkeypatch.setattr(face_cache_module, "compute_descriptor", counted_compute)

    def reset(self) -> None:
        self.decoded, self.fits, self.maps = [], 0, 0


@pytest.fixture
def records(tmp_path: Path) -> list[ImageRecord]:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=3, frames=1, size=16)
    return scan_class_folders(root, CLASSES)


def _cache(tmp_path: Path, descriptor: DescriptorSettings = SUN, **kwargs) -> FaceCache:
    return FaceCache(tmp_path / "cache", CROP, descriptor, progress="none", **kwargs)


def _state(cache: FaceCache) -> tuple[dict, dict]:
    """(path -> (mtime, SHA-1) of every file but the manifest, the manifest's entries without their ``cached`` flag,
    which says whether the last run reused the entry)."""
    files = {p: v for p, v in tree_fingerprint(cache.root).items() if p != str(cache.manifest_path)}
    manifest = {k: {f: v for f, v in e.items() if f != "cached"} for k, e in read_manifest(cache.manifest_path).items()}
    return files, manifest


def _fill(cache: FaceCache, records: list[ImageRecord], split_sha1: str = "split-a"):
    """Crop, fit (SUN) and compute maps; returns (entries, SUN statistics or None)."""
    entries = cache.crop_faces(records)
    sun = None
    if cache.descriptor.kind == "sun":
        sun = cache.fit_or_load_sun(list(entries.values())[:4], split_sha1, "splits/a.json", seed=0)
    cache.compute_maps(entries, sun)
    return entries, sun


def test_a_second_cache_on_the_same_folder_reuses_everything(tmp_path, records, monkeypatch) -> None:
    calls = Calls(monkeypatch)
    first = _cache(tmp_path)
    entries, sun = _fill(first, records)
    assert (len(calls.decoded), calls.fits, calls.maps) == (6, 1, 6)
    before = _state(first)
    calls.reset()
    second = _cache(tmp_path)
    entries2, sun2 = _fill(second, records)
    assert (calls.decoded, calls.fits, calls.maps) == ([], 0, 0)
    assert _state(second) == before  # no file rewritten, the same entries
    assert all(e["cached"] for e in entries2.values())
    assert sun2 == sun and [e["cache_file"] for e in entries2.values()] == [e["cache_file"] for e in entries.values()]
    assert second.entries(records).keys() == entries.keys()
    crops, maps = second.load_crops(list(entries2.values())), second.load_maps(list(entries2.values()), sun2)
    assert crops.shape == (6, 3, 16, 16) and crops.dtype == torch.uint8
    assert maps.shape == (6, 1, 16, 16) and maps.dtype == torch.uint8
    first_crop = np.load(second.crop_path(entries2[records[0].path]))
    assert torch.equal(crops[0], torch.from_numpy(first_crop).permute(2, 0, 1))
    assert second.load_crops([]).shape == (0, 3, 16, 16) and second.load_maps([], sun2).shape == (0, 1, 16, 16)


def test_other_descriptor_settings_make_a_new_folder_and_keep_the_crops(tmp_path, records, monkeypatch) -> None:
    calls = Calls(monkeypatch)
    lbp = _cache(tmp_path, DescriptorSettings(kind="lbp"))
    entries, _ = _fill(lbp, records)
    crops = {p: v for p, v in tree_fingerprint(tmp_path / "cache").items() if "/faces/" in p}
    calls.reset()
    energy = _cache(tmp_path, DescriptorSettings(kind="energy"))
    _fill(energy, records)
    assert calls.decoded == [] and calls.maps == 6  # the crops are reused, the maps are new
    assert energy.descriptor_dir() != lbp.descriptor_dir() and lbp.descriptor_dir().is_dir()
    assert energy.descriptor_dir().parent == lbp.descriptor_dir().parent == tmp_path / "cache" / "descriptors"
    assert {p: v for p, v in tree_fingerprint(tmp_path / "cache").items() if "/faces/" in p} == crops
    wider = _cache(tmp_path, DescriptorSettings(kind="energy", energy_sigma=3.0))
    assert wider.descriptor_dir() not in (energy.descriptor_dir(), lbp.descriptor_dir())
    assert wider.map_path(entries[records[0].path]).name == Path(entries[records[0].path]["cache_file"]).name


def test_corrupt_and_torn_entries_are_recomputed(tmp_path, records, monkeypatch, caplog) -> None:
    calls = Calls(monkeypatch)
    cache = _cache(tmp_path)
    entries, sun = _fill(cache, records)
    good_files, good_manifest = _state(cache)
    e0, e1, e2 = (entries[r.path] for r in records[:3])
    # a crop cut short, a descriptor map cut short, an empty map, a torn manifest line, unreadable statistics
    crop = cache.crop_path(e0)
    crop.write_bytes(crop.read_bytes()[:-7])
    cache.map_path(e1, sun).write_bytes(cache.map_path(e1, sun).read_bytes()[:40])
    cache.map_path(e2, sun).write_bytes(b"")
    lines = cache.manifest_path.read_text().splitlines(keepends=True)
    torn = next(i for i, line in enumerate(lines) if json.loads(line)["path"] == records[3].path)
    lines[torn] = lines[torn][: len(lines[torn]) // 2] + "\n"
    cache.manifest_path.write_text("".join(lines))
    cache.sun_params_path.write_text('{"sigmas": [1.0')
    calls.reset()
    again = _cache(tmp_path)
    entries2, sun2 = _fill(again, records)
    # only the damaged entries are recomputed (the crop cut short, the image whose manifest line was torn)
    assert sorted(calls.decoded) == sorted([records[0].path, records[3].path])
    assert calls.fits == 1 and sun2 == sun and "unreadable" in caplog.text
    assert calls.maps == 2  # the maps cut short (the refit gives the same statistics, so the same folder)
    files, manifest = _state(again)
    assert {p: v[1] for p, v in files.items()} == {p: v[1] for p, v in good_files.items()}  # the same bytes again
    assert manifest == good_manifest
    assert again.load_crops([entries2[r.path] for r in records]).shape == (6, 3, 16, 16)


def test_sun_statistics_are_refitted_when_the_split_changes(tmp_path, records, monkeypatch) -> None:
    calls = Calls(monkeypatch)
    cache = _cache(tmp_path)
    entries = list(cache.crop_faces(records).values())
    a = cache.fit_or_load_sun(entries[:4], "split-a", "a.json", seed=0)
    assert calls.fits == 1 and a.source == {"split_file": "a.json", "split_sha1": "split-a", "split": "train",
                                            "origin": "real"}
    assert cache.fit_or_load_sun(entries[:4], "split-a", "a.json", seed=0) == a and calls.fits == 1
    b = cache.fit_or_load_sun(entries[2:], "split-b", "b.json", seed=0)
    assert calls.fits == 2 and b.source["split_sha1"] == "split-b" and b.n_images == 4
    assert cache.load_sun() == b  # one file per filter bank: the new split's statistics replace the old ones
    assert cache.descriptor_dir(a) != cache.descriptor_dir(b)  # and their maps go to another folder
    # a sun_params_file is used as it is, whichever split it came from; fitted only when it does not exist
    own = _cache(tmp_path, sun_params_file=tmp_path / "sun.json")
    assert own.sun_params_path == tmp_path / "sun.json"
    c = own.fit_or_load_sun(entries[:4], "split-c", "c.json", seed=0)
    assert calls.fits == 3 and (tmp_path / "sun.json").is_file()
    assert own.fit_or_load_sun(entries[2:], "split-d", "d.json", seed=0) == c and calls.fits == 3
    (tmp_path / "sun.json").write_text("not json")
    with pytest.raises(ValueError, match="sun.json"):  # a file the user named is never overwritten
        own.fit_or_load_sun(entries[:4], "split-c", "c.json", seed=0)


def test_missing_entries_and_maps_are_named(tmp_path, records) -> None:
    cache = _cache(tmp_path, DescriptorSettings(kind="lbp"))
    with pytest.raises(FaceCacheMiss, match=r"6 image\(s\).*not in the cache"):
        cache.entries(records)
    entries = cache.crop_faces(records)
    with pytest.raises(FaceCacheMiss, match="Descriptor map .* missing"):
        cache.load_maps(list(entries.values()))
    with pytest.raises(FileNotFoundError, match="SUN statistics file"):
        _cache(tmp_path).load_sun()
    with pytest.raises(ValueError, match="'sun' descriptor maps need the SUN statistics"):
        _cache(tmp_path).descriptor_dir()
    with pytest.raises(ValueError, match="'none' has no descriptor maps"):
        _cache(tmp_path, DescriptorSettings(kind="none")).descriptor_dir()
    with pytest.raises(ValueError, match="FaceCache: progress"):
        FaceCache(tmp_path, CROP, SUN, progress="bar")
