"""The documented face → classroom workflow, verbatim, in a fresh folder (issue 24): the quickstart commands of
``docs/workflows/face-models.md`` (ResNet-18 fit and test on CK+48) and then ``docs/workflows/classroom.md``
(classroom predict with that checkpoint) on a short generated 2-student video. Outputs exist, only under the run
folders; the training run's ``config.yaml`` is unchanged after ``test`` and ``predict``.

Tiny overrides appended to the documented commands: one epoch, no loader workers.
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

REPO = Path(__file__).resolve().parents[1]
CKPLUS48 = Path(os.environ.get("CKPLUS48_ROOT", REPO.parent / "shared" / "data" / "ckplus48"))
#: appended per subcommand (the docs' commands stay as written)
TINY = {"fit": ["--trainer.max_epochs", "1", "--data.init_args.num_workers", "0"],
        "test": ["--data.init_args.num_workers", "0"], "predict": []}


def quickstart_commands(page: Path) -> list[list[str]]:
    """The ``cli.py`` commands of the page's "Quickstart" section (its first ``bash`` block), as argument lists."""
    text = page.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert block, f"{page}: no bash block in the Quickstart section"
    return [shlex.split(line) for line in block.group(1).splitlines() if "cli.py" in line]


def test_quickstart_commands_are_the_ones_this_test_runs() -> None:
    face = quickstart_commands(REPO / "docs" / "workflows" / "face-models.md")
    room = quickstart_commands(REPO / "docs" / "workflows" / "classroom.md")
    assert [c[2] for c in face] == ["fit", "test"] and [c[2] for c in room] == ["predict"]
    ckpt = room[0][room[0].index("--ckpt_path") + 1]
    assert face[1][face[1].index("--ckpt_path") + 1] == ckpt  # predict uses the checkpoint fit wrote


@pytest.mark.slow
def test_face_fit_test_then_classroom_predict_in_a_fresh_folder(tmp_path: Path) -> None:
    if not CKPLUS48.is_dir():
        pytest.skip(f"CK+48 not found at {CKPLUS48} (set CKPLUS48_ROOT)")
    from tests.fakes_classroom import classroom_video

    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "ckplus48").symlink_to(CKPLUS48)
    (work / "configs").symlink_to(REPO / "configs")
    classroom_video(work / "lesson.mp4", n_frames=10)  # skips when JAFFE (the faces) is absent
    before = {p.name for p in work.iterdir()}
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(REPO)}
    commands = [*quickstart_commands(REPO / "docs" / "workflows" / "face-models.md"),
                *quickstart_commands(REPO / "docs" / "workflows" / "classroom.md")]
    run_dir = work / "runs" / "fer_resnet18_ckplus48"
    outputs: dict[str, str] = {}
    trained_config = None
    for cmd in commands:
        assert cmd[:2] == [".venv/bin/python", "cli.py"], cmd
        sub = cmd[2]
        args = [sys.executable, str(REPO / "cli.py"), *cmd[2:], *TINY[sub]]
        done = subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
        log = done.stdout + done.stderr
        assert done.returncode == 0, f"{shlex.join(cmd)} failed:\n{log[-4000:]}"
        lines = [ln for ln in log.splitlines() if re.search(rf"\b{sub} outputs: ", ln)]
        assert len(lines) == 1, f"{sub}: expected one outputs line, got {lines}\n{log[-2000:]}"
        outputs[sub] = lines[0]
        if sub == "fit":
            trained_config = (run_dir / "config.yaml").read_text()
        else:
            assert (run_dir / "config.yaml").read_text() == trained_config, f"{sub} changed the training config"
    # fit: checkpoints, config, logs under its run folder; test: its own config beside it
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert str(run_dir.relative_to(work)) in outputs["fit"]
    assert (run_dir / "config_test.yaml").is_file() and "config_test.yaml" in outputs["test"]
    # predict: the classroom outputs of the ResNet checkpoint (the config names a two-branch Swin)
    out = work / "runs" / "predict_video"
    names = {p.name for p in out.iterdir()}
    assert {"emotions.csv", "summary.csv", "summary.png", "timeline_lesson.png", "annotated_lesson.mp4",
            "run_info.json", "config_predict.yaml"} <= names, names
    info = json.loads((out / "run_info.json").read_text())
    assert info["frames_analysed"] == "2 of 10 frames (one in 5)" and info["faces"] > 0
    assert len(info["class_names"]) == 7  # CK+48's classes, from the checkpoint
    assert "runs/predict_video" in outputs["predict"] and "emotions.csv" in outputs["predict"]
    # nothing written outside runs/ and the face cache
    assert {p.name for p in work.iterdir()} - before <= {"runs", "cache"}, sorted(p.name for p in work.iterdir())
    assert {p.name for p in (work / "runs").iterdir()} == {"fer_resnet18_ckplus48", "predict_video"}
