"""``SafeCheckpointIO``: the trainer's checkpoint reader is weights-only for every scheme and its writer atomic
(issue 20 §1, §3)."""

from __future__ import annotations

import errno
import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins import AsyncCheckpointIO, TorchCheckpointIO

from callbacks.checkpoint import EpochCheckpoint
from lightning_modules.checkpoint_io import CheckpointError, SafeCheckpointIO, with_safe_checkpoint_io
from tests.callbacks.test_checkpoint import _Worsening
from tests.fakes import _WriteMarker


@pytest.fixture()
def served(tmp_path: Path):
    """(folder, base URL) of an ``http.server`` on 127.0.0.1."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_trainer_loader_refuses_pickled_code_over_http(served, tmp_path: Path, monkeypatch) -> None:
    """The path Lightning takes for ``fit/test(ckpt_path=url)`` (Lightning's own loader: weights_only=False)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    root, base = served
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": _WriteMarker(marker, "system")}, root / "evil.ckpt")
    with pytest.raises(CheckpointError, match=f"{base}/evil.ckpt' was refused"):
        SafeCheckpointIO().load_checkpoint(f"{base}/evil.ckpt", weights_only=False)
    assert not marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}}, root / "good.ckpt")
    assert torch.equal(SafeCheckpointIO().load_checkpoint(f"{base}/good.ckpt")["state_dict"]["w"], torch.ones(2))
    assert SafeCheckpointIO().load_checkpoint((root / "good.ckpt").as_uri())["state_dict"]["w"].shape == (2,)


def test_unknown_scheme_is_an_error_naming_the_url() -> None:
    with pytest.raises(CheckpointError, match="'nosuchscheme://b/x.ckpt' cannot be opened"):
        SafeCheckpointIO().load_checkpoint("nosuchscheme://b/x.ckpt")


def _fill_disk_midway(monkeypatch) -> None:
    """``torch.save`` writes some bytes, then the disk is full."""

    def save(obj, f, *args, **kwargs) -> None:
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def test_full_disk_leaves_no_checkpoint_and_names_the_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "ckpts" / "best-000.ckpt"
    _fill_disk_midway(monkeypatch)
    with pytest.raises(OSError, match=r"best-000\.ckpt.*No space left on device") as e:
        SafeCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert e.value.errno == errno.ENOSPC
    assert list((tmp_path / "ckpts").iterdir()) == []  # neither the checkpoint's name nor a temporary file


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "last.ckpt"
    SafeCheckpointIO().save_checkpoint({"epoch": 1}, target)
    _fill_disk_midway(monkeypatch)
    with pytest.raises(OSError):
        SafeCheckpointIO().save_checkpoint({"epoch": 2}, target)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_training_on_a_full_disk_leaves_no_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """Through the trainer and ModelCheckpoint (``best-*.ckpt`` / ``last.ckpt``)."""
    from torch.utils.data import DataLoader, TensorDataset

    data = DataLoader(TensorDataset(torch.randn(8, 1)), batch_size=4)
    ckpt = EpochCheckpoint(dirpath=tmp_path / "ck", monitor="val/loss", mode="min", save_last=True,
                           filename="best-{epoch:03d}")
    trainer = Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[ckpt],
                      enable_model_summary=False, plugins=[SafeCheckpointIO()])
    _fill_disk_midway(monkeypatch)
    with pytest.raises(OSError, match=r"best-epoch=000\.ckpt' failed \(No space left on device\)"):
        trainer.fit(_Worsening(), data, data)
    assert not list((tmp_path / "ck").glob("*")), list((tmp_path / "ck").glob("*"))


def test_safe_io_joins_the_users_plugins() -> None:
    plugins, safe = with_safe_checkpoint_io(None)
    assert plugins == [safe] and isinstance(safe, SafeCheckpointIO)
    wrapper = AsyncCheckpointIO()
    plugins, safe = with_safe_checkpoint_io([wrapper])
    assert plugins == [wrapper] and wrapper.checkpoint_io is safe and isinstance(safe, SafeCheckpointIO)
    own = TorchCheckpointIO()
    plugins, safe = with_safe_checkpoint_io(own)
    assert plugins == [own] and safe is None  # the user's own plugin stays in charge (with a warning)
    trainer = Trainer(accelerator="cpu", devices=1, strategy="ddp", logger=False,
                      plugins=with_safe_checkpoint_io(None, "ddp")[0])
    assert isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO)
