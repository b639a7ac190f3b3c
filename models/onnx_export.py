"""ONNX export of the project's face models, and ONNX Runtime as an optional inference backend.

Usage::

    python -m models.onnx_export fer2013_resnet18s fer.onnx          # a shipped name or any face checkpoint
    # exported, then checked: ONNX Runtime's logits equal torch's within 1e-4 at batch sizes 1 and 5

    from models.onnx_export import load_onnx_face_model
    model = load_onnx_face_model("fer.onnx")           # no checkpoint: the net runs on ONNX Runtime
    probs = model.predict(faces)                        # as models.shipped.FaceModel.predict: [N, H, W(, 3)] -> [N, C]

Any LitFER checkpoint of this project exports (read by :func:`models.shipped.read_face_net`): the nets of
:data:`models.shipped.FACE_NETS` (a timm classifier, the two-branch Swin with its second input ``descriptor``,
POSTER). The file's graph takes the net's inputs (``net.inputs``:
``image [B, 3, S, S]``, and ``descriptor [B, C_d, S_l, S_l]`` for two-branch nets) with a dynamic batch axis and
returns ``logits [B, C]``. Everything the runner needs besides the graph (class names, input side, normalisation,
colour, the inputs' names and shapes) is stored in the file's ``metadata_props`` as JSON under :data:`METADATA_KEY`,
so one ``.onnx`` file is the whole model.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (``exporter="dynamo"``, the default). Both of torch's exporters
export a timm ResNet, timm's Swin and the two-branch Swin to graphs whose logits match torch's (max abs diff ~1e-6),
with a dynamic batch axis; the dynamo exporter (``torch.export`` + onnxscript) is torch's default and maintained one,
while the TorchScript exporter is deprecated, so it is kept only as ``exporter="torchscript"``, a fallback for a net
that ``torch.export`` cannot trace.

ONNX Runtime (``onnxruntime``) and the exporter's packages (``onnx``, ``onnxscript``) are the optional extra
``pip install 'affect-lightning[onnx]'``; without them every function here fails at once with that command.
Preprocessing (:meth:`OnnxFaceModel.preprocess`) is :meth:`models.shipped.FaceModel.preprocess`, so both backends
feed the net the same tensor.

Shapes:
    image: ``[B, 3, S, S]`` float32 (normalised face crops)
    descriptor: ``[B, C_d, S_l, S_l]`` float32 (two-branch nets only)
    logits: ``[B, C]`` float32
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import io
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import Tensor, nn

from common.io import atomic_write
from models.shipped import SHIPPED_MODELS, FaceModel, load_face_model, read_face_net

__all__ = ["INSTALL_HINT", "METADATA_KEY", "Backend", "Exporter", "OnnxFaceModel", "export_onnx", "load_face_runner",
           "load_onnx_face_model", "max_abs_diff"]

#: ``metadata_props`` key of the JSON the runner reads (see :func:`_metadata`).
METADATA_KEY = "affect_lightning.face_model"
#: Version of that JSON; a runner refuses files of a newer one.
METADATA_VERSION = 1
#: The command that installs the optional packages.
INSTALL_HINT = "pip install 'affect-lightning[onnx]'"
Exporter = Literal["dynamo", "torchscript"]
EXPORTERS = get_args(Exporter)
Backend = Literal["torch", "onnxruntime"]
BACKENDS = get_args(Backend)
#: Default tolerance of the export check: max abs difference of the logits (ONNX Runtime vs torch).
ATOL = 1e-4


def _require(module: str, what: str) -> Any:
    """Import an optional package or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModuleNotFoundError(f"{what} needs {module!r}, which is not installed: {INSTALL_HINT}") from None


# --------------------------------------------------------------------------------------------------- torch side


@dataclass
class _Source:
    """A torch face net ready to export, with what the runner needs besides the graph."""

    model: FaceModel
    net: nn.Module  # model.net in eval mode on the CPU
    inputs: tuple[str, ...]
    shapes: dict[str, tuple[int, ...]]  # per input, without the batch axis
    descriptor: str = "none"


def _input_shapes(net: nn.Module, inputs: Sequence[str], image_size: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"image": (3, image_size, image_size)}
    for name in inputs:
        if name == "image":
            continue
        embed = getattr(getattr(net, "local_branch", None), "patch_embed", None) if name == "descriptor" else None
        if embed is None:
            raise ValueError(f"export_onnx: cannot tell the shape of input {name!r} of {type(net).__name__}; give "
                             "input_shapes={name: (C, H, W)}")
        side = getattr(embed, "img_size", None) or (image_size, image_size)
        shapes[name] = (int(embed.proj.in_channels), int(side[0]), int(side[1]))
    return shapes


def _source(source: str | Path | FaceModel, colour: Literal["grey", "rgb"] | None,
            input_shapes: dict[str, Sequence[int]] | None) -> _Source:
    descriptor = "none"
    if isinstance(source, FaceModel):
        model = source if colour is None else dataclasses.replace(source, colour=colour)
    elif str(source) in SHIPPED_MODELS:
        model = load_face_model(str(source), colour=colour)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Face model {str(path)!r}: no such file and not a shipped model name "
                                    f"({sorted(SHIPPED_MODELS)})")
        net, prep = read_face_net(path)  # every face net, descriptor-map nets included
        if not prep["image_size"]:
            raise ValueError(f"Face model {str(path)!r} stores no image_size")
        model = FaceModel(net=net, class_names=prep["class_names"], image_size=int(prep["image_size"]),
                          mean=tuple(prep["mean"]), std=tuple(prep["std"]), colour=colour or prep["colour"],
                          source=str(path))
        descriptor = prep["descriptor"]
    net = model.net
    if any(t.device.type != "cpu" for t in [*net.parameters(), *net.buffers()]):
        net = copy.deepcopy(net).cpu()  # the caller's model stays where it is
    net = net.eval()
    inputs = tuple(getattr(net, "inputs", ("image",)))
    if inputs[0] != "image":
        raise ValueError(f"export_onnx: {type(net).__name__} takes {inputs}; the first input must be the face image")
    shapes = _input_shapes(net, inputs, model.image_size) if input_shapes is None else \
        {k: tuple(int(d) for d in v) for k, v in input_shapes.items()}
    missing = [n for n in inputs if n not in shapes]
    if missing:
        raise ValueError(f"export_onnx: input_shapes lacks {missing} ({type(net).__name__} takes {inputs})")
    if descriptor == "none" and len(inputs) > 1:
        descriptor = "unknown"
    return _Source(model=model, net=net, inputs=inputs, shapes=shapes, descriptor=descriptor)


def _example(src: _Source, batch: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Inputs of batch ``batch``: a normal image, descriptor maps in [0, 1] (their range after min-max scaling)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, *src.shapes[n], generator=g) if n == "image" else
                 torch.rand(batch, *src.shapes[n], generator=g) for n in src.inputs)


def _metadata(src: _Source, exporter: Exporter, opset: int | None) -> dict[str, Any]:
    m = src.model
    return {"version": METADATA_VERSION, "class_names": list(m.class_names), "image_size": int(m.image_size),
            "mean": [float(v) for v in m.mean], "std": [float(v) for v in m.std], "colour": m.colour,
            "inputs": list(src.inputs), "input_shapes": {k: list(v) for k, v in src.shapes.items()},
            "output": "logits", "descriptor": src.descriptor, "net": type(m.net).__name__, "source": m.source,
            "exporter": exporter, "opset": opset}


def _export_bytes(src: _Source, exporter: Exporter, opset: int | None) -> bytes:
    """The ONNX model (with metadata) as bytes; nothing is written."""
    onnx = _require("onnx", "export_onnx")
    net, names = src.net, list(src.inputs)
    args = _example(src, 2)  # not 1: torch.export would specialise a batch of one
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, axis renames); the result is checked
        if exporter == "dynamo":
            _require("onnxscript", "export_onnx(exporter='dynamo')")
            batch = torch.export.Dim("batch", min=1, max=1 << 16)
            program = torch.onnx.export(net, args, input_names=names, output_names=["logits"], opset_version=opset,
                                        dynamic_shapes={n: {0: batch} for n in names}, dynamo=True, verbose=False,
                                        external_data=False)
            proto = program.model_proto
        else:
            buffer = io.BytesIO()
            torch.onnx.export(net, args, buffer, input_names=names, output_names=["logits"], opset_version=opset,
                              dynamic_axes={n: {0: "batch"} for n in [*names, "logits"]}, dynamo=False)
            proto = onnx.load_from_string(buffer.getvalue())
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    meta = json.dumps(_metadata(src, exporter, opset_used))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=METADATA_KEY, value=meta)
    proto.doc_string = f"affect-lightning face model ({type(net).__name__}) from {src.model.source}"
    return proto.SerializeToString()


def max_abs_diff(model: OnnxFaceModel, net: nn.Module, inputs: Sequence[Tensor]) -> float:
    """Max abs difference of the logits of ``model`` (ONNX Runtime) and ``net`` (torch) on the same inputs."""
    with torch.inference_mode():
        ref = net(*inputs).float().numpy()
    out = model.logits(*(x.numpy() for x in inputs))
    if out.shape != ref.shape:
        raise ValueError(f"{model.source}: ONNX logits {out.shape} vs torch {ref.shape}")
    return float(np.abs(out - ref).max()) if ref.size else 0.0


def export_onnx(
    source: str | Path | FaceModel,
    path: str | Path,
    *,
    exporter: Exporter = "dynamo",
    opset: int | None = None,
    colour: Literal["grey", "rgb"] | None = None,
    input_shapes: dict[str, Sequence[int]] | None = None,
    check_batch_sizes: Sequence[int] = (1, 5),
    atol: float = ATOL,
) -> dict[int, float]:
    """Export a face model to an ONNX file that carries its preprocessing, then check it with ONNX Runtime.

    The file is written (atomically) only after ONNX Runtime's logits equal torch's within ``atol`` at every batch
    size of ``check_batch_sizes`` (random inputs of the net's shapes).

    Args:
        source: a shipped model name, a face checkpoint of this project (any net of
            :data:`models.shipped.FACE_NETS`, descriptor-map nets included), or a :class:`~models.shipped.FaceModel`.
        path: the ``.onnx`` file to write.
        exporter: ``"dynamo"`` (``torch.onnx.export(dynamo=True)``, the default) or ``"torchscript"`` (torch's
            deprecated tracer, a fallback).
        opset: ONNX opset; ``None``: the exporter's default.
        colour: preprocessing colour to store (as :func:`models.shipped.load_face_model`); ``None``: the model's.
        input_shapes: per input, its shape without the batch axis; ``None`` derives them (``image``: ``[3, S, S]``;
            ``descriptor``: the local branch's patch embedding).
        check_batch_sizes: batch sizes of the check; empty: no check (and no ONNX Runtime needed).
        atol: tolerance of the check (max abs difference of the logits).

    Returns:
        ``{batch size: max abs difference of the logits}`` of the check.

    Raises:
        ModuleNotFoundError: ``onnx``/``onnxscript`` (or ``onnxruntime`` for the check) are not installed (the message
            names ``pip install 'affect-lightning[onnx]'``).
        ValueError: an unknown ``exporter``, an unreadable or foreign checkpoint, or logits that differ by more than
            ``atol`` (naming the file; nothing is written).
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"export_onnx: exporter must be one of {EXPORTERS}, got {exporter!r}")
    if any(int(b) < 1 for b in check_batch_sizes):
        raise ValueError(f"export_onnx: check_batch_sizes must be >= 1, got {tuple(check_batch_sizes)}")
    src = _source(source, colour, input_shapes)
    data = _export_bytes(src, exporter, opset)
    diffs: dict[int, float] = {}
    if check_batch_sizes:
        runner = _from_bytes(data, str(path))
        for b in check_batch_sizes:
            diffs[int(b)] = max_abs_diff(runner, src.net, _example(src, int(b), seed=int(b)))
        bad = {b: d for b, d in diffs.items() if not d <= atol}  # NaN fails too
        if bad:
            raise ValueError(f"export_onnx: {str(path)!r} not written: ONNX Runtime's logits differ from torch's by "
                             f"{bad} (max abs, per batch size) > atol={atol:g} (try exporter='torchscript')")
    with atomic_write(path) as f:
        f.write(data)
    return diffs


# --------------------------------------------------------------------------------------------------- runtime side


@dataclass
class OnnxFaceModel:
    """A face-expression model run by ONNX Runtime, with the preprocessing stored in its file.

    Same :meth:`preprocess`/:meth:`predict` as :class:`models.shipped.FaceModel`; the preprocessing is that class's.

    Args:
        session: an ``onnxruntime.InferenceSession`` of an exported file.
        class_names, image_size, mean, std, colour: as :class:`~models.shipped.FaceModel`.
        inputs: the graph's input names (``("image",)``, or ``("image", "descriptor")`` for two-branch nets).
        input_shapes: per input, its shape without the batch axis.
        descriptor: the descriptor map a two-branch net consumes (``"none"`` for image-only nets).
        source: the file it was read from.
    """

    session: Any
    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    colour: Literal["grey", "rgb"] = "rgb"
    inputs: tuple[str, ...] = ("image",)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    descriptor: str = "none"
    source: str = ""

    def __post_init__(self) -> None:
        self._prep = FaceModel(net=nn.Identity(), class_names=self.class_names, image_size=self.image_size,
                               mean=self.mean, std=self.std, colour=self.colour, source=self.source)

    def preprocess(self, faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Face crops (uint8 ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]``, any size) -> normalised ``[N, 3, S, S]``
        float32 (:meth:`models.shipped.FaceModel.preprocess`)."""
        return self._prep.preprocess(faces).numpy()

    def logits(self, *arrays: np.ndarray) -> np.ndarray:
        """The graph's logits ``[B, C]`` for its inputs (float32 arrays in :attr:`inputs` order)."""
        if len(arrays) != len(self.inputs):
            raise ValueError(f"OnnxFaceModel ({self.source}): the graph takes {self.inputs}, got {len(arrays)} arrays")
        feed = {n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.inputs, arrays, strict=True)}
        return self.session.run(["logits"], feed)[0]

    def predict(self, faces: np.ndarray | Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``[N, C]`` (float32, rows sum to 1) of face crops (see :meth:`preprocess`)."""
        if self.inputs != ("image",):
            raise ValueError(f"OnnxFaceModel ({self.source}): the net takes {self.inputs}; predict feeds face images "
                             f"only (compute the {self.descriptor!r} maps and call logits(image, descriptor))")
        probs = []
        for start in range(0, len(faces), batch_size):
            z = self.logits(self.preprocess(faces[start:start + batch_size])).astype(np.float32)
            e = np.exp(z - z.max(axis=1, keepdims=True))
            probs.append(e / e.sum(axis=1, keepdims=True))
        if not probs:
            return np.zeros((0, len(self.class_names)), dtype=np.float32)
        return np.concatenate(probs).astype(np.float32)


def _session(model: bytes | str, source: str, providers: Sequence[str] | None, threads: int | None,
             config: dict[str, str] | None = None) -> Any:
    ort = _require("onnxruntime", "ONNX Runtime inference")
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    for key, value in (config or {}).items():
        options.add_session_config_entry(str(key), str(value))
    options.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(model, sess_options=options,
                                    providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own (pybind) types; reported naming the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{source!r} is not an ONNX model ONNX Runtime can load: {first[:300]}") from None


def _runner(session: Any, source: str) -> OnnxFaceModel:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{source!r} is an ONNX model but not a face model exported by models.onnx_export (no "
                         f"{METADATA_KEY!r} metadata): export it with python -m models.onnx_export")
    try:
        meta = json.loads(raw)
        if int(meta["version"]) > METADATA_VERSION:
            raise ValueError(f"metadata version {meta['version']} is newer than this reader's {METADATA_VERSION}")
        graph_inputs = tuple(i.name for i in session.get_inputs())
        if tuple(meta["inputs"]) != graph_inputs:
            raise ValueError(f"metadata inputs {meta['inputs']} differ from the graph's {list(graph_inputs)}")
        return OnnxFaceModel(session=session, class_names=[str(c) for c in meta["class_names"]],
                             image_size=int(meta["image_size"]), mean=tuple(float(v) for v in meta["mean"]),
                             std=tuple(float(v) for v in meta["std"]), colour=meta["colour"],
                             inputs=graph_inputs,
                             input_shapes={k: tuple(v) for k, v in meta.get("input_shapes", {}).items()},
                             descriptor=str(meta.get("descriptor", "none")), source=source)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{source!r}: unreadable {METADATA_KEY!r} metadata ({type(e).__name__}: {e})") from None


def _from_bytes(data: bytes, source: str, providers: Sequence[str] | None = None,
                threads: int | None = None) -> OnnxFaceModel:
    return _runner(_session(data, source, providers, threads), source)


def load_onnx_face_model(path: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                         session_config: dict[str, str] | None = None) -> OnnxFaceModel:
    """An exported face model (:func:`export_onnx`) run by ONNX Runtime; needs no checkpoint.

    Args:
        path: the ``.onnx`` file.
        providers: ONNX Runtime execution providers in order of preference; ``None``: the CPU.
        threads: ONNX Runtime's intra-op threads; ``None``: its default (all cores).
        session_config: further ONNX Runtime session entries (``SessionOptions.add_session_config_entry``), e.g.
            ``{"session.intra_op.allow_spinning": "0"}`` so that idle worker threads sleep instead of spinning (for
            cores shared with other work).

    Raises:
        ModuleNotFoundError: onnxruntime is not installed (the message names ``pip install 'affect-lightning[onnx]'``).
        FileNotFoundError: no such file.
        ValueError: not an ONNX model (corrupt, or another format) or one without this project's metadata (naming
            the file).
    """
    path = Path(path)
    _require("onnxruntime", "ONNX Runtime inference")
    if not path.is_file():
        raise FileNotFoundError(f"ONNX face model {str(path)!r} does not exist")
    return _runner(_session(str(path), str(path), providers, threads, session_config), str(path))


def load_face_runner(name_or_path: str | Path, backend: Backend = "torch", *, device: str | torch.device = "cpu",
                     colour: Literal["grey", "rgb"] | None = None,
                     threads: int | None = None) -> FaceModel | OnnxFaceModel:
    """A face model with ``predict(faces)`` on the chosen backend.

    Args:
        name_or_path: a shipped name or a face checkpoint; with ``backend="onnxruntime"`` also an exported ``.onnx``.
        backend: ``"torch"`` (:func:`models.shipped.load_face_model`) or ``"onnxruntime"`` (an ``.onnx`` file is
            loaded; a name or checkpoint is exported in memory and checked first, as :func:`export_onnx` does).
        device: the torch backend's device.
        colour: preprocessing colour (as :func:`models.shipped.load_face_model`); not for ``.onnx`` files, which
            carry theirs.
        threads: ONNX Runtime's intra-op threads (``None``: its default).

    Raises:
        ValueError: an unknown backend, an ``.onnx`` file for the torch backend, or what the loaders raise.
    """
    if backend not in BACKENDS:
        raise ValueError(f"load_face_runner: backend must be one of {BACKENDS}, got {backend!r}")
    is_onnx = Path(str(name_or_path)).suffix.lower() == ".onnx"
    if backend == "torch":
        if is_onnx:
            raise ValueError(f"load_face_runner: {str(name_or_path)!r} is an ONNX file; use backend='onnxruntime'")
        return load_face_model(name_or_path, device=device, colour=colour)
    if is_onnx:
        if colour is not None:
            raise ValueError(f"load_face_runner: {str(name_or_path)!r} carries its preprocessing; colour is not taken")
        return load_onnx_face_model(name_or_path, threads=threads)
    _require("onnxruntime", "load_face_runner(backend='onnxruntime')")
    src = _source(name_or_path, colour, None)
    data = _export_bytes(src, "dynamo", None)
    runner = _from_bytes(data, src.model.source, threads=threads)
    for b in (1, 5):
        diff = max_abs_diff(runner, src.net, _example(src, b, seed=b))
        if not diff <= ATOL:
            raise ValueError(f"load_face_runner: {src.model.source!r} exported to ONNX differs from torch by {diff:g} "
                             f"(batch {b}) > {ATOL:g}; use backend='torch'")
    return runner


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m models.onnx_export",
                                     description="Export a face model to ONNX (with its preprocessing) and check "
                                                 "ONNX Runtime's logits against torch's.")
    parser.add_argument("src", help=f"shipped model name ({', '.join(sorted(SHIPPED_MODELS))}) or a face checkpoint")
    parser.add_argument("dst", help="output .onnx")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--colour", choices=("grey", "rgb"), default=None, help="preprocessing colour to store")
    parser.add_argument("--atol", type=float, default=ATOL, help="max abs logit difference allowed (default 1e-4)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 5], help="batch sizes checked")
    args = parser.parse_args(argv)
    diffs = export_onnx(args.src, args.dst, exporter=args.exporter, opset=args.opset, colour=args.colour,
                        check_batch_sizes=args.batch_sizes, atol=args.atol)
    model = load_onnx_face_model(args.dst)
    print(f"{args.dst}: {model.inputs} -> logits [B, {len(model.class_names)}] ({', '.join(model.class_names)}); "
          f"{model.image_size} px, colour {model.colour}; {Path(args.dst).stat().st_size / 1e6:.1f} MB")
    print("max abs logit difference vs torch: " + ", ".join(f"batch {b}: {d:.2e}" for b, d in diffs.items()) +
          f" (<= {args.atol:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
