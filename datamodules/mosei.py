"""LightningDataModule for CMU-MOSI / CMU-MOSEI processed features (MMSA or MulT files, or their ``.npz`` form).

The batch layout and the ``feature_dims`` / ``seq_lens`` properties follow ``docs/architecture.md``
("Multimodal sentiment"). Loading, validation and cleaning live in :mod:`features.mmsa_format`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from datamodules.datasets.mmsa_dataset import MMSADataset, mmsa_collate
from features.mmsa_format import MMSAData, MMSADataError, load_mmsa, missing_file_message

__all__ = ["MOSEIDataModule"]

log = logging.getLogger(__name__)


class MOSEIDataModule(pl.LightningDataModule):
    """CMU-MOSI / CMU-MOSEI sentiment data from an MMSA (``aligned_50.pkl`` / ``unaligned_50.pkl``) or MulT
    (``mosi_data.pkl`` / ``mosei_senti_data.pkl``) feature file, or the pickle-free ``.npz`` made by
    ``python -m features.convert_mmsa``.

    Pickles are read with a restricted unpickler (numpy arrays and plain containers only). NaN/inf features are set
    to 0 (counts logged per split and modality), masks come from ``text_bert`` / ``*_lengths``, and every split is
    converted once to float32 tensors and cached, so ``fit`` then ``test`` do not reload. Only the train loader
    shuffles; ``predict`` uses the test split.

    Args:
        path: feature file (``.pkl`` or ``.npz``), e.g. ``data/mosi/aligned_50.pkl`` relative to the working
            directory. Never downloaded: :meth:`prepare_data` only checks that it exists.
        dataset_name: ``"mosi"`` or ``"mosei"`` to check split sizes against the standard ones (a mismatch is a
            logged warning), or ``None``.
        batch_size: train batch size.
        eval_batch_size: val/test/predict batch size (``None``: ``batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: pin batches in page-locked memory (for GPU training).

    After :meth:`setup`: ``feature_dims`` (``{"text": Dt, "audio": Da, "vision": Dv}``), ``seq_lens``
    (``{"text": Lt, "audio": La, "vision": Lv}``), ``split_sizes``, ``aligned``, ``schema``.
    """

    def __init__(
        self,
        path: str,
        dataset_name: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if dataset_name is not None and dataset_name.lower() not in ("mosi", "mosei"):
            raise ValueError(f"MOSEIDataModule: dataset_name must be 'mosi', 'mosei' or None, got {dataset_name!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"MOSEIDataModule: batch sizes must be >= 1, got batch_size={batch_size}, "
                             f"eval_batch_size={eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"MOSEIDataModule: num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self._data: MMSAData | None = None
        self._datasets: dict[str, MMSADataset] = {}

    # ------------------------------------------------------------------------------------------------ hooks
    def prepare_data(self) -> None:
        """Check that the feature file exists (it is never downloaded)."""
        if not Path(self.hparams.path).is_file():
            raise MMSADataError(missing_file_message(self.hparams.path))

    def setup(self, stage: str | None = None) -> None:
        """Load, validate and clean the file once; later calls reuse the cached tensors."""
        if self._data is None:
            self._data = load_mmsa(self.hparams.path, dataset_name=self.hparams.dataset_name)
            self._datasets = {name: MMSADataset(split) for name, split in self._data.splits.items()}

    # ------------------------------------------------------------------------------------------ properties
    @property
    def data(self) -> MMSAData:
        if self._data is None:
            raise RuntimeError("MOSEIDataModule: call setup() before reading the data-derived properties")
        return self._data

    @property
    def feature_dims(self) -> dict[str, int]:
        """``{"text": Dt, "audio": Da, "vision": Dv}`` read from the file."""
        return dict(self.data.feature_dims)

    @property
    def seq_lens(self) -> dict[str, int]:
        """``{"text": Lt, "audio": La, "vision": Lv}`` read from the file."""
        return dict(self.data.seq_lens)

    @property
    def split_sizes(self) -> dict[str, int]:
        return self.data.split_sizes

    @property
    def aligned(self) -> bool:
        return self.data.aligned

    @property
    def schema(self) -> str:
        """``"mmsa"`` or ``"mult"``."""
        return self.data.schema

    # ----------------------------------------------------------------------------------------- dataloaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._datasets:
            self.setup()
        hp = self.hparams
        batch_size = hp.batch_size if shuffle else (hp.eval_batch_size or hp.batch_size)
        dataset = self._datasets[split]
        sampler = None
        if not shuffle and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Evaluation under DDP: every sample exactly once (uneven shards, no padding duplicates), so the
            # gathered metrics equal a single-process run. Lightning keeps a DistributedSampler it is given.
            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            persistent_workers=hp.num_workers > 0,
            collate_fn=mmsa_collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
