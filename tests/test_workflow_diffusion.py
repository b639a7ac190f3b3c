"""The diffusion-augmenter workflow of ``docs/workflows/diffusion.md`` run verbatim (issue #24): ResNet-18 -> VAE ->
LDM -> generate -> augmented fit, each documented command as a subprocess, in order, in a fresh folder, with
tiny-budget flags appended. Checks each step's outputs, that every output is under the step's run folder (nothing
else appears in the working folder), that each command ends by saying where its outputs are, and that the augmented
fit reads the generated images. ``slow``: real CK+48 (skipped when ``/work/shared/data/ckplus48`` is absent).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes_images import real_root

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "workflows" / "diffusion.md"

#: The documented commands, in order (each must appear verbatim in the docs page), with the run folder each one
#: writes and the tiny-budget flags the test appends.
_FIT_TINY = ("--trainer.max_steps 1 --trainer.limit_train_batches 1 --trainer.limit_val_batches 1 "
             "--trainer.limit_test_batches 1 --data.init_args.batch_size 4 --data.init_args.num_workers 0 "
             "--trainer.enable_progress_bar false")
STEPS: list[tuple[str, str, str]] = [
    (".venv/bin/python cli.py fit --config configs/fer/baselines/resnet18_ckplus48.yaml",
     "runs/fer_resnet18_ckplus48", _FIT_TINY),
    (".venv/bin/python cli.py fit --config configs/ldm/vae_ckplus48.yaml",
     "runs/ldm_vae_ckplus48", _FIT_TINY + " --test_after_fit false"),
    (".venv/bin/python cli.py fit --config configs/ldm/ldm_ckplus48.yaml",
     "runs/ldm_ckplus48", _FIT_TINY + " --test_after_fit false --trainer.check_val_every_n_epoch 1 "
     "--trainer.callbacks.init_args.num_inference_steps 2"),
    ((".venv/bin/python cli.py predict --config configs/ldm/generate_ckplus48.yaml "
     "--ckpt_path runs/ldm_ckplus48/checkpoints/last.ckpt"),
     "runs/generate_ckplus48",
     ("--model.init_args.num_inference_steps 2 --data.init_args.total_multiplier 0.02 "
     "--data.init_args.scarce_multiplier 1.0 --trainer.callbacks.init_args.quality null "
     "--trainer.callbacks.init_args.progress none")),
    ((".venv/bin/python cli.py fit --config configs/fer/swin2b_ckplus48.yaml "
     "--config configs/ldm/swin2b_ckplus48_augmented.yaml "
     "--data.init_args.extra_roots '[runs/generate_ckplus48/augmented]'"),
     "runs/swin2b_ckplus48_augmented", _FIT_TINY),
]

#: What the working folder may hold after the chain: the links the user has (configs, data), the run folders, and
#: the face datamodule's preprocessing cache (cache/fer/, shared by the runs on purpose, gitignored).
ALLOWED_TOP = {"configs", "data", "runs", "cache"}


def _argv(doc_line: str, tiny: str) -> list[str]:
    argv = shlex.split(doc_line) + shlex.split(tiny)
    assert argv[:2] == [".venv/bin/python", "cli.py"]
    return [sys.executable, str(REPO / "cli.py"), *argv[2:]]


def _run(argv: list[str], cwd: Path, log: Path) -> str:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    out = proc.stdout + proc.stderr
    log.write_text(out)
    assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{out[-4000:]}"
    return out


def test_docs_page_lists_exactly_these_commands() -> None:
    text = DOC.read_text(encoding="utf-8")
    for line, _, _ in STEPS:
        assert line in text, f"{DOC.name} lacks the command {line!r}"


def test_diffusion_workflow_runs_as_documented(tmp_path: Path) -> None:
    data = real_root("ckplus48")
    if data is None:
        pytest.skip("CK+48 not found at /work/shared/data/ckplus48 (see /work/shared/data/README)")
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "configs").symlink_to(REPO / "configs")
    (work / "data" / "ckplus48").symlink_to(data)
    logs = tmp_path / "logs"
    logs.mkdir()
    outputs = {}
    for i, (line, run, tiny) in enumerate(STEPS, 1):
        out = _run(_argv(line, tiny), work, logs / f"step{i}.log")
        outputs[run] = out
        assert (work / run).is_dir(), f"step {i} wrote no {run}/"
        assert {p.name for p in work.iterdir()} <= ALLOWED_TOP, (
            f"step {i} wrote outside its run folder: {sorted({p.name for p in work.iterdir()} - ALLOWED_TOP)}")
        assert {f"runs/{p.name}" for p in (work / "runs").iterdir()} <= {r for _, r, _ in STEPS[:i]}, (
            f"step {i} wrote an unexpected folder under runs/: {sorted(p.name for p in (work / 'runs').iterdir())}")
    # 1. the recognition model
    assert (work / "runs/fer_resnet18_ckplus48/checkpoints/last.ckpt").is_file()
    # 2. VAE: checkpoint, labelled input/reconstruction image, metrics, the outputs line last
    vae = work / "runs/ldm_vae_ckplus48"
    assert (vae / "checkpoints/last.ckpt").is_file() and (vae / "config.yaml").is_file()
    assert list((vae / "reconstructions").glob("epoch_*.png"))
    # 3. LDM: the labelled sample grid, under its run folder
    ldm = work / "runs/ldm_ckplus48"
    assert (ldm / "checkpoints/last.ckpt").is_file()
    from PIL import Image

    grids = sorted((ldm / "samples").glob("epoch_*.png"))
    assert grids
    with Image.open(grids[-1]) as im:  # 7 class rows of 48 px faces shown at 96 px, plus the label margin
        assert im.height == 7 * 96 and im.width > 4 * 96
    for _, run, _ in STEPS:  # every command ends by naming its outputs, inside its run folder (cli.py)
        assert re.search(rf"^(fit|predict) outputs: \S*{run}/", outputs[run], re.MULTILINE), run
    # 4. generate: the consistency encoder was not needed; images + manifest under the run folder
    gen = work / "runs/generate_ckplus48"
    aug = gen / "augmented"
    records = [json.loads(x) for x in (aug / "manifest.jsonl").read_text().splitlines()]
    pngs = sorted(aug.glob("*/*.png"))
    assert records and len(pngs) == sum(r["status"] == "accepted" for r in records) > 0
    assert list(gen.rglob("config*.yaml"))  # the resolved config (cli.py: config_predict.yaml, in the output folder)
    # 5. the augmented fit read the generated images (train split only)
    swin = work / "runs/swin2b_ckplus48_augmented"
    assert (swin / "checkpoints/last.ckpt").is_file()
    saved = (swin / "config.yaml").read_text()
    assert "runs/generate_ckplus48/augmented" in saved
    real_train = _train_size(outputs["runs/fer_resnet18_ckplus48"])  # same split (subject groups, seed 42)
    assert _train_size(outputs["runs/swin2b_ckplus48_augmented"]) == real_train + len(pngs)


def _train_size(log: str) -> int:
    """The train split size the face datamodule logged (``FER datasets: {'train': N, ...}``)."""
    m = re.search(r"FER datasets: \{'train': (\d+)", log)
    assert m, "the face datamodule logged no split sizes"
    return int(m.group(1))
