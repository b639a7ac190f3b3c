"""``cli.py predict`` of the LDM augmenter with a checkpoint (issue 20, items 3-4): an explicit ``vae_path`` is the
VAE used, a bogus one is an error naming it, and data whose class order is not the checkpoint's is refused naming
both orders. ``slow``: the shared fixture fits a tiny LDM through the CLI (tests/test_cli_checkpoints.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from cli import cli_main
from models.diffusion import build_autoencoder_kl
from tests.test_cli_checkpoints import _generate_config, ldm_run  # noqa: F401 - ldm_run is a fixture

pytestmark = pytest.mark.slow


def _pngs(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.glob("*/*.png"))}


def test_generation_uses_the_explicit_vae_path(ldm_run) -> None:  # noqa: F811
    tmp = ldm_run["tmp"]
    outputs = {}
    for seed, name in ((1, "vae_b"), (2, "vae_c")):
        torch.manual_seed(seed)
        build_autoencoder_kl(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
                             sample_size=16).save_pretrained(tmp / name)
        cfg = _generate_config(ldm_run, f"aug_{name}")
        cli_main(["predict", "--config", str(cfg), "--ckpt_path", str(ldm_run["ckpt"]),
                  "--model.init_args.vae_path", str(tmp / name)])
        outputs[name] = _pngs(tmp / f"aug_{name}")
    assert len(outputs["vae_b"]) == 4 and outputs["vae_b"].keys() == outputs["vae_c"].keys()
    assert all(outputs["vae_b"][k] != outputs["vae_c"][k] for k in outputs["vae_b"])
    junk = tmp / "junk_vae.ckpt"
    junk.write_bytes(b"not a VAE")
    cfg = _generate_config(ldm_run, "aug_junk")
    with pytest.raises(ValueError, match=f"vae_path '{junk}' cannot be loaded as a VAE"):
        cli_main(["predict", "--config", str(cfg), "--ckpt_path", str(ldm_run["ckpt"]),
                  "--model.init_args.vae_path", str(junk)])
    assert not _pngs(tmp / "aug_junk")


def test_generation_refuses_data_in_another_class_order(ldm_run) -> None:  # noqa: F811
    cfg = _generate_config(ldm_run, "aug_order")
    conf = yaml.safe_load(cfg.read_text())
    conf["data"]["init_args"]["class_counts"] = {"c": 1, "a": 2, "b": 1}  # trained as a, b, c
    conf["model"]["init_args"]["class_names"] = ["c", "a", "b"]
    cfg.write_text(yaml.safe_dump(conf, sort_keys=False))  # (sorted keys would be the order a, b, c)
    expected = rf"{re.escape(str(['a', 'b', 'c']))}.*{re.escape(str(['c', 'a', 'b']))}"
    with pytest.raises(ValueError, match=rf"class order mismatch \(the same classes in another order\).*{expected}"):
        cli_main(["predict", "--config", str(cfg), "--ckpt_path", str(ldm_run["ckpt"])])
    assert not _pngs(ldm_run["tmp"] / "aug_order")
