"""The layout of docs/architecture.md: generic package names resolve here, and imports only point downward.

The dependency direction is checked statically (an ``ast`` scan of every tracked ``.py`` file, imports inside
functions included), so a lazy import cannot hide a wrong edge. Imports by name (``importlib``, ``__import__``, a
class path in a string) are edges that scan cannot see: the packages of :data:`NO_DYNAMIC_IMPORTS` make none.
"""

from __future__ import annotations

import ast
import importlib
import re
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
#: Packages that import nothing by name: no ``importlib`` (but its metadata readers), ``__import__``, ``runpy`` /
#: ``pydoc.locate`` or jsonargparse-style instantiation, and no class path of a layer above them in a string. Such an
#: import is an upward edge the static scan cannot see (``features/`` once rebuilt face nets of ``models/`` from a
#: checkpoint's class path; its face model is now built above it and injected, ``pipelines/extract.py``).
NO_DYNAMIC_IMPORTS = ("features",)
#: Modules that import code by name.
DYNAMIC_IMPORT_MODULES = ("importlib", "runpy", "pydoc")
#: Submodules of those that read metadata only (package versions, data files): allowed.
METADATA_MODULES = ("importlib.metadata", "importlib.resources")
#: Calls that import, or instantiate, what a string names.
DYNAMIC_IMPORT_CALLS = frozenset({
    "__import__", "import_module", "find_spec", "spec_from_file_location", "spec_from_loader", "module_from_spec",
    "exec_module", "load_module", "run_module", "run_path", "locate", "import_object", "import_string",
    "instantiate_class", "get_class", "_get_class",
})
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+$")


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


def _dynamic_module(name: str) -> bool:
    return (name.split(".")[0] in DYNAMIC_IMPORT_MODULES
            and not any(name == m or name.startswith(m + ".") for m in METADATA_MODULES))


def dynamic_imports(package: str, source: str) -> list[str]:
    """Imports by name in ``source`` (a file of ``package``): a module that imports code by name, a call that imports
    or instantiates what a string names (unless it names a library module in place: ``__import__("_codecs")``), or
    a string that is a class / module path of a layer above ``package``."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [f"{package} imports {a.name} (imports by name)" for a in node.names if _dynamic_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] if node.module not in ("importlib",) else [f"importlib.{a.name}" for a in node.names]
            bad += [f"{package} imports {n} (imports by name)" for n in names if _dynamic_module(n)]
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            first = node.args[0] if node.args else None
            fixed = (isinstance(first, ast.Constant) and isinstance(first.value, str)
                     and first.value.split(".")[0] not in LEVEL)  # a library module named in place, e.g. "_codecs"
            if name in DYNAMIC_IMPORT_CALLS and not fixed:
                bad.append(f"{package} calls {name}() (line {node.lineno}): an import by name")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.match(node.value):
            top = node.value.split(".")[0]
            if top in LEVEL and package in LEVEL and LEVEL[top] < LEVEL[package]:
                bad.append(f"{package} names {node.value!r} (line {node.lineno}), a path in {top}, which is above it")
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


def test_no_imports_by_name_where_banned() -> None:
    files = [f for f in _python_files() if _package_of(f) in NO_DYNAMIC_IMPORTS]
    assert any(f.name == "vision.py" for f in files)  # the scan really sees features/
    bad = [f"{f.relative_to(REPO)}: {v}" for f in files for v in dynamic_imports(_package_of(f), f.read_text())]
    assert bad == []


def test_the_scan_sees_imports_by_name() -> None:
    """The checker itself: importlib, __import__, a class path above the package in a string (the way features/ once
    rebuilt a face net of models/ from a checkpoint's class path) are caught; metadata readers and text are not."""
    old_face_net = ("def build(class_path, n):\n    import importlib\n\n    module, name = class_path.rsplit('.', 1)\n"
                    "    return getattr(importlib.import_module(module), name)(n)\n")
    assert len(dynamic_imports("features", old_face_net)) == 2  # the import and the call
    assert dynamic_imports("features", "from importlib import import_module\n")
    assert dynamic_imports("features", "import importlib.util\n")
    assert dynamic_imports("features", "m = __import__('models.shipped')\n")
    assert dynamic_imports("features", "m = __import__(name)\n")
    assert not dynamic_imports("features", "encode = __import__('_codecs').encode\n")  # a library module, in place
    assert dynamic_imports("features", "import runpy\nrunpy.run_module('pipelines.extract')\n")
    assert dynamic_imports("features", "NETS = ('models.timm_classifier.TimmClassifier',)\n")
    assert dynamic_imports("features", "x = ns.instantiate_class(cfg)\n")
    assert not dynamic_imports("features", "from importlib.metadata import version\nimport importlib.resources\n")
    assert not dynamic_imports("features", '"""Uses models.shipped.read_face_net above."""\nx = "features.extract"\n')
    assert not dynamic_imports("features", "msg = 'run python -m pipelines.extract instead'\n")
    assert not dynamic_imports("pipelines", "x = 'models.timm_classifier.TimmClassifier'\n")  # below: a plain name


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
