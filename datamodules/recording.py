"""Prediction on a recording: a video plus its transcript -> MMSA batches for a trained MSA checkpoint.

Used by ``cli.py predict`` (``configs/predict_recording.yaml``) with
:class:`callbacks.sentiment_writer.SentimentTimelineWriter`. :meth:`RecordingDataModule.prepare_data` runs the
extractor (:mod:`features.extract`) on the one video, with the settings recorded in the header of the feature file
the model was trained on (``reference``; by default the ``path`` stored with the checkpoint's datamodule), into a
prediction-only feature file under ``output_dir``. :meth:`~RecordingDataModule.setup` checks the extracted feature
names and dims against the reference file and the checkpoint (a mismatch is a ``ValueError`` naming both sides),
pads the sequences to the checkpoint's ``seq_lens`` and serves the same batches as
:class:`datamodules.mosei.MMSADataModule`.

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

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from common.checkpoint import read_checkpoint
from datamodules.base import AffectDataModule
from datamodules.datasets.mmsa_dataset import MMSADataset, mmsa_collate
from features.extract import ExtractorSettings, extract
from features.mmsa_format import MMSASplit, load_feature_file
from features.text import TRANSCRIPT_EXTENSIONS

__all__ = ["RecordingDataModule", "RecordingInputError"]

log = logging.getLogger(__name__)

#: What to do when a model cannot score recordings: train one on extracted features.
TRAIN_ON_EXTRACTED = ("train on features extracted from recordings: `python -m features.extract <videos> --out "
                      "data/<name>.npz --split-by-recording 0.7,0.15,0.15`, then `cli.py fit --config "
                      "configs/hgcl_demo.yaml --data.init_args.path data/<name>.npz --checkpoint.dirpath "
                      "runs/<name>/checkpoints`, then predict with --ckpt_path runs/<name>/checkpoints/last.ckpt "
                      "(docs/workflows/recordings.md)")


class RecordingInputError(ValueError):
    """A recording or checkpoint that cannot be used as given (a user error: the message says what to do)."""

    #: Marks an error whose message is the whole story: a command line may print it without a traceback.
    user_error = True


def _header(data: dict[str, Any], path: str | Path, checkpoint: str | None = None) -> dict[str, Any]:
    if "extractor" not in data:
        who = f"the checkpoint {checkpoint} was trained on {path}, which" if checkpoint else f"{path}"
        raise RecordingInputError(
            f"{who} has no `extractor` header: it was not written by `python -m features.extract` (e.g. the "
            "generated demo file of configs/hgcl_demo.yaml), so the model's features are not the extractor's and it "
            f"cannot score a recording. To predict on recordings, {TRAIN_ON_EXTRACTED}")
    return json.loads(str(data["extractor"]))


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
        video = Path(self.hparams.video)
        if not video.is_file():
            raise RecordingInputError(f"RecordingDataModule: video {video} not found (--data.init_args.video)")
        self._transcript()
        self._reference()

    def _transcript(self) -> Path:
        video = Path(self.hparams.video)
        if self.hparams.transcript is not None:
            path = Path(self.hparams.transcript)
            if not path.is_file():
                raise RecordingInputError(f"RecordingDataModule: transcript {path} not found "
                                          "(--data.init_args.transcript)")
            return path
        tried = [video.with_suffix(e) for e in TRANSCRIPT_EXTENSIONS]
        found = next((p for p in tried if p.is_file()), None)
        if found is None:
            raise RecordingInputError(
                f"RecordingDataModule: no transcript for {video}: looked for {', '.join(str(p) for p in tried)}. "
                "Put one beside the video or pass it with --data.init_args.transcript FILE (.srt, .vtt, or a .csv "
                "with columns start,end,text); a transcript is needed: the project has no offline speech-to-text")
        return found

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
        if ref is None:
            _, dm_hp = self._checkpoint_hparams()
            ref = dm_hp.get("path")
        if not ref:
            raise ValueError("RecordingDataModule: give `reference` (the training feature file) or a checkpoint "
                             "whose datamodule stored its feature file `path`; the extractor settings come from it")
        if not Path(ref).is_file():
            raise FileNotFoundError(f"RecordingDataModule: reference feature file {ref} not found (needed for the "
                                    "extractor settings of the model)")
        if self._ref_cache is None or self._ref_cache[0] != str(ref):
            from_ckpt = None if self.hparams.reference is not None else self._checkpoint_path()
            self._ref_cache = (str(ref), _header(load_feature_file(ref), ref, from_ckpt))
        return self._ref_cache

    def _out_file(self) -> Path:
        return Path(self.hparams.output_dir) / f"{Path(self.hparams.video).stem}.features.npz"

    def _settings(self, header: dict[str, Any]) -> ExtractorSettings:
        return ExtractorSettings.from_dict(header["settings"], face_model=self.hparams.face_model,
                                           text_model=self.hparams.text_model)

    # ------------------------------------------------------------------------------------------ hooks
    def prepare_data(self) -> None:
        """Extract the recording's features with the reference settings (reused when already extracted)."""
        self.check()
        video = Path(self.hparams.video)
        _, header = self._reference()
        out = self._out_file()
        # split="test": the one split served, whatever split column the transcript has
        report = extract(video, out, self._settings(header), transcript=self._transcript(), overwrite=True,
                         progress=False, split="test")
        if report and report["bad"]:
            log.warning("%s: %d utterance(s) not usable: %s (see %s)", video, len(report["bad"]),
                        report["bad_counts"], out.with_name(out.stem + ".report.json"))

    def setup(self, stage: str | None = None) -> None:
        if self._dataset is not None:
            return
        ref_path, ref_header = self._reference()
        out = self._out_file()
        if not out.is_file():
            self.prepare_data()
        data = load_feature_file(out)
        header = _header(data, out)
        for m in ("audio", "vision", "text"):
            ours, theirs = header["feature_names"][m], ref_header["feature_names"][m]
            if ours != theirs:
                diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
                raise ValueError(f"RecordingDataModule: {m} features of {out} ({len(ours)}) differ from those of "
                                 f"the reference {ref_path} ({len(theirs)}) from feature {diff} on (give the same "
                                 "face_model / text_model as when the reference was extracted)")
        dims = dict(header["feature_dims"])
        lens = dict(ref_header["seq_lens"])
        hp, _ = self._checkpoint_hparams()
        if hp.get("feature_dims"):
            if {k: int(v) for k, v in hp["feature_dims"].items()} != dims:
                raise ValueError(f"RecordingDataModule: the checkpoint {self._checkpoint_path()} expects feature "
                                 f"dims {dict(hp['feature_dims'])} but the extractor gives {dims} for "
                                 f"{self.hparams.video}; extract with the settings the model was trained with")
            lens = {k: int(v) for k, v in (hp.get("seq_lens") or lens).items()}
        self._dims, self._lens = dims, lens
        split = data["test"]
        n = len(split["id"])
        if n == 0:
            raise ValueError(f"RecordingDataModule: no usable utterance in {self.hparams.video} (see "
                             f"{out.with_name(out.stem + '.report.json')})")

        def fit(key: str, length: int) -> tuple[torch.Tensor, torch.Tensor]:
            arr = np.asarray(split[key], dtype=np.float32)[:, :length]
            pad = np.zeros((n, length, arr.shape[2]), np.float32)
            pad[:, :arr.shape[1]] = arr
            lengths = np.minimum(np.asarray(split[f"{key}_lengths"]), length)
            mask = torch.arange(length)[None, :] < torch.from_numpy(lengths)[:, None]
            return torch.from_numpy(pad), mask

        audio, amask = fit("audio", lens["audio"])
        vision, vmask = fit("vision", lens["vision"])
        tb = torch.from_numpy(np.asarray(split["text_bert"]).astype(np.int64))
        ids = np.asarray(split["id"]).astype(str)
        self._dataset = MMSADataset(MMSASplit(
            text=torch.from_numpy(np.asarray(split["text"], dtype=np.float32)), audio=audio, vision=vision,
            text_mask=tb[:, 1].bool(), audio_mask=amask, vision_mask=vmask,
            label=torch.zeros(n), id=ids, text_bert=tb, raw_text=[str(t) for t in split["raw_text"]],
        ))
        self.utterances = {
            i: {"source": str(split["source"][k]), "start_s": float(split["start_s"][k]),
                "end_s": float(split["end_s"][k]), "text": str(split["raw_text"][k])}
            for k, i in enumerate(ids.tolist())
        }

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
