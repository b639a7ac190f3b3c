"""Recording (video + transcript) -> per-utterance sentiment, inference only (no Lightning).

A pipeline in the diffusers sense: built once from an MSA checkpoint of this project (a ``LitMSA`` run trained on a
feature file written by ``python -m features.extract``, ``docs/workflows/recordings.md``), then called on videos::

    from pipelines import RecordingPipeline

    pipe = RecordingPipeline.from_checkpoint("runs/my_videos/checkpoints/last.ckpt")
    result = pipe("talk.mp4", output_dir="runs/talk")       # transcript: talk.srt / .vtt / .csv beside it
    result.table      # one row per utterance: id, source, start_s, end_s, text, score, class2, class7, class7_name

It gives the rows of ``cli.py predict --config configs/predict/predict_recording.yaml`` (the same steps:
:mod:`features.recording` extracts the video with the settings of the training file's header, checks the feature
names and dims, pads to the checkpoint's ``seq_lens``; :mod:`features.sentiment_report` makes the rows, the CSV and
the plot), without a Trainer. The extracted features go to a temporary folder, removed after the call.

Loading: the checkpoint is read weights-only (:func:`common.checkpoint.read_checkpoint`); the net's class path, and
those of its nested parts, are checked against :data:`MSA_NETS` / :data:`MODEL_PARTS` (``models.registry``: the one
derivation of the classes of ``models/``, which ``lightning_modules.checkpoint_io`` builds on too) before anything the
file names is imported; the net is rebuilt as ``cls(feature_dims, seq_lens, **init_args)`` as ``LitMSA`` builds it
(weight-file arguments, :data:`common.checkpoint.WEIGHT_FILE_ARGS`, are never opened: the checkpoint's weights replace
them) and its ``net.`` weights are loaded strictly.
"""

from __future__ import annotations

import collections.abc
import functools
import importlib
import inspect
import logging
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn

from common.checkpoint import WEIGHT_FILE_ARGS, AllowList, CheckpointError, read_checkpoint
from features.mmsa_format import load_feature_file
from features.recording import (
    RecordingInputs,
    check_video,
    extract_recording,
    find_transcript,
    read_reference,
    recording_inputs,
    reference_path,
    reference_settings,
    split_batches,
)
from features.sentiment_report import (
    plot_path,
    plot_sentiment,
    sentiment_rows,
    sentiment_table,
    sort_rows,
    write_sentiment_csv,
)
from models.registry import MODEL_PARTS, MSA_NETS
from models.shipped import load_face_expression_model

__all__ = ["MODEL_PARTS", "MSA_NETS", "MSA_SYSTEM", "RecordingPipeline", "RecordingResult", "main"]

log = logging.getLogger(__name__)

#: The system class path of an MSA checkpoint written by ``cli.py fit`` (compared as a string, never imported).
MSA_SYSTEM = "lightning_modules.msa.LitMSA"


# ----------------------------------------------------------------------------------------------------------
# Building the net: class paths checked against models.registry's lists (MSA_NETS, MODEL_PARTS)
# ----------------------------------------------------------------------------------------------------------
def _import_checked(allow: AllowList, class_path: Any, source: str, where: str) -> type[nn.Module]:
    """The ``nn.Module`` class ``class_path`` names, after checking it against ``allow`` (nothing it names is
    imported before)."""
    module, _, attr = allow.check(class_path, source, where).rpartition(".")
    obj = getattr(importlib.import_module(module), attr, None)
    if not (inspect.isclass(obj) and issubclass(obj, nn.Module)):
        raise CheckpointError(f"Checkpoint {source!r} names {class_path!r} at {where}, which is not an nn.Module")
    return obj


def _is_factory(hint: Any) -> bool:
    """A ``Callable[..., ...]`` type (alone or in a Union): jsonargparse gives a partial of the class for it."""
    origin = typing.get_origin(hint)
    if origin is collections.abc.Callable:
        return True
    return origin in (typing.Union, types.UnionType) and any(_is_factory(a) for a in typing.get_args(hint))


def _build_args(cls: type, init_args: dict[str, Any], source: str, where: str) -> dict[str, Any]:
    """``init_args`` with nested ``class_path`` specs built (a factory-typed argument gets a partial, as
    jsonargparse gives it) and weight-file arguments dropped."""
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations: build nested parts as instances
        hints = {}
    out = {}
    for key, value in init_args.items():
        if key in WEIGHT_FILE_ARGS:
            continue
        if isinstance(value, dict) and "class_path" in value:
            at = f"{where}.{key}"
            sub = _import_checked(MODEL_PARTS, value["class_path"], source, f"{at}.class_path")
            kwargs = _build_args(sub, dict(value.get("init_args") or {}), source, f"{at}.init_args")
            value = functools.partial(sub, **kwargs) if _is_factory(hints.get(key)) else sub(**kwargs)
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------
# The pipeline
# ----------------------------------------------------------------------------------------------------------
@dataclass
class RecordingResult:
    """What one recording gave.

    Attributes:
        source: the video.
        transcript: the transcript used.
        table: one row per utterance, in time order, columns :data:`features.sentiment_report.CSV_COLUMNS` (the
            values of ``cli.py predict``'s ``sentiment.csv``).
        files: the files written to ``output_dir`` (``sentiment.csv``, ``sentiment_<video>.png``; empty without
            one).
    """

    source: str
    transcript: str
    table: pd.DataFrame
    files: list[Path] = field(default_factory=list)


class RecordingPipeline:
    """Score every utterance of a recording with one MSA net.

    Args:
        net: the net (``net(batch)["pred"]`` [B]), in eval mode.
        feature_dims / seq_lens: its sizes (the checkpoint's).
        reference: the feature file it was trained on (its ``extractor`` header gives the extractor settings).
        face_model: a face checkpoint replacing the reference's, when its features were extracted with one.
        text_model: a local BERT folder replacing the reference's text model.
        batch_size: utterances per forward pass.
        device: where the net runs.
        plot: ``"timeline"`` (``sentiment_<video>.png`` beside the CSV) or ``"none"``.
        overwrite: ``"never"`` (an existing ``sentiment.csv`` in ``output_dir`` is refused before any work) or
            ``"replace"``.
        checkpoint: the file the net came from (named in messages).
        reference_header: the reference's ``extractor`` header when already read (else it is read here).
    """

    def __init__(
        self,
        net: nn.Module,
        feature_dims: dict[str, int],
        seq_lens: dict[str, int],
        reference: str | Path,
        face_model: str | None = None,
        text_model: str | None = None,
        batch_size: int = 32,
        device: str | torch.device = "cpu",
        plot: Literal["timeline", "none"] = "timeline",
        overwrite: Literal["never", "replace"] = "never",
        checkpoint: str | None = None,
        reference_header: dict[str, Any] | None = None,
    ) -> None:
        name = type(self).__name__
        if batch_size < 1:
            raise ValueError(f"{name}: batch_size must be >= 1, got {batch_size}")
        if plot not in ("timeline", "none"):
            raise ValueError(f"{name}: plot must be 'timeline' or 'none', got {plot!r}")
        if overwrite not in ("never", "replace"):
            raise ValueError(f"{name}: overwrite must be 'never' or 'replace', got {overwrite!r}")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.feature_dims = {k: int(v) for k, v in feature_dims.items()}
        self.seq_lens = {k: int(v) for k, v in seq_lens.items()}
        self.reference = str(reference)
        self.checkpoint = checkpoint
        # a model trained on a file not written by the extractor (the generated demo file) is refused here
        self.reference_header = reference_header if reference_header is not None else read_reference(self.reference)
        self.face_model = face_model
        self.text_model = text_model
        self.batch_size = int(batch_size)
        self.plot = plot
        self.overwrite = overwrite

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, reference: str | Path | None = None,
                        device: str | torch.device = "cpu", **settings: Any) -> RecordingPipeline:
        """The pipeline of an MSA checkpoint of this project (``cli.py fit`` with an MSA config).

        Args:
            path: the ``.ckpt`` (local path or fsspec URL).
            reference: the training feature file; ``None``: the ``path`` stored with the checkpoint's datamodule.
            device: where the net runs.
            settings: the constructor's (``face_model``, ``text_model``, ``batch_size``, ``plot``, ``overwrite``).

        Raises:
            FileNotFoundError: no checkpoint, or no reference file.
            CheckpointError: unreadable; not an MSA checkpoint (e.g. a face model), naming the file and what it holds;
                a class path off the allow-lists; weights that do not fit.
            RecordingInputError: the model was trained on a file not written by the extractor.
        """
        src = os.fspath(path)
        name = cls.__name__
        ckpt = read_checkpoint(src, map_location="cpu")
        hp = ckpt.get("hyper_parameters") or {}
        net_cfg = hp.get("net") if isinstance(hp, dict) else None
        net_path = net_cfg.get("class_path") if isinstance(net_cfg, dict) else None
        system = hp.get("_class_path") if isinstance(hp, dict) else None
        if system is not None and system != MSA_SYSTEM:
            hint = (" (a face model: use pipelines.ClassroomPipeline for videos of faces)"
                    if str(system).endswith("LitFER") else "")
            raise CheckpointError(f"{name}: checkpoint {src!r} holds a {system} (net {net_path or 'not recorded'}), "
                                  f"not an MSA model ({MSA_SYSTEM}){hint}")
        if net_path is None:
            raise CheckpointError(f"{name}: checkpoint {src!r} names no net class (hyper_parameters.net.class_path); "
                                  "it is not an MSA checkpoint written by `cli.py fit`")
        net_cls = _import_checked(MSA_NETS, net_path, src, "hyper_parameters.net.class_path")
        dims, lens = hp.get("feature_dims"), hp.get("seq_lens")
        if not dims or not lens:
            raise CheckpointError(f"{name}: checkpoint {src!r} stores no feature_dims / seq_lens to build its "
                                  f"{net_cls.__name__}")
        dims = {k: int(v) for k, v in dims.items()}
        lens = {k: int(v) for k, v in lens.items()}
        init = _build_args(net_cls, dict(net_cfg.get("init_args") or {}), src, "hyper_parameters.net.init_args")
        try:
            net = net_cls(dict(dims), dict(lens), **init)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{name}: checkpoint {src!r}: its net config does not build a {net_cls.__name__}: "
                                  f"{e}") from None
        state = {k.removeprefix("net."): v for k, v in (ckpt.get("state_dict") or {}).items() if k.startswith("net.")}
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"{name}: checkpoint {src!r}: weights do not fit {net_cls.__name__}: "
                                  f"{str(e).splitlines()[0]}") from None
        ref = reference_path(reference, ckpt.get("datamodule_hyper_parameters") or {}, name)
        header = read_reference(ref, src if reference is None else None)  # the demo file's model is refused here
        return cls(net, dims, lens, ref, device=device, checkpoint=src, reference_header=header, **settings)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(net={type(self.net).__name__}, checkpoint={self.checkpoint!r}, "
                f"reference={self.reference!r}, feature_dims={self.feature_dims}, seq_lens={self.seq_lens}, "
                f"batch_size={self.batch_size}, device={str(self.device)!r})")

    @torch.inference_mode()
    def predict(self, inputs: RecordingInputs) -> list[float]:
        """The net's score per utterance of :class:`features.recording.RecordingInputs` (in their order)."""
        scores: list[float] = []
        for batch in split_batches(inputs.split, self.batch_size):
            batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            scores += self.net(batch)["pred"].detach().float().cpu().tolist()
        return scores

    def __call__(self, video: str | Path, transcript: str | Path | None = None,
                 output_dir: str | Path | None = None) -> RecordingResult:
        """Score each utterance of ``video``; write ``sentiment.csv`` (and the plot) into ``output_dir`` when given.

        Args:
            video: the video file.
            transcript: its ``.srt`` / ``.vtt`` / ``.csv`` (default: the file of the same stem beside the video).
            output_dir: folder for ``sentiment.csv`` and ``sentiment_<video>.png`` (written atomically); None:
                nothing is written.

        Raises:
            RecordingInputError: no video, no transcript (naming the files looked for and the argument).
            FileExistsError: ``sentiment.csv`` exists in ``output_dir`` and ``overwrite="never"``.
            ValueError: the extracted features do not match the reference's or the checkpoint's (naming both), or
                no utterance was usable.
        """
        name = type(self).__name__
        video = check_video(video, name, "the `video` argument")
        found = find_transcript(video, transcript, name,
                                "transcript=FILE (python -m pipelines.recording: --transcript FILE)")
        out = Path(output_dir) if output_dir is not None else None
        if out is not None and self.overwrite == "never" and (out / "sentiment.csv").exists():
            raise FileExistsError(f"{name}: {out / 'sentiment.csv'} already exists (an earlier prediction); pass "
                                  "overwrite='replace' (python -m pipelines.recording: --overwrite replace) or "
                                  "another output_dir")
        settings = reference_settings(self.reference_header, self.face_model, self.text_model)
        face_model = load_face_expression_model(self.face_model) if self.face_model else None
        with tempfile.TemporaryDirectory(prefix="recording-") as tmp:
            feats = Path(tmp) / f"{video.stem}.features.npz"
            extract_recording(video, feats, settings, found, face_model)
            inputs = recording_inputs(load_feature_file(feats), feats, self.reference_header, self.reference, name,
                                      video, {"feature_dims": self.feature_dims, "seq_lens": self.seq_lens},
                                      self.checkpoint)
        ids = list(inputs.split.id)
        rows = sort_rows(sentiment_rows(ids, self.predict(inputs), inputs.utterances))
        result = RecordingResult(str(video), str(found), sentiment_table(rows))
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            result.files.append(write_sentiment_csv(rows, out / "sentiment.csv"))
            if self.plot == "timeline" and rows:
                for source in sorted({r["source"] for r in rows}):
                    mine = [r for r in rows if r["source"] == source]
                    result.files.append(plot_sentiment(source, mine, plot_path(out, source)))
        log.info("%s: %s: %d utterance(s)%s", name, video, len(rows),
                 f", written to {out / 'sentiment.csv'}" if out is not None else "")
        return result


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.recording talk.mp4 --ckpt last.ckpt [--transcript talk.srt] [--out DIR]``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m pipelines.recording",
                                description="Per-utterance sentiment of a recording (inference pipeline).")
    p.add_argument("video", help="a video file")
    p.add_argument("--ckpt", required=True, help="an MSA checkpoint trained on features from features.extract")
    p.add_argument("--transcript", default=None, help="its .srt / .vtt / .csv (default: beside the video)")
    p.add_argument("--reference", default=None, help="the training feature file (default: the checkpoint's)")
    p.add_argument("--out", default="runs/predict_recording", help="output folder (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", choices=["never", "replace"], default="never")
    a = p.parse_args(argv)
    try:
        pipe = RecordingPipeline.from_checkpoint(a.ckpt, reference=a.reference, batch_size=a.batch_size,
                                                 overwrite=a.overwrite)
        result = pipe(a.video, a.transcript, a.out)
    except (OSError, ValueError) as err:
        p.exit(1, f"error: {err}\n")
    print(result.table.to_string(index=False))
    print(f"sentiment outputs: {a.out}/ ({', '.join(f.name for f in result.files)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
