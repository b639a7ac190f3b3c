"""CMU-MOSEI at cluster scale: the memory-mapped feature store (``.mmsa``) against the in-memory ``.npz`` path.

Run (idle machine; ``--scale 1.0`` is MOSEI's full size, about 8.6 GB of features, and needs about 2 x that on disk
in ``--workdir``)::

    python benchmarks/bench_mmsa_storage.py --scale 1.0 --workdir /scratch/bench_mmsa
    python benchmarks/bench_mmsa_storage.py --scale 0.01            # smoke run, a few minutes

One command, five measurements, one table (also written to ``<workdir>/results.json``):

1. **generate** a MOSEI-shaped unaligned ``.npz`` (MMSA's ``unaligned_50`` shapes: 16,326 / 1,871 / 4,659 samples
   times ``--scale``; text 50 x 768 float32, ``text_bert`` 3 x 50, audio 500 x 74, vision 375 x 35, random valid
   lengths, a few NaN/inf in the audio as real MOSEI files have), written streaming (never held in memory);
2. **convert** it with ``python -m features.convert_mmsa FILE.npz FILE.mmsa`` (a child process): wall time and
   peak RSS (``wait4``'s ``ru_maxrss``), against the largest array;
3. **load** each form in a child process (``MMSADataModule(path).setup("fit")``): time from ``setup`` to the first
   training batch, then two full training-loader epochs (``--batch-size``, shuffled; first epoch and warm second
   epoch in samples/s) and the peak RSS;
4. **DDP**: ``cli.py fit`` of HGCL (``configs/hgcl_mosei.yaml``) and of MulT (``configs/baselines/msa_mult_*``) on
   the store, 2 processes on the CPU (gloo), ``--trainer.fast_dev_run --ddp-steps``; every 0.25 s each rank's
   ``/proc/<pid>/smaps_rollup`` (RSS, PSS, USS = private clean + dirty) and the resident / proportional size of the
   store's own mappings (``/proc/<pid>/smaps``) are sampled: the table gives each rank's peaks. With the file read in
   place, the store's pages are shared: their PSS summed over the ranks is at most the file once;
5. the same DDP ``fit`` on the ``.npz`` with ``--ddp-npz`` (each rank then holds its own copy; at full size this
   does not fit a 24 GB machine, which is the point of the store).

Timings taken while other jobs load the machine are meaningless; the memory numbers are not affected.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np

MOSEI_SIZES = {"train": 16326, "valid": 1871, "test": 4659}
SHAPES = {"text": (50, 768), "audio": (500, 74), "vision": (375, 35)}
CONFIGS = {
    "hgcl": ["configs/hgcl_mosei.yaml"],
    "mult": ["configs/baselines/msa_mult_mosi.yaml", "configs/baselines/msa_mult_mosei.yaml"],
}


# ------------------------------------------------------------------------------------------------ generate
def _write_member(zf: zipfile.ZipFile, name: str, shape: tuple[int, ...], dtype: np.dtype, chunks: Any) -> None:
    """One ``.npy`` member of an uncompressed ``.npz``, written chunk by chunk."""
    info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    with zf.open(info, "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": tuple(shape)})
        for chunk in chunks:
            f.write(np.ascontiguousarray(chunk, dtype=dtype).tobytes())


def generate_mosei_npz(path: str | os.PathLike, scale: float, *, seed: int = 0, chunk_samples: int = 256,
                       sizes: dict[str, int] | None = None) -> dict[str, Any]:
    """Write a MOSEI-shaped unaligned feature ``.npz`` (plain ``split/key`` members) without holding it in memory.

    Args:
        path: output ``.npz``.
        scale: fraction of MOSEI's split sizes (each split at least 8 samples).
        seed: random seed.
        chunk_samples: samples generated per step.
        sizes: explicit split sizes instead of ``scale``.

    Returns:
        ``{"sizes": ..., "bytes": file size, "largest_array_bytes": ...}``.
    """
    sizes = sizes or {s: max(8, round(n * scale)) for s, n in MOSEI_SIZES.items()}
    path = Path(path)
    largest = 0
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for s_idx, (split, n) in enumerate(sizes.items()):
            rng = np.random.default_rng([seed, s_idx])
            t_len = rng.integers(3, 51, size=n)
            a_len = rng.integers(125, 501, size=n)
            v_len = rng.integers(94, 376, size=n)
            lengths = {"text": t_len, "audio": a_len, "vision": v_len}
            for m, (steps, dim) in SHAPES.items():
                largest = max(largest, n * steps * dim * 4)

                def feats(m: str = m, steps: int = steps, dim: int = dim, n: int = n, s_idx: int = s_idx,
                          lengths: dict[str, np.ndarray] = lengths) -> Any:
                    frng = np.random.default_rng([seed, s_idx, steps])
                    for i in range(0, n, chunk_samples):
                        k = min(chunk_samples, n - i)
                        x = frng.standard_normal((k, steps, dim), dtype=np.float32)
                        x *= (np.arange(steps)[None, :] < lengths[m][i:i + k, None])[:, :, None]
                        if m == "audio" and i == 0:
                            x[0, 0, :2] = (np.nan, -np.inf)  # real MOSEI audio holds a few
                        yield x

                _write_member(zf, f"{split}/{m}", (n, steps, dim), np.dtype(np.float32), feats())
            mask = np.arange(50)[None, :] < t_len[:, None]
            tokens = np.where(mask, rng.integers(1000, 3000, size=(n, 50)), 0)
            tokens[:, 0] = 101
            tokens[np.arange(n), t_len - 1] = 102
            tb = np.stack([tokens, mask, np.zeros_like(tokens)], axis=1).astype(np.float64)
            _write_member(zf, f"{split}/text_bert", tb.shape, np.dtype(np.float64), [tb])
            _write_member(zf, f"{split}/audio_lengths", (n,), np.dtype(np.int64), [a_len])
            _write_member(zf, f"{split}/vision_lengths", (n,), np.dtype(np.int64), [v_len])
            labels = np.clip(np.round(rng.normal(0.0, 1.5, size=n) / 0.2) * 0.2, -3, 3).astype(np.float32)
            _write_member(zf, f"{split}/regression_labels", (n,), np.dtype(np.float32), [labels])
            ids = np.array([f"gen_{split}_{i // 8:05d}$_${i % 8}" for i in range(n)])
            _write_member(zf, f"{split}/id", ids.shape, ids.dtype, [ids])
            raw = np.array(["[generated]"] * n)
            _write_member(zf, f"{split}/raw_text", raw.shape, raw.dtype, [raw])
    return {"sizes": sizes, "bytes": path.stat().st_size, "largest_array_bytes": largest}


# -------------------------------------------------------------------------------------------------- measure
def run_with_peak_rss(cmd: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None,
                      timeout: float = 3600) -> dict[str, Any]:
    """Run ``cmd``; its wall time, exit code, output and peak RSS (``ru_maxrss`` of that child, bytes)."""
    t0 = time.perf_counter()
    out = tempfile.TemporaryFile()  # noqa: SIM115 - read after the child ends, closed below
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    text = out.read().decode(errors="replace")
    out.close()
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "peak_rss": usage.ru_maxrss * 1024,
            "output": text}


def _smaps_rollup(pid: int) -> dict[str, int]:
    vals: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                vals[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return {"rss": vals.get("Rss", 0), "pss": vals.get("Pss", 0),
            "uss": vals.get("Private_Clean", 0) + vals.get("Private_Dirty", 0)}


def _mapped_under(pid: int, folder: str) -> dict[str, int]:
    """RSS / PSS of the mappings of files under ``folder`` (the store) in ``/proc/<pid>/smaps``."""
    rss = pss = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split(maxsplit=5)
            if first and "-" in first[0] and len(first) >= 5 and not first[0].endswith(":"):
                inside = len(first) == 6 and first[5].strip().startswith(folder)
            elif inside and first and first[0] == "Rss:":
                rss += int(first[1]) * 1024
            elif inside and first and first[0] == "Pss:":
                pss += int(first[1]) * 1024
    return {"store_rss": rss, "store_pss": pss}


def _vm_data(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def monitor_ranks(cmd: list[str], *, store: str | None, env: dict[str, str], timeout: float = 3600,
                  interval: float = 0.25, preexec: Any = None) -> dict[str, Any]:
    """Run a DDP command and sample every ``cli.py`` process of its tree: peak RSS / PSS / USS / VmData and the
    store's mapped RSS / PSS per rank (rank 0 is the launched process, rank 1 its ``cli.py`` child)."""
    t0 = time.perf_counter()
    log = tempfile.TemporaryFile()  # noqa: SIM115 - read after the child ends, closed below
    # preexec (e.g. a resource limit) runs in the child before exec; this process starts no threads
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=preexec)  # noqa: PLW1509
    peaks: dict[int, dict[str, int]] = {}
    order: list[int] = []
    pss_sum_peak = store_pss_sum_peak = 0
    while proc.poll() is None:
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            break
        pss_sum = store_pss_sum = 0
        for pid in _descendants(proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"cli.py" not in f.read():
                        continue
                sample = _smaps_rollup(pid) | {"vm_data": _vm_data(pid)}
                if store:
                    sample |= _mapped_under(pid, store)
            except (OSError, ValueError):
                continue
            if pid not in peaks:
                order.append(pid)
                peaks[pid] = {}
            peaks[pid] = {k: max(v, peaks[pid].get(k, 0)) for k, v in sample.items()}
            pss_sum += sample["pss"]
            store_pss_sum += sample.get("store_pss", 0)
        pss_sum_peak = max(pss_sum_peak, pss_sum)
        store_pss_sum_peak = max(store_pss_sum_peak, store_pss_sum)
        time.sleep(interval)
    proc.wait()
    log.seek(0)
    output = log.read().decode(errors="replace")
    log.close()
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "ranks": [peaks[p] for p in order],
            "pss_sum_peak": pss_sum_peak, "store_pss_sum_peak": store_pss_sum_peak, "output": output}


_LOAD_SNIPPET = """
import json, resource, sys, time
from datamodules.mosei import MMSADataModule
t0 = time.perf_counter()
dm = MMSADataModule(path=sys.argv[1], batch_size=int(sys.argv[2]))
dm.setup("fit")
t_setup = time.perf_counter()
loader = dm.train_dataloader()
it = iter(loader)
first = next(it)
t_first = time.perf_counter()
rates = []
for epoch in range(2):
    n, t = 0, time.perf_counter()
    for batch in (it if epoch == 0 else iter(loader)):
        n += len(batch["id"])
    if epoch == 0:
        n += len(first["id"])
        t = t_first
    rates.append(n / (time.perf_counter() - t))
print("RESULT", json.dumps({"setup_s": t_setup - t0, "first_batch_s": t_first - t0, "epoch1_sps": rates[0],
                            "epoch2_sps": rates[1], "n": n}))
"""


def measure_loader(path: Path, batch_size: int, env: dict[str, str]) -> dict[str, Any]:
    """Setup-to-first-batch time, two loader epochs (samples/s) and peak RSS of a child process reading ``path``."""
    res = run_with_peak_rss([sys.executable, "-c", _LOAD_SNIPPET, str(path), str(batch_size)], env=env)
    if res["rc"] != 0:
        raise RuntimeError(f"loading {path} failed:\n{res['output'][-3000:]}")
    line = next(x for x in res["output"].splitlines() if x.startswith("RESULT "))
    return json.loads(line[7:]) | {"peak_rss": res["peak_rss"]}


_TRAIN_SNIPPET = """
import json, sys, tempfile, time
import lightning as L
from cli import cli_main
path, steps, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
class Timer(L.Callback):  # samples/s over training steps 20 .. steps (the first ones warm caches and allocator)
    t0 = t1 = None
    samples = 0
    def on_train_batch_start(self, trainer, module, batch, i):
        if i == 20:
            self.t0, self.samples = time.perf_counter(), 0
    def on_train_batch_end(self, trainer, module, out, batch, i):
        if self.t0 is not None:
            self.samples, self.t1 = self.samples + len(batch["label"]), time.perf_counter()
args = [a for c in configs for a in ("--config", c)] + [
    "--data.init_args.path", path, "--data.init_args.dataset_name", "null", "--data.init_args.num_workers", "0",
    "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.limit_train_batches", str(steps),
    "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "1", "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false", "--test_after_fit", "false",
    "--checkpoint.dirpath", tempfile.mkdtemp(prefix="bench_train_ckpt_")]
cli = cli_main(args, run=False)
timer = Timer()
cli.trainer.callbacks.append(timer)
cli.trainer.fit(cli.model, cli.datamodule)
print("RESULT", json.dumps({"train_sps": timer.samples / (timer.t1 - timer.t0)}))
"""


def measure_training(path: Path, model: str, steps: int, env: dict[str, str]) -> float:
    """Training samples/s of ``model``'s shipped config on ``path`` (one process, steps 20 .. ``steps``)."""
    res = run_with_peak_rss([sys.executable, "-c", _TRAIN_SNIPPET, str(path), str(steps), *CONFIGS[model]], env=env)
    if res["rc"] != 0:
        raise RuntimeError(f"training on {path} failed:\n{res['output'][-3000:]}")
    line = next(x for x in res["output"].splitlines() if x.startswith("RESULT "))
    return float(json.loads(line[7:])["train_sps"])


def ddp_fit_command(model: str, path: Path, steps: int, workdir: Path, devices: int = 2) -> list[str]:
    """``cli.py fit`` of ``model`` on ``path``: ``devices`` CPU processes, DDP (gloo), ``fast_dev_run=steps``."""
    cmd = [sys.executable, "cli.py", "fit"]
    for cfg in CONFIGS[model]:
        cmd += ["--config", cfg]
    return cmd + [
        "--data.init_args.path", str(path), "--data.init_args.dataset_name", "null",
        "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.strategy", "ddp",
        "--trainer.fast_dev_run", str(steps), "--trainer.logger", "false", "--test_after_fit", "false",
        "--checkpoint.dirpath", str(workdir / f"ckpt_{model}"), "--trainer.default_root_dir", str(workdir),
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def _gb(x: float) -> str:
    return f"{x / 2**30:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=float, default=0.01, help="fraction of MOSEI's split sizes (1.0: full size)")
    p.add_argument("--workdir", default=None, help="folder for the generated files (default: a temporary folder)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ddp-steps", type=int, default=2, help="fast_dev_run batches of the DDP fits")
    p.add_argument("--models", nargs="*", default=["hgcl", "mult"], choices=sorted(CONFIGS))
    p.add_argument("--ddp-npz", action="store_true", help="also run the DDP fits on the in-memory .npz path")
    p.add_argument("--skip-npz-load", action="store_true", help="do not measure the in-memory .npz loader")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--train-steps", type=int, default=0,
                   help="also time training of --train-model on the store and the .npz (one process each, steps 20 "
                        "to N, alternated over --train-rounds): the epoch throughput target; 0 skips it")
    p.add_argument("--train-model", default="hgcl", choices=sorted(CONFIGS))
    p.add_argument("--train-rounds", type=int, default=2)
    p.add_argument("--reuse", action="store_true",
                   help="reuse the file, store and results.json a --keep run left in --workdir (no generation or "
                        "conversion: e.g. the loader measurements again on an idle machine, with --models and no "
                        "model names to skip the DDP fits)")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 1.0:
        p.error(f"argument --scale: must be in (0, 1], got {args.scale}")
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_mmsa_"))
    workdir.mkdir(parents=True, exist_ok=True)
    npz, store = workdir / "mosei_unaligned.npz", workdir / "mosei_unaligned.mmsa"
    env = _env()
    results: dict[str, Any] = {"scale": args.scale, "batch_size": args.batch_size}
    if args.reuse:
        previous = workdir / "results.json"
        if not (npz.is_file() and store.is_dir() and previous.is_file()):
            p.error(f"--reuse: {workdir} lacks {npz.name}, {store.name} or results.json of a --keep run")
        old = json.loads(previous.read_text())
        if old.get("scale") != args.scale:
            p.error(f"--reuse: {workdir} holds a run at scale {old.get('scale')}, not {args.scale}")
        results.update({k: old[k] for k in ("file", "convert") if k in old})
    try:
        if not args.reuse:
            t = time.perf_counter()
            results["file"] = generate_mosei_npz(npz, args.scale)
            results["file"]["generate_s"] = time.perf_counter() - t
            print(f"generated {npz} ({_gb(results['file']['bytes'])} GB) in {results['file']['generate_s']:.0f} s",
                  flush=True)
            shutil.rmtree(store, ignore_errors=True)
            conv = run_with_peak_rss([sys.executable, "-m", "features.convert_mmsa", str(npz), str(store)], env=env)
            if conv["rc"] != 0:
                raise RuntimeError(f"conversion failed:\n{conv['output'][-3000:]}")
            results["convert"] = {k: conv[k] for k in ("wall_s", "peak_rss")}
            print(f"converted in {conv['wall_s']:.0f} s, peak RSS {_gb(conv['peak_rss'])} GB", flush=True)
        results["load"] = {"store": measure_loader(store, args.batch_size, env)}
        if not args.skip_npz_load:
            results["load"]["npz"] = measure_loader(npz, args.batch_size, env)
        print("loader:", json.dumps(results["load"]), flush=True)
        if args.train_steps:
            train: dict[str, list[float]] = {"store": [], "npz": []}
            for _ in range(args.train_rounds):  # alternated: store, npz, store, npz ...
                for form, path in (("store", store), ("npz", npz)):
                    train[form].append(measure_training(path, args.train_model, args.train_steps, env))
            results["train"] = {"model": args.train_model, "steps": args.train_steps, **train}
            print("training:", json.dumps(results["train"]), flush=True)
        results["ddp"] = {}
        for model in args.models:
            forms = [("store", store)] + ([("npz", npz)] if args.ddp_npz else [])
            for form, path in forms:
                res = monitor_ranks(ddp_fit_command(model, path, args.ddp_steps, workdir),
                                    store=str(store) if form == "store" else None, env=env)
                if res["rc"] != 0:
                    print(res["output"][-3000:], file=sys.stderr)
                results["ddp"][f"{model}/{form}"] = {k: v for k, v in res.items() if k != "output"}
                print(f"ddp {model} {form}: rc {res['rc']}, {res['wall_s']:.0f} s", flush=True)
    finally:
        (workdir / ("results_reuse.json" if args.reuse else "results.json")).write_text(json.dumps(results, indent=1))
        if not args.keep:
            for path in (npz, store):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    print(format_table(results))
    return 0 if all(r["rc"] == 0 for r in results.get("ddp", {}).values()) else 1


def format_table(results: dict[str, Any]) -> str:
    """The results as a markdown table (sizes in GiB)."""
    f = results["file"]
    title = (f"MOSEI-shaped file at scale {results['scale']}: {f['sizes']}, {_gb(f['bytes'])} GiB "
             f"(largest array {_gb(f['largest_array_bytes'])} GiB); batch {results['batch_size']}")
    lines = [title, "", "| measurement | value |", "|---|---|"]
    c = results["convert"]
    lines.append(f"| convert .npz -> .mmsa: wall / peak RSS | {c['wall_s']:.1f} s / {_gb(c['peak_rss'])} GiB |")
    for form, r in results["load"].items():
        lines.append(f"| {form}: setup / first batch after start | {r['setup_s']:.2f} s / {r['first_batch_s']:.2f} s |")
        lines.append(f"| {form}: loader epoch 1 / epoch 2 (samples/s) | {r['epoch1_sps']:.0f} / {r['epoch2_sps']:.0f} |")
        lines.append(f"| {form}: loader process peak RSS | {_gb(r['peak_rss'])} GiB |")
    if {"store", "npz"} <= set(results["load"]):
        st, nz = results["load"]["store"], results["load"]["npz"]
        lines.append(f"| store / npz loader samples/s, epoch 1 / epoch 2 (target >= 1) | "
                     f"{st['epoch1_sps'] / nz['epoch1_sps']:.2f} / {st['epoch2_sps'] / nz['epoch2_sps']:.2f} |")
    if "train" in results:
        t = results["train"]
        lines.append(f"| {t['model']} training samples/s (steps 20-{t['steps']}, one process), store / npz, each run | "
                     f"{', '.join(f'{v:.0f}' for v in t['store'])} / {', '.join(f'{v:.0f}' for v in t['npz'])} |")
        lines.append(f"| store / npz training samples/s, median (target >= 1) | "
                     f"{statistics.median(t['store']) / statistics.median(t['npz']):.2f} |")
    for name, r in results.get("ddp", {}).items():
        for rank, peak in enumerate(r["ranks"]):
            store = (f", store mapped RSS {_gb(peak['store_rss'])} / PSS {_gb(peak['store_pss'])}"
                     if "store_rss" in peak else "")
            lines.append(f"| DDP fit {name} rank {rank} (rc {r['rc']}): peak RSS / PSS / USS (GiB) | "
                         f"{_gb(peak['rss'])} / {_gb(peak['pss'])} / {_gb(peak['uss'])}{store} |")
        lines.append(f"| DDP fit {name}: sum of PSS over ranks (peak) / store PSS sum | "
                     f"{_gb(r['pss_sum_peak'])} / {_gb(r['store_pss_sum_peak'])} GiB |")
    return "\n".join(lines)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
