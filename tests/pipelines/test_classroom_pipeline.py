"""pipelines/classroom.py: the inference-only classroom pipeline (issue #21).

Tests with real faces (the same rows as the Lightning path, stable ids, the HTML report) skip without JAFFE
(``<repo>/../shared/data/jaffe``); the worker-thread and source tests run on a face-less video and need nothing.
"""

from __future__ import annotations

import html.parser
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from features.video import MP4Writer, VideoReader, VideoSourceError
from pipelines import ClassroomPipeline, ClassroomResult
from pipelines.classroom import STAGES
from tests.fakes_classroom import classroom_video, jaffe_portraits

WORKER = "ClassroomPipeline-reader"


def _worker_alive() -> bool:
    return any(t.name == WORKER for t in threading.enumerate())


@pytest.fixture(scope="module")
def pipe() -> ClassroomPipeline:
    """The shipped default model, every frame, faces from 24 px (the tiny test videos' settings)."""
    return ClassroomPipeline.from_checkpoint(every_n_frames=1, min_face_size=24)


@pytest.fixture(scope="module")
def empty_video(tmp_path_factory) -> Path:
    return classroom_video(tmp_path_factory.mktemp("empty") / "nobody.mp4", n_frames=30, faces=False)


@pytest.fixture(scope="module")
def lesson(tmp_path_factory) -> Path:
    return classroom_video(tmp_path_factory.mktemp("lesson") / "lesson.mp4", n_frames=6)


# ---------------------------------------------------------------------------------------------------- settings
def test_settings_are_checked_naming_the_class() -> None:
    from models.shipped import load_face_model

    model = load_face_model()
    with pytest.raises(ValueError, match="ClassroomPipeline: detector"):
        ClassroomPipeline(model, detector="dlib")
    with pytest.raises(ValueError, match="every_n_frames or sample_fps, not both"):
        ClassroomPipeline(model, every_n_frames=5, sample_fps=1.0)
    with pytest.raises(ValueError, match="sample_fps must be > 0"):
        ClassroomPipeline(model, sample_fps=0)
    assert "every_n_frames=5" in repr(ClassroomPipeline(model))  # the primary setting and its default
    shipped = ClassroomPipeline.from_checkpoint()  # crop settings from the checkpoint, as cli.py predict takes them
    assert (shipped.margin, shipped.alignment) == (0.2, "eyes")
    assert ClassroomPipeline.from_checkpoint(margin=0.3, alignment="none").margin == 0.3


@pytest.mark.parametrize("name,content", [("missing.mp4", None), ("notes.txt", "not a video\n")])
def test_a_bad_source_raises_naming_it(pipe, tmp_path, name, content) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises((FileNotFoundError, VideoSourceError), match=name):
        pipe(path)
    assert not _worker_alive()


def test_sample_fps_sets_the_stride_from_the_video_rate(empty_video) -> None:
    """The 4 fps video at 2 frames/s: one frame in 2."""
    pipe = ClassroomPipeline.from_checkpoint(sample_fps=2.0)
    r = pipe(empty_video)
    assert r.every_n_frames == 2 and r.frames_analysed == 15
    assert r.frames_summary() == "15 of 30 frames (one in 2)"
    assert r.notes and "no face was found" in r.notes[0] and len(r.table) == 0


# ---------------------------------------------------------------------------------------------------- the worker
def test_progress_reports_frames_total_and_eta(pipe, empty_video) -> None:
    calls = []
    threads = torch.get_num_threads()
    r = pipe(empty_video, progress=lambda done, total, eta: calls.append((done, total, eta)))
    assert torch.get_num_threads() == threads  # model_threads=1 held during the call only
    assert [c[0] for c in calls] == list(range(1, 31)) and {c[1] for c in calls} == {30}
    assert calls[-1][2] == 0.0 and all(c[2] >= 0 for c in calls)
    assert not r.cancelled and r.frames_analysed == 30 and set(r.seconds) == set(STAGES)


def test_the_progress_callback_returning_false_cancels_and_joins_the_worker(empty_video) -> None:
    pipe = ClassroomPipeline.from_checkpoint(every_n_frames=1, queue_size=1)  # the worker blocks on a full queue
    r = pipe(empty_video, progress=lambda done, total, eta: done < 3)
    assert r.cancelled and r.frames_analysed == 3 and "cancelled" in r.notes[0]
    assert not _worker_alive()


def test_a_cancel_event_stops_the_run(pipe, empty_video, tmp_path) -> None:
    cancel = threading.Event()

    def progress(done: int, total: int | None, eta: float | None) -> None:
        if done == 2:
            cancel.set()

    r = pipe(empty_video, output_dir=tmp_path / "out", progress=progress, cancel=cancel)
    assert r.cancelled and 2 <= r.frames_analysed < 30
    assert not _worker_alive()
    assert (tmp_path / "out" / "report.html").is_file()  # what was done is written, saying it was cancelled
    assert "cancelled" in (tmp_path / "out" / "report.html").read_text()


def test_an_error_in_decoding_stops_the_worker_and_names_the_video(pipe, empty_video, monkeypatch) -> None:
    original = VideoReader.__iter__

    def broken(self):
        for k, frame in enumerate(original(self)):
            if k == 3:
                raise OSError("the disk went away")
            yield frame

    monkeypatch.setattr(VideoReader, "__iter__", broken)
    with pytest.raises(RuntimeError, match=r"nobody\.mp4.*after 3 analysed frame.*the disk went away") as info:
        pipe(empty_video)
    assert isinstance(info.value.__cause__, OSError)
    assert not _worker_alive()


def test_an_existing_output_folder_is_refused_before_anything_runs(pipe, empty_video, tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="out"):
        pipe(empty_video, output_dir=tmp_path / "out")


# ---------------------------------------------------------------------------------------------------- real faces
def test_same_rows_as_the_lightning_path(pipe, lesson, tmp_path) -> None:
    """cli.py predict (through apps.classroom_api) with the shipped checkpoint at the same settings: the same faces
    (frames, track ids, boxes, landmarks) and the same probabilities."""
    from apps.classroom_api import analyze_video

    lit = analyze_video(lesson, None, tmp_path / "lit", every_n_frames=1, min_face_size=24, annotated_video="none",
                        engine="lightning")
    assert lit.attrs["pipeline"] == "lightning"
    ours = pipe(lesson).table
    keys = ["frame", "track_id", "x", "y", "w", "h"]
    assert len(ours) == len(lit) == 12  # two students in 6 frames
    assert ours[keys].astype(int).values.tolist() == lit[keys].astype(int).values.tolist()
    assert list(ours.columns) == list(lit.columns)
    np.testing.assert_allclose(ours["left_eye_x"], lit["left_eye_x"], atol=1e-4)
    prob = [c for c in ours.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ours[prob].to_numpy(float), lit[prob].to_numpy(float), atol=1e-4)
    assert ours["raw_class"].tolist() == lit["raw_class"].tolist()


def test_the_html_report_opens_as_a_file_with_classes_and_students(pipe, lesson, tmp_path) -> None:
    r = pipe(lesson, output_dir=tmp_path / "out")
    assert isinstance(r, ClassroomResult) and len(r.summary) == 2
    names = {p.name for p in r.files}
    assert {"emotions.csv", "summary.csv", "summary.png", "timeline_lesson.png", "report.html",
            "run_info.json"} <= names
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary file left
    page = (tmp_path / "out" / "report.html").read_text()

    class Parser(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.srcs: list[str] = []
            self.rows = 0

        def handle_starttag(self, tag, attrs) -> None:
            self.srcs += [v for k, v in attrs if k in ("src", "href")]
            self.rows += tag == "tr"

    p = Parser()
    p.feed(page)
    assert p.srcs and all(s.startswith("data:image/png;base64,") for s in p.srcs)  # self-contained
    assert p.rows == 1 + 2  # header + one row per student
    for c in r.class_names:  # the checkpoint's classes (FER2013's), and no learning-emotion title over them
        assert c in page
    assert "earning-emotion" not in page and "#0" in page and "#1" in page


def _leave_and_return_video(path: Path, portraits, gap: int = 6) -> Path:
    """Two students in 6 frames, nobody for ``gap`` frames, then both back at shifted places (no overlap with
    where they were, so IoU cannot link them: only appearance can)."""
    from features.synthetic_classroom import paste_face

    before = [(160, 120), (460, 120)]
    after = [(280, 260), (560, 250)]
    with MP4Writer(path, fps=4) as w:
        for k in range(6 + gap + 6):
            frame = np.full((360, 640, 3), 150, np.uint8)
            if k < 6 or k >= 6 + gap:
                for p, c in zip(portraits, before if k < 6 else after):
                    paste_face(frame, p, (c[0] + (k % 2), c[1]), 80)
            w.write(frame)
    return path


@pytest.mark.parametrize("reid", ["appearance", "none"])
def test_students_who_leave_and_come_back_keep_their_ids(tmp_path, reid) -> None:
    portraits = jaffe_portraits()
    video = _leave_and_return_video(tmp_path / "leave.mp4", portraits)
    pipe = ClassroomPipeline.from_checkpoint(every_n_frames=1, min_face_size=24, reid=reid)
    t = pipe(video).table
    assert sorted(t["frame"].unique()) == [*range(6), *range(12, 18)]  # both found in every frame they are in
    assert (t.groupby("frame").size() == 2).all()
    left = t["x"] + t["w"] / 2 < 320  # student 0 is left before and middle after; student 1 right in both
    first = t[t["frame"] < 6].groupby(left[t["frame"] < 6])["track_id"].unique()
    back = t[t["frame"] >= 12].assign(left=t["x"] + t["w"] / 2 < 420).groupby("left")["track_id"].unique()
    assert all(len(v) == 1 for v in (*first, *back))  # one id per student in each part
    if reid == "appearance":
        assert back[True][0] == first[True][0] and back[False][0] == first[False][0]
        assert t["track_id"].nunique() == 2
    else:  # without re-linking they come back as new students (the test can tell)
        assert t["track_id"].nunique() == 4


def test_any_face_checkpoint_brings_its_class_names(tmp_path, empty_video) -> None:
    """A checkpoint trained by cli.py fit (a tiny ResNet on the six learning emotions): its classes name the table's
    columns and the report; the crops are cut at its input size."""
    from tests.fakes_classroom import LEARNING, TINY_RESNET, train_tiny_checkpoint

    ckpt = train_tiny_checkpoint(tmp_path, TINY_RESNET, descriptor="none")
    pipe = ClassroomPipeline.from_checkpoint(ckpt, every_n_frames=10)
    assert pipe.class_names == LEARNING and pipe.face_stream().image_size == 32
    r = pipe(empty_video, output_dir=tmp_path / "out")
    assert [c for c in r.table.columns if c.startswith("prob_")] == [f"prob_{c}" for c in LEARNING]
    page = (tmp_path / "out" / "report.html").read_text()
    assert all(c in page for c in LEARNING) and "angry" not in page


def test_onnxruntime_backend_gives_the_same_faces_and_classes(pipe, lesson) -> None:
    """backend='onnxruntime': the shipped model exported in memory (checked within 1e-4 at load) gives the torch
    pipeline's rows and classes."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install 'affect-lightning[onnx]')")
    ort = ClassroomPipeline.from_checkpoint(backend="onnxruntime", every_n_frames=1, min_face_size=24)
    assert type(ort.model).__name__ == "OnnxFaceModel"
    ours, theirs = pipe(lesson).table, ort(lesson).table
    keys = ["frame", "track_id", "x", "y", "w", "h"]
    assert ours[keys].astype(int).values.tolist() == theirs[keys].astype(int).values.tolist()
    prob = [c for c in ours.columns if c.startswith("prob_")]
    np.testing.assert_allclose(ours[prob].to_numpy(float), theirs[prob].to_numpy(float), atol=1e-4)
    with pytest.raises(ValueError, match="backend must be"):
        ClassroomPipeline.from_checkpoint(backend="tensorrt")


def test_command_line_writes_the_report_and_names_bad_input(lesson, tmp_path, capsys) -> None:
    from pipelines.classroom import main

    assert main([str(lesson), "--out", str(tmp_path / "out"), "--every-n-frames", "1", "--min-face-size", "24"]) == 0
    out = capsys.readouterr().out
    assert "2 student(s)" in out and f"classroom outputs: {tmp_path / 'out'}/" in out and "report.html" in out
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "x")])
    assert info.value.code == 1 and "missing.mp4" in capsys.readouterr().err
