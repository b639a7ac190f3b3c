"""User errors of ``datamodules.recording.RecordingDataModule`` come at once, before any extraction, and say what
to do: no transcript (which files were looked for, which flag gives one), a checkpoint trained on a file that was not
written by the extractor (the generated demo file). No media is decoded here."""

from __future__ import annotations

import pytest
import torch

from datamodules.recording import RecordingDataModule, RecordingInputError
from tests.fakes import write_mmsa_pickle


def _demo_checkpoint(tmp_path):
    demo = write_mmsa_pickle(tmp_path / "mosi_demo.pkl")  # MMSA schema, no `extractor` header
    ckpt = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": {}, "datamodule_hyper_parameters": {"path": str(demo)}}, ckpt)
    return demo, ckpt


def test_missing_transcript_names_the_files_looked_for_and_the_flag(tmp_path) -> None:
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"not decoded")
    dm = RecordingDataModule(video=str(video), output_dir=str(tmp_path / "out"))
    with pytest.raises(RecordingInputError) as err:
        dm.prepare_data()
    msg = str(err.value)
    for name in ("talk.srt", "talk.vtt", "talk.csv", "--data.init_args.transcript", "speech-to-text"):
        assert name in msg
    assert not (tmp_path / "out").exists()  # nothing extracted
    dm = RecordingDataModule(video=str(video), transcript=str(tmp_path / "nope.srt"))
    with pytest.raises(RecordingInputError, match=r"transcript .*nope\.srt not found"):
        dm.check()


def test_demo_checkpoint_is_refused_at_once_naming_its_training_file(tmp_path) -> None:
    demo, ckpt = _demo_checkpoint(tmp_path)
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"not decoded")
    (tmp_path / "talk.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    dm = RecordingDataModule(video=str(video), output_dir=str(tmp_path / "out"))
    with pytest.raises(RecordingInputError) as err:
        dm.set_checkpoint(str(ckpt))  # what cli.py predict calls as soon as it knows --ckpt_path
    msg = str(err.value)
    assert str(ckpt) in msg and str(demo) in msg and "no `extractor` header" in msg
    assert "python -m features.extract" in msg and "cli.py fit" in msg and "docs/workflows/recordings.md" in msg
    assert not (tmp_path / "out").exists()
    assert RecordingInputError.user_error is True and isinstance(err.value, ValueError)
