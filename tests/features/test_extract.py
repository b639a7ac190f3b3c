"""The extractor end to end on real faces (JAFFE) and real speech: bad inputs, resume, shards + merge, folders,
and the MOSI split logic on the real MOSI clip ids."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from features.extract import check_split_sizes, discover, main, run_extraction
from features.mmsa_format import load_feature_file, load_mmsa
from features.synthetic_recordings import write_recording
from features.video import write_video

SR = 16000


def _speech(shared_data: Path, seconds: float = 1.2) -> np.ndarray:
    import librosa

    wav = shared_data / "speech" / "pos.wav"
    if not wav.is_file():
        pytest.skip(f"{wav} is absent")
    return librosa.load(wav, sr=SR)[0][: int(seconds * SR)]


def _face(shared_data: Path, k: int = 0) -> np.ndarray:
    from PIL import Image

    files = sorted((shared_data / "jaffe").glob("*/*.tiff"))
    if not files:
        pytest.skip("JAFFE portraits are absent")
    return np.array(Image.open(files[k * 17 % len(files)]).convert("RGB"))


def _write_label_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video_id", "clip_id", "text", "label", "annotation", "mode"])
        w.writeheader()
        w.writerows(rows)


@pytest.fixture(scope="module")
def bad_dataset(shared_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ds")
    raw = root / "Raw"
    speech = _speech(shared_data)
    write_recording(raw / "vid_a" / "1.mp4", _face(shared_data, 0), speech, size=(160, 128), seed=1)
    write_recording(raw / "vid_a" / "2.mp4", _face(shared_data, 1), speech, size=(160, 128), seed=2)
    write_recording(raw / "vid_b" / "1.mp4", _face(shared_data, 2), speech, size=(160, 128), seed=3)
    write_recording(raw / "vid_b" / "2.mp4", None, speech, size=(160, 128))  # nobody in the picture
    write_recording(raw / "vid_c" / "1.mp4", _face(shared_data, 3), None, size=(160, 128), duration=1.0)
    (raw / "vid_c" / "2.mp4").write_bytes(b"\x00\x01broken" * 100)
    write_recording(raw / "vid_e" / "9.mp4", _face(shared_data, 4), speech, size=(160, 128))  # no label row
    write_recording(raw / "vid_a" / "3.mp4", _face(shared_data, 5), speech, size=(160, 128))
    row = lambda v, c, t, lab, mode: {"video_id": v, "clip_id": c, "text": t, "label": lab, "annotation": "", "mode": mode}
    _write_label_csv(root / "label.csv", [
        row("vid_a", "1", "I really love it", 2.0, "train"),
        row("vid_a", "2", "this was awful", -2.4, "valid"),
        row("vid_b", "1", "quite fine", 0.6, "test"),
        row("vid_b", "2", "nobody here", 0.0, "train"),
        row("vid_c", "1", "silent film", -0.2, "train"),
        row("vid_c", "2", "broken file", 1.0, "test"),
        row("vid_d", "1", "no such file", 1.0, "train"),
        row("vid_a", "3", "   ", 1.0, "train"),
        row("vid_a", "1", "a second row for the same clip", 1.0, "train"),
    ])
    return root


@pytest.fixture(scope="module")
def extracted(bad_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "feat.npz"
    main([str(bad_dataset), "--out", str(out), "--workers", "1", "--no-progress"])
    return out


@pytest.mark.slow
def test_bad_inputs_are_counted_listed_and_the_rest_loads(extracted) -> None:
    report = json.loads(extracted.with_name("feat.report.json").read_text())
    assert report["bad_counts"] == {"corrupt": 1, "duplicate_row": 1, "empty_transcript": 1, "missing_file": 1,
                                    "no_audio": 1, "no_face": 1, "unlabelled_file": 1}
    listed = {(b["id"], b["reason"]) for b in report["bad"]}
    assert ("vid_c$_$2", "corrupt") in listed and ("vid_c$_$1", "no_audio") in listed
    assert ("vid_d$_$1", "missing_file") in listed and ("vid_e$_$9", "unlabelled_file") in listed
    assert ("vid_a$_$3", "empty_transcript") in listed and ("vid_b$_$2", "no_face") in listed
    assert report["left_out"] == 6  # all but the faceless clip, which is kept with its vision masked
    assert report["split_sizes"] == {"train": 2, "valid": 1, "test": 1}
    data = load_mmsa(extracted)
    assert not data.aligned and data.split_sizes == report["split_sizes"]
    raw = load_feature_file(extracted)
    header = json.loads(raw["extractor"])
    for m in ("audio", "vision", "text"):
        assert len(header["feature_names"][m]) == data.feature_dims[m]
    assert header["settings"]["vision"]["fps"] == 5.0 and "librosa" in header["packages"]
    train = raw["train"]
    ids = list(train["id"])
    assert ids == ["vid_a$_$1", "vid_b$_$2"]
    mask = train["vision_face_mask"]
    assert mask[0, : train["vision_lengths"][0]].all()  # a face in every frame of the face clip
    assert not mask[1].any() and np.all(train["vision"][1] == 0)  # the faceless clip is masked
    np.testing.assert_allclose(train["regression_labels"], [2.0, 0.0])
    assert list(train["raw_text"]) == ["I really love it", "nobody here"]
    # ~1.2 s of audio at 20 ms steps; ~1.2 s of video at 5 fps
    assert 55 <= train["audio_lengths"][0] <= 65 and 5 <= train["vision_lengths"][0] <= 7


@pytest.mark.slow
def test_resume_shards_and_merge_give_the_same_bytes(bad_dataset, extracted, tmp_path) -> None:
    from features.extract import ExtractorSettings

    clips, _, _ = discover(bad_dataset)
    cache = extracted.with_name(extracted.name + ".cache")
    assert run_extraction(clips, ExtractorSettings(), cache, progress=False) == 0  # all cached: nothing to do
    victim = min(cache.glob("*.npz"))
    victim.unlink()
    assert run_extraction(clips, ExtractorSettings(), cache, progress=False) == 1  # a killed run resumes
    a, b = tmp_path / "cache_a", tmp_path / "cache_b"
    for k, d in ((0, a), (1, b)):
        main([str(bad_dataset), "--out", str(tmp_path / "x.npz"), "--shard", f"{k}/2", "--cache", str(d),
              "--no-progress"])
    assert not (tmp_path / "x.npz").exists()  # shards only fill caches
    assert len(list(a.glob("*.npz"))) and len(list(b.glob("*.npz")))
    merged = tmp_path / "merged" / extracted.name  # same name: the header records the file name
    main([str(bad_dataset), "--out", str(merged), "--merge", "--cache", str(a), str(b)])
    assert merged.read_bytes() == extracted.read_bytes()
    with pytest.raises(FileNotFoundError, match="in no cache"):
        main([str(bad_dataset), "--out", str(tmp_path / "m2.npz"), "--merge", "--cache", str(a)])
    two = tmp_path / "two_workers" / extracted.name
    main([str(bad_dataset), "--out", str(two), "--workers", "2", "--no-progress"])
    assert two.read_bytes() == extracted.read_bytes()
    with pytest.raises(FileExistsError):
        main([str(bad_dataset), "--out", str(two), "--merge", "--cache", str(a), str(b)])


@pytest.mark.slow
def test_video_folder_with_transcripts_is_prediction_only(shared_data, tmp_path) -> None:
    folder = tmp_path / "videos"
    speech = _speech(shared_data, 2.4)
    write_recording(folder / "talk.mp4", _face(shared_data, 6), speech, size=(160, 128))
    (folder / "talk.srt").write_text("1\n00:00:00,000 --> 00:00:01,200\nfirst part\n\n"
                                     "2\n00:00:01,200 --> 00:00:02,400\nsecond part\n")
    write_recording(folder / "orphan.mp4", _face(shared_data, 7), speech, size=(160, 128))
    out = tmp_path / "pred.pkl"
    report = main([str(folder), "--out", str(out), "--no-progress"])
    assert report["bad_counts"] == {"no_transcript": 1}
    data = load_feature_file(out)  # the pickle is read back with the restricted unpickler
    test = data["test"]
    assert list(test["id"]) == ["talk$_$1", "talk$_$2"] and "regression_labels" not in test
    np.testing.assert_allclose(test["start_s"], [0.0, 1.2])
    np.testing.assert_allclose(test["end_s"], [1.2, 2.4])
    assert len(data["train"]["id"]) == 0 and json.loads(data["extractor"])["labelled"] is False


# ------------------------------------------------------------------------------------------------ MOSI split
def test_mosi_label_csv_gives_the_standard_split(shared_data, tmp_path) -> None:
    """The real MOSI clip ids, times and labels in MMSA's label.csv over stub clips (one tiny valid mp4,
    hard-linked 2199 times): discovery gives exactly 1284/229/686 and the split check passes; a missing file
    is reported and breaks the check."""
    pytest.importorskip("h5py")
    from features.synthetic_mmsa import read_real_labels

    labels_dir = shared_data / "mosi_labels"
    if not (labels_dir / "CMU_MOSI_Opinion_Labels.csd").is_file():
        pytest.skip("MOSI label files are absent")
    real = read_real_labels(labels_dir, "mosi")
    stub = write_video(tmp_path / "stub.mp4", np.zeros((2, 16, 16, 3), np.uint8), fps=25,
                       audio=np.zeros(800, np.float32))
    root = tmp_path / "MOSI"
    rows = []
    for split, rec in real.items():
        for v, c, s, e, lab in zip(rec["video"], rec["clip"], rec["start"], rec["end"], rec["label"]):
            d = root / "Raw" / v
            d.mkdir(parents=True, exist_ok=True)
            os.link(stub, d / f"{c}.mp4")
            rows.append({"video_id": v, "clip_id": c, "text": f"segment {c} ({s:.2f}-{e:.2f} s)", "label": float(lab),
                             "annotation": "", "mode": split})
    _write_label_csv(root / "label.csv", rows)
    clips, bad, kind = discover(root)
    assert kind == "mmsa" and bad == []
    sizes = {s: sum(c.split == s for c in clips) for s in ("train", "valid", "test")}
    assert sizes == {"train": 1284, "valid": 229, "test": 686}
    assert check_split_sizes(sizes, "mosi")["ok"]
    first = clips[0]
    os.unlink(first.path)
    clips2, bad2, _ = discover(root)
    assert [(b.id, b.reason) for b in bad2] == [(first.id, "missing_file")]
    sizes2 = {s: sum(c.split == s for c in clips2) for s in ("train", "valid", "test")}
    assert not check_split_sizes(sizes2, "mosi")["ok"]


def test_label_csv_errors_name_the_problem(tmp_path) -> None:
    (tmp_path / "Raw").mkdir()
    (tmp_path / "label.csv").write_text("video_id,clip_id,text\nv,1,hi\n")
    with pytest.raises(ValueError, match="missing column"):
        discover(tmp_path)
    _write_label_csv(tmp_path / "label.csv", [{"video_id": "v", "clip_id": "1", "text": "hi", "label": 1, "annotation": "",
                                                   "mode": "dev"}])
    with pytest.raises(ValueError, match="mode 'dev'"):
        discover(tmp_path)
    _write_label_csv(tmp_path / "label.csv", [{"video_id": "v", "clip_id": "1", "text": "hi", "label": 7, "annotation": "",
                                                   "mode": "train"}])
    with pytest.raises(ValueError, match=r"outside \[-3, 3\]"):
        discover(tmp_path)
    with pytest.raises(FileNotFoundError):
        discover(tmp_path / "nope")
