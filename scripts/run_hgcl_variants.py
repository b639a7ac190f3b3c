"""Compare HGCL variants over several seeds through the same CLI configs a user runs (one command).

Each ``--variant`` is a name plus ``key=value`` overrides of the HGCL net's ``init_args``; every (variant, seed) is
one ``cli.py fit`` (early stopping / best-on-validation checkpoint as the config says, then the test split), with
the config's logger switched off and the checkpoints under ``--out``. Rows are appended to ``<out>/results.csv``
as they finish (a rerun skips finished rows); ``<out>/results.md`` holds mean ± std per variant. Example (the
README's node-feature table)::

    python -m features.synthetic_mmsa --out data/generated/mosi_demo.pkl --n-train 600 --n-valid 150 --n-test 300 \\
        --if-exists keep
    python scripts/run_hgcl_variants.py --config configs/hgcl_demo.yaml --seeds 1 2 3 --out runs/hgcl_nodes \\
        --variant projected node_features=projected --variant attended node_features=attended
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import cli_main

METRICS = ("mae", "corr", "acc2_has0", "acc2_non0", "f1_non0", "acc7")
NET = "--model.init_args.net.init_args."
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


def run_one(configs: list[str], overrides: dict[str, str], seed: int, out: Path, extra: list[str]) -> dict:
    args = ["fit"]
    for c in configs:
        args += ["--config", c]
    for key, value in overrides.items():
        args += [NET + key, value]
    args += ["--seed_everything", str(seed), "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
             "--checkpoint.dirpath", str(out / "checkpoints"), *extra]
    cli = cli_main(args)
    metrics = cli.trainer.callback_metrics
    missing = [m for m in METRICS if f"test/{m}" not in metrics]
    if missing:
        raise RuntimeError(f"run_hgcl_variants: the run in {out} logged no test metrics {missing}")
    return {m: float(metrics[f"test/{m}"]) for m in METRICS}


def summarise(rows: list[dict], names: list[str]) -> str:
    lines = ["| variant | seeds | " + " | ".join(f"test {m}" for m in METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        if not mine:
            continue
        cells = []
        for m in METRICS:
            vals = [float(r[m]) for r in mine]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        lines.append(f"| {name} | {len(mine)} | " + " | ".join(cells) + " |")
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
    rows = list(csv.DictReader(table.open())) if table.is_file() else []
    done = {(r["variant"], int(r["seed"])) for r in rows}
    for name, overrides in variants:
        for seed in a.seeds:
            if (name, seed) in done:
                log.info("skip %s seed %d (in %s)", name, seed, table)
                continue
            result = run_one(a.config, overrides, seed, a.out / f"{name}_seed{seed}", a.cli_arg)
            row = {"variant": name, "seed": seed, **{m: f"{v:.4f}" for m, v in result.items()}}
            new = not table.is_file()
            with table.open("a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            rows.append(row)
            log.info("%s seed %d: %s", name, seed, row)
    md = summarise(rows, [n for n, _ in variants])
    (a.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
