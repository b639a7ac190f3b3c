"""Face-detector recall and false positives on classroom-like frames composed from real JAFFE portraits.

One command::

    python scripts/eval_face_detectors.py --jaffe ../shared/data/jaffe --frames 40 --out runs/detector_eval

Each frame is 1280x720 and holds ``--faces`` JAFFE faces pasted at sides drawn log-uniformly in [24, 200] px, with
heads rolled up to +-25 degrees, Gaussian blur and reduced contrast and brightness
(:mod:`features.synthetic_classroom`). A ground-truth face counts as found when a detection overlaps it with
IoU >= ``--iou`` (0.4: MTCNN's boxes are tighter than the Haar boxes that define the ground truth, ~0.8 of their
side); every detection that matches no face is a false positive. The same frames go to every detector.

Writes ``<out>/detectors.md`` (the table in the README) and ``<out>/detectors.csv``: recall per face-size bin and
overall, false positives per frame. Accuracy only: no timing (see ``benchmarks/bench_classroom.py``).
"""

from __future__ import annotations

import argparse
import csv
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from features.detection import FaceDetector, build_detector
from features.faces import HaarFaceDetector
from features.images import load_image_rgb
from features.synthetic_classroom import Nuisances, Portrait, compose_frame
from features.tracking import box_iou

log = logging.getLogger("eval_face_detectors")

SIZE_BINS = ((24, 40), (40, 70), (70, 120), (120, 201))


def load_portraits(root: str | Path, limit: int | None = None) -> list[Portrait]:
    """JAFFE portraits with their face box (largest Haar box on the full 256x256 portrait)."""
    haar = HaarFaceDetector(min_size_frac=0.25)
    out = []
    files = sorted(Path(root).glob("*/*.tiff"))
    for f in files[:limit] if limit else files:
        rgb = load_image_rgb(f)
        boxes = haar.detect(rgb)
        if len(boxes):
            out.append(Portrait(rgb, tuple(int(v) for v in boxes[0]), f.name.split(".")[0]))
    return out


def match(gt: np.ndarray, pred: np.ndarray, iou: float = 0.4) -> tuple[np.ndarray, int]:
    """Greedy-free one-to-one matching (Hungarian on IoU): ``(found [K] bool per ground truth, false positives)``."""
    from scipy.optimize import linear_sum_assignment

    found = np.zeros(len(gt), bool)
    if len(gt) == 0 or len(pred) == 0:
        return found, len(pred)
    m = box_iou(gt, pred)
    rows, cols = linear_sum_assignment(-m)
    ok = m[rows, cols] >= iou
    found[rows[ok]] = True
    return found, int(len(pred) - ok.sum())


def make_frames(
    portraits: Sequence[Portrait], n_frames: int, faces: int, seed: int, nuisances: Nuisances | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        sizes = np.exp(rng.uniform(np.log(24), np.log(200), faces))
        picks = [portraits[i] for i in rng.choice(len(portraits), faces, replace=False)]
        frames.append(compose_frame(picks, sizes, rng, nuisances=nuisances))
    return frames


def evaluate(detector: FaceDetector, frames: Sequence[tuple[np.ndarray, np.ndarray]], iou: float = 0.4) -> dict:
    """Recall per size bin and overall, false positives per frame."""
    hits = {b: [0, 0] for b in SIZE_BINS}
    fps = 0
    n_gt = n_found = 0
    for frame, gt in frames:
        pred = np.array([d.box for d in detector.detect(frame)], np.float64).reshape(-1, 4)
        found, fp = match(gt, pred, iou)
        fps += fp
        n_gt += len(gt)
        n_found += int(found.sum())
        for side, f in zip(gt[:, 2], found):
            for b in SIZE_BINS:
                if b[0] <= side < b[1]:
                    hits[b][0] += int(f)
                    hits[b][1] += 1
    return {
        "recall": n_found / max(n_gt, 1),
        "fp_per_frame": fps / max(len(frames), 1),
        "faces": n_gt,
        "frames": len(frames),
        **{f"recall_{lo}-{hi - 1}px": (h / n if n else float("nan")) for (lo, hi), (h, n) in hits.items()},
        **{f"faces_{lo}-{hi - 1}px": n for (lo, hi), (_, n) in hits.items()},
    }


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jaffe", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "jaffe"))
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--faces", type=int, default=10)
    ap.add_argument("--iou", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/detector_eval")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    portraits = load_portraits(args.jaffe)
    if len(portraits) < args.faces:
        raise SystemExit(f"{args.jaffe}: only {len(portraits)} portraits with a face, need {args.faces}")
    frames = make_frames(portraits, args.frames, args.faces, args.seed)
    detectors = {
        "haar (min 24 px)": build_detector("haar", min_face_size=24),
        "mtcnn (min 20 px)": build_detector("mtcnn", min_face_size=20),
    }
    results = {name: evaluate(det, frames, args.iou) for name, det in detectors.items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    keys = list(next(iter(results.values())))
    with open(out / "detectors.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["detector", *keys])
        for name, r in results.items():
            w.writerow([name, *[r[k] for k in keys]])
    bins = [f"{lo}-{hi - 1}px" for lo, hi in SIZE_BINS]
    n_per_bin = [next(iter(results.values()))[f"faces_{b}"] for b in bins]
    lines = [
        (f"{args.frames} frames 1280x720, {args.faces} JAFFE faces each (24-200 px, roll <= 25 deg, blur, low "
         f"contrast/brightness), IoU >= {args.iou}, seed {args.seed}"),
        "",
        "| detector | recall | " + " | ".join(f"recall {b} (n={n})" for b, n in zip(bins, n_per_bin))
        + " | false positives / frame |",
        "|---|---|" + "---|" * len(bins) + "---|",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['recall']:.2f} | " + " | ".join(f"{r[f'recall_{b}']:.2f}" for b in bins)
                     + f" | {r['fp_per_frame']:.2f} |")
    (out / "detectors.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return results


if __name__ == "__main__":
    main()
