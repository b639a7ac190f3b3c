"""The base of the project's datamodules.

``cli.py``'s ``--data`` takes a subclass of :class:`AffectDataModule`, so ``cli.py fit --help`` lists the project's
datamodules only (jsonargparse lists the concrete subclasses of the base it is given; this one is abstract).
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

from lightning.pytorch import LightningDataModule

__all__ = ["AffectDataModule"]


class AffectDataModule(LightningDataModule, metaclass=ABCMeta):
    """A ``LightningDataModule`` of this project; every one builds its datasets in :meth:`setup`."""

    @abstractmethod
    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (``fit``, ``validate``, ``test``, ``predict``; ``None``: all)."""
