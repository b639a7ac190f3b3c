"""Compare HGCL variants over several seeds through the same CLI configs a user runs (one command).

Each ``--variant`` is a name plus ``key=value`` overrides of the HGCL net's ``init_args``; every (variant, seed) is
one ``python cli.py fit`` process started by the experiment driver (``scripts/experiments.py``: early stopping /
best-on-validation checkpoint as the config says, then the test split), with the config's logger switched off and
the run folder ``<out>/<variant>_seed<seed>/`` holding the checkpoints, ``output.log`` and ``run.json``. Rows are
appended to ``<out>/results.csv`` as they finish (a failed run as a ``status: failed`` row with its error; a rerun
skips finished rows and retries failed ones); ``<out>/results.md`` holds mean ± std per variant (also
``<out>/results_summary.csv`` and the bar chart ``<out>/results.png``). Example (the README's node-feature table)::

    python -m features.synthetic_mmsa --out data/generated/mosi_demo.pkl --n-train 600 --n-valid 150 --n-test 300 \\
        --if-exists keep
    python scripts/run_hgcl_variants.py --config configs/hgcl_demo.yaml --seeds 1 2 3 --out runs/hgcl_nodes \\
        --variant projected node_features=projected --variant attended node_features=attended
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from scripts import experiments as ex

METRICS = ("mae", "corr", "acc2_has0", "acc2_non0", "f1_non0", "acc7")
NET = "--model.init_args.net.init_args."
COLUMNS = ("variant", "seed", *METRICS)
log = logging.getLogger("hgcl_variants")


def parse_variant(spec: list[str]) -> tuple[str, dict[str, str]]:
    """``["name", "key=value", ...]`` -> ``(name, {key: value})``; a bad override is a ``ValueError``."""
    name, *pairs = spec
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"run_hgcl_variants: variant {name!r}: {pair!r} is not key=value")
        overrides[key] = value
    return name, overrides


def plan(configs: list[str], variants: list[tuple[str, dict[str, str]]], seeds: list[int], out: Path,
         extra: list[str]) -> list[ex.Run]:
    """One run per (variant, seed): the configs, the variant's net overrides, the config's logger off, checkpoints
    in ``<out>/<variant>_seed<seed>/checkpoints``."""
    files = tuple(Path(c).resolve() for c in configs)
    runs = []
    for name, overrides in variants:
        for seed in seeds:
            run_dir = out / f"{name}_seed{seed}"
            args = [a for key, value in overrides.items() for a in (NET + key, value)]
            args += ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                     "--checkpoint.dirpath", str(run_dir / "checkpoints"), *extra]
            runs.append(ex.Run(name, seed, files, run_dir, tuple(args)))
    return runs


def to_row(run: ex.Run, record: dict[str, Any]) -> dict[str, Any]:
    test = record.get("test", {})
    missing = [m for m in METRICS if f"test/{m}" not in test]
    if missing:
        raise ex.RunFailed(f"run_hgcl_variants: the run in {run.run_dir} logged no test metrics {missing}")
    return {"variant": run.name, "seed": run.seed, **{m: f"{test[f'test/{m}']:.4f}" for m in METRICS}}


def summarise(rows: list[dict], names: list[str], stem: Path | None = None) -> str:
    """Mean ± sd per variant (markdown); with ``stem`` also ``<stem>_summary.csv`` and ``<stem>.png``."""
    metrics = [ex.Metric(m, f"test {m}") for m in METRICS]
    order = [(n,) for n in names]
    if stem is None:
        lines = ex.summary_table(ex.summarise(rows, ("variant",), metrics, order=order), ("variant",), metrics)
    else:
        lines = ex.write_summary(rows, stem, ("variant",), metrics, order=order, plot=metrics,
                                 title="HGCL variants: mean ± sd over seeds")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", action="append", required=True, help="config file(s), composed in order")
    p.add_argument("--variant", nargs="+", action="append", required=True, metavar="NAME [KEY=VALUE ...]")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cli-arg", action="append", default=[], help="extra cli.py argument (repeatable)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    variants = [parse_variant(v) for v in a.variant]
    a.out.mkdir(parents=True, exist_ok=True)
    table = a.out / "results.csv"
    rows = ex.read_rows(table, required=("variant", "seed"))
    runs = plan(a.config, variants, a.seeds, a.out, a.cli_arg)
    rows = ex.run_all(runs, to_row, results=table, columns=COLUMNS, rows=rows, resume=True, name_column="variant")
    md = summarise(rows, [n for n, _ in variants], a.out / "results")
    failed = ex.failures(rows, "variant")
    if failed:
        md += "\nFailed runs (see their output.log; a rerun retries them):\n\n" + "".join(f"- {f}\n" for f in failed)
    (a.out / "results.md").write_text(md)
    print(md)
    ex.check(rows, "variant")


if __name__ == "__main__":
    main()
