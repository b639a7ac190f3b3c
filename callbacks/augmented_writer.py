"""Writes diffusion-generated faces as a class-folder image set with a manifest (Ji et al. 2026, §2.1, §3.1.1).

Layout of ``output_root`` (read back by ``FERDataModule(extra_roots=[output_root])``, TRAIN split only)::

    <output_root>/<class>/<class>_<job:06d>_s<seed>.png
    <output_root>/manifest.jsonl          one JSON record per finished job (accepted or rejected)
    <output_root>/manifest_summary.json   per-class accepted/rejected counts and rejection reasons

Guarantees: the writer refuses an ``output_root`` equal to or inside the real data root; every PNG is written to a
temporary file in the same folder and moved into place with ``os.replace`` (never a half-written PNG); a manifest
record is appended only after its PNG is in place; a resumed run skips finished jobs (the generation datamodule
reads the manifest) and file names are deterministic, so nothing is duplicated; an unwritable output folder (or a
full disk) raises a ``RuntimeError`` naming the folder before anything is written / leaves no partial file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from metrics.generation import QualityFilter

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SUMMARY = "manifest_summary.json"


def check_output_root(output_root: str | Path, data_root: str | Path | None) -> Path:
    """Resolved output root; ``ValueError`` when it is the data root or inside it."""
    out = Path(output_root).resolve()
    if data_root is not None:
        data = Path(data_root).resolve()
        if out == data or data in out.parents:
            raise ValueError(
                f"AugmentedImageWriter: output_root {out} is inside the original dataset folder {data}; "
                "generated images must go to a separate folder"
            )
    return out


def file_sha256(path: str | Path, n_hex: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n_hex]


class AugmentedImageWriter(BasePredictionWriter):
    """Prediction writer for ``LitLDM.predict_step`` outputs (module docstring).

    Args:
        output_root: folder of the generated set.
        data_root: the real dataset folder (protected); also taken from the datamodule's ``data_root`` when present.
        class_names: class names by index; default: the model's or the datamodule's ``class_names``.
        image_mode: ``"L"`` (grayscale PNG, e.g. CK+) or ``"RGB"``.
        quality: optional :class:`metrics.generation.QualityFilter`; rejected images are not written but
            recorded (with their scores) in the manifest.
        progress: ``"rich"`` (per-class and overall bars with images/s) or ``"none"``.
    """

    def __init__(
        self,
        output_root: str,
        data_root: str | None = None,
        class_names: list[str] | None = None,
        image_mode: str = "L",
        quality: QualityFilter | None = None,
        progress: str = "rich",
    ) -> None:
        super().__init__(write_interval="batch")
        if image_mode not in ("L", "RGB"):
            raise ValueError(f"AugmentedImageWriter: image_mode must be 'L' or 'RGB', got {image_mode!r}")
        if progress not in ("rich", "none"):
            raise ValueError(f"AugmentedImageWriter: progress must be 'rich' or 'none', got {progress!r}")
        self.output_root = check_output_root(output_root, data_root)
        self.data_root = data_root
        self.class_names = class_names
        self.image_mode = image_mode
        self.quality = quality
        self.progress_mode = progress
        self.checkpoint_hash = "none"
        self.counts: Counter = Counter()
        self._progress = None
        self._tasks: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        dm = trainer.datamodule
        check_output_root(self.output_root, getattr(dm, "data_root", None))
        if self.class_names is None:
            self.class_names = list(getattr(pl_module, "class_names", None) or dm.class_names)
        self._probe_writable()
        if trainer.ckpt_path and Path(trainer.ckpt_path).is_file():
            self.checkpoint_hash = file_sha256(trainer.ckpt_path)

    @rank_zero_only
    def _probe_writable(self) -> None:
        probe = self.output_root / ".write_probe.tmp"
        try:
            self.output_root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            os.replace(probe, self.output_root / ".write_probe")
            (self.output_root / ".write_probe").unlink()
            manifest = self.output_root / MANIFEST
            if manifest.is_file() and manifest.stat().st_size:
                with open(manifest, "rb+") as f:  # a crash may have cut the last line: start a fresh one
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        f.write(b"\n")
        except OSError as e:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
            raise RuntimeError(f"AugmentedImageWriter: output folder {self.output_root} is not writable: {e}") from e

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.progress_mode != "rich" or not trainer.is_global_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        plan = getattr(trainer.datamodule, "plan", None) or {}
        jobs = getattr(trainer.datamodule, "jobs", None)
        todo = Counter(self.class_names[j[0]] for j in jobs) if jobs is not None else Counter()
        self._progress = Progress(
            TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(),
        )
        try:
            self._progress.start()
        except Exception as e:  # noqa: BLE001 - another live display (e.g. Lightning's RichProgressBar) is active
            log.info("AugmentedImageWriter: no separate progress display (%s)", e)
            self._progress = None
            return
        self._tasks["__all__"] = self._progress.add_task("overall", total=sum(todo.values()) or None, rate="-")
        for c in self.class_names:
            if plan.get(c, 0) or todo.get(c, 0):
                self._tasks[c] = self._progress.add_task(c, total=todo.get(c, 0), rate="-")

    def _advance(self, cls: str) -> None:
        if self._progress is None:
            return
        for key in ("__all__", cls):
            if key in self._tasks:
                tid = self._tasks[key]
                self._progress.advance(tid)
                speed = self._progress.tasks[tid].speed if tid < len(self._progress.tasks) else None
                self._progress.update(tid, rate=f"{speed:.2f}" if speed else "-")

    # ------------------------------------------------------------------ writing
    def _save_png(self, array: np.ndarray, final: Path) -> None:
        """Atomic PNG write: temp file in the same folder, then ``os.replace``."""
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            Image.fromarray(array, mode=None).save(tmp, format="PNG")
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _append_manifest(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self.output_root / MANIFEST, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def _to_arrays(self, images) -> np.ndarray:
        arr = (images.clamp(0, 1) * 255).round().to("cpu").byte().permute(0, 2, 3, 1).numpy()
        if self.image_mode == "L":
            # ITU-R 601 luma of the RGB output (identical channels for a grayscale-trained model)
            luma = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
            return np.clip(np.round(luma), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)

    @rank_zero_only
    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: dict[str, Any],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        images, labels = prediction["images"], prediction["label"]
        arrays = self._to_arrays(images)
        scores = self.quality(images, labels) if self.quality is not None else None
        records = []
        try:
            for i in range(len(labels)):
                cls = self.class_names[int(labels[i])]
                job, seed = int(prediction["job_index"][i]), int(prediction["seed"][i])
                rec = {
                    "job_index": job, "class": cls, "label": int(labels[i]), "seed": seed,
                    "steps": int(prediction["steps"]), "guidance": float(prediction["guidance"]),
                    "sampler": prediction.get("sampler", "ddim"), "checkpoint": self.checkpoint_hash,
                }
                accepted = True
                if scores is not None:
                    rec["confidence"] = round(float(scores["confidence"][i]), 5)
                    sim = float(scores["similarity"][i])
                    rec["similarity"] = None if math.isnan(sim) else round(sim, 5)
                    accepted = bool(scores["accept"][i])
                    if not accepted:
                        rec["reason"] = scores["reason"][i]
                if accepted:
                    rel = Path(cls) / f"{cls}_{job:06d}_s{seed}.png"
                    (self.output_root / cls).mkdir(parents=True, exist_ok=True)
                    self._save_png(arrays[i], self.output_root / rel)
                    rec.update(status="accepted", file=rel.as_posix())
                else:
                    rec.update(status="rejected")
                records.append(rec)
                self.counts[(cls, rec["status"], rec.get("reason", "ok"))] += 1
                self._advance(cls)
        except OSError as e:
            self._append_manifest_safely(records)
            self._stop_progress()
            what = "disk full" if e.errno == errno.ENOSPC else "write failed"
            raise RuntimeError(
                f"AugmentedImageWriter: {what} in {self.output_root}: {e}. The {len(records)} images of this batch "
                "written before the error are recorded; no partial file was left. Free space / fix permissions and "
                "rerun: finished jobs are skipped."
            ) from e
        self._append_manifest(records)

    def _append_manifest_safely(self, records: list[dict]) -> None:
        if not records:
            return
        try:
            self._append_manifest(records)
        except OSError:
            # the images exist without a record: the next run regenerates and replaces them (same file names)
            log.error("AugmentedImageWriter: could not record %d finished images in the manifest", len(records))

    # ------------------------------------------------------------------ summary
    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_progress()
        if trainer.is_global_zero:
            summary = summarise_manifest(self.output_root)
            tmp = self.output_root / f".{SUMMARY}.tmp"
            tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
            os.replace(tmp, self.output_root / SUMMARY)
            log.info("Augmented set %s: %s", self.output_root, json.dumps(summary["total"]))
            real = getattr(trainer.datamodule, "counts", None)
            if isinstance(real, dict) and real:
                self.plot_before_after(real, summary)
            self.write_sample_grid()

    def write_sample_grid(self, per_class: int = 8) -> Path | None:
        """A grid of accepted images, one row per class (first ``per_class`` of each, in manifest order), written to
        ``<output_root>/samples_grid.png``; ``None`` when nothing was accepted."""
        from callbacks.diffusion_samples import make_grid

        files: dict[str, list[str]] = {}
        for line in (self.output_root / MANIFEST).read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("status") == "accepted" and len(files.setdefault(rec["class"], [])) < per_class:
                files[rec["class"]].append(rec["file"])
        files = {c: f for c, f in files.items() if f}
        if not files:
            return None
        tiles = []
        size = None
        for cls in sorted(files):
            for i in range(per_class):
                if i < len(files[cls]):
                    with Image.open(self.output_root / files[cls][i]) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                    size = size or arr.shape[:2]
                    tiles.append(torch.from_numpy(arr).permute(2, 0, 1))
                else:
                    tiles.append(None)
        blank = torch.zeros(3, *size)
        grid = make_grid(torch.stack([t if t is not None else blank for t in tiles]), rows=len(files))
        final = self.output_root / "samples_grid.png"
        tmp = self.output_root / ".samples_grid.tmp.png"
        Image.fromarray(grid).save(tmp, format="PNG")
        os.replace(tmp, final)
        log.info("Sample grid (rows: %s) written to %s", ", ".join(sorted(files)), final)
        return final

    def plot_before_after(self, real_counts: dict[str, int], summary: dict[str, Any]) -> Path:
        """The class distribution of the train split before and after augmentation (the paper's Fig. 9), written
        to ``<output_root>/class_distribution.png``."""
        from callbacks.class_distribution import plot_class_distribution

        accepted = {c: v.get("accepted", 0) for c, v in summary["per_class"].items()}
        counts = {
            "before (real train)": {c: {"real": n} for c, n in real_counts.items()},
            "after (real + generated)": {c: {"real": n, "generated": accepted.get(c, 0)} for c, n in real_counts.items()},
        }
        final = self.output_root / "class_distribution.png"
        tmp = self.output_root / ".class_distribution.tmp.png"
        plot_class_distribution(counts, tmp, title="Train split before / after augmentation")
        os.replace(tmp, final)
        return final


def summarise_manifest(output_root: str | Path) -> dict[str, Any]:
    """Per-class ``accepted``/``rejected`` counts and rejection reasons of a manifest (all runs)."""
    per_class: dict[str, Counter] = {}
    path = Path(output_root) / MANIFEST
    lines = path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        c = per_class.setdefault(rec["class"], Counter())
        c[rec["status"]] += 1
        if rec["status"] == "rejected":
            c[f"rejected_{rec.get('reason', 'unknown')}"] += 1
    total: Counter = Counter()
    for c in per_class.values():
        total.update(c)
    return {"per_class": {k: dict(v) for k, v in sorted(per_class.items())}, "total": dict(total)}
