"""The litdata streaming cache (cache_backend="litdata") against the in-memory path, and under 2-process DDP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.datasets.streaming import (
    FaceStreamingDataset,
    GroupCollate,
    StreamRecord,
    group_items,
    streaming_loader,
    write_face_stream,
)
from datamodules.fer import FERDataModule
from tests.datamodules.test_fer import CLASSES, _dm
from tests.fakes_images import make_class_folders


def _pair(tmp_path: Path, **kwargs) -> tuple[FERDataModule, FERDataModule]:
    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=5, frames=2, size=24)
    mem = _dm(tmp_path, root, **kwargs)
    stream = _dm(tmp_path, root, cache_backend="litdata", **kwargs)
    for dm in (mem, stream):
        dm.prepare_data()
        dm.setup("fit")
    return mem, stream


def _assert_same_batches(a, b) -> None:
    a, b = list(a), list(b)
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                torch.testing.assert_close(x[k], y[k], rtol=0, atol=0)
            else:
                assert x[k] == y[k], k


def test_eval_batches_are_identical_to_the_in_memory_path(tmp_path: Path) -> None:
    mem, stream = _pair(tmp_path)
    assert isinstance(stream.datasets["val"], FaceStreamingDataset)
    _assert_same_batches(mem.val_dataloader(), stream.val_dataloader())
    _assert_same_batches(mem.test_dataloader(), stream.test_dataloader())
    assert stream.class_counts() == mem.class_counts()


def test_fixed_order_train_batches_are_identical_including_augmentation(tmp_path: Path) -> None:
    mem, stream = _pair(tmp_path, augment_policy="trivial", random_erasing=0.5)
    from torch.utils.data import DataLoader, Subset

    fixed = FaceStreamingDataset(str(stream.datasets["train"].input_dir.path), shuffle=False)
    bs = mem.hparams.batch_size
    # the train stream is written in a fixed permutation of the split (train_write_order): the in-memory
    # loader over the same permutation must give the same batches
    written = fixed.paths
    index = {p: i for i, p in enumerate(mem.datasets["train"].paths)}
    assert sorted(written) == sorted(index) and written != list(mem.datasets["train"].paths)
    permuted = Subset(mem.datasets["train"], [index[p] for p in written])
    a = list(DataLoader(permuted, batch_size=bs, shuffle=False, collate_fn=list))
    b = list(streaming_loader(fixed, bs, 0, list))
    assert len(a) == len(b)
    import random

    for x, y in zip(a, b):  # the same items in the same order ...
        for ix, iy in zip(x, y):
            assert ix["path"] == iy["path"] and torch.equal(ix["image"], iy["image"])
            assert torch.equal(ix["descriptor"], iy["descriptor"]) and int(ix["label"]) == int(iy["label"])
        # ... give the same augmented batches through the same train collate (timm's eraser draws from `random`)
        torch.manual_seed(7)
        random.seed(7)
        bx = mem._collate_train(x)
        torch.manual_seed(7)
        random.seed(7)
        by = stream._collate_train(y)
        _assert_same_batches([bx], [by])


def test_train_stream_is_written_in_a_fixed_class_mixing_order(tmp_path: Path) -> None:
    """A class-sorted train stream would put one class in every chunk, so in every shuffled batch of a large set."""
    import numpy as np

    from datamodules.datasets.streaming import train_write_order

    recs = []
    for i in range(3000):  # 3 classes, class-sorted as the split lists them
        np.save(tmp_path / f"c{i}.npy", np.full((4, 4, 3), i % 251, dtype=np.uint8))
        recs.append(StreamRecord(str(tmp_path / f"c{i}.npy"), None, i // 1000, "real", f"/faces/{i:05d}.png"))
    order = train_write_order(recs, "digest-a")
    assert order == train_write_order(recs, "digest-a") and order != train_write_order(recs, "digest-b")
    assert sorted(r.path for r in order) == [r.path for r in recs]
    # every block of 64 consecutive written faces holds all three classes (class-sorted, 44 of the 46 blocks hold one class)
    blocks = [{r.label for r in order[i:i + 64]} for i in range(0, len(order) - 63, 64)]
    assert all(len(b) == 3 for b in blocks)
    # and the datamodule writes the train split in that order, the eval splits in split order
    mem, stream = _pair(tmp_path / "dm")
    labels = stream.datasets["train"].labels.tolist()
    assert labels != sorted(labels) and sorted(labels) == sorted(mem.datasets["train"].labels.tolist())
    assert stream.datasets["val"].labels.tolist() == mem.datasets["val"].labels.tolist()


def test_shuffled_train_epochs_hold_the_split_and_repeat_for_the_same_seed(tmp_path: Path) -> None:
    mem, stream = _pair(tmp_path)

    def epoch_paths(dm: FERDataModule) -> list[str]:
        return [p for batch in dm.train_dataloader() for p in batch["path"]]

    expected = sorted(mem.datasets["train"].paths)
    first = epoch_paths(stream)
    assert sorted(first) == expected  # every training face exactly once per epoch
    again = _dm(tmp_path, tmp_path / "data", cache_backend="litdata")
    again.prepare_data()
    again.setup("fit")
    assert epoch_paths(again) == first  # same seed -> same litdata order
    other = _dm(tmp_path, tmp_path / "data", cache_backend="litdata", seed=43, split_file=str(stream.split_path))
    other.prepare_data()
    other.setup("fit")
    assert sorted(epoch_paths(other)) == expected and epoch_paths(other) != first


def test_stream_is_written_once_and_never_overwritten(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "faces", CLASSES, subjects=2, frames=1, size=24)
    import numpy as np

    recs = []
    for i, f in enumerate(sorted((tmp_path / "faces").rglob("*.png"))):
        np.save(tmp_path / f"c{i}.npy", np.full((8, 8, 3), i, dtype=np.uint8))
        recs.append(StreamRecord(str(tmp_path / f"c{i}.npy"), None, i % 3, "real", str(f)))
    out = write_face_stream(recs, tmp_path / "s")
    mtime = (out / "index.json").stat().st_mtime_ns
    assert write_face_stream(recs, tmp_path / "s") == out and (out / "index.json").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="different stream"):
        write_face_stream(recs[:-1], tmp_path / "s")
    ds = FaceStreamingDataset(str(out))
    face = group_items(ds[2])[0]
    assert len(ds) == len(recs) and int(face["image"][0, 0, 0]) == 2 and face["image"].shape == (3, 8, 8)
    assert json.loads((out / "face_stream.json").read_text())["n"] == len(recs) == ds.num_faces
    # a different group size is a different stream: refused in the same folder, never overwritten
    with pytest.raises(ValueError, match="group size"):
        write_face_stream(recs, tmp_path / "s", group_size=4)
    grouped = FaceStreamingDataset(str(write_face_stream(recs, tmp_path / "g", group_size=4)))
    assert grouped.group_size == 4 and len(grouped) == -(-len(recs) // 4) and grouped.num_faces == len(recs)
    assert grouped.paths == [r.path for r in recs] and grouped.labels.tolist() == [r.label for r in recs]
    last = grouped[len(grouped) - 1]  # the short last group
    assert last["pixels"].shape[0] == len(recs) - 4 * (len(grouped) - 1) and last["path"] == [r.path for r in recs[-len(last["path"]):]]


def test_groups_are_one_pixel_buffer_and_the_collate_concatenates_them_once(tmp_path: Path) -> None:
    _, stream = _pair(tmp_path)
    ds = stream.datasets["val"]
    assert ds.group_size == 4 == stream.stream_group_size  # batch 4: the largest of 8, 4, 2, 1 dividing it
    group = ds[0]
    # a group is one [g, 4, H, W] buffer (RGB + descriptor map: one litdata leaf, one copy per group) ...
    assert group["pixels"].dtype == torch.uint8 and group["pixels"].shape[:2] == (4, 4)
    items = group_items(group)
    assert all(it["image"]._base is group["pixels"] and it["descriptor"]._base is group["pixels"] for it in items)
    # ... which the group collate hands to the transform as one batch: the same batch as stacking the items
    collate = GroupCollate(stream._collate_eval)
    _assert_same_batches([collate([group])], [stream._collate_eval(items)])
    torch.manual_seed(3)
    a = GroupCollate(stream._collate_train)([group, ds[1]])
    torch.manual_seed(3)
    _assert_same_batches([a], [stream._collate_train(items + group_items(ds[1]))])
    listed = GroupCollate(list)([group])  # any other collate gets the groups' face items
    assert [it["path"] for it in listed] == group["path"] and all(torch.equal(x["image"], y["image"])
                                                                  for x, y in zip(listed, items))


def test_batch_size_must_be_a_multiple_of_the_group_size(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="stream_group_size=3 must be >= 1 and divide batch_size"):
        _dm(tmp_path, cache_backend="litdata", stream_group_size=3)
    mem, stream = _pair(tmp_path, stream_group_size=2)
    assert stream.datasets["train"].group_size == 2
    with pytest.raises(ValueError, match="batch_size 3 is not a multiple of the group size 2"):
        streaming_loader(stream.datasets["val"], 3, 0, list)
    _assert_same_batches(mem.val_dataloader(), stream.val_dataloader())  # group size 2, batch 4


def test_streams_of_the_old_layout_are_refused_by_name(tmp_path: Path) -> None:
    import numpy as np

    np.save(tmp_path / "c.npy", np.zeros((8, 8, 3), dtype=np.uint8))
    out = write_face_stream([StreamRecord(str(tmp_path / "c.npy"), None, 0, "real", "a.png")], tmp_path / "s")
    meta = json.loads((out / "face_stream.json").read_text())
    assert meta["format"] == 3 and FaceStreamingDataset(str(out))[0]["pixels"].shape == (1, 3, 8, 8)
    import hashlib

    del meta["format"]  # what a version-1 writer left: no format key, a fingerprint of the records alone
    meta["fingerprint"] = hashlib.sha1(json.dumps([str(tmp_path / "c.npy"), None, 0, "real", "a.png"]).encode()).hexdigest()
    (out / "face_stream.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format-1 face stream"):
        FaceStreamingDataset(str(out))
    with pytest.raises(ValueError, match="different stream"):
        write_face_stream([StreamRecord(str(tmp_path / "c.npy"), None, 0, "real", "a.png")], out)


def test_litdata_refuses_the_class_balanced_sampler(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_balanced"):
        _dm(tmp_path, cache_backend="litdata", train_sampler="class_balanced")
    with pytest.raises(ValueError, match="cache_backend"):
        _dm(tmp_path, cache_backend="disk")


def _ddp_worker(rank: int, world: int, root: str, tmp: str, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    dm = _dm(Path(tmp), Path(root), cache_backend="litdata", batch_size=2)
    dm.setup("fit")  # prepare_data ran once in the parent (rank 0's job)
    paths = {s: [p for b in getattr(dm, f"{s}_dataloader")() for p in b["path"]] for s in ("train", "val")}
    gathered: list = [None] * world
    dist.all_gather_object(gathered, paths)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.destroy_process_group()


@pytest.mark.slow  # two gloo processes + litdata streams
def test_streams_shard_across_two_ddp_processes(tmp_path: Path) -> None:
    import socket

    import torch.multiprocessing as mp

    root = tmp_path / "data"
    make_class_folders(root, CLASSES, subjects=6, frames=2, size=24)
    dm = _dm(tmp_path, root, cache_backend="litdata", batch_size=2)
    dm.prepare_data()
    mem = _dm(tmp_path, root, batch_size=2)
    mem.setup("fit")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "paths.json"
    # spawn, not fork: forking a process whose OpenMP/gloo threads are running can deadlock
    mp.start_processes(_ddp_worker, args=(2, str(root), str(tmp_path), port, str(out)), nprocs=2,
                       start_method="spawn")
    per_rank = json.loads(out.read_text())
    val = [p for r in per_rank for p in r["val"]]
    assert sorted(val) == sorted(mem.datasets["val"].paths)  # every eval face exactly once across the ranks
    # litdata hands each rank whole batches' worth of items cut out of the (here single) chunk, the remainder to
    # the last rank: a split of >= world_size * batch_size faces gives every rank eval data
    assert len(mem.datasets["val"]) >= 2 * 2
    assert all(len(r["val"]) >= 2 for r in per_rank)
    train0, train1 = (set(r["train"]) for r in per_rank)
    assert not train0 & train1  # disjoint training shards
    assert len(per_rank[0]["train"]) == len(per_rank[1]["train"])  # equal steps per rank (no DDP hang)
    assert train0 | train1 <= set(mem.datasets["train"].paths)
