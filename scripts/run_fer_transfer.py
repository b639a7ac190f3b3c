"""Transfer from FER2013 (issue #22 §3): the shipped model's net fine-tuned on JAFFE and CK+48 vs the same net from
scratch, several seeds, person-independent splits.

Arms (``configs/fer/transfer/``): ``scratch`` (``resnet18s_<ds>.yaml``: random init, lr 1e-3) and ``fer2013``
(``resnet18s_<ds>_from_fer2013.yaml``, a delta passed after the scratch config: initialised from
``models/weights/fer2013_resnet18s.ckpt``, lr 1e-4); on
request ``fer2013_lr1e-3`` (the same init at the scratch arm's lr). The paper's model, the two-branch Swin
(``configs/fer/swin2b_<ds>.yaml`` with the delta ``configs/fer/transfer/swin2b_<ds>.yaml``: the FER2013 recipe's
convolutional stem): ``swin2b_scratch`` (random init, lr 5e-4) and ``swin2b_fer2013`` (initialised from a
two-branch FER2013 checkpoint of this project, ``--swin2b-source``, fine-tuned at lr 1e-4), on request
``swin2b_fer2013_lr5e-4`` (the same init at the scratch arm's lr). JAFFE is
split by poser and CK+48 by subject (the test people are never seen in training); the split is fixed, the seed
(``seed_everything``: init of what is not loaded, augmentation, batch order) varies. Each run is one
``python cli.py fit`` through the experiment driver (``scripts/experiments.py``); ``<out>/transfer.md`` holds the
per-run rows and the mean ± sd table, ``<out>/transfer_summary.csv`` and ``<out>/transfer.png`` the summary.

Usage (repository root; the datasets under ``--data-root``, never copied)::

    python scripts/run_fer_transfer.py --out runs/fer_transfer                      # 2 datasets x 2 arms x 3 seeds
    python scripts/run_fer_transfer.py --out runs/fer_transfer --resume --inits scratch fer2013 fer2013_lr1e-3
    python scripts/run_fer_transfer.py --out runs/fer_transfer_quick --datasets jaffe --seeds 1 --epochs 2
    python scripts/run_fer_transfer.py --out runs/fer_transfer_swin2b --inits swin2b_scratch swin2b_fer2013 \
        --swin2b-source runs/fer2013_budget/runs/60min/swin2b+drop_path_0/seed42   # a run folder or its .ckpt
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from common.io import atomic_write
from scripts import experiments as ex

REPO = ex.REPO
DATASETS = {"jaffe": "jaffe", "ckplus48": "ckplus48"}  # name -> folder under --data-root
_SCRATCH = "configs/fer/transfer/resnet18s_{ds}.yaml"
_FROM_FER2013 = "configs/fer/transfer/resnet18s_{ds}_from_fer2013.yaml"  # a delta over the scratch config
_SWIN2B = ("configs/fer/swin2b_{ds}.yaml", "configs/fer/transfer/swin2b_{ds}.yaml")  # shipped recipe + conv stem
_LR = "--model.init_args.optimizer.init_args.lr"
#: arm -> (its ``--config`` files, base first; extra cli.py arguments); ``fer2013_lr1e-3`` asks whether the
#: fine-tuning lr held transfer back
ARMS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "scratch": ((_SCRATCH,), ()),
    "fer2013": ((_SCRATCH, _FROM_FER2013), ()),
    "fer2013_lr1e-3": ((_SCRATCH, _FROM_FER2013), (_LR, "1e-3")),
    "swin2b_scratch": (_SWIN2B, ()),
    "swin2b_fer2013": (_SWIN2B, (_LR, "1e-4")),
    "swin2b_fer2013_lr5e-4": (_SWIN2B, ()),
}
#: arms initialised from ``--swin2b-source`` (no two-branch FER2013 model ships: it is trained by
#: ``scripts/run_fer2013_budget.py``)
FROM_SWIN2B_SOURCE = ("swin2b_fer2013", "swin2b_fer2013_lr5e-4")
COLUMNS = ("dataset", "init", "seed", "accuracy", "macro_f1", "mean_class_accuracy", "seconds", "epochs", "n_test")
SUMMARY = [ex.Metric("accuracy", "accuracy"), ex.Metric("macro_f1", "macro F1"),
           ex.Metric("mean_class_accuracy", "mean class acc."), ex.Metric("seconds", "seconds", ".0f")]


def runs(args: argparse.Namespace, out: Path) -> list[ex.Run]:
    """Dataset x arm x seed, seed-major."""
    todo = []
    for seed in args.seeds:
        for ds in args.datasets:
            for arm in args.inits:
                run_dir = out / "runs" / ds / arm / f"seed{seed}"
                overrides = [
                    "--data.init_args.root", str(Path(args.data_root) / DATASETS[ds]),
                    "--data.init_args.cache_dir", str(out / "cache" / ds),
                    "--checkpoint.dirpath", str(run_dir / "checkpoints"),
                    "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                    "--trainer.logger.save_dir", str(run_dir), "--trainer.logger.name", "logs",
                    "--trainer.enable_progress_bar", "false",
                ]
                if args.epochs is not None:
                    overrides += ["--trainer.max_epochs", str(args.epochs)]
                configs, extra = ARMS[arm]
                if configs == _SWIN2B:  # the shipped Swin configs' callbacks write into the run folder
                    overrides += ex.confusion_matrix_callbacks(run_dir)
                if arm in FROM_SWIN2B_SOURCE:
                    if args.swin2b_source is None:
                        raise ValueError(f"arm {arm}: give the two-branch FER2013 checkpoint (--swin2b-source)")
                    extra = ("--model.init_args.net.init_args.pretrained", str(args.swin2b_source), *extra)
                files = ex.config_files(c.format(ds=ds) for c in configs)
                todo.append(ex.Run(arm, seed, files, run_dir, (*overrides, *extra), {"dataset": ds}))
    return todo


def swin2b_source(value: str) -> Path:
    """``--swin2b-source``: a two-branch FER2013 ``.ckpt``, or a run folder holding exactly one ``best-*.ckpt``
    (what ``scripts/run_fer2013_budget.py`` leaves in ``<run>/checkpoints/``).

    Raises:
        ValueError: naming the path, when it is neither.
    """
    path = Path(value)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"{value}: no such checkpoint file or run folder")
    found = sorted(path.rglob("best-*.ckpt"))
    if len(found) != 1:
        listed = ", ".join(str(f) for f in found) or "none"
        raise ValueError(f"{value}: a run folder must hold exactly one best-*.ckpt (found: {listed}); name the file")
    return found[0]


def to_row(run: ex.Run, record: dict[str, Any]) -> dict[str, Any]:
    test = record.get("test") or {}
    if "test/acc" not in test:
        raise ex.RunFailed(f"{run.name} seed {run.seed}: no test metrics in {run.run_dir / ex.RECORD_FILE}")
    confusion = record.get("confusion") or []
    row = {**run.identity("init"), "accuracy": test["test/acc"], "macro_f1": test.get("test/f1_macro", float("nan")),
           "mean_class_accuracy": test.get("test/mean_class_acc", float("nan")),
           "seconds": record.get("fit_seconds", float("nan")), "epochs": record.get("epochs", ""),
           "n_test": sum(sum(r) for r in confusion) if confusion else ""}
    for name in record.get("class_names") or []:
        row[f"recall_{name}"] = test.get(f"test/recall_{name}", float("nan"))
    return row


def write_report(rows: list[dict[str, Any]], out: Path, note: str) -> None:
    recall_cols = sorted({k for r in rows for k in r if k.startswith("recall_")})
    ex.write_rows(rows, out / "transfer.csv", [*COLUMNS, *recall_cols, "status", "error"])
    lines = ["# FER2013 -> JAFFE / CK+48 transfer (test split, best-on-val checkpoint)", "", note, "",
             "| dataset | init | seed | accuracy | macro F1 | mean class acc. | seconds | epochs | n test |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:  # rows read back with --resume hold strings
        if ex.ok(r):
            acc, f1, mca, sec = (float(r[k]) for k in ("accuracy", "macro_f1", "mean_class_accuracy", "seconds"))
            lines.append(f"| {r['dataset']} | {r['init']} | {r['seed']} | {acc:.4f} | {f1:.4f} | {mca:.4f} | "
                         f"{sec:.0f} | {r['epochs']} | {r['n_test']} |")
    table = ex.write_summary(rows, out / "transfer", ("dataset", "init"), SUMMARY, plot=SUMMARY[:2],
                             title="FER2013 transfer: mean ± sd over seeds")
    if table:
        lines += ["", "## Mean ± sd over seeds", "", *table]
    failed = ex.failures(rows, "init")
    if failed:
        lines += ["", "## Failed runs (see their output.log)", "", *(f"- {f}" for f in failed)]
    with atomic_write(out / "transfer.md", "w", newline="") as fh:
        fh.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/fer_transfer", help="output directory (created)")
    parser.add_argument("--data-root", default=str(REPO / ".." / "shared" / "data"),
                        help="folder holding jaffe/ and ckplus48/")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--inits", nargs="+", default=["scratch", "fer2013"], choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=None, help="override the configs' max_epochs (smoke runs)")
    parser.add_argument("--swin2b-source", default=None,
                        help="two-branch FER2013 checkpoint (or the run folder holding its best-*.ckpt) for the "
                             f"arms {', '.join(FROM_SWIN2B_SOURCE)}")
    parser.add_argument("--resume", action="store_true", help="keep finished runs of an earlier call")
    args = parser.parse_args(argv)
    if any(arm in FROM_SWIN2B_SOURCE for arm in args.inits):
        if args.swin2b_source is None:
            parser.error(f"--inits {' '.join(args.inits)}: the swin2b FER2013 arms need --swin2b-source")
        try:
            args.swin2b_source = swin2b_source(args.swin2b_source).resolve()
        except ValueError as e:
            parser.error(f"--swin2b-source {e}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for ds in args.datasets:
        if not (Path(args.data_root) / DATASETS[ds]).is_dir():
            parser.error(f"--data-root {args.data_root}: no {DATASETS[ds]}/ folder in it")
    epochs = args.epochs if args.epochs is not None else "the configs' (ResNet-18 arms JAFFE 60, CK+48 30; swin2b 40)"
    note = f"Seeds {args.seeds}; epochs: {epochs}; splits fixed (JAFFE by poser, CK+48 by subject)."
    if args.swin2b_source is not None:
        note += f" Two-branch FER2013 source: {args.swin2b_source}."
    previous = ex.read_rows(out / "transfer.csv") if args.resume and (out / "transfer.csv").is_file() else []
    rows = ex.run_all(runs(args, out), to_row, results=out / "transfer.csv", columns=COLUMNS, rows=previous,
                      resume=args.resume, name_column="init", on_row=lambda rs: write_report(rs, out, note))
    write_report(rows, out, note)
    print(f"transfer outputs: {out}/ (transfer.md, transfer.csv, transfer_summary.csv, transfer.png)")
    ex.check(rows, "init")


if __name__ == "__main__":
    main()
