"""The one experiment driver of ``scripts/``: configs x seeds x overrides -> runs -> per-run CSV -> mean ± sd table
(markdown + CSV) and a plot.

A run is one ``python cli.py <subcommand> --config ... --seed_everything <seed> <overrides>`` **subprocess**, the
command a user would type (its run folder keeps the resolved ``config.yaml`` and the command's ``output.log``). A
subprocess, not ``cli_main`` in this process, because:

- it is DDP-safe: Lightning's DDP launcher starts the other ranks by re-running ``sys.argv``, which must be
  ``cli.py``, not a driver that would start every run again in each rank;
- runs are isolated: a crash, an out-of-memory kill or state left behind by a run (CUDA memory, torch threads,
  global seeds, open files) cannot change or stop the next one, and ``--jobs`` can run several side by side;
- a failure is an exit code plus a log file, recorded in the CSV (``status``/``error``), never swallowed.

The cost is one interpreter start per run (seconds), small beside a training run.

What a run measured comes back through :class:`RunRecorder`, a callback the driver appends to every run
(``--trainer.callbacks+=``): it writes ``<run_dir>/run.json`` with the test metrics of the checkpoint that ``fit``
tests (``AffectCLI.after_fit``), the validation metrics after every training epoch with the elapsed minutes, the
training seconds, epochs, parameter count, best checkpoint and, for systems that keep them (``LitFER``), the test
confusion matrix.

Delta configs (``--config <base> --config <delta>``): :func:`config_files` checks the files a manifest lists, base
first, and :func:`compose_configs` reads the values they compose to.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only

from common.io import atomic_write

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
RECORD_FILE = "run.json"
LOG_FILE = "output.log"


# ----------------------------------------------------------------------------------------------- config files
# A config that is a small delta over another (a MOSEI baseline over its MOSI config, a transfer arm over its
# scratch config) is run as ``--config <base> --config <delta>``: the experiment manifests of the scripts list both
# files, base first. jsonargparse 4.53 has no include of its own for this: a ``config: <base>`` key inside a YAML is
# read, but the file's other top-level sections then replace the base's whole sections instead of merging into them,
# and a partial ``model:`` (``init_args`` without ``class_path``) is rejected; ``__path__`` is only metadata.
def config_files(paths: Iterable[str | os.PathLike], root: Path = REPO) -> tuple[Path, ...]:
    """The ``--config`` files of a run, in the order given (base first), relative paths resolved against ``root``.

    Raises:
        ValueError: on a file that does not exist, naming it.
    """
    files = tuple(Path(p) if Path(p).is_absolute() else root / p for p in paths)
    for f in files:
        if not f.is_file():
            raise ValueError(f"config_files: {f} does not exist")
    return files


def _merge(base: Any, delta: Any) -> Any:
    """jsonargparse's composition of several ``--config`` files for plain values: mappings merge key by key, a
    later ``class_path`` that differs replaces the whole entry, anything else (lists included) is replaced."""
    if not (isinstance(base, dict) and isinstance(delta, dict)):
        return delta
    if "class_path" in delta and delta["class_path"] != base.get("class_path"):
        return dict(delta)
    out = dict(base)
    for key, value in delta.items():
        out[key] = _merge(out[key], value) if key in out else value
    return out


def compose_configs(paths: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """The composed YAML of several config files (later files win), e.g. ``compose_configs([base, delta])``."""
    out: dict[str, Any] = {}
    for p in paths:
        out = _merge(out, yaml.safe_load(Path(p).read_text(encoding="utf-8")) or {})
    return out


# ----------------------------------------------------------------------------------------------- the recorder
def _scalars(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            try:
                out[key] = float(value)
            except (TypeError, ValueError):  # a non-scalar tensor: not a table value
                continue
    return out


class RunRecorder(Callback):
    """Writes what a run measured to ``path`` (JSON, rewritten atomically after each stage, rank 0 only).

    Keys: ``curve`` (after every training epoch that has validation metrics: ``epoch``, ``minutes`` since the fit
    started and every scalar ``val/*`` metric), ``fit_seconds``, ``epochs`` (completed), ``params`` (of the system's
    ``net``, else of the whole system), ``best_model_path`` and ``best_epoch`` (the checkpoint's ``epoch``),
    ``test`` (every scalar ``test/*`` metric) and, when the system keeps ``confusion_matrices["test"]``,
    ``confusion`` (rows: true class) with ``class_names``.

    Args:
        path: the JSON file (``<run_dir>/run.json``).
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = Path(path)
        self.record: dict[str, Any] = {"curve": []}
        self._start = 0.0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # the epoch's validation has run by now and the module has logged its metrics (a callback's
        # on_validation_epoch_end runs before the module's)
        val = _scalars(trainer.callback_metrics, "val/")
        if val:
            minutes = (time.perf_counter() - self._start) / 60
            self.record["curve"].append({"epoch": trainer.current_epoch, "minutes": minutes, **val})
            self._write()

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        net = getattr(pl_module, "net", pl_module)
        self.record.update(
            fit_seconds=time.perf_counter() - self._start,
            epochs=trainer.current_epoch,
            params=sum(p.numel() for p in net.parameters()),
        )
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") if ckpt is not None else ""
        self.record["best_model_path"] = best or None
        self.record["best_epoch"] = None
        if best and trainer.is_global_zero:
            import torch

            self.record["best_epoch"] = torch.load(best, map_location="cpu", weights_only=True).get("epoch")
        self._write()

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record["test"] = _scalars(trainer.callback_metrics, "test/")
        confusion = getattr(pl_module, "confusion_matrices", {}).get("test")
        if confusion is not None:
            self.record["confusion"] = [[int(c) for c in row] for row in confusion.tolist()]
            names = getattr(pl_module, "class_names", None)
            self.record["class_names"] = list(names) if names is not None else None
        self._write()

    @rank_zero_only
    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "w") as fh:
            json.dump(self.record, fh)


def read_record(run_dir: Path) -> dict[str, Any]:
    """``<run_dir>/run.json`` of :class:`RunRecorder` (``{}`` when the run wrote none, e.g. ``predict``)."""
    path = Path(run_dir) / RECORD_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


# ----------------------------------------------------------------------------------------------- runs
class RunFailed(RuntimeError):
    """A run's ``cli.py`` exited non-zero, or measured nothing the driver needs (the message names its log)."""


@dataclass(frozen=True)
class Run:
    """One ``cli.py`` run.

    Args:
        name: what the mean ± sd table groups by (a config, an arm, a variant, an override).
        seed: ``--seed_everything``.
        configs: the ``--config`` files, in order (base first).
        run_dir: the run's folder: ``output.log`` and ``run.json`` go here (and whatever the overrides send here).
        args: further ``cli.py`` arguments after the configs and the seed (overrides; they win).
        labels: further CSV columns that identify the run (e.g. ``{"dataset": "ckplus48", "lr": 1e-4}``).
        subcommand: ``fit`` (default), ``test``, ``validate`` or ``predict``.
    """

    name: str
    seed: int
    configs: tuple[Path, ...]
    run_dir: Path
    args: tuple[str, ...] = ()
    labels: Mapping[str, Any] = field(default_factory=dict)
    subcommand: str = "fit"

    def identity(self, name_column: str = "name") -> dict[str, Any]:
        """The columns that identify the run in a results CSV: its name (under ``name_column``), labels, seed."""
        return {name_column: self.name, **self.labels, "seed": self.seed}


def grid(configs: Mapping[str, Sequence[str | os.PathLike]], seeds: Iterable[int], out: Path,
         overrides: Mapping[str, Sequence[str]] | None = None, labels: Mapping[str, Any] | None = None) -> list[Run]:
    """Configs x overrides x seeds, seed-major (every config gets its first seed before any gets a second, so a
    partial sweep already covers them all).

    Args:
        configs: name -> config files, base first (a delta config after its base; :func:`config_files`).
        seeds: the ``--seed_everything`` values.
        out: runs go to ``<out>/runs/<config>[/<override>]/seed<seed>``.
        overrides: name -> ``cli.py`` arguments; ``None`` = one unnamed run per config.
        labels: extra CSV columns for every run.

    Returns:
        Runs named ``<config>/<override>`` (``<override>`` when there is one config, ``<config>`` without
        overrides), labelled with ``config`` and ``override`` (group by either).
    """
    sets = dict(overrides) if overrides else {"": ()}
    runs = []
    for seed in seeds:
        for cname, files in configs.items():
            paths = config_files(files)
            for oname, args in sets.items():
                name = f"{cname}/{oname}" if oname and len(configs) > 1 else (oname or cname)
                run_dir = Path(out) / "runs" / cname / oname / f"seed{seed}" if oname else \
                    Path(out) / "runs" / cname / f"seed{seed}"
                runs.append(Run(name, seed, paths, run_dir, tuple(args),
                                {**(labels or {}), "config": cname, "override": oname}))
    return runs


def confusion_matrix_callbacks(run_dir: Path) -> list[str]:
    """``cli.py`` arguments that replace a config's callback list by one ``ConfusionMatrixLogger`` writing into
    ``<run_dir>/confusion_matrices`` (not the config's own ``runs/<name>/``); add more with ``--trainer.callbacks+=``."""
    return ["--trainer.callbacks", "callbacks.confusion_matrix.ConfusionMatrixLogger",
            "--trainer.callbacks.dirpath", str(Path(run_dir) / "confusion_matrices")]


def command(run: Run, python: str = sys.executable) -> list[str]:
    """The ``cli.py`` command of ``run``, with :class:`RunRecorder` appended to its callbacks."""
    recorder = {"class_path": "scripts.experiments.RunRecorder", "init_args": {"path": str(run.run_dir / RECORD_FILE)}}
    cmd = [python, str(CLI), run.subcommand]
    for c in run.configs:
        cmd += ["--config", str(c)]
    cmd += ["--seed_everything", str(run.seed), *run.args]
    if run.subcommand != "predict":
        cmd.append("--trainer.callbacks+=" + json.dumps(recorder))
    return cmd


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def launch(run: Run, python: str = sys.executable) -> dict[str, Any]:
    """Run ``run`` as a ``cli.py`` subprocess (output in ``<run_dir>/output.log``) and return its record
    (:func:`read_record`).

    Raises:
        RunFailed: ``cli.py`` exited non-zero (the message holds the end of its log).
    """
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / RECORD_FILE).unlink(missing_ok=True)  # a record is this attempt's, never an earlier one's
    cmd = command(run, python)
    logfile = run.run_dir / LOG_FILE
    env = {**os.environ}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("WANDB_MODE", "offline")
    log.info("%s seed %d: %s", run.name, run.seed, " ".join(cmd))
    with logfile.open("w", encoding="utf-8") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise RunFailed(f"cli.py {run.subcommand} exited with {proc.returncode}; see {logfile}\n{_log_tail(logfile)}")
    return read_record(run.run_dir)


def read_rows(path: Path, required: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The rows of a results CSV (strings); ``ValueError`` naming the file when columns in ``required`` miss."""
    if not Path(path).is_file():
        return []
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = reader.fieldnames or []
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: not a results file of this runner (missing columns {missing}); use another --out")
    return rows


def write_rows(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str]) -> None:
    """Per-run rows as CSV (``columns``, extra keys dropped), rewritten atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path, "w", newline="") as f:
        f.write(buf.getvalue())


def ok(row: Mapping[str, Any]) -> bool:
    """Whether a results row is a finished run (``status`` ``ok``; rows without a status are finished runs)."""
    return row.get("status", "ok") in ("ok", "", None)


def run_all(runs: Sequence[Run], to_row: Callable[[Run, dict[str, Any]], dict[str, Any]], *,
            results: Path | None = None, columns: Sequence[str] = (), rows: list[dict[str, Any]] | None = None,
            jobs: int = 1, python: str = sys.executable, resume: bool = False,
            launcher: Callable[..., dict[str, Any]] | None = None, name_column: str = "name",
            on_row: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Launch ``runs`` and collect one row per run.

    A finished run's row is ``to_row(run, record)`` plus ``status: ok``; a run that raised becomes a row of its
    :meth:`Run.identity` with ``status: failed`` and ``error`` (recorded, not swallowed: see :func:`failures`). After
    every run the rows go to ``results`` (atomically; ``columns`` + ``status`` + ``error``) and to ``on_row``.

    Args:
        to_row: ``(run, its record) -> row`` (metrics columns; ``RunFailed`` when the record lacks them).
        rows: earlier rows to keep (e.g. read back from ``results``); returned with the new ones appended.
        jobs: runs at a time (threads, each waiting on its subprocess).
        resume: skip the runs whose :meth:`Run.identity` has an ``ok`` row in ``rows``; earlier failed rows of the
            runs launched again are dropped.
        launcher: ``launch`` (default); tests pass a fake.
        name_column: the column holding :attr:`Run.name` (``model``, ``variant``, ...).
    """
    rows = list(rows or [])
    launcher = launcher or launch

    def ident(run: Run) -> tuple[str, ...]:
        return tuple(str(v) for v in run.identity(name_column).values())

    def row_key(row: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(str(row.get(c, "")) for c in (runs[0].identity(name_column) if runs else ()))

    todo = list(runs)
    if resume:
        done = {row_key(r) for r in rows if ok(r)}
        todo = [run for run in runs if ident(run) not in done]
        if len(todo) < len(runs):
            log.info("skipping %d finished run(s)%s", len(runs) - len(todo), f" already in {results}" if results else "")
        again = {ident(run) for run in todo}
        rows = [r for r in rows if ok(r) or row_key(r) not in again]
    all_columns = [*columns, *(c for c in ("status", "error") if c not in columns)]
    lock = threading.Lock()

    def one(run: Run) -> dict[str, Any]:
        try:
            return {**to_row(run, launcher(run, python=python)), "status": "ok", "error": ""}
        except Exception as exc:  # noqa: BLE001  (one failed run must not lose the others: it is recorded)
            log.error("%s seed %d failed: %s", run.name, run.seed, exc)
            return {**run.identity(name_column), "status": "failed", "error": str(exc).splitlines()[0]}

    def add(row: dict[str, Any]) -> None:
        with lock:
            rows.append(row)
            if results is not None:
                write_rows(rows, results, all_columns)
            if on_row is not None:
                on_row(rows)

    if jobs <= 1:
        for run in todo:
            add(one(run))
    else:
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for fut in as_completed([pool.submit(one, r) for r in todo]):
                add(fut.result())
    return rows


def failures(rows: Iterable[Mapping[str, Any]], name_column: str = "name") -> list[str]:
    """``"<name> seed <seed>: <error>"`` for every failed row."""
    return [f"{r.get(name_column)} seed {r.get('seed')}: {r.get('error', '')}" for r in rows if not ok(r)]


def check(rows: Iterable[Mapping[str, Any]], name_column: str = "name") -> None:
    """Raise :class:`RunFailed` listing the failed rows, if any (call it after the tables are written)."""
    failed = failures(rows, name_column)
    if failed:
        raise RunFailed(f"{len(failed)} run(s) failed:\n  " + "\n  ".join(failed))


# ----------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``nan`` below two values) of ``n`` values."""

    mean: float
    sd: float
    n: int


@dataclass(frozen=True)
class Metric:
    """A summary column: ``key`` in the rows, ``header`` in the table, ``fmt`` of mean and sd, ``scale`` applied
    first (e.g. 100 for percent)."""

    key: str
    header: str | None = None
    fmt: str = ".3f"
    scale: float = 1.0

    @property
    def title(self) -> str:
        return self.header or self.key


def stat(values: Iterable[Any]) -> Stat:
    """:class:`Stat` of the numeric values (blank and ``nan`` values are not counted)."""
    vals = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(x):
            vals.append(x)
    if not vals:
        return Stat(math.nan, math.nan, 0)
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan, len(vals))


def cell(s: Stat, fmt: str = ".3f") -> str:
    """``mean ± sd``; the mean alone for one value, ``-`` for none."""
    if not s.n:
        return "-"
    if s.n < 2 or math.isnan(s.sd):
        return format(s.mean, fmt)
    return f"{s.mean:{fmt}} ± {s.sd:{fmt}}"


@dataclass(frozen=True)
class Group:
    """The finished runs of one group: its ``key`` values (one per ``by`` column), run count, per-metric stats."""

    key: tuple[Any, ...]
    n: int
    stats: dict[str, Stat]


def summarise(rows: Iterable[Mapping[str, Any]], by: Sequence[str], metrics: Sequence[Metric | str],
              order: Sequence[tuple[Any, ...]] | None = None) -> list[Group]:
    """Group the ``ok`` rows by the ``by`` columns (first-seen order, or ``order``) and take each metric's
    :class:`Stat` (scaled)."""
    ms = [m if isinstance(m, Metric) else Metric(m) for m in metrics]
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        if ok(r):
            groups.setdefault(tuple(r[c] for c in by), []).append(r)
    keys = [k for k in order if k in groups] if order is not None else list(groups)
    out = []
    for k in keys:
        g = groups[k]
        out.append(Group(k, len(g), {m.key: _scaled(stat(r.get(m.key) for r in g), m.scale) for m in ms}))
    return out


def _scaled(s: Stat, scale: float) -> Stat:
    return Stat(s.mean * scale, s.sd * scale, s.n) if scale != 1.0 else s


def summary_table(groups: Sequence[Group], by: Sequence[str], metrics: Sequence[Metric | str], *,
                  headers: Mapping[str, str] | None = None, n_header: str = "seeds",
                  display: Mapping[str, Mapping[Any, str]] | None = None) -> list[str]:
    """Markdown lines: one row per group, ``by`` columns (shown through ``display[column]`` when given), the run
    count, then ``mean ± sd`` per metric."""
    ms = [m if isinstance(m, Metric) else Metric(m) for m in metrics]
    head = [(headers or {}).get(c, c) for c in by] + [n_header] + [m.title for m in ms]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        names = [str((display or {}).get(c, {}).get(v, v)) for c, v in zip(by, g.key)]
        cells = [cell(g.stats[m.key], m.fmt) for m in ms]
        lines.append("| " + " | ".join([*names, str(g.n), *cells]) + " |")
    return lines


def write_summary_csv(groups: Sequence[Group], by: Sequence[str], metrics: Sequence[Metric | str],
                      path: Path) -> None:
    """The same summary as CSV: ``by`` columns, ``n``, then ``<metric>_mean``, ``<metric>_sd``, ``<metric>_n``."""
    ms = [m if isinstance(m, Metric) else Metric(m) for m in metrics]
    columns = [*by, "n", *(f"{m.key}_{s}" for m in ms for s in ("mean", "sd", "n"))]
    rows = []
    for g in groups:
        row: dict[str, Any] = dict(zip(by, g.key), n=g.n)
        for m in ms:
            s = g.stats[m.key]
            row.update({f"{m.key}_mean": s.mean, f"{m.key}_sd": s.sd, f"{m.key}_n": s.n})
        rows.append(row)
    write_rows(rows, path, columns)


def plot_summary(groups: Sequence[Group], metrics: Sequence[Metric | str], path: Path, title: str = "",
                 label: Callable[[Group], str] | None = None) -> Path:
    """Bar chart, one panel per metric, one bar per group with the sd as error bar (matplotlib, Agg), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ms = [m if isinstance(m, Metric) else Metric(m) for m in metrics]
    label = label or (lambda g: " / ".join(str(k) for k in g.key))
    fig = Figure(figsize=(max(4.2, 0.45 * len(groups) + 1.5) * len(ms), 3.8))
    FigureCanvasAgg(fig)
    for i, m in enumerate(ms):
        ax = fig.add_subplot(1, len(ms), i + 1)
        means = [g.stats[m.key].mean for g in groups]
        sds = [0.0 if math.isnan(g.stats[m.key].sd) else g.stats[m.key].sd for g in groups]
        ax.bar(range(len(groups)), means, yerr=sds, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(groups)), [label(g) for g in groups], rotation=60, ha="right", fontsize=8)
        ax.set_title(m.title)
        ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return path


def write_summary(rows: Iterable[Mapping[str, Any]], stem: Path, by: Sequence[str],
                  metrics: Sequence[Metric | str], *, headers: Mapping[str, str] | None = None,
                  n_header: str = "seeds", display: Mapping[str, Mapping[Any, str]] | None = None,
                  order: Sequence[tuple[Any, ...]] | None = None, plot: Sequence[Metric | str] | None = None,
                  title: str = "") -> list[str]:
    """The one table writer: mean ± sd per group as ``<stem>_summary.csv`` and (with ``plot``) ``<stem>.png``;
    returns the markdown table lines (the caller puts them in its report). Empty when no run finished."""
    groups = summarise(rows, by, metrics, order=order)
    if not groups:
        return []
    write_summary_csv(groups, by, metrics, stem.with_name(stem.name + "_summary.csv"))
    if plot:
        display = display or {}
        plot_summary(groups, plot, stem.with_suffix(".png"), title,
                     label=lambda g: " / ".join(str(display.get(c, {}).get(v, v)) for c, v in zip(by, g.key)))
    return summary_table(groups, by, metrics, headers=headers, n_header=n_header, display=display)
