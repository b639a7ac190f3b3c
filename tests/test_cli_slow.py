"""Multi-process and crash-recovery behaviour of `cli.py`, run as real subprocesses (slow)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.fakes import write_mmsa_pickle

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _config(tmp_path: Path, data: Path, max_epochs: int) -> Path:
    cfg = {
        "seed_everything": 11,
        "model": {"class_path": "lightning_modules.msa.LitMSA", "init_args": {
            "net": {"class_path": "models.tfn.TFN", "init_args": {"text_hidden": 16, "text_out": 16,
                                                                   "audio_hidden": 4, "vision_hidden": 4,
                                                                   "post_fusion_dim": 16, "dropout": 0.0}},
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.005}}}},
        "data": {"class_path": "datamodules.mosei.MMSADataModule",
                 "init_args": {"path": str(data), "batch_size": 8, "eval_batch_size": 4}},
        "trainer": {"max_epochs": max_epochs, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": str(tmp_path / "logs"), "name": "run"}}},
        "checkpoint": {"dirpath": str(tmp_path / "run" / "checkpoints"), "monitor": "val/mae", "mode": "min"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "cli.py", *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                         timeout=timeout, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    return res


def _test_metrics(log_dir: Path) -> dict[str, float]:
    with open(log_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        out.update({k: float(v) for k, v in row.items() if k.startswith("test/") and v != ""})
    assert out, f"no test metrics in {log_dir}"
    return out


def test_ddp_two_processes_give_the_same_test_metrics(tmp_path: Path) -> None:
    # Odd split sizes: the two DDP shards are uneven, so padding duplicates would change the metrics.
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=40, n_valid=13, n_test=15, seed=5)
    cfg = _config(tmp_path, data, max_epochs=2)
    ddp = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]
    _run(["fit", "--config", str(cfg), *ddp, "--test_after_fit", "false"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    _run(["test", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.logger.init_args.version", "one"])
    _run(["test", "--config", str(cfg), "--ckpt_path", str(ckpt), *ddp,
          "--trainer.logger.init_args.version", "two"])
    one = _test_metrics(tmp_path / "logs" / "run" / "one")
    two = _test_metrics(tmp_path / "logs" / "run" / "two")
    assert set(one) == set(two)
    for key in one:
        assert two[key] == pytest.approx(one[key], abs=1e-5, nan_ok=True), key


def test_kill_9_then_resume_from_last(tmp_path: Path) -> None:
    data = write_mmsa_pickle(tmp_path / "aligned_50.pkl", n_train=400, n_valid=40, n_test=40, seed=2)
    max_epochs = 30
    cfg = _config(tmp_path, data, max_epochs=max_epochs)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "cli.py", "fit", "--config", str(cfg), "--test_after_fit", "false"],
                            cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if last.is_file() and torch.load(last, weights_only=True, map_location="cpu")["epoch"] >= 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "training finished (or died) before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    killed_at = torch.load(last, weights_only=True, map_location="cpu")
    assert killed_at["epoch"] < max_epochs - 1

    res = _run(["fit", "--config", str(cfg), "--ckpt_path", "last", "--test_after_fit", "false"])
    assert "Restoring states from the checkpoint" in res.stdout + res.stderr
    final = torch.load(last, weights_only=True, map_location="cpu")
    assert final["epoch"] == max_epochs - 1
    assert final["global_step"] > killed_at["global_step"]
    # Resumed, not restarted: the optimizer step count continues from the killed run's.
    steps_per_epoch = 400 // 8
    assert final["global_step"] == max_epochs * steps_per_epoch
