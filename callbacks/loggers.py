"""Weights & Biases logging that works on machines without network or API key.

:class:`AutoWandbLogger` is Lightning's ``WandbLogger`` that decides at construction whether it can reach W&B:
it runs **offline** (writing ``<save_dir>/wandb/offline-run-*``, to be pushed later with ``wandb sync``) when
``WANDB_MODE`` says offline/disabled, when no API key is configured (``WANDB_API_KEY`` or a ``~/.netrc`` entry),
or when the W&B host does not answer within ``probe_timeout`` seconds.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import WandbLogger

__all__ = ["AutoWandbLogger", "wandb_reachable"]

log = logging.getLogger(__name__)


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether W&B can be used online, and why not.

    Returns:
        ``(online, reason)``.
    """
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in {"offline", "dryrun", "disabled"}:
        return False, f"WANDB_MODE={mode}"
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if not _has_api_key(host):
        return False, "no W&B API key (WANDB_API_KEY or ~/.netrc)"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True, "reachable"
    except OSError as err:
        return False, f"{host} unreachable ({err.__class__.__name__})"


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` that goes offline by itself when W&B cannot be reached.

    Args:
        project: W&B project.
        save_dir: local directory for the run files (``<save_dir>/wandb``).
        offline: ``None`` decides automatically (see the module docstring); ``True``/``False`` force it.
        probe_timeout: seconds to wait for the W&B host when deciding.
        **kwargs: passed to ``WandbLogger`` (``name``, ``version``, ``log_model``, ``tags``, ...).
    """

    def __init__(
        self,
        project: str = "affect-lightning",
        save_dir: str = "runs",
        offline: bool | None = None,
        probe_timeout: float = 2.0,
        **kwargs,
    ) -> None:
        if offline is None:
            online, reason = wandb_reachable(probe_timeout)
            offline = not online
            if offline:
                log.info("W&B runs offline (%s); sync later with `wandb sync %s/wandb/offline-run-*`", reason, save_dir)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        super().__init__(project=project, save_dir=save_dir, offline=offline, **kwargs)
