"""Import a repository script (``benchmarks/``, ``scripts/``: not packages) as a module, for testing its functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def load_script(relative_path: str) -> ModuleType:
    """Execute ``<repo>/<relative_path>`` as a fresh module named after the file (its ``main`` does not run)."""
    path = REPO / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
