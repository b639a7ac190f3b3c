"""Learning speed as accuracy per wall-clock minute: Swin systems vs timm ResNet-18 at the same budget.

Issue 12 asks whether the paper's model learns where a plain CNN learns. No large real face set is reachable here,
so every model trains on CK+48 and JAFFE under the SAME wall-clock cap (``--max-minutes``) and epoch budget, over
several seeds; the experiment driver's recorder callback (``scripts/experiments.py``) records the validation
accuracy with the elapsed training time after every epoch.

Writes ``<out>/curves.csv`` (model, dataset, seed, epoch, minutes, val_acc, val_top_pred_share),
``<out>/learning_curves.png`` (validation accuracy vs minutes, one panel per dataset, one line per run) and
``<out>/learning_curves.md`` (test accuracy of the best-on-val checkpoint at the budget, mean ± std over seeds).

    python scripts/run_fer_learning_curves.py --out runs/fer_curves --datasets ckplus48 jaffe --seeds 42 1 2 \\
        --epochs 40 --max-minutes 6
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from common.io import atomic_write
from scripts import experiments as ex
from scripts import run_fer_experiment as exp  # the face runs' configs, budget and tables

log = logging.getLogger("run_fer_learning_curves")
CURVE_COLUMNS = ("model", "dataset", "seed", "epoch", "minutes", "val_acc", "val_top_pred_share")


def curve_points(row: dict) -> list[dict]:
    """The validation curve of a finished run (the driver's recorder: after every training epoch, the epoch, the
    minutes since the fit started and the validation metrics) as ``CURVE_COLUMNS`` rows."""
    return [{"model": row["model"], "dataset": row["dataset"], "seed": row["seed"], "epoch": p["epoch"],
             "minutes": p["minutes"], "val_acc": p["val/acc"], "val_top_pred_share": p.get("val/top_pred_share",
                                                                                           float("nan"))}
            for p in row.get("curve", []) if "val/acc" in p]


def plot_curves(points: list[dict], path: Path) -> Path:
    from matplotlib.figure import Figure

    datasets = sorted({p["dataset"] for p in points})
    if not datasets:
        raise ValueError("plot_curves: no learning-curve points (did validation run?)")
    fig = Figure(figsize=(6 * len(datasets), 4.2))
    for i, ds in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        runs = sorted({(p["model"], p["seed"]) for p in points if p["dataset"] == ds})
        models = sorted({m for m, _ in runs})
        colours = {m: f"C{k}" for k, m in enumerate(models)}
        for model, seed in runs:
            pts = [p for p in points if p["dataset"] == ds and p["model"] == model and p["seed"] == seed]
            ax.plot([p["minutes"] for p in pts], [p["val_acc"] for p in pts], color=colours[model], alpha=0.8,
                    label=model if seed == min(s for m, s in runs if m == model) else None, marker=".")
        ax.set_xlabel("wall-clock training minutes")
        ax.set_ylabel("validation accuracy")
        ax.set_title(ds)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    parser = exp.build_parser(__doc__.splitlines()[0], default_out="runs/fer_curves")
    parser.add_argument("--models", nargs="+", default=["swin2b", "swin_global", "resnet18"],
                        choices=sorted(exp.MODELS))
    args = parser.parse_args(argv)
    out = exp.prepare_run(args)
    note = exp.budget_note(args)

    def write(rows: list[dict]) -> None:
        exp.write_tables(rows, out, note, stem="learning_curves", title="Accuracy at an equal wall-clock budget")
        with atomic_write(out / "curves.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=CURVE_COLUMNS)
            writer.writeheader()
            writer.writerows(p for r in rows if ex.ok(r) for p in curve_points(r))

    runs = [exp.fer_run(model, ds, seed, args, out) for ds in args.datasets for seed in args.seeds
            for model in args.models]
    rows = ex.run_all(runs, exp.to_row, name_column="model", on_row=write)
    points = [p for r in rows if ex.ok(r) for p in curve_points(r)]
    plot_curves(points, out / "learning_curves.png")
    print((out / "learning_curves.md").read_text())
    ex.check(rows, "model")
    return points


if __name__ == "__main__":
    main()
