import json

import pytest
import torch

from datamodules.generation import GenerationDataModule, format_plan, plan_generation, train_real_counts

CK_TRAIN = {"anger": 95, "contempt": 38, "disgust": 124, "fear": 52, "happy": 145, "sadness": 59, "surprise": 174}


def test_plan_paper_default_scarce_raised_and_total_about_twice():
    plan = plan_generation(CK_TRAIN, total_multiplier=2.0, scarce_multiplier=4.0, scarce_classes=["contempt", "fear"])
    n = sum(CK_TRAIN.values())
    assert sum(plan.values()) == round(2.0 * n)
    assert plan["contempt"] == 3 * 38 and plan["fear"] == 3 * 52  # final size 4x
    # the others share the rest in proportion to their size
    assert plan["surprise"] > plan["happy"] > plan["anger"]
    assert all(v >= 0 for v in plan.values())
    text = format_plan(CK_TRAIN, plan)
    assert "contempt" in text and "4.00" in text


def test_plan_automatic_scarcity_and_overrides():
    plan = plan_generation({"a": 100, "b": 10, "c": 90}, total_multiplier=1.0, scarce_multiplier=5.0,
                           scarce_threshold=0.5)
    assert plan["b"] == 40  # 10 < 0.5 * median(90)
    assert sum(plan.values()) == 200
    plan = plan_generation({"a": 100, "b": 10}, per_class={"a": 0})
    assert plan["a"] == 0


def test_plan_unknown_class_names_rejected():
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['contemt'\]"):
        plan_generation(CK_TRAIN, scarce_classes=["contemt"])
    with pytest.raises(ValueError, match="unknown class"):
        GenerationDataModule(class_counts=CK_TRAIN, classes=["joy"])


def test_jobs_are_deterministic_and_resumable(tmp_path):
    counts = {"a": 3, "b": 1}
    dm = GenerationDataModule(class_counts=counts, output_root=str(tmp_path / "out"), total_multiplier=1.0,
                              scarce_classes=["b"], scarce_multiplier=3.0, base_seed=100, batch_size=2)
    dm.setup("predict")
    assert dm.plan == {"a": 2, "b": 2}
    batches = list(dm.predict_dataloader())
    jobs = torch.cat([b["job_index"] for b in batches]).tolist()
    seeds = torch.cat([b["seed"] for b in batches]).tolist()
    labels = torch.cat([b["label"] for b in batches]).tolist()
    assert jobs == [0, 1, 2, 3] and seeds == [100, 101, 102, 103] and labels == [0, 0, 1, 1]
    # job 0 finished (file present), job 2 rejected, job 1 recorded but its file is gone -> rerun
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x0.png").write_bytes(b"png")
    lines = [{"job_index": 0, "status": "accepted", "file": "a/x0.png", "class": "a"},
             {"job_index": 2, "status": "rejected", "class": "b"},
             {"job_index": 1, "status": "accepted", "file": "a/x1.png", "class": "a"}]
    (out / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"job_ind')
    dm.setup("predict")
    assert dm.skipped == 2
    assert [j[2] for j in dm.jobs] == [1, 3]


class FakeSource:
    class_names = ("a", "b")

    def __init__(self):
        self.hparams = {"root": "/data/x"}
        self.calls = []

    def prepare_data(self):
        self.calls.append("prepare")

    def setup(self, stage):
        self.calls.append(stage)

    def class_counts(self):
        return {"train": {"a": {"real": 6, "gen": 10}, "b": {"real": 2}}, "val": {"a": {"real": 3}}}


def test_plan_from_source_train_split_real_only(tmp_path):
    src = FakeSource()
    assert train_real_counts(src) == {"a": 6, "b": 2}
    dm = GenerationDataModule(source=src, output_root=str(tmp_path / "o"), total_multiplier=2.0, scarce_classes=["b"],
                              scarce_multiplier=3.0)
    dm.prepare_data()
    dm.setup("predict")
    assert src.calls == ["prepare", "fit"]
    assert dm.plan == {"a": 12, "b": 4}
    assert dm.data_root == "/data/x"
    assert dm.class_names == ["a", "b"]


def test_plan_from_real_fer_datamodule(tmp_path):
    fer = pytest.importorskip("datamodules.fer")
    from tests.fakes_images import make_class_folders

    root = tmp_path / "faces"
    make_class_folders(root, classes=("happy", "sad"), subjects=4, frames=2, size=16, kind="noise")
    src = fer.FERDataModule(str(root), ["happy", "sad"], crop={"face_detection": "none", "image_size": 16}, descriptor={"kind": "none"},
                            split="group", subject_pattern=r"^(S\d+)_", split_ratios=(0.5, 0.25, 0.25),
                            cache_dir=str(tmp_path / "cache"), progress="none", batch_size=2)
    dm = GenerationDataModule(source=src, output_root=str(tmp_path / "gen"), total_multiplier=1.0,
                              scarce_classes=[])
    dm.prepare_data()
    dm.setup("predict")
    counts = train_real_counts(src)
    assert sum(counts.values()) == 8  # 2 of 4 subjects x 2 frames x 2 classes
    assert sum(dm.plan.values()) == 8
    assert dm.data_root == str(root)

