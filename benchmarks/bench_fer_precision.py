"""CPU training step of the FER2013 nets in float32 and under bf16 autocast (``configs/fer/variants/bf16.yaml``).

Issue #22 §2 trains every face net to a wall-clock budget on 2 cores, so a cheaper step is more epochs. For each
net of the shipped FER2013 configs (the two-branch Swin, the global-only Swin, timm ResNet-18: each config's net,
image size, batch, AdamW and gradient clipping; ``--delta`` files are composed over every config as
``scripts/run_fer2013_budget.py --delta`` composes them) this prints, measured side by side in one run with the two
precisions' steps interleaved round by round:

* the median seconds of one training step (forward, label-smoothed cross-entropy, backward, the config's gradient
  clipping, AdamW step) and faces/s, in float32 with the configs' fused AdamW and under
  ``torch.autocast("cpu", torch.bfloat16)`` with the AdamW Lightning's ``bf16-mixed`` gets (unfused when the config
  clips: :func:`lightning_modules.optim.build_optimization`);
* the bf16 / float32 speed-up of the step, and inference faces/s both ways.

The step leaves data loading out: in a budget run (``num_workers 0``) decoding and augmentation run in the same
process, so the epochs gained in a budget are fewer than this speed-up (docs/results.md, "FER2013 at an equal
budget"). The speed-up depends on the CPU's bf16 instructions (AVX512_BF16 on AMD Zen 4, AMX on Intel Sapphire
Rapids; without them bf16 is emulated and slower): the first line names the CPU and what torch's kernels use.

Usage::

    python benchmarks/bench_fer_precision.py                 # about 1 minute on 2 cores
    python benchmarks/bench_fer_precision.py --delta configs/fer/variants/batch64.yaml --rounds 20
"""

from __future__ import annotations

import argparse
import inspect
import platform
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_fer_models import interleaved  # the interleaved timing of the FER model benchmark
from lightning_modules.cli_checkpoints import resolve_class
from scripts.experiments import compose_configs

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "two-branch Swin": "configs/fer/swin2b_fer2013.yaml",
    "global-only Swin": "configs/fer/swin_global_fer2013.yaml",
    "timm ResNet-18": "configs/fer/resnet18_fer2013.yaml",
}
NUM_CLASSES = 7
PRECISIONS = ("fp32", "bf16")


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Case:
    """One net of a FER2013 config in one precision, with its optimiser and a fixed random batch."""

    def __init__(self, config: dict[str, Any], precision: str, batch_size: int | None) -> None:
        torch.manual_seed(0)
        net_cfg = config["model"]["init_args"]["net"]
        cls = resolve_class(net_cfg["class_path"])
        if cls is None:
            raise ValueError(f"bench_fer_precision: cannot import the net {net_cfg['class_path']!r}")
        side = int(config["data"]["init_args"]["crop"]["image_size"])
        kwargs = dict(net_cfg.get("init_args") or {})
        if "img_size" in inspect.signature(cls).parameters:
            kwargs["img_size"] = side
        self.net = cls(NUM_CLASSES, **kwargs)
        self.bf16 = precision == "bf16"
        self.clip = config["trainer"].get("gradient_clip_val")
        opt = dict(config["model"]["init_args"]["optimizer"]["init_args"])
        if self.bf16 and self.clip:
            opt.pop("fused", None)  # what build_optimization does under AMP with clipping
        self.opt = torch.optim.AdamW(self.net.parameters(), **opt)
        self.smoothing = float(config["model"]["init_args"].get("label_smoothing") or 0.0)
        b = batch_size or int(config["data"]["init_args"]["batch_size"])
        self.batch = b
        self.inputs = {"image": torch.randn(b, 3, side, side), "descriptor": torch.rand(b, 1, side, side)}
        self.label = torch.randint(0, NUM_CLASSES, (b,))
        self.side = side

    def _forward(self) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.net(*(self.inputs[k] for k in self.net.inputs))

    def train_step(self) -> None:
        self.net.train()
        self.opt.zero_grad(set_to_none=True)
        logits = self._forward()
        F.cross_entropy(logits.float(), self.label, label_smoothing=self.smoothing).backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), float(self.clip))
        self.opt.step()

    def infer(self) -> None:
        self.net.eval()
        with torch.inference_mode():
            self._forward()


def bench(name: str, config: dict[str, Any], rounds: int, warmup: int, batch_size: int | None) -> dict[str, float]:
    """The row of one net: step seconds and faces/s in both precisions, the speed-up, inference faces/s."""
    cases = {p: Case(config, p, batch_size) for p in PRECISIONS}
    step = interleaved({p: c.train_step for p, c in cases.items()}, rounds, warmup)
    infer = interleaved({p: c.infer for p, c in cases.items()}, rounds, warmup)
    b = cases["fp32"].batch
    row = {"batch": b, "side": cases["fp32"].side, "speedup": step["fp32"] / step["bf16"]}
    for p in PRECISIONS:
        row[f"step_{p}"] = step[p]
        row[f"train_{p}"] = b / step[p]
        row[f"infer_{p}"] = b / infer[p]
    return row


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--delta", nargs="*", default=[], help="config files composed over every model's config")
    parser.add_argument("--batch-size", type=int, default=None, help="default: each config's batch")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{cpu_name()}; torch {torch.__version__} CPU kernels: {torch.backends.cpu.get_cpu_capability()}; "
          f"{torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds")
    print(f"{'net':<18} {'px':>4} {'batch':>5} {'fp32 step (s)':>13} {'bf16 step (s)':>13} {'speed-up':>8} "
          f"{'fp32 train/s':>12} {'bf16 train/s':>12} {'fp32 infer/s':>12} {'bf16 infer/s':>12}")
    rows = {}
    for name in args.models:
        config = compose_configs([REPO / CONFIGS[name], *(Path(d).resolve() for d in args.delta)])
        row = bench(name, config, args.rounds, args.warmup, args.batch_size)
        rows[name] = row
        print(f"{name:<18} {row['side']:>4} {row['batch']:>5} {row['step_fp32']:>13.4f} {row['step_bf16']:>13.4f} "
              f"{row['speedup']:>7.2f}x {row['train_fp32']:>12.0f} {row['train_bf16']:>12.0f} "
              f"{row['infer_fp32']:>12.0f} {row['infer_bf16']:>12.0f}")
    return rows


if __name__ == "__main__":
    main()
