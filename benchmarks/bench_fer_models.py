"""CPU cost of the two-branch Swin (Ji et al. 2026, §2.2) relative to its global-only ablation at the same size.

For every model size and variant this prints, measured side by side in one run:

* the median wall-clock time of one training step (forward, cross-entropy, backward, AdamW step; fused AdamW as in
  the FER configs, ``--adamw`` for the other implementations) and its ratio to
  the global-only Swin of the same size (target for the paper's model, ``tile_concat`` with the dense 3x3 conv of
  eq. 3: <= 2.3);
* the training FLOPs per image (forward + backward, ``torch.utils.flop_counter``; its rule for the convolution
  backward ignores ``groups``, so a corrected rule is registered for it) and their ratio, which shows how much of
  the time ratio is arithmetic the architecture asks for and how much is implementation;
* inference throughput (faces/s, eval mode, no grad).

The variants' steps are interleaved round by round (A, B, C, A, B, C, ...) so that machine-load drift and
allocator warm-up hit every variant alike; an earlier version timed the variants one after the other and its
ratios moved by 0.3-0.5 between runs.

Sizes: ``cpu`` is the architecture of the CPU experiment configs (``configs/fer/swin2b_ckplus48.yaml``: 64 px,
embed 32, depths 1-1-2-1); ``swin_t@112`` is Swin-T, the paper's backbone (embed 96, depths 2-2-6-2, heads
3-6-12-24, window 7), at half its native resolution; ``swin_t@224`` is Swin-T at its native 224 px (slow: about
20 s per round on 2 cores, so not in the default set).

Usage::

    python benchmarks/bench_fer_models.py                       # cpu + swin_t@112, about 2 minutes on 2 cores
    python benchmarks/bench_fer_models.py --sizes swin_t@224 --rounds 4
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.swin_two_branch import TwoBranchSwin

SWIN_T = {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24), "window_size": 7}
SIZES = {
    "cpu": {"img_size": 64, "embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8), "window_size": 4,
            "batch_size": 32},
    "swin_t@112": {"img_size": 112, **SWIN_T, "batch_size": 16},
    "swin_t@224": {"img_size": 224, **SWIN_T, "batch_size": 8},
}
REFERENCE = "global only"
PAPER = "two-branch (paper, dense 3x3)"
VARIANTS = {
    REFERENCE: {"branches": "global"},
    PAPER: {"branches": "two", "fusion": "tile_concat", "fusion_conv": "full"},
    "two-branch (separable 3x3)": {"branches": "two", "fusion": "tile_concat", "fusion_conv": "separable"},
    "two-branch (add)": {"branches": "two", "fusion": "add"},
    "two-branch (late)": {"branches": "two", "fusion": "late"},
}
TARGET = 2.3


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, out_padding,
                        groups, output_mask, out_shape=None) -> int:
    """FLOPs of ``aten.convolution_backward``: each requested gradient (input, weight) costs one forward pass.

    ``2 * prod(w_shape) * N * prod(spatial)`` is exact for grouped and depthwise kernels because ``w_shape[1]`` is
    already ``C_in / groups`` (torch's built-in rule treats every convolution as dense here).
    """
    spatial = x_shape[2:] if transposed else grad_out_shape[2:]
    per_pass = 2 * math.prod(w_shape) * grad_out_shape[0] * math.prod(spatial)
    return per_pass * (int(output_mask[0]) + int(output_mask[1]))


class Case:
    """One model variant with its optimiser and fixed inputs; ``train_step``/``infer`` run one timed unit."""

    def __init__(self, variant: dict, size: dict, adamw: str) -> None:
        torch.manual_seed(0)
        arch = {k: v for k, v in size.items() if k != "batch_size"}
        self.net = TwoBranchSwin(7, drop_path_rate=0.1, **arch, **variant)
        impl = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[adamw]
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-3, weight_decay=0.05, **impl)
        b, side = size["batch_size"], size["img_size"]
        self.image = torch.randn(b, 3, side, side)
        self.desc = torch.rand(b, 1, side, side)
        self.label = torch.randint(0, 7, (b,))
        self.params_m = sum(p.numel() for p in self.net.parameters()) / 1e6
        self.train_gflop = self._train_flops() / b / 1e9

    def _train_flops(self) -> int:
        self.net.train()
        mapping = {torch.ops.aten.convolution_backward: _conv_backward_flop}
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            F.cross_entropy(self.net(self.image, self.desc), self.label).backward()
        self.net.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    def train_step(self) -> None:
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        F.cross_entropy(self.net(self.image, self.desc), self.label).backward()
        self.opt.step()

    def infer(self) -> None:
        self.net.eval()
        with torch.inference_mode():
            self.net(self.image, self.desc)


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of every function, calling them round-robin (warm-up calls untimed)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def bench_size(name: str, size: dict, rounds: int, warmup: int, adamw: str) -> dict[str, float]:
    cases = {variant: Case(kwargs, size, adamw) for variant, kwargs in VARIANTS.items()}
    step = interleaved({v: c.train_step for v, c in cases.items()}, rounds, warmup)
    infer = interleaved({v: c.infer for v, c in cases.items()}, rounds, warmup)
    b = size["batch_size"]
    print(
        f"\n{name}: img {size['img_size']}, embed {size['embed_dim']}, depths {size['depths']}, heads "
        f"{size['num_heads']}, window {size['window_size']}, batch {b}; median of {rounds} interleaved rounds"
    )
    print(f"{'variant':<30} {'params (M)':>10} {'GFLOP/img':>10} {'FLOP ratio':>10} {'train step (s)':>15} "
          f"{'time ratio':>10} {'infer faces/s':>14}")
    ref = cases[REFERENCE]
    ratios = {}
    for variant, case in cases.items():
        ratios[variant] = step[variant] / step[REFERENCE]
        print(f"{variant:<30} {case.params_m:>10.2f} {case.train_gflop:>10.3f} "
              f"{case.train_gflop / ref.train_gflop:>9.2f}x {step[variant]:>15.4f} {ratios[variant]:>9.2f}x "
              f"{b / infer[variant]:>14.1f}")
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["cpu", "swin_t@112"])
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 15 for cpu, 6 otherwise)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--adamw", choices=("fused", "foreach", "for-loop"), default="fused",
                        help="AdamW implementation (the FER configs use fused)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"TwoBranchSwin train-step cost on CPU ({torch.get_num_threads()} threads, torch {torch.__version__}); "
          f"{args.adamw} AdamW; time ratio = train step / train step of the global-only Swin of the same size")

    summary = {}
    for name in args.sizes:
        rounds = args.rounds or (15 if name == "cpu" else 6)
        summary[name] = bench_size(name, SIZES[name], rounds, args.warmup, args.adamw)
    print()
    for name, ratios in summary.items():
        paper = ratios[PAPER]
        print(f"{name}: two-branch (paper) / global-only = {paper:.2f} "
              f"(target <= {TARGET}: {'OK' if paper <= TARGET else 'MISS'}); "
              f"separable-fusion variant {ratios['two-branch (separable 3x3)']:.2f}")


if __name__ == "__main__":
    main()
