"""The lowest-layer helpers: atomic_write / atomic_path, masked_mean, check_choices."""

from __future__ import annotations

import os
import stat
from typing import Literal

import numpy as np
import pytest
import torch

from common import MODALITIES
from common.choices import check_choices, literal_options
from common.io import atomic_write
from common.tensors import grey_rgb, masked_mean


def test_atomic_write_replaces_only_on_success(tmp_path) -> None:
    path = tmp_path / "sub" / "out.txt"
    with atomic_write(path, "w") as f:
        f.write("first")
    assert path.read_text() == "first"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # like a plain open(), not mkstemp's 0o600
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "first"  # the old file survives a failed write
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.txt"]  # no temporary file left
    with atomic_write(path) as f:  # bytes by default (np.save, PIL, savefig take file objects)
        np.save(f, np.arange(3))
    assert np.load(path).tolist() == [0, 1, 2]


def test_masked_mean_ignores_padding_for_torch_and_numpy() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]], [[5.0], [7.0], [9.0]]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, mask).flatten().tolist() == [2.0, 0.0]  # all-padding row -> zeros
    out = masked_mean(x.numpy().astype(np.float64), mask.numpy())
    assert out.dtype == np.float64 and out.flatten().tolist() == [2.0, 0.0]


class _Net:
    def __init__(self, mode: Literal["a", "b"] = "a", pool: Literal["mean"] | None = None, width: int = 3,
                 name: str = "x") -> None:
        check_choices(_Net, locals())


def test_check_choices_reads_the_literal_annotations() -> None:
    assert literal_options(_Net.__init__) == {"mode": ("a", "b"), "pool": ("mean", None)}
    _Net("b", None)
    _Net(pool="mean", name="anything")
    with pytest.raises(ValueError, match=r"_Net: mode must be one of \('a', 'b'\), got 'c'"):
        _Net("c")
    with pytest.raises(ValueError, match="_Net: pool"):
        _Net(pool="max")


def test_modalities_order() -> None:
    assert MODALITIES == ("text", "audio", "vision")


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path) -> None:
    from common.io import atomic_path

    path = tmp_path / "sub" / "clip.mp4"
    with atomic_path(path, suffix=".tmp.mp4") as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".clip.mp4.") and tmp.suffix == ".mp4"
        tmp.write_bytes(b"complete")  # a library writing by path
        assert not path.exists()  # nothing under the final name before the end
    assert path.read_bytes() == b"complete"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"complete"
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.mp4"]


def test_grey_rgb_is_one_conversion_for_numpy_images_and_torch_batches() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    g = grey_rgb(img)
    assert g.dtype == np.uint8 and g.shape == img.shape and (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    # ITU-R BT.601 luma, within one grey level of OpenCV's fixed-point RGB2GRAY
    import cv2

    assert np.abs(g[..., 0].astype(int) - cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(int)).max() <= 1
    assert (grey_rgb(np.full((1, 1, 3), 255, np.uint8)) == 255).all()
    batch = torch.from_numpy(np.stack([img, img[::-1]])).permute(0, 3, 1, 2)  # [B, 3, H, W]
    gb = grey_rgb(batch, channel_dim=1)
    assert gb.dtype == torch.uint8 and gb.shape == batch.shape
    np.testing.assert_array_equal(gb[0].permute(1, 2, 0).numpy(), g)
    already_grey = np.repeat(img[..., :1], 3, axis=2)
    np.testing.assert_array_equal(grey_rgb(already_grey), already_grey)  # grey faces are unchanged
