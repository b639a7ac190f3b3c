import errno
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from PIL import Image

from callbacks.augmented_writer import AugmentedImageWriter, summarize_augmentation_manifest
from datamodules.generation import GenerationDataModule
from metrics.generation import QualityFilter
from models.frozen_classifier import FrozenImageEncoder
from tests.helpers.generation import CLASSES, COUNTS, FakeGenerator, MeanQuality, SeededGenerator


def fingerprint(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for c, n in COUNTS.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(root / c / f"S{i:03d}.png")
    return root


def run(module, out, data_root, **writer_kw):
    dm = GenerationDataModule(class_counts=COUNTS, output_root=str(out), total_multiplier=2.0, scarce_multiplier=4.0,
                              scarce_classes=["contempt"], batch_size=3)
    writer = AugmentedImageWriter(str(out), data_root=str(data_root), progress="none", **writer_kw)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
    trainer.predict(module, datamodule=dm, return_predictions=False)
    return dm


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_writes_pngs_manifest_and_never_touches_source(tmp_path, data_root):
    before = fingerprint(data_root)
    out = tmp_path / "augmented"
    dm = run(FakeGenerator(), out, data_root)
    assert fingerprint(data_root) == before
    recs = manifest(out)
    assert len(recs) == sum(dm.plan.values()) == 14  # 2 x 7 train images
    assert dm.plan["contempt"] == 3  # scarce: 4x in total
    for r in recs:
        assert (out / r["file"]).is_file() and r["file"].startswith(r["class"] + "/")
        assert {"seed", "steps", "guidance", "checkpoint"} <= set(r)
        with Image.open(out / r["file"]) as im:
            assert im.mode == "L" and im.size == (8, 8)
    assert not list(out.rglob("*.tmp"))
    summary = json.loads((out / "manifest_summary.json").read_text())
    assert summary["total"]["accepted"] == 14
    # the before/after class distribution (paper Fig. 9) is drawn next to the manifest
    with Image.open(out / "class_distribution.png") as im:
        assert im.size[0] > 100 and im.size[1] > 100
    assert not list(out.glob(".class_distribution*"))
    # and a sample grid: one row per class (labelled left of it), 8 columns of 8x8 images shown at 96 px
    with Image.open(out / "samples_grid.png") as im:
        assert im.height == 3 * 96 and im.width > 8 * 96


def test_refuses_output_inside_data_root(data_root):
    with pytest.raises(ValueError, match="inside the original dataset folder"):
        AugmentedImageWriter(str(data_root / "generated"), data_root=str(data_root))
    with pytest.raises(ValueError, match="inside the original dataset folder"):
        AugmentedImageWriter(str(data_root), data_root=str(data_root))


def test_resume_after_interruption_without_duplicates(tmp_path, data_root):
    out = tmp_path / "augmented"
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(FakeGenerator(fail_at_batch=2), out, data_root)
    first = manifest(out)
    assert len(first) == 6  # two batches of 3 finished
    # a crash in the middle of a manifest line must not break the resume
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"job_index": 7, "cla')
    dm = run(FakeGenerator(), out, data_root)
    assert dm.skipped == 6
    recs = [r for r in (json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.endswith("}"))]
    jobs = [r["job_index"] for r in recs]
    assert sorted(jobs) == list(range(14))  # every job exactly once
    assert len(list(out.glob("*/*.png"))) == 14  # generated images live in class folders


def test_unwritable_output_folder_clear_error_nothing_written(tmp_path, data_root):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    with pytest.raises(RuntimeError, match="not writable"):
        run(FakeGenerator(), blocker / "augmented", data_root)
    assert blocker.read_text().startswith("a file")


def test_disk_full_mid_batch_leaves_no_partial_file(tmp_path, data_root, monkeypatch):
    out = tmp_path / "augmented"
    calls = {"n": 0}
    real_save = Image.Image.save

    def full_disk_save(self, fp, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            real_save(self, fp, *a, **k)  # a partial temp file exists when the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(Image.Image, "save", full_disk_save)
    with pytest.raises(RuntimeError, match="disk full"):
        run(FakeGenerator(), out, data_root)
    assert not list(out.rglob("*.tmp"))
    recs = manifest(out)
    assert len(recs) == 4
    assert sorted(str(p.relative_to(out)) for p in out.glob("*/*.png")) == sorted(r["file"] for r in recs)


def test_quality_filter_rejections_are_counted(tmp_path, data_root):
    torch.manual_seed(0)
    clf = FrozenImageEncoder("resnet10t", num_classes=3)
    # min_confidence 1.0 rejects everything; cosine threshold -1 would flag everything as memorised
    quality = QualityFilter(clf, min_confidence=0.99, duplicate_metric="cosine", duplicate_threshold=2.0,
                            reference_root=str(data_root), class_names=CLASSES)
    out = tmp_path / "augmented"
    run(FakeGenerator(), out, data_root, quality=quality)
    recs = manifest(out)
    assert len(recs) == 14
    assert all(r["status"] == "rejected" and r["reason"] == "low_confidence" for r in recs)
    assert not list(out.glob("*/*.png"))
    summary = summarize_augmentation_manifest(out)
    assert summary["total"]["rejected_low_confidence"] == 14
    quality_dup = QualityFilter(clf, min_confidence=0.0, duplicate_metric="mse", duplicate_threshold=1.0,
                                reference_root=str(data_root), class_names=CLASSES)
    res = quality_dup(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    assert res["reason"] == ["memorised", "memorised"]


# ---------------------------------------------------------------- one output_root; quality top-up (issue 14 §6)
def _predict(module, dm, writer):
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer]).predict(
        module, datamodule=dm, return_predictions=False)


def _dm(out, **kw):
    return GenerationDataModule(class_counts=COUNTS, output_root=str(out), total_multiplier=2.0,
                                scarce_multiplier=4.0, scarce_classes=["contempt"], batch_size=3, **kw)


def test_writer_takes_output_root_from_the_datamodule_and_a_rerun_adds_nothing(tmp_path, data_root):
    out = tmp_path / "augmented"
    _predict(FakeGenerator(), _dm(out), AugmentedImageWriter(data_root=str(data_root), progress="none"))
    first = manifest(out)
    assert len(first) == 14 and len({r["job_index"] for r in first}) == 14
    dm = _dm(out)
    _predict(FakeGenerator(), dm, AugmentedImageWriter(data_root=str(data_root), progress="none"))
    assert dm.skipped == 14 and manifest(out) == first  # nothing regenerated, nothing listed twice


def test_writer_and_datamodule_with_two_output_roots_is_an_error(tmp_path, data_root):
    out, other = tmp_path / "augmented", tmp_path / "elsewhere"
    writer = AugmentedImageWriter(str(other), data_root=str(data_root), progress="none")
    with pytest.raises(ValueError, match=r"elsewhere differs from the datamodule's output_root .*augmented"):
        _predict(FakeGenerator(), _dm(out), writer)
    assert not (other / "manifest.jsonl").exists() and not (out / "manifest.jsonl").exists()


def test_rejected_jobs_are_topped_up_with_new_seeds(tmp_path, data_root):
    out = tmp_path / "augmented"
    dm = _dm(out)
    _predict(SeededGenerator(), dm, AugmentedImageWriter(data_root=str(data_root), progress="none",
                                                         quality=MeanQuality(), max_retries=12))
    recs = manifest(out)
    accepted = [r for r in recs if r["status"] == "accepted"]
    assert len(accepted) == sum(dm.plan.values()) == 14  # the plan is met
    assert any(r["attempt"] > 0 for r in accepted)  # ... thanks to top-ups
    assert len({r["seed"] for r in recs}) == len(recs)  # every attempt used a new seed
    planned = {dm.hparams.base_seed + k for k in range(14)}
    assert all(r["seed"] not in planned for r in recs if r["attempt"] > 0)
    summary = json.loads((out / "manifest_summary.json").read_text())
    assert summary["shortfall"] == {}


def test_shortfall_is_reported_when_the_retry_limit_is_reached(tmp_path, data_root, caplog):
    out = tmp_path / "augmented"
    writer = AugmentedImageWriter(data_root=str(data_root), progress="none", quality=MeanQuality(0.9),
                                  max_retries=1)
    dm = _dm(out)
    with caplog.at_level("WARNING"):
        _predict(SeededGenerator(), dm, writer)
    recs = manifest(out)
    assert len(recs) == 28 and {r["attempt"] for r in recs} == {0, 1}
    assert all(r["final"] for r in recs if r["attempt"] == 1)
    summary = json.loads((out / "manifest_summary.json").read_text())
    assert summary["shortfall"] == dm.plan and summary["max_retries"] == 1  # nothing passes mean > 0.9
    assert any("short of the plan" in r.getMessage() for r in caplog.records)
    # a rerun does not retry the jobs that reached the limit
    dm = _dm(out)
    dm.setup("predict")
    assert dm.jobs == []


def test_writer_refuses_class_orders_that_differ_naming_each(tmp_path: Path) -> None:
    """A label is an index: a model, datamodule, writer or quality filter with another class order would file
    images under the wrong class (issue 20)."""
    data_root, out = tmp_path / "data", tmp_path / "aug"
    data_root.mkdir()
    other = list(reversed(CLASSES))
    with pytest.raises(ValueError, match=rf"class orders differ.*FakeGenerator\) = {re.escape(str(other))}.*"
                                         rf"GenerationDataModule\) = {re.escape(str(CLASSES))}"):
        _predict(FakeGenerator(class_names=other), _dm(out), AugmentedImageWriter(progress="none"))
    with pytest.raises(ValueError, match=rf"writer's class_names = {re.escape(str(other))}"):
        _predict(FakeGenerator(), _dm(out), AugmentedImageWriter(class_names=other, progress="none"))
    quality = MeanQuality()
    quality.class_names = other
    with pytest.raises(ValueError, match=rf"quality filter's class_names = {re.escape(str(other))}"):
        _predict(FakeGenerator(), _dm(out), AugmentedImageWriter(quality=quality, progress="none"))
    assert not list(out.rglob("*.png"))
    _predict(FakeGenerator(), _dm(out), AugmentedImageWriter(class_names=list(CLASSES), progress="none"))
    assert {p.parent.name for p in out.glob("*/*.png")} <= set(CLASSES) and list(out.glob("*/*.png"))


def test_checkpoint_hash_reads_urls_through_fsspec(tmp_path: Path) -> None:
    """A checkpoint given as a URL (``load_checkpoint`` reads any fsspec URL) is hashed from the bytes the URL
    serves, not opened as a local file."""
    from callbacks.augmented_writer import file_sha256, is_url

    f = tmp_path / "m.ckpt"
    f.write_bytes(b"weights" * 1000)
    want = hashlib.sha256(f.read_bytes()).hexdigest()
    assert file_sha256(f, n_hex=64) == want
    assert file_sha256(f"file://{f}", n_hex=64) == want
    import fsspec

    with fsspec.open("memory://ckpts/m.ckpt", "wb") as g:
        g.write(f.read_bytes())
    assert is_url("memory://ckpts/m.ckpt") and not is_url(f)
    assert file_sha256("memory://ckpts/m.ckpt", n_hex=64) == want
    with pytest.raises(FileNotFoundError):
        file_sha256("memory://ckpts/missing.ckpt")
