"""One recording (a video + its transcript) as the inputs of a trained MSA net, written once for both callers.

:class:`datamodules.recording.RecordingDataModule` (``cli.py predict``) and :class:`pipelines.recording.RecordingPipeline`
(Python, no Lightning) do the same steps with these functions, so they give the same batches:

1. :func:`check_video` / :func:`find_transcript`: the user errors, before any work (:class:`RecordingInputError`);
2. :func:`read_reference`: the header of the feature file the model was trained on (its ``extractor`` entry holds
   the settings; a file without one, e.g. the generated demo file, is refused naming it and the documented chain);
3. :func:`reference_settings` + :func:`extract_recording`: :func:`features.extract.extract` on the one video with
   those settings (every utterance to the ``test`` split);
4. :func:`recording_inputs`: the feature names against the reference's, the dims against the checkpoint's, the
   sequences cut / zero-padded to the checkpoint's ``seq_lens``, and the utterance table (``source``, ``start_s``,
   ``end_s``, ``text`` per id);
5. :func:`split_batches`: the batches of :class:`datamodules.datasets.mmsa_dataset.MMSADataset` (in order).

Messages start with the caller's name (``owner``) and name its way of giving a value (``how``: a command-line flag
or a Python argument).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from features.extract import ExtractorSettings, extract
from features.mmsa_format import MMSASplit, load_feature_file
from features.text import TRANSCRIPT_EXTENSIONS
from features.vision import FaceExpressionModel

__all__ = [
    "TRAIN_ON_EXTRACTED",
    "RecordingInputError",
    "RecordingInputs",
    "check_video",
    "extract_recording",
    "extractor_header",
    "find_transcript",
    "read_reference",
    "recording_inputs",
    "reference_path",
    "reference_settings",
    "split_batches",
]

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


@dataclass
class RecordingInputs:
    """A recording ready for the net.

    Attributes:
        split: the utterances as one split (label 0), audio / vision cut or zero-padded to ``seq_lens``.
        utterances: ``{id: {"source", "start_s", "end_s", "text"}}``.
        feature_dims / seq_lens: the net's sizes.
    """

    split: MMSASplit
    utterances: dict[str, dict[str, Any]]
    feature_dims: dict[str, int]
    seq_lens: dict[str, int]


def extractor_header(data: Mapping[str, Any], path: str | Path, checkpoint: str | None = None) -> dict[str, Any]:
    """The ``extractor`` header of a loaded feature file; :class:`RecordingInputError` naming the file (and the
    checkpoint trained on it) when it has none."""
    if "extractor" not in data:
        who = f"the checkpoint {checkpoint} was trained on {path}, which" if checkpoint else f"{path}"
        raise RecordingInputError(
            f"{who} has no `extractor` header: it was not written by `python -m features.extract` (e.g. the "
            "generated demo file of configs/hgcl_demo.yaml), so the model's features are not the extractor's and it "
            f"cannot score a recording. To predict on recordings, {TRAIN_ON_EXTRACTED}")
    return json.loads(str(data["extractor"]))


def check_video(video: str | Path, owner: str, how: str) -> Path:
    """``video`` as a path; :class:`RecordingInputError` naming it (and ``how`` it is given) when it is no file."""
    path = Path(video)
    if not path.is_file():
        raise RecordingInputError(f"{owner}: video {path} not found ({how})")
    return path


def find_transcript(video: str | Path, transcript: str | Path | None, owner: str, how: str) -> Path:
    """The transcript given, or the ``<stem>.srt`` / ``.vtt`` / ``.csv`` beside the video.

    Raises:
        RecordingInputError: the given file is missing, or none was found beside the video (naming the files looked
            for and ``how`` to give one).
    """
    video = Path(video)
    if transcript is not None:
        path = Path(transcript)
        if not path.is_file():
            raise RecordingInputError(f"{owner}: transcript {path} not found ({how})")
        return path
    tried = [video.with_suffix(e) for e in TRANSCRIPT_EXTENSIONS]
    found = next((p for p in tried if p.is_file()), None)
    if found is None:
        raise RecordingInputError(
            f"{owner}: no transcript for {video}: looked for {', '.join(str(p) for p in tried)}. "
            f"Put one beside the video or pass it with {how} (.srt, .vtt, or a .csv "
            "with columns start,end,text); a transcript is needed: the project has no offline speech-to-text")
    return found


def reference_path(reference: str | Path | None, datamodule_hparams: Mapping[str, Any], owner: str) -> str:
    """The training feature file: ``reference`` when given, else the ``path`` stored with the checkpoint's
    datamodule; errors name what is missing."""
    ref = reference if reference is not None else datamodule_hparams.get("path")
    if not ref:
        raise ValueError(f"{owner}: give `reference` (the training feature file) or a checkpoint whose datamodule "
                         "stored its feature file `path`; the extractor settings come from it")
    if not Path(ref).is_file():
        raise FileNotFoundError(f"{owner}: reference feature file {ref} not found (needed for the extractor settings "
                                "of the model)")
    return str(ref)


def read_reference(reference: str | Path, checkpoint: str | None = None) -> dict[str, Any]:
    """The ``extractor`` header of the training feature file (:func:`extractor_header`; ``checkpoint``: the
    checkpoint it was read from, named in the refusal)."""
    return extractor_header(load_feature_file(reference), reference, checkpoint)


def reference_settings(header: Mapping[str, Any], face_model: str | None = None,
                       text_model: str | None = None) -> ExtractorSettings:
    """The extractor settings of a reference header (``face_model`` / ``text_model``: local files replacing the
    stored ones, when the reference was extracted with them)."""
    return ExtractorSettings.from_dict(header["settings"], face_model=face_model, text_model=text_model)


def extract_recording(video: str | Path, out: str | Path, settings: ExtractorSettings,
                      transcript: str | Path, face_model: FaceExpressionModel | None = None) -> dict[str, Any] | None:
    """:func:`features.extract.extract` of one video into ``out`` (replaced), every utterance in the ``test`` split
    whatever split column the transcript has; utterances that are not usable are logged as a warning.
    ``face_model``: the model of ``settings.vision.face_model``, built by the caller
    (:func:`models.shipped.load_face_expression_model`; ``features/`` reads no model checkpoints)."""
    out = Path(out)
    report = extract(Path(video), out, settings, transcript=transcript, overwrite=True, progress=False, split="test",
                     face_model=face_model)
    if report and report["bad"]:
        log.warning("%s: %d utterance(s) not usable: %s (see %s)", video, len(report["bad"]), report["bad_counts"],
                    out.with_name(out.stem + ".report.json"))
    return report


def recording_inputs(data: Mapping[str, Any], out: str | Path, ref_header: Mapping[str, Any], ref_path: str | Path,
                     owner: str, video: str | Path, checkpoint_hparams: Mapping[str, Any] | None = None,
                     checkpoint: str | None = None) -> RecordingInputs:
    """The extracted recording ``data`` (loaded from ``out``) as the net's inputs.

    Checks the feature names of every modality against the reference's and, when the checkpoint's hyper-parameters
    store ``feature_dims``, the dims against them (its ``seq_lens`` then replace the reference's).

    Raises:
        ValueError: names or dims differ (naming both sides), or no utterance was usable.
    """
    out = Path(out)
    header = extractor_header(data, out)
    for m in ("audio", "vision", "text"):
        ours, theirs = header["feature_names"][m], ref_header["feature_names"][m]
        if ours != theirs:
            diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            raise ValueError(f"{owner}: {m} features of {out} ({len(ours)}) differ from those of the reference "
                             f"{ref_path} ({len(theirs)}) from feature {diff} on (give the same face_model / "
                             "text_model as when the reference was extracted)")
    dims = {k: int(v) for k, v in header["feature_dims"].items()}
    lens = {k: int(v) for k, v in ref_header["seq_lens"].items()}
    hp = checkpoint_hparams or {}
    if hp.get("feature_dims"):
        if {k: int(v) for k, v in hp["feature_dims"].items()} != dims:
            raise ValueError(f"{owner}: the checkpoint {checkpoint} expects feature dims {dict(hp['feature_dims'])} "
                             f"but the extractor gives {dims} for {video}; extract with the settings the model was "
                             "trained with")
        lens = {k: int(v) for k, v in (hp.get("seq_lens") or lens).items()}
    split = data["test"]
    n = len(split["id"])
    if n == 0:
        raise ValueError(f"{owner}: no usable utterance in {video} (see {out.with_name(out.stem + '.report.json')})")

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
    mmsa = MMSASplit(
        text=torch.from_numpy(np.asarray(split["text"], dtype=np.float32)), audio=audio, vision=vision,
        text_mask=tb[:, 1].bool(), audio_mask=amask, vision_mask=vmask,
        label=torch.zeros(n), id=ids, text_bert=tb, raw_text=[str(t) for t in split["raw_text"]],
    )
    utterances = {
        i: {"source": str(split["source"][k]), "start_s": float(split["start_s"][k]),
            "end_s": float(split["end_s"][k]), "text": str(split["raw_text"][k])}
        for k, i in enumerate(ids.tolist())
    }
    return RecordingInputs(mmsa, utterances, dims, lens)


def split_batches(split: MMSASplit, batch_size: int) -> Iterator[dict[str, Any]]:
    """The batches of an in-memory split, in order: the dicts ``DataLoader(MMSADataset(split), batch_size,
    collate_fn=mmsa_collate)`` gives (``docs/architecture.md``, "Multimodal sentiment")."""
    keys = ["text_mask", "audio_mask", "vision_mask", "label", "text", "audio", "vision"]
    if split.text_bert is not None:
        keys.append("text_bert")
    ids = np.asarray(split.id)
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        batch: dict[str, Any] = {k: torch.as_tensor(getattr(split, k)).index_select(0, idx) for k in keys}
        batch["id"] = ids[idx.numpy()].tolist()
        yield batch
