"""The recordings workflow of ``docs/workflows/recordings.md`` runs verbatim, in order, in a fresh directory: the
Quickstart's commands are read from the page itself (so the page and the test cannot drift apart), given only tiny
overrides (no W&B logger, no progress bars), and run as subprocesses: generate labelled recordings (espeak-ng speech,
JAFFE faces) -> ``features.extract`` with a split by recording -> ``cli.py fit`` -> ``cli.py test`` -> ``cli.py
predict`` on one recording with that fit's checkpoint. And the demo checkpoint (trained on the generated MMSA file,
whose features are not the extractor's) is refused at once with a message saying what to do. Nothing is mocked."""

from __future__ import annotations

import csv
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from features.synthetic_recordings import espeak_available

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")]

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "workflows" / "recordings.md"
ENV = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "PYTHONPATH": str(REPO)}


def quickstart_commands(doc: Path = DOC) -> list[list[str]]:
    """The ``.venv/bin/python`` lines of the first ``bash`` block under ``## Quickstart``, split as a shell would."""
    text = doc.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, f"{doc}: no bash block under ## Quickstart"
    return [shlex.split(line) for line in block.group(1).splitlines() if line.startswith(".venv/bin/python")]


def _localise(cmd: list[str], shared_data: Path) -> list[str]:
    """The documented command for a fresh directory: this interpreter, the repository's cli.py and configs, the
    shared data's path, plus the tiny overrides."""
    out = [sys.executable]
    for arg in cmd[1:]:
        if arg == "cli.py" or arg.startswith("configs/"):
            arg = str(REPO / arg)
        elif arg.startswith("../shared/data/"):
            arg = str(shared_data / arg.removeprefix("../shared/data/"))
        out.append(arg)
    if "features.extract" in out:
        out.append("--no-progress")
    if any(a.endswith("cli.py") for a in out):
        out += ["--trainer.enable_progress_bar", "false"]
        if "fit" in out:
            out += ["--trainer.logger", "false"]
    return out


def _run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, check=False, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=400)
    if ok and res.returncode != 0:
        pytest.fail(f"{shlex.join(cmd)} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}")
    return res


def test_documented_recordings_workflow_runs_verbatim(tmp_path, shared_data) -> None:
    if not (shared_data / "jaffe").is_dir():
        pytest.skip("JAFFE portraits (the faces of the documented recordings) are absent")
    commands = quickstart_commands()
    steps = ("features.synthetic_recordings", "features.extract", "fit", "test", "predict")
    assert [next((k for k in steps if k in c), "?") for c in commands] == list(steps), commands
    results = [_run(_localise(c, shared_data), tmp_path) for c in commands]

    # the recordings, the features with a split by recording, the run, the prediction: nowhere else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "runs"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["my_videos", "predict_recording"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["my_videos", "my_videos.npz", "my_videos.npz.cache",
                                                                      "my_videos.report.json"]
    assert "split_sizes" in results[1].stdout and '"train": 4' in results[1].stdout and '"valid": 2' in results[1].stdout
    assert results[1].stdout.strip().splitlines()[-1].startswith("wrote data/my_videos.npz")
    run = tmp_path / "runs" / "my_videos"
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "config.yaml").is_file()
    assert "test/mae" in results[3].stdout

    # one CSV row per utterance of the recording, in time order, and the run says where the CSV went
    video = Path(commands[-1][commands[-1].index("--data.init_args.video") + 1])
    with (tmp_path / video.with_suffix(".csv")).open() as f:
        spoken = [r["text"] for r in csv.DictReader(f)]
    out = tmp_path / "runs" / "predict_recording"
    with (out / "sentiment.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == spoken and len(rows) == 2
    assert [r["id"] for r in rows] == [f"{video.stem}$_$1", f"{video.stem}$_$2"]
    assert all(-10 < float(r["score"]) < 10 for r in rows)
    assert (out / f"sentiment_{video.stem}.png").stat().st_size > 1000
    log = results[4].stdout + results[4].stderr
    assert "written to runs/predict_recording/sentiment.csv" in log


def test_demo_checkpoint_on_a_recording_is_a_clear_error_before_any_work(tmp_path) -> None:
    from features.synthetic_recordings import write_labelled_folder

    py = sys.executable
    _run([py, "-m", "features.synthetic_mmsa", "--out", "data/generated/mosi_demo.pkl", "--n-train", "32",
          "--n-valid", "8", "--n-test", "8", "--if-exists", "keep"], tmp_path)
    _run([py, str(REPO / "cli.py"), "fit", "--config", str(REPO / "configs/hgcl_demo.yaml"), "--trainer.max_epochs",
          "1", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"],
         tmp_path)
    write_labelled_folder(tmp_path / "talk", recordings=1, utterances=1)
    res = _run([py, str(REPO / "cli.py"), "predict", "--config", str(REPO / "configs/predict/predict_recording.yaml"),
                "--ckpt_path", "runs/hgcl_demo/checkpoints/last.ckpt", "--data.init_args.video", "talk/rec_1.mp4"],
               tmp_path, ok=False)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "RecordingInputError" in last and "data/generated/mosi_demo.pkl" in last and "runs/hgcl_demo" in last
    assert "no `extractor` header" in last and "python -m features.extract" in last
    assert not (tmp_path / "runs" / "predict_recording").exists()  # refused before any extraction
