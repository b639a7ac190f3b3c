"""Tests for datamodules/fer.py (FERDataModule) on tiny generated folders, plus real-data runs when present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import SequentialSampler, WeightedRandomSampler

from datamodules.fer import FERDataModule, nest_flat_settings
from features.descriptors import fit_sun_params
from features.faces import HaarFaceDetector
from tests.fakes_images import (
    CK_CLASSES,
    JAFFE_CLASSES,
    REPO,
    make_class_folders,
    real_root,
    tree_fingerprint,
    write_bad_files,
)
from tests.helpers.fer import fer_datamodule

CLASSES = ["happy", "sad", "neutral"]


def _dm(tmp_path: Path, root: Path | None = None, **kwargs) -> FERDataModule:
    if root is None:
        root = tmp_path / "data"
        if not root.exists():
            make_class_folders(root, CLASSES, subjects=4, frames=2, size=24)
    defaults = {
        "class_names": CLASSES,
        "image_size": 16,
        "face_detection": "none",
        "descriptor": "energy",
        "batch_size": 4,
        "cache_dir": str(tmp_path / "cache"),
        "progress": "none",
        "sun_sigmas": (1.0, 2.0),
    }
    defaults.update(kwargs)
    return FERDataModule(str(root), **nest_flat_settings(defaults))


def _ready(dm: FERDataModule, stage: str | None = None) -> FERDataModule:
    dm.prepare_data()
    dm.setup(stage)
    return dm


@pytest.mark.parametrize("descriptor", ["sun", "spectral_residual", "lbp", "energy", "none"])
def test_batch_keys_shapes_dtypes(tmp_path: Path, descriptor: str) -> None:
    dm = _ready(_dm(tmp_path, descriptor=descriptor, descriptor_mean=0.0, descriptor_std=1.0))
    assert dm.class_names == CLASSES and dm.num_classes == 3
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        b = next(iter(loader))
        n = b["label"].shape[0]
        assert b["image"].shape == (n, 3, 16, 16) and b["image"].dtype == torch.float32
        assert b["label"].dtype == torch.int64 and b["label"].max() < 3
        assert (
            b["origin"] == ["real"] * n and len(b["path"]) == n and all(Path(p).is_file() for p in b["path"])
        )
        if descriptor == "none":
            assert "descriptor" not in b
        else:
            d = b["descriptor"]
            assert d.shape == (n, 1, 16, 16) and d.dtype == torch.float32
            assert d.min() >= 0.0 and d.max() <= 1.0  # mean 0 / std 1: the raw [0, 1] map
    # eval maps are exactly the cached [0, 1] maps (no augmentation)
    if descriptor != "none":
        assert dm.datasets["val"].descriptors.dtype == torch.uint8


def test_prepare_data_sets_no_state_and_setup_needs_it(tmp_path: Path) -> None:
    dm = _dm(tmp_path)
    with pytest.raises(RuntimeError, match="prepare_data"):
        dm.setup("fit")
    dm.prepare_data()
    assert dm.datasets == {}
    with pytest.raises(RuntimeError, match="setup"):
        dm.train_dataloader()
    dm.setup("fit")
    assert sum(len(d) for d in dm.datasets.values()) == 24
    assert dm.hparams.crop["image_size"] == 16 and dm.hparams.class_names == CLASSES


def test_extra_roots_join_train_only_with_origin(tmp_path: Path) -> None:
    gen = tmp_path / "ldm_gen"
    make_class_folders(gen, ["sad"], subjects=3, frames=1, size=24, seed=7)
    (gen / "manifest.jsonl").write_text(json.dumps({"file": "sad/x.png"}) + "\n")
    dm = _ready(_dm(tmp_path, extra_roots=[str(gen)]))
    counts = dm.class_counts()
    assert counts["train"]["sad"] == {"real": 6, "ldm_gen": 3}
    assert counts["train"]["happy"] == {"real": 6}
    for s in ("val", "test"):
        assert all(set(v) == {"real"} for v in counts[s].values())
        assert all(not p.startswith(str(gen)) for p in dm.datasets[s].paths)
    gen_paths = [
        p for p, o in zip(dm.datasets["train"].paths, dm.datasets["train"].origins) if o == "ldm_gen"
    ]
    assert len(gen_paths) == 3 and all(p.startswith(str(gen.resolve())) for p in gen_paths)
    # the split file only lists real images
    split = json.loads(dm.split_path.read_text())
    assert sum(len(v) for v in split.values()) == 24


def test_split_file_written_reused_and_checked(tmp_path: Path) -> None:
    dm = _ready(_dm(tmp_path))
    split = json.loads(dm.split_path.read_text())
    assert set(split) == {"train", "val", "test"}
    assert sorted(len(v) for v in split.values()) == [3, 3, 18]  # 8 per class -> 6/1/1
    # same settings -> same file, same datasets
    dm2 = _ready(_dm(tmp_path))
    assert dm2.datasets["val"].paths == dm.datasets["val"].paths
    # another seed -> another split file
    dm3 = _ready(_dm(tmp_path, seed=7))
    assert dm3.split_path != dm.split_path
    # a new file on disk no longer matches the split
    make_class_folders(tmp_path / "more", ["happy"], subjects=1, frames=1, size=24, seed=9)
    new = tmp_path / "data" / "happy" / "S099_001_00000001.png"
    (tmp_path / "more" / "happy" / "S001_001_00000001.png").rename(new)
    with pytest.raises(ValueError, match="does not match.*resplit"):
        _dm(tmp_path).prepare_data()
    dm4 = _ready(_dm(tmp_path, resplit="always"))
    assert sum(len(d) for d in dm4.datasets.values()) == 25


def test_explicit_split_file_and_group_split(tmp_path: Path) -> None:
    split_file = tmp_path / "my_split.json"
    dm = _ready(_dm(tmp_path, split="group", subject_pattern=r"^(S\d+)_", split_file=str(split_file)))
    split = json.loads(split_file.read_text())
    subj = {s: {Path(p).name[:4] for p in v} for s, v in split.items()}
    assert (
        not (subj["train"] & subj["val"])
        and not (subj["train"] & subj["test"])
        and not (subj["val"] & subj["test"])
    )
    assert all(len(v) > 0 for v in split.values())
    assert dm.split_path == split_file
    with pytest.raises(ValueError, match="subject_pattern"):
        _dm(tmp_path, split="group")


def test_sun_statistics_fitted_on_train_only(tmp_path: Path) -> None:
    dm = _ready(_dm(tmp_path, descriptor="sun"))
    params = dm.load_sun_params()
    assert params.source["split_sha1"] and params.source["split"] == "train"
    train_crops = [np.load(f) for f in _crop_files(dm, dm.datasets["train"].paths)]
    all_crops = train_crops + [
        np.load(f) for s in ("val", "test") for f in _crop_files(dm, dm.datasets[s].paths)
    ]
    ref = fit_sun_params(train_crops, (1.0, 2.0), seed=dm.hparams.seed)
    other = fit_sun_params(all_crops, (1.0, 2.0), seed=dm.hparams.seed)
    assert params.n_images == len(train_crops) == 18
    np.testing.assert_allclose(params.theta, ref.theta)
    np.testing.assert_allclose(params.scale, ref.scale)
    assert not np.allclose(params.scale, other.scale, rtol=1e-6, atol=0)


def _crop_files(dm: FERDataModule, paths: list[str]) -> list[Path]:
    manifest = {
        json.loads(line)["path"]: json.loads(line) for line in (dm.cache_root / "manifest.jsonl").open()
    }
    return [dm.cache_root / manifest[p]["cache_file"] for p in paths]


def test_second_run_reuses_cache(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=4, frames=2, size=64)
    calls = {"n": 0}
    orig = HaarFaceDetector.detect

    def counting(self, rgb):
        calls["n"] += 1
        return orig(self, rgb)

    monkeypatch.setattr(HaarFaceDetector, "detect", counting)
    _ready(_dm(tmp_path, root=root, face_detection="haar", descriptor="lbp"))
    assert calls["n"] == 24
    desc_dir = next((tmp_path / "cache" / "descriptors").glob("lbp-*"))
    mtimes = {p: p.stat().st_mtime_ns for p in desc_dir.iterdir()}
    dm = _ready(_dm(tmp_path, root=root, face_detection="haar", descriptor="lbp"))
    assert calls["n"] == 24  # no detection on the second run
    assert {p: p.stat().st_mtime_ns for p in desc_dir.iterdir()} == mtimes  # maps not recomputed
    assert sum(len(d) for d in dm.datasets.values()) == 24


def test_bad_images_skipped_and_originals_untouched(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(
        root, CLASSES, subjects=4, frames=2, size=24, modes=("L", "RGB", "P", "RGBA", "LA", "I;16")
    )
    write_bad_files(root / "sad")
    before = tree_fingerprint(root)
    dm = _ready(_dm(tmp_path, root=root))
    assert tree_fingerprint(root) == before
    assert sum(len(d) for d in dm.datasets.values()) == 24
    manifest = [json.loads(line) for line in (dm.cache_root / "manifest.jsonl").open()]
    assert sorted(e["reason"] for e in manifest if e["status"] == "skipped") == [
        "corrupt",
        "empty_file",
        "not_an_image",
        "truncated",
    ]
    with pytest.raises(ValueError):
        _dm(tmp_path, root=root, on_bad_image="error", cache_dir=str(tmp_path / "c2")).prepare_data()


def test_unknown_and_empty_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES + ["contempt"], subjects=4, frames=2, size=24)
    with pytest.raises(ValueError, match="contempt"):
        _dm(tmp_path, root=root).prepare_data()
    dm = _ready(_dm(tmp_path, root=root, unknown_folders="ignore"))
    assert sum(len(d) for d in dm.datasets.values()) == 24
    with pytest.raises(ValueError, match="Empty class folder"):
        (root / "angry").mkdir()
        _dm(tmp_path, root=root, class_names=CLASSES + ["angry"], unknown_folders="ignore").prepare_data()


def test_sampler_and_only_train_shuffles(tmp_path: Path) -> None:
    dm = _ready(_dm(tmp_path, train_sampler="class_balanced"))
    assert isinstance(dm.train_dataloader().sampler, WeightedRandomSampler)
    assert isinstance(dm.val_dataloader().sampler, SequentialSampler)
    assert isinstance(dm.test_dataloader().sampler, SequentialSampler)
    dm2 = _ready(_dm(tmp_path))
    assert not isinstance(dm2.train_dataloader().sampler, SequentialSampler)
    a = [b["path"] for b in dm2.val_dataloader()]
    assert a == [b["path"] for b in dm2.val_dataloader()]


def test_invalid_arguments_name_the_class(tmp_path: Path) -> None:
    for kwargs in (
        {"split": "random"},
        {"train_sampler": "oversample"},
        {"resplit": "yes"},
        {"unknown_folders": "warn"},
        {"extra_roots": ["/a/real"]},
    ):
        with pytest.raises(ValueError, match="FERDataModule"):
            _dm(tmp_path, **kwargs)
    with pytest.raises(ValueError, match="descriptor"):
        _dm(tmp_path, descriptor="hog")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        _dm(tmp_path, root=tmp_path / "absent").prepare_data()


# ------------------------------------------------------------------ configs
@pytest.mark.parametrize("name,n_classes", [("learning_emotions", 6), ("ckplus48", 7), ("jaffe", 7), ("fer2013", 7)])
def test_data_configs_instantiate(name: str, n_classes: int) -> None:
    cfg = yaml.safe_load((REPO / "configs" / "data" / f"{name}.yaml").read_text())
    assert cfg["data"]["class_path"] == "datamodules.fer.FERDataModule"
    args = cfg["data"]["init_args"]
    assert not Path(args["root"]).is_absolute()
    dm = FERDataModule(**args)
    assert dm.num_classes == n_classes
    if name == "learning_emotions":
        assert dm.class_names == ["joy", "focus", "thinking", "boredom", "confusion", "drowsiness"]
    if name == "jaffe":
        assert args["crop"]["face_detection"] == "haar" and args["split"] == "group"
    if name == "fer2013":  # validation carved from train/, val/ (PublicTest) reported as the test split
        assert args["split"] == "folders" and args["val_from"] == "train" and args["crop"]["image_size"] == 48


# ------------------------------------------------------------------ real data (slow)
@pytest.mark.slow
def test_ckplus48_full_group_split(tmp_path: Path) -> None:
    root = real_root("ckplus48")
    if root is None:
        pytest.skip("CK+48 not found at <repo>/../shared/data/ckplus48")
    dm = _ready(
        fer_datamodule(
            str(root),
            CK_CLASSES,
            face_detection="none",
            image_size=48,
            split="group",
            subject_pattern=r"^(S\d+)_",
            cache_dir=str(tmp_path / "c"),
            progress="none",
        )
    )
    subjects = {s: {Path(p).name.split("_")[0] for p in d.paths} for s, d in dm.datasets.items()}
    assert not (
        subjects["train"] & subjects["val"]
        or subjects["train"] & subjects["test"]
        or subjects["val"] & subjects["test"]
    )
    assert sum(len(d) for d in dm.datasets.values()) == 981
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (32, 3, 48, 48) and b["descriptor"].shape == (32, 1, 48, 48)


@pytest.mark.slow
def test_jaffe_full_with_haar(tmp_path: Path) -> None:
    root = real_root("jaffe")
    if root is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    dm = _ready(
        fer_datamodule(
            str(root),
            JAFFE_CLASSES,
            face_detection="haar",
            image_size=64,
            split="group",
            subject_pattern=r"^([A-Z]{2})\.",
            cache_dir=str(tmp_path / "c"),
            progress="none",
        )
    )
    manifest = [json.loads(line) for line in (dm.cache_root / "manifest.jsonl").open()]
    assert len(manifest) == 213 and sum(e["face"] == "detected" for e in manifest) >= 200
    assert sum(len(d) for d in dm.datasets.values()) == 213


@pytest.mark.parametrize("name", ["learning_emotions", "ckplus48", "jaffe", "fer2013"])
def test_data_configs_parse_with_lightning_cli(tmp_path: Path, name: str, monkeypatch) -> None:
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr("sys.argv", ["cli.py"])
    cli = LightningCLI(
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        args=[
            "--config",
            str(REPO / "configs" / "data" / f"{name}.yaml"),
            "--model",
            "lightning.pytorch.demos.boring_classes.BoringModel",
            "--data.init_args.cache_dir",
            str(tmp_path / "c"),
            "--trainer.logger",
            "false",
        ],
    )
    assert isinstance(cli.datamodule, FERDataModule)
    assert cli.datamodule.hparams.cache_dir == str(tmp_path / "c")
