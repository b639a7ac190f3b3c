"""Diffusion-augmentation ablation on CK+48 (Ji et al. 2026, Table 2 "remove DDPM augmentation", Table 3, Table 4).

One command::

    python scripts/run_augmentation_ablation.py --data ../shared/data/ckplus48 --out runs/ldm_ablation

Every step is one ``cli.py`` run of a shipped config, started by the experiment driver (``scripts/experiments.py``)
with the script's options as overrides; each run folder ``<out>/<step>/`` holds its ``checkpoints/``,
``config.yaml``, ``output.log`` and ``run.json``. Steps (each reuses its result when the file exists, unless
``--fresh``):

1. subject-disjoint split of CK+48 (the configs' ``split: group``), faces resized to ``--size`` pixels, one split
   file ``<out>/split.json`` shared by every step;
2. baseline recognition model (``configs/fer/baselines/resnet18_ckplus48.yaml`` with ``--clf-model``) trained on
   the REAL train split for ``--clf-steps`` steps; best-on-val checkpoint, tested by ``fit``. It is also the frozen
   encoder of the consistency loss (eq. 2) and the classifier of the quality filter and of FD-clf/KID-clf (so these
   are features of a classifier trained in the project, not Inception);
3. the VAE (``configs/ldm/vae_ckplus48.yaml``) on the real train split (reconstruction + KL);
4. the LDM (``configs/ldm/ldm_ckplus48.yaml``, a ``--ldm-width`` UNet: eq. 1 cross-attention conditioning, DDPM
   MSE + eq. 2 consistency loss, label dropout);
5. generation (``cli.py predict --config configs/ldm/generate_ckplus48.yaml``; plan: ``--total-multiplier`` x the
   train set, contempt and fear raised ``--scarce-multiplier`` x), DDIM with classifier-free guidance, quality
   filter;
6. the same recognition model trained on real + generated images (``extra_roots``) with the SAME number of
   optimiser steps; both models evaluated on the untouched real test split.

Writes ``<out>/ablation.md`` and ``<out>/ablation.csv``: accuracy, macro F1, mean class accuracy, recall of contempt
and fear, FD-clf / KID-clf of the generated set with the real-vs-real floor, IS-clf, and classifier accuracy on the
generated images.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from scripts import experiments as ex

CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
SCARCE = ["contempt", "fear"]
MEAN = STD = (0.5, 0.5, 0.5)
CLF_CONFIG = ex.REPO / "configs" / "fer" / "baselines" / "resnet18_ckplus48.yaml"
VAE_CONFIG = ex.REPO / "configs" / "ldm" / "vae_ckplus48.yaml"
LDM_CONFIG = ex.REPO / "configs" / "ldm" / "ldm_ckplus48.yaml"
GENERATE_CONFIG = ex.REPO / "configs" / "ldm" / "generate_ckplus48.yaml"
KEYS = ["acc", "macro_f1", "mean_class_acc", "recall_contempt", "recall_fear"]
QUALITY_KEYS = ["fd_clf", "fd_clf_floor", "kid_clf", "kid_clf_floor", "is_clf"]
log = logging.getLogger("ablation")


def data_args(args: argparse.Namespace, out: Path, prefix: str = "--data.init_args.", batch_size: int | None = None,
              extra: list[str] | None = None) -> list[str]:
    """The face data of every step: CK+48 at ``--size`` px, no descriptor, one split file, local cache."""
    a = {"root": str(Path(args.data).resolve()), "crop.image_size": args.size, "descriptor.kind": "none",
         "batch_size": batch_size or args.batch_size, "num_workers": 0, "seed": args.seed, "progress": "none",
         "cache_dir": str(out / "cache"), "split_file": str(out / "split.json")}
    if extra:
        a["extra_roots"] = json.dumps(extra)
    return [x for k, v in a.items() for x in (prefix + k, str(v))]


def quiet(run_dir: Path, steps: int) -> list[str]:
    """Step budget, no logger, checkpoints in ``<run_dir>/checkpoints``."""
    return ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.num_sanity_val_steps", "0", "--checkpoint.dirpath", str(run_dir / "checkpoints")]


def clf_run(args: argparse.Namespace, out: Path, name: str, extra: list[str] | None) -> ex.Run:
    """The recognition model (the ResNet-18 config with ``--clf-model``) for ``--clf-steps`` steps, validated every
    ``--clf-val-every`` steps, best-on-``val/loss`` checkpoint tested by ``fit``."""
    run_dir = out / name
    return ex.Run(name, args.seed, (CLF_CONFIG,), run_dir, (
        *data_args(args, out, extra=extra), *quiet(run_dir, args.clf_steps),
        "--model.init_args.net.init_args.model_name", args.clf_model,
        "--model.init_args.optimizer.init_args.lr", str(args.clf_lr),
        "--model.init_args.scheduler", "null",  # a constant lr: validation runs every N steps, not every epoch
        "--trainer.val_check_interval", str(args.clf_val_every), "--trainer.check_val_every_n_epoch", "null",
        "--trainer.callbacks.init_args.dirpath", str(run_dir / "confusion_matrices"),
        "--checkpoint.filename", "best", "--checkpoint.monitor", "val/loss", "--checkpoint.mode", "min",
    ))


def scores(counts: np.ndarray) -> dict[str, Any]:
    """Accuracy, macro F1 (over the classes present in labels or predictions), mean class accuracy (recall over all
    classes) and the recall of the scarce classes, from test confusion counts (rows: true class)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diag(counts)
    support, predicted = counts.sum(1), counts.sum(0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    present = (support > 0) | (predicted > 0)
    res: dict[str, Any] = {"acc": float(tp.sum() / max(counts.sum(), 1)), "macro_f1": float(f1[present].mean()),
                           "mean_class_acc": float(recall.mean()), "n_test": int(counts.sum())}
    for c in SCARCE:
        res[f"recall_{c}"] = float(recall[CLASSES.index(c)])
        res[f"n_test_{c}"] = int(support[CLASSES.index(c)])
    return res


def recognition(args: argparse.Namespace, out: Path, name: str, extra: list[str] | None) -> tuple[Path, dict]:
    """Train (or reuse) the recognition model; its best checkpoint and its test scores."""
    run = clf_run(args, out, name, extra)
    ckpt = run.run_dir / "checkpoints" / "best.ckpt"
    record = ex.read_record(run.run_dir)
    if args.fresh or not ckpt.is_file() or not record.get("confusion"):
        record = ex.launch(run)
    if not record.get("confusion"):
        raise ex.RunFailed(f"{name}: no test confusion matrix recorded; see {run.run_dir / ex.LOG_FILE}")
    return ckpt, scores(np.array(record["confusion"]))


def vae_size_key() -> str:
    """Where the VAE config types its ``sample_size`` (the autoencoder's ``class_path`` entry, or the system)."""
    init = ex.compose_configs([VAE_CONFIG])["model"].get("init_args", {})
    return "--model.init_args.vae.init_args.sample_size" if "vae" in init else "--model.init_args.sample_size"


def unet_args(args: argparse.Namespace, prefix: str = "--model.init_args.net.init_args.") -> list[str]:
    """The script's small conditional UNet: ``--ldm-width`` channels, latents of ``--size`` / 4."""
    w = args.ldm_width
    a = {"sample_size": args.size // 4, "block_out_channels": f"[{w}, {2 * w}]", "layers_per_block": 1,
         "cross_attention_dim": 64, "attention_head_dim": 8, "norm_num_groups": 8}
    return [x for k, v in a.items() for x in (prefix + k, str(v))]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "ckplus48"))
    ap.add_argument("--out", default="runs/ldm_ablation")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--clf-model", default="resnet10t")
    ap.add_argument("--clf-steps", type=int, default=800)
    ap.add_argument("--clf-val-every", type=int, default=100)
    ap.add_argument("--clf-lr", type=float, default=1e-3)
    ap.add_argument("--vae-steps", type=int, default=500)
    ap.add_argument("--ldm-steps", type=int, default=2000)
    ap.add_argument("--ldm-width", type=int, default=32)
    ap.add_argument("--consistency", default="triplet", choices=["none", "triplet", "contrastive"])
    ap.add_argument("--consistency-weight", type=float, default=0.1)
    ap.add_argument("--total-multiplier", type=float, default=2.0)
    ap.add_argument("--scarce-multiplier", type=float, default=4.0)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--min-confidence", type=float, default=0.3)
    ap.add_argument("--duplicate-metric", default="mse", choices=["cosine", "mse", "none"],
                    help="near-duplicate test; cosine of a weak classifier's features is uninformative")
    ap.add_argument("--duplicate-threshold", type=float, default=0.002,
                    help="pixel MSE (images in [0, 1]) at or below which an image counts as memorised")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is much faster than 2 on a shared 2-core machine)")
    ap.add_argument("--fresh", action="store_true", help="retrain every stage")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in every cli.py run
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.data).is_dir():
        raise SystemExit(f"CK+48 folder not found: {args.data}")
    timings = {}

    # 2. baseline recognition (real only)
    t0 = time.time()
    base_ckpt, base = recognition(args, out, "clf_real", None)
    timings["clf_real"] = time.time() - t0
    log.info("baseline: %s", base)

    # 3. VAE
    t0 = time.time()
    vae_dir = out / "vae"
    vae_ckpt = vae_dir / "checkpoints" / "last.ckpt"
    if not vae_ckpt.is_file() or args.fresh:
        ex.launch(ex.Run("vae", args.seed, (VAE_CONFIG,), vae_dir, (
            *data_args(args, out), *quiet(vae_dir, args.vae_steps), vae_size_key(), str(args.size),
            "--trainer.callbacks.init_args.dirpath", str(vae_dir / "reconstructions"), "--test_after_fit", "false",
        )))
    timings["vae"] = time.time() - t0

    # 4. LDM
    t0 = time.time()
    ldm_dir = out / "ldm"
    ldm_ckpt = ldm_dir / "checkpoints" / "last.ckpt"
    if not ldm_ckpt.is_file() or args.fresh:
        enc = "--model.init_args.consistency_encoder"
        consistency = ([enc, "null"] if args.consistency == "none" else
                       [enc + ".init_args.model_name", args.clf_model, enc + ".init_args.checkpoint_path",
                        str(base_ckpt)])
        ex.launch(ex.Run("ldm", args.seed, (LDM_CONFIG,), ldm_dir, (
            *data_args(args, out, batch_size=64), *quiet(ldm_dir, args.ldm_steps), *unet_args(args),
            "--model.init_args.vae_path", str(vae_ckpt),
            "--model.init_args.consistency", args.consistency,
            "--model.init_args.consistency_weight", str(args.consistency_weight), *consistency,
            "--model.init_args.num_inference_steps", str(args.ddim_steps),
            "--model.init_args.guidance_scale", str(args.guidance),
            "--trainer.callbacks.init_args.dirpath", str(ldm_dir / "samples"), "--test_after_fit", "false",
        )))
    timings["ldm"] = time.time() - t0

    # 5. generation (resumable: finished jobs are skipped)
    t0 = time.time()
    aug_root = out / "augmented"
    quality = {"classifier": {"init_args": {"model_name": args.clf_model, "checkpoint_path": str(base_ckpt)}},
               "min_confidence": args.min_confidence, "ood_quantile": None,
               "duplicate_metric": args.duplicate_metric, "duplicate_threshold": args.duplicate_threshold,
               "reference_root": str(Path(args.data).resolve())}
    ex.launch(ex.Run("generate", args.seed, (GENERATE_CONFIG,), out / "generate", (
        "--ckpt_path", str(ldm_ckpt), *unet_args(args),
        "--model.init_args.vae_path", str(vae_ckpt),
        "--model.init_args.num_inference_steps", str(args.ddim_steps),
        "--model.init_args.guidance_scale", str(args.guidance),
        *data_args(args, out, prefix="--data.init_args.source_config.init_args."),
        "--data.init_args.output_root", str(aug_root),
        "--data.init_args.total_multiplier", str(args.total_multiplier),
        "--data.init_args.scarce_multiplier", str(args.scarce_multiplier),
        "--data.init_args.batch_size", "64", "--data.init_args.base_seed", str(args.seed),
        "--trainer.default_root_dir", str(out / "generate"), "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks.init_args.progress", "none",
        # the quality filter of the config with this script's settings (its class_path and the rest kept)
        "--trainer.callbacks.init_args.quality", json.dumps({"init_args": quality}),
    ), subcommand="predict"))
    summary = json.loads((aug_root / "manifest_summary.json").read_text())
    timings["generate"] = time.time() - t0

    # quality of the generated set vs the real images (features of the baseline classifier)
    from metrics.generation import generation_quality, load_image_folder
    from models.frozen_classifier import FrozenImageEncoder

    clf = FrozenImageEncoder(args.clf_model, num_classes=len(CLASSES), checkpoint_path=str(base_ckpt))
    real, _, _ = load_image_folder(args.data, CLASSES, args.size)  # read only
    gen, gen_labels, _ = load_image_folder(aug_root, CLASSES, args.size)
    q = generation_quality(clf, real, gen, gen_labels, CLASSES, mean=MEAN, std=STD)

    # 6. recognition with the augmented set, same number of steps
    t0 = time.time()
    _, augm = recognition(args, out, "clf_augmented", [str(aug_root)])
    timings["clf_augmented"] = time.time() - t0

    rows = [{"train set": "real only", **base}, {"train set": "real + generated", **augm}]
    plan = summary.get("plan") or {}
    accepted = {c: v.get("accepted", 0) for c, v in summary.get("per_class", {}).items()}
    md = [f"# Diffusion augmentation ablation, CK+48 {args.size}x{args.size}, subject-disjoint split",
          "", (f"Recognition: {args.clf_model}, {args.clf_steps} optimiser steps each, best-on-val checkpoint; "
               f"test n={base['n_test']} (contempt {base['n_test_contempt']}, fear {base['n_test_fear']})."), "",
          "| train set | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    for r in rows:
        md.append(f"| {r['train set']} | " + " | ".join(f"{100 * r[k]:.2f}" for k in KEYS) + " |")
    md += ["", "Generated set (features of the baseline classifier, NOT Inception):", "",
           "| metric | generated vs real | real vs real floor |", "|---|---|---|",
           f"| FD-clf | {q['fd_clf']:.3f} | {q['fd_clf_floor']:.3f} |",
           f"| KID-clf | {q['kid_clf']:.4f} | {q['kid_clf_floor']:.4f} |",
           f"| IS-clf | {q['is_clf']:.3f} | {q['is_clf_real']:.3f} (real) |", "",
           "Classifier accuracy on generated images: " + ", ".join(
               f"{k.split('/')[1]} {100 * v:.1f}%" for k, v in q.items() if k.startswith("acc_clf/")), "",
           (f"Generation summary: {json.dumps(summary['total'])} (quality filter: confidence >= "
            f"{args.min_confidence}, {args.duplicate_metric} duplicate threshold {args.duplicate_threshold})"), "",
           "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), "",
           "Plan (images to generate per class / accepted):", "```",
           *(f"{c:>10}: {n:5d} / {accepted.get(c, 0)}" for c, n in plan.items()), "```"]
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    ex.write_rows([{"train set": r["train set"], **{k: f"{r[k]:.4f}" for k in KEYS},
                    **{k: f"{q[k]:.4f}" for k in QUALITY_KEYS}} for r in rows],
                  out / "ablation.csv", ["train set", *KEYS, *QUALITY_KEYS])
    print("\n".join(md))


if __name__ == "__main__":
    main()
