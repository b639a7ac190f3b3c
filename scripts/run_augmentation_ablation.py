"""Diffusion-augmentation ablation on CK+48 (Ji et al. 2026, Table 2 "remove DDPM augmentation", Table 3, Table 4).

One command::

    python scripts/run_augmentation_ablation.py --data ../shared/data/ckplus48 --out runs/ldm_ablation

Steps (each reuses its result when the file exists, unless ``--fresh``):

1. subject-disjoint split of CK+48 (``FERDataModule(split="group")``), faces resized to ``--size`` pixels;
2. baseline recognition model (``LitFER`` + ``TimmClassifier``) trained on the REAL train split; best-on-val
   checkpoint. It is also the frozen encoder of the consistency loss (eq. 2) and the classifier of the quality
   filter and of FD-clf/KID-clf (so these are features of a classifier trained in the project, not Inception);
3. ``LitVAE`` on the real train split (reconstruction + KL), exported as a diffusers directory;
4. ``LitLDM`` (eq. 1 cross-attention conditioning, DDPM MSE + eq. 2 consistency loss, label dropout);
5. generation with ``GenerationDataModule`` + ``AugmentedImageWriter`` (plan: ``--total-multiplier`` x the train set,
   contempt and fear raised ``--scarce-multiplier`` x), DDIM with classifier-free guidance, quality filter;
6. the same recognition model trained on real + generated images (``extra_roots``) with the SAME number of
   optimiser steps; both models evaluated on the untouched real test split.

Writes ``<out>/ablation.md`` and ``<out>/ablation.csv``: accuracy, macro F1, mean class accuracy, recall of contempt
and fear, FD-clf / KID-clf of the generated set with the real-vs-real floor, IS-clf, and classifier accuracy on the
generated images.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from sklearn.metrics import accuracy_score, f1_score, recall_score

from callbacks.augmented_writer import AugmentedImageWriter, summarize_augmentation_manifest
from datamodules.fer import FERDataModule
from datamodules.generation import GenerationDataModule, format_plan
from lightning_modules.fer import LitFER
from lightning_modules.ldm import LitLDM, LitVAE, load_ldm
from metrics.generation import QualityFilter, generation_quality, load_image_folder
from models.diffusion import ConditionalLatentUNet
from models.frozen_classifier import FrozenImageEncoder
from models.timm_classifier import TimmClassifier

CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]
SCARCE = ["contempt", "fear"]
MEAN = STD = (0.5, 0.5, 0.5)
log = logging.getLogger("ablation")


def fer_data(args: argparse.Namespace, extra: list[str] | None = None, batch_size: int | None = None
             ) -> FERDataModule:
    return FERDataModule(
        root=args.data, class_names=CLASSES, extra_roots=extra, image_size=args.size, face_detection="none",
        descriptor="none", split="group", subject_pattern=r"^(S\d+)_", mean=MEAN, std=STD,
        batch_size=batch_size or args.batch_size, num_workers=0, seed=args.seed, progress="none",
        cache_dir=str(Path(args.out) / "cache"), split_file=str(Path(args.out) / "split.json"),
    )


def trainer(out: Path, name: str, max_steps: int, monitor: str | None = None, mode: str = "min",
            val_every: int | None = None) -> tuple[Trainer, ModelCheckpoint | None]:
    cbs = []
    ckpt = None
    if monitor:
        ckpt = ModelCheckpoint(dirpath=out / name, filename="best", monitor=monitor, mode=mode, save_last=True)
        cbs.append(ckpt)
    t = Trainer(accelerator="cpu", max_steps=max_steps, max_epochs=-1, logger=False, callbacks=cbs,
                enable_progress_bar=False, enable_model_summary=False, default_root_dir=out / name,
                enable_checkpointing=bool(monitor), val_check_interval=val_every, check_val_every_n_epoch=None
                if val_every else 1, num_sanity_val_steps=0)
    return t, ckpt


def own_checkpoints():
    """``torch.load(weights_only=True)`` of this script's own recognition checkpoints: their hyper-parameters hold
    the Python partials built here, read with exactly these globals allowed (a partial of an allowed class is
    rebuilt, never called), so a planted file still runs no code. Every load of them goes through this."""
    return torch.serialization.safe_globals([functools.partial, TimmClassifier, torch.optim.AdamW])


def recognition(args, out: Path, name: str, extra: list[str] | None) -> tuple[Path, dict]:
    """Train the recognition model for ``--clf-steps`` steps, keep the best-on-val checkpoint, test it."""
    ckpt_path = out / name / "best.ckpt"
    dm = fer_data(args, extra)
    if not ckpt_path.is_file() or args.fresh:
        seed_everything(args.seed)
        net = functools.partial(TimmClassifier, model_name=args.clf_model)
        model = LitFER(net, optimizer=functools.partial(torch.optim.AdamW, lr=args.clf_lr, weight_decay=1e-3))
        t, _ = trainer(out, name, args.clf_steps, monitor="val/loss", mode="min", val_every=args.clf_val_every)
        t0 = time.time()
        t.fit(model, datamodule=dm)
        log.info("%s trained in %.0f s", name, time.time() - t0)
    with own_checkpoints():
        model = LitFER.load_from_checkpoint(str(ckpt_path), map_location="cpu", weights_only=True).eval()
    dm.prepare_data()
    dm.setup("test")
    preds, labels = [], []
    with torch.no_grad():
        for batch in dm.test_dataloader():
            preds.append(model(batch).argmax(1))
            labels.append(batch["label"])
    p, y = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    rec = recall_score(y, p, labels=list(range(len(CLASSES))), average=None, zero_division=0)
    res = {"acc": accuracy_score(y, p), "macro_f1": f1_score(y, p, average="macro", zero_division=0),
           "mean_class_acc": float(np.mean(rec)), "n_test": len(y)}
    for c in SCARCE:
        res[f"recall_{c}"] = float(rec[CLASSES.index(c)])
        res[f"n_test_{c}"] = int((y == CLASSES.index(c)).sum())
    return ckpt_path, res


def main() -> None:
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
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
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
    if not (vae_dir / "config.json").is_file() or args.fresh:
        seed_everything(args.seed)
        vae = LitVAE(block_out_channels=(32, 64, 64), latent_channels=4, norm_num_groups=16, sample_size=args.size,
                     kl_weight=1e-3, image_mean=MEAN, image_std=STD,
                     optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
        t, _ = trainer(out, "vae_run", args.vae_steps)
        t.fit(vae, datamodule=fer_data(args))
        vae.export_pretrained(vae_dir)
    timings["vae"] = time.time() - t0

    # 4. LDM
    t0 = time.time()
    ldm_ckpt = out / "ldm.ckpt"
    if not ldm_ckpt.is_file() or args.fresh:
        seed_everything(args.seed)
        w = args.ldm_width
        net = ConditionalLatentUNet(len(CLASSES), sample_size=args.size // 4, latent_channels=4,
                                    block_out_channels=(w, 2 * w), layers_per_block=1, cross_attention_dim=64,
                                    attention_head_dim=8, norm_num_groups=8)
        enc = None
        if args.consistency != "none":
            with own_checkpoints():
                enc = FrozenImageEncoder(args.clf_model, num_classes=len(CLASSES), checkpoint_path=str(base_ckpt))
        ldm = LitLDM(net, vae_path=str(vae_dir), class_names=CLASSES, consistency=args.consistency,
                     consistency_weight=args.consistency_weight, consistency_encoder=enc, p_uncond=0.1,
                     beta_schedule="squaredcos_cap_v2", num_inference_steps=args.ddim_steps,
                     guidance_scale=args.guidance, image_mean=MEAN, image_std=STD,
                     optimizer=functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=1e-4))
        t, _ = trainer(out, "ldm_run", args.ldm_steps)
        t.fit(ldm, datamodule=fer_data(args, batch_size=64))
        t.save_checkpoint(ldm_ckpt)
    timings["ldm"] = time.time() - t0

    # 5. generation
    t0 = time.time()
    aug_root = out / "augmented"
    ldm = load_ldm(ldm_ckpt).eval()
    ldm.hparams.num_inference_steps = args.ddim_steps
    ldm.hparams.guidance_scale = args.guidance
    with own_checkpoints():
        clf = FrozenImageEncoder(args.clf_model, num_classes=len(CLASSES), checkpoint_path=str(base_ckpt))
    quality = QualityFilter(clf, min_confidence=args.min_confidence, duplicate_metric=args.duplicate_metric,
                            duplicate_threshold=args.duplicate_threshold, reference_root=args.data, class_names=CLASSES,
                            mean=MEAN, std=STD)
    gen_dm = GenerationDataModule(source=fer_data(args), output_root=str(aug_root),
                                  total_multiplier=args.total_multiplier, scarce_multiplier=args.scarce_multiplier,
                                  scarce_classes=SCARCE, batch_size=64, base_seed=args.seed)
    writer = AugmentedImageWriter(data_root=args.data, class_names=CLASSES, image_mode="L",
                                  quality=quality, progress="none")
    Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer]).predict(
        ldm, datamodule=gen_dm, return_predictions=False, ckpt_path=None)
    print(format_plan(gen_dm.counts, gen_dm.plan))
    summary = summarize_augmentation_manifest(aug_root)
    timings["generate"] = time.time() - t0

    # quality of the generated set vs the real images (classifier features)
    real, _, _ = load_image_folder(args.data, CLASSES, args.size)  # read only
    gen, gen_labels, _ = load_image_folder(aug_root, CLASSES, args.size)
    q = generation_quality(clf, real, gen, gen_labels, CLASSES, mean=MEAN, std=STD)

    # 6. recognition with the augmented set, same number of steps
    t0 = time.time()
    _, augm = recognition(args, out, "clf_augmented", [str(aug_root)])
    timings["clf_augmented"] = time.time() - t0

    rows = [{"train set": "real only", **base}, {"train set": "real + generated", **augm}]
    keys = ["acc", "macro_f1", "mean_class_acc", "recall_contempt", "recall_fear"]
    md = [f"# Diffusion augmentation ablation, CK+48 {args.size}x{args.size}, subject-disjoint split",
          "", (f"Recognition: {args.clf_model}, {args.clf_steps} optimiser steps each, best-on-val checkpoint; "
               f"test n={base['n_test']} (contempt {base['n_test_contempt']}, fear {base['n_test_fear']})."), "",
          "| train set | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        md.append(f"| {r['train set']} | " + " | ".join(f"{100 * r[k]:.2f}" for k in keys) + " |")
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
           "Plan:", "```", format_plan(gen_dm.counts, gen_dm.plan), "```"]
    (out / "ablation.md").write_text("\n".join(md) + "\n")
    with open(out / "ablation.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=["train set"] + keys + ["fd_clf", "fd_clf_floor", "kid_clf",
                                                                    "kid_clf_floor", "is_clf"])
        wr.writeheader()
        for r in rows:
            wr.writerow({"train set": r["train set"], **{k: f"{r[k]:.4f}" for k in keys},
                         **{k: f"{q[k]:.4f}" for k in ["fd_clf", "fd_clf_floor", "kid_clf", "kid_clf_floor",
                                                        "is_clf"]}})
    print("\n".join(md))


if __name__ == "__main__":
    main()
