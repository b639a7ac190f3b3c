"""LightningDataModule for CMU-MOSI / CMU-MOSEI processed features (MMSA or MulT files, their ``.npz`` form, or the
memory-mapped feature store ``<name>.mmsa/`` made by ``python -m features.convert_mmsa SRC DST.mmsa``).

The batch layout and the ``feature_dims`` / ``seq_lens`` properties follow ``docs/architecture.md``
("Multimodal sentiment"). Loading, validation and cleaning live in :mod:`features.mmsa_format`.
"""

from __future__ import annotations

import logging
from typing import Literal

from torch.utils.data import DataLoader

from datamodules.base import AffectDataModule
from datamodules.datasets.mmsa_dataset import MMSADataset, mmsa_collate
from datamodules.distributed import eval_sampler
from features.mmsa_format import MMSAData, check_feature_path, load_mmsa

__all__ = ["MMSADataModule", "MOSEIDataModule"]

log = logging.getLogger(__name__)


class MMSADataModule(AffectDataModule):
    """CMU-MOSI / CMU-MOSEI (named for the MMSA file format it reads, not for one dataset) sentiment data from an MMSA (``aligned_50.pkl`` / ``unaligned_50.pkl``) or MulT
    (``mosi_data.pkl`` / ``mosei_senti_data.pkl``) feature file, the pickle-free ``.npz`` or the feature store
    (a ``.mmsa`` directory) made by ``python -m features.convert_mmsa``.

    Pickles are read with a restricted unpickler (numpy arrays and plain containers only). NaN/inf features are set
    to 0 (counts logged per split and modality), masks come from ``text_bert`` / ``*_lengths``. A ``.pkl`` / ``.npz``
    is converted once to float32 tensors held by the process; a store is opened in place (its features stay
    memory-mapped, so the DDP ranks of a node share one copy in the page cache, and a sample is read when a batch
    asks for it: the first batch comes without reading the file first). Either way the result is cached, so ``fit``
    then ``test`` do not reload. Only the train loader shuffles; ``predict`` uses the test split.

    Args:
        path: feature file (``.pkl`` or ``.npz``) or store (``.mmsa`` directory), e.g. ``data/mosi/aligned_50.pkl``
            relative to the working directory. Never downloaded: :meth:`prepare_data` only checks that it exists.
            Use a store for MOSEI and for DDP (the in-memory forms cost each process about twice the file).
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
        dataset_name: Literal["mosi", "mosei"] | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if dataset_name is not None and dataset_name.lower() not in ("mosi", "mosei"):
            raise ValueError(f"MMSADataModule: dataset_name must be 'mosi', 'mosei' or None, got {dataset_name!r}")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"MMSADataModule: batch sizes must be >= 1, got batch_size={batch_size}, "
                             f"eval_batch_size={eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"MMSADataModule: num_workers must be >= 0, got {num_workers}")
        self.save_hyperparameters()
        self._data: MMSAData | None = None
        self._datasets: dict[str, MMSADataset] = {}

    # ------------------------------------------------------------------------------------------------ hooks
    def prepare_data(self) -> None:
        """Check that the feature file or store exists (it is never downloaded)."""
        check_feature_path(self.hparams.path)

    def setup(self, stage: str | None = None) -> None:
        """Load (a store: open), validate and clean the file once; later calls reuse the result."""
        if self._data is None:
            self._data = load_mmsa(self.hparams.path, dataset_name=self.hparams.dataset_name)
            self._datasets = {name: MMSADataset(split) for name, split in self._data.splits.items()}

    # ------------------------------------------------------------------------------------------ properties
    @property
    def data(self) -> MMSAData:
        """The loaded file; read on first use (the CLI reads ``feature_dims``/``seq_lens`` at instantiation to
        link them into the system)."""
        if self._data is None:
            self.prepare_data()
            self.setup()
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
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=None if shuffle else eval_sampler(dataset),
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


#: Former name (it loads MOSI as well as MOSEI); kept so saved configs (``datamodules.mosei.MOSEIDataModule``) load.
MOSEIDataModule = MMSADataModule
