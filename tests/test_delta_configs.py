"""Delta configs compose explicitly, ``--config <base> --config <delta>``: each one (a config that names no system) is
listed with its base (``DELTAS`` in tests/helpers/configs.py), its header shows that command, the scripts' experiment
manifests pass it after a full config, and LightningCLI's parser composes the pair to what the scripts read
(:func:`scripts.experiments.compose_configs`): the delta's values win, the base's others stay.

There is no include mechanism in the configs themselves: jsonargparse 4.53 reads a ``config: <base>`` key inside a
YAML, but the file's own top-level sections then replace the base's whole sections, and a partial ``model:`` is
rejected (scripts/experiments.py). The last test pins that behaviour; when jsonargparse composes such a file, it
fails, and the deltas could name their base in the YAML instead.
"""

from __future__ import annotations

import contextlib
import importlib
import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli import cli_main
from scripts import run_fer_experiment, run_fer_transfer, run_msa_benchmark
from scripts.experiments import compose_configs
from tests.helpers.configs import CONFIGS, DELTAS, GENERIC_DIRS, REPO, header_lines, is_delta


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _configs() -> list[Path]:
    return sorted(p for p in CONFIGS.rglob("*.yaml") if p.relative_to(CONFIGS).parts[0] not in GENERIC_DIRS)


def test_every_delta_is_listed_over_an_existing_full_config() -> None:
    assert {_rel(p) for p in _configs() if is_delta(p)} == set(DELTAS), (
        "a config without model.class_path is a delta: list it with its base in DELTAS (tests/helpers/configs.py)"
    )
    for delta, base in DELTAS.items():
        assert (REPO / base).is_file(), f"{delta}: base {base} does not exist"
        assert not is_delta(REPO / base), f"{delta}: base {base} is itself a delta"


@pytest.mark.parametrize("delta", sorted(DELTAS))
def test_delta_header_shows_the_command_that_composes_it(delta: str) -> None:
    header = header_lines(REPO / delta)
    assert any(f"--config {DELTAS[delta]} --config {delta}" in line for line in header), (
        f"{delta}: the header's run command must pass {DELTAS[delta]} first"
    )
    # the retired convention: a comment that only imitated composition
    assert not any(line.lstrip("#").strip().startswith("base:") for line in header)


def _manifests() -> dict[str, tuple[str, ...]]:
    """Every config list of the scripts' experiment manifests that holds a delta, by a readable name."""
    out = {}
    for model, per_dataset in run_msa_benchmark.MODELS.items():
        out.update({f"run_msa_benchmark {model}/{ds}": files for ds, files in per_dataset.items()})
    for arm, (files, _) in run_fer_transfer.ARMS.items():
        out.update({f"run_fer_transfer {arm}/{ds}": tuple(f.format(ds=ds) for f in files)
                    for ds in run_fer_transfer.DATASETS})
    for model, entry in run_fer_experiment.MODELS.items():
        if isinstance(entry, tuple):
            out.update({f"run_fer_experiment {model}/{ds}": tuple(f.format(ds=ds) for f in entry)
                        for ds in run_fer_experiment.DATASETS})
    return {name: files for name, files in out.items() if any(f in DELTAS for f in files)}


def test_manifests_pass_each_delta_after_a_full_config() -> None:
    manifests = _manifests()
    assert {f for files in manifests.values() for f in files if f in DELTAS} >= {
        *(f"configs/baselines/msa_{m}_mosei.yaml" for m in ("lmf", "mfn", "raven", "mfm", "mult", "misa",
                                                               "mag_bert", "self_mm")),
        "configs/tfn_mosei.yaml", "configs/fer/transfer/resnet18s_jaffe_from_fer2013.yaml",
        "configs/fer/transfer/resnet18s_ckplus48_from_fer2013.yaml", "configs/fer/variants/sigmoid_gate.yaml",
        "configs/fer/transfer/swin2b_ckplus48.yaml", "configs/fer/transfer/swin2b_jaffe.yaml",
    }
    for name, files in manifests.items():
        for f in files:
            assert (REPO / f).is_file(), f"{name}: {f} does not exist"
        assert not is_delta(REPO / files[0]), f"{name}: the first file must be a full config, not {files[0]}"
        if not name.startswith("run_fer_experiment"):  # its variant is a delta over each dataset's config
            assert files == (DELTAS[files[-1]], files[-1]), f"{name}: {files} is not (base, delta) of DELTAS"


def _printed_config(args: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The config LightningCLI's parser composes from ``args`` (``--print_config``; nothing is instantiated)."""
    monkeypatch.chdir(REPO)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as stop:
        cli_main([*args, "--print_config"], run=False)
    assert stop.value.code == 0, f"{args} does not parse"
    return yaml.safe_load(buf.getvalue())


def _class(path: str) -> str:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return f"{cls.__module__}.{cls.__qualname__}"


def _assert_within(parsed: Any, expected: Any, where: str) -> None:
    """Every value of ``expected`` is in ``parsed`` (which adds the defaults); class paths compare as classes."""
    if isinstance(expected, dict):
        assert isinstance(parsed, dict), where
        for key, value in expected.items():
            assert key in parsed, f"{where}.{key} missing"
            if key == "class_path":
                assert _class(parsed[key]) == _class(value), f"{where}.class_path"
            else:
                _assert_within(parsed[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(parsed, list) and len(parsed) == len(expected), where
        for i, (p, e) in enumerate(zip(parsed, expected)):
            _assert_within(p, e, f"{where}[{i}]")
    else:
        assert parsed == expected, f"{where}: parsed {parsed!r}, files {expected!r}"


@pytest.mark.parametrize("delta", sorted(DELTAS))
def test_delta_composes_over_its_base_as_the_scripts_read_it(delta: str, monkeypatch: pytest.MonkeyPatch) -> None:
    base = DELTAS[delta]
    parsed = _printed_config(["--config", base, "--config", delta], monkeypatch)
    files = compose_configs([REPO / base, REPO / delta])
    _assert_within(parsed, files, "config")
    base_only = compose_configs([REPO / base])
    assert files != base_only, f"{delta} changes nothing"


def test_jsonargparse_config_key_does_not_compose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the deltas do not name their base in the YAML (``config: <base>``): the sections the file sets replace
    the base's, so a delta setting ``trainer.max_epochs`` silently loses the base's callbacks and clipping."""
    delta = tmp_path / "delta.yaml"
    delta.write_text(f"config: {REPO / 'configs/hgcl_mosi.yaml'}\ntrainer:\n  max_epochs: 3\n")
    parsed = _printed_config(["--config", str(delta)], monkeypatch)
    base = compose_configs([REPO / "configs/hgcl_mosi.yaml"])
    assert parsed["model"]["class_path"] == base["model"]["class_path"]  # the base was read ...
    assert parsed["trainer"]["max_epochs"] == 3
    assert base["trainer"]["callbacks"] and not parsed["trainer"]["callbacks"]  # ... but its trainer section is gone
