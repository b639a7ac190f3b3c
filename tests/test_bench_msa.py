"""benchmarks/bench_msa.py: the batch shape, both MulTs build with MMSA's MOSI config, and a clear exit without MMSA."""

from __future__ import annotations

import builtins

import pytest

from tests.helpers.scripts import load_script


def test_batch_and_models_build() -> None:
    bench = load_script("benchmarks/bench_msa.py")
    batch = bench.make_batch(3)
    assert batch["audio"].shape == (3, 375, 5) and batch["vision"].shape == (3, 500, 20)
    assert batch["text"].shape == (3, 50, 768) and batch["text_mask"].all()
    assert (batch["audio"][~batch["audio_mask"]] == 0).all()
    ours = bench.our_mult()
    assert ours.dim == 50 and ours.num_layers == 4
    pytest.importorskip("MMSA", reason="the bench extra (MMSA) is not installed")
    theirs = bench.mmsa_mult()
    # same architecture size: MMSA's conv padding/causal mask differ, the parameter count does not
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())


def test_exits_with_a_clear_message_without_mmsa(monkeypatch, capsys) -> None:
    bench = load_script("benchmarks/bench_msa.py")
    real_import = builtins.__import__

    def no_mmsa(name, *args, **kwargs):
        if name.startswith("MMSA"):
            raise ImportError("No module named 'MMSA'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mmsa)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--rounds", "1"])
    assert exit_info.value.code == 2
    assert "MMSA is not installed" in capsys.readouterr().err


def test_kernel_source_option_is_gone(capsys) -> None:
    """One fused-kernel source is left (issue #25): ``--kernel-sources`` is an unknown option, ``--attention`` names
    the variants."""
    bench = load_script("benchmarks/bench_msa.py")
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--kernel-sources", "vec"])
    assert exit_info.value.code == 2 and "--kernel-sources" in capsys.readouterr().err
    assert bench._variant_name("auto", single=True) == "MulT (ours)"
    assert bench._variant_name("torch", single=False) == "MulT (ours, torch)"
