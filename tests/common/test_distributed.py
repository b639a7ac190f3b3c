"""The process group is destroyed at the end of every command (gloo otherwise may abort at interpreter exit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.distributed as dist

from common.distributed import shutdown_process_group


def _init_group(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()


def test_shutdown_destroys_the_group_and_is_a_noop_without_one(tmp_path: Path) -> None:
    shutdown_process_group()  # nothing to destroy
    _init_group(tmp_path)
    shutdown_process_group()
    assert not dist.is_initialized()


def test_cli_destroys_the_group_even_when_the_command_fails(tmp_path: Path) -> None:
    import cli

    _init_group(tmp_path)
    with pytest.raises(SystemExit):
        cli.main(["fit", "--config", str(tmp_path / "missing.yaml")])
    assert not dist.is_initialized()
