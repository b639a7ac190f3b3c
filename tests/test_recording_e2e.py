"""A recording made from real parts (JAFFE faces, espeak-ng speech, a transcript), muxed with PyAV:
extract -> feature file -> HGCL fit (fast_dev_run, then one epoch for a checkpoint) -> cli.py predict CSV.
Nothing is mocked."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from features.synthetic_recordings import espeak, espeak_available, write_recording

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")]

REPO = Path(__file__).resolve().parents[1]
SR = 16000
SENTENCES = [("I really love this, it is wonderful", 2.4, "train"), ("this is terrible and boring", -2.2, "train"),
             ("it was great fun", 1.8, "valid"), ("what an awful mess", -1.6, "valid"),
             ("a lovely happy day", 2.0, "test"), ("I hate it so much", -2.6, "test")]


def _faces(shared_data: Path) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((shared_data / "jaffe").glob("*/*.tiff"))
    if not files:
        pytest.skip("JAFFE portraits are absent")
    return [np.array(Image.open(f).convert("RGB")) for f in files[::23][:8]]


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    from cli import cli_main
    from features.extract import main as extract_main

    root = tmp_path_factory.mktemp("e2e")
    faces = _faces(shared_data)
    rows = []
    for k, (text, label, mode) in enumerate(SENTENCES):
        vid, cid = f"speaker{k // 2}", str(k % 2 + 1)
        write_recording(root / "ds" / "Raw" / vid / f"{cid}.mp4", faces[k], espeak(text), size=(192, 144), seed=k)
        rows.append({"video_id": vid, "clip_id": cid, "text": text, "label": label, "annotation": "", "mode": mode})
    with (root / "ds" / "label.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    feat = root / "feat.npz"
    report = extract_main([str(root / "ds"), "--out", str(feat), "--no-progress"])
    assert report["split_sizes"] == {"train": 2, "valid": 2, "test": 2} and report["bad"] == []
    common = ["--config", str(REPO / "configs/hgcl_demo.yaml"), "--data.init_args.path", str(feat),
              "--data.init_args.batch_size", "2", "--trainer.logger", "false", "--trainer.enable_progress_bar",
              "false"]
    cli_main(["fit", *common, "--trainer.fast_dev_run", "true", "--checkpoint.dirpath", str(root / "dev")])
    run = root / "run"
    cli_main(["fit", *common, "--trainer.max_epochs", "1", "--checkpoint.dirpath", str(run / "checkpoints"),
              "--test_after_fit", "false"])
    return root, feat, run


def test_extract_fit_predict_csv(trained, shared_data) -> None:
    from cli import cli_main

    root, _feat, run = trained
    faces = _faces(shared_data)
    parts, cues, t = [], [], 0.0
    for i, text in enumerate(["I love this", "this is awful", "well it was fine"]):
        y = espeak(text)
        parts += [y, np.zeros(int(0.3 * SR), np.float32)]
        end = t + len(y) / SR + 0.3
        cues.append(f"{i + 1}\n00:00:{t:06.3f} --> 00:00:{end:06.3f}\n{text}\n".replace(".", ","))
        t = end
    talk = root / "talk" / "talk.mp4"
    write_recording(talk, faces[7], np.concatenate(parts), size=(192, 144))
    (root / "talk" / "talk.srt").write_text("\n".join(cues))
    out = root / "pred"
    cli_main(["predict", "--config", str(REPO / "configs/predict/predict_recording.yaml"),
              "--ckpt_path", str(run / "checkpoints/last.ckpt"),
              "--data.init_args.video", str(talk), "--data.init_args.output_dir", str(out),
              "--trainer.callbacks.init_args.output_dir", str(out), "--checkpoint.dirpath", str(out / "ckpt"),
              "--trainer.enable_progress_bar", "false"])
    with (out / "sentiment.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == ["I love this", "this is awful", "well it was fine"]
    assert [r["id"] for r in rows] == ["talk$_$1", "talk$_$2", "talk$_$3"]
    assert float(rows[0]["start_s"]) == 0.0 and float(rows[1]["start_s"]) == pytest.approx(float(rows[0]["end_s"]))
    for r in rows:
        score = float(r["score"])
        assert -10 < score < 10
        assert r["class2"] == ("positive" if score >= 0 else "negative")
        assert int(r["class7"]) == int(np.round(np.clip(score, -3, 3)))
    assert (out / "sentiment_talk.png").stat().st_size > 1000
    assert (run / "config.yaml").read_text().find("RecordingDataModule") < 0  # the training config is untouched


def test_checkpoint_dims_mismatch_is_a_clear_error(trained, tmp_path) -> None:
    from datamodules.recording import RecordingDataModule

    root, feat, run = trained
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["feature_dims"] = {**ckpt["hyper_parameters"]["feature_dims"], "vision": 999}
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    talk = root / "talk" / "talk.mp4"
    if not talk.is_file():
        pytest.skip("needs the recording of test_extract_fit_predict_csv")
    dm = RecordingDataModule(video=str(talk), reference=str(feat), checkpoint=str(bad),
                             output_dir=str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"expects feature dims .*999"):
        dm.setup("predict")
