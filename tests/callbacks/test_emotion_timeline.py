"""Tests for callbacks/emotion_timeline.py and features/classroom_report.py: per-face CSV with track ids, smoothing,
per-student summary, timelines, annotated video, refusing an existing output folder, partial writes on Ctrl-C."""

import csv
import json
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from callbacks.emotion_timeline import EmotionTimelineWriter
from features.classroom_report import predictions_table, smooth_table, summarize_tracks
from features.video import MP4Writer, VideoReader
from lightning_modules.fer import LitFER
from models.timm_classifier import TimmClassifier

CLASSES = ["joy", "focus", "thinking", "boredom", "confusion", "drowsiness"]


class VideoFaces(Dataset):
    """Two students tracked over 4 frames of one video and 1 over 3 frames of another, in predict-batch format."""

    def __init__(self, video: str = "class_a.mp4") -> None:
        self.rows = [(video, f, f / 2, tid) for f in range(4) for tid in (0, 1)]
        self.rows += [("b/class b.mp4", f, f / 25, 0) for f in range(3)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        source, frame, time, tid = self.rows[i]
        return {"image": torch.full((3, 16, 16), float(i) / len(self.rows)), "frame": frame, "time": time,
                "box": torch.tensor([10.0 + 40 * tid, 5.0, 20.0, 24.0]), "track_id": tid, "score": 0.99,
                "landmarks": torch.arange(10, dtype=torch.float32).reshape(5, 2), "source": source,
                "path": f"{source}#{frame}"}


class VideoDataModule(LightningDataModule):
    num_classes = len(CLASSES)
    class_names = CLASSES

    def __init__(self, video: str = "class_a.mp4") -> None:
        super().__init__()
        self.video = video

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(VideoFaces(self.video), batch_size=3)


def _predict(tmp_path, writer: EmotionTimelineWriter, video: str = "class_a.mp4") -> tuple[LitFER, list]:
    torch.manual_seed(0)
    lit = LitFER(partial(TimmClassifier, model_name="test_resnet"), num_classes=6, class_names=CLASSES)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer],
                      default_root_dir=str(tmp_path))
    return lit, trainer.predict(lit, datamodule=VideoDataModule(video))


def test_csv_columns_track_ids_and_outputs(tmp_path) -> None:
    out = tmp_path / "pred"
    writer = EmotionTimelineWriter(output_dir=str(out), smooth_window=1)
    _, preds = _predict(tmp_path, writer)
    with open(out / "emotions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 11
    assert list(rows[0])[:9] == ["source", "frame", "time", "track_id", "x", "y", "w", "h", "score"]
    assert {"left_eye_x", "mouth_right_y", "class", "confidence", "raw_class"} <= set(rows[0])
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{c}" for c in CLASSES]
    probs = torch.cat([p["probs"] for p in preds]).numpy()
    # rows are sorted by source, frame, track: b/class b.mp4 first
    got = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    order = [8, 9, 10] + list(range(8))
    np.testing.assert_allclose(got, probs[order], atol=1e-4)
    assert rows[3]["source"] == "class_a.mp4" and rows[3]["track_id"] == "0" and rows[3]["x"] == "10"
    assert rows[4]["track_id"] == "1" and rows[4]["x"] == "50" and rows[4]["right_eye_y"] == "3.0000"
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["track_id"]) == [0, 0, 1] and list(summary["observations"]) == [3, 4, 4]
    assert sorted(p.name for p in out.glob("*.png")) == ["summary.png", "timeline_class_a.png",
                                                       "timeline_class_b.png"]
    info = json.loads((out / "run_info.json").read_text())
    assert info["faces"] == 11 and info["students"] == 3
    assert not list(out.glob(".*"))  # atomic writes leave no temporary files
    assert writer.table is not None and len(writer.table) == 11


def test_smoothing_summary_transitions_and_spells() -> None:
    names = ["joy", "focus"]
    # one student, 6 frames at 0.5 s: joy joy focus joy joy joy (a one-frame blip)
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.9, 0.1], [0.8, 0.2], [0.9, 0.1]])
    t = predictions_table(names, p, ["v.mp4"] * 6, np.arange(6) * 5, np.arange(6) * 0.5, np.zeros(6, int),
                          np.zeros((6, 4)))
    raw = summarize_tracks(t, names)
    assert raw.loc[0, "transitions"] == 2 and raw.loc[0, "share_focus"] == pytest.approx(1 / 6)
    assert raw.loc[0, "longest_spell_class"] == "joy" and raw.loc[0, "longest_spell_s"] == pytest.approx(1.5)
    smooth = smooth_table(t, names, 3)
    assert (smooth["class"] == "joy").all() and (smooth["raw_class"].iloc[2] == "focus")
    s = summarize_tracks(smooth, names)
    assert s.loc[0, "transitions"] == 0 and s.loc[0, "longest_spell_s"] == pytest.approx(3.0)
    assert s.loc[0, "seen_s"] == pytest.approx(3.0) and s.loc[0, "share_joy"] == 1.0
    assert summarize_tracks(t, names, min_observations=7).empty


def test_refuses_an_existing_output_folder_unless_overwrite(tmp_path) -> None:
    out = tmp_path / "pred"
    out.mkdir()
    (out / "emotions.csv").write_text("keep me\n")
    (out / "notes.txt").write_text("the teacher's own file\n")
    with pytest.raises(FileExistsError, match=f"EmotionTimelineWriter: output folder '{out}' already exists"):
        _predict(tmp_path, EmotionTimelineWriter(output_dir=str(out)))
    assert (out / "emotions.csv").read_text() == "keep me\n" and not list(out.glob("*.png"))
    _predict(tmp_path, EmotionTimelineWriter(output_dir=str(out), overwrite="replace"))
    assert (out / "emotions.csv").read_text().startswith("source,frame")
    assert (out / "notes.txt").read_text() == "the teacher's own file\n"  # never touched
    empty = tmp_path / "empty"
    empty.mkdir()
    _predict(tmp_path, EmotionTimelineWriter(output_dir=str(empty)))  # an empty folder is fine


def test_annotated_video_is_written_for_a_video_source(tmp_path) -> None:
    video = tmp_path / "lesson.mp4"
    with MP4Writer(video, fps=2) as w:
        for _ in range(5):
            w.write(np.full((96, 128, 3), 60, np.uint8))
    out = tmp_path / "pred"
    _predict(tmp_path, EmotionTimelineWriter(output_dir=str(out)), video=str(video))
    frames = list(VideoReader(out / "annotated_lesson.mp4"))
    assert len(frames) == 5
    # frame 0 has boxes drawn at x = 10 (student 0) and x = 50 (student 1); frame 4 was not analysed
    assert np.abs(frames[0].rgb.astype(int) - 60).max() > 80
    assert np.abs(frames[4].rgb.astype(int) - 60).max() < 30


def test_partial_results_are_written_when_prediction_is_interrupted(tmp_path) -> None:
    class Stop(LitFER):
        def predict_step(self, batch, batch_idx, dataloader_idx=0):
            if batch_idx == 2:
                raise KeyboardInterrupt
            return super().predict_step(batch, batch_idx, dataloader_idx)

    out = tmp_path / "pred"
    writer = EmotionTimelineWriter(output_dir=str(out))
    lit = Stop(partial(TimmClassifier, model_name="test_resnet"), num_classes=6, class_names=CLASSES)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer])
    with pytest.raises(SystemExit):  # Lightning ends the process after its graceful shutdown
        trainer.predict(lit, datamodule=VideoDataModule())
    rows = pd.read_csv(out / "emotions.csv")
    assert len(rows) == 6  # the two batches done before Ctrl-C
    assert "stopped early" in json.loads((out / "run_info.json").read_text())["notes"][0]


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="EmotionTimelineWriter.*overwrite"):
        EmotionTimelineWriter("x", overwrite="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="EmotionTimelineWriter.*plot"):
        EmotionTimelineWriter("x", plot="all")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="EmotionTimelineWriter.*smooth_window"):
        EmotionTimelineWriter("x", smooth_window=0)


class DescribedSource(VideoDataModule):
    """A predict datamodule that describes its source as ``FaceVideoDataModule`` does (``AnalysedSource``)."""

    live = False
    recording = None
    frame_stride = 2

    def __init__(self) -> None:
        super().__init__()
        self.sources = ["class_a.mp4", "empty_room.mp4"]
        self.stats = {"frames": 9, "unreadable": 1, "faces": 11}

    def record_live_to(self, path) -> None:
        raise AssertionError("not a live source")

    def frames_summary(self) -> str:
        return "9 of 18 frames (one in 2)"


def test_the_datamodules_description_of_the_source_reaches_run_info(tmp_path) -> None:
    """Frame counts, skipped frames and sources without a face come from the datamodule's public API (sources,
    stats, frames_summary), not from its dataset."""
    out = tmp_path / "pred"
    writer = EmotionTimelineWriter(output_dir=str(out))
    lit = LitFER(partial(TimmClassifier, model_name="test_resnet"), num_classes=6, class_names=CLASSES)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer],
                      default_root_dir=str(tmp_path))
    trainer.predict(lit, datamodule=DescribedSource())
    info = json.loads((out / "run_info.json").read_text())
    assert info["frames_analysed"] == "9 of 18 frames (one in 2)" and info["stats"]["unreadable"] == 1
    assert info["sources"][:2] == ["class_a.mp4", "empty_room.mp4"]
    assert any("no face was found in empty_room.mp4" in n for n in info["notes"])
    assert any("1 unreadable frame" in n for n in info["notes"])
