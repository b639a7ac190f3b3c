"""Generation jobs for the diffusion augmenter (Ji et al. 2026, §3.1.1: about 2x the training set, scarce classes
raised 3-5x).

:class:`GenerationDataModule` computes a PLAN (images to generate per class) from the real TRAIN-split class counts
of a source datamodule (``FERDataModule`` or anything with ``class_names`` and ``class_counts()``), logs it, and its
predict loader yields jobs ``{"label": [B], "seed": [B], "job_index": [B]}``. Job ``k`` of the plan always has the
same class and seed (``seed = base_seed + k``), so a run is reproducible and resumable: jobs already recorded in
``<output_root>/manifest.jsonl`` (written by ``callbacks.augmented_writer.AugmentedImageWriter``) are skipped.

Under DDP the datamodule shards the jobs itself: every process computes the same job list (rank 0's list is
broadcast, so all agree even if the folder changed between their reads) and the predict loader's sampler is
:func:`datamodules.distributed.eval_sampler`, which gives every job to exactly one process (uneven shards, no
padding duplicates). Why the datamodule and not Lightning: Lightning's own predict sampler happens to be unrepeated
as well, but only with ``Trainer(use_distributed_sampler=True)``; with ``False`` it would give EVERY job to EVERY
process, and a padding ``DistributedSampler`` (the training default) would repeat jobs. Lightning keeps a
distributed sampler it is given, so with this one the shards are the same either way (tested both ways). Jobs
are deterministic per index (class, seed, retry seeds), so which process runs a job does not change what is
generated (``models.diffusion.sample_latents``: one noise generator per seed). Each process records its jobs in its own manifest shard (``manifest.rank<r>.jsonl``, see
:func:`manifest_files`) until the writer merges them at the end of predict; a crashed DDP run leaves its shards,
and :func:`done_jobs` reads them too, so a rerun still skips what was finished.

Plan (``plan_generation``): with ``N_c`` real training images of class ``c`` and ``N = sum N_c``:

- a class is *scarce* when listed in ``scarce_classes`` or, if that is ``None``, when
  ``N_c < scarce_threshold * median(N)``; it gets ``round((scarce_multiplier - 1) * N_c)`` generated images (its
  final size is ``scarce_multiplier`` x the original, paper: 3-5x);
- the remaining budget ``total_multiplier * N - sum(scarce)`` (paper: total generated about 2x the train set) is
  shared by the other classes in proportion to ``N_c`` (largest remainders get the rounding), never below 0;
- ``per_class`` overrides the number for any class explicitly.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from datamodules.base import AffectDataModule
from datamodules.distributed import eval_sampler

log = logging.getLogger(__name__)

REAL_ORIGIN = "real"


def train_real_counts(source: object) -> dict[str, int]:
    """Real train-split image count per class of a datamodule exposing ``class_counts()``.

    Accepts the ``FERDataModule`` layout ``{split: {class: {origin: n}}}`` and a flat ``{class: n}``.
    """
    counts = source.class_counts()
    if "train" in counts:
        counts = counts["train"]
    out = {}
    for c in source.class_names:
        v = counts.get(c, 0)
        out[c] = int(v.get(REAL_ORIGIN, 0)) if isinstance(v, dict) else int(v)
    return out


def plan_generation(
    counts: dict[str, int],
    total_multiplier: float = 2.0,
    scarce_multiplier: float = 4.0,
    scarce_classes: list[str] | None = None,
    scarce_threshold: float = 0.5,
    per_class: dict[str, int] | None = None,
) -> dict[str, int]:
    """Images to generate per class (see the module docstring)."""
    names = list(counts)
    for label, group in (("scarce_classes", scarce_classes or []), ("per_class", list(per_class or {}))):
        unknown = [c for c in group if c not in counts]
        if unknown:
            raise ValueError(f"plan_generation: unknown class(es) {unknown} in {label}; known classes: {names}")
    if total_multiplier < 0 or scarce_multiplier < 1:
        raise ValueError(f"plan_generation: need total_multiplier >= 0 and scarce_multiplier >= 1, got "
                         f"{total_multiplier}, {scarce_multiplier}")
    if scarce_classes is None:
        med = statistics.median(counts.values()) if counts else 0
        scarce = [c for c in names if counts[c] < scarce_threshold * med]
    else:
        scarce = list(scarce_classes)
    plan = {c: 0 for c in names}
    for c in scarce:
        plan[c] = round((scarce_multiplier - 1) * counts[c])
    budget = round(total_multiplier * sum(counts.values())) - sum(plan.values())
    others = [c for c in names if c not in scarce]
    total_other = sum(counts[c] for c in others)
    if budget > 0 and total_other > 0:
        shares = {c: budget * counts[c] / total_other for c in others}
        for c in others:
            plan[c] = int(shares[c])
        left = budget - sum(plan[c] for c in others)
        for c in sorted(others, key=lambda c: shares[c] - int(shares[c]), reverse=True)[:left]:
            plan[c] += 1
    elif budget < 0:
        log.warning("plan_generation: scarce classes alone exceed total_multiplier x train size; others get 0")
    for c, n in (per_class or {}).items():
        if n < 0:
            raise ValueError(f"plan_generation: per_class[{c!r}] must be >= 0, got {n}")
        plan[c] = int(n)
    return plan


def format_plan(counts: dict[str, int], plan: dict[str, int]) -> str:
    """A small text table: class, real train count, to generate, final size and factor."""
    lines = [f"{'class':<14}{'real':>7}{'generate':>10}{'final':>8}{'x':>7}"]
    for c, n_gen in plan.items():
        final = counts[c] + n_gen
        factor = final / counts[c] if counts[c] else float("inf")
        lines.append(f"{c:<14}{counts[c]:>7}{n_gen:>10}{final:>8}{factor:>7.2f}")
    n, g = sum(counts.values()), sum(plan.values())
    lines.append(f"{'total':<14}{n:>7}{g:>10}{n + g:>8}{(n + g) / max(n, 1):>7.2f}")
    return "\n".join(lines)


MANIFEST = "manifest.jsonl"
_SHARD_RE = re.compile(r"^manifest\.rank(\d+)\.jsonl$")


def manifest_shard(rank: int) -> str:
    """File name of process ``rank``'s manifest shard under DDP (merged into :data:`MANIFEST` at the end)."""
    return f"manifest.rank{int(rank)}.jsonl"


def manifest_files(output_root: str | Path) -> list[Path]:
    """The manifest followed by any per-process shards (rank order) that exist in ``output_root``."""
    root = Path(output_root)
    shards = sorted((int(m.group(1)), p) for p in root.glob("manifest.rank*.jsonl") if (m := _SHARD_RE.match(p.name)))
    main = root / MANIFEST
    return ([main] if main.is_file() else []) + [p for _, p in shards]


def read_manifest_records(output_root: str | Path) -> list[dict]:
    """Every parsable record of the manifest and its shards, in file order (lines cut by a crash are ignored)."""
    records = []
    for path in manifest_files(output_root):
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                records.append(rec)
    return records


def done_jobs(output_root: str | Path) -> set[int]:
    """Job indices already finished in ``<output_root>/manifest.jsonl`` (and shards left by a crashed DDP run):
    accepted with the file on disk, or rejected on the last allowed attempt (``final``; records without the field
    count as final). A job whose retries were cut by a crash runs again. Unparsable lines (e.g. cut by a crash) are
    ignored, so those jobs run again."""
    done: set[int] = set()
    root = Path(output_root)
    for rec in read_manifest_records(root):
        if rec.get("status") == "accepted" and not (root / rec.get("file", "")).is_file():
            continue
        if rec.get("status") == "rejected" and not rec.get("final", True):
            continue
        if "job_index" in rec:
            done.add(int(rec["job_index"]))
    return done


class GenerationJobs(Dataset):
    """List of ``(label, seed, job_index)`` jobs."""

    def __init__(self, jobs: list[tuple[int, int, int]]) -> None:
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label, seed, job = self.jobs[i]
        return {"label": torch.tensor(label), "seed": torch.tensor(seed), "job_index": torch.tensor(job)}


class GenerationDataModule(AffectDataModule):
    """Predict-only datamodule yielding generation jobs from a plan (module docstring).

    Args:
        source: datamodule of the real data (``FERDataModule``) when built in Python; its ``prepare_data``/
            ``setup("fit")`` are called to count the real train split. Not needed when ``class_counts`` is given.
        source_config: a factory of that datamodule, for YAML configs: ``{"class_path": ..., "init_args": {...}}``
            parsed by jsonargparse as a callable (so ``--data.init_args.source_config.init_args.root X`` overrides one
            setting, checked against the class's signature). It is called lazily (at first use); the module
            it builds keeps its own hyper-parameters (``datamodules.base``). From Python, pass ``source`` or e.g. ``functools.partial(FERDataModule, ...)``.
        class_counts: explicit real train counts ``{class: n}`` (instead of ``source``).
        output_root: folder of the generated set (manifest read to skip finished jobs); the ONE setting of it:
            ``callbacks.augmented_writer.AugmentedImageWriter`` writes there too.
        total_multiplier: generated images ~= this x the real train set (paper: 2).
        scarce_multiplier: scarce classes end at this x their real count (paper: 3-5).
        scarce_classes: scarce class names; ``None`` = automatic (``scarce_threshold`` x median count).
        scarce_threshold: automatic scarcity threshold.
        per_class: explicit numbers per class (override).
        classes: restrict generation to these classes (``None`` = all).
        base_seed: seed of job 0 (job ``k`` uses ``base_seed + k``).
        batch_size: jobs per predict batch.

    Under DDP each process gets a disjoint share of :attr:`jobs` (:attr:`local_jobs`; module docstring).
    """

    def __init__(
        self,
        source: LightningDataModule | None = None,
        source_config: Callable[[], AffectDataModule] | None = None,
        class_counts: dict[str, int] | None = None,
        output_root: str = "augmented/ckplus48",
        total_multiplier: float = 2.0,
        scarce_multiplier: float = 4.0,
        scarce_classes: list[str] | None = None,
        scarce_threshold: float = 0.5,
        per_class: dict[str, int] | None = None,
        classes: list[str] | None = None,
        base_seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        super().__init__()
        if source is None and source_config is None and class_counts is None:
            raise ValueError("GenerationDataModule: give source, source_config or class_counts")
        if source_config is not None and not callable(source_config):
            raise ValueError(f"GenerationDataModule: source_config must be a datamodule factory (class_path/init_args "
                             f"in a config), got {type(source_config).__name__}")
        if batch_size < 1:
            raise ValueError(f"GenerationDataModule: batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(ignore=["source", "source_config"])
        self._source = source
        self._source_factory = source_config
        self.plan: dict[str, int] | None = None
        self.counts: dict[str, int] | None = None
        self.jobs: list[tuple[int, int, int]] = []
        self.local_jobs: list[tuple[int, int, int]] = []
        self.skipped = 0
        if class_counts is not None:
            self._make_plan(dict(class_counts))

    @property
    def source(self) -> LightningDataModule | None:
        """The real-data datamodule (built from ``source_config`` on first use)."""
        if self._source is None and self._source_factory is not None:
            self._source = self._source_factory()  # its own hyper-parameters: AffectDataModule.save_hyperparameters
        return self._source

    @property
    def output_root(self) -> str:
        """Folder of the generated set (read by the writer: one source of truth)."""
        return str(self.hparams.output_root)

    @property
    def num_planned(self) -> int:
        """Jobs in the plan (0 before it is made)."""
        return sum(self.plan.values()) if self.plan else 0

    def retry_seed(self, job_index: int, attempt: int) -> int:
        """Seed of retry ``attempt`` (>= 1) of job ``job_index`` after a quality rejection:
        ``base_seed + attempt * num_planned + job_index``, distinct from every planned seed and every other retry."""
        if attempt < 1:
            raise ValueError(f"GenerationDataModule: retry attempt must be >= 1, got {attempt}")
        return self.hparams.base_seed + attempt * max(self.num_planned, 1) + int(job_index)

    @property
    def class_names(self) -> list[str]:
        if self.counts is not None:
            return list(self.counts)
        return list(self.source.class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def mean(self) -> tuple[float, ...]:
        """The real data's normalisation mean (the source datamodule's): the CLI links it to ``LitLDM``'s
        ``image_mean``, so the generation config never types it a second time.

        Raises:
            AttributeError: no source datamodule (``class_counts`` only); the CLI then skips the link.
        """
        return self._source_normalisation("mean")

    @property
    def std(self) -> tuple[float, ...]:
        """The real data's normalisation std (linked to ``image_std``; see :attr:`mean`)."""
        return self._source_normalisation("std")

    def _source_normalisation(self, name: str) -> tuple[float, ...]:
        if self.source is None or not hasattr(self.source, name):
            raise AttributeError(f"GenerationDataModule has no {name}: no source datamodule with a {name!r}")
        return tuple(float(v) for v in getattr(self.source, name))

    @property
    def data_root(self) -> str | None:
        """Root of the real dataset (protected from writing)."""
        hp = getattr(self.source, "hparams", {}) if self.source is not None else {}
        return hp.get("root") if hasattr(hp, "get") else None

    def _make_plan(self, counts: dict[str, int]) -> None:
        hp = self.hparams
        if hp.classes is not None:
            unknown = [c for c in hp.classes if c not in counts]
            if unknown:
                raise ValueError(f"GenerationDataModule: unknown class(es) {unknown}; known classes: {list(counts)}")
        plan = plan_generation(counts, hp.total_multiplier, hp.scarce_multiplier, hp.scarce_classes,
                               hp.scarce_threshold, hp.per_class)
        if hp.classes is not None:
            plan = {c: (n if c in hp.classes else 0) for c, n in plan.items()}
        self.counts, self.plan = counts, plan

    def prepare_data(self) -> None:
        if self.plan is None:
            self.source.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        if self.plan is None:
            self.source.setup("fit")
            self._make_plan(train_real_counts(self.source))
        all_jobs = []
        k = 0
        for label, n in enumerate(self.plan.values()):
            for _ in range(n):
                all_jobs.append((label, self.hparams.base_seed + k, k))
                k += 1
        done = done_jobs(self.hparams.output_root)
        self.jobs = [j for j in all_jobs if j[2] not in done]
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            # one job list for all processes (each read the manifest itself), so the shards are disjoint
            self.jobs = [tuple(j) for j in trainer.strategy.broadcast(self.jobs, src=0)]
        self.skipped = len(all_jobs) - len(self.jobs)
        log.info("Generation plan (real train counts -> generated):\n%s", format_plan(self.counts, self.plan))
        log.info("Generation: %d jobs planned, %d already done (skipped), %d to run", len(all_jobs), self.skipped,
                 len(self.jobs))

    def predict_dataloader(self) -> DataLoader:
        """Jobs in order; under DDP this process's share only (every job on exactly one process, no padding)."""
        dataset = GenerationJobs(self.jobs)
        sampler = eval_sampler(dataset)
        self.local_jobs = [self.jobs[i] for i in sampler] if sampler is not None else list(self.jobs)
        return DataLoader(dataset, batch_size=self.hparams.batch_size, shuffle=False, sampler=sampler)
