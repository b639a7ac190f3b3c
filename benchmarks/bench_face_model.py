"""Faces per second of the shipped face-expression model (``models/weights/``) on this machine's CPU threads.

    python benchmarks/bench_face_model.py [--model fer2013_resnet18s] [--batch-size 64] [--threads 2] [--seconds 10]

Prints, for the net alone (a ready ``[B, 3, S, S]`` batch, ``torch.inference_mode``) and for the whole
:meth:`models.shipped.FaceModel.predict` call (48x48 grey crops in, probabilities out: resampling, normalisation,
the net, softmax), the faces/s over ``--seconds`` of repeated batches after a warm-up, side by side in one run, and
the net's GFLOP per face (``torch.utils.flop_counter``) with its FLOP rate. Target (issue #22): >= 200 faces/s for the
model alone on 2 cores, so a lesson sampled at 1 frame/s with ~25 students is analysed in real time.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.shipped import DEFAULT_MODEL, load_face_model


def _rate(fn, n_per_call: int, seconds: float) -> float:
    fn()  # warm-up
    calls, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    return calls * n_per_call / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="shipped name or a face checkpoint")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    model = load_face_model(a.model)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, size=(a.batch_size, 48, 48), dtype=np.uint8)
    x = model.preprocess(faces)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.net(x)
    gflop = counter.get_total_flops() / a.batch_size / 1e9

    def net_only() -> None:
        with torch.inference_mode():
            model.net(x)

    net_rate = _rate(net_only, a.batch_size, a.seconds)
    full_rate = _rate(lambda: model.predict(faces, batch_size=a.batch_size), a.batch_size, a.seconds)
    print(f"{model.source}: {type(model.net).__name__}, {model.image_size} px, "
          f"{sum(p.numel() for p in model.net.parameters()) / 1e6:.2f} M parameters, {gflop:.4f} GFLOP/face; "
          f"{a.threads} threads, batch {a.batch_size}, {platform.processor() or platform.machine()}")
    print(f"{'what':<34} {'faces/s':>9} {'GFLOP/s':>8}")
    print(f"{'net alone':<34} {net_rate:>9.0f} {net_rate * gflop:>8.1f}")
    print(f"{'predict (48x48 grey crops in)':<34} {full_rate:>9.0f} {full_rate * gflop:>8.1f}")
    print(f"target >= 200 faces/s for the net alone: {'met' if net_rate >= 200 else 'MISSED'} ({net_rate:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
