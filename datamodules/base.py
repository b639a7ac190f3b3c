"""The base of the project's datamodules.

``cli.py``'s ``--data`` takes a subclass of :class:`AffectDataModule`, so ``cli.py fit --help`` lists the project's
datamodules only (jsonargparse lists the concrete subclasses of the base it is given; this one is abstract).

A datamodule built inside another one's construction under LightningCLI (``GenerationDataModule``'s
``source_config`` factory) must not take the outer one's configuration as its hyper-parameters: Lightning's
datamodule instantiator hands its config to every ``LightningDataModule`` constructed under it.
:meth:`AffectDataModule.save_hyperparameters` keeps given hyper-parameters only when they name this class.
"""

from __future__ import annotations

import inspect
from abc import ABCMeta, abstractmethod
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

__all__ = ["AffectDataModule"]


class AffectDataModule(LightningDataModule, metaclass=ABCMeta):
    """A ``LightningDataModule`` of this project; every one builds its datasets in :meth:`setup`."""

    @abstractmethod
    def setup(self, stage: str | None = None) -> None:
        """Build the datasets of ``stage`` (``fit``, ``validate``, ``test``, ``predict``; ``None``: all)."""

    def save_hyperparameters(self, *args: Any, ignore: Any = None, frame: Any = None, logger: bool = True) -> None:
        """Lightning's ``save_hyperparameters``, except that a configuration given by LightningCLI for ANOTHER class
        (its ``_class_path``) is ignored: this module's own ``__init__`` arguments are saved instead."""
        given = _given_hyperparameters.get()
        own = f"{type(self).__module__}.{type(self).__qualname__}"
        if given is None or given.get("_class_path") in (None, own):
            return super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back,
                                                logger=logger)
        token = _given_hyperparameters.set(None)
        try:
            return super().save_hyperparameters(*args, ignore=ignore, frame=frame or inspect.currentframe().f_back,
                                                logger=logger)
        finally:
            _given_hyperparameters.reset(token)
