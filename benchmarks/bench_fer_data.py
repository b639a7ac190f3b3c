"""Benchmark: FERDataModule train-loader time, epoch 1 (cold cache) vs epoch 2 (cached, in memory).

Epoch 1 = ``prepare_data`` (image decoding, optional Haar detection, crops, split, SUN fit, descriptor maps)
+ ``setup`` + one pass over the train loader. Epoch 2 = a second pass over the train loader. The cache lives in
a temporary directory, so every run starts cold.

Run (from the repo root):
    python benchmarks/bench_fer_data.py                       # CK+48 if present, else generated images
    python benchmarks/bench_fer_data.py --dataset jaffe --face-detection haar
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.fer import FERDataModule
from features.descriptors import DescriptorSettings
from features.faces import FaceCropSettings

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
CLASSES = {
    "ckplus48": ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"],
    "jaffe": ["anger", "disgust", "fear", "happy", "neutral", "sadness", "surprise"],
}
PATTERNS = {"ckplus48": r"^(S\d+)_", "jaffe": r"^([A-Z]{2})\."}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="ckplus48", choices=["ckplus48", "jaffe", "generated"])
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--descriptor", default="sun")
    parser.add_argument(
        "--face-detection", default=None, help="default: none for CK+48/generated, haar for JAFFE"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in the loading process (DataLoader workers use 1)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        root = (DATA / args.dataset).resolve() if args.dataset != "generated" else None
        if root is None or not root.is_dir():
            from tests.fakes_images import make_class_folders

            print(f"{args.dataset} not found under {DATA}: using 7 x 140 generated 48x48 images")
            root = Path(tmp) / "generated"
            make_class_folders(root, CLASSES["ckplus48"], subjects=35, frames=4, size=48)
            dataset = "ckplus48"
        else:
            dataset = args.dataset
        face_detection = args.face_detection or ("haar" if dataset == "jaffe" else "none")
        dm = FERDataModule(
            str(root),
            CLASSES[dataset],
            crop=FaceCropSettings(image_size=args.image_size, face_detection=face_detection),
            descriptor=DescriptorSettings(kind=args.descriptor),
            split="group",
            subject_pattern=PATTERNS[dataset],
            batch_size=args.batch_size,
            cache_dir=str(Path(tmp) / "cache"),
            progress="none",
        )
        t0 = time.perf_counter()
        dm.prepare_data()
        t_prep = time.perf_counter() - t0
        dm.setup("fit")
        t_setup = time.perf_counter() - t0 - t_prep
        n = sum(b["label"].shape[0] for b in dm.train_dataloader())
        t1 = time.perf_counter() - t0
        t0 = time.perf_counter()
        n2 = sum(b["label"].shape[0] for b in dm.train_dataloader())
        t2 = time.perf_counter() - t0
        print(
            f"dataset={dataset} root={root} image_size={args.image_size} descriptor={args.descriptor} "
            f"face_detection={face_detection} train_images={n} threads={args.threads}"
        )
        print(
            f"epoch 1 (cold): {t1:.3f} s  [prepare_data {t_prep:.3f} s, setup {t_setup:.3f} s, "
            f"loader {t1 - t_prep - t_setup:.3f} s]"
        )
        print(f"epoch 2 (cached): {t2:.3f} s  ({n2} images, {n2 / t2:.0f} img/s)")
        print(f"ratio epoch1/epoch2: {t1 / t2:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
