"""Real-time factor of the feature extractor (media seconds processed per wall-clock second), per modality and in
total, 1 vs 2 workers, at the default settings (5 fps, MTCNN, HOG/LBP, librosa at 20 ms, MiniLM).

Run (on an idle machine; needs ../shared/data/jaffe and espeak-ng)::

    python benchmarks/bench_extract.py [--clips 12] [--fps 5] [--workers 1 2] [--out runs/bench_extract]

It builds ``--clips`` recordings from real parts (a JAFFE portrait drifting over a 640x360 background, espeak-ng
speech of a sentence, ~3-5 s each, 25 fps, muxed with PyAV) in the MMSA raw layout, then measures side by side in
this one run:

1. per modality, in this process with one thread (as inside a worker), models loaded beforehand:
   ``decode`` (PyAV frames at ``--fps`` + audio), ``audio`` (librosa descriptors + prosody), ``vision``
   (detection, tracking, geometry, descriptors), ``text`` (tokenizer + MiniLM);
2. the whole command ``features.extract`` with ``--workers`` 1 and 2 on fresh caches (wall time includes worker
   start-up and model loading, as a user sees it).

Target: the whole extraction at 5 fps at least real time (RTF >= 1). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SENTENCES = [
    "I really enjoyed this film, the story was wonderful and the actors were great",
    "honestly it was boring and far too long, I would not watch it again",
    "the music was nice but the plot did not make much sense to me",
    "what a fantastic ending, I did not expect that at all",
]


def build_dataset(root: Path, n_clips: int, faces_dir: Path) -> float:
    """Write the recordings and label.csv; returns the total media duration in seconds."""
    from PIL import Image

    from features.synthetic_recordings import espeak, write_recording
    from features.video import media_duration

    faces = sorted(faces_dir.glob("*/*.tiff"))
    if not faces:
        raise SystemExit(f"no JAFFE portraits under {faces_dir} (give --faces)")
    rows, total = [], 0.0
    for k in range(n_clips):
        vid, cid = f"v{k // 4}", str(k % 4 + 1)
        face = np.array(Image.open(faces[(k * 13) % len(faces)]).convert("RGB"))
        path = write_recording(root / "Raw" / vid / f"{cid}.mp4", face, espeak(SENTENCES[k % len(SENTENCES)]),
                               size=(640, 360), seed=k)
        total += media_duration(path)
        rows.append({"video_id": vid, "clip_id": cid, "text": SENTENCES[k % len(SENTENCES)], "label": 0.0, "annotation": "",
                         "mode": ("train", "valid", "test")[k % 3]})
    with (root / "label.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return total


def per_modality(root: Path, fps: float) -> dict[str, float]:
    """Seconds spent per modality over all clips (one thread, models loaded before timing)."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    from features.audio import AudioSettings, extract_audio
    from features.extract import discover
    from features.text import TextEncoder
    from features.video import decode_media
    from features.vision import VisionExtractor, VisionSettings

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    clips, _, _ = discover(root)
    t0 = time.perf_counter()
    vision, text, audio_s = VisionExtractor(VisionSettings(fps=fps)), TextEncoder(), AudioSettings()
    out = {"model_loading": time.perf_counter() - t0, "decode": 0.0, "audio": 0.0, "vision": 0.0, "text": 0.0}
    with threadpool_limits(limits=1):
        for c in clips:
            t = time.perf_counter()
            media = decode_media(c.path, fps=fps, sample_rate=audio_s.sample_rate)
            out["decode"] += time.perf_counter() - t
            t = time.perf_counter()
            extract_audio(media.audio, audio_s)
            out["audio"] += time.perf_counter() - t
            t = time.perf_counter()
            vision(media.frames, media.frame_times)
            out["vision"] += time.perf_counter() - t
            t = time.perf_counter()
            text.encode(c.text)
            out["text"] += time.perf_counter() - t
    return out


def whole(root: Path, out_dir: Path, fps: float, workers: int) -> float:
    """Wall seconds of ``python -m features.extract`` semantics (in-process call) on a fresh cache."""
    from features.extract import main

    target = out_dir / f"w{workers}" / "feat.npz"
    shutil.rmtree(target.parent, ignore_errors=True)
    t = time.perf_counter()
    main([str(root), "--out", str(target), "--workers", str(workers), "--fps", str(fps), "--no-progress"])
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--fps", type=float, default=5.0)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--faces", type=Path, default=ROOT.parent / "shared" / "data" / "jaffe")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_extract")
    args = p.parse_args(argv)
    data = args.out / "dataset"
    shutil.rmtree(data, ignore_errors=True)
    media_s = build_dataset(data, args.clips, args.faces)
    mod = per_modality(data, args.fps)
    result = {
        "clips": args.clips, "media_seconds": round(media_s, 2), "fps": args.fps,
        "rtf_per_modality": {k: round(media_s / v, 2) for k, v in mod.items() if k != "model_loading" and v > 0},
        "rtf_all_modalities_one_thread": round(media_s / sum(v for k, v in mod.items() if k != "model_loading"), 2),
        "model_loading_s": round(mod["model_loading"], 2),
        "rtf_whole_command": {},
    }
    for w in args.workers:
        result["rtf_whole_command"][f"workers={w}"] = round(media_s / whole(data, args.out, args.fps, w), 2)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
