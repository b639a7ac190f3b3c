"""How ``cli.py`` talks to its user: the project's log lines shown, and a failed command's last line.

* :func:`show_project_logs`: the project's INFO lines (counts of cleaned values, skipped faces, split sizes) on
  stderr, rank 0 only; Python would show only warnings of a logger without handlers.
* :func:`reported_error`: the exception whose message ends a failed command (the project error that names a file,
  else the one raised inside a constructor that jsonargparse wrapped).
* :class:`ErrorSummaryParser`: a ``LightningArgumentParser`` whose usage errors end with one line naming the bad
  setting (:func:`parser_error_summary`).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.utilities import rank_zero_only

__all__ = ["PROJECT_PACKAGES", "ErrorSummaryParser", "innermost_project_error", "parser_error_summary",
           "project_errors", "reported_error", "show_project_logs"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: The project's top-level packages, whose INFO lines (NaN/inf cleaned per modality and split, faces skipped by
#: reason, split sizes, the generation plan, parameter counts) the CLI shows.
PROJECT_PACKAGES = ("common", "datamodules", "features", "lightning_modules", "callbacks", "models", "metrics",
                    "scripts")


class _RankZeroInfo(logging.Filter):
    """INFO and below on global rank 0 only (one copy under DDP); warnings and errors from every rank."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or rank_zero_only.rank == 0


class _StderrHandler(logging.StreamHandler):
    """Writes to the current ``sys.stderr`` (not the one of its creation: tests and tools swap it)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_PROJECT_HANDLER: logging.Handler | None = None


def show_project_logs(level: int = logging.INFO) -> None:
    """Send the project's log records at ``level`` and above to stderr (INFO on rank 0 only). Python shows only
    WARNING and above of a logger without handlers, so without this a CLI user never sees the counts the project
    logs. Idempotent."""
    global _PROJECT_HANDLER
    if _PROJECT_HANDLER is None:
        _PROJECT_HANDLER = _StderrHandler()
        _PROJECT_HANDLER.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        _PROJECT_HANDLER.addFilter(_RankZeroInfo())
    for name in PROJECT_PACKAGES:
        logger = logging.getLogger(name)
        if _PROJECT_HANDLER not in logger.handlers:
            logger.addHandler(_PROJECT_HANDLER)
        logger.setLevel(level)


def _in_project(filename: str) -> bool:
    path = Path(filename).resolve()
    return PROJECT_ROOT in path.parents and not any(p in path.parts for p in (".venv", "site-packages"))


def project_errors(err: BaseException) -> list[BaseException]:
    """The exceptions of ``err``'s chain (``__cause__``/``__context__``, outermost first) raised in project code."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        e = e.__cause__ or e.__context__
    return [e for e in chain if (frames := traceback.extract_tb(e.__traceback__)) and _in_project(frames[-1].filename)]


def innermost_project_error(err: BaseException) -> BaseException:
    """The deepest exception of ``err``'s chain (``__cause__``/``__context__``) raised in the project's own code,
    e.g. the ``ValueError`` of a constructor that jsonargparse wrapped into "Does not validate against any of the
    Union subtypes"; ``err`` itself when there is none."""
    ours = project_errors(err)
    return ours[-1] if ours else err


#: A file or URL in an error message: ``scheme://...``, a path with a separator, or a name with a file extension.
_NAMES_A_FILE = re.compile(r"\w+://\S+|[\w.~-]*/[\w.-]|\b[\w-]+\.(ckpt|pt|pth|bin|safetensors|ya?ml|jsonl?|pkl|npz|npy|csv)\b")


def reported_error(err: BaseException) -> BaseException:
    """The exception whose message ends a failed command: the OUTERMOST project error that names a file (e.g.
    ``CheckpointError: Checkpoint 'runs/x/best.ckpt' is truncated ...`` rather than the bare ``EOFError`` or
    ``KeyError`` inside it), else :func:`innermost_project_error`."""
    ours = project_errors(err)
    named = [e for e in ours if getattr(e, "filename", None) or _NAMES_A_FILE.search(str(e))]
    return named[0] if named else ours[-1] if ours else err


def parser_error_summary(message: str) -> str | None:
    """One line naming the bad setting and what was expected, from a jsonargparse error ``message`` that nests
    ``Parser key "..."`` sections (a class path that does not import or is of the wrong kind, an option the class
    does not take, a value outside a ``Literal``); ``None`` for other messages (already one line)."""
    keys = re.findall(r'Parser key "([^"]+)"', message)
    if not keys:
        return None
    where = ".init_args.".join(keys)
    given = re.findall(r"(?:Expected a path but (\S+) either|Given value: (\S+)$)", message, re.MULTILINE)
    value = next((a or b for a, b in given), None)
    base = re.search(r"Subtypes: \[<class '[\w.]*?(\w+)'>", message)
    expected = f" (expected a subclass of {base.group(1)})" if base else ""
    if m := re.search(r"Problem with given class_path '([^']+)':\n\s*(?!\s|Parser key)(.+)", message):
        cp, reason = m.groups()
        if re.search(r"has no attribute|No module named", reason):
            return f"{keys[0]}.class_path {cp!r} does not import: {reason}{expected}"
        return f"{keys[0]}.class_path {cp!r}: {reason}"
    if m := re.search(r"Import path does not correspond to a subclass of (\w+)", message):
        return f"{where}.class_path {value!r} is not a subclass of {m.group(1)}"
    if m := re.search(r"expects a function or a callable class: (.+?)\. Got value: ", message):
        reason = m.group(1)
        if re.search(r"has no attribute|No module named", reason):
            return f"{where} {value!r} does not import: {reason}"
        return f"{where}: {reason}"
    if m := re.search(r"Expected a typing\.Literal\[(.+?)\]\. Got value: (.+)", message):
        return f"{where}: got {m.group(2)!r}, expected one of {m.group(1)}"
    lines = [ln.strip(" -") for ln in message.splitlines()]
    skip = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value", "Expected a <class 'NoneType'>")
    reasons = [ln for ln in lines if ln and not ln.startswith(skip)]
    return f"{where}: {reasons[-1]}" if reasons else None


class ErrorSummaryParser(LightningArgumentParser):
    """``LightningArgumentParser`` whose usage errors end with :func:`parser_error_summary` (jsonargparse's full
    message stays above it)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        try:
            super().error(message, ex)
        except SystemExit:
            if summary := parser_error_summary(message):
                sys.stderr.write(f"error: {summary}\n")
            raise


def run_reporting_errors(command: Callable[[], object], cleanup: Callable[[], None] = lambda: None) -> None:
    """``cli.py``'s ``main``: run ``command`` with the project's INFO lines shown and, on failure, the project error
    that explains it as the last line (after the traceback, except for errors marked ``user_error``), exit status 1;
    ``cleanup`` runs in every case."""
    show_project_logs()
    try:
        command()
    except Exception as err:
        root = reported_error(err)
        if root is err and not project_errors(err):
            raise
        if not getattr(root, "user_error", False):
            traceback.print_exception(err)
        print(f"\nerror: {type(root).__name__}: {root}", file=sys.stderr)
        sys.exit(1)
    finally:
        cleanup()
