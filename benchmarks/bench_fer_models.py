"""CPU cost of the two-branch Swin (Ji et al. 2026, §2.2) relative to its global-only ablation at the same size.

Measures, for each variant, the median wall-clock time of one training step (forward, cross-entropy, backward,
AdamW step) and the inference throughput (faces/s, eval mode, no grad), then prints them side by side with the
ratio ``train step(two-branch) / train step(global only)`` (target: <= 2.3; the local branch alone would make it
about 2, the per-stage fusion adds the rest).

Usage::

    python benchmarks/bench_fer_models.py
    python benchmarks/bench_fer_models.py --img-size 112 --embed-dim 48 --depths 2 2 2 2 --window 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.swin_two_branch import TwoBranchSwin

VARIANTS = {
    "two-branch (tile_concat)": {"branches": "two", "fusion": "tile_concat"},
    "global only": {"branches": "global"},
    "two-branch (add)": {"branches": "two", "fusion": "add"},
    "two-branch (late)": {"branches": "two", "fusion": "late"},
}


def _timed(fn, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(variant: dict, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    net = TwoBranchSwin(
        7, img_size=args.img_size, embed_dim=args.embed_dim, depths=tuple(args.depths), num_heads=None,
        window_size=args.window, **variant,
    )
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    b = args.batch_size
    image = torch.randn(b, 3, args.img_size, args.img_size)
    desc = torch.rand(b, 1, args.img_size, args.img_size)
    label = torch.randint(0, 7, (b,))

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(image, desc), label).backward()
        opt.step()

    net.train()
    step = _timed(train_step, args.steps, args.warmup)
    net.eval()
    with torch.inference_mode():
        infer = _timed(lambda: net(image, desc), args.steps, args.warmup)
    return {"params_m": sum(p.numel() for p in net.parameters()) / 1e6, "step_s": step, "faces_per_s": b / infer}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--embed-dim", type=int, default=32)
    parser.add_argument("--depths", type=int, nargs=4, default=[1, 1, 2, 1])
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results = {name: bench(v, args) for name, v in VARIANTS.items()}
    print(
        f"TwoBranchSwin on CPU ({args.threads} threads): img {args.img_size}, embed_dim {args.embed_dim}, depths "
        f"{tuple(args.depths)}, window {args.window}, batch {args.batch_size}, median of {args.steps} steps"
    )
    print(f"{'variant':<26} {'params (M)':>10} {'train step (s)':>15} {'vs global':>10} {'infer faces/s':>14}")
    ref = results["global only"]["step_s"]
    for name, r in results.items():
        print(f"{name:<26} {r['params_m']:>10.2f} {r['step_s']:>15.4f} {r['step_s'] / ref:>9.2f}x "
              f"{r['faces_per_s']:>14.1f}")
    ratio = results["two-branch (tile_concat)"]["step_s"] / ref
    print(f"train-step ratio two-branch / global-only = {ratio:.2f} (target <= 2.3: {'OK' if ratio <= 2.3 else 'MISS'})")


if __name__ == "__main__":
    main()
