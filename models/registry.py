"""The classes of ``models/`` a checkpoint may name: derived once, here, from the classes themselves (issue #21).

A checkpoint names its net (``{"class_path": "models.hgcl.HGCL", "init_args": {...}}``) and the parts injected into
it (HGCL's ``gnn`` / ``graph_builder``); a reader imports and calls them. Each name read from a file is checked with
:class:`common.checkpoint.AllowList` against a list derived from ``models/`` itself, before anything the file names
is imported:

- :func:`model_classes`: every ``nn.Module`` class defined in ``models/``, under the path of its module and of the
  packages of ``models/`` that re-export it (``models.hgcl.HGCL``); found by importing ``models/``
  (:func:`common.checkpoint.package_classes`; importing the project's own modules runs only its own code);
- :data:`MSA_NETS`: the MSA nets among them, built as ``cls(feature_dims, seq_lens, ...)`` (:func:`is_msa_net`), what
  an MSA checkpoint's ``net`` may name;
- :data:`MODEL_PARTS`: all of them, what a net's ``init_args`` may name;
- :data:`FACE_NETS`: the face-expression nets a face checkpoint may name (written out: a face net is a design
  choice, not a property of the class); a test checks each is one of :func:`model_classes` with ``net.inputs``.

``pipelines.recording`` checks against these lists; ``lightning_modules.checkpoint_io.PROJECT_CLASSES`` (the
project-wide list: these classes, the systems and the library classes they take) is built on :func:`model_classes`.

The lists are derived at the first check, not at import: importing this module imports nothing but
:mod:`common.checkpoint` and torch.
"""

from __future__ import annotations

import functools
import inspect

from torch import nn

from common.checkpoint import AllowList, package_classes

__all__ = ["FACE_NETS", "FACE_NET_ALLOW_LIST", "MODEL_PARTS", "MSA_NETS", "is_msa_net", "model_classes",
           "msa_net_paths"]

#: The package whose classes are listed.
_PACKAGE = "models"
#: The first parameters of an MSA net's constructor (docs/architecture.md, "Model").
_MSA_PARAMETERS = ("feature_dims", "seq_lens")


@functools.cache
def model_classes() -> dict[str, type[nn.Module]]:
    """``{class path: class}`` for every ``nn.Module`` class of ``models/`` (defining and re-exporting paths)."""
    return package_classes(_PACKAGE, nn.Module)


def is_msa_net(cls: type) -> bool:
    """Whether ``cls`` is built as ``cls(feature_dims, seq_lens, ...)``: its constructor's first two positional
    parameters (after ``self``) are ``feature_dims`` and ``seq_lens``."""
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:3]
    except (TypeError, ValueError):  # no introspectable signature
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in positional) == _MSA_PARAMETERS


@functools.cache
def msa_net_paths() -> frozenset[str]:
    """The class paths of :func:`model_classes` that are MSA nets (:func:`is_msa_net`)."""
    return frozenset(path for path, cls in model_classes().items() if is_msa_net(cls))


#: The face-expression nets (class paths) a face checkpoint may name: what ``models.shipped.read_face_net`` imports.
FACE_NETS: tuple[str, ...] = (
    "models.timm_classifier.TimmClassifier",
    "models.swin_two_branch.TwoBranchSwin",
    "models.poster.POSTER",
)
#: :data:`FACE_NETS` as an :class:`~common.checkpoint.AllowList`.
FACE_NET_ALLOW_LIST = AllowList(
    "the project's face nets " + str(sorted(FACE_NETS)), lambda: FACE_NETS,
    hint="A face checkpoint is one written by `cli.py fit` with a configs/fer/ config.",
)

#: The MSA nets a checkpoint's ``net`` may name: classes of ``models/`` built as ``cls(feature_dims, seq_lens, ...)``.
MSA_NETS = AllowList(
    "the project's MSA nets (models/ classes built as cls(feature_dims, seq_lens, ...))",
    msa_net_paths,
    hint="A recording is scored by an MSA checkpoint written by `cli.py fit` with an MSA config (configs/hgcl_*.yaml, "
         "configs/baselines/) on features from `python -m features.extract`; face models go through "
         "pipelines.ClassroomPipeline.",
)
#: The parts an MSA net's ``init_args`` may name (``class_path`` entries, e.g. HGCL's ``graph_builder``): classes of
#: ``models/``.
MODEL_PARTS = AllowList("the classes of the project's models/ package", lambda: model_classes().keys())
