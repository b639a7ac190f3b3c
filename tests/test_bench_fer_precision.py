"""benchmarks/bench_fer_precision.py builds each FER2013 config's net and optimiser as a budget run does."""

import torch

from scripts.experiments import compose_configs
from tests.helpers.scripts import load_script

bench = load_script("benchmarks/bench_fer_precision.py")


def _config(name: str) -> dict:
    return compose_configs([bench.REPO / bench.CONFIGS[name]])


def test_bf16_case_runs_the_net_under_autocast_with_the_optimizer_lightning_builds() -> None:
    config = _config("two-branch Swin")  # clips gradients, asks for fused AdamW
    fp32, bf16 = bench.Case(config, "fp32", 2), bench.Case(config, "bf16", 2)
    assert fp32.clip == bf16.clip == 1.0
    assert fp32.opt.defaults["fused"] is True
    assert not bf16.opt.defaults.get("fused")  # Lightning's AMP plugin cannot clip a fused AdamW's gradients
    assert fp32._forward().dtype == torch.float32 and bf16._forward().dtype == torch.bfloat16
    assert fp32.side == 64 and fp32.net.inputs == ("image", "descriptor")
    before = [p.detach().clone() for p in bf16.net.parameters()]
    bf16.train_step()
    assert all(p.dtype == torch.float32 for p in bf16.net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, bf16.net.parameters()))


def test_main_prints_one_row_per_net_with_its_configs_geometry(capsys) -> None:
    rows = bench.main(["--models", "timm ResNet-18", "--rounds", "1", "--warmup", "0", "--batch-size", "2"])
    assert list(rows) == ["timm ResNet-18"]
    row = rows["timm ResNet-18"]
    assert row["side"] == 48 and row["batch"] == 2
    assert row["speedup"] > 0 and row["train_fp32"] > 0 and row["infer_bf16"] > 0
    out = capsys.readouterr().out
    assert "CPU kernels" in out and "timm ResNet-18" in out
