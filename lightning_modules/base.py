"""What every system of the project shares: the exact epoch-level logging and, for the supervised ones, the lazily
built net.

:class:`EpochMeanLogging` is the logging part (used on its own by :class:`~lightning_modules.ldm.LitVAE` and
:class:`~lightning_modules.ldm.LitLDM`, whose epoch losses are therefore the same on every DDP process);
:class:`EpochMetricsSystem` adds the net and is the skeleton of :class:`~lightning_modules.msa.LitMSA` and
:class:`~lightning_modules.fer.LitFER`:

- the net is built by :meth:`_build` from data-derived values (``feature_dims``/``seq_lens``, ``num_classes``),
  either in ``__init__`` when those are given (the CLI links them from the datamodule) or in :meth:`setup` from
  ``trainer.datamodule`` (programmatic use);
- per-step values go through :meth:`log_epoch_mean` (sample-weighted means, exact across DDP processes), and the
  stage metric object (``{stage}_metrics``) accumulates predictions;
- at the end of each epoch :meth:`_log_epoch_metrics` synchronises everything **eagerly, inside the system's own
  epoch-end hook, in the same order on every process**, and logs the already global numbers with
  ``sync_dist=False``.

Why eagerly. Lightning synchronises ``self.log(..., sync_dist=True)`` tensors and logged torchmetrics objects
*lazily*, the first time the epoch metrics are read. At the end of a training epoch it calls the callbacks'
``on_train_epoch_end`` before the system's, and the progress bar (enabled on rank 0 only) reads the metrics there:
rank 0 then ran those collectives while the other ranks ran the system hook's metric gather, a collective mismatch
(gloo: ``op.preamble.length <= op.nbytes``). With no lazily synchronised value left, a rank-0-only reader performs no
collective, whatever callbacks the user adds.
"""

from __future__ import annotations

import re
import warnings
from abc import ABCMeta, abstractmethod
from typing import Any, Protocol, runtime_checkable

import torch.distributed as dist
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torchmetrics import MeanMetric

__all__ = ["STAGES", "EpochMeanLogging", "EpochMetricsSystem", "NetModule"]

STAGES = ("train", "val", "test")


def drop_foreign_hparams(module: LightningModule) -> None:
    """Remove hyper-parameters that are not arguments of ``module``'s constructor.

    The CLI's data links (``cli.py::DATA_LINKS``) apply to whichever system is chosen; Lightning records every
    applied link in the system's hyper-parameters even when that system does not take the argument (e.g.
    ``image_mean`` for ``LitFER``). Left there, ``--ckpt_path`` merges them back into the config and the system's
    constructor refuses them."""
    import inspect

    allowed = set(inspect.signature(type(module).__init__).parameters)
    for key in [k for k in module.hparams if k not in allowed and not k.startswith("_")]:
        del module.hparams[key]
        if key in getattr(module, "_hparams_initial", {}):
            del module._hparams_initial[key]


@runtime_checkable
class NetModule(Protocol):
    """A ``torch.nn.Module`` (matched by its ``train(mode)`` method).

    The type of every system's net (or of what its net factory returns). A protocol rather than ``nn.Module`` for the command line: jsonargparse lists every imported subclass of a class
    type as a "known subclass" (hundreds of ``torch.nn``/timm/torchvision blocks under ``--model.help``), while it
    matches a protocol by method signature and lists nothing; the project's nets are listed by ``cli.py --help``.
    """

    def train(self, mode: bool = True) -> Any: ...


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class EpochMeanLogging(LightningModule, metaclass=ABCMeta):
    """Exact epoch-level logging (see the module docstring): per-step values go through :meth:`log_epoch_mean` /
    :meth:`log_step_value`, never through ``self.log(..., on_epoch=True)``; the epoch-end hooks reduce them across
    processes, in one order on every process, and log the global values.

    A subclass may own one metric object per stage, ``{train,val,test}_metrics``
    (``update``/``update_called``/``compute() -> {name: scalar}``/``reset``); :meth:`_stage_metric_values` may be
    overridden to keep extra results, e.g. a confusion matrix. A subclass overriding an epoch-end hook calls
    ``super()`` (or :meth:`_log_epoch_metrics`) on every process.

    Abstract (every system defines :meth:`training_step`): ``cli.py``'s ``--model`` takes a subclass of this, so
    ``--help`` lists the project's systems only, not this base nor ``LightningModule``.
    """

    def __init__(self) -> None:
        super().__init__()
        # {stage}__{name} -> sample-weighted mean of a per-step value (created on first use)
        self.epoch_means = nn.ModuleDict()
        self._silenced_keys: set[str] = set()

    @abstractmethod
    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """One optimisation step (every system defines its own)."""

    # ------------------------------------------------------------------ per-step accumulation
    def log_epoch_mean(self, stage: str, name: str, value: Tensor, batch_size: int) -> None:
        """Accumulate ``value`` (a scalar of this batch) into the exact epoch mean logged as ``{stage}/{name}``."""
        key = f"{stage}__{name}"
        if key not in self.epoch_means:
            self.epoch_means[key] = MeanMetric().to(value.device)
        self.epoch_means[key].update(value.detach().float(), weight=batch_size)

    def _stage_metric_values(self, stage: str) -> dict[str, Tensor]:
        """Compute (and synchronise) the stage metric object ``{stage}_metrics``; called on every process."""
        return getattr(self, f"{stage}_metrics").compute()

    def _reset_stage_metric(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_metrics", None)
        if metric is not None:
            metric.reset()

    def _stage_metric_updated(self, stage: str) -> bool:
        metric = getattr(self, f"{stage}_metrics", None)
        return metric is not None and bool(metric.update_called)

    # ------------------------------------------------------------------ epoch end
    def _global_keys(self, stage: str) -> list[str]:
        """Names of the epoch means any process accumulated this epoch (one collective under DDP), so that every
        process reduces the same states in the same order even when one of them saw no batch."""
        prefix = f"{stage}__"
        local = sorted(k for k in self.epoch_means if k.startswith(prefix))
        local_updated = self._stage_metric_updated(stage)
        if not _distributed():
            return local + (["__metric__"] if local_updated else [])
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (local, local_updated))
        keys = sorted({k for ks, _ in gathered for k in ks})
        for key in keys:
            if key not in self.epoch_means:
                self.epoch_means[key] = MeanMetric().to(self.device)
        return keys + (["__metric__"] if any(u for _, u in gathered) else [])

    def _log_epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        """Reduce, log and reset the stage's epoch values; returns them (global values, ``{stage}/{name}``)."""
        keys = self._global_keys(stage)
        if not keys:
            return {}
        values: dict[str, Tensor] = {}
        any_update = keys[-1] == "__metric__"
        for key in keys:
            if key == "__metric__":
                continue
            mean = self.epoch_means[key]
            values[f"{stage}/{key.split('__', 1)[1]}"] = mean.compute()
            mean.reset()
        if any_update:
            values.update({f"{stage}/{k}": v for k, v in self._stage_metric_values(stage).items()})
        self._reset_stage_metric(stage)
        self._silence_sync_warning(values)
        for name, value in values.items():
            self.log(name, value.float(), sync_dist=False, prog_bar=name.endswith("/loss"))
        return values

    def _silence_sync_warning(self, values: dict[str, Tensor]) -> None:
        # The values are already global (reduced above), so Lightning's advice to add sync_dist does not apply to
        # these keys; a second, lazy reduction is exactly what must not happen (module docstring).
        for name in values:
            if name not in self._silenced_keys:
                self._silenced_keys.add(name)
                warnings.filterwarnings(
                    "ignore", message=re.escape(f"It is recommended to use `self.log({name!r}, ..., sync_dist=True)`")
                )

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    # ------------------------------------------------------------------ helpers for subclasses
    def log_step_value(self, stage: str, name: str, value: Tensor, batch_size: int) -> None:
        """A per-step value for the progress bar and the logger (``{stage}/{name}_step``, training only) plus its
        exact epoch mean (``{stage}/{name}``)."""
        if stage == "train":
            self.log(f"{stage}/{name}_step", value.detach(), on_step=True, on_epoch=False, prog_bar=name == "loss",
                     batch_size=batch_size)
        self.log_epoch_mean(stage, name, value, batch_size)


class EpochMetricsSystem(EpochMeanLogging):
    """Base of the supervised systems (see the module docstring).

    Subclasses set :attr:`DERIVED`, implement :meth:`_build_net` (build ``self.net`` from the data-derived values)
    and :meth:`_data_derived` (read those values from a datamodule), and own one metric object per stage,
    ``{train,val,test}_metrics`` (:class:`EpochMeanLogging`).
    """

    #: names of the data-derived constructor arguments (filled by the CLI's links or in :meth:`setup`)
    DERIVED: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.net: nn.Module | None = None

    # ------------------------------------------------------------------ construction
    @abstractmethod
    def _build_net(self, **derived: Any) -> None:
        """Build ``self.net`` from the data-derived values."""

    @abstractmethod
    def _data_derived(self, datamodule: Any) -> dict[str, Any] | None:
        """The data-derived constructor values read from ``datamodule``, or ``None`` when it lacks them."""

    def _build(self, **derived: Any) -> None:
        self._build_net(**derived)
        self.hparams.update(derived)

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        derived = self._data_derived(dm) if dm is not None else None
        if derived is None:
            given = f"the datamodule {type(dm).__module__}.{type(dm).__name__} exposes none of them" if dm is not None \
                else "no datamodule was given"
            raise ValueError(
                f"{type(self).__name__}: the net is built from data-derived values ({', '.join(self.DERIVED)}); "
                f"{given}: pass a datamodule made for {type(self).__name__} or give them explicitly"
            )
        self._build(**derived)
        self.net.to(self.device)
