"""Fig. 10: side-by-side confusion matrices of the paper's model and a baseline on the same test split.

Both models train as ``run_fer_experiment`` trains them (same configs, budget, split and seed; best-on-val
checkpoint) and are tested on the same test split; the row-normalised test confusion matrices (per-class recall on
the diagonal, counts in brackets) are drawn side by side. With several seeds the matrices are summed over seeds
(every seed tests the same faces).

Writes ``<out>/confusion.png``, ``<out>/confusion.md`` (per-class recall of both models) and the runs' table
``<out>/confusion_runs.md``.

    python scripts/run_fer_confusion.py --out runs/fer_confusion --models swin2b vgg16 --epochs 15 --seeds 42 1 2

``--from-runs DIR`` trains nothing: it draws the figure from the test confusion matrices that finished runs of
``run_fer_experiment.py --out DIR`` saved (``DIR/runs/<dataset>/<model>/seed<seed>/test_confusion.json``), e.g. from
Table 1's runs::

    python scripts/run_fer_confusion.py --out runs/fer_confusion --from-runs runs/fer_table1 --models swin2b vgg16 \
        --seeds 42 1 2
"""

from __future__ import annotations

import logging
from pathlib import Path

from common.io import atomic_write
from scripts import experiments as ex
from scripts import run_fer_experiment as exp  # the face runs' configs, budget and tables

log = logging.getLogger("run_fer_confusion")


def main(argv: list[str] | None = None) -> dict:
    parser = exp.build_parser(__doc__.splitlines()[0], default_out="runs/fer_confusion")
    parser.add_argument("--models", nargs=2, default=["swin2b", "vgg16"], choices=sorted(exp.MODELS),
                        metavar=("PAPER_MODEL", "BASELINE"))
    parser.add_argument("--from-runs", default=None, metavar="DIR",
                        help="draw from the saved test confusion matrices of run_fer_experiment.py --out DIR "
                             "instead of training (the budget options are then ignored)")
    args = parser.parse_args(argv)
    out = exp.prepare_run(args)
    ds = args.datasets[0]
    import torch
    from matplotlib.figure import Figure

    from callbacks.confusion_matrix import draw_confusion_matrix, save_figure_atomic

    matrices: dict[str, torch.Tensor] = {}
    class_names: list[str] = []
    n_faces: int | None = None
    trained: dict[tuple[str, int], dict] = {}
    if not args.from_runs:
        runs = [exp.fer_run(model, ds, seed, args, out) for seed in args.seeds for model in args.models]
        rows = exp.run_all(runs, out, exp.budget_note(args), stem="confusion_runs", title="Fig. 10 runs")
        ex.check(rows, "model")
        trained = {(r["model"], r["seed"]): r for r in rows}
    for seed in args.seeds:
        for model in args.models:
            if args.from_runs:
                path = Path(args.from_runs) / "runs" / ds / model / f"seed{seed}" / exp.CONFUSION_FILE
                cm, names = exp.read_confusion(path)
                if class_names and names != class_names:
                    raise ValueError(f"{path}: classes {names} differ from the other runs' {class_names}")
                class_names = names
            else:
                row = trained[(model, seed)]
                cm, class_names = row["confusion"], row["class_names"]
            n_faces = n_faces if n_faces is not None else int(cm.sum())
            if int(cm.sum()) != n_faces:
                raise ValueError(f"run_fer_confusion: {model} seed {seed} tested {int(cm.sum())} faces, the other "
                                 f"runs {n_faces}: matrices of different test splits cannot be compared or summed")
            matrices[model] = matrices[model] + cm if model in matrices else cm
    fig = Figure(figsize=(2 * max(4.0, 0.6 * len(class_names) + 2.0), max(4.0, 0.6 * len(class_names) + 2.0)))
    for i, model in enumerate(args.models):
        acc = float(matrices[model].diag().sum() / matrices[model].sum().clamp_min(1))
        draw_confusion_matrix(fig.add_subplot(1, 2, i + 1), matrices[model], class_names,
                              title=f"{model} (acc {acc:.3f}, {len(args.seeds)} seed(s))")
    fig.tight_layout()
    save_figure_atomic(fig, out / "confusion.png")
    lines = ["# Fig. 10: per-class test recall (rows of the confusion matrices)", "",
             "| class | " + " | ".join(args.models) + " |", "|---|" + "---|" * len(args.models)]
    for k, name in enumerate(class_names):
        cells = [f"{float(matrices[m][k, k] / matrices[m][k].sum().clamp_min(1)):.3f}" for m in args.models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    with atomic_write(out / "confusion.md", "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return matrices


if __name__ == "__main__":
    main()
