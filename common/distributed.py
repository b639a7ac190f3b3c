"""Process-group shutdown shared by every entry point that can run under DDP."""

from __future__ import annotations

import torch.distributed as dist

__all__ = ["shutdown_process_group"]


def shutdown_process_group() -> None:
    """Destroy the default process group if this process has one (Lightning's DDP strategy creates it and never
    destroys it). Called at the end of an entry point, while the interpreter is fully alive: without it gloo's
    worker threads are torn down during interpreter finalisation and the process can abort (SIGABRT, "terminate
    called without an active exception") after its work is done — seen as a failed exit code on a DDP run that had
    nothing to do. A no-op without a process group; local for gloo (no collective), so safe after an error."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
