"""Writes diffusion-generated faces as a class-folder image set with a manifest (Ji et al. 2026, §2.1, §3.1.1).

Layout of ``output_root`` (read back by ``FERDataModule(extra_roots=[output_root])``, TRAIN split only)::

    <output_root>/<class>/<class>_<job:06d>_s<seed>.png
    <output_root>/manifest.jsonl          one JSON record per generation attempt (accepted or rejected), sorted by
                                          (job_index, attempt)
    <output_root>/manifest_summary.json   per-class accepted/rejected counts, rejection reasons, plan shortfall

One source of truth for the folder: the writer takes ``output_root`` from the generation datamodule (whose manifest
decides which jobs are finished); giving the writer a different one is an error naming both.

Quality top-up: a job whose image the quality filter rejects is retried with new seeds
(``GenerationDataModule.retry_seed``) up to ``max_retries`` times; every attempt is a manifest record (``attempt``,
``final``), and at the end the shortfall against the plan (per class) is logged and written to the summary.

Every record names the checkpoint that generated it (``checkpoint``: path, ``checkpoint_sha256``).

Guarantees: the writer refuses an ``output_root`` equal to or inside the real data root; every PNG is written to a
temporary file in the same folder and moved into place with ``os.replace`` (never a half-written PNG); a manifest
record is appended only after its PNG is in place; a resumed run skips finished jobs (the generation datamodule
reads the manifest) and file names are deterministic, so nothing is duplicated; an unwritable output folder (or a
full disk) raises a ``RuntimeError`` naming the folder before anything is written / leaves no partial file.

Under DDP (e.g. ``--config configs/trainer/cpu_ddp.yaml``) every process generates and writes its own share of the
jobs (the generation datamodule gives every job to exactly one process, see ``datamodules.generation``): its PNGs
(file names are per job and seed, so two processes never write the same file) and its records, appended to its own
shard ``manifest.rank<r>.jsonl``. At the end of predict all processes meet at a barrier, then rank 0 merges the
shards into ``manifest.jsonl`` (:func:`merge_manifest`: one record per (job, attempt), the latest one if a job was
recorded twice, sorted, written atomically, shards removed) and writes the summary, the shortfall against the plan
and the plots from the merged manifest, i.e. over the jobs of all processes; ``summary["this_run"]`` has the
records and jobs each process wrote in this run (gathered across processes). With one process the writer appends
to ``manifest.jsonl`` directly and the same merge only sorts it. A DDP run that crashed leaves its shards; the
rerun's datamodule reads them too (finished jobs are skipped) and its merge folds them in.
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
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from common.choices import check_choices
from common.io import atomic_write
from datamodules.generation import MANIFEST, manifest_files, manifest_shard, read_manifest_records
from metrics.generation import QualityFilter

log = logging.getLogger(__name__)

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
    """The sha256 (first ``n_hex`` hex digits) of a local file or of any fsspec URL's bytes (``file://``,
    ``http(s)://``, ``s3://`` ..., the URLs ``lightning_modules.checkpoint_io.load_checkpoint`` reads), streamed.

    Raises:
        FileNotFoundError: the file or URL does not exist (naming it).
    """
    import fsspec

    h = hashlib.sha256()
    src = os.fspath(path)
    with fsspec.open(src, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n_hex]


def is_url(source: str | os.PathLike) -> bool:
    """Whether ``source`` is a URL (``scheme://...``) rather than a plain path."""
    return "://" in os.fspath(source)


class AugmentedImageWriter(BasePredictionWriter):
    """Prediction writer for ``LitLDM.predict_step`` outputs (module docstring).

    Args:
        output_root: folder of the generated set; default (``None``): the datamodule's ``output_root``. When both
            are given they must be the same folder.
        data_root: the real dataset folder (protected); also taken from the datamodule's ``data_root`` when present.
        class_names: class names by index; default: the model's or the datamodule's ``class_names``. The
            writer's, the model's, the datamodule's and the quality filter's orders must agree (checked when
            prediction starts; ``ValueError`` naming each).
        image_mode: ``"L"`` (grayscale PNG, e.g. CK+) or ``"RGB"``.
        quality: optional :class:`metrics.generation.QualityFilter`; rejected images are not written but
            recorded (with their scores) in the manifest.
        progress: ``"rich"`` (per-class and overall bars with images/s) or ``"none"``.
        max_retries: new seeds tried for a job whose image the quality filter rejects (the top-up limit; 0 = none).
            Needs a model with ``generate(labels, seeds)`` and a datamodule with ``retry_seed(job, attempt)``.
    """

    def __init__(
        self,
        output_root: str | None = None,
        data_root: str | None = None,
        class_names: list[str] | None = None,
        image_mode: Literal["L", "RGB"] = "L",
        quality: QualityFilter | None = None,
        progress: Literal["rich", "none"] = "rich",
        max_retries: int = 3,
    ) -> None:
        check_choices(AugmentedImageWriter, locals())
        super().__init__(write_interval="batch")
        if max_retries < 0:
            raise ValueError(f"AugmentedImageWriter: max_retries must be >= 0, got {max_retries}")
        self.output_root = check_output_root(output_root, data_root) if output_root is not None else None
        self.data_root = data_root
        self.max_retries = int(max_retries)
        self.class_names = class_names  # resolved when prediction starts (_resolve_class_names)
        self._given_class_names = list(class_names) if class_names is not None else None
        self.image_mode = image_mode
        self.quality = quality
        self.progress_mode = progress
        self.checkpoint: str | None = None
        self.checkpoint_sha256: str | None = None
        self._generate = None
        self._retry_seed = None
        self.counts: Counter = Counter()
        self._manifest_path: Path | None = None  # the file this process appends to (its shard under DDP)
        self._rank = 0
        self._run_counts = [0, 0]  # records, jobs (first attempts) this process wrote in this run
        self._progress = None
        self._tasks: dict[str, Any] = {}

    @property
    def output_dir(self) -> Path | None:
        """The output folder (``output_root``), where ``cli.py predict`` saves ``config_predict.yaml`` and which
        its last line names."""
        return self.output_root

    @property
    def written(self) -> list[str]:
        """What the output folder holds (class folders and the manifest files), for ``cli.py``'s last line."""
        if self.output_root is None or not self.output_root.is_dir():
            return []
        return sorted(p.name + ("/" if p.is_dir() else "") for p in self.output_root.iterdir()
                      if not p.name.startswith(".") and not p.name.endswith(".tmp"))

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        dm = trainer.datamodule
        dm_root = getattr(dm, "output_root", None)
        if self.output_root is None:
            if dm_root is None:
                raise ValueError("AugmentedImageWriter: no output_root (neither the writer's nor the datamodule's)")
            self.output_root = check_output_root(dm_root, self.data_root)
        elif dm_root is not None and Path(dm_root).resolve() != self.output_root:
            raise ValueError(
                f"AugmentedImageWriter: output_root {self.output_root} differs from the datamodule's output_root "
                f"{Path(dm_root).resolve()}; the datamodule skips the jobs recorded in ITS manifest, so two folders "
                "regenerate every job. Set it once, on the datamodule (the writer takes it from there)."
            )
        check_output_root(self.output_root, getattr(dm, "data_root", None))
        self._rank = trainer.global_rank
        name = MANIFEST if trainer.world_size == 1 else manifest_shard(trainer.global_rank)
        self._manifest_path = self.output_root / name
        self._run_counts = [0, 0]
        self._probe_writable()
        self._generate = getattr(pl_module, "generate", None)
        self._retry_seed = getattr(dm, "retry_seed", None)
        if self.quality is not None and self.max_retries and (self._generate is None or self._retry_seed is None):
            log.warning("AugmentedImageWriter: rejected images cannot be topped up (the model has no generate() or "
                        "the datamodule no retry_seed()); the set may end short of the plan")

    def _probe_writable(self) -> None:
        """On every process (each writes its own files): the folder is writable, and the file it appends to ends
        with a complete line."""
        probe = self.output_root / f".write_probe{self._rank}.tmp"
        try:
            self.output_root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            os.replace(probe, self.output_root / f".write_probe{self._rank}")
            (self.output_root / f".write_probe{self._rank}").unlink()
            manifest = self._manifest_path
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

    def _resolve_class_names(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """One class order for the labels: the writer's, the model's, the datamodule's and the quality filter's
        (those that have one) must be equal, else ``ValueError`` naming each (a label is an index: another order
        would file images under the wrong class). Checked when prediction starts, i.e. after the model's weights
        and class names were restored from the checkpoint."""
        try:
            dm_names = getattr(trainer.datamodule, "class_names", None)
        except AttributeError:
            dm_names = None
        orders = {"the writer's class_names": self._given_class_names,
                  f"the model's class_names ({type(pl_module).__name__})": getattr(pl_module, "class_names", None),
                  f"the datamodule's class_names ({type(trainer.datamodule).__name__})": dm_names,
                  "the quality filter's class_names": getattr(self.quality, "class_names", None)}
        given = {who: list(names) for who, names in orders.items() if names}
        if len({tuple(names) for names in given.values()}) > 1:
            listed = "; ".join(f"{who} = {names}" for who, names in given.items())
            raise ValueError(f"AugmentedImageWriter: the class orders differ ({listed}); a label is an index, so "
                             "images would be filed under the wrong class. Use one class order everywhere (the "
                             "checkpoint's).")
        if not given:
            raise ValueError("AugmentedImageWriter: no class_names (neither the writer's, the model's nor the "
                             "datamodule's)")
        self.class_names = next(iter(given.values()))

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resolve_class_names(trainer, pl_module)
        # the weights' file (known once they are restored): the trainer's ckpt_path, else the file the model was
        # loaded from (load_ldm)
        source = trainer.ckpt_path or getattr(pl_module, "trained_weights", None)
        if source and is_url(source):  # a remote checkpoint: the URL, and the hash of the bytes it serves
            self.checkpoint = str(source)
            try:
                self.checkpoint_sha256 = file_sha256(source, n_hex=64)
            except Exception as e:  # noqa: BLE001 - provenance only: record the URL without a hash, say why
                log.warning("AugmentedImageWriter: could not hash checkpoint %s (%s: %s); the manifest names the "
                            "URL without checkpoint_sha256", source, type(e).__name__, e)
                self.checkpoint_sha256 = None
        elif source and Path(source).is_file():
            self.checkpoint = str(Path(source).resolve())
            self.checkpoint_sha256 = file_sha256(source, n_hex=64)
        if self.progress_mode != "rich" or not trainer.is_global_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        plan = getattr(trainer.datamodule, "plan", None) or {}
        # this process's share (the bar shows rank 0's progress under DDP)
        jobs = getattr(trainer.datamodule, "local_jobs", None) or getattr(trainer.datamodule, "jobs", None)
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
        """Atomic PNG write (:func:`common.io.atomic_write`)."""
        with atomic_write(final) as f:
            Image.fromarray(array, mode=None).save(f, format="PNG")

    def _append_manifest(self, records: list[dict]) -> None:
        data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
        with open(self._manifest_path, "a", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        self._run_counts[0] += len(records)
        self._run_counts[1] += sum(1 for r in records if r.get("attempt", 0) == 0)

    def _to_arrays(self, images) -> np.ndarray:
        arr = (images.clamp(0, 1) * 255).round().to("cpu").byte().permute(0, 2, 3, 1).numpy()
        if self.image_mode == "L":
            # ITU-R 601 luma of the RGB output (identical channels for a grayscale-trained model)
            luma = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
            return np.clip(np.round(luma), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)

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
        labels = prediction["label"]
        jobs = [int(j) for j in prediction["job_index"]]
        seeds = [int(v) for v in prediction["seed"]]
        images = prediction["images"]
        records: list[dict] = []
        try:
            todo = list(range(len(labels)))
            for attempt in range(self.max_retries + 1):
                if attempt:
                    if self._generate is None or self._retry_seed is None:
                        break
                    seeds_now = [self._retry_seed(jobs[i], attempt) for i in todo]
                    images = self._generate(labels[todo], seeds_now).cpu()
                else:
                    seeds_now = [seeds[i] for i in todo]
                last = attempt == self.max_retries or self.quality is None
                rejected = self._write_attempt(images, labels[todo], [jobs[i] for i in todo], seeds_now, prediction,
                                               attempt, last, records)
                todo = [todo[k] for k in rejected]
                if not todo:
                    break
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

    def _write_attempt(self, images: torch.Tensor, labels: torch.Tensor, jobs: list[int], seeds: list[int],
                       prediction: dict[str, Any], attempt: int, last: bool, records: list[dict]) -> list[int]:
        """Score and write one attempt's images; append their records; return the positions rejected."""
        arrays = self._to_arrays(images)
        scores = self.quality(images, labels) if self.quality is not None else None
        rejected = []
        for i in range(len(labels)):
            cls = self.class_names[int(labels[i])]
            job, seed = jobs[i], seeds[i]
            rec = {
                "job_index": job, "class": cls, "label": int(labels[i]), "seed": seed, "attempt": attempt,
                "steps": int(prediction["steps"]), "guidance": float(prediction["guidance"]),
                "sampler": prediction.get("sampler", "ddim"), "checkpoint": self.checkpoint,
                "checkpoint_sha256": self.checkpoint_sha256,
            }
            accepted = True
            if scores is not None:
                rec["confidence"] = round(float(scores["confidence"][i]), 5)
                sim = float(scores["similarity"][i])
                rec["similarity"] = None if math.isnan(sim) else round(sim, 5)
                if "ood_distance" in scores:
                    dist = float(scores["ood_distance"][i])
                    rec["ood_distance"] = None if math.isnan(dist) else round(dist, 5)
                accepted = bool(scores["accept"][i])
                if not accepted:
                    rec["reason"] = scores["reason"][i]
            if accepted:
                rel = Path(cls) / f"{cls}_{job:06d}_s{seed}.png"
                (self.output_root / cls).mkdir(parents=True, exist_ok=True)
                self._save_png(arrays[i], self.output_root / rel)
                rec.update(status="accepted", file=rel.as_posix(), final=True)
            else:
                rec.update(status="rejected", final=last)
                rejected.append(i)
            records.append(rec)
            self.counts[(cls, rec["status"], rec.get("reason", "ok"))] += 1
            if accepted or last:
                self._advance(cls)
        return rejected

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
        # every process has written all its records; the counts of this run over all processes
        per_rank = trainer.strategy.all_gather(torch.tensor(self._run_counts, dtype=torch.long)).reshape(-1, 2)
        trainer.strategy.barrier("AugmentedImageWriter.merge")
        try:
            if trainer.is_global_zero:
                self._finish(trainer, per_rank.tolist())
        finally:
            trainer.strategy.barrier("AugmentedImageWriter.merged")  # the manifest is final when predict returns

    def _finish(self, trainer: Trainer, per_rank: list[list[int]]) -> None:
        """Rank 0, after the barrier: merge the shards, then summarise the merged manifest (module docstring)."""
        merged = merge_manifest(self.output_root)
        if merged["duplicates_dropped"]:
            log.info("AugmentedImageWriter: %d older manifest record(s) replaced by newer ones for the same "
                     "(job, attempt)", merged["duplicates_dropped"])
        summary = summarize_augmentation_manifest(self.output_root)
        summary["this_run"] = {"records": sum(r for r, _ in per_rank), "jobs": sum(j for _, j in per_rank),
                               "per_rank": [{"records": r, "jobs": j} for r, j in per_rank],
                               "shards_merged": merged["shards"],
                               "duplicates_dropped": merged["duplicates_dropped"]}
        plan = getattr(trainer.datamodule, "plan", None)
        if isinstance(plan, dict) and plan:
            accepted = {c: v.get("accepted", 0) for c, v in summary["per_class"].items()}
            short = {c: n - accepted.get(c, 0) for c, n in plan.items() if n - accepted.get(c, 0) > 0}
            summary.update(plan=dict(plan), shortfall=short, max_retries=self.max_retries)
            if short:
                log.warning(
                    "Augmented set %s is %d image(s) short of the plan %s after %d retries per rejected job: %s. "
                    "Rerun with a larger max_retries or a looser quality filter (finished jobs are skipped).",
                    self.output_root, sum(short.values()), dict(plan), self.max_retries, short,
                )
        with atomic_write(self.output_root / SUMMARY, "w") as f:
            f.write(json.dumps(summary, indent=2, sort_keys=True))
        log.info("Augmented set %s: %s", self.output_root, json.dumps(summary["total"]))
        real = getattr(trainer.datamodule, "counts", None)
        if isinstance(real, dict) and real:
            self.plot_before_after(real, summary)
        self.write_sample_grid()

    def write_sample_grid(self, per_class: int = 8) -> Path | None:
        """A labelled grid of accepted images, one row per class named left of it (first ``per_class`` of each, in
        manifest order; :func:`callbacks.diffusion_samples.labelled_grid`), written to
        ``<output_root>/samples_grid.png``; ``None`` when nothing was accepted."""
        from callbacks.diffusion_samples import labelled_grid, save_png

        files: dict[str, list[str]] = {}
        for rec in read_manifest_records(self.output_root):
            if rec.get("status") == "accepted" and len(files.setdefault(rec["class"], [])) < per_class:
                files[rec["class"]].append(rec["file"])
        files = {c: f for c, f in files.items() if f}
        if not files:
            return None
        order = [c for c in (self.class_names or []) if c in files] + sorted(set(files) - set(self.class_names or []))
        tiles = []
        size = None
        for cls in order:
            for i in range(per_class):
                if i < len(files[cls]):
                    with Image.open(self.output_root / files[cls][i]) as im:
                        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
                    size = size or arr.shape[:2]
                    tiles.append(torch.from_numpy(arr).permute(2, 0, 1))
                else:
                    tiles.append(None)
        blank = torch.ones(3, *size)
        grid = labelled_grid(torch.stack([t if t is not None else blank for t in tiles]), order)
        final = save_png(grid, self.output_root / "samples_grid.png")
        log.info("Sample grid (rows: %s) written to %s", ", ".join(order), final)
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
        return plot_class_distribution(counts, self.output_root / "class_distribution.png",
                                       title="Train split before / after augmentation")


def merge_manifest(output_root: str | Path) -> dict[str, int]:
    """Merge the per-process shards of ``output_root`` into its manifest (rank 0, after every process finished).

    Records are keyed by ``(job_index, attempt)``; when a key occurs more than once (a job recorded by two
    processes, or regenerated after its file was lost) the latest record wins (manifest first, then the shards in
    rank order). The result is sorted by key, written atomically (:func:`common.io.atomic_write`), and only then are
    the shards removed, so a crash in between loses nothing (the next merge drops the repeats). Records without a
    ``job_index`` are kept, after the others, in file order.

    Returns:
        ``{"records": written, "duplicates_dropped": n, "shards": shards merged}``.
    """
    root = Path(output_root)
    shards = [p for p in manifest_files(root) if p.name != MANIFEST]
    records = read_manifest_records(root)
    if not records and not shards:
        return {"records": 0, "duplicates_dropped": 0, "shards": 0}
    latest: dict[tuple[int, int], dict] = {}
    other: list[dict] = []
    for rec in records:
        if "job_index" in rec:
            latest[(int(rec["job_index"]), int(rec.get("attempt", 0)))] = rec
        else:
            other.append(rec)
    ordered = [latest[k] for k in sorted(latest)] + other
    with atomic_write(root / MANIFEST, "w") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered))
    for shard in shards:
        shard.unlink()
    return {"records": len(ordered), "duplicates_dropped": len(records) - len(ordered), "shards": len(shards)}


def summarize_augmentation_manifest(output_root: str | Path) -> dict[str, Any]:
    """Per-class ``accepted``/``rejected`` counts and rejection reasons of a manifest (all runs; shards of an
    unfinished DDP run included)."""
    per_class: dict[str, Counter] = {}
    for rec in read_manifest_records(output_root):
        c = per_class.setdefault(rec["class"], Counter())
        c[rec["status"]] += 1
        if rec["status"] == "rejected":
            c[f"rejected_{rec.get('reason', 'unknown')}"] += 1
    total: Counter = Counter()
    for c in per_class.values():
        total.update(c)
    return {"per_class": {k: dict(v) for k, v in sorted(per_class.items())}, "total": dict(total)}
