"""Helpers of ``cli.py`` that keep it short: the fast ``cli.py --help`` overview, where each subcommand writes its
resolved config, and the closing line that says where a command's outputs are.

Only the standard library is imported at module level: :func:`overview` runs before Lightning is imported (the
``cli.py --help`` fast path), so it reads the project's classes from the source files (``ast``) and the configs
(``class_path`` lines) instead of importing them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

__all__ = ["SUBCOMMANDS", "asks_for_help", "command_line_keys", "import_project_classes", "outputs_line", "overview", "prediction_output_dir", "prediction_writer",
           "saved_config_name"]

ROOT = Path(__file__).resolve().parents[1]

#: The subcommands ``cli.py`` runs, with one line each.
SUBCOMMANDS: dict[str, str] = {
    "fit": "train (then validate and test the best checkpoint; --test_after_fit false skips it)",
    "validate": "evaluate a checkpoint on the validation split",
    "test": "evaluate a checkpoint on the test split",
    "predict": "run a checkpoint on new inputs (e.g. configs/fer/predict_video.yaml: classroom video analysis)",
}

_CLASS_PATH = re.compile(r"class_path:\s*(models\.[\w.]+)")


def _first_docstring_line(node: ast.ClassDef) -> str:
    doc = ast.get_docstring(node) or ""
    return doc.strip().split("\n", 1)[0].strip() if doc.strip() else ""


def _classes(folder: str, keep: Any) -> dict[str, str]:
    """``{module.Class: first docstring line}`` of the public top-level classes of ``ROOT/folder/*.py`` whose name
    passes ``keep``."""
    out: dict[str, str] = {}
    for path in sorted((ROOT / folder).glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and keep(node.name):
                out[f"{folder}.{path.stem}.{node.name}"] = _first_docstring_line(node)
    return out


def _config_nets() -> dict[str, str]:
    """``{class path: first docstring line}`` of every net (a ``models.`` class path) the shipped configs name."""
    paths: set[str] = set()
    for cfg in (ROOT / "configs").rglob("*.yaml"):
        paths.update(_CLASS_PATH.findall(cfg.read_text(encoding="utf-8", errors="replace")))
    out: dict[str, str] = {}
    for cp in sorted(paths):
        module, _, name = cp.rpartition(".")
        base = ROOT / Path(*module.split("."))
        # a module, or a package whose __init__ re-exports the class from one of its files
        files = [base.with_suffix(".py")] if base.with_suffix(".py").is_file() else sorted(base.glob("*.py"))
        doc = ""
        for file in files:
            for node in ast.parse(file.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef) and node.name == name:
                    doc = _first_docstring_line(node)
        out[cp] = doc
    return out


def _section(title: str, items: dict[str, str], max_width: int = 118) -> list[str]:
    width = max((len(k) for k in items), default=0)
    lines = []
    for k, v in items.items():
        line = f"  {k:<{width}}  {v.replace('``', '')}".rstrip()
        lines.append(line if len(line) <= max_width else line[: max_width - 3].rstrip() + "...")
    return [title, *lines, ""]


def overview() -> str:
    """The text of ``cli.py --help``: subcommands, the project's systems, nets and datamodules (one line each) and
    where to look next. Reads source files only (no import of Lightning, torch or the project's packages)."""
    lines = [
        "usage: cli.py {fit,validate,test,predict} --config CONFIG [--config CONFIG ...] [--key value ...]",
        "",
        "Affect recognition experiments (LightningCLI). Every configs/**/*.yaml starts with its own run command.",
        "",
        *_section("subcommands:", SUBCOMMANDS),
        *_section("systems (--model, class_path):", _classes("lightning_modules", lambda n: n.startswith("Lit"))),
        *_section("nets and their parts (--model.init_args.net and nested class_path entries; those the shipped "
                 "configs use):", _config_nets()),
        *_section("datamodules (--data, class_path):", _classes("datamodules", lambda n: n.endswith("DataModule"))),
        "next:",
        "  cli.py fit --help                                every option of a subcommand",
        "  cli.py fit --config CONFIG --print_config        the resolved config, defaults included",
        "  cli.py fit --model.help lightning_modules.fer.LitFER   the options of one class",
        "  docs/cli.md                                      the command line in detail",
    ]
    return "\n".join(lines) + "\n"


def asks_for_help(args: Any) -> bool:
    """Whether a command line asks for a subcommand's help (``-h`` / ``--help``; not ``--<key>.help CLASS``, whose
    class is imported by jsonargparse anyway)."""
    return isinstance(args, (list, tuple)) and any(a in ("-h", "--help") for a in args)


def import_project_classes() -> None:
    """Import the modules of the project's systems and datamodules, so that jsonargparse's help lists them as the
    known subclasses of ``LightningModule`` / ``LightningDataModule`` (it only lists imported classes). A module
    that fails to import (an optional dependency missing) is skipped."""
    import importlib
    import logging

    for folder, keep in (("lightning_modules", lambda n: n.startswith("Lit")),
                         ("datamodules", lambda n: n.endswith("DataModule"))):
        for module in sorted({cp.rpartition(".")[0] for cp in _classes(folder, keep)}):
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - help must still print; say which module is missing
                logging.getLogger(__name__).warning("--help: %s not listed (%s)", module, err)


def command_line_keys(args: Any, section: str) -> set[str]:
    """The top-level ``init_args`` keys of ``section`` (``"data"``, ``"model"``) set on the command line itself
    (``--data.init_args.image_size 64``, ``--data.image_size=64``); config files do not count. ``args``: the
    argument list (``None``: ``sys.argv``); a dict of arguments gives none."""
    import sys

    if args is None:
        args = sys.argv[1:]
    if not isinstance(args, (list, tuple)):
        return set()
    keys: set[str] = set()
    for a in args:
        if not isinstance(a, str) or not a.startswith(f"--{section}."):
            continue
        parts = a[2:].split("=", 1)[0].split(".")[1:]
        if parts and parts[0] == "init_args":
            parts = parts[1:]
        if parts and parts[0] not in ("help", "class_path", "dict_kwargs"):
            keys.add(parts[0])
    return keys


def whole_model_flags(args: Any) -> set[str]:
    """The top-level model settings set WHOLE on the command line (``--model.init_args.lr``); a nested flag such as
    ``--model.init_args.net.init_args.x`` changes only part of one, so it is not compared with a checkpoint."""
    given = args if isinstance(args, (list, tuple)) else []
    return {k for k in command_line_keys(args, "model")
            if any(isinstance(a, str) and a.split("=")[0] in (f"--model.init_args.{k}", f"--model.{k}") for a in given)}


# ---------------------------------------------------------------------- saved configs and outputs
def saved_config_name(stage: Any, filename: str = "config.yaml") -> str:
    """``config.yaml`` for ``fit``; ``config_<stage>.yaml`` for the other subcommands, so that ``test`` or
    ``predict`` never replaces the resolved config of the training run (nor one of another subcommand).
    ``stage``: a subcommand name or Lightning's ``TrainerFn``."""
    stage = str(getattr(stage, "value", stage))
    if stage == "fit":
        return filename
    p = Path(filename)
    return f"{p.stem}_{stage}{p.suffix}"


def prediction_writer(trainer: Any) -> Any | None:
    """The trainer's prediction writer (a callback with ``write_on_batch_end`` and an ``output_dir``), if any."""
    for cb in getattr(trainer, "callbacks", []) or []:
        if getattr(cb, "output_dir", None) and hasattr(cb, "write_on_batch_end"):
            return cb
    return None


def prediction_output_dir(trainer: Any) -> Path | None:
    """The output folder of the trainer's prediction writer, if any."""
    writer = prediction_writer(trainer)
    return Path(writer.output_dir) if writer is not None else None


def outputs_line(stage: str, trainer: Any, run_dir: Path | None, config_path: Path | None) -> str:
    """One line naming where ``stage``'s outputs are: the run folder (checkpoints, logs) after ``fit``, the metrics
    file (if a logger wrote one) after ``validate``/``test``, the output folder and its files after ``predict``."""
    if stage == "predict":
        writer = prediction_writer(trainer)
        if writer is None:
            return f"predict: no prediction writer in the config, nothing written (config: {config_path})"
        out = Path(writer.output_dir)
        files = {Path(p).name for p in getattr(writer, "written", None) or []}
        if config_path is not None and config_path.parent == out:
            files.add(config_path.name)
        return f"predict outputs: {out}/ ({', '.join(sorted(files)) or 'nothing written'})"
    logger = getattr(trainer, "logger", None)
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    metrics = Path(log_dir) / "metrics.csv" if log_dir else None
    logs = f"; metrics: {metrics}" if metrics is not None and metrics.is_file() else \
        f"; logs: {log_dir}" if log_dir else ""
    if stage == "fit":
        ckpt = getattr(trainer, "checkpoint_callback", None)
        ckpts = getattr(ckpt, "dirpath", None)
        where = f"checkpoints: {ckpts}" if ckpts else "no checkpoints"
        return f"fit outputs: {run_dir}/ ({where}; config: {config_path}{logs})"
    return f"{stage} outputs: metrics printed above{logs}; config: {config_path}"
