"""Prediction on a recording: a video plus its transcript -> MMSA batches for a trained MSA checkpoint.

Used by ``cli.py predict`` (``configs/predict_recording.yaml``) with
:class:`callbacks.sentiment_writer.SentimentTimelineWriter`. :meth:`RecordingDataModule.prepare_data` runs the
extractor (:mod:`features.extract`) on the one video, with the settings recorded in the header of the feature file
the model was trained on (``reference``; by default the ``path`` stored with the checkpoint's datamodule), into a
prediction-only feature file under ``output_dir``. :meth:`~RecordingDataModule.setup` checks the extracted feature
names and dims against the reference file and the checkpoint (a mismatch is a ``ValueError`` naming both sides),
pads the sequences to the checkpoint's ``seq_lens`` and serves the same batches as
:class:`datamodules.mosei.MMSADataModule`. Each step is a function of :mod:`features.recording`, shared with the
Lightning-free :class:`pipelines.recording.RecordingPipeline`.

User errors are :class:`RecordingInputError` and are raised before any extraction (:meth:`~RecordingDataModule.check`,
called by ``cli.py predict`` as soon as it knows the checkpoint, and by ``prepare_data``):

* no transcript: the files looked for beside the video are named, with the flag that gives one
  (``--data.init_args.transcript``); the project has no offline speech-to-text, so a transcript is needed;
* a checkpoint trained on a feature file without an ``extractor`` header (e.g. the generated demo file of
  ``configs/hgcl_demo.yaml``, :mod:`features.synthetic_mmsa`): its features are not the extractor's, so it cannot
  score a recording; the message names the file and the documented chain (``features.extract`` -> ``fit`` ->
  ``predict``, ``docs/workflows/recordings.md``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from common.checkpoint import read_checkpoint
from datamodules.base import AffectDataModule
from datamodules.datasets.mmsa_dataset import MMSADataset, mmsa_collate
from features.extract import ExtractorSettings
from features.mmsa_format import load_feature_file
from features.recording import (
    TRAIN_ON_EXTRACTED,
    RecordingInputError,
    check_video,
    extract_recording,
    find_transcript,
    read_reference,
    recording_inputs,
    reference_path,
    reference_settings,
)
from models.shipped import load_face_expression_model

__all__ = ["TRAIN_ON_EXTRACTED", "RecordingDataModule", "RecordingInputError"]

OWNER = "RecordingDataModule"


class RecordingDataModule(AffectDataModule):
    """One recording (video + transcript, one utterance per segment) as prediction batches for LitMSA.

    Args:
        video: the video file.
        transcript: its ``.srt`` / ``.vtt`` / CSV transcript (default: the file of the same stem beside the video).
        reference: feature file the model was trained on (its header gives the extractor settings); ``None``: the
            ``path`` in the checkpoint's datamodule hyper-parameters.
        checkpoint: the MSA checkpoint (``None``: the ``--ckpt_path`` given to ``cli.py predict``); its
            ``feature_dims`` / ``seq_lens`` are checked and used.
        face_model: LitFER checkpoint, when the reference features were extracted with one.
        text_model: local BERT directory, when the reference used another than the shipped MiniLM.
        output_dir: where the extracted feature file, its report and cache go (the video is only read).
        batch_size: prediction batch size.

    After :meth:`setup`: ``feature_dims``, ``seq_lens`` and ``utterances`` (``{id: {"source", "start_s",
    "end_s", "text"}}``).
    """

    def __init__(
        self,
        video: str,
        transcript: str | None = None,
        reference: str | None = None,
        checkpoint: str | None = None,
        face_model: str | None = None,
        text_model: str | None = None,
        output_dir: str = "runs/predict_recording",
        batch_size: int = 32,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"RecordingDataModule: batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters()
        self._dataset: MMSADataset | None = None
        self._dims: dict[str, int] | None = None
        self._lens: dict[str, int] | None = None
        self.utterances: dict[str, dict[str, Any]] = {}
        self._ref_cache: tuple[str, dict[str, Any]] | None = None

    def set_checkpoint(self, path: str) -> None:
        """Use ``path`` (``cli.py predict --ckpt_path``) when no ``checkpoint`` was given."""
        if not self.hparams.checkpoint:
            self._ckpt_from_cli = str(path)
        self.check()

    def check(self) -> None:
        """The user errors, before any work: the video and its transcript exist, and the model's training file was
        written by the extractor (see the module docstring).

        Raises:
            RecordingInputError: no video, no transcript, or a checkpoint that cannot score recordings.
        """
        check_video(self.hparams.video, OWNER, "--data.init_args.video")
        self._transcript()
        self._reference()

    def _transcript(self) -> Path:
        return find_transcript(self.hparams.video, self.hparams.transcript, OWNER, "--data.init_args.transcript FILE")

    # ------------------------------------------------------------------------------------------ helpers
    def _checkpoint_path(self) -> str | None:
        return self.hparams.checkpoint or getattr(self, "_ckpt_from_cli", None)

    def _checkpoint_hparams(self) -> tuple[dict[str, Any], dict[str, Any]]:
        path = self._checkpoint_path()
        if not path:
            return {}, {}
        if not Path(path).is_file():
            raise FileNotFoundError(f"RecordingDataModule: checkpoint {path} not found")
        ckpt = read_checkpoint(path, map_location="cpu")  # weights-only; errors name the file
        return ckpt.get("hyper_parameters") or {}, ckpt.get("datamodule_hyper_parameters") or {}

    def _reference(self) -> tuple[str, dict[str, Any]]:
        ref = self.hparams.reference
        dm_hp = self._checkpoint_hparams()[1] if ref is None else {}
        ref = reference_path(ref, dm_hp, OWNER)
        if self._ref_cache is None or self._ref_cache[0] != ref:
            from_ckpt = None if self.hparams.reference is not None else self._checkpoint_path()
            self._ref_cache = (ref, read_reference(ref, from_ckpt))
        return self._ref_cache

    def _out_file(self) -> Path:
        return Path(self.hparams.output_dir) / f"{Path(self.hparams.video).stem}.features.npz"

    def _settings(self, header: dict[str, Any]) -> ExtractorSettings:
        return reference_settings(header, self.hparams.face_model, self.hparams.text_model)

    # ------------------------------------------------------------------------------------------ hooks
    def prepare_data(self) -> None:
        """Extract the recording's features with the reference settings (reused when already extracted)."""
        self.check()
        video = Path(self.hparams.video)
        _, header = self._reference()
        out = self._out_file()
        face_model = load_face_expression_model(self.hparams.face_model) if self.hparams.face_model else None
        extract_recording(video, out, self._settings(header), self._transcript(), face_model)

    def setup(self, stage: str | None = None) -> None:
        if self._dataset is not None:
            return
        ref_path, ref_header = self._reference()
        out = self._out_file()
        if not out.is_file():
            self.prepare_data()
        hp, _ = self._checkpoint_hparams()
        inputs = recording_inputs(load_feature_file(out), out, ref_header, ref_path, OWNER, self.hparams.video, hp,
                                  self._checkpoint_path())
        self._dims, self._lens = inputs.feature_dims, inputs.seq_lens
        self._dataset = MMSADataset(inputs.split)
        self.utterances = inputs.utterances

    # ------------------------------------------------------------------------------------------ properties
    @property
    def feature_dims(self) -> dict[str, int] | None:
        """Known after :meth:`setup` (the recording is extracted there); ``None`` before, so the CLI's link to the
        system passes nothing and the system builds its net from the checkpoint or in its own ``setup``."""
        return None if self._dims is None else dict(self._dims)

    @property
    def seq_lens(self) -> dict[str, int] | None:
        """Known after :meth:`setup` (the recording is extracted there); ``None`` before, so the CLI's link to the
        system passes nothing and the system builds its net from the checkpoint or in its own ``setup``."""
        return None if self._lens is None else dict(self._lens)

    def predict_dataloader(self) -> DataLoader:
        if self._dataset is None:
            self.setup("predict")
        return DataLoader(self._dataset, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=mmsa_collate)
