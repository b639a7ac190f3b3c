"""The README as a front door and the documentation site (issue #24): size, links, config paths, results tables,
and the strict MkDocs build that CI runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.scripts import load_script

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.md"

#: A repository config path as written in a command: ``configs/<...>.yaml`` (placeholders like ``<model>`` and
#: globs like ``*ckplus48*`` stop the match, so only concrete paths are checked).
CONFIG_PATH = re.compile(r"configs/[\w./-]+\.(?:ya?ml|sbatch)")
#: A fenced code block, or an inline code span.
CODE = re.compile(r"^```[^\n]*\n(.*?)^```|`([^`\n]+)`", re.MULTILINE | re.DOTALL)
#: A relative Markdown link target (no scheme, no pure anchor).
LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")

tables = load_script("docs/hooks/tables.py")


def doc_pages() -> list[Path]:
    """README.md, CHANGELOG.md and every Markdown page of the site."""
    return [README, REPO / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def code_text(markdown: str) -> str:
    """The text of every code block and inline code span of ``markdown``."""
    return "\n".join(block or span for block, span in CODE.findall(markdown))


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines; details belong on the docs site (docs/)"


def test_code_extraction_sees_blocks_and_spans() -> None:
    text = "a `configs/x.yaml` b\n```bash\npython cli.py fit --config configs/y.yaml\n```\nconfigs/prose.yaml\n"
    assert CONFIG_PATH.findall(code_text(text)) == ["configs/x.yaml", "configs/y.yaml"]


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_config_paths_in_commands_exist(page: Path) -> None:
    """Every ``configs/...yaml`` a README or docs code block names is a file of the repository."""
    named = sorted(set(CONFIG_PATH.findall(code_text(page.read_text(encoding="utf-8")))))
    missing = [p for p in named if not (REPO / p).is_file()]
    assert not missing, f"{page.relative_to(REPO)} names config files that do not exist: {missing}"


@pytest.mark.parametrize("page", [README, REPO / "CHANGELOG.md"], ids=["README.md", "CHANGELOG.md"])
def test_front_door_links_resolve(page: Path) -> None:
    targets = [t.split("#", 1)[0] for t in LINK.findall(page.read_text(encoding="utf-8"))]
    missing = [t for t in targets if t and not (page.parent / t).exists()]
    assert not missing, f"{page.name} links to files that do not exist: {missing}"


def test_readme_links_every_workflow_page() -> None:
    """One README row per workflow page, so a newcomer finds every workflow's command from the README."""
    rows = [line for line in README.read_text(encoding="utf-8").splitlines() if line.startswith("|")]
    linked = {m for line in rows for m in re.findall(r"\(docs/workflows/([\w-]+\.md)\)", line)}
    pages = {p.name for p in (DOCS / "workflows").glob("*.md")}
    assert pages and linked == pages, f"README workflow table links {sorted(linked)}, pages are {sorted(pages)}"
    for line in rows:
        if "docs/workflows/" in line:
            assert re.search(r"`[^`]*(cli\.py|python -m|scripts/)[^`]*`", line), f"row without a command: {line}"


def test_results_markers_name_tables_and_every_table_is_used() -> None:
    markers = [m["path"] for page in DOCS.rglob("*.md")
               for m in tables.MARKER.finditer(page.read_text(encoding="utf-8"))]
    assert markers, "no results table marker in docs/"
    for rel in markers:
        tables.csv_to_markdown(DOCS / rel)  # raises TableError naming the file
    unused = sorted(str(p.relative_to(DOCS)) for p in (DOCS / "results").glob("*.csv")
                    if str(p.relative_to(DOCS)) not in markers)
    assert not unused, f"results files no page shows: {unused}"


def test_csv_to_markdown_renders_rows_and_escapes_pipes(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text('model,acc\n"a, b",0.5 ± 0.1\nx|y,0.7\n', encoding="utf-8")
    assert tables.csv_to_markdown(path) == "| model | acc |\n|---|---|\n| a, b | 0.5 ± 0.1 |\n| x\\|y | 0.7 |"


@pytest.mark.parametrize(("content", "message"), [
    (None, "file not found"),
    ("", "no header row"),
    ("a,b\n", "no data row"),
    ("a,b\n1,2\n1,2,3\n", "row 3: 3 cells, the header has 2"),
])
def test_csv_to_markdown_refuses_bad_files_naming_them(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(tables.TableError, match=re.escape(message)) as err:
        tables.csv_to_markdown(path)
    assert str(path) in str(err.value)


def test_render_tables_replaces_only_markers(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "t.csv").write_text("a\n1\n", encoding="utf-8")
    page = "before\n<!-- table: results/t.csv -->\n<!-- other comment -->\n"
    assert tables.render_tables(page, tmp_path) == "before\n| a |\n|---|\n| 1 |\n<!-- other comment -->\n"


def _missing_docs_tools() -> list[str]:
    """The docs extra's packages (mkdocs, Material, mkdocstrings with its Python handler) that are not installed."""
    return [m for m in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers") if importlib.util.find_spec(m) is None]


def test_site_builds_strictly(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (as CI runs it) into a temporary folder: broken links, anchors, omitted pages,
    unresolvable ``:::`` references and bad results tables all fail it."""
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(f"the docs tools are not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    site = tmp_path / "site"
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, check=False,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    results = (site / "results" / "index.html").read_text(encoding="utf-8")
    assert results.count("<table>") >= 10 and "0.817 ± 0.043" in results
    assert "LitMSA" in (site / "reference" / "systems" / "index.html").read_text(encoding="utf-8")
    assert "2026-11-21" in (site / "changelog" / "index.html").read_text(encoding="utf-8")
