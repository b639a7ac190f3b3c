"""The generic top-level package names (models, callbacks, ...) must resolve to this repository."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["models", "lightning_modules", "datamodules", "callbacks", "features", "cli"])
def test_package_is_ours(name: str) -> None:
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(REPO), module.__file__


def test_models_do_not_import_lightning() -> None:
    code = (
        "import sys, importlib, pkgutil, models, features\n"
        "for pkg in (models, features):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "bad = [k for k in sys.modules if k == 'lightning' or k.startswith('lightning.') or k.startswith('pytorch_lightning')]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         check=False)
    assert res.returncode == 0, res.stdout + res.stderr
