"""Real-data face-expression experiment: two-branch Swin vs its global-only ablation vs timm baselines.

Every model trains under the SAME CPU budget (same number of epochs, same ``max_time`` cap, same data module
settings and seed) through its experiment config in ``configs/fer/`` (so the configs are what is measured), is
evaluated on the test split with its best-on-validation checkpoint, and one row per (model, dataset, seed) goes to
``<out>/results.csv`` and ``<out>/results.md`` (accuracy, mean class accuracy, macro F1, wall-clock seconds of
training, epochs run, parameter count). With several ``--seeds`` (training seed only: the split stays fixed),
``results.md`` adds mean ± standard deviation per model: on ~150 test faces one seed moves accuracy by several
points, so single-seed rankings of close models are not evidence.

Datasets (``<data_root>/<name>``, never copied): CK+48 (subject-disjoint split by ``S<id>``) and JAFFE (Haar
face detection + crop, poser-disjoint split). Each dataset's crops/descriptor maps are cached once under
``<out>/cache/<dataset>`` and shared by all models.

Usage (from the repository root)::

    python scripts/run_fer_experiment.py --out runs/fer_experiment          # 5 epochs each, ~20 min on 2 cores
    python scripts/run_fer_experiment.py --out runs/fer_quick --epochs 2 --datasets ckplus48 \\
        --models swin2b swin_global
    python scripts/run_fer_experiment.py --out runs/fer_seeds --datasets ckplus48 --epochs 15 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from common.io import atomic_write

log = logging.getLogger("run_fer_experiment")

DATASETS = ("ckplus48", "jaffe")
#: model key -> config path pattern (``{ds}`` = dataset name); baselines reuse their CK+48 config and switch the
#: data block with ``configs/data/<dataset>.yaml``.
MODELS: dict[str, str | tuple[str, ...]] = {
    "swin2b": "configs/fer/swin2b_{ds}.yaml",
    # the LAVT reading of the local gate: a delta over the paper's model
    "swin2b_sigmoid": ("configs/fer/swin2b_{ds}.yaml", "configs/fer/variants/sigmoid_gate.yaml"),
    "swin_global": "configs/fer/swin_global_{ds}.yaml",
    "swin2b_sep": "configs/fer/swin2b_sep_ckplus48.yaml",
    "swin2b_add": "configs/fer/swin2b_add_ckplus48.yaml",
    "swin2b_late": "configs/fer/swin2b_late_ckplus48.yaml",
    "resnet18": "configs/fer/baselines/resnet18_ckplus48.yaml",
    "resnet50": "configs/fer/baselines/resnet50_ckplus48.yaml",
    "mae_vit": "configs/fer/baselines/mae_vit_ckplus48.yaml",
    "poster": "configs/fer/baselines/poster_ckplus48.yaml",
    "vgg16": "configs/fer/baselines/vgg16_ckplus48.yaml",
    "efficientnet_b0": "configs/fer/baselines/efficientnet_b0_ckplus48.yaml",
    "vit_small": "configs/fer/baselines/vit_small_ckplus48.yaml",
    "convnext_tiny": "configs/fer/baselines/convnext_tiny_ckplus48.yaml",
    "maxvit": "configs/fer/baselines/maxvit_ckplus48.yaml",
}
COLUMNS = ("model", "dataset", "seed", "accuracy", "mean_class_accuracy", "macro_f1", "seconds", "epochs", "best_epoch",
           "params_m", "n_test")


def write_tables(rows: list[dict], out: Path, note: str, stem: str = "results",
                 title: str = "Face-expression experiment") -> None:
    """``<out>/<stem>.csv`` and ``<out>/<stem>.md`` (per-run rows, then mean ± std over seeds), atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(out / f"{stem}.csv", "w", newline="") as fh:
        fh.write(buf.getvalue())
    lines = [
        f"# {title} (test split, best-on-val checkpoint)",
        "",
        note,
        "",
        ("| model | dataset | seed | accuracy | mean class acc. | macro F1 | seconds | epochs | best epoch "
         "| params (M) | n test |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['seed']} | {r['accuracy']:.4f} | {r['mean_class_accuracy']:.4f} | "
            f"{r['macro_f1']:.4f} | {r['seconds']:.0f} | {r['epochs']} | {r['best_epoch']} | {r['params_m']:.2f} | "
            f"{r['n_test']} |"
        )
    lines += summary_lines(rows)
    with atomic_write(out / f"{stem}.md", "w", newline="") as fh:
        fh.write("\n".join(lines) + "\n")


def summary_lines(rows: list[dict]) -> list[str]:
    """Mean +- sample standard deviation over seeds per (model, dataset); empty when every pair has one seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["dataset"]), []).append(r)
    if all(len(g) < 2 for g in groups.values()):
        return []

    def cell(values: list[float], fmt: str) -> str:
        if len(values) < 2:
            return format(values[0], fmt)
        return f"{statistics.mean(values):{fmt}} ± {statistics.stdev(values):{fmt}}"

    lines = [
        "",
        "## Mean ± standard deviation over seeds (same split, seed_everything varied)",
        "",
        "| model | dataset | seeds | accuracy | mean class acc. | macro F1 | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for (model, dataset), g in groups.items():
        lines.append(
            f"| {model} | {dataset} | {len(g)} | {cell([r['accuracy'] for r in g], '.3f')} | "
            f"{cell([r['mean_class_accuracy'] for r in g], '.3f')} | {cell([r['macro_f1'] for r in g], '.3f')} | "
            f"{cell([r['seconds'] for r in g], '.0f')} |"
        )
    return lines


def model_configs(model: str, dataset: str) -> list[Path]:
    """The config files of ``model`` on ``dataset`` (a base config, then any deltas), checked to exist."""
    entry = MODELS[model]
    paths = [REPO / p.format(ds=dataset) for p in ((entry,) if isinstance(entry, str) else entry)]
    for config in paths:
        if not config.exists():
            raise FileNotFoundError(f"run_fer_experiment: no config {config} for model {model!r} on {dataset!r}")
    return paths


CONFUSION_FILE = "test_confusion.json"


def write_confusion(path: Path, counts, class_names: list[str]) -> None:
    """A run's test confusion counts (rows: true class, columns: prediction) and class names, as JSON (atomic)."""
    with atomic_write(path, "w") as fh:
        json.dump({"class_names": list(class_names), "counts": [[int(c) for c in row] for row in counts.tolist()]},
                  fh)


def read_confusion(path: Path):
    """``(counts [K, K] int64 tensor, class names)`` from :func:`write_confusion`'s file; ``ValueError`` naming the
    file when it is not such a file."""
    import torch

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no saved test confusion matrix (was the run made by this script?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a JSON confusion file ({err})") from None
    names, counts = (data.get("class_names"), data.get("counts")) if isinstance(data, dict) else (None, None)
    k = len(names) if isinstance(names, list) else -1
    if (k < 1 or not all(isinstance(n, str) for n in names) or not isinstance(counts, list) or len(counts) != k
            or not all(isinstance(r, list) and len(r) == k and all(isinstance(c, int) and c >= 0 for c in r)
                       for r in counts)):
        raise ValueError(f"{path}: expected {{'class_names': [K names], 'counts': K x K non-negative integers}}")
    return torch.tensor(counts, dtype=torch.long), names


def _uses_epoch_schedule(configs: list[Path]) -> bool:
    """Whether the resolved scheduler is WarmupCosineLR (its max_epochs must follow --epochs)."""
    import yaml

    sched = None
    for config in configs:
        s = ((yaml.safe_load(config.read_text()) or {}).get("model") or {}).get("init_args", {}).get("scheduler")
        if s is not None:
            sched = s.get("class_path")
    return sched == "lightning_modules.schedulers.WarmupCosineLR"


def _max_time(minutes: float) -> str:
    """Lightning's ``DD:HH:MM:SS`` for a cap of ``minutes`` (fractions allowed, e.g. 1.5)."""
    if minutes <= 0:
        raise ValueError(f"--max-minutes must be positive, got {minutes}")
    total = round(minutes * 60)
    return f"{total // 86400:02d}:{total // 3600 % 24:02d}:{total // 60 % 60:02d}:{total % 60:02d}"


def run_one(model: str, dataset: str, seed: int, args: argparse.Namespace, out: Path,
            extra_args: list[str] | None = None, tag: str | None = None, callbacks: list | None = None) -> dict:
    """Train ``model`` on ``dataset`` with ``seed`` through its configs, test its best-on-val checkpoint.

    Args:
        extra_args: further CLI arguments (after the script's own, so they win), e.g. ``extra_roots``.
        tag: run-folder name (default the model key); the row's ``model`` column stays the model key.
        callbacks: callback objects appended to the trainer before fitting (e.g. a learning-curve recorder).
    """
    from cli import cli_main

    configs = model_configs(model, dataset)
    run_dir = out / "runs" / dataset / (tag or model) / f"seed{seed}"
    cli_args = [a for c in configs for a in ("--config", str(c))] + [
        "--config", str(REPO / "configs" / "data" / f"{dataset}.yaml"),
        "--seed_everything", str(seed),
        "--data.init_args.root", str(Path(args.data_root).resolve() / dataset),
        "--data.init_args.cache_dir", str(out / "cache" / dataset),
        "--data.init_args.image_size", str(args.image_size),
        "--data.init_args.batch_size", str(args.batch_size),
        "--data.init_args.num_workers", "0",
        "--data.init_args.progress", "none",
        "--trainer.max_epochs", str(args.epochs),
        "--trainer.max_time", _max_time(args.max_minutes),
        *(["--trainer.limit_train_batches", str(args.limit_batches), "--trainer.limit_val_batches",
            str(args.limit_batches)] if getattr(args, "limit_batches", None) else []),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(run_dir),
        "--trainer.logger.name", "logs",
        "--trainer.callbacks", "callbacks.confusion_matrix.ConfusionMatrixLogger",
        "--trainer.callbacks.dirpath", str(run_dir / "confusion_matrices"),
        "--checkpoint.dirpath", str(run_dir / "checkpoints"),
        "--checkpoint.monitor", "val/acc",
        "--checkpoint.mode", "max",
    ]
    if dataset == "jaffe" and args.jaffe_stratified:
        cli_args += ["--data.init_args.split", "stratified"]
    if _uses_epoch_schedule(configs):
        cli_args += ["--model.init_args.scheduler.init_args.max_epochs", str(args.epochs),
                     "--model.init_args.scheduler.init_args.warmup_epochs", str(min(5, max(args.epochs // 5, 0)))]
    cli_args += list(extra_args or [])
    cli = cli_main(cli_args, run=False)
    trainer, lit, dm = cli.trainer, cli.model, cli.datamodule
    for cb in callbacks or []:
        trainer.callbacks.append(cb)
    start = time.perf_counter()
    trainer.fit(lit, datamodule=dm)
    seconds = time.perf_counter() - start
    ckpt = trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None and ckpt.best_model_path else None
    metrics = trainer.test(lit, datamodule=dm, ckpt_path=best, verbose=False)[0]
    best_epoch = ""
    if best:
        import torch

        best_epoch = torch.load(best, map_location="cpu", weights_only=True)["epoch"]
    confusion = lit.confusion_matrices.get("test")
    n_test = int(confusion.sum()) if confusion is not None else 0
    if confusion is not None:  # kept so figures (Fig. 10) can be drawn from finished runs
        write_confusion(run_dir / CONFUSION_FILE, confusion, list(lit.class_names))
    return {
        "model": model,
        "dataset": dataset,
        "seed": seed,
        "accuracy": float(metrics["test/acc"]),
        "mean_class_accuracy": float(metrics["test/mean_class_acc"]),
        "macro_f1": float(metrics["test/f1_macro"]),
        "seconds": seconds,
        "epochs": trainer.current_epoch,
        "best_epoch": best_epoch,
        "params_m": sum(p.numel() for p in lit.net.parameters()) / 1e6,
        "n_test": n_test,
        # not table columns: the test confusion matrix and class names (Fig. 10), the per-epoch curve
        "confusion": confusion,
        "class_names": list(lit.class_names),
    }


def build_parser(description: str, default_out: str = "runs/fer_experiment") -> argparse.ArgumentParser:
    """The options every face-experiment script shares (data, budget, seeds)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", default=default_out, help="output directory (created)")
    parser.add_argument("--data-root", default=str(REPO / ".." / "shared" / "data"),
                        help="folder holding ckplus48/ and jaffe/")
    parser.add_argument("--datasets", nargs="+", default=["ckplus48"], choices=DATASETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42],
                        help="training seeds (seed_everything: init, shuffling, dropout); the split stays fixed")
    parser.add_argument("--epochs", type=int, default=5, help="same epoch budget for every model")
    parser.add_argument("--max-minutes", type=float, default=8, help="same wall-clock cap for every model (minutes)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jaffe-stratified", action="store_true",
                        help="stratified JAFFE split instead of poser-disjoint")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--limit-batches", type=int, default=None, help="cap train/val batches per epoch (smoke runs)")
    return parser


def prepare_run(args: argparse.Namespace) -> Path:
    """Logging, offline env, threads, the output folder; checks the dataset folders exist."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for ds in args.datasets:
        if not (Path(args.data_root) / ds).is_dir():
            raise FileNotFoundError(f"run_fer_experiment: dataset folder {Path(args.data_root) / ds} not found")
    return out


def budget_note(args: argparse.Namespace) -> str:
    return (
        f"Equal budget per model: {args.epochs} epochs capped at {args.max_minutes} min, {args.image_size} px, "
        f"batch {args.batch_size}, {args.threads} CPU threads, training seeds "
        f"{', '.join(map(str, args.seeds))} (the data config's split seed), random init. CK+48: subject-disjoint "
        f"70/15/15 split; JAFFE: Haar face crop, {'stratified' if args.jaffe_stratified else 'poser-disjoint'} "
        "split. 'seconds' = wall-clock training time (fit incl. validation)."
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser(__doc__.splitlines()[0])
    parser.set_defaults(datasets=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=["swin2b", "swin_global", "resnet50", "efficientnet_b0"],
                        choices=sorted(MODELS))
    args = parser.parse_args(argv)
    out = prepare_run(args)
    note = budget_note(args)
    rows: list[dict] = []
    for ds in args.datasets:
        for seed in args.seeds:
            for model in args.models:
                log.info("=== %s on %s, seed %d ===", model, ds, seed)
                row = run_one(model, ds, seed, args, out)
                log.info("%s", row)
                rows.append(row)
                write_tables(rows, out, note)  # partial tables survive an interrupted run
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
