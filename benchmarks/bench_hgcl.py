"""Training-step benchmark of HGCL on MOSI- and MOSEI-shaped batches (CPU).

Run::

    python benchmarks/bench_hgcl.py [--steps 10] [--batch-size 32] [--threads 2]

For each shape (MOSI dims 768/5/20 and MOSEI dims 768/74/35, aligned with L=50 for every modality; plus MOSI
unaligned with 50/375/500 steps, pooled to 50 nodes per modality; random valid lengths of 20-100 %) it
measures, with the default ``HGCL`` hyper-parameters and parts (those of ``configs/hgcl_mosi.yaml``) and Adam:

- train samples/s of a full step (forward + backward + optimizer step);
- the share of the step spent building the local/global graphs and augmenting the local graph (timers
  around ``MultimodalGraphBuilder.forward`` and ``GraphAugment.forward``; target <= 10 %);
- peak memory: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` growth during the steps, measured in a fresh
  subprocess per shape (``tracemalloc`` does not see torch's allocator).

Each shape runs in its own subprocess so the peak-RSS numbers do not mix.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {  # name -> (feature dims, padded sequence lengths)
    "MOSI": ({"text": 768, "audio": 5, "vision": 20}, {"text": 50, "audio": 50, "vision": 50}),
    "MOSEI": ({"text": 768, "audio": 74, "vision": 35}, {"text": 50, "audio": 50, "vision": 50}),
    "MOSI-unaligned": ({"text": 768, "audio": 5, "vision": 20}, {"text": 50, "audio": 375, "vision": 500}),
}


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def run_one(shape: str, steps: int, batch_size: int, threads: int) -> dict:
    """Benchmark one shape in this process and return the numbers."""
    sys.path.insert(0, str(ROOT))
    import torch

    from models.hgcl import HGCL

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dims, lens = SHAPES[shape]
    model = HGCL(dims, lens)  # default hyper-parameters and parts (max_nodes_per_modality=50)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    frac = torch.empty(batch_size).uniform_(0.2, 1.0)  # valid fraction of each sample's sequences
    batch = {}
    for m, d in dims.items():
        mask = torch.arange(lens[m])[None] < (frac * lens[m]).ceil()[:, None]
        batch[m] = torch.randn(batch_size, lens[m], d) * mask[..., None]
        batch[f"{m}_mask"] = mask
    label = torch.empty(batch_size).uniform_(-3, 3)

    graph_time = [0.0]
    starts: dict[int, float] = {}

    def pre(mod, args):
        starts[id(mod)] = time.perf_counter()

    def post(mod, args, out):
        graph_time[0] += time.perf_counter() - starts.pop(id(mod))

    for mod in (model.builder, model.augment):
        if mod is not None:
            mod.register_forward_pre_hook(pre)
            mod.register_forward_hook(post)

    def step() -> None:
        out = model(batch)
        loss = (out["pred"] - label).abs().mean() + sum(out["aux_losses"].values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    for _ in range(2):  # warm-up (allocations, dVAE init)
        step()
    rss0 = _maxrss_mb()
    graph_time[0] = 0.0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    total = time.perf_counter() - t0
    return {
        "shape": shape,
        "nodes": sum(model.num_nodes.values()),
        "params": sum(p.numel() for p in model.parameters()),
        "samples_per_s": steps * batch_size / total,
        "step_ms": 1000.0 * total / steps,
        "graph_ms": 1000.0 * graph_time[0] / steps,
        "graph_share": graph_time[0] / total,
        "peak_rss_delta_mb": _maxrss_mb() - rss0,
        "peak_rss_mb": _maxrss_mb(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=sorted(SHAPES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(run_one(args.worker, args.steps, args.batch_size, args.threads)))
        return
    rows = []
    for shape in SHAPES:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            shape,
            "--steps",
            str(args.steps),
            "--batch-size",
            str(args.batch_size),
            "--threads",
            str(args.threads),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(
        f"HGCL train step on CPU ({args.threads} threads), batch {args.batch_size}, {args.steps} timed steps"
    )
    header = (
        f"{'shape':<14} {'nodes':>5} {'params':>8} {'samples/s':>10} {'step ms':>8} {'graph ms':>9} "
        f"{'graph %':>8} {'peak RSS MB':>12} {'RSS +MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['shape']:<14} {r['nodes']:>5} {r['params']:>8} {r['samples_per_s']:>10.1f} {r['step_ms']:>8.1f} "
            f"{r['graph_ms']:>9.2f} {100 * r['graph_share']:>7.2f}% {r['peak_rss_mb']:>12.0f} "
            f"{r['peak_rss_delta_mb']:>8.1f}"
        )


if __name__ == "__main__":
    main()
