"""Faces per second of the shipped face-expression model (``models/weights/``) on this machine's CPU threads, on torch
and on ONNX Runtime.

    python benchmarks/bench_face_model.py [--model fer2013_resnet18s] [--batch-size 64] [--threads 2] [--seconds 10]
                                          [--backends torch onnxruntime] [--rounds 5]

Prints, for the net alone (a ready ``[B, 3, S, S]`` batch: ``torch.inference_mode`` / one ONNX Runtime session run)
and for the whole ``predict`` call (48x48 grey crops in, probabilities out: resampling, normalisation, the net,
softmax), the faces/s of each backend, and the net's GFLOP per face (``torch.utils.flop_counter``) with its FLOP rate.
Both backends get the same batch, the same faces and the same thread count (ONNX Runtime: ``intra_op_num_threads``,
one inter-op thread, idle workers sleeping rather than spinning, so that they do not take the cores from torch's
next measurement); the ONNX model is exported by :func:`models.onnx_export.export_onnx` (dynamo exporter, its logits
checked against torch's) into a temporary folder. The measurements are interleaved: ``--seconds`` is split into
``--rounds`` rounds, and each round times every (backend, what) pair in turn (the order reversed every other round),
so drifting machine load hits both backends alike; each rate is the faces over the time spent on it, after one
warm-up call each. ONNX Runtime is optional (``pip install 'affect-lightning[onnx]'``); without it the default
measures torch alone and says so.

Target (issue #22): >= 200 faces/s for the model alone on 2 cores, so a lesson sampled at 1 frame/s with ~25 students
is analysed in real time.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.shipped import DEFAULT_MODEL, load_face_model

BACKENDS = ("torch", "onnxruntime")
TARGET = 200.0
#: ONNX Runtime session entry: whether idle intra-op workers spin (busy-wait) for the next run
SPINNING = "session.intra_op.allow_spinning"


def interleaved_rates(fns: dict[str, Callable[[], object]], n_per_call: int, seconds: float,
                      rounds: int) -> dict[str, float]:
    """Items/s of each function, timed in ``rounds`` interleaved rounds of ``seconds / rounds`` each (at least one
    call per function and round; the order reversed every other round), after one warm-up call each."""
    if rounds < 1:
        raise ValueError(f"interleaved_rates: rounds must be >= 1, got {rounds}")
    for fn in fns.values():
        fn()  # warm-up
    names = list(fns)
    calls, spent = dict.fromkeys(names, 0), dict.fromkeys(names, 0.0)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            while True:
                fns[name]()
                calls[name] += 1
                if time.perf_counter() - t0 >= seconds / rounds:
                    break
            spent[name] += time.perf_counter() - t0
    return {n: calls[n] * n_per_call / spent[n] for n in names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help="shipped name or a face checkpoint")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per (backend, what) pair")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds the seconds are split into")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=None,
                   help="default: both when onnxruntime is installed, else torch")
    a = p.parse_args(argv)
    installed = [b for b in BACKENDS if b == "torch" or importlib.util.find_spec("onnxruntime") is not None]
    backends = list(dict.fromkeys(a.backends)) if a.backends else installed
    torch.set_num_threads(a.threads)
    model = load_face_model(a.model)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, size=(a.batch_size, 48, 48), dtype=np.uint8)
    x = model.preprocess(faces)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.net(x)
    gflop = counter.get_total_flops() / a.batch_size / 1e9

    def torch_net() -> None:
        with torch.inference_mode():
            model.net(x)

    fns: dict[str, Callable[[], object]] = {}
    notes = []
    if "torch" in backends:
        fns["net alone|torch"] = torch_net
        fns["predict|torch"] = lambda: model.predict(faces, batch_size=a.batch_size)
    if "onnxruntime" in backends:
        from models.onnx_export import export_onnx, load_onnx_face_model

        with tempfile.TemporaryDirectory() as tmp:  # without onnxruntime: an error naming the extra
            path = Path(tmp) / "face_model.onnx"
            diffs = export_onnx(a.model, path)
            # the session holds the graph (tmp may go); idle workers sleep: spinning ones would take the cores from
            # the torch measurement that follows
            ort_model = load_onnx_face_model(path, threads=a.threads, session_config={SPINNING: "0"})
        import onnxruntime

        x_np = x.numpy()
        fns["net alone|onnxruntime"] = lambda: ort_model.logits(x_np)
        fns["predict|onnxruntime"] = lambda: ort_model.predict(faces, batch_size=a.batch_size)
        notes.append(f"onnxruntime {onnxruntime.__version__} ({', '.join(ort_model.session.get_providers())}), "
                     f"export max abs logit diff {max(diffs.values()):.1e}")
    elif a.backends is None:
        notes.append("onnxruntime not installed (pip install 'affect-lightning[onnx]'): torch only")
    rates = interleaved_rates(fns, a.batch_size, a.seconds, a.rounds)

    print(f"{model.source}: {type(model.net).__name__}, {model.image_size} px, "
          f"{sum(p.numel() for p in model.net.parameters()) / 1e6:.2f} M parameters, {gflop:.4f} GFLOP/face; "
          f"{a.threads} threads, batch {a.batch_size}, {platform.processor() or platform.machine()}; "
          f"{a.rounds} interleaved rounds" + "".join(f"; {n}" for n in notes))
    labels = {"net alone": "net alone", "predict": "predict (48x48 grey crops in)"}
    print(f"{'what':<34} {'backend':<12} {'faces/s':>9} {'GFLOP/s':>8}")
    for key, rate in rates.items():
        what, backend = key.split("|")
        print(f"{labels[what]:<34} {backend:<12} {rate:>9.0f} {rate * gflop:>8.1f}")
    if len(backends) == 2:
        print("onnxruntime / torch: " + ", ".join(
            f"{what} {rates[f'{what}|onnxruntime'] / rates[f'{what}|torch']:.2f}x" for what in labels))
    net_rates = {b: rates[f"net alone|{b}"] for b in backends}
    met = all(r >= TARGET for r in net_rates.values())
    print(f"target >= {TARGET:.0f} faces/s for the net alone: {'met' if met else 'MISSED'} ("
          + ", ".join(f"{b} {r:.0f}" for b, r in net_rates.items()) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
