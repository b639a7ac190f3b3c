"""One allow-list of model classes (issue #21): the recording pipeline (``pipelines.recording``, no Lightning) and the
Lightning readers (``lightning_modules.checkpoint_io``) check the class paths a checkpoint names against the one
derivation of ``models/``'s classes, ``models.registry``; both accept the same MSA nets and refuse the same crafted
class paths, naming the file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointError
from lightning_modules.checkpoint_io import PROJECT_CLASSES, _project_classes, load_system
from lightning_modules.msa import LitMSA
from models.registry import FACE_NETS, MODEL_PARTS, MSA_NETS, is_msa_net, model_classes, msa_net_paths
from pipelines import RecordingPipeline, recording

DIMS = {"text": 16, "audio": 5, "vision": 7}
LENS = {"text": 10, "audio": 12, "vision": 8}


def test_both_readers_use_the_one_derivation_of_model_classes() -> None:
    classes = model_classes()
    project = PROJECT_CLASSES.allowed
    # the project-wide list holds exactly the model class paths models.registry derives, no other models.* path
    assert {p for p in project if p.split(".")[0] == "models"} == set(classes)
    assert set(_project_classes()[1]) >= set(classes)
    # the pipeline's lists are models.registry's objects, not a list of its own
    assert recording.MSA_NETS is MSA_NETS and recording.MODEL_PARTS is MODEL_PARTS
    assert MODEL_PARTS.allowed == frozenset(classes)
    assert not hasattr(recording, "_model_classes")


def test_both_readers_accept_the_same_msa_nets() -> None:
    classes = model_classes()
    msa_on_project_list = {p for p in PROJECT_CLASSES.allowed if p in classes and is_msa_net(classes[p])}
    assert msa_on_project_list == MSA_NETS.allowed == msa_net_paths()
    for name in ("models.hgcl.HGCL", "models.hgcl.hgcl.HGCL", "models.tfn.TFN", "models.mult.MulT", "models.lmf.LMF",
                 "models.misa.MISA", "models.self_mm.SelfMM", "models.mfn.MFN", "models.mag_bert.MAGBERT"):
        assert name in MSA_NETS and name in PROJECT_CLASSES, name
    # the nets of other tasks and the parts are on the project list, but are not MSA nets
    for name in (*FACE_NETS, "models.hgcl.GNNEncoder", "models.diffusion.ConditionalLatentUNet"):
        assert name in PROJECT_CLASSES and name in MODEL_PARTS and name not in MSA_NETS, name
    for name in FACE_NETS:
        assert name in classes, name


CRAFTED = ("os.system", "builtins.eval", "subprocess.Popen", "collections.UserDict", "torch.nn.Linear",
           "models.hgcl.hgcl.torch.nn.Linear", "evil_net.EvilNet")


def _msa_checkpoint(path: Path, net: dict) -> Path:
    torch.save({"hyper_parameters": {"_class_path": "lightning_modules.msa.LitMSA", "net": net,
                                     "feature_dims": DIMS, "seq_lens": LENS},
                "state_dict": {}}, path)
    return path


@pytest.fixture()
def evil(tmp_path: Path, monkeypatch) -> Path:
    """A module ``evil_net`` on ``sys.path`` that leaves ``imported`` behind when it is imported."""
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "evil_net.py").write_text(f"open({str(folder / 'imported')!r}, 'w').close()\n"
                                        "import torch\nclass EvilNet(torch.nn.Module):\n"
                                        "    def __init__(self, feature_dims, seq_lens):\n        super().__init__()\n")
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.mark.parametrize("class_path", CRAFTED)
@pytest.mark.parametrize("where", ["net", "part"])
def test_both_readers_refuse_a_crafted_class_path_naming_the_file(tmp_path, evil, class_path, where) -> None:
    if where == "net":
        net, at = {"class_path": class_path, "init_args": {}}, "hyper_parameters.net.class_path"
    else:
        net = {"class_path": "models.hgcl.HGCL", "init_args": {"gnn": {"class_path": class_path}}}
        at = "hyper_parameters.net.init_args.gnn.class_path"
    ckpt = _msa_checkpoint(tmp_path / "crafted.ckpt", net)
    message = rf"crafted\.ckpt'? names '{class_path.replace('.', '[.]')}' at {at.replace('.', '[.]')}, which is not"
    with pytest.raises(CheckpointError, match=message):
        RecordingPipeline.from_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=message):
        load_system(LitMSA, ckpt)
    assert "evil_net" not in sys.modules and not (evil / "imported").exists()
