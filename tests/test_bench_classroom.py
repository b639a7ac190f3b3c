"""Smoke run of benchmarks/bench_classroom.py (tiny net, 2 frames): it runs end to end and reports what it should.
Its timings are not looked at (the lead runs the benchmark on an idle machine)."""

from __future__ import annotations

import pytest

from tests.fakes_images import real_root
from tests.helpers.scripts import load_script


@pytest.mark.slow
def test_bench_classroom_smoke(tmp_path) -> None:
    if real_root("jaffe") is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    bench = load_script("benchmarks/bench_classroom.py")
    rows = bench.main(["--faces", "1", "3", "--frames", "2", "--net", "tiny", "--out", str(tmp_path)])
    assert [r["faces_in_frame"] for r in rows] == [1, 3]
    assert [r["faces"] for r in rows] == [2, 6]  # every pasted face found in both frames
    for r in rows:
        assert r["frames"] == 2 and 0 < r["detection_share"] < 1 and r["frames_per_s"] > 0
    assert (tmp_path / "bench_classroom.md").read_text().count("\n|") == 4  # header, rule, 2 rows
