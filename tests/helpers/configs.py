"""Config files as a user composes them: a delta config names its base in a header line ``# base: <path>``.

The team convention (README, "HGCL ablations"): ``configs/ablations/*.yaml`` are small deltas over
``configs/hgcl_mosi.yaml``, run as ``cli.py fit --config configs/hgcl_mosi.yaml --config configs/ablations/<x>.yaml``.
Tests compose them the same way: :func:`config_args` gives the ``--config`` arguments, :func:`composed_config` the
merged mapping (later files override, mappings merge key by key, as jsonargparse does for these files).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
_BASE = re.compile(r"^#\s*base:\s*(\S+)\s*$")


def config_base(path: Path) -> Path | None:
    """The base named by the header comment of ``path`` (repository-relative), ``None`` for a full config."""
    for line in Path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        match = _BASE.match(line)
        if match:
            base = REPO / match.group(1)
            if not base.is_file():
                raise FileNotFoundError(f"{path}: header names base {match.group(1)!r}, which does not exist")
            return base
    return None


def config_chain(path: Path) -> list[Path]:
    """``[base of base, ..., base, path]``: the files to pass, in order, as ``--config``."""
    chain = [Path(path)]
    while (base := config_base(chain[0])) is not None:
        if base in chain:
            raise ValueError(f"{path}: the '# base:' headers form a cycle")
        chain.insert(0, base)
    return chain


def config_args(path: Path) -> list[str]:
    """``["--config", base, "--config", path]`` (just ``path`` for a full config)."""
    return [arg for p in config_chain(path) for arg in ("--config", str(p))]


def _merge(base: Any, delta: Any) -> Any:
    if isinstance(base, dict) and isinstance(delta, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in delta.items()}}
    return delta


def composed_config(path: Path) -> dict[str, Any]:
    """The merged YAML mapping of :func:`config_chain`."""
    merged: dict[str, Any] = {}
    for p in config_chain(path):
        merged = _merge(merged, yaml.safe_load(p.read_text()) or {})
    return merged
