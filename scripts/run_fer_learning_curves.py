"""Learning speed as accuracy per wall-clock minute: Swin systems vs timm ResNet-18 at the same budget.

Issue 12 asks whether the paper's model learns where a plain CNN learns. No large real face set is reachable here,
so every model trains on CK+48 and JAFFE under the SAME wall-clock cap (``--max-minutes``) and epoch budget, over
several seeds; a callback records the validation accuracy with the elapsed training time after every epoch.

Writes ``<out>/curves.csv`` (model, dataset, seed, epoch, minutes, val_acc, val_top_pred_share),
``<out>/learning_curves.png`` (validation accuracy vs minutes, one panel per dataset, one line per run) and
``<out>/learning_curves.md`` (test accuracy of the best-on-val checkpoint at the budget, mean ± std over seeds).

    python scripts/run_fer_learning_curves.py --out runs/fer_curves --datasets ckplus48 jaffe --seeds 42 1 2 \\
        --epochs 40 --max-minutes 6
"""

from __future__ import annotations

import csv
import logging
import sys
import time
from pathlib import Path

from lightning.pytorch import Callback

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run_fer_experiment as exp  # the shared single-run driver

from common.io import atomic_write

log = logging.getLogger("run_fer_learning_curves")
CURVE_COLUMNS = ("model", "dataset", "seed", "epoch", "minutes", "val_acc", "val_top_pred_share")


class LearningCurve(Callback):
    """Records ``(epoch, minutes since fit start, val/acc, val/top_pred_share)`` after every training epoch.

    Read in ``on_train_epoch_end``: the epoch's validation has run by then, and LitFER has logged ``val/acc`` (a
    callback's ``on_validation_epoch_end`` runs before the module's, when ``val/acc`` is not logged yet).
    """

    def __init__(self) -> None:
        self.points: list[dict] = []
        self._start = 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if "val/acc" not in trainer.callback_metrics:
            return
        m = trainer.callback_metrics
        self.points.append({
            "epoch": trainer.current_epoch,
            "minutes": (time.perf_counter() - self._start) / 60,
            "val_acc": float(m["val/acc"]),
            "val_top_pred_share": float(m["val/top_pred_share"]) if "val/top_pred_share" in m else float("nan"),
        })


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
    rows, points = [], []
    for ds in args.datasets:
        for seed in args.seeds:
            for model in args.models:
                curve = LearningCurve()
                rows.append(exp.run_one(model, ds, seed, args, out, callbacks=[curve]))
                points += [{"model": model, "dataset": ds, "seed": seed, **p} for p in curve.points]
                exp.write_tables(rows, out, exp.budget_note(args), stem="learning_curves",
                                 title="Accuracy at an equal wall-clock budget")
                with atomic_write(out / "curves.csv", "w", newline="") as fh:
                    writer = csv.DictWriter(fh, fieldnames=CURVE_COLUMNS)
                    writer.writeheader()
                    writer.writerows(points)
    plot_curves(points, out / "learning_curves.png")
    print((out / "learning_curves.md").read_text())
    return points


if __name__ == "__main__":
    main()
