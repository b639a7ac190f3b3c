"""End-to-end classroom prediction throughput: frames/s and faces/s on 720p video with 1 to 25 faces.

One command per path (run on an idle machine; 2 cores)::

    python benchmarks/bench_classroom.py --faces 25 --frames 30 --out runs/bench_classroom            # the pipeline
    python benchmarks/bench_classroom.py --faces 1 5 20 --frames 30 --net paper --out runs/bench_classroom_paper

``--net shipped`` (the default; issue #21's target: >= 25 faces/s with 25 faces per frame) runs
:class:`pipelines.classroom.ClassroomPipeline` with the shipped face model (``models/weights/fer2013_resnet18s.ckpt``,
64 px grey crops) at its default settings (MTCNN, min face 20 px) on a 25 fps video sampled at ``--sample-fps``
(1 frame/s: every source frame is decoded, one in 25 analysed), ``--frames`` analysed frames, and writes its outputs
(CSVs, plots, the HTML report; no annotated video). It reports faces/s and each stage's share of the summed stage
seconds (decode, detect, track, align, descriptor, model, write; decoding, detection, cropping and tracking run in the
pipeline's worker thread, the model in the caller's, so the shares are of the stage time, not of the wall time).

``--net paper`` / ``--net tiny`` run the Lightning path instead: for each face count, a 1280x720 H.264 video of
``--frames`` frames is composed from real JAFFE faces (:mod:`features.synthetic_classroom`) and run through
``Trainer.predict`` with the prediction pipeline of ``configs/fer/predict_video.yaml``: PyAV decoding, MTCNN detection (min face 20 px), tracking with appearance
re-linking, eye alignment, SUN descriptor maps and the face model (the config's two-branch Swin at 256 px, random
weights: the cost does not depend on them; ``--net tiny`` for a smoke run). The detector and the tracker are
timed inside the run, so the table gives the share of the wall time spent in detection and in tracking; the rest
is decoding, cropping, descriptors and the model. All face counts run in one process, one after the other, after
one warm-up run.

Faces are pasted at sides 40-120 px; where that many do not fit into the frame (about 18 do at 720p) the sides are
shrunk by 10 % steps until all fit (the table says the sides used).

Writes ``<out>/bench_classroom.md`` and ``.csv``.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TINY_NET = {"embed_dim": 8, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 4], "window_size": 4}
LEARNING = ["joy", "focus", "thinking", "boredom", "confusion", "drowsiness"]  # the paper's six learning emotions


class _Timed:
    """Wraps a callable attribute of ``obj`` and adds its wall time to ``self.seconds``."""

    def __init__(self, obj: object, name: str) -> None:
        self.seconds = 0.0
        fn = getattr(obj, name)

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        setattr(obj, name, timed)


def compose_class(portraits: Sequence, n_faces: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1280x720 frame with ``n_faces`` real faces (sides 40-120 px, shrunk in 10 % steps until all fit)."""
    from features.synthetic_classroom import Nuisances, compose_frame

    scale = 1.0
    while True:
        rng = np.random.default_rng(seed)
        sizes = rng.uniform(40, 120, n_faces) * scale
        picks = [portraits[i % len(portraits)] for i in range(n_faces)]
        frame, boxes = compose_frame(picks, sizes, rng, nuisances=Nuisances(max_tilt=10, max_blur=0.5))
        if len(boxes) == n_faces or scale < 0.3:
            return frame, boxes
        scale *= 0.9


def make_video(path: Path, portraits: Sequence, n_faces: int, n_frames: int, seed: int = 0) -> Path:
    from features.video import MP4Writer

    frame, _ = compose_class(portraits, n_faces, seed)
    with MP4Writer(path, fps=25) as w:
        for k in range(n_frames):  # a static class with slight camera shake
            w.write(np.roll(frame, (k % 3) - 1, axis=1))
    return path


def run_pipeline(video: Path, out: Path, sample_fps: float, **settings) -> dict[str, float]:
    """One run of :class:`pipelines.classroom.ClassroomPipeline` (shipped model) writing its outputs to ``out``."""
    import shutil

    from pipelines.classroom import STAGES, ClassroomPipeline

    shutil.rmtree(out, ignore_errors=True)
    pipe = ClassroomPipeline.from_checkpoint(sample_fps=sample_fps, **settings)
    r = pipe(video, output_dir=out)
    shares = r.stage_shares()
    return {"frames": r.frames_analysed, "faces": r.faces, "wall_s": r.wall_s,
            "frames_per_s": r.frames_analysed / r.wall_s, "faces_per_s": r.faces_per_s,
            **{f"share_{s}": shares[s] for s in STAGES}, **{f"seconds_{s}": r.seconds[s] for s in STAGES}}


def run_once(video: Path, net: str, sun, batch_size: int) -> dict[str, float]:
    from lightning.pytorch import Trainer

    from datamodules.face_video import FaceVideoDataModule
    from lightning_modules.fer import LitFER
    from models.swin_two_branch import TwoBranchSwin

    cfg = yaml.safe_load((REPO / "configs" / "fer" / "predict_video.yaml").read_text())
    net_args = dict(cfg["model"]["init_args"]["net"]["init_args"])
    data = dict(cfg["data"]["init_args"])
    size = 256  # the paper's crops
    if net == "tiny":
        net_args.update(TINY_NET)
        size = 32
    data.update(source=str(video), every_n_frames=1, max_fps=None, batch_size=batch_size, progress="none")
    net_args["img_size"] = size  # the checkpoint's image_size in cli.py predict
    dm = FaceVideoDataModule(**data)
    dm.use_preprocessing(paper_preprocessing(size, sun), origin=f"the {net} stand-in")  # a checkpoint's, in the CLI
    dm.setup("predict")
    det = _Timed(dm.face_stream.detector, "detect")
    trk = _Timed(dm.face_stream.tracker, "update")
    torch.manual_seed(0)
    lit = LitFER(partial(TwoBranchSwin, **net_args), num_classes=len(LEARNING), class_names=LEARNING).eval()
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False)
    t0 = time.perf_counter()
    trainer.predict(lit, datamodule=dm, return_predictions=False)
    wall = time.perf_counter() - t0
    frames, faces = dm.stats["frames"], dm.stats["faces"]
    return {"frames": frames, "faces": faces, "wall_s": wall, "frames_per_s": frames / wall,
            "faces_per_s": faces / wall, "detection_share": det.seconds / wall, "tracking_share": trk.seconds / wall}


def paper_preprocessing(size: int, sun) -> dict:
    """The preprocessing state a checkpoint of the paper's model stores (``FERDataModule.preprocessing_state``): the
    six learning emotions, ``size`` px crops, ImageNet normalisation, SUN maps with the statistics ``sun``."""
    settings = {"class_names": LEARNING, "image_size": size, "face_detection": "haar", "face_margin": 0.2,
                "background": "black", "descriptor": "sun", "lbp_points": 8, "lbp_radius": 1.0, "energy_sigma": 2.0,
                "sun_sigmas": list(sun.sigmas), "sun_ratio": sun.ratio, "sun_channels": sun.channels,
                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "descriptor_mean": 0.5,
                "descriptor_std": 0.5, "colour": "rgb"}
    return {"version": 1, "settings": settings, "sun_params": dict(sun.__dict__)}


def main(argv: Sequence[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jaffe", default=str(REPO.parent / "shared" / "data" / "jaffe"))
    ap.add_argument("--faces", type=int, nargs="+", default=None,
                    help="faces per frame (default: 25 for shipped, 1 5 20 for paper/tiny)")
    ap.add_argument("--frames", type=int, default=30, help="analysed frames per video")
    ap.add_argument("--batch-size", type=int, default=None, help="faces per forward (default 64 shipped, 32 else)")
    ap.add_argument("--net", choices=["shipped", "paper", "tiny"], default="shipped",
                    help="shipped: the pipeline with the shipped model; paper/tiny: the Lightning path")
    ap.add_argument("--sample-fps", type=float, default=1.0, help="pipeline: analysed frames per video second")
    ap.add_argument("--detector", choices=["mtcnn", "haar"], default="mtcnn", help="pipeline: face detector")
    ap.add_argument("--min-face-size", type=int, default=20, help="pipeline: smallest face side in pixels")
    ap.add_argument("--model-threads", type=int, default=1, help="pipeline: threads of the model (0: the backend's)")
    ap.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                    help="pipeline: the model's runtime (onnxruntime: exported in memory, checked within 1e-4)")
    ap.add_argument("--out", default="runs/bench_classroom")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    faces = args.faces or ([25] if args.net == "shipped" else [1, 5, 20])
    batch_size = args.batch_size or (64 if args.net == "shipped" else 32)

    sys.path.insert(0, str(REPO / "scripts"))
    from eval_face_detectors import load_portraits

    portraits = load_portraits(args.jaffe, limit=40)
    if not portraits:
        raise SystemExit(f"no JAFFE portraits under {args.jaffe}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.net == "shipped":
        rows, lines = _bench_pipeline(args, faces, batch_size, portraits, out)
    else:
        rows, lines = _bench_lightning(args, faces, batch_size, portraits, out)
    keys = list(rows[0])
    with open(out / "bench_classroom.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)
    (out / "bench_classroom.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


def _bench_pipeline(args, faces: list[int], batch_size: int, portraits, out: Path) -> tuple[list[dict], list[str]]:
    from pipelines.classroom import STAGES

    stride = max(1, round(25 / args.sample_fps))
    videos = {n: make_video(out / f"class_{n}faces_{args.frames}x{stride}.mp4", portraits, n, args.frames * stride)
              for n in faces}
    settings = {"detector": args.detector, "min_face_size": args.min_face_size, "batch_size": batch_size,
                "model_threads": args.model_threads or None, "backend": args.backend}
    warm = make_video(out / "warmup.mp4", portraits, faces[0], 2 * stride)
    run_pipeline(warm, out / "outputs_warmup", args.sample_fps, **settings)  # MTCNN nets, torch kernels, caches
    rows = []
    for n, video in videos.items():
        sides = compose_class(portraits, n)[1][:, 2]
        r = run_pipeline(video, out / f"outputs_{n}faces", args.sample_fps, **settings)
        rows.append({"faces_in_frame": n, "face_sides": f"{sides.min():.0f}-{sides.max():.0f}", **r})
    lines = [(f"1280x720, 25 fps, {args.frames} analysed frames per video ({args.sample_fps:g} frame/s: one in "
              f"{stride}), ClassroomPipeline, shipped model, {args.detector} (min face {args.min_face_size} px), "
              f"batch {batch_size}, model ({args.backend}) on {args.model_threads or torch.get_num_threads()} thread(s); shares "
              "of the summed stage seconds"), "",
             "| faces / frame | face sides px | faces found | frames/s | faces/s | "
             + " | ".join(STAGES) + " |", "|---|---|---|---|---|" + "---|" * len(STAGES)]
    for r in rows:
        lines.append(f"| {r['faces_in_frame']} | {r['face_sides']} | {r['faces'] / max(r['frames'], 1):.1f} | "
                     f"{r['frames_per_s']:.2f} | {r['faces_per_s']:.1f} | "
                     + " | ".join(f"{r[f'share_{s}']:.0%}" for s in STAGES) + " |")
    return rows, lines


def _bench_lightning(args, faces: list[int], batch_size: int, portraits, out: Path) -> tuple[list[dict], list[str]]:
    from features.descriptors import fit_sun_params
    from features.detection import build_detector, face_crop

    size = 32 if args.net == "tiny" else 256
    det = build_detector("mtcnn", min_face_size=40)
    crops = [face_crop(p.rgb, d[0], size) for p in portraits[:20] if (d := det.detect(p.rgb))]
    sun = fit_sun_params(crops, (1.0, 2.0, 4.0, 8.0), 1.6, "intensity")
    videos = {n: make_video(out / f"class_{n}faces.mp4", portraits, n, args.frames) for n in faces}
    run_once(videos[faces[0]], args.net, sun, batch_size)  # warm-up (MTCNN nets, model, caches)
    rows = []
    for n, video in videos.items():
        r = run_once(video, args.net, sun, batch_size)
        rows.append({"faces_in_frame": n, **r})
    lines = [(f"1280x720, {args.frames} frames per video, net {args.net}, batch {batch_size}, "
              f"{torch.get_num_threads()} torch threads"), "",
             "| faces / frame | faces found | frames/s | faces/s | share in detection | share in tracking |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['faces_in_frame']} | {r['faces'] / max(r['frames'], 1):.1f} | {r['frames_per_s']:.2f} | "
                     f"{r['faces_per_s']:.1f} | {r['detection_share']:.0%} | {r['tracking_share']:.0%} |")
    return rows, lines


if __name__ == "__main__":
    main()
