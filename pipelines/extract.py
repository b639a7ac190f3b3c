"""The feature extractor with a face-expression model: ``python -m features.extract`` plus ``--face-model``.

Usage (the arguments of ``python -m features.extract``, see :mod:`features.extract`)::

    python -m pipelines.extract my_videos/ --out data/my_videos.npz --split-by-recording 0.7,0.15,0.15 \\
        --face-model runs/swin2b_ckplus48/checkpoints/last.ckpt

``features/`` imports no model code (``docs/architecture.md``), so it cannot rebuild a face net from a checkpoint.
This command, in a layer that may import ``models/``, reads the ``--face-model`` checkpoint with
:func:`models.shipped.load_face_expression_model` (:func:`models.shipped.read_face_net`: weights-only, the net's
class path checked against :data:`models.registry.FACE_NETS`, the preprocessing as plain data) and runs
:func:`features.extract.main` with it injected; without ``--face-model`` it is ``python -m features.extract``. The
features are the same as the extractor's own for the same checkpoint; a refused checkpoint (pickled code, a net
not allowed, no face checkpoint) ends the command with one line naming the file, before any work.

In Python, give :func:`features.extract.extract` the model and the settings naming its file::

    from features.extract import ExtractorSettings, extract
    from features.vision import VisionSettings
    from models.shipped import load_face_expression_model

    settings = ExtractorSettings(vision=VisionSettings(face_model="face.ckpt"))
    extract("my_videos/", "out.npz", settings, face_model=load_face_expression_model("face.ckpt"))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from features import extract as _extract
from models.shipped import load_face_expression_model

__all__ = ["PROG", "main"]

#: This command's name (:data:`features.extract.FACE_MODEL_COMMAND`).
PROG = _extract.FACE_MODEL_COMMAND


def main(argv: Iterable[str] | None = None) -> dict[str, Any] | None:
    """``python -m pipelines.extract``: :func:`features.extract.main` with the ``--face-model`` checkpoint read by
    :func:`models.shipped.load_face_expression_model`.

    Returns:
        The extraction report, or ``None`` for a ``--shard`` run.
    """
    return _extract.main(argv, load_face_model=load_face_expression_model, prog=PROG)


if __name__ == "__main__":
    _extract.command_line(main)
