"""FERDataModule(split="folders"): per-split class folders (FER2013 / RAF-DB / AffectNet layout), issue #22 §1."""

from __future__ import annotations

import json
import shutil
import warnings
from collections import Counter
from pathlib import Path

import pytest

from common.splits import SplitContentWarning
from datamodules.fer import FERDataModule, nest_flat_settings
from features.images import scan_split_folders
from tests.fakes_images import make_class_folders, real_root

CLASSES = ["happy", "sad", "neutral"]
FER2013_CLASSES = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _split_root(tmp_path: Path, splits: dict[str, int], name: str = "data") -> Path:
    """``<root>/<split>/<class>/`` with ``subjects`` x 2 images per class; every split draws different faces."""
    root = tmp_path / name
    for k, (split, subjects) in enumerate(splits.items()):
        make_class_folders(root / split, CLASSES, subjects=subjects, frames=2, size=20, seed=10 + k)
    return root


def _dm(tmp_path: Path, root: Path, **kwargs) -> FERDataModule:
    args = {"class_names": CLASSES, "split": "folders", "image_size": 16, "face_detection": "none",
            "descriptor": "energy", "batch_size": 4, "cache_dir": str(tmp_path / "cache"), "progress": "none"}
    args.update(kwargs)
    return FERDataModule(str(root), **nest_flat_settings(args))


def _ready(dm: FERDataModule) -> FERDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _folders(dm: FERDataModule) -> dict[str, Counter]:
    root = Path(dm.hparams.root).resolve()
    return {s: Counter(Path(p).relative_to(root).parts[0] for p in d.paths) for s, d in dm.datasets.items()}


def test_train_val_layout_validation_carved_from_train_and_val_folder_is_the_test(tmp_path: Path) -> None:
    """FER2013 as shipped: train/ + val/ (= PublicTest). Selection never sees val/: it is the test split."""
    root = _split_root(tmp_path, {"train": 5, "val": 2})  # 10 and 4 images per class
    dm = _ready(_dm(tmp_path, root, val_fraction=0.2))
    assert _folders(dm) == {"train": {"train": 24}, "val": {"train": 6}, "test": {"val": 12}}
    val_labels = Counter(dm.datasets["val"].labels.tolist())
    assert val_labels == {0: 2, 1: 2, 2: 2}  # stratified: 20 % of every class
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["descriptor"].shape == (4, 1, 16, 16)
    # seeded and written: a second datamodule reads the same split file; another seed carves another one
    split = json.loads(dm.split_path.read_text())
    again = _ready(_dm(tmp_path, root, val_fraction=0.2))
    assert again.split_path == dm.split_path and sorted(again.datasets["val"].paths) == sorted(dm.datasets["val"].paths)
    other = _dm(tmp_path, root, val_fraction=0.2, seed=7)
    other.prepare_data()
    assert other.split_path != dm.split_path and json.loads(other.split_path.read_text())["val"] != split["val"]
    assert all(p.startswith("train/") for p in split["train"] + split["val"])
    assert all(p.startswith("val/") for p in split["test"])


def test_train_val_test_layout_reads_each_folder(tmp_path: Path) -> None:
    root = _split_root(tmp_path, {"train": 3, "val": 1, "test": 2})
    dm = _ready(_dm(tmp_path, root))  # auto -> val_from="folder" when val/ and test/ both exist
    assert _folders(dm) == {"train": {"train": 18}, "val": {"val": 6}, "test": {"test": 12}}
    with pytest.raises(ValueError, match="val/ folder would go unused"):
        _dm(tmp_path, root, val_from="train").prepare_data()


def test_train_test_layout_carves_validation(tmp_path: Path) -> None:
    """RAF-DB style (train/ + test/): validation from train/, test from test/."""
    root = _split_root(tmp_path, {"train": 5, "test": 1})
    dm = _ready(_dm(tmp_path, root))
    assert _folders(dm) == {"train": {"train": 27}, "val": {"train": 3}, "test": {"test": 6}}
    with pytest.raises(FileNotFoundError, match="val_from='folder' needs the folder .*val"):
        _dm(tmp_path, root, val_from="folder").prepare_data()


def test_val_from_folder_without_test_selects_on_val_and_warns_empty_test(tmp_path: Path) -> None:
    root = _split_root(tmp_path, {"train": 2, "val": 1})
    dm = _dm(tmp_path, root, val_from="folder")
    dm.prepare_data()
    with pytest.warns(SplitContentWarning, match="test split is empty"):
        dm.setup("fit")
    assert _folders(dm) == {"train": {"train": 12}, "val": {"val": 6}, "test": Counter()}


def test_bad_layouts_are_errors_naming_the_folder(tmp_path: Path) -> None:
    root = _split_root(tmp_path, {"train": 2, "val": 1})
    shutil.rmtree(root / "val" / "sad")
    with pytest.raises(FileNotFoundError, match=r"val.*has no folder for classes \['sad'\]"):
        _dm(tmp_path, root).prepare_data()
    shutil.rmtree(root / "val")
    (root / "val").mkdir()
    with pytest.raises(ValueError, match=r"Split folder .*val' is empty"):
        _dm(tmp_path, root).prepare_data()
    shutil.rmtree(root / "val")
    with pytest.raises(FileNotFoundError, match="neither val/ nor test/"):
        _dm(tmp_path, root).prepare_data()
    (root / "valid").mkdir()
    with pytest.raises(ValueError, match=r"folders \['valid'\] besides the split folders"):
        scan_split_folders(root, CLASSES)
    no_train = _split_root(tmp_path, {"val": 1}, name="no_train")
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        _dm(tmp_path, no_train).prepare_data()


def test_per_split_root_read_as_class_folders_points_to_split_folders(tmp_path: Path) -> None:
    root = _split_root(tmp_path, {"train": 1, "val": 1})
    with pytest.raises(ValueError, match="use split='folders'"):
        _dm(tmp_path, root, split="stratified").prepare_data()


def test_same_image_in_two_splits_is_a_warning_listing_the_files_or_an_error(tmp_path: Path) -> None:
    root = _split_root(tmp_path, {"train": 2, "val": 1})
    src = min((root / "train" / "happy").iterdir())
    dup = root / "val" / "happy" / "copy_of_train.png"
    shutil.copyfile(src, dup)
    with pytest.warns(SplitContentWarning, match="1 image") as rec:
        _dm(tmp_path, root).prepare_data()
    msg = str(rec[0].message)
    assert str(src.resolve()) in msg and str(dup.resolve()) in msg and "'test+train': 1" in msg
    with pytest.raises(ValueError, match="same content in two splits"):
        _dm(tmp_path, root, on_split_duplicate="error").prepare_data()


def test_no_warning_without_duplicates(tmp_path: Path) -> None:
    root = _split_root(tmp_path, {"train": 2, "val": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitContentWarning)
        _dm(tmp_path, root).prepare_data()


def test_stale_split_file_moving_a_test_image_into_train_is_refused(tmp_path: Path) -> None:
    root = _split_root(tmp_path, {"train": 2, "val": 1})
    dm = _dm(tmp_path, root)
    dm.prepare_data()
    split = json.loads(dm.split_path.read_text())
    split["train"].append(split["test"].pop())
    dm.split_path.write_text(json.dumps(split))
    with pytest.raises(ValueError, match="a split their folder does not feed"):
        _dm(tmp_path, root).setup("fit")


def test_cache_and_split_file_key_on_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    root = _split_root(tmp_path, {"train": 1, "val": 1, "test": 1})
    folders = _dm(tmp_path, root, cache_dir=None)
    assert folders.cache_root != _dm(tmp_path, root, cache_dir=None, split="stratified").cache_root
    three = folders.split_path
    assert three != _dm(tmp_path, root / "x", cache_dir=None).split_path
    shutil.rmtree(root / "test")  # auto now carves validation from train/: another split file
    assert _dm(tmp_path, root, cache_dir=None).split_path not in (three, folders.cache_root / "splits")
    assert _dm(tmp_path, root, cache_dir=None, val_fraction=0.2).split_path != folders.split_path


def test_invalid_val_fraction_names_the_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FERDataModule: val_fraction"):
        _dm(tmp_path, tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="FERDataModule"):
        _dm(tmp_path, tmp_path, val_from="valid")


def test_real_fer2013_scan_and_split_sizes(tmp_path: Path) -> None:
    """Scanning and split sizes only (no preprocessing): 28,709 train + 3,589 PublicTest images."""
    root = real_root("fer2013")
    if root is None:
        pytest.skip("FER2013 not found at <repo>/../shared/data/fer2013")
    parts = scan_split_folders(root, FER2013_CLASSES)
    assert {s: len(r) for s, r in parts.items()} == {"train": 28709, "val": 3589}
    assert Counter(r.class_name for r in parts["val"])["disgust"] == 56
    dm = FERDataModule(str(root), FER2013_CLASSES, split="folders", crop={"face_detection": "none", "image_size": 48},
                       cache_dir=str(tmp_path / "c"), progress="none")
    real, _ = dm._scan()
    split = dm._compute_split(real)
    sizes = {s: len(v) for s, v in split.items()}
    assert sizes["test"] == 3589 and sizes["train"] + sizes["val"] == 28709
    assert abs(sizes["val"] - 2871) <= 7  # 10 % per class, largest remainder
