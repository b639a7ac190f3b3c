"""pipelines/recording.py: the inference-only recording pipeline (issue #21).

The fast tests build an HGCL checkpoint by hand (nested parts included) over a tiny reference file with an
``extractor`` header, and check loading and the errors, which come before any extraction and name the file. The slow
test trains the tiny model of ``tests/test_recording_e2e.py`` on espeak-ng recordings (skipping without espeak-ng or
JAFFE) and checks that the pipeline's table is the ``cli.py predict`` CSV.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from common.checkpoint import CheckpointError
from features.extract import ExtractorSettings
from features.mmsa_format import save_npz
from features.recording import RecordingInputError
from features.sentiment_report import CSV_COLUMNS
from features.synthetic_recordings import espeak_available
from pipelines import RecordingPipeline, RecordingResult
from pipelines.recording import MODEL_PARTS, MSA_NETS
from tests.fakes import make_mmsa_dict
from tests.test_recording_e2e import trained  # noqa: F401 - the fixture: the tiny model trained on recordings

REPO = Path(__file__).resolve().parents[2]
DIMS = {"text": 16, "audio": 5, "vision": 7}
LENS = {"text": 10, "audio": 12, "vision": 8}
HGCL_ARGS = {"dim": 16, "heads": 2, "max_nodes_per_modality": 6, "codebook_size": 8, "proj_dim": 8, "head_hidden": 8,
             "pretrained": "/nowhere/weights.pt",  # a weight-file argument: dropped, never opened
             "gnn": {"class_path": "models.hgcl.GNNEncoder", "init_args": {"gnn": "gcn", "num_layers": 3}},
             "graph_builder": {"class_path": "models.hgcl.MultimodalGraphBuilder",
                               "init_args": {"cross_edges": "cooccur"}}}


def _reference(path: Path) -> Path:
    data = make_mmsa_dict(4, 2, 2, True, (16, 5, 7), None, True, "mmsa", 0)
    data["extractor"] = json.dumps({"settings": ExtractorSettings().as_dict(), "seq_lens": LENS,
                                    "feature_names": {m: [f"{m}_{i}" for i in range(d)] for m, d in DIMS.items()}})
    return save_npz(data, path)


def _hgcl_checkpoint(tmp_path: Path, reference: Path | None = None, **hp) -> tuple[Path, torch.nn.Module]:
    """An HGCL checkpoint as ``cli.py fit`` writes one (system, net spec, sizes, ``net.`` weights)."""
    from functools import partial

    from models.hgcl import HGCL, GNNEncoder, MultimodalGraphBuilder

    init = {k: v for k, v in HGCL_ARGS.items() if k not in ("pretrained", "gnn", "graph_builder")}
    torch.manual_seed(0)
    net = HGCL(DIMS, LENS, gnn=partial(GNNEncoder, gnn="gcn", num_layers=3),
               graph_builder=MultimodalGraphBuilder(cross_edges="cooccur"), **init)
    hparams = {"_class_path": "lightning_modules.msa.LitMSA", "net": {"class_path": "models.hgcl.HGCL",
                                                                      "init_args": HGCL_ARGS},
               "feature_dims": DIMS, "seq_lens": LENS, **hp}
    ckpt = tmp_path / "msa.ckpt"
    torch.save({"hyper_parameters": hparams,
                "datamodule_hyper_parameters": {"path": str(reference or _reference(tmp_path / "ref.npz"))},
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, ckpt)
    return ckpt, net


def test_msa_checkpoint_rebuilds_its_net_and_parts(tmp_path) -> None:
    ckpt, net = _hgcl_checkpoint(tmp_path)
    pipe = RecordingPipeline.from_checkpoint(ckpt)
    assert type(pipe.net).__name__ == "HGCL" and not pipe.net.training
    assert pipe.net.gnn_local.gnn == "gcn" and pipe.net.gnn_local.num_layers == 3
    assert pipe.net.builder.cross_edges == "cooccur"
    for (name, a), (_, b) in zip(net.state_dict().items(), pipe.net.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert pipe.reference == str(tmp_path / "ref.npz") and pipe.seq_lens == LENS and "HGCL" in repr(pipe)
    assert "models.hgcl.HGCL" in MSA_NETS and "models.tfn.TFN" in MSA_NETS
    assert "models.timm_classifier.TimmClassifier" not in MSA_NETS and "models.hgcl.GNNEncoder" in MODEL_PARTS


def test_errors_name_the_file_and_come_before_any_work(tmp_path) -> None:
    ckpt, _ = _hgcl_checkpoint(tmp_path)
    pipe = RecordingPipeline.from_checkpoint(ckpt)
    missing = tmp_path / "absent.mp4"
    with pytest.raises(RecordingInputError, match=r"video .*absent\.mp4 not found"):
        pipe(missing)
    video = tmp_path / "talk.mp4"
    video.write_bytes(b"never decoded")
    with pytest.raises(RecordingInputError) as err:
        pipe(video, output_dir=tmp_path / "out")
    for name in ("talk.srt", "talk.vtt", "talk.csv", "transcript=FILE", "--transcript FILE", "speech-to-text"):
        assert name in str(err.value)
    with pytest.raises(RecordingInputError, match=r"transcript .*nope\.srt not found"):
        pipe(video, transcript=tmp_path / "nope.srt")
    (tmp_path / "talk.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sentiment.csv").write_text("id\n")
    with pytest.raises(FileExistsError, match=r"sentiment\.csv already exists.*overwrite='replace'"):
        pipe(video, output_dir=tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sentiment.csv"]  # nothing extracted


def test_a_face_checkpoint_is_refused_naming_it() -> None:
    from models.shipped import shipped_checkpoint

    face = shipped_checkpoint()
    with pytest.raises(CheckpointError) as err:
        RecordingPipeline.from_checkpoint(face)
    msg = str(err.value)
    assert str(face) in msg and "LitFER" in msg and "ClassroomPipeline" in msg


def test_nets_outside_the_allow_list_are_refused_before_import(tmp_path, monkeypatch) -> None:
    """A class path off the lists is refused naming the file; a module it names is never imported (``evil_net``, on
    ``sys.path``, would leave a file behind). The lists come from importing ``models/`` (``models.registry``), so a
    module of ``models/`` may be imported: only the project's own code runs."""
    import sys

    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "evil_net.py").write_text(f"open({str(evil / 'imported')!r}, 'w').close()\n"
                                      "import torch\nclass EvilNet(torch.nn.Module):\n"
                                      "    def __init__(self, feature_dims, seq_lens):\n        super().__init__()\n")
    monkeypatch.syspath_prepend(str(evil))
    ckpt, _ = _hgcl_checkpoint(tmp_path)
    raw = torch.load(ckpt, weights_only=True)
    del raw["hyper_parameters"]["_class_path"]  # a checkpoint that does not name its system
    for path in ("models.timm_classifier.TimmClassifier", "os.system", "models.hgcl.hgcl.torch.nn.Linear",
                 "evil_net.EvilNet", "torch.nn.Linear"):
        raw["hyper_parameters"]["net"]["class_path"] = path
        torch.save(raw, tmp_path / "bad.ckpt")
        with pytest.raises(CheckpointError, match=rf"bad\.ckpt.*{path.replace('.', '[.]')}.*not one of"):
            RecordingPipeline.from_checkpoint(tmp_path / "bad.ckpt")
    assert "evil_net" not in sys.modules and not (evil / "imported").exists()
    raw["hyper_parameters"]["net"] = {"class_path": "models.hgcl.HGCL",
                                      "init_args": {**HGCL_ARGS, "gnn": {"class_path": "builtins.eval"}}}
    torch.save(raw, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match=r"builtins\.eval.*net\.init_args\.gnn\.class_path"):
        RecordingPipeline.from_checkpoint(tmp_path / "bad.ckpt")


def test_a_demo_file_model_is_refused_naming_its_training_file(tmp_path) -> None:
    from tests.fakes import write_mmsa_pickle

    demo = write_mmsa_pickle(tmp_path / "mosi_demo.pkl")  # no `extractor` header
    ckpt, _ = _hgcl_checkpoint(tmp_path, reference=demo)
    with pytest.raises(RecordingInputError) as err:
        RecordingPipeline.from_checkpoint(ckpt)
    msg = str(err.value)
    assert str(ckpt) in msg and str(demo) in msg and "no `extractor` header" in msg
    with pytest.raises(FileNotFoundError, match=r"reference feature file .*gone\.npz not found"):
        RecordingPipeline.from_checkpoint(ckpt, reference=tmp_path / "gone.npz")


# ------------------------------------------------------------------------------------------ against cli.py predict
@pytest.mark.slow
@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_pipeline_table_is_the_cli_predict_csv(trained, shared_data) -> None:  # noqa: F811 - the fixture
    from cli import cli_main
    from features.synthetic_recordings import espeak, write_recording
    from tests.test_recording_e2e import SR, _faces

    root, _feat, run = trained
    faces = _faces(shared_data)
    parts, cues, t = [], [], 0.0
    for i, text in enumerate(["I love this", "this is awful", "well it was fine"]):
        y = espeak(text)
        parts += [y, np.zeros(int(0.3 * SR), np.float32)]
        end = t + len(y) / SR + 0.3
        cues.append(f"{i + 1}\n00:00:{t:06.3f} --> 00:00:{end:06.3f}\n{text}\n".replace(".", ","))
        t = end
    talk = root / "talk" / "talk.mp4"
    write_recording(talk, faces[7], np.concatenate(parts), size=(192, 144))
    (root / "talk" / "talk.srt").write_text("\n".join(cues))
    ckpt = run / "checkpoints" / "last.ckpt"
    out = root / "pred"
    cli_main(["predict", "--config", str(REPO / "configs/predict/predict_recording.yaml"), "--ckpt_path", str(ckpt),
              "--data.init_args.video", str(talk), "--data.init_args.output_dir", str(out),
              "--trainer.callbacks.init_args.output_dir", str(out), "--checkpoint.dirpath", str(out / "ckpt"),
              "--trainer.enable_progress_bar", "false"])
    expected = pd.read_csv(out / "sentiment.csv", keep_default_na=False)

    pipe = RecordingPipeline.from_checkpoint(ckpt)
    result = pipe(talk, output_dir=root / "pipe")
    assert isinstance(result, RecordingResult) and result.transcript == str(talk.with_suffix(".srt"))
    table = result.table
    assert list(table.columns) == list(CSV_COLUMNS) == list(expected.columns)
    assert table["id"].tolist() == ["talk$_$1", "talk$_$2", "talk$_$3"]
    for col in ("id", "source", "text", "class2", "class7_name"):
        assert table[col].astype(str).tolist() == expected[col].astype(str).tolist(), col
    assert table["class7"].tolist() == expected["class7"].tolist()
    np.testing.assert_array_equal(table[["start_s", "end_s"]].to_numpy(float),
                                  expected[["start_s", "end_s"]].to_numpy(float))
    np.testing.assert_allclose(table["score"].to_numpy(float), expected["score"].to_numpy(float), rtol=0, atol=1e-5)
    written = pd.read_csv(root / "pipe" / "sentiment.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(written, expected, check_exact=False, atol=1e-5, rtol=0)
    assert sorted(f.name for f in result.files) == ["sentiment.csv", "sentiment_talk.png"]
    assert (root / "pipe" / "sentiment_talk.png").stat().st_size > 1000
    assert sorted(p.name for p in (root / "pipe").iterdir()) == ["sentiment.csv", "sentiment_talk.png"]
    with pytest.raises(FileExistsError, match="sentiment.csv already exists"):
        pipe(talk, output_dir=root / "pipe")


def test_command_line_errors_name_the_file(tmp_path, capsys) -> None:
    from models.shipped import shipped_checkpoint
    from pipelines.recording import main

    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "talk.mp4"), "--ckpt", str(shipped_checkpoint())])
    assert stop.value.code == 1 and str(shipped_checkpoint()) in capsys.readouterr().err
    ckpt, _ = _hgcl_checkpoint(tmp_path)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "talk.mp4"), "--ckpt", str(ckpt), "--out", str(tmp_path / "out")])
    assert "talk.mp4 not found" in capsys.readouterr().err and not (tmp_path / "out").exists()
