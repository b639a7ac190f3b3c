"""2-process DDP ``fit`` on a MOSEI-shaped feature store under a per-process memory limit that a copy of the file
cannot fit: the ranks read the store in place (shared page cache) instead of each loading the file."""

from __future__ import annotations

import re
import resource
import subprocess
import sys

import pytest

from datamodules.mosei import MMSADataModule
from features.convert_mmsa import convert_mmsa
from features.mmsa_format import MMSADataError
from tests.helpers.scripts import REPO, load_script

_RANK_IMPORTS = "import cli, models.hgcl, torch_geometric; "


def _import_vm_data(env: dict[str, str]) -> int:
    """VmData (bytes) of a process that imported what a ``cli.py fit`` rank imports."""
    out = subprocess.run(
        [sys.executable, "-c", _RANK_IMPORTS + "print(open('/proc/self/status').read())"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
    return int(re.search(r"VmData:\s+(\d+) kB", out).group(1)) * 1024


def test_directory_given_as_path_is_named(tmp_path):
    dm = MMSADataModule(path=str(tmp_path))
    with pytest.raises(MMSADataError, match="is a directory, not a feature file"):
        dm.prepare_data()


@pytest.mark.slow
def test_ddp_fit_reads_the_store_in_place_under_a_memory_limit(tmp_path):
    bench = load_script("benchmarks/bench_mmsa_storage.py")
    npz = tmp_path / "mosei.npz"
    info = bench.generate_mosei_npz(npz, 1.0, sizes={"train": 1300, "valid": 150, "test": 130})
    size = info["bytes"]  # about 560 MB of MOSEI-shaped samples
    store = convert_mmsa(npz, tmp_path / "mosei.mmsa")
    env = bench._env()
    # private writable memory (RLIMIT_DATA: heap + anonymous mappings; not the read-only shared file mappings)
    # per process: what the imports take plus 448 MiB, which one copy of the file does not fit
    margin = 448 * 2**20
    limit = _import_vm_data(env) + margin
    assert size > margin

    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    # the control: the in-memory path cannot load the file under this limit (so two copies do not fit either)
    control = subprocess.run([sys.executable, "-c", _RANK_IMPORTS + "from features.mmsa_format import load_mmsa; "
                              f"load_mmsa({str(npz)!r})"], cwd=REPO, env=env, capture_output=True, text=True,
                             preexec_fn=set_limit, check=False)
    assert control.returncode != 0 and "MemoryError" in control.stderr, control.stderr[-2000:]

    res = bench.monitor_ranks(bench.ddp_fit_command("hgcl", store, 1, tmp_path), store=str(store), env=env,
                              preexec=set_limit, timeout=600)
    assert res["rc"] == 0, res["output"][-4000:]
    assert len(res["ranks"]) == 2, res["ranks"]
    for rank in res["ranks"]:
        assert rank["vm_data"] <= limit
        assert rank["store_rss"] > 0  # the features were read through the mapping
    # the store's pages are shared: counted once over both ranks, never a copy per rank
    assert res["store_pss_sum_peak"] <= size
