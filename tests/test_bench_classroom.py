"""Smoke runs of benchmarks/bench_classroom.py (Lightning path with the tiny net; the pipeline with the shipped model;
2 frames): they run end to end and report what they should.
Their timings are not looked at (the lead runs the benchmark on an idle machine)."""

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


@pytest.mark.slow
def test_bench_classroom_pipeline_smoke(tmp_path) -> None:
    """The pipeline path (the default, --net shipped): faces/s and the share of each stage."""
    if real_root("jaffe") is None:
        pytest.skip("JAFFE not found at <repo>/../shared/data/jaffe")
    bench = load_script("benchmarks/bench_classroom.py")
    rows = bench.main(["--faces", "3", "--frames", "2", "--sample-fps", "12.5", "--out", str(tmp_path)])
    (r,) = rows
    assert r["faces_in_frame"] == 3 and r["frames"] == 2 and r["faces"] == 6  # one frame in 2 of a 4-frame video
    shares = [r[f"share_{s}"] for s in ("decode", "detect", "track", "align", "descriptor", "model", "write")]
    assert abs(sum(shares) - 1) < 1e-6 and r["share_detect"] > 0 and r["share_model"] > 0 and r["faces_per_s"] > 0
    table = (tmp_path / "bench_classroom.md").read_text()
    assert table.count("\n|") == 3 and "| decode | detect | track | align | descriptor | model | write |" in table
    assert (tmp_path / "outputs_3faces" / "report.html").is_file()
