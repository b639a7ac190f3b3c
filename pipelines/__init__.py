"""Inference pipelines (diffusers sense): built from a checkpoint, called on media, no Lightning.

:class:`~pipelines.classroom.ClassroomPipeline`: classroom video -> per-face emotion table and per-student summary.
"""

from pipelines.classroom import ClassroomPipeline, ClassroomResult

__all__ = ["ClassroomPipeline", "ClassroomResult"]
