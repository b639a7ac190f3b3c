"""Real-data face-expression experiment: two-branch Swin vs its global-only ablation vs timm baselines.

Every model trains under the SAME CPU budget (same number of epochs, same ``max_time`` cap, same data module
settings and seed) through its experiment config in ``configs/fer/`` (so the configs are what is measured), is
evaluated on the test split with its best-on-validation checkpoint, and one row per (model, dataset, seed) goes to
``<out>/results.csv`` and ``<out>/results.md`` (accuracy, mean class accuracy, macro F1, wall-clock seconds of
training, epochs run, parameter count). With several ``--seeds`` (training seed only: the split stays fixed),
``results.md`` adds mean ± standard deviation per model: on ~150 test faces one seed moves accuracy by several
points, so single-seed rankings of close models are not evidence. The mean ± std table is also written as
``<out>/results_summary.csv`` and drawn in ``<out>/results.png``.

Each run is one ``python cli.py fit`` process started by the experiment driver (``scripts/experiments.py``; the
run folder ``<out>/runs/<dataset>/<model>/seed<seed>/`` keeps its ``output.log``, ``config.yaml`` and
``run.json``); a failed run is listed in the tables with its error and the command exits with an error at the end.

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
import json
import logging
import os
from pathlib import Path
from typing import Any

from common.io import atomic_write
from scripts import experiments as ex

REPO = ex.REPO
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


SUMMARY = [ex.Metric("accuracy", "accuracy"), ex.Metric("mean_class_accuracy", "mean class acc."),
           ex.Metric("macro_f1", "macro F1"), ex.Metric("seconds", "seconds", ".0f")]


def write_tables(rows: list[dict], out: Path, note: str, stem: str = "results",
                 title: str = "Face-expression experiment", plot: bool = True) -> None:
    """``<out>/<stem>.csv`` (per-run rows, failed runs included with their error) and ``<out>/<stem>.md`` (per-run
    rows, then mean ± std over seeds), atomically; the summary also as ``<stem>_summary.csv`` and (``plot``)
    ``<stem>.png``."""
    ex.write_rows(rows, out / f"{stem}.csv", [*COLUMNS, "status", "error"])
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
        if not ex.ok(r):
            continue
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['seed']} | {r['accuracy']:.4f} | {r['mean_class_accuracy']:.4f} | "
            f"{r['macro_f1']:.4f} | {r['seconds']:.0f} | {r['epochs']} | {r['best_epoch']} | {r['params_m']:.2f} | "
            f"{r['n_test']} |"
        )
    lines += summary_lines(rows, out / stem, plot=plot)
    failed = ex.failures(rows, "model")
    if failed:
        lines += ["", "## Failed runs (see their output.log)", "", *(f"- {f}" for f in failed)]
    with atomic_write(out / f"{stem}.md", "w", newline="") as fh:
        fh.write("\n".join(lines) + "\n")


def summary_lines(rows: list[dict], stem: Path | None = None, plot: bool = True) -> list[str]:
    """Mean +- sample standard deviation over seeds per (model, dataset); empty when every pair has one seed. With
    ``stem``, the summary also goes to ``<stem>_summary.csv`` and (``plot``) ``<stem>.png``
    (:func:`scripts.experiments.write_summary`)."""
    by = ("model", "dataset")
    groups = ex.summarise(rows, by, SUMMARY)
    if not groups:
        return []
    if stem is not None:
        table = ex.write_summary(rows, stem, by, SUMMARY, plot=SUMMARY[:3] if plot else None,
                                 title="mean ± sd over seeds")
    else:
        table = ex.summary_table(groups, by, SUMMARY)
    if all(g.n < 2 for g in groups):
        return []
    return ["", "## Mean ± standard deviation over seeds (same split, seed_everything varied)", "", *table]


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


def fer_run(model: str, dataset: str, seed: int, args: argparse.Namespace, out: Path,
            extra_args: list[str] | None = None, tag: str | None = None,
            labels: dict[str, Any] | None = None) -> ex.Run:
    """The run of ``model`` on ``dataset`` with ``seed`` through its configs and the shared budget (``args``).

    Args:
        extra_args: further CLI arguments (after the script's own, so they win), e.g. ``extra_roots``.
        tag: run name and folder (default the model key): the row's ``model`` column.
        labels: further identifying CSV columns (e.g. ``lr``, ``batch_size``).
    """
    configs = model_configs(model, dataset)
    run_dir = out / "runs" / dataset / (tag or model) / f"seed{seed}"
    cli_args = [
        "--config", str(REPO / "configs" / "data" / f"{dataset}.yaml"),
        "--data.init_args.root", str(Path(args.data_root).resolve() / dataset),
        "--data.init_args.cache_dir", str(out / "cache" / dataset),
        "--data.init_args.crop.image_size", str(args.image_size),
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
        *ex.confusion_matrix_callbacks(run_dir),
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
    return ex.Run(tag or model, seed, tuple(configs), run_dir, tuple(cli_args), {"dataset": dataset, **(labels or {})})


def to_row(run: ex.Run, record: dict[str, Any]) -> dict[str, Any]:
    """The results row of a finished run (:class:`scripts.experiments.RunRecorder`'s record); keeps the test
    confusion matrix next to the run (``test_confusion.json``, for figures drawn later)."""
    import torch

    test = record.get("test") or {}
    missing = [k for k in ("test/acc", "test/mean_class_acc", "test/f1_macro") if k not in test]
    if missing:
        raise ex.RunFailed(f"{run.run_dir}: no test metrics {missing} recorded; see {run.run_dir / ex.LOG_FILE}")
    confusion = torch.tensor(record["confusion"], dtype=torch.long) if record.get("confusion") else None
    class_names = list(record.get("class_names") or [])
    if confusion is not None:
        write_confusion(run.run_dir / CONFUSION_FILE, confusion, class_names)
    return {
        "model": run.name,
        **run.labels,
        "seed": run.seed,
        "accuracy": test["test/acc"],
        "mean_class_accuracy": test["test/mean_class_acc"],
        "macro_f1": test["test/f1_macro"],
        "seconds": record.get("fit_seconds", float("nan")),
        "epochs": record.get("epochs", ""),
        "best_epoch": "" if record.get("best_epoch") is None else record["best_epoch"],
        "params_m": record.get("params", 0) / 1e6,
        "n_test": int(confusion.sum()) if confusion is not None else 0,
        # not table columns: the test confusion matrix and class names (Fig. 10), the per-epoch validation curve
        "confusion": confusion,
        "class_names": class_names,
        "curve": record.get("curve", []),
    }


def run_one(model: str, dataset: str, seed: int, args: argparse.Namespace, out: Path,
            extra_args: list[str] | None = None, tag: str | None = None) -> dict:
    """Train ``model`` on ``dataset`` with ``seed`` (one ``cli.py fit``), test its best-on-val checkpoint, return its
    row (:func:`to_row`); ``RunFailed`` when the run fails."""
    run = fer_run(model, dataset, seed, args, out, extra_args, tag)
    return to_row(run, ex.launch(run))


def run_all(runs: list[ex.Run], out: Path, note: str, stem: str = "results",
            title: str = "Face-expression experiment", plot: bool = True) -> list[dict]:
    """Every run, one after the other, with the tables rewritten after each (partial tables survive an interrupted
    sweep); failed runs are rows with their error (:func:`scripts.experiments.check` raises for them)."""
    return ex.run_all(runs, to_row, name_column="model",
                      on_row=lambda rows: write_tables(rows, out, note, stem=stem, title=title, plot=plot))


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
    """Logging, offline env, threads (``OMP_NUM_THREADS`` of the runs), the output folder; checks the dataset
    folders exist."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in every cli.py run
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
    runs = [fer_run(model, ds, seed, args, out) for ds in args.datasets for seed in args.seeds
            for model in args.models]
    rows = run_all(runs, out, budget_note(args))
    print((out / "results.md").read_text())
    ex.check(rows, "model")


if __name__ == "__main__":
    main()
