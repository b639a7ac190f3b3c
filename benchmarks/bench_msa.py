"""Training-step benchmark of our MulT against MMSA's MulT (plus HGCL, TFN, LMF) on one unaligned MOSI-shaped batch.

Run (needs the ``bench`` extra, ``pip install -e '.[bench]'``, which installs MMSA 2.2.1; exits 2 without it)::

    python benchmarks/bench_msa.py [--batch-size 16] [--rounds 5] [--threads 2] [--attention auto torch]

One generated batch in the shape of MMSA's unaligned MOSI file (text 50 x 768, audio 375 x 5, vision 500 x 20;
random valid lengths of 30-100 % of the audio/vision steps for our models, which mask them; MMSA's MulT reads the
padded tensors as MMSA does). Both MulTs use MMSA's ``config_regression.json`` MOSI ``mult`` hyper-parameters
(width 50, 10 heads, 4 levels, kernels 5, its dropouts) and Adam; a train step is forward + L1 loss + backward +
``optimizer.step()``. The two MulTs are timed **interleaved, round by round** (after warm-up steps), so load
drifts hit both; in a round each model runs ``--steps-per-round`` consecutive steps and the first is not timed (it
follows another model's step, with cold caches and an allocator shaped by that model, which a training run that
repeats one model's step does not see); the median timed step of each gives samples/s and the ratio. FLOPs per sample (forward + backward) come
from ``torch.utils.flop_counter.FlopCounterMode`` and, with our median step time, give our FLOP rate against the fp32
matmul peak (``--peak-gflops``, 185 measured on the project's 2-core Sapphire Rapids machine; about 130 on the
AMD Zen 2 hosts it also runs on). Our MulT counts fewer FLOPs than MMSA's for the same outputs: it skips the padded
steps (``models.msa_utils.RowPacking``) and the unread rows of the memory transformers' last layers. HGCL (default hyper-parameters),
TFN and LMF (MMSA-sized defaults) are timed the same way on the same batch.

``--attention`` picks our MulT's attention kernels (``MulT(attention=...)``): ``auto`` (default) runs the fused CPU
kernel of ``models/kernels`` (built at first use, during the warm-up, about a minute the first time on a machine),
``torch`` the PyTorch path; ``--attention auto torch`` times both side by side. The FLOP counter does not see the
fused kernel, so every MulT of ours is counted on a ``torch``-path twin with the same weights (same math).
``--profile`` then prints the ``torch.profiler`` self-CPU table of one more training step of each of our MulTs
(where the time goes once attention is fused).

Profile that drove the rewrite of ``models/mult.py`` (``torch.profiler``, one training step, self CPU time; shares
only, taken under load): before, ``aten::bernoulli_`` (attention-dropout masks inside SDPA's math fallback) 32 %,
``bmm`` 17 %, ``mul`` 8 %, ``softmax`` + backward 10 %, the safe-softmax passes ``where``/``all``/``isneginf`` 7 %;
the fused flash kernel ran only for the vision-target transformers (attention dropout 0). Run this command on an
idle machine for the numbers; timings taken while other jobs load the machine are meaningless.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

DIMS = {"text": 768, "audio": 5, "vision": 20}
LENS = {"text": 50, "audio": 375, "vision": 500}
MMSA_MOSI_MULT = {  # MMSA 2.2.1 config/config_regression.json, "mult" -> commonParams + datasetParams.mosi
    "dst_feature_dim_nheads": [50, 10], "nlevels": 4, "attn_dropout": 0.3, "attn_dropout_a": 0.2,
    "attn_dropout_v": 0.0, "relu_dropout": 0.0, "embed_dropout": 0.2, "res_dropout": 0.0, "output_dropout": 0.5,
    "text_dropout": 0.5, "conv1d_kernel_size_l": 5, "conv1d_kernel_size_a": 5, "conv1d_kernel_size_v": 5,
    "attn_mask": True, "learning_rate": 0.002,
}


def make_batch(batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frac = torch.empty(batch_size).uniform_(0.3, 1.0, generator=g)
    batch = {}
    for m, d in DIMS.items():
        n = LENS[m] if m == "text" else (frac * LENS[m]).ceil()
        mask = torch.arange(LENS[m])[None] < torch.as_tensor(n).reshape(-1, 1).expand(batch_size, 1)
        batch[m] = torch.randn(batch_size, LENS[m], d, generator=g) * mask[..., None]
        batch[f"{m}_mask"] = mask
    batch["label"] = torch.empty(batch_size).uniform_(-3, 3, generator=g)
    return batch


def mmsa_mult():
    """MMSA's MulT with its MOSI config, or exit 2 with a clear message when MMSA is not installed."""
    try:
        from MMSA.models.singleTask.MULT import MULT
    except ImportError as err:
        print(f"bench_msa: MMSA is not installed ({err}); install the bench extra: pip install -e '.[bench]'",
              file=sys.stderr)
        sys.exit(2)
    c = MMSA_MOSI_MULT
    args = SimpleNamespace(
        use_bert=False, use_finetune=False, transformers="bert", pretrained="bert-base-uncased",
        feature_dims=(DIMS["text"], DIMS["audio"], DIMS["vision"]), num_classes=1, train_mode="regression",
        **{k: v for k, v in c.items() if k != "learning_rate"},
    )
    return MULT(args)


def our_mult(attention: str = "auto"):
    from models.mult import MulT

    c = MMSA_MOSI_MULT
    return MulT(
        DIMS, LENS, dim=c["dst_feature_dim_nheads"][0], num_heads=c["dst_feature_dim_nheads"][1],
        num_layers=c["nlevels"], text_kernel_size=c["conv1d_kernel_size_l"],
        audio_kernel_size=c["conv1d_kernel_size_a"], vision_kernel_size=c["conv1d_kernel_size_v"],
        text_dropout=c["text_dropout"], attn_dropout=c["attn_dropout"], audio_attn_dropout=c["attn_dropout_a"],
        vision_attn_dropout=c["attn_dropout_v"], relu_dropout=c["relu_dropout"], res_dropout=c["res_dropout"],
        embed_dropout=c["embed_dropout"], output_dropout=c["output_dropout"], attention=attention,
    )


def _variant_name(attention: str, single: bool) -> str:
    return "MulT (ours)" if single else f"MulT (ours, {attention})"


def make_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], mmsa: bool):
    opt = torch.optim.Adam(model.parameters(), lr=MMSA_MOSI_MULT["learning_rate"])
    model.train()

    def loss_fn() -> torch.Tensor:
        if mmsa:
            pred = model(batch["text"], batch["audio"], batch["vision"])["M"].squeeze(-1)
            return F.l1_loss(pred, batch["label"])
        out = model(batch)
        return F.l1_loss(out["pred"], batch["label"]) + sum((out.get("aux_losses") or {}).values())

    def step() -> float:
        t0 = time.perf_counter()
        loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    def flops() -> int:
        with FlopCounterMode(display=False) as counter:
            loss_fn().backward()
        opt.zero_grad(set_to_none=True)
        return counter.get_total_flops()

    return step, flops


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps-per-round", type=int, default=3,
                   help="consecutive steps of a model per round; the first (the switch from another model: cold "
                        "caches and allocator) is not timed, as a training run repeats one model's step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak-gflops", type=float, default=185.0, help="fp32 matmul peak of the machine")
    p.add_argument("--attention", nargs="+", choices=["auto", "torch"], default=["auto"],
                   help="our MulT's attention kernels (several: timed side by side)")
    p.add_argument("--profile", action="store_true", help="print a profile of one step of our MulT(s) at the end")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    batch = make_batch(a.batch_size)
    theirs = mmsa_mult()  # exits first when MMSA is missing
    from models.hgcl import HGCL
    from models.lmf import LMF
    from models.tfn import TFN

    ours_names = {att: _variant_name(att, single=len(a.attention) == 1) for att in a.attention}
    models = {
        **{name: (our_mult(att), False) for att, name in ours_names.items()},
        "MulT (MMSA 2.2.1)": (theirs, True),
        "HGCL": (HGCL(DIMS, LENS), False),
        "TFN": (TFN(DIMS, LENS), False),
        "LMF": (LMF(DIMS, LENS), False),
    }
    steps, flops = {}, {}
    for name, (model, is_mmsa) in models.items():
        steps[name], count = make_step(model, batch, is_mmsa)
        if name in ours_names.values():  # counted on a torch-path twin: the counter does not see the fused kernel
            twin = our_mult("torch")
            twin.load_state_dict(model.state_dict())
            count = make_step(twin, batch, False)[1]
        flops[name] = count() / a.batch_size
        for _ in range(a.warmup):
            steps[name]()
    times: dict[str, list[float]] = {name: [] for name in models}
    if a.steps_per_round < 1:
        p.error("--steps-per-round must be >= 1")
    for r in range(a.rounds):  # interleaved: every model once per round
        for name in models:
            if a.steps_per_round == 1:
                times[name].append(steps[name]())
                continue
            steps[name]()  # after another model's step: not timed
            times[name].extend(steps[name]() for _ in range(a.steps_per_round - 1))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{n} {1e3 * t[-1]:.0f} ms" for n, t in times.items()),
              flush=True)
    B = a.batch_size
    print(f"\nTrain steps on one unaligned MOSI-shaped batch (text {LENS['text']}, audio {LENS['audio']}, vision "
          f"{LENS['vision']} steps), batch {B}, {a.threads} threads, median over {a.rounds} interleaved rounds of "
          f"{max(1, a.steps_per_round - 1)} timed step(s) each")
    print(f"{'model':<24} {'samples/s':>10} {'step ms':>9} {'GFLOP/sample':>13} {'GFLOP/s':>8}")
    rate = {}
    for name in models:
        med = statistics.median(times[name])
        rate[name] = B / med
        print(f"{name:<24} {rate[name]:>10.2f} {1e3 * med:>9.0f} {flops[name] / 1e9:>13.3f} "
              f"{flops[name] * B / med / 1e9:>8.1f}")
    mmsa = rate["MulT (MMSA 2.2.1)"]
    print()
    for name in ours_names.values():
        ours = rate[name]
        our_rate = flops[name] * ours / 1e9
        print(f"{name}: ours / MMSA = {ours / mmsa:.2f}x samples/s (target >= 10x); our FLOP rate "
              f"{our_rate:.1f} GFLOP/s = {100 * our_rate / a.peak_gflops:.1f} % of the {a.peak_gflops:.0f} GFLOP/s "
              "fp32 matmul peak")
    if a.profile:
        for name in ours_names.values():
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                steps[name]()
            print(f"\nProfile of one training step, {name} (self CPU time):")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
