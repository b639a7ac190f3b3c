"""Sampling speed of the class-conditioned LDM on CPU: DDIM-50 vs DDPM-1000 (target speed-up >= 15x).

    python benchmarks/bench_ldm.py [--batch 8] [--threads 1]

For the tiny (``configs/ldm/ldm_tiny.yaml``: 32x32 faces, 8x8 latents) and the default
(``configs/ldm/ldm_ckplus48.yaml``: 48x48 faces, 12x12 latents) architectures, with random weights (speed does not
depend on them) and classifier-free guidance 2.0 (two UNet passes per step), it measures wall time of the full
generation (noise -> latents -> VAE decode), images/s and the peak resident memory of a fresh process per config, and
prints the two configs side by side.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = {
    "tiny": {"size": 32, "vae": (16, 32, 32), "vae_groups": 8, "unet": (16, 32), "layers": 1, "xdim": 32,
             "head": 8, "groups": 8},
    "default": {"size": 48, "vae": (32, 64, 64), "vae_groups": 16, "unet": (64, 128), "layers": 2, "xdim": 128,
                "head": 16, "groups": 16},
}


def worker(name: str, batch: int, threads: int, ddpm_steps: int, ddim_steps: int) -> dict:
    import torch
    from diffusers import DDPMScheduler

    from models.diffusion import (
        ConditionalLatentUNet,
        build_autoencoder_kl,
        decode_latents,
        make_sampling_scheduler,
        sample_latents,
    )

    torch.set_num_threads(threads)
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    net = ConditionalLatentUNet(7, sample_size=cfg["size"] // 4, latent_channels=4, block_out_channels=cfg["unet"],
                                layers_per_block=cfg["layers"], cross_attention_dim=cfg["xdim"],
                                attention_head_dim=cfg["head"], norm_num_groups=cfg["groups"]).eval()
    vae = build_autoencoder_kl(block_out_channels=cfg["vae"], norm_num_groups=cfg["vae_groups"],
                               sample_size=cfg["size"]).eval()
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    labels = torch.arange(batch) % 7
    seeds = list(range(batch))
    out = {"config": name, "params_unet": sum(p.numel() for p in net.parameters()), "batch": batch}
    with torch.no_grad():
        sample_latents(net, make_sampling_scheduler(train, "ddim"), labels, seeds, 2, 2.0)  # warm-up
        for sampler, steps in (("ddim", ddim_steps), ("ddpm", ddpm_steps)):
            t0 = time.perf_counter()
            z = sample_latents(net, make_sampling_scheduler(train, sampler), labels, seeds, steps, 2.0)
            decode_latents(vae, z)
            dt = time.perf_counter() - t0
            out[f"{sampler}{steps}_s"] = dt
            out[f"{sampler}{steps}_img_s"] = batch / dt
    out["speedup"] = out[f"ddpm{ddpm_steps}_s"] / out[f"ddim{ddim_steps}_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--ddpm-steps", type=int, default=1000)
    ap.add_argument("--worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.threads, args.ddpm_steps, args.ddim_steps)))
        return
    results = []
    for name in CONFIGS:  # a fresh process per config: clean peak memory
        cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--threads", str(args.threads),
               "--ddim-steps", str(args.ddim_steps), "--ddpm-steps", str(args.ddpm_steps)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))
    d, p = f"ddim{args.ddim_steps}", f"ddpm{args.ddpm_steps}"
    rows = [("UNet parameters", "params_unet", "{:,}"), (f"DDIM-{args.ddim_steps} time (s)", f"{d}_s", "{:.2f}"),
            (f"DDIM-{args.ddim_steps} images/s", f"{d}_img_s", "{:.2f}"),
            (f"DDPM-{args.ddpm_steps} time (s)", f"{p}_s", "{:.2f}"),
            (f"DDPM-{args.ddpm_steps} images/s", f"{p}_img_s", "{:.3f}"),
            ("speed-up DDIM vs DDPM", "speedup", "{:.1f}x"), ("peak RSS (MB)", "peak_rss_mb", "{:.0f}")]
    print(f"CPU, batch {args.batch}, {args.threads} thread(s), guidance 2.0 (2 UNet passes/step), incl. VAE decode")
    print(f"| metric | {' | '.join(r['config'] for r in results)} |")
    print("|---" * (len(results) + 1) + "|")
    for label, key, fmt in rows:
        print(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in results) + " |")
    ok = all(r["speedup"] >= 15 for r in results)
    print(f"target speed-up >= 15x: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
