"""analyze_video / cli.py predict end to end on real faces: portable checkpoint (no training cache), track ids,
outputs, and each kind of bad input with a clear message naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from apps.classroom_api import analyze_video
from features.video import VideoSourceError
from tests.fakes_classroom import LEARNING, classroom_video, tiny_predict_config, train_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("tiny_fer")
    ckpt = train_tiny_checkpoint(tmp)
    return ckpt, tiny_predict_config(tmp, tmp / "unused_out")


def test_checkpoint_holds_the_preprocessing_and_sun_statistics(tiny) -> None:
    ckpt, _ = tiny
    from common.preprocessing import face_preprocessing

    state = face_preprocessing(torch.load(ckpt, weights_only=True, map_location="cpu"))
    assert state["settings"]["class_names"] == LEARNING and state["settings"]["image_size"] == 32
    assert state["settings"]["descriptor"] == "sun" and len(state["sun_params"]["theta"]) == 2


def test_analyze_video_end_to_end_with_only_the_checkpoint(tiny, tmp_path) -> None:
    ckpt, cfg = tiny
    video = classroom_video(tmp_path / "lesson.mp4")
    out = tmp_path / "out"
    df = analyze_video(video, ckpt, out, config=cfg)
    # the config asks for 256 px crops and a training cache that does not exist: the checkpoint's 32 px and SUN
    # statistics were used, or the tiny net would have failed
    assert list(df.columns[:8]) == ["source", "frame", "time", "track_id", "x", "y", "w", "h"]
    assert {f"prob_{c}" for c in LEARNING} <= set(df.columns) and "left_eye_x" in df.columns
    assert df["track_id"].nunique() == 2 and len(df) == 16
    for _, t in df.groupby("track_id"):
        assert t["x"].max() - t["x"].min() < 40  # each track stays with one drifting face
    summary = df.attrs["summary"]
    assert len(summary) == 2 and summary[[f"share_{c}" for c in LEARNING]].sum(axis=1).round(6).eq(1).all()
    names = {Path(f).name for f in df.attrs["files"]}
    assert {"emotions.csv", "summary.csv", "summary.png", "timeline_lesson.png", "annotated_lesson.mp4",
            "run_info.json"} <= names
    assert pd.read_csv(out / "emotions.csv").shape[0] == 16
    # the resolved config is kept, named for the subcommand
    assert (out / "config_predict.yaml").is_file() and not (out / "checkpoints").exists()
    assert df.attrs["frames_analysed"] == "8 of 8 frames (every frame)"
    info = json.loads((out / "run_info.json").read_text())
    assert info["frames_analysed"] == "8 of 8 frames (every frame)"
    # an existing output folder is refused, unless overwrite
    with pytest.raises(FileExistsError, match=str(out)):
        analyze_video(video, ckpt, out, config=cfg)
    assert len(analyze_video(video, ckpt, out, config=cfg, overwrite=True)) == 16


def test_video_without_faces_gives_empty_tracks_and_a_note(tiny, tmp_path) -> None:
    ckpt, cfg = tiny
    video = classroom_video(tmp_path / "empty_room.mp4", faces=False)
    df = analyze_video(video, ckpt, tmp_path / "out", config=cfg)
    assert df.empty and df.attrs["summary"].empty
    assert any("no face was found in" in n and "empty_room.mp4" in n for n in df.attrs["notes"])
    assert (tmp_path / "out" / "emotions.csv").read_text().startswith("source,frame,time,track_id")
    assert (tmp_path / "out" / "annotated_empty_room.mp4").is_file()


def test_unreadable_frame_in_the_middle_is_skipped_and_counted(tiny, tmp_path) -> None:
    import av
    import numpy as np

    from features.video import VideoReader
    from tests.features.test_video import corrupt_jpeg_frame, write_mjpeg_avi

    ckpt, cfg = tiny
    frames = [f.rgb for f in VideoReader(classroom_video(tmp_path / "src.mp4", n_frames=6))]
    avi = tmp_path / "lesson.avi"
    write_mjpeg_avi(avi, [np.ascontiguousarray(f) for f in frames], fps=4)
    corrupt_jpeg_frame(avi, 3)
    df = analyze_video(avi, ckpt, tmp_path / "out", config=cfg)
    assert sorted(df["frame"].unique()) == [0, 1, 2, 4, 5]
    info = json.loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["stats"]["unreadable"] == 1 and any("1 unreadable frame" in n for n in info["notes"])
    assert av  # PyAV wrote the AVI


@pytest.mark.parametrize("kind", ["zero_length", "corrupt"])
def test_bad_video_files_name_the_file(tiny, tmp_path, kind: str) -> None:
    ckpt, cfg = tiny
    bad = tmp_path / f"{kind}.mp4"
    bad.write_bytes(b"" if kind == "zero_length" else b"\x00\x00\x00\x18ftypmp42" + bytes(3000))
    with pytest.raises(VideoSourceError, match=f"{bad}.*corrupt"):
        analyze_video(bad, ckpt, tmp_path / "out", config=cfg)


def test_webcam_that_does_not_exist(tiny, tmp_path) -> None:
    ckpt, cfg = tiny
    with pytest.raises(VideoSourceError, match="webcam:97.*no_webcam"):
        analyze_video("webcam:97", ckpt, tmp_path / "out", config=cfg)


def test_checkpoint_of_another_model_kind_or_not_a_checkpoint(tiny, tmp_path) -> None:
    _, cfg = tiny
    video = tmp_path / "v.mp4"
    other = tmp_path / "msa.ckpt"
    torch.save({"state_dict": {"net.fc.weight": torch.zeros(1)},
                "hyper_parameters": {"_class_path": "lightning_modules.msa.LitMSA"}}, other)
    with pytest.raises(ValueError, match=f"{other}.*lightning_modules.msa.LitMSA.*not a face-expression"):
        analyze_video(video, other, tmp_path / "out", config=cfg)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"{junk}.*cannot be read safely"):
        analyze_video(video, junk, tmp_path / "out", config=cfg)
    with pytest.raises(FileNotFoundError, match="absent.ckpt"):
        analyze_video(video, tmp_path / "absent.ckpt", tmp_path / "out", config=cfg)


def test_live_source_ctrl_c_ends_cleanly_with_the_files_written(tiny, tmp_path, monkeypatch) -> None:
    """A webcam (a recorded lesson played through cv2.VideoCapture's contract) stopped by Ctrl-C after 8 frames:
    the run finishes normally and writes the CSV, summary, the recording and its annotated video."""
    import os
    import signal

    import cv2

    ckpt, cfg = tiny
    src = classroom_video(tmp_path / "cam.mp4", n_frames=30)
    real = cv2.VideoCapture

    class Camera:
        def __init__(self) -> None:
            self.cap, self.reads = real(str(src)), 0

        def isOpened(self) -> bool:
            return self.cap.isOpened()

        def get(self, prop: int) -> float:
            return self.cap.get(prop)

        def release(self) -> None:
            self.cap.release()

        def read(self):
            self.reads += 1
            if self.reads == 9:  # the teacher presses Ctrl-C while the 9th frame is read
                os.kill(os.getpid(), signal.SIGINT)
            return self.cap.read()

    monkeypatch.setattr(cv2, "VideoCapture", lambda target: Camera() if target == 0 else real(target))
    out = tmp_path / "live"
    df = analyze_video("webcam:0", ckpt, out, config=cfg)
    assert sorted(df["frame"].unique()) == list(range(9))
    assert df["track_id"].nunique() == 2
    assert any("Ctrl-C" in n for n in df.attrs["notes"])
    from features.video import VideoReader

    assert len(list(VideoReader(out / "recording.mp4"))) == 9
    assert len(list(VideoReader(out / "annotated_webcam_0.mp4"))) == 9
    assert (out / "summary.csv").is_file() and (out / "emotions.csv").is_file()


@pytest.mark.slow
def test_cli_predict_command_with_only_the_checkpoint(tiny, tmp_path) -> None:
    """The README's one command, as a process: outputs written, a second run refused naming the folder,
    --overwrite true accepted."""
    import subprocess
    import sys

    import yaml

    ckpt, cfg = tiny
    video = classroom_video(tmp_path / "lesson.mp4")
    out = tmp_path / "runs_predict"
    conf = yaml.safe_load(Path(cfg).read_text())
    conf["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(out)
    conf["checkpoint"] = {"dirpath": str(out / "checkpoints")}
    cfg2 = tmp_path / "predict.yaml"
    cfg2.write_text(yaml.safe_dump(conf))
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "cli.py", "predict", "--config", str(cfg2), "--ckpt_path", str(ckpt),
           "--data.init_args.source", str(video)]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    first = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert first.returncode == 0, first.stderr[-3000:]
    assert pd.read_csv(out / "emotions.csv")["track_id"].nunique() == 2
    assert (out / "annotated_lesson.mp4").is_file() and (out / "config_predict.yaml").is_file()
    again = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600, env=env, check=False)
    assert again.returncode != 0 and str(out) in again.stderr and "--overwrite true" in again.stderr
    forced = subprocess.run([*cmd, "--overwrite", "true"], cwd=repo, capture_output=True, text=True, timeout=600,
                            env=env, check=False)
    assert forced.returncode == 0, forced.stderr[-3000:]


# ------------------------------------------------------------------ issue 20: sources that are no video, output root
def _not_a_video(tmp_path: Path, kind: str) -> str:
    if kind == "text":
        (tmp_path / "lesson.txt").write_text("this is not a video\n" * 50)
        return str(tmp_path / "lesson.txt")
    if kind == "junk_folder":
        folder = tmp_path / "junk"
        folder.mkdir()
        (folder / "notes.txt").write_text("hello")
        (folder / "data.bin").write_bytes(bytes(range(256)) * 8)
        return str(folder)
    path = {"etc_passwd": "/etc/passwd", "dev_zero": "/dev/zero"}[kind]
    if not Path(path).exists():
        pytest.skip(f"{path} does not exist here")
    return path


@pytest.mark.parametrize("kind,reason", [("text", "not_a_video"), ("etc_passwd", "not_a_video"),
                                         ("dev_zero", "not_a_file"), ("junk_folder", "no_frames")])
def test_a_source_that_is_no_video_is_an_error_naming_it(tiny, tmp_path, kind: str, reason: str) -> None:
    """These ended with "no face was found (0 frames analysed)"; /dev/zero is endless and must not be read."""
    ckpt, cfg = tiny
    source = _not_a_video(tmp_path, kind)
    with pytest.raises(VideoSourceError, match=reason) as err:
        analyze_video(source, ckpt, tmp_path / "out", config=cfg)
    assert source in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["dev_zero", "junk_folder"])
def test_cli_predict_on_a_source_that_is_no_video_fails_naming_it(tiny, tmp_path, kind: str) -> None:
    """The ``cli.py predict --data.init_args.source ...`` path (the datamodule's own check)."""
    import yaml

    from cli import cli_main

    ckpt, cfg = tiny
    source = _not_a_video(tmp_path, kind)
    conf = yaml.safe_load(Path(cfg).read_text())
    conf["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(tmp_path / "out")
    conf["checkpoint"] = {"dirpath": str(tmp_path / "out" / "checkpoints")}
    (tmp_path / "predict.yaml").write_text(yaml.safe_dump(conf))
    with pytest.raises(VideoSourceError, match=source):
        cli_main(["predict", "--config", str(tmp_path / "predict.yaml"), "--ckpt_path", str(ckpt),
                  "--data.init_args.source", source])
    assert not list((tmp_path / "out").glob("*.csv"))


def test_an_output_folder_under_a_file_is_a_clear_error_and_a_page_message(tiny, tmp_path) -> None:
    from apps.classroom import analyze_for_page

    ckpt, cfg = tiny
    video = classroom_video(tmp_path / "lesson.mp4", n_frames=2, faces=False)
    a_file = tmp_path / "results.txt"
    a_file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=f"{a_file}.*is a file"):
        analyze_video(video, ckpt, a_file / "run1", config=cfg)
    assert a_file.read_text() == "not a folder"
    for root in (a_file, a_file / "sub"):  # the root itself, or a folder under it
        status, *rest = analyze_for_page(None, str(video), str(ckpt), 5, 20, config=cfg, output_root=root)
        assert str(a_file) in status and "is a file" in status, status
        assert rest[0] is None


# ------------------------------------------------------------------ the shipped model as the default
def test_no_checkpoint_means_the_shipped_face_model(tiny, tmp_path) -> None:
    """analyze_video(source) and cli.py predict without --ckpt_path run the model shipped in the package: its seven
    FER2013 classes (not the config's learning emotions), grey faces, every face of the clip classified."""
    import yaml

    from cli import cli_main
    from models.shipped import load_face_model

    shipped = load_face_model()
    _, cfg = tiny
    video = classroom_video(tmp_path / "lesson.mp4")
    df = analyze_video(video, None, tmp_path / "api", config=cfg)
    # a video file and an image-only net: the inference pipeline, with its one-page report
    assert df.attrs["pipeline"] == "inference" and not df.attrs["cancelled"]
    assert "report.html" in {Path(f).name for f in df.attrs["files"]}
    assert {f"prob_{c}" for c in shipped.class_names} <= set(df.columns)
    assert not {f"prob_{c}" for c in LEARNING} & set(df.columns)
    assert df["track_id"].nunique() == 2 and len(df) == 16 and set(df["class"]) <= set(shipped.class_names)
    conf = yaml.safe_load(Path(cfg).read_text())
    conf["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(tmp_path / "cli")
    cli = cli_main(["predict", "--config", yaml.safe_dump(conf), "--data.init_args.source", str(video)])
    prep = cli.datamodule.preprocessing  # the shipped checkpoint's
    assert prep.normalisation.colour == "grey" and cli.datamodule.class_names == shipped.class_names
    cli_df = pd.read_csv(tmp_path / "cli" / "emotions.csv")
    pd.testing.assert_frame_equal(cli_df[["frame", "track_id", "class"]].reset_index(drop=True),
                                  df[["frame", "track_id", "class"]].reset_index(drop=True), check_dtype=False)
