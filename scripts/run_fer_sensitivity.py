"""Fig. 11: learning-rate x batch-size sensitivity of the paper's model (3 x 3 grid), table + heat-map PNG.

Every cell trains ``--model`` (default the two-branch Swin, ``swin2b``) as ``run_fer_experiment`` does, with
the optimizer's lr and the datamodule's batch size overridden, everything else fixed (Ji et al. 2026 §3.3.2:
lr 1e-6 / 1e-5 / 1e-4 x batch 16 / 32 / 64, the paper's defaults here). With several seeds the heat map shows the
mean test accuracy and the table adds the standard deviation.

Writes ``<out>/sensitivity.csv``, ``<out>/sensitivity.md`` and ``<out>/sensitivity.png``.

    python scripts/run_fer_sensitivity.py --out runs/fer_sensitivity --epochs 15 --seeds 42 1 2
    python scripts/run_fer_sensitivity.py --lrs 1e-4 3e-4 1e-3 --out runs/fer_sensitivity_scratch   # from scratch
"""

from __future__ import annotations

import logging
from pathlib import Path

from scripts import experiments as ex
from scripts import run_fer_experiment as exp  # the face runs' configs, budget and tables

log = logging.getLogger("run_fer_sensitivity")


def plot_heatmap(grid: dict[tuple[float, int], float], lrs: list[float], batches: list[int], path: Path,
                 title: str) -> Path:
    """Heat map of mean accuracy, rows = learning rate, columns = batch size, values written in the cells."""
    import numpy as np
    from matplotlib.figure import Figure

    values = np.array([[grid.get((lr, b), np.nan) for b in batches] for lr in lrs])
    fig = Figure(figsize=(1.6 + 1.3 * len(batches), 1.2 + 1.0 * len(lrs)))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="viridis", vmin=np.nanmin(values) if np.isfinite(values).any() else 0, aspect="auto")
    ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    ax.set_yticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs])
    ax.set_xlabel("batch size")
    ax.set_ylabel("learning rate")
    ax.set_title(title)
    for i in range(len(lrs)):
        for j in range(len(batches)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.3f}", ha="center", va="center", color="w")
    fig.colorbar(im, ax=ax, label="test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def main(argv: list[str] | None = None) -> list[dict]:
    parser = exp.build_parser(__doc__.splitlines()[0], default_out="runs/fer_sensitivity")
    parser.add_argument("--model", default="swin2b", choices=sorted(exp.MODELS))
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 32, 64])
    args = parser.parse_args(argv)
    out = exp.prepare_run(args)
    note = exp.budget_note(args).replace(f"batch {args.batch_size}", "batch per cell")
    ds = args.datasets[0]
    runs = []
    for seed in args.seeds:
        for lr in args.lrs:
            for b in args.batches:
                args.batch_size = b  # the run's batch size (fer_run reads the budget from args)
                runs.append(exp.fer_run(args.model, ds, seed, args, out, tag=f"lr{lr:g}_bs{b}",
                                        extra_args=["--model.init_args.optimizer.init_args.lr", str(lr)],
                                        labels={"lr": lr, "batch_size": b}))
    rows = exp.run_all(runs, out, note, stem="sensitivity", title="Fig. 11 lr x batch sensitivity",
                       plot=False)  # sensitivity.png is the heat map
    cells = {(g.key[0], g.key[1]): g.stats["accuracy"].mean
             for g in ex.summarise(rows, ("lr", "batch_size"), ["accuracy"])}
    grid = {(lr, b): cells.get((lr, b), float("nan")) for lr in args.lrs for b in args.batches}
    plot_heatmap(grid, args.lrs, args.batches, out / "sensitivity.png",
                 f"{args.model} on {ds}: test accuracy ({len(args.seeds)} seed(s))")
    print((out / "sensitivity.md").read_text())
    ex.check(rows, "model")
    return rows


if __name__ == "__main__":
    main()
