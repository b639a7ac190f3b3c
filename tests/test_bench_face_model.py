"""benchmarks/bench_face_model.py: interleaved timing, and one short run comparing torch and ONNX Runtime."""

from __future__ import annotations

import pytest

from tests.helpers.scripts import load_script

bench = load_script("benchmarks/bench_face_model.py")


def test_interleaved_rates_alternate_and_count_every_call(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"t": 0.0}
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock["t"])
    order: list[str] = []

    def work(name: str, cost: float):
        def fn() -> None:
            order.append(name)
            clock["t"] += cost
        return fn

    rates = bench.interleaved_rates({"a": work("a", 0.125), "b": work("b", 0.375)}, n_per_call=8, seconds=1.0,
                                    rounds=2)
    assert rates == pytest.approx({"a": 64.0, "b": 64 / 3})  # 8 faces per call / cost of a call
    # warm-up a, b; round 1: a then b; round 2 reversed: b then a (>= 0.5 s each: 4 calls of a, 2 of b)
    assert order == ["a", "b"] + ["a"] * 4 + ["b"] * 2 + ["b"] * 2 + ["a"] * 4
    with pytest.raises(ValueError, match="rounds"):
        bench.interleaved_rates({"a": work("a", 0.1)}, 1, 1.0, 0)


def test_one_short_run_compares_torch_and_onnxruntime(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    assert bench.main(["--seconds", "0.2", "--rounds", "2", "--batch-size", "4", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("net alone", "predict"))]
    assert [r[-3] for r in rows] == ["torch", "torch", "onnxruntime", "onnxruntime"]
    assert all(float(r[-2]) > 0 for r in rows)
    assert "onnxruntime / torch: net alone" in out and "export max abs logit diff" in out
    assert "target >= 200 faces/s" in out


def test_torch_only_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--seconds", "0.1", "--rounds", "1", "--batch-size", "2", "--threads", "1",
                       "--backends", "torch"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" not in out and "net alone" in out
