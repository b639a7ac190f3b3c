import csv
from functools import partial

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from callbacks.emotion_timeline import EmotionTimelineWriter
from lightning_modules.fer import LitFER
from models.timm_classifier import TimmClassifier

CLASSES = ["joy", "focus", "thinking", "boredom", "confusion", "drowsiness"]


class VideoFaces(Dataset):
    """Two faces tracked over 4 frames of one video and 2 frames of another, in predict-batch format."""

    def __init__(self) -> None:
        self.rows = [("class_a.mp4", f, f / 2, face) for f in range(4) for face in (0, 1)]
        self.rows += [("b/class b.mp4", f, f / 25, 0) for f in range(2)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        source, frame, time, face = self.rows[i]
        return {"image": torch.full((3, 16, 16), float(i) / len(self.rows)), "frame": frame, "time": time,
                "box": torch.tensor([10.0 * face, 5.0, 20.0, 24.0]), "face_index": face, "source": source,
                "path": f"{source}#{frame}"}


class VideoDataModule(LightningDataModule):
    num_classes = len(CLASSES)
    class_names = CLASSES

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(VideoFaces(), batch_size=3)


def _predict(tmp_path, writer: EmotionTimelineWriter) -> tuple[LitFER, list]:
    torch.manual_seed(0)
    lit = LitFER(partial(TimmClassifier, model_name="test_resnet"), num_classes=6, class_names=CLASSES)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[writer],
                      default_root_dir=str(tmp_path))
    return lit, trainer.predict(lit, datamodule=VideoDataModule())


def test_csv_content_and_plots(tmp_path) -> None:
    out = tmp_path / "pred"
    writer = EmotionTimelineWriter(output_dir=str(out))
    _, preds = _predict(tmp_path, writer)
    with open(out / "emotions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 10
    assert list(rows[0])[:11] == ["source", "frame", "time", "face_index", "box_x", "box_y", "box_w", "box_h",
                                  "path", "pred_class", "confidence"]
    assert [k for k in rows[0] if k.startswith("prob_")] == [f"prob_{c}" for c in CLASSES]
    probs = torch.cat([p["probs"] for p in preds])
    for row, p in zip(rows, probs):
        values = torch.tensor([float(row[f"prob_{c}"]) for c in CLASSES])
        torch.testing.assert_close(values, p, atol=1e-4, rtol=0)
        assert row["pred_class"] == CLASSES[int(p.argmax())]
    assert rows[3] == {**rows[3], "source": "class_a.mp4", "frame": "1", "time": "0.500", "face_index": "1",
                       "box_x": "10", "box_w": "20"}
    assert rows[9]["source"] == "b/class b.mp4" and rows[9]["time"] == "0.040"
    assert sorted(p.name for p in out.glob("*.png")) == ["timeline_class_a.png", "timeline_class_b.png"]
    assert not list(out.glob(".*"))  # atomic writes leave no temporary files


def test_never_overwrites_without_option(tmp_path) -> None:
    out = tmp_path / "pred"
    out.mkdir()
    (out / "emotions.csv").write_text("keep me\n")
    with pytest.raises(FileExistsError, match="EmotionTimelineWriter.*overwrite"):
        _predict(tmp_path, EmotionTimelineWriter(output_dir=str(out)))
    assert (out / "emotions.csv").read_text() == "keep me\n"
    assert not list(out.glob("*.png"))
    # an existing plot is protected too, and nothing is written when it collides
    (out / "emotions.csv").unlink()
    (out / "timeline_class_b.png").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="timeline_class_b.png"):
        _predict(tmp_path, EmotionTimelineWriter(output_dir=str(out)))
    assert not (out / "emotions.csv").exists()
    assert (out / "timeline_class_b.png").read_bytes() == b"old"
    _predict(tmp_path, EmotionTimelineWriter(output_dir=str(out), overwrite="replace"))
    assert (out / "emotions.csv").read_text().startswith("source,frame")
    assert (out / "timeline_class_b.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="EmotionTimelineWriter.*overwrite"):
        EmotionTimelineWriter("x", overwrite="yes")
    with pytest.raises(ValueError, match="EmotionTimelineWriter.*plot"):
        EmotionTimelineWriter("x", plot="all")
