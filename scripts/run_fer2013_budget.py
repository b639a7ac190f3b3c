"""FER2013 at an equal wall-clock budget: the two-branch Swin vs its global-only ablation vs timm ResNet-18.

Issue #22 §2: does the paper's model learn on a large real set from scratch on these CPUs, and is its local branch
worth its cost? Every model trains through its shipped FER2013 config (``configs/fer/<model>_fer2013.yaml``: its own
recipe, image size and batch) for the SAME wall-clock budget (``--minutes``; several budgets are separate runs),
with the learning rate laid over that budget (:class:`lightning_modules.schedulers.BudgetCosineLR`: warm-up, then
cosine to its floor when the time is up, whatever the model's speed, so that no model is compared half-annealed).
Validation is a seeded stratified 10 % of FER2013's Training split; the checkpoint best on it is tested on
PublicTest (``val/``); PrivateTest is never read.

Writes, rewritten after every run (an interrupted sweep keeps its finished rows):

* ``<out>/results.csv`` / ``results.md``: one row per (model, budget, seed): PublicTest accuracy, macro F1, recall of
  every class (disgust included), epochs run, best epoch, wall minutes, parameters; then mean ± sd over seeds;
* ``<out>/curves.csv`` and ``<out>/curves.png``: validation accuracy after every epoch against wall-clock minutes,
  one panel per budget, one line per run;
* ``<out>/diagnostics.csv`` / ``diagnostics.md`` (the Swins): what
  :class:`callbacks.training_diagnostics.TrainingDiagnostics` logged (gradient norm per stage before clipping, the
  local gate's mean ``|S_i|`` per stage, the fused feature's rms, the logits' spread), early (the first 10 % of the
  logged steps) and late (the last 10 %) in each run.

Each run is one ``python cli.py fit`` process (its folder ``<out>/runs/<budget>min/<model>/seed<seed>/`` keeps its
``output.log``, ``config.yaml``, CSV logs, the two-branch model's diagnostics and its checkpoints). Budgets are wall
time of ``fit`` on an otherwise idle machine: time nothing beside other jobs.

    python scripts/run_fer2013_budget.py --out runs/fer2013_budget --minutes 20 --seeds 42
    python scripts/run_fer2013_budget.py --out runs/fer2013_budget --minutes 20 60 --seeds 42 1 2
    python scripts/run_fer2013_budget.py --out runs/fer2013_budget --models swin2b --minutes 7 \
        --delta configs/fer/variants/drop_path_0.yaml
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
from pathlib import Path
from typing import Any

from common.io import atomic_write
from scripts import experiments as ex
from scripts import run_fer_experiment as exp
from scripts.run_fer_learning_curves import CURVE_COLUMNS, curve_points, plot_curves

REPO = ex.REPO
log = logging.getLogger("run_fer2013_budget")

#: model key -> its shipped FER2013 config (data block included)
MODELS = {
    "swin2b": "configs/fer/swin2b_fer2013.yaml",
    "swin_global": "configs/fer/swin_global_fer2013.yaml",
    "resnet18": "configs/fer/resnet18_fer2013.yaml",
    "face_model": "configs/fer/face_model_fer2013.yaml",
}
CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
COLUMNS = ("model", "minutes", "seed", "accuracy", "macro_f1", *(f"recall_{c}" for c in CLASSES), "epochs",
           "best_epoch", "wall_minutes", "params_m", "n_test")
SUMMARY = [ex.Metric("accuracy", "accuracy"), ex.Metric("macro_f1", "macro F1"),
           *(ex.Metric(f"recall_{c}", f"recall {c}", ".2f") for c in CLASSES),
           ex.Metric("epochs", "epochs", ".1f")]


def budget_run(model: str, minutes: float, seed: int, args: argparse.Namespace, out: Path) -> ex.Run:
    """The ``cli.py fit`` run of ``model`` for ``minutes`` with ``seed``: its shipped config, the data at
    ``--data-root``, the learning rate over the budget, the best-on-validation checkpoint tested."""
    configs = ex.config_files([MODELS[model], *(Path(d).resolve() for d in args.delta)])  # base first
    name = model_name(model, args.delta)
    composed = ex.compose_configs(configs)
    size = composed["data"]["init_args"]["crop"]["image_size"]
    folder = run_dir(out, name, minutes, seed)
    cli_args = [
        "--data.init_args.root", str(Path(args.data_root).resolve()),
        "--data.init_args.cache_dir", str(out / "cache" / f"{size}px"),
        "--data.init_args.num_workers", "0",
        "--data.init_args.progress", "none",
        "--trainer.max_epochs", "1000",
        "--trainer.max_time", exp._max_time(minutes),
        *(["--trainer.limit_train_batches", str(args.limit_batches), "--trainer.limit_val_batches",
           str(args.limit_batches), "--trainer.limit_test_batches", str(args.limit_batches)]
          if args.limit_batches else []),
        "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
        "--trainer.logger.save_dir", str(folder),
        "--trainer.logger.name", "logs",
        "--checkpoint.dirpath", str(folder / "checkpoints"),
        "--checkpoint.monitor", "val/acc",
        "--checkpoint.mode", "max",
        "--model.init_args.scheduler", "lightning_modules.schedulers.BudgetCosineLR",
        "--model.init_args.scheduler.init_args.budget_minutes", f"{minutes:g}",
        "--model.init_args.scheduler.init_args.warmup_fraction", str(args.warmup_fraction),
    ]
    # the configs' callbacks, re-given so that they write into the run folder (not the config's runs/<name>/)
    cli_args += ex.confusion_matrix_callbacks(folder)
    names = [cb.get("class_path", "") for cb in composed["trainer"].get("callbacks") or []]
    if "callbacks.training_diagnostics.TrainingDiagnostics" in names:  # per-stage gradient norms, the gate
        cli_args += ["--trainer.callbacks+=callbacks.training_diagnostics.TrainingDiagnostics",
                     "--trainer.callbacks.every_n_steps", str(args.diagnostics_every)]
    return ex.Run(name, seed, configs, folder, tuple(cli_args), {"minutes": f"{minutes:g}"})


def model_name(model: str, deltas: list[str]) -> str:
    """The results name of ``model`` with ``deltas`` composed over its config: ``swin2b+low_reg`` for
    ``configs/fer/variants/low_reg.yaml`` (the bare key without deltas)."""
    return "+".join([model, *(Path(d).stem for d in deltas)])


def to_row(run: ex.Run, record: dict[str, Any]) -> dict[str, Any]:
    """The results row of a finished run: :func:`scripts.run_fer_experiment.to_row` plus the recall of every class
    (from the PublicTest confusion matrix) and the wall minutes."""
    row = exp.to_row(run, record)
    confusion = row["confusion"]
    names = row["class_names"] or list(CLASSES)
    for c in CLASSES:
        if confusion is None or c not in names:
            row[f"recall_{c}"] = float("nan")
            continue
        k = names.index(c)
        total = int(confusion[k].sum())
        row[f"recall_{c}"] = int(confusion[k, k]) / total if total else float("nan")
    row["wall_minutes"] = row["seconds"] / 60
    return row


def run_dir(out: Path, model: str, minutes: Any, seed: Any) -> Path:
    """The folder of one run (``minutes`` as the CSV holds it: ``"20"``, ``"0.5"``)."""
    return out / "runs" / f"{float(minutes):g}min" / str(model) / f"seed{seed}"


def write_tables(rows: list[dict], out: Path, note: str) -> None:
    """``results.csv`` / ``results.md`` and ``curves.csv`` / ``curves.png`` from ``rows`` (new rows, or rows read back
    with ``--resume``, which hold strings; the curves are read from each finished run's ``run.json``)."""
    ex.write_rows(rows, out / "results.csv", [*COLUMNS, "status", "error"])
    lines = ["# FER2013 PublicTest at an equal wall-clock budget (best-on-validation checkpoint)", "", note, "",
             "| model | budget (min) | seed | accuracy | macro F1 | "
             + " | ".join(f"recall {c}" for c in CLASSES) + " | epochs | best epoch | wall min | params (M) |",
             "|---|---|---|---|---|" + "---|" * len(CLASSES) + "---|---|---|---|"]
    done = [r for r in rows if ex.ok(r)]
    for r in done:
        recalls = " | ".join(f"{float(r[f'recall_{c}']):.2f}" for c in CLASSES)
        lines.append(f"| {r['model']} | {r['minutes']} | {r['seed']} | {float(r['accuracy']):.4f} | "
                     f"{float(r['macro_f1']):.4f} | {recalls} | {r['epochs']} | {r['best_epoch']} | "
                     f"{float(r['wall_minutes']):.1f} | {float(r['params_m']):.2f} |")
    groups = ex.summarise(done, ("model", "minutes"), SUMMARY)
    if any(g.n > 1 for g in groups):
        lines += ["", "## Mean ± standard deviation over seeds", "",
                  *ex.summary_table(groups, ("model", "minutes"), SUMMARY)]
    failed = ex.failures(rows, "model")
    if failed:
        lines += ["", "## Failed runs (see their output.log)", "", *(f"- {f}" for f in failed)]
    with atomic_write(out / "results.md", "w", newline="") as fh:
        fh.write("\n".join(lines) + "\n")
    points = []
    for r in done:
        folder = run_dir(out, r["model"], r["minutes"], r["seed"])
        record = ex.read_record(folder) if (folder / ex.RECORD_FILE).is_file() else {}
        curve = curve_points({"model": r["model"], "dataset": "fer2013", "seed": r["seed"], **record})
        # a resumed row's seed is a string, a new row's an int: one type, so that runs sort together
        points += [{**p, "seed": str(p["seed"]), "minutes_budget": f"{float(r['minutes']):g}"} for p in curve]
    with atomic_write(out / "curves.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["minutes_budget", *CURVE_COLUMNS])
        writer.writeheader()
        writer.writerows(points)
    if points:  # one panel per budget
        plot_curves([{**p, "dataset": f"FER2013, {p['minutes_budget']}-minute budget"} for p in points],
                    out / "curves.png")
    write_diagnostics(rows, out)


DIAG_PREFIX = "diag/"


def diagnostics(metrics_csv: Path) -> dict[str, tuple[float, float]]:
    """``{diagnostic: (early, late)}`` from a run's CSVLogger ``metrics.csv``: the mean of every ``diag/*`` column over
    the first and over the last 10 % of the steps that logged it (at least one step each); empty without a file."""
    if not metrics_csv.is_file():
        return {}
    with metrics_csv.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, tuple[float, float]] = {}
    for key in (rows[0].keys() if rows else ()):
        if not key.startswith(DIAG_PREFIX):
            continue
        values = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        if values:
            k = max(1, len(values) // 10)
            out[key[len(DIAG_PREFIX):]] = (sum(values[:k]) / k, sum(values[-k:]) / k)
    return out


def write_diagnostics(rows: list[dict], out: Path) -> None:
    """``diagnostics.csv`` (model, budget, seed, diagnostic, early, late) and ``diagnostics.md`` (one table per run:
    the gradient norms per stage, the gate and the fused features) for every finished run that logged diagnostics."""
    table: list[dict] = []
    lines = ["# Training diagnostics of the FER2013 budget runs", "",
             ("Mean over the first (early) and the last (late) 10 % of the logged steps. grad_norm: L2 norm of the "
             "gradient of each part before clipping; gate_abs: mean |S_i| of the local gate of stage i (0 = the "
             "local branch is shut out, LAVT's tanh gate reaches 1); fused_rms: rms of the fused map F_i; "
             "logit_spread: std of the logits across a batch (0 = one constant output).")]
    for r in rows:
        if not ex.ok(r):
            continue
        folder = run_dir(out, r["model"], r["minutes"], r["seed"])
        found = sorted(folder.glob("logs/version_*/metrics.csv"))
        diag = diagnostics(found[-1]) if found else {}
        if not diag:
            continue
        lines += ["", f"## {r['model']}, {float(r['minutes']):g} min, seed {r['seed']}", "",
                  "| diagnostic | early | late |", "|---|---|---|"]
        for key, (early, late) in diag.items():
            if ".patch_embed." in key:  # the stem's single convolutions: the stem's total is listed
                continue
            table.append({"model": r["model"], "minutes": r["minutes"], "seed": r["seed"], "diagnostic": key,
                          "early": early, "late": late})
            lines.append(f"| {key} | {early:.4g} | {late:.4g} |")
    ex.write_rows(table, out / "diagnostics.csv", ("model", "minutes", "seed", "diagnostic", "early", "late"))
    with atomic_write(out / "diagnostics.md", "w", newline="") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fer2013_budget", help="output directory (created)")
    parser.add_argument("--data-root", default=str(REPO / ".." / "shared" / "data" / "fer2013"),
                        help="FER2013 in per-split class folders (train/ = Training, val/ = PublicTest)")
    parser.add_argument("--models", nargs="+", default=["swin2b", "swin_global", "resnet18"], choices=sorted(MODELS))
    parser.add_argument("--minutes", type=float, nargs="+", default=[20.0], help="wall-clock budgets (one run each)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="training seeds; the split stays fixed")
    parser.add_argument("--delta", nargs="+", default=[], metavar="YAML",
                        help="delta configs composed over every model's config, in order (a recipe variant); the "
                             "rows are named <model>+<delta file stem>")
    parser.add_argument("--warmup-fraction", type=float, default=0.05, help="share of the budget spent warming up")
    parser.add_argument("--diagnostics-every", type=int, default=100,
                        help="steps between the Swins' diagnostics (gradient norms per stage, gate activations)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished rows of <out>/results.csv and launch only the missing runs")
    parser.add_argument("--limit-batches", type=int, default=None, help="cap batches per epoch (smoke runs)")
    args = parser.parse_args(argv)
    if any(not m > 0 or not math.isfinite(m) for m in args.minutes):
        parser.error(f"--minutes must be positive, got {args.minutes}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    for split in ("train", "val"):
        if not (Path(args.data_root) / split).is_dir():
            raise SystemExit(f"run_fer2013_budget: {Path(args.data_root) / split} not found (FER2013 in per-split "
                             "class folders: see ../shared/data/README.md)")
    for d in args.delta:
        if not Path(d).is_file():
            parser.error(f"--delta {d}: no such config file")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    note = (f"Budgets {', '.join(f'{m:g}' for m in args.minutes)} min of `fit` wall time per run, "
            f"{args.threads} CPU threads, seeds {', '.join(map(str, args.seeds))}, random init, learning rate warm-up "
            f"({args.warmup_fraction:g} of the budget) + cosine over the budget (BudgetCosineLR); each model's "
            "shipped config otherwise. Validation: seeded stratified 10 % of Training; test: PublicTest (3,589).")
    runs = [budget_run(model, minutes, seed, args, out) for minutes in args.minutes for seed in args.seeds
            for model in args.models]
    earlier = ex.read_rows(out / "results.csv", COLUMNS[:3]) if args.resume else []
    rows = ex.run_all(runs, to_row, name_column="model", rows=earlier, resume=args.resume,
                      on_row=lambda rs: write_tables(rs, out, note))
    print((out / "results.md").read_text())
    ex.check(rows, "model")
    return rows


if __name__ == "__main__":
    main()
