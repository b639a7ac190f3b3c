"""Benchmark: litdata streaming face cache vs the in-memory cache — resident memory as the set grows, epoch speed.

For each size (default 10k and 100k faces of 128 px, generated as synthetic uint8 arrays, no image decoding) the
script writes the per-face ``.npy`` crops the FER cache holds, writes them once as a litdata stream
(:func:`datamodules.datasets.streaming.write_face_stream`), then measures in a FRESH process each:

* ``litdata``: open :class:`FaceStreamingDataset` (shuffled, as the train split) and run the epochs through the
  datamodule's train collate (``FaceBatchTransform``, batch 64);
* ``memory`` (sizes up to ``--max-memory-size``; 100k faces of 128 px are 4.9 GB): stack every crop into a uint8
  tensor (what ``FERDataModule.setup`` does) and run the same epoch over ``FaceTensorDataset``.

Each measurement runs ``--epochs`` (default 2) shuffled epochs. The first pays one-time costs (litdata's start and,
for the stream, the first touch of every chunk page: the in-memory path loaded its crops before the clock started);
the last is the steady state that every further epoch of a training run costs. It prints, per backend and size, the
peak resident memory (``ru_maxrss``) of that process, the resident memory growth over the epochs, and faces/s of the
first and of the last epoch; then the two memory figures of the stream (10k vs 100k) side by side and the
streaming/in-memory throughput ratios at the size both ran. Targets (issue 12): stream memory flat as the set grows,
streaming throughput >= in-memory. After the timed epochs each worker runs one more epoch with ``collate_fn=list``
(reading alone, no batch transform) and prints its time as a share of the last full epoch: what the reader costs per
epoch on each path (the difference between the two shares is the throughput gap).

Streams in ``--workdir`` written by an older sample layout (``streaming.FORMAT_VERSION``) are this script's own
scratch output: they are deleted and written again (with a message).

Run (from the repo root; needs ~2 x 4.9 GB of free disk for 100k faces, in --workdir):
    python benchmarks/bench_fer_stream.py
    python benchmarks/bench_fer_stream.py --sizes 10000 100000 --workdir /scratch/bench --num-workers 2
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def generate(n: int, size: int, folder: Path) -> list:
    """``n`` synthetic 128 px faces as ``.npy`` crops (+ 1-channel maps) and their stream records."""
    import numpy as np

    from datamodules.datasets.streaming import StreamRecord

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    base = (((xx - size / 2) ** 2 / 0.3 + (yy - size / 2) ** 2 / 0.45) < size**2 / 4).astype(np.uint8) * 150
    records = []
    for i in range(n):
        file = folder / f"{i:06d}.npy"
        desc = folder / f"{i:06d}_d.npy"
        if not file.is_file():
            face = np.clip(base + rng.integers(0, 60, (size, size)), 0, 255).astype(np.uint8)
            np.save(file, np.repeat(face[:, :, None], 3, axis=2))
            np.save(desc, (face // 2).astype(np.uint8))
        records.append(StreamRecord(str(file), str(desc), i % 7, "real", f"face_{i:06d}"))
    return records


def worker(backend: str, n: int, workdir: Path, batch_size: int, num_workers: int, epochs: int = 2,
           group_size: int = 1) -> dict:
    """One measurement in this (fresh) process: ``epochs`` shuffled epochs; returns peak RSS, RSS growth over the
    epochs, faces/s of the first epoch (one-time costs: litdata's start, the first touch of every chunk page) and
    of the last (steady state, what each further epoch of a training run costs)."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from datamodules.datasets.images import FaceBatchTransform, FaceTensorDataset
    from datamodules.datasets.streaming import FaceStreamingDataset, streaming_loader

    collate = FaceBatchTransform(hflip_prob=0.5, affine_degrees=10, augment="train")
    if backend == "memory":
        records = json.loads((workdir / f"records_{n}.json").read_text())
        images = torch.from_numpy(np.stack([np.load(r[0]) for r in records]).transpose(0, 3, 1, 2).copy())
        descs = torch.from_numpy(np.stack([np.load(r[1])[None] for r in records]))
        ds = FaceTensorDataset(images, torch.tensor([r[2] for r in records]), ["real"] * n,
                               [r[4] for r in records], descs)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, collate_fn=collate)
    else:
        ds = FaceStreamingDataset(str(workdir / f"stream_{n}_g{group_size}"), shuffle=True, seed=0)
        loader = streaming_loader(ds, batch_size, num_workers, collate)
    before = _rss_mb()
    epoch_seconds, seen = [], 0
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            seen += batch["image"].shape[0]
        epoch_seconds.append(time.perf_counter() - start)
    seen //= epochs
    seconds = epoch_seconds[-1]
    growth = _rss_mb() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # reading alone: the same epoch without the batch transform
    if backend == "memory":
        reader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=num_workers, collate_fn=list)
    else:
        reader = streaming_loader(FaceStreamingDataset(str(workdir / f"stream_{n}_g{group_size}"), shuffle=True, seed=1),
                                  batch_size, num_workers, list)
    start = time.perf_counter()
    for _ in reader:
        pass
    read_seconds = time.perf_counter() - start
    return {"backend": backend, "n": n, "group_size": group_size, "faces": seen, "faces_per_s": seen / seconds,
            "first_epoch_faces_per_s": seen / epoch_seconds[0],
            "read_share": read_seconds / seconds, "rss_before_epoch_mb": before, "rss_growth_mb": growth,
            "peak_rss_mb": peak}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--max-memory-size", type=int, default=10_000,
                        help="largest size also run through the in-memory path")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2,
                        help="epochs per measurement; the last is the steady-state figure, the first is printed too")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--group-sizes", type=int, nargs="+", default=[1, 8],
                        help="stream group sizes (faces per litdata sample); the largest also runs at every size")
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "N", "GROUP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), Path(args.workdir), args.batch_size,
                                args.num_workers, args.epochs, int(args.worker[2]))))
        return

    from datamodules.datasets.streaming import FORMAT_VERSION, stream_format, write_face_stream

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_fer_stream_"))
    results = []
    try:
        for n in args.sizes:
            records = generate(n, args.image_size, workdir / "faces")
            (workdir / f"records_{n}.json").write_text(json.dumps(
                [[r.crop_file, r.descriptor_file, r.label, r.origin, r.path] for r in records]))
            big = max(args.group_sizes)
            runs = [("litdata", g) for g in args.group_sizes if g == big or n <= args.max_memory_size]
            if n <= args.max_memory_size:
                runs.append(("memory", 1))
            for backend, g in runs:
                if backend == "litdata":
                    stream_dir = workdir / f"stream_{n}_g{g}"
                    version = stream_format(stream_dir)
                    if version is not None and version != FORMAT_VERSION:
                        print(f"{stream_dir} holds a format-{version} stream (this code writes format "
                              f"{FORMAT_VERSION}): deleting this benchmark's old stream and writing it again",
                              flush=True)
                        shutil.rmtree(stream_dir)
                    t = time.perf_counter()
                    write_face_stream(records, stream_dir, group_size=g)
                    print(f"wrote the {n}-face stream (groups of {g}) in {time.perf_counter() - t:.1f} s", flush=True)
                cmd = [sys.executable, __file__, "--worker", backend, str(n), str(g), "--workdir", str(workdir),
                       "--batch-size", str(args.batch_size), "--num-workers", str(args.num_workers),
                       "--epochs", str(args.epochs)]
                row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                results.append(row)
                name = f"litdata/g{g}" if backend == "litdata" else backend
                print(f"{name:10s} n={n:7d}: peak RSS {row['peak_rss_mb']:8.0f} MB, RSS growth over the epochs "
                      f"{row['rss_growth_mb']:7.0f} MB, first epoch {row['first_epoch_faces_per_s']:8.0f} faces/s, "
                      f"last epoch {row['faces_per_s']:8.0f} faces/s; reading alone "
                      f"{row['read_share']:.2f} of the last epoch's time", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    memory = {r["n"]: r for r in results if r["backend"] == "memory"}
    for g in sorted(set(args.group_sizes)):
        stream = {r["n"]: r for r in results if r["backend"] == "litdata" and r["group_size"] == g}
        if len(stream) >= 2:
            lo, hi = min(stream), max(stream)
            print(f"litdata/g{g} peak RSS: {stream[lo]['peak_rss_mb']:.0f} MB at {lo} faces vs "
                  f"{stream[hi]['peak_rss_mb']:.0f} MB at {hi} faces (ratio "
                  f"{stream[hi]['peak_rss_mb'] / stream[lo]['peak_rss_mb']:.2f}; flat = ~1)")
        for n in sorted(set(stream) & set(memory)):
            st, mem = stream[n], memory[n]
            print(f"n={n}, groups of {g}: memory peak RSS {mem['peak_rss_mb']:.0f} MB vs litdata "
                  f"{st['peak_rss_mb']:.0f} MB; throughput litdata / memory: first epoch "
                  f"{st['first_epoch_faces_per_s'] / mem['first_epoch_faces_per_s']:.2f}, last (steady) epoch "
                  f"{st['faces_per_s'] / mem['faces_per_s']:.2f} (target >= 1); reading alone: litdata "
                  f"{st['read_share']:.2f} vs memory {mem['read_share']:.2f} of an epoch")


if __name__ == "__main__":
    main()
