"""Tests for datamodules/datasets/images.py: scanning, robust loading, splits, batched augmentation."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.datasets.images import (
    FaceTensorDataset,
    class_balanced_weights,
    group_split,
    stratified_split,
    subject_from_name,
)
from features.images import BadImageError, load_image_rgb, scan_class_folders
from tests.fakes_images import make_class_folders, real_root, save_in_mode, synthetic_face, write_bad_files
from tests.helpers.fer import batch_transform


# ------------------------------------------------------------------ scanning
def test_scan_labels_aliases_and_relative_paths(tmp_path: Path) -> None:
    make_class_folders(tmp_path, ["happiness", "sad"], subjects=2, frames=1)
    recs = scan_class_folders(tmp_path, ["sad", "happy"], class_aliases={"happiness": "happy"})
    assert len(recs) == 4
    by_class = Counter((r.class_name, r.label) for r in recs)
    assert by_class == {("happy", 1): 2, ("sad", 0): 2}
    assert all(r.origin == "real" and not Path(r.rel).is_absolute() and r.rel.count("/") == 1 for r in recs)
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in recs)


def test_scan_unknown_folder_is_an_error_naming_it_unless_ignored(tmp_path: Path) -> None:
    make_class_folders(tmp_path, ["happy", "sad", "weird"], subjects=1, frames=1)
    with pytest.raises(ValueError, match="weird"):
        scan_class_folders(tmp_path, ["happy", "sad"])
    recs = scan_class_folders(tmp_path, ["happy", "sad"], unknown_folders="ignore")
    assert {r.class_name for r in recs} == {"happy", "sad"}


def test_scan_empty_class_folder_is_an_error(tmp_path: Path) -> None:
    make_class_folders(tmp_path, ["happy"], subjects=1, frames=1)
    (tmp_path / "sad").mkdir()
    with pytest.raises(ValueError, match=r"Empty class folder .*sad"):
        scan_class_folders(tmp_path, ["happy", "sad"])


def test_scan_missing_class_and_bad_alias(tmp_path: Path) -> None:
    make_class_folders(tmp_path, ["happy"], subjects=1, frames=1)
    with pytest.raises(FileNotFoundError, match="sad"):
        scan_class_folders(tmp_path, ["happy", "sad"])
    assert len(scan_class_folders(tmp_path, ["happy", "sad"], require_all_classes=False)) == 1
    with pytest.raises(ValueError, match="nope"):
        scan_class_folders(tmp_path, ["happy"], class_aliases={"x": "nope"})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_class_folders(tmp_path / "absent", ["happy"])


# ------------------------------------------------------------------ loading
@pytest.mark.parametrize("mode", ["L", "RGB", "P", "RGBA", "LA", "I;16"])
def test_load_every_mode_as_uint8_rgb(tmp_path: Path, mode: str) -> None:
    gray = synthetic_face(32, 1, 0)
    p = save_in_mode(gray, tmp_path / f"x_{mode.replace(';', '')}.png", mode)
    assert Image.open(p).mode == mode
    rgb = load_image_rgb(p)
    assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
    if mode in ("L", "P", "I;16"):
        # grey values survive (palette with 64 colours: small quantisation error; 16-bit scaled exactly)
        tol = 8 if mode == "P" else 0
        assert np.abs(rgb[..., 0].astype(int) - gray).max() <= tol
        assert (rgb[..., 0] == rgb[..., 1]).all()
    if mode in ("RGBA", "LA"):
        assert (rgb[:8] == 0).all()  # transparent band composited on black
        np.testing.assert_array_equal(rgb[8:, :, 0], gray[8:])


def test_rgba_on_white_background(tmp_path: Path) -> None:
    p = save_in_mode(synthetic_face(32, 0, 0), tmp_path / "a.png", "RGBA")
    assert (load_image_rgb(p, background="white")[:8] == 255).all()
    with pytest.raises(ValueError, match="background"):
        load_image_rgb(p, background="green")


def test_16bit_is_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    rgb = load_image_rgb(p)
    np.testing.assert_array_equal(rgb[0, :, 0], [0, 4, 128, 255])  # clipping would give [0, 255, 255, 255]


def test_bad_files_raise_with_reason(tmp_path: Path) -> None:
    bad = write_bad_files(tmp_path)
    for reason, path in bad.items():
        with pytest.raises(BadImageError) as info:
            load_image_rgb(path)
        assert info.value.reason == reason
        assert str(path) in str(info.value)


# ------------------------------------------------------------------ splits
def test_stratified_split_ratios_per_class_and_seeded() -> None:
    labels = [0] * 40 + [1] * 20 + [2] * 7
    a = stratified_split(labels, (0.7, 0.15, 0.15), seed=3)
    assert a == stratified_split(labels, (0.7, 0.15, 0.15), seed=3)
    assert a != stratified_split(labels, (0.7, 0.15, 0.15), seed=4)
    c = Counter(zip(labels, a))
    assert (c[(0, "train")], c[(0, "val")], c[(0, "test")]) == (28, 6, 6)
    assert (c[(1, "train")], c[(1, "val")], c[(1, "test")]) == (14, 3, 3)
    assert sum(c[(2, s)] for s in ("train", "val", "test")) == 7
    with pytest.raises(ValueError, match="ratios"):
        stratified_split(labels, (0.7, -0.1, 0.4), seed=0)


def test_group_split_never_leaks_and_is_roughly_stratified() -> None:
    rng = np.random.default_rng(0)
    groups = [f"S{g:03d}" for g in range(40) for _ in range(6)]
    labels = rng.integers(0, 3, len(groups)).tolist()
    a = group_split(labels, groups, (0.7, 0.15, 0.15), seed=1)
    assert a == group_split(labels, groups, (0.7, 0.15, 0.15), seed=1)
    per_group = {}
    for g, s in zip(groups, a):
        assert per_group.setdefault(g, s) == s  # one split per subject
    sizes = Counter(a)
    assert abs(sizes["train"] / len(a) - 0.7) < 0.08 and sizes["val"] > 0 and sizes["test"] > 0
    for c in range(3):
        n_c = sum(1 for lab in labels if lab == c)
        frac = sum(1 for lab, s in zip(labels, a) if lab == c and s == "train") / n_c
        assert 0.5 < frac < 0.9


def test_group_split_fills_every_split_with_few_groups() -> None:
    groups = [g for g in "ABCDEFGHIJ" for _ in range(20)]  # 10 posers, as JAFFE
    labels = [i % 7 for i in range(len(groups))]
    a = group_split(labels, groups, (0.7, 0.15, 0.15), seed=0)
    assert {s: len({g for g, x in zip(groups, a) if x == s}) for s in ("train", "val", "test")}["val"] >= 1
    assert all(Counter(a)[s] > 0 for s in ("train", "val", "test"))


def test_subject_from_name_patterns() -> None:
    assert subject_from_name("/x/anger/S010_004_00000017.png", r"^(S\d+)_") == "S010"
    assert subject_from_name("KA.AN1.39.tiff", r"^([A-Z]{2})\.") == "KA"
    with pytest.raises(ValueError, match="img_1.png"):
        subject_from_name("a/img_1.png", r"^(S\d+)_")


def test_group_split_on_real_ckplus_names() -> None:
    root = real_root("ckplus48")
    if root is None:
        pytest.skip("CK+48 not found at <repo>/../shared/data/ckplus48")
    recs = scan_class_folders(root, ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"])
    groups = [subject_from_name(r.path, r"^(S\d+)_") for r in recs]
    assert len(set(groups)) == 118
    a = group_split([r.label for r in recs], groups, (0.7, 0.15, 0.15), seed=42)
    subjects = {s: {g for g, x in zip(groups, a) if x == s} for s in ("train", "val", "test")}
    assert not (
        subjects["train"] & subjects["val"]
        or subjects["train"] & subjects["test"]
        or subjects["val"] & subjects["test"]
    )
    assert 0.6 < Counter(a)["train"] / len(a) < 0.8


# ------------------------------------------------------------------ batches
def _samples(n: int = 4, size: int = 16, with_desc: bool = True) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(n):
        grey = torch.randint(0, 256, (1, size, size), dtype=torch.uint8, generator=g)
        item = {
            "image": grey.repeat(3, 1, 1),
            "label": torch.tensor(i % 2),
            "origin": "real",
            "path": f"p{i}",
        }
        if with_desc:
            item["descriptor"] = grey.clone()
        out.append(item)
    return out


def test_batch_transform_eval_normalises_exactly() -> None:
    t = batch_transform(
        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), descriptor_mean=0.5, descriptor_std=0.5
    )
    samples = _samples()
    b = t(samples)
    assert b["image"].shape == (4, 3, 16, 16) and b["image"].dtype == torch.float32
    assert b["descriptor"].shape == (4, 1, 16, 16) and b["label"].dtype == torch.int64
    expected = (samples[1]["image"].float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(b["image"][1], expected)
    assert b["origin"] == ["real"] * 4 and b["path"] == ["p0", "p1", "p2", "p3"]


def test_batch_transform_geometry_identical_on_image_and_descriptor() -> None:
    torch.manual_seed(0)
    t = batch_transform(
        mean=(0, 0, 0),
        std=(1, 1, 1),
        descriptor_mean=0.0,
        descriptor_std=1.0,
        hflip_prob=0.5,
        affine_degrees=20,
        affine_translate=0.1,
        affine_scale=(0.8, 1.2),
        augment="train",
    )
    samples = _samples(8)
    b = t(samples)
    # the image grey channel and the descriptor started equal: after warping they must still be equal
    torch.testing.assert_close(b["image"][:, :1], b["descriptor"])
    # and the warp did something
    assert not torch.allclose(b["descriptor"], torch.stack([s["descriptor"] for s in samples]).float() / 255)


def test_batch_transform_colour_jitter_only_touches_image() -> None:
    torch.manual_seed(0)
    t = batch_transform(
        mean=(0, 0, 0),
        std=(1, 1, 1),
        descriptor_mean=0.0,
        descriptor_std=1.0,
        brightness=0.5,
        contrast=0.5,
        augment="train",
    )
    samples = _samples(8)
    b = t(samples)
    ref = torch.stack([s["descriptor"] for s in samples]).float() / 255
    torch.testing.assert_close(b["descriptor"], ref)
    assert not torch.allclose(b["image"][:, :1], ref)
    with pytest.raises(ValueError, match="FaceBatchTransform"):
        batch_transform(augment="maybe")


def test_tensor_dataset_and_balanced_weights() -> None:
    imgs = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 1, 2])
    ds = FaceTensorDataset(imgs, labels, ["real"] * 5, [f"p{i}" for i in range(5)])
    assert len(ds) == 5 and "descriptor" not in ds[0] and ds[4]["label"] == 2
    w = class_balanced_weights(labels, 3)
    torch.testing.assert_close(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=re.escape("FaceTensorDataset")):
        FaceTensorDataset(imgs.float(), labels, ["real"] * 5, ["p"] * 5)


def test_batch_transform_pure_flip_is_exact_and_identity_is_noop() -> None:
    samples = _samples(3)
    ref = torch.stack([s["image"] for s in samples]).float() / 255
    flip = batch_transform(mean=(0, 0, 0), std=(1, 1, 1), hflip_prob=1.0, augment="train")
    torch.testing.assert_close(flip(samples)["image"], ref.flip(-1), atol=1e-5, rtol=0)
    ident = batch_transform(mean=(0, 0, 0), std=(1, 1, 1), affine_degrees=0.0, augment="train")
    torch.testing.assert_close(ident(samples)["image"], ref)


def test_generated_root_sidecars_are_not_images(tmp_path: Path) -> None:
    """A generated root holds the writer's manifest, summary and before/after chart beside its class folders."""
    root = tmp_path / "augmented"
    (root / "happy").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "happy" / "a.png")
    (root / "manifest.jsonl").write_text("{}\n")
    (root / "manifest_summary.json").write_text("{}")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "class_distribution.png")
    records = scan_class_folders(root, ["happy", "sad"], require_all_classes=False)
    assert [Path(r.path).name for r in records] == ["a.png"]
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "stray.png")
    with pytest.raises(ValueError, match="loose file"):
        scan_class_folders(root, ["happy", "sad"], require_all_classes=False)
