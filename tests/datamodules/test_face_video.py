"""Tests for datamodules/face_video.py (FaceVideoDataModule): prediction batches of every face of a folder of frames
or a video, with the trained model's preprocessing given as the plain state a checkpoint stores."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from datamodules.face_video import FacePreprocessing, FaceVideoDataModule
from features.descriptors import fit_sun_params
from features.images import load_image_rgb
from tests.fakes_images import make_class_folders, real_root, synthetic_face

CLASSES = ["happy", "sad", "neutral"]


def _state(descriptor: str = "none", sun: dict | None = None, **settings) -> dict:
    """A stored preprocessing state (``checkpoint["fer_preprocessing"]``) of a model trained on 16 px crops."""
    stored = {"class_names": CLASSES, "image_size": 16, "face_detection": "none", "face_margin": 0.2,
              "background": "black", "descriptor": descriptor, "lbp_points": 8, "lbp_radius": 1.0,
              "energy_sigma": 2.0, "sun_sigmas": [1.0, 2.0], "sun_ratio": 1.6, "sun_channels": "intensity",
              "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "descriptor_mean": 0.5,
              "descriptor_std": 0.5, "predict_alignment": "eyes", "colour": "rgb"}
    stored.update(settings)
    return {"version": 1, "settings": stored, "sun_params": sun}


def _sun() -> dict:
    crops = [np.repeat(synthetic_face(16, i, i)[:, :, None], 3, axis=2) for i in range(6)]
    return dict(fit_sun_params(crops, (1.0, 2.0), seed=0).__dict__)


def _dm(source: Path | str, state: dict | None = None, inputs: tuple[str, ...] | None = None,
        **kwargs) -> FaceVideoDataModule:
    dm = FaceVideoDataModule(str(source), **{"detector": "none", "progress": "none", "batch_size": 4, **kwargs})
    if state is not None:
        dm.use_preprocessing(state, origin="test.ckpt", inputs=inputs)
    return dm


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "to_predict"
    make_class_folders(folder, ["x"], subjects=3, frames=1, size=24, seed=3)
    (folder / "x" / "broken.png").write_bytes(b"")
    return folder


def test_predict_on_a_folder(tmp_path: Path) -> None:
    dm = _dm(_folder(tmp_path), _state("sun", _sun()))
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    b = batches[0]
    assert set(b) == {"image", "descriptor", "frame", "time", "box", "track_id", "score", "landmarks", "source",
                      "path"}
    assert b["image"].shape == (3, 3, 16, 16) and b["descriptor"].shape == (3, 1, 16, 16)
    assert b["image"].dtype == torch.float32
    assert b["frame"].dtype == torch.int64 and b["time"].dtype == torch.float32 and b["box"].dtype == torch.int64
    assert b["box"].tolist() == [[0, 0, 24, 24]] * 3 and b["track_id"].tolist() == [0, 0, 0]
    assert b["landmarks"].shape == (3, 5, 2) and b["landmarks"].isnan().all()
    assert dm.stats["skipped:empty_file"] == 1 and dm.stats["faces"] == 3
    assert dm.frames_summary() == "3 of 4 images"
    assert dm.class_names == CLASSES and dm.num_classes == 3 and dm.image_size == 16


def test_the_checkpoints_normalisation_and_colour_are_applied(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    raw = next(iter(_dm(folder, _state(mean=[0.0] * 3, std=[1.0] * 3)).predict_dataloader()))["image"]
    assert raw.min() >= 0 and raw.max() <= 1  # only scaled to [0, 1]
    half = next(iter(_dm(folder, _state(mean=[0.5] * 3, std=[0.5] * 3)).predict_dataloader()))["image"]
    torch.testing.assert_close(half, (raw - 0.5) / 0.5)
    grey = next(iter(_dm(folder, _state(colour="grey")).predict_dataloader()))["image"]
    assert torch.allclose(grey[:, 0] * 0.229 + 0.485, grey[:, 1] * 0.224 + 0.456, atol=1e-5)


def test_a_net_without_descriptor_input_gets_no_descriptor_maps(tmp_path: Path) -> None:
    """A timm classifier trained with SUN maps (it never read them): nothing computed, no SUN statistics needed."""
    dm = _dm(_folder(tmp_path), _state("sun", None), inputs=("image",))
    assert dm.preprocessing.descriptor.kind == "none" and dm.preprocessing.sun_params is None
    b = next(iter(dm.predict_dataloader()))
    assert "descriptor" not in b
    # the same state restored by Lightning's hook keeps the net's inputs
    dm.load_state_dict(_state("sun", None))
    assert dm.preprocessing.descriptor.kind == "none"


def test_sun_maps_without_statistics_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="test.ckpt.*SUN statistics"):
        _dm(_folder(tmp_path), _state("sun", None), inputs=("image", "descriptor"))


def test_no_preprocessing_is_an_error_saying_what_to_do(tmp_path: Path) -> None:
    dm = _dm(_folder(tmp_path))
    for call in (lambda: dm.setup("predict"), dm.predict_dataloader):
        with pytest.raises(RuntimeError, match=r"FaceVideoDataModule: no preprocessing.*cli.py predict.*"
                                               r"use_preprocessing"):
            call()
    # no attribute (cli.py's data links then keep the checkpoint's model settings)
    assert not hasattr(dm, "class_names") and not hasattr(dm, "num_classes") and not hasattr(dm, "image_size")
    assert dm.state_dict() == {} and dm.stats == {} and dm.frames_summary() == "0 frames"


@pytest.mark.parametrize("state,match", [
    ({"settings": {}}, "no usable preprocessing state"),
    ({"version": 7, "settings": {}}, "no usable preprocessing state"),
    ({"version": 1, "settings": {"class_names": ["a"]}}, "lacks the preprocessing settings"),
    (_state(class_names=[]), "class_names"),
    (_state(descriptor="hog"), "invalid preprocessing settings"),
])
def test_a_bad_state_names_its_origin(tmp_path: Path, state: dict, match: str) -> None:
    with pytest.raises(ValueError, match=rf"FaceVideoDataModule: test\.ckpt .*{match}"):
        _dm(tmp_path, state)


def test_state_round_trip_and_stored_alignment_is_not_used(tmp_path: Path) -> None:
    """``predict_alignment`` of the stored settings is ignored: ``alignment`` is the datamodule's own setting."""
    state = _state("lbp", predict_alignment="none")
    dm = _dm(_folder(tmp_path), state, alignment="eyes")
    dm.setup("predict")
    assert dm.face_stream.alignment == "eyes" and dm.face_stream.image_size == 16
    other = FaceVideoDataModule("x.mp4")
    other.load_state_dict(dm.state_dict())
    assert dataclasses.replace(other.preprocessing, origin="") == dataclasses.replace(dm.preprocessing, origin="")


def test_the_state_a_training_datamodule_writes_is_read() -> None:
    """The schema's writer (``FERDataModule.preprocessing_state``) and this reader agree."""
    from datamodules.fer import FERDataModule

    train = FERDataModule("no_root", CLASSES, descriptor={"kind": "lbp"},
                          normalisation={"colour": "grey", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    prep = FacePreprocessing.from_state(train.preprocessing_state())
    assert list(prep.class_names) == CLASSES and prep.descriptor == train.descriptor
    assert prep.normalisation == train.normalisation and prep.crop.image_size == train.crop.image_size


def test_the_cli_hands_over_the_checkpoints_state_with_the_nets_inputs() -> None:
    """``cli.py predict``'s step (``apply_face_preprocessing``): the state found in the checkpoint (the training
    datamodule's, under its class name) goes to the datamodule with the net's inputs; none is an error naming it."""
    from lightning_modules.cli_checkpoints import apply_face_preprocessing
    from lightning_modules.fer import LitFER

    class ImageNet(torch.nn.Module):
        inputs = ("image",)

        def __init__(self, num_classes: int) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, num_classes)

    lit = LitFER(ImageNet, num_classes=3)
    dm = FaceVideoDataModule("lesson.mp4")
    ckpt = {"state_dict": {}, "FERDataModule": {**_state("sun", _sun()), "kind": "face_preprocessing"}}
    apply_face_preprocessing(lit, dm, "a.ckpt", ckpt, ())
    assert dm.preprocessing.origin == "a.ckpt" and dm.class_names == CLASSES
    assert dm.preprocessing.descriptor.kind == "none"  # the net reads no descriptor map
    with pytest.raises(ValueError, match="a.ckpt holds no face preprocessing state.*FaceVideoDataModule"):
        apply_face_preprocessing(lit, FaceVideoDataModule("lesson.mp4"), "a.ckpt", {"state_dict": {}}, ())


def test_invalid_arguments_name_the_class() -> None:
    for kwargs in ({"detector": "dlib"}, {"alignment": "nose"}, {"reid": "colour"}, {"progress": "tqdm"},
                   {"every_n_frames": 0}, {"batch_size": 0}, {"max_fps": 0.0}, {"max_frames": 0}, {"source": ""}):
        with pytest.raises(ValueError, match="FaceVideoDataModule"):
            FaceVideoDataModule(**{"source": "lesson.mp4", **kwargs})
    with pytest.raises(ValueError, match="prediction only"):
        FaceVideoDataModule("lesson.mp4").setup("fit")


def _face_tiles(n: int) -> list[np.ndarray]:
    """n face images (RGB uint8, 96 px): real JAFFE faces when present, cartoons otherwise."""
    root = real_root("jaffe")
    if root is not None:
        files = sorted(root.glob("*/*.tiff"))[:n]
        return [
            cv2.resize(load_image_rgb(f)[20:236, 20:236], (96, 96), interpolation=cv2.INTER_AREA)
            for f in files
        ]
    return [np.repeat(synthetic_face(96, i, i)[:, :, None], 3, axis=2) for i in range(n)]


def test_predict_on_a_video_all_faces(tmp_path: Path) -> None:
    if real_root("jaffe") is None:  # MTCNN finds no face in the synthetic cartoons of _face_tiles
        pytest.skip("needs real JAFFE faces (../shared/data/jaffe); MTCNN detects none in the synthetic stand-ins")
    video = tmp_path / "class.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (224, 112))
    assert writer.isOpened()
    tiles = _face_tiles(2)
    n_frames = 6
    for i in range(n_frames):
        frame = np.full((112, 224, 3), 90, dtype=np.uint8)
        if i % 3 != 2:  # frames 2 and 5: nobody
            frame[8:104, 8:104] = tiles[0]
            frame[8:104, 120:216] = tiles[1]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    dm = _dm(video, _state("lbp", face_detection="haar"), detector="mtcnn", every_n_frames=1, min_face_size=30,
             batch_size=3)
    dm.setup("predict")
    batches = list(dm.predict_dataloader())
    frames = torch.cat([b["frame"] for b in batches])
    boxes = torch.cat([b["box"] for b in batches])
    times = torch.cat([b["time"] for b in batches])
    stats = dm.stats
    assert stats["frames"] == n_frames and stats["frames_without_face"] == 2
    assert sorted(set(frames.tolist())) == [0, 1, 3, 4]
    assert len(frames) == 8 and stats["faces"] == 8  # both faces in each frame with people
    torch.testing.assert_close(times, frames.float() / 10.0)
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 224).all()
    for f in (0, 1, 3, 4):
        xs = sorted(boxes[frames == f][:, 0].tolist())
        assert xs[0] < 104 and xs[1] >= 104  # one face on each side
    assert batches[0]["source"] == [str(video)] * 3 and dm.sources == [str(video)]
    tracks = torch.cat([b["track_id"] for b in batches])
    left = boxes[:, 0] < 104
    assert tracks[left].unique().numel() == 1 and tracks[~left].unique().numel() == 1  # one student, one track
    assert tracks[left][0] != tracks[~left][0] and stats["tracks"] == 2
    assert not torch.cat([b["landmarks"] for b in batches]).isnan().any()  # MTCNN gives the 5 landmarks
    assert dm.fps == pytest.approx(10.0) and not dm.live and dm.frame_stride == 1
    # every 3rd frame only
    dm3 = _dm(video, _state(face_detection="haar"), detector="mtcnn", every_n_frames=3)
    frames3 = torch.cat([b["frame"] for b in dm3.predict_dataloader()])
    assert sorted(set(frames3.tolist())) == [0, 3] and dm3.frame_stride == 3


def test_progress_has_a_total_and_the_run_says_n_of_m_frames(tmp_path, monkeypatch) -> None:
    """A video file: the progress total is the container's frame count divided by the stride, and the datamodule
    reports how many frames it analysed of how many."""
    import rich.progress

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for _ in range(10):
        writer.write(np.full((48, 64, 3), 90, dtype=np.uint8))
    writer.release()
    totals: list = []
    real_add_task = rich.progress.Progress.add_task

    def add_task(self, description, *args, total=None, **kwargs):
        totals.append(total)
        return real_add_task(self, description, *args, total=total, **kwargs)

    monkeypatch.setattr(rich.progress.Progress, "add_task", add_task)
    dm = _dm(video, _state(), every_n_frames=3, progress="rich")
    dm.setup("predict")
    list(dm.predict_dataloader())
    assert totals == [4]
    assert dm.stats["frames"] == 4 and dm.frames_summary() == "4 of 10 frames (one in 3)"


def test_a_bad_source_fails_at_setup_naming_it(tmp_path: Path) -> None:
    from features.video import VideoSourceError

    text = tmp_path / "lesson.txt"
    text.write_text("not a video\n" * 50)
    with pytest.raises(VideoSourceError, match=str(text)):
        _dm(text, _state()).setup("predict")
    with pytest.raises(FileNotFoundError, match="absent.mp4"):
        _dm(tmp_path / "absent.mp4", _state()).setup("predict")
