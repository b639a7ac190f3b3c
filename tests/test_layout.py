"""The layout of docs/architecture.md: generic package names resolve here, and imports only point downward.

The dependency direction is checked statically (an ``ast`` scan of every tracked ``.py`` file, imports inside
functions included), so a lazy import cannot hide a wrong edge.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Top to bottom (docs/architecture.md, "Layout"): a module may import its own package and the ones BELOW it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "apps", "scripts", "benchmarks", "tests", "docs"),
    ("lightning_modules",),
    ("pipelines",),
    ("callbacks",),
    ("datamodules",),
    ("metrics",),
    ("models",),
    ("features",),
    ("common",),
)
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}
#: Packages that must work without Lightning (a notebook, a feature-extraction worker).
NO_LIGHTNING = ("pipelines", "models", "features", "common")


def _python_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True, check=False)
    files = [REPO / f for f in out.stdout.split()] if out.returncode == 0 else list(REPO.rglob("*.py"))
    return [f for f in files if f.is_file() and not any(p in f.parts for p in (".venv", "runs", "data"))]


def _package_of(path: Path) -> str:
    rel = path.relative_to(REPO)
    return rel.parts[0].removesuffix(".py")


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source`` (relative imports stay inside a package)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_violations(package: str, source: str) -> list[str]:
    """Imports of ``source`` (a file of ``package``) that point UP the layers, or into Lightning where banned."""
    bad = []
    for name in sorted(imported_packages(source)):
        if name in LEVEL and package in LEVEL and LEVEL[name] < LEVEL[package]:
            bad.append(f"{package} imports {name}, which is above it")
        if package in NO_LIGHTNING and name in ("lightning", "pytorch_lightning"):
            bad.append(f"{package} imports {name}")
    return bad


@pytest.mark.parametrize("name", ["models", "lightning_modules", "datamodules", "callbacks", "features", "metrics",
                                  "common", "cli", "pipelines"])
def test_package_is_ours(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(REPO), module.__file__


def test_every_top_level_package_has_a_layer() -> None:
    packages = {_package_of(f) for f in _python_files()}
    assert packages <= set(LEVEL), f"add {sorted(packages - set(LEVEL))} to LAYERS and docs/architecture.md"


def test_imports_point_downward() -> None:
    files = _python_files()
    assert len(files) > 50  # the scan really sees the repository
    bad = [f"{f.relative_to(REPO)}: {v}" for f in files for v in layer_violations(_package_of(f), f.read_text())]
    assert bad == []


def test_the_scan_sees_upward_and_lazy_imports() -> None:
    """The checker itself: an upward import (also one inside a function) and Lightning in models/ are caught."""
    assert layer_violations("features", "from datamodules.fer import FERDataModule\n")
    assert layer_violations("models", "def f():\n    import lightning_modules.msa\n")
    assert layer_violations("models", "from lightning.pytorch import LightningModule\n")
    assert layer_violations("metrics", "import callbacks.loggers\n")
    assert not layer_violations("datamodules", "from features.images import load_image_rgb\nfrom common import x\n")
    assert not layer_violations("models", "from .graphs import MultimodalGraphBuilder\n")  # relative: same package


def test_models_and_features_do_not_import_lightning_at_run_time() -> None:
    code = (
        "import sys, importlib, pkgutil, models, features, common, pipelines\n"
        "for pkg in (models, features, common, pipelines):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [k for k in sys.modules if k == 'lightning' or k.startswith('lightning.') or k.startswith('pytorch_lightning')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
