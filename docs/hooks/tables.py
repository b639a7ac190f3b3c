"""MkDocs hook: a page line ``<!-- table: results/<name>.csv -->`` becomes the Markdown table of that CSV file.

The measured numbers live in ``docs/results/*.csv`` (one source of truth, one table row per line, header = column
titles); the pages say how, when and where each table was measured. Enabled by ``hooks:`` in ``mkdocs.yml``.
A missing file, an empty file or a row whose cell count differs from the header stops the build naming the file
and the row: a table is never rendered with shifted or dropped cells.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

#: ``<!-- table: results/x.csv -->`` alone on its line; the path is relative to the docs folder.
MARKER = re.compile(r"^<!--\s*table:\s*(?P<path>[^\s>]+)\s*-->[ \t]*$", re.MULTILINE)


class TableError(ValueError):
    """A results file cannot be rendered as a table (the message names the file and the problem)."""


def _cell(text: str) -> str:
    """One CSV cell as Markdown table text: ``|`` escaped, surrounding spaces dropped."""
    return text.strip().replace("|", "\\|")


def csv_to_markdown(path: Path) -> str:
    """The Markdown table of a CSV file whose first row holds the column titles.

    Args:
        path: the CSV file.

    Returns:
        The table, one line per row, without a trailing newline.

    Raises:
        TableError: the file is missing, has no header, has no data row, or a row's cell count differs from the
            header's.
    """
    if not path.is_file():
        raise TableError(f"results table '{path}': file not found")
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows or not any(c.strip() for c in rows[0]):
        raise TableError(f"results table '{path}': no header row")
    header = rows[0]
    if len(rows) < 2:
        raise TableError(f"results table '{path}': a header but no data row")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise TableError(f"results table '{path}', row {number}: {len(row)} cells, the header has "
                             f"{len(header)} ({row!r})")
    lines = ["| " + " | ".join(_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def render_tables(markdown: str, docs_dir: Path) -> str:
    """``markdown`` with every table marker replaced by the table of the CSV file it names.

    Args:
        markdown: a page's source.
        docs_dir: the folder the marker paths are relative to.

    Raises:
        TableError: a named file cannot be rendered (see :func:`csv_to_markdown`).
    """
    return MARKER.sub(lambda m: csv_to_markdown(docs_dir / m["path"]), markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    """MkDocs event: render the page's table markers; a bad file aborts the build as a plugin error."""
    from mkdocs.exceptions import PluginError

    try:
        return render_tables(markdown, Path(config["docs_dir"]))
    except TableError as err:
        raise PluginError(f"{page.file.src_path}: {err}") from err
