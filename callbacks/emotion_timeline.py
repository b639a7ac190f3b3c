"""Per-face learning-emotion timelines from ``cli.py predict`` (the classroom use case of the learning-emotion paper).

Reference: JI L X, REN H L, WANG W, et al. Multimodal and multiscale facial expression recognition analysis for
learning emotions. J. Zhengzhou Univ. (Eng. Sci.), 2026, 47(3): 126-133 (six learning emotions recognised per face).

The writer consumes :meth:`lightning_modules.fer.LitFER.predict_step` outputs: ``probs [B, K]`` plus the batch
metadata ``source`` (video/file), ``frame [B]``, ``time [B]`` (seconds), ``box [B, 4]`` (x, y, w, h),
``face_index [B]`` (the face track within the source) and ``path``. Missing metadata is left empty in the CSV.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from common.choices import check_choices
from common.io import atomic_write

__all__ = ["EmotionTimelineWriter"]

log = logging.getLogger(__name__)

Overwrite = Literal["never", "replace"]
OVERWRITE = get_args(Overwrite)
Plot = Literal["per_source", "none"]
PLOTS = get_args(Plot)
XAxis = Literal["time", "frame"]
X_AXES = get_args(XAxis)


def _safe_stem(source: str) -> str:
    stem = Path(source).stem or "source"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80]


class EmotionTimelineWriter(BasePredictionWriter):
    """Writes one CSV row per detected face and one emotion-timeline PNG per source.

    Args:
        output_dir: Folder for the outputs (created when missing).
        csv_name: CSV file name.
        plot: ``"per_source"`` (one PNG per source, one panel per face showing the class probabilities over
            time as stacked areas and the predicted class as a line) or ``"none"``.
        x_axis: ``"time"`` (seconds; falls back to frames when a source has no advancing ``time``, e.g. a folder of
            still images) or ``"frame"``.
        overwrite: ``"never"`` (default: refuse, with ``FileExistsError``, to replace any existing output; checked
            before prediction starts for the CSV and before anything is written for the plots) or ``"replace"``.
        max_faces: Most face panels per plot (the faces with most detections are kept).

    Files (all written atomically: temporary file + rename): ``{output_dir}/{csv_name}`` with columns
    ``source, frame, time, face_index, box_x, box_y, box_w, box_h, path, pred_class, confidence, prob_<class>...``
    and ``{output_dir}/timeline_<source stem>.png``. With several processes each rank writes its own files
    (``.rank<r>`` inserted before the suffix).
    """

    def __init__(
        self,
        output_dir: str,
        csv_name: str = "emotions.csv",
        plot: Plot = "per_source",
        x_axis: XAxis = "time",
        overwrite: Overwrite = "never",
        max_faces: int = 8,
    ) -> None:
        check_choices(EmotionTimelineWriter, locals())
        super().__init__(write_interval="batch")
        if not csv_name.endswith(".csv"):
            raise ValueError(f"EmotionTimelineWriter: csv_name must end with .csv, got {csv_name!r}")
        self.output_dir = Path(output_dir)
        self.csv_name = csv_name
        self.plot = plot
        self.x_axis = x_axis
        self.overwrite = overwrite
        self.max_faces = max_faces
        self._chunks: list[dict[str, Any]] = []
        self.written: list[Path] = []

    # ------------------------------------------------------------------ paths
    def _rank_name(self, trainer: Trainer, name: str) -> str:
        if trainer.world_size > 1:
            p = Path(name)
            return f"{p.stem}.rank{trainer.global_rank}{p.suffix}"
        return name

    def _check_free(self, paths: list[Path]) -> None:
        if self.overwrite == "replace":
            return
        taken = [str(p) for p in paths if p.exists()]
        if taken:
            raise FileExistsError(
                f"EmotionTimelineWriter: {taken} already exist; choose another output_dir or set "
                "overwrite='replace'"
            )

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._chunks = []
        self.written = []
        self._check_free([self.output_dir / self._rank_name(trainer, self.csv_name)])

    # ------------------------------------------------------------------ collection
    def write_on_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, prediction: Any, batch_indices: Any, batch: Any,
        batch_idx: int, dataloader_idx: int,
    ) -> None:
        if not isinstance(prediction, dict) or "probs" not in prediction:
            raise ValueError("EmotionTimelineWriter: predict_step must return a dict with 'probs' [B, K]")
        probs = prediction["probs"].detach().float().cpu()
        n = probs.shape[0]
        chunk: dict[str, Any] = {"probs": probs.numpy()}
        for key in ("frame", "time", "face_index"):
            value = prediction.get(key)
            chunk[key] = _as_array(value, n, key)
        box = prediction.get("box")
        chunk["box"] = (
            torch.as_tensor(box).detach().cpu().reshape(n, 4).double().numpy()
            if box is not None else np.full((n, 4), np.nan)
        )
        for key in ("source", "path"):
            value = prediction.get(key)
            chunk[key] = list(value) if value is not None else [""] * n
        if not any(chunk["source"]):
            chunk["source"] = chunk["path"]
        self._chunks.append(chunk)

    # ------------------------------------------------------------------ output
    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._chunks:
            log.warning("EmotionTimelineWriter: no predictions to write")
            return
        names = list(getattr(pl_module, "class_names", None) or [])
        data = {
            key: np.concatenate([c[key] for c in self._chunks]) if key not in ("source", "path")
            else [v for c in self._chunks for v in c[key]]
            for key in self._chunks[0]
        }
        k = data["probs"].shape[1]
        if len(names) != k:
            names = [str(i) for i in range(k)]
        self.output_dir.mkdir(parents=True, exist_ok=True)
        csv_path = self.output_dir / self._rank_name(trainer, self.csv_name)
        plots = self._plot_paths(trainer, data) if self.plot == "per_source" else {}
        self._check_free([csv_path, *plots.values()])
        with atomic_write(csv_path, "w", newline="") as fh:
            fh.write(self._csv_text(data, names))
        self.written.append(csv_path)
        for source, path in plots.items():
            self._plot_source(data, source, names, path)
            self.written.append(path)
        log.info("EmotionTimelineWriter: wrote %d faces to %s and %d plot(s)", len(data["source"]), csv_path,
                 len(plots))
        self._chunks = []

    def _plot_paths(self, trainer: Trainer, data: dict[str, Any]) -> dict[str, Path]:
        x = data["time"] if self.x_axis == "time" else data["frame"]
        if np.isnan(x).all() and np.isnan(data["frame"]).all():
            log.info("EmotionTimelineWriter: no frame/time metadata, skipping timeline plots")
            return {}
        out: dict[str, Path] = {}
        used: set[str] = set()
        for source in dict.fromkeys(data["source"]):
            stem = _safe_stem(source)
            name, i = stem, 1
            while name in used:
                name, i = f"{stem}_{i}", i + 1
            used.add(name)
            out[source] = self.output_dir / self._rank_name(trainer, f"timeline_{name}.png")
        return out

    @staticmethod
    def _csv_text(data: dict[str, Any], names: list[str]) -> str:
        import io

        probs = data["probs"]
        pred = probs.argmax(axis=1)
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(
            ["source", "frame", "time", "face_index", "box_x", "box_y", "box_w", "box_h", "path", "pred_class",
             "confidence", *[f"prob_{c}" for c in names]]
        )

        def num(v: float, fmt: str) -> str:
            return "" if np.isnan(v) else format(v, fmt)

        for i in range(probs.shape[0]):
            writer.writerow(
                [data["source"][i], num(data["frame"][i], ".0f"), num(data["time"][i], ".3f"),
                 num(data["face_index"][i], ".0f"), *[num(v, "g") for v in data["box"][i]], data["path"][i],
                 names[pred[i]], f"{probs[i, pred[i]]:.4f}", *[f"{p:.4f}" for p in probs[i]]]
            )
        return buf.getvalue()

    def _plot_source(self, data: dict[str, Any], source: str, names: list[str], path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from callbacks.confusion_matrix import save_figure_atomic

        sel = np.array([s == source for s in data["source"]])
        times = data["time"][sel]
        # still images carry time 0: fall back to the frame (file) index when time does not advance
        use_time = self.x_axis == "time" and np.isfinite(times).any() and np.nanmax(times) > np.nanmin(times)
        x_all = data["time"] if use_time else data["frame"]
        faces = np.nan_to_num(data["face_index"][sel], nan=0).astype(int)
        ids, counts = np.unique(faces, return_counts=True)
        ids = ids[np.argsort(-counts, kind="stable")][: self.max_faces]
        ids.sort()
        k = len(names)
        colors = plt.get_cmap("tab10" if k <= 10 else "tab20")(np.arange(k))
        fig, axes = plt.subplots(len(ids), 1, figsize=(10, 1.8 * len(ids) + 0.8), sharex=True, squeeze=False)
        for ax, face in zip(axes[:, 0], ids):
            rows = np.flatnonzero(sel)[faces == face]
            order = np.argsort(x_all[rows], kind="stable")
            rows = rows[order]
            x, p = x_all[rows], data["probs"][rows]
            ax.stackplot(x, p.T, colors=colors, alpha=0.35, labels=names)
            pred = p.argmax(axis=1)
            ax2 = ax.twinx()
            ax2.step(x, pred, where="post", color="black", linewidth=1.2)
            ax2.set_yticks(range(k), labels=names, fontsize=7)
            ax2.set_ylim(-0.5, k - 0.5)
            ax.set_ylim(0, 1)
            ax.set_ylabel(f"face {face}\nprob", fontsize=8)
        axes[0, 0].legend(loc="upper left", bbox_to_anchor=(0, 1.35), ncol=min(k, 7), fontsize=7, frameon=False)
        axes[-1, 0].set_xlabel("time [s]" if use_time else "frame")
        fig.suptitle(f"Learning-emotion timeline: {source}", fontsize=10)
        fig.tight_layout()
        try:
            save_figure_atomic(fig, path)
        finally:
            plt.close(fig)


def _as_array(value: Any, n: int, key: str) -> np.ndarray:
    if value is None:
        return np.full(n, np.nan)
    arr = torch.as_tensor(value).detach().cpu().double().reshape(-1).numpy()
    if arr.shape[0] != n:
        raise ValueError(f"EmotionTimelineWriter: '{key}' has {arr.shape[0]} entries for {n} faces")
    return arr
