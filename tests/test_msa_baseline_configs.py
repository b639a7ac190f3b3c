"""The MMSA-protocol configs of every baseline (MOSI files + MOSEI deltas) hold MMSA's hyper-parameters, parse, compose
and run one fast_dev_run step on fakes.

Expected values are written here by hand from **MMSA 2.2.1 ``config/config_regression.json``** (the file shipped in
the ``mmsa`` 2.2.1 wheel) together with MMSA's trainers (``trains/singleTask/*.py``, ``trains/multiTask/SELF_MM.py``)
where those decide what a json value does; they are deliberately NOT read from the json at test time. Where MMSA's
trainer ignores a json value the effective value is expected and the comment says so. RAVEN is not in MMSA: its
values are the authors' released settings (github.com/victorywys/RAVEN, ``code/consts.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from cli import cli_main
from scripts import run_msa_benchmark as bench
from scripts.experiments import compose_configs, config_files
from tests.fakes import write_mmsa_pickle, write_tiny_bert

REPO = Path(__file__).resolve().parents[1]

BASELINES = ("tfn", "lmf", "mfn", "raven", "mfm", "mult", "misa", "self_mm", "mag_bert")
BERT = "data/text_encoders/all-MiniLM-L6-v2"
MFN_MOSI = {
    "text_hidden": 256,
    "audio_hidden": 32,
    "vision_hidden": 256,
    "memory_dim": 400,
    "attention_hidden": 32,
    "attention_dropout": 0.2,
    "proposal_hidden": 64,
    "proposal_dropout": 0.0,
    "retain_hidden": 256,
    "retain_dropout": 0.7,
    "update_hidden": 32,
    "update_dropout": 0.5,
    "output_hidden": 128,
    "output_dropout": 0.0,
}

#: (model, dataset) -> expected values. file: MMSA's need_data_aligned (true: aligned_50.pkl, false: unaligned_50.pkl);
#: accumulate: MMSA's update_epochs; clip: MMSA's grad_clip (clip_grad_value_); patience: MMSA's early_stop.
EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    # tfn: hidden_dims [t, a, v], dropouts [audio, video, text, post_fusion]; TFN trainer: Adam(lr), no decay.
    ("tfn", "mosi"): {
        "file": "unaligned_50.pkl",
        "batch": 32,
        "lr": 1e-3,
        "wd": 0.0,
        "net": {
            "text_hidden": 128,
            "audio_hidden": 32,
            "vision_hidden": 128,
            "text_out": 32,
            "post_fusion_dim": 64,
            "audio_dropout": 0.3,
            "vision_dropout": 0.3,
            "text_dropout": 0.3,
            "post_fusion_dropout": 0.5,
        },
    },
    ("tfn", "mosei"): {
        "file": "unaligned_50.pkl",
        "batch": 128,
        "lr": 5e-3,
        "wd": 0.0,
        "net": {
            "text_hidden": 128,
            "audio_hidden": 16,
            "vision_hidden": 128,
            "text_out": 128,
            "post_fusion_dim": 16,
            "audio_dropout": 0.4,
            "vision_dropout": 0.4,
            "text_dropout": 0.4,
            "post_fusion_dropout": 0.4,
        },
    },
    # lmf: text_out = text_hidden // 2 in MMSA's LMF; factor_lr == learning_rate; the post-fusion dropout is unused.
    ("lmf", "mosi"): {
        "file": "unaligned_50.pkl",
        "batch": 64,
        "lr": 1e-3,
        "wd": 5e-3,
        "net": {
            "text_hidden": 128,
            "text_out": 64,
            "audio_hidden": 16,
            "vision_hidden": 128,
            "rank": 3,
            "text_dropout": 0.3,
            "audio_dropout": 0.3,
            "vision_dropout": 0.3,
        },
    },
    ("lmf", "mosei"): {
        "file": "unaligned_50.pkl",
        "batch": 32,
        "lr": 1e-3,
        "wd": 1e-3,
        "net": {
            "text_hidden": 128,
            "text_out": 64,
            "audio_hidden": 16,
            "vision_hidden": 128,
            "rank": 4,
            "text_dropout": 0.2,
            "audio_dropout": 0.2,
            "vision_dropout": 0.2,
        },
    },
    # mfn: NN1Config -> attention, NN2Config -> proposal, gamma1Config -> retain, gamma2Config -> update, outConfig.
    ("mfn", "mosi"): {
        "file": "aligned_50.pkl",
        "batch": 128,
        "lr": 2e-3,
        "wd": 0.0,
        "net": dict(cell="lstm", **MFN_MOSI),
    },
    ("mfn", "mosei"): {
        "file": "aligned_50.pkl",
        "batch": 64,
        "lr": 5e-4,
        "wd": 1e-4,
        "net": {
            "text_hidden": 128,
            "audio_hidden": 32,
            "vision_hidden": 128,
            "memory_dim": 128,
            "attention_hidden": 128,
            "attention_dropout": 0.2,
            "proposal_hidden": 128,
            "proposal_dropout": 0.5,
            "retain_hidden": 256,
            "retain_dropout": 0.7,
            "update_hidden": 256,
            "update_dropout": 0.0,
            "output_hidden": 128,
            "output_dropout": 0.5,
        },
    },
    # mfm: MMSA's MFM trainer builds Adam(weight_decay=...) without lr, so the json's learning_rate (0.002 on MOSI)
    # is unused and the rate is Adam's default 1e-3.
    ("mfm", "mosi"): {
        "file": "aligned_50.pkl",
        "batch": 64,
        "lr": 1e-3,
        "wd": 1e-3,
        "net": {
            "text_hidden": 128,
            "audio_hidden": 32,
            "vision_hidden": 128,
            "memory_dim": 64,
            "attention_hidden": 32,
            "attention_dropout": 0.7,
            "proposal_hidden": 64,
            "proposal_dropout": 0.0,
            "retain_hidden": 32,
            "retain_dropout": 0.0,
            "update_hidden": 64,
            "update_dropout": 0.5,
            "zy_dim": 80,
            "zt_dim": 64,
            "za_dim": 80,
            "zv_dim": 80,
            "fy_dim": 64,
            "ft_dim": 32,
            "fa_dim": 16,
            "fv_dim": 64,
            "zy_dropout": 0.5,
            "zt_dropout": 0.5,
            "za_dropout": 0.7,
            "zv_dropout": 0.5,
            "fy_dropout": 0.0,
            "mmd_weight": 100.0,
            "text_recon_weight": 0.5,
            "audio_recon_weight": 0.01,
            "vision_recon_weight": 0.5,
        },
    },
    ("mfm", "mosei"): {
        "file": "aligned_50.pkl",
        "batch": 64,
        "lr": 1e-3,
        "wd": 5e-4,
        "net": {
            "text_hidden": 256,
            "audio_hidden": 32,
            "vision_hidden": 256,
            "memory_dim": 64,
            "attention_hidden": 1278,
            "attention_dropout": 0.5,
            "proposal_hidden": 32,
            "proposal_dropout": 0.7,
            "retain_hidden": 64,
            "retain_dropout": 0.5,
            "update_hidden": 128,
            "update_dropout": 0.2,
            "zy_dim": 32,
            "zt_dim": 256,
            "za_dim": 80,
            "zv_dim": 80,
            "fy_dim": 16,
            "ft_dim": 32,
            "fa_dim": 80,
            "fv_dim": 32,
            "zy_dropout": 0.2,
            "zt_dropout": 0.7,
            "za_dropout": 0.7,
            "zv_dropout": 0.7,
            "fy_dropout": 0.2,
            "mmd_weight": 10.0,
            "text_recon_weight": 5.0,
            "audio_recon_weight": 2.0,
            "vision_recon_weight": 5.0,
        },
    },
    # raven (not in MMSA): authors' consts.py (batch_size 20, learning_rate 1e-3, dropProb 0.2, normDim 150,
    # cellDim 150, hiddenDim 300, shift_weight 0.2, shift_padding_len 20); MOSEI: no released settings, same values.
    **{
        ("raven", ds): {
            "file": "unaligned_50.pkl",
            "batch": 20,
            "lr": 1e-3,
            "wd": 0.0,
            "net": {
                "frame_dim": 150,
                "nonverbal_hidden": 150,
                "sentence_hidden": 300,
                "dropout": 0.2,
                "shift_weight": 0.2,
                "max_frames_per_word": 20,
            },
        }
        for ds in ("mosi", "mosei")
    },
    # mult: dst_feature_dim_nheads [dim, heads], nlevels, conv1d_kernel_size_{l,a,v}; MulT trainer: Adam(lr) without
    # the json's weight_decay (0.005 / 0.001 unused), ReduceLROnPlateau(factor 0.1, patience) on the val loss.
    ("mult", "mosi"): {
        "file": "unaligned_50.pkl",
        "batch": 16,
        "lr": 2e-3,
        "wd": 0.0,
        "accumulate": 8,
        "clip": 0.6,
        "sched_patience": 5,
        "net": {
            "dim": 50,
            "num_heads": 10,
            "num_layers": 4,
            "text_kernel_size": 5,
            "audio_kernel_size": 5,
            "vision_kernel_size": 5,
            "text_dropout": 0.5,
            "attn_dropout": 0.3,
            "audio_attn_dropout": 0.2,
            "vision_attn_dropout": 0.0,
            "relu_dropout": 0.0,
            "res_dropout": 0.0,
            "embed_dropout": 0.2,
            "output_dropout": 0.5,
        },
    },
    ("mult", "mosei"): {
        "file": "unaligned_50.pkl",
        "batch": 4,
        "lr": 5e-4,
        "wd": 0.0,
        "accumulate": 8,
        "clip": 0.6,
        "sched_patience": 20,
        "net": {
            "dim": 30,
            "num_heads": 6,
            "num_layers": 4,
            "text_kernel_size": 5,
            "audio_kernel_size": 1,
            "vision_kernel_size": 3,
            "text_dropout": 0.3,
            "attn_dropout": 0.4,
            "audio_attn_dropout": 0.0,
            "vision_attn_dropout": 0.0,
            "relu_dropout": 0.0,
            "res_dropout": 0.0,
            "embed_dropout": 0.0,
            "output_dropout": 0.5,
        },
    },
    # misa: use_bert + use_finetune -> BERT fine-tuned by the one Adam(lr) (no weight decay passed: MOSEI's 5e-5 unused).
    ("misa", "mosi"): {
        "file": "unaligned_50.pkl",
        "batch": 16,
        "lr": 1e-4,
        "wd": 0.0,
        "accumulate": 2,
        "clip": 0.8,
        "net": {
            "hidden_size": 128,
            "dropout": 0.2,
            "diff_weight": 0.1,
            "sim_weight": 0.3,
            "recon_weight": 1.0,
            "text_encoder": BERT,
        },
    },
    ("misa", "mosei"): {
        "file": "unaligned_50.pkl",
        "batch": 64,
        "lr": 1e-4,
        "wd": 0.0,
        "accumulate": 2,
        "clip": 0.8,
        "net": {
            "hidden_size": 128,
            "dropout": 0.5,
            "diff_weight": 0.3,
            "sim_weight": 0.8,
            "recon_weight": 1.0,
            "text_encoder": BERT,
        },
    },
    # self_mm: learning_rate_{bert,audio,video,other} -> lr (other) x lr_multipliers; weight_decay_* likewise.
    ("self_mm", "mosi"): {
        "file": "unaligned_50.pkl",
        "batch": 16,
        "lr": 1e-3,
        "wd": 1e-3,
        "accumulate": 4,
        "lr_multipliers": {"text_encoder.": 0.05, "audio_net.": 5.0, "vision_net.": 5.0},
        "net": {
            "text_encoder": BERT,
            "audio_rnn_hidden": 16,
            "vision_rnn_hidden": 32,
            "audio_out": 16,
            "vision_out": 32,
            "audio_rnn_dropout": 0.0,
            "vision_rnn_dropout": 0.0,
            "fusion_dim": 128,
            "text_dim": 32,
            "audio_dim": 16,
            "vision_dim": 32,
            "fusion_dropout": 0.0,
            "text_dropout": 0.1,
            "audio_dropout": 0.1,
            "vision_dropout": 0.0,
            "label_bound": 3.0,
        },
    },
    ("self_mm", "mosei"): {
        "file": "unaligned_50.pkl",
        "batch": 32,
        "lr": 1e-3,
        "wd": 1e-2,
        "accumulate": 4,
        "lr_multipliers": {"text_encoder.": 0.05, "audio_net.": 5.0, "vision_net.": 0.1},
        "weight_decays": {"text_encoder.": 1e-3, "audio_net.": 0.0, "vision_net.": 0.0},
        "net": {
            "text_encoder": BERT,
            "audio_rnn_hidden": 16,
            "vision_rnn_hidden": 32,
            "audio_out": 16,
            "vision_out": 32,
            "audio_rnn_dropout": 0.0,
            "vision_rnn_dropout": 0.0,
            "fusion_dim": 128,
            "text_dim": 32,
            "audio_dim": 16,
            "vision_dim": 32,
            "fusion_dropout": 0.1,
            "text_dropout": 0.0,
            "audio_dropout": 0.0,
            "vision_dropout": 0.0,
            "label_bound": 3.0,
        },
    },
    # bert_mag: Adam(lr, weight_decay 0.0) over the whole model, BERT included.
    ("mag_bert", "mosi"): {
        "file": "aligned_50.pkl",
        "batch": 32,
        "lr": 2e-5,
        "wd": 0.0,
        "net": {"text_encoder": BERT, "beta_shift": 1.0, "dropout": 0.3},
    },
    ("mag_bert", "mosei"): {
        "file": "aligned_50.pkl",
        "batch": 32,
        "lr": 1e-5,
        "wd": 0.0,
        "net": {"text_encoder": BERT, "beta_shift": 1.0, "dropout": 0.2},
    },
}
CASES = sorted(EXPECTED)


def _chain(model: str, dataset: str) -> tuple[Path, ...]:
    return config_files(bench.MODELS[model][dataset])


def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def test_every_baseline_has_a_mosi_config_and_a_mosei_delta() -> None:
    assert {m for m, _ in EXPECTED} == set(BASELINES) == set(bench.MODELS) - {"hgcl"}
    for model in BASELINES:
        assert len(bench.MODELS[model]["mosi"]) == 1, f"{model}: the MOSI config is a complete config"
        (mosi,) = _chain(model, "mosi")
        assert _chain(model, "mosei") == (mosi, mosi.with_name(mosi.name.replace("_mosi", "_mosei")))
        mosei = _chain(model, "mosei")[1]
        text = mosi.read_text()
        assert text.startswith("#"), f"{mosi.name}: the first line must be a comment"
        assert str(mosi.relative_to(REPO)) in text, f"{mosi.name}: run command missing"
        assert f"--config {mosi.relative_to(REPO)} --config {mosei.relative_to(REPO)}" in mosei.read_text(), (
            f"{mosei.name}: its header must show the command that composes it after {mosi.name}"
        )


@pytest.mark.parametrize("case", CASES, ids=[f"{m}_{d}" for m, d in CASES])
def test_config_has_mmsa_hyperparameters(case: tuple[str, str]) -> None:
    model, dataset = case
    exp = EXPECTED[case]
    cfg = compose_configs(_chain(model, dataset))
    path = Path(_get(cfg, "data.init_args.path"))
    assert path.name == exp["file"] and path.parent.name == dataset
    assert _get(cfg, "data.init_args.dataset_name") == dataset
    assert _get(cfg, "data.init_args.batch_size") == exp["batch"]
    assert _get(cfg, "model.init_args.loss") == "l1"
    opt = _get(cfg, "model.init_args.optimizer")
    assert opt["class_path"] == "torch.optim.Adam"
    assert opt["init_args"]["lr"] == pytest.approx(exp["lr"])
    assert opt["init_args"].get("weight_decay", 0.0) == pytest.approx(exp["wd"])
    net = _get(cfg, "model.init_args.net.init_args")
    for key, value in exp["net"].items():
        assert net.get(key) == value, (key, net.get(key), value)
    assert (_get(cfg, "model.init_args.lr_multipliers") or {}) == exp.get("lr_multipliers", {})
    assert (_get(cfg, "model.init_args.weight_decays") or {}) == exp.get("weight_decays", {})
    trainer = cfg["trainer"]
    assert trainer.get("accumulate_grad_batches", 1) == exp.get("accumulate", 1)
    assert trainer.get("gradient_clip_val") == exp.get("clip")
    if exp.get("clip") is not None:
        assert trainer["gradient_clip_algorithm"] == "value"  # MMSA: clip_grad_value_
    stops = [c for c in trainer["callbacks"] if c["class_path"].endswith("EarlyStopping")]
    assert len(stops) == 1 and stops[0]["init_args"] == {"monitor": "val/mae", "mode": "min", "patience": 8}
    assert cfg["checkpoint"]["monitor"] == "val/mae"
    sched = _get(cfg, "model.init_args.scheduler")
    if "sched_patience" in exp:
        assert sched["class_path"].endswith("ReduceLROnPlateau")
        assert sched["init_args"] == {"mode": "min", "factor": 0.1, "patience": exp["sched_patience"]}
    else:
        assert sched is None
    assert cfg["checkpoint"]["dirpath"] == f"runs/{Path(bench.MODELS[model][dataset][-1]).stem}/checkpoints"


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("baseline_cfg")
    return {
        "aligned": str(write_mmsa_pickle(root / "a", aligned=True)),
        "unaligned": str(write_mmsa_pickle(root / "u", aligned=False)),
        "bert": write_tiny_bert(root / "tiny_bert"),
    }


@pytest.mark.parametrize("case", CASES, ids=[f"{m}_{d}" for m, d in CASES])
def test_baseline_config_composes_and_fast_dev_runs(
    case: tuple[str, str], tmp_path: Path, fakes: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through LightningCLI (several ``--config``): the composed values reach the built objects."""
    model, dataset = case
    exp = EXPECTED[case]
    monkeypatch.setattr("sys.argv", ["cli.py"])
    args = []
    for path in _chain(model, dataset):
        args += ["--config", str(path)]
    args += [
        "--data.init_args.path",
        fakes["aligned" if exp["file"].startswith("aligned") else "unaligned"],
        "--data.init_args.dataset_name",
        "null",  # the fakes do not have the standard split sizes
        "--trainer.fast_dev_run",
        "true",
        "--trainer.accelerator",
        "cpu",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--checkpoint.dirpath",
        str(tmp_path / "ckpt"),
    ]
    if "text_encoder" in exp["net"]:
        args += ["--model.init_args.net.init_args.text_encoder", fakes["bert"]]
    cli = cli_main(args, run=False)
    net_cfg = cli.config.model.init_args.net.init_args
    for key, value in exp["net"].items():
        if key != "text_encoder":
            assert net_cfg[key] == value, key
    assert cli.datamodule.hparams.batch_size == exp["batch"]
    assert cli.trainer.accumulate_grad_batches == exp.get("accumulate", 1)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])
    groups = {g["name"]: g for g in cli.model.optimizers().optimizer.param_groups}
    assert groups["base"]["lr"] == pytest.approx(exp["lr"])
    for prefix, mult in exp.get("lr_multipliers", {}).items():
        assert groups[prefix]["lr"] == pytest.approx(exp["lr"] * mult)
    for prefix, decay in exp.get("weight_decays", {}).items():
        assert groups[prefix]["weight_decay"] == pytest.approx(decay)
