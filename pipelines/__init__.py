"""Inference pipelines (diffusers sense): built from a checkpoint, called on media, no Lightning.

:class:`~pipelines.classroom.ClassroomPipeline`: classroom video -> per-face emotion table and per-student summary.
:class:`~pipelines.recording.RecordingPipeline`: recording (video + transcript) -> per-utterance sentiment.
:mod:`pipelines.extract`: ``python -m pipelines.extract``, the feature extractor with a face-expression checkpoint.
"""

from pipelines.classroom import ClassroomPipeline, ClassroomResult
from pipelines.recording import RecordingPipeline, RecordingResult

__all__ = ["ClassroomPipeline", "ClassroomResult", "RecordingPipeline", "RecordingResult"]
