"""Issue 24: any face checkpoint drives the classroom outputs (CLI and API alike), whatever net the prediction config
names; the frame stride has one default and the run says how many frames it analysed; ``predict`` and ``test``
never replace the training run's ``config.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from apps.classroom_api import analyze_video, default_every_n_frames
from tests.fakes_classroom import TINY_RESNET, classroom_video, tiny_predict_config, train_tiny_checkpoint


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A tiny ResNet-18 checkpoint trained WITH SUN descriptor maps (as configs/fer/baselines/resnet18_ckplus48.yaml
    does, although the net never reads them), the tiny predict config (which names a TwoBranchSwin) and a video."""
    tmp = tmp_path_factory.mktemp("tiny_resnet")
    ckpt = train_tiny_checkpoint(tmp, TINY_RESNET, descriptor="sun")
    video = classroom_video(tmp / "lesson.mp4", n_frames=6)
    return ckpt, tiny_predict_config(tmp, tmp / "unused_out"), video


def _predict_config(cfg: Path, tmp: Path, out: Path, net: dict | None = None, every_n: int | None = None) -> Path:
    conf = yaml.safe_load(cfg.read_text())
    conf["trainer"]["callbacks"][0]["init_args"]["output_dir"] = str(out)
    conf["checkpoint"] = {"dirpath": str(out / "checkpoints")}
    if net is not None:
        conf["model"]["init_args"]["net"] = net
    if every_n is not None:
        conf["data"]["init_args"]["every_n_frames"] = every_n
    path = tmp / "predict.yaml"
    path.write_text(yaml.safe_dump(conf))
    return path


def test_resnet_checkpoint_through_the_cli_with_the_swin_predict_config(resnet, tmp_path) -> None:
    """This was `CheckpointError: ... the net class differs`: the config's TwoBranchSwin is replaced by the
    checkpoint's TimmClassifier, and its SUN maps are not computed (the net takes the image only)."""
    from cli import cli_main

    ckpt, cfg, video = resnet
    run_dir = ckpt.parents[1]
    training_config = (run_dir / "config.yaml").read_text()
    out = tmp_path / "out"
    cli = cli_main(["predict", "--config", str(_predict_config(cfg, tmp_path, out)), "--ckpt_path", str(ckpt),
                    "--data.init_args.source", str(video)])
    assert type(cli.model.net).__name__ == "TimmClassifier"
    assert cli.datamodule.preprocessing.descriptor.kind == "none"  # trained with 'sun'; the net reads no descriptor
    files = {p.name for p in out.iterdir()}
    assert {"emotions.csv", "summary.csv", "run_info.json", "annotated_lesson.mp4", "config_predict.yaml"} <= files
    assert "config.yaml" not in files
    info = json.loads((out / "run_info.json").read_text())
    assert info["frames_analysed"] == "6 of 6 frames (every frame)" and info["students"] == 2
    assert (run_dir / "config.yaml").read_text() == training_config  # predict never touches the training config


def test_resnet_checkpoint_through_the_api_with_the_config_stride(resnet, tmp_path) -> None:
    """The API's default stride is the config's (one in 3 here): frames 0 and 3 of 6, said in the result."""
    ckpt, cfg, video = resnet
    conf = _predict_config(cfg, tmp_path, tmp_path / "unused", every_n=3)
    assert default_every_n_frames(conf) == 3
    df = analyze_video(video, ckpt, tmp_path / "out", config=conf)
    assert sorted(df["frame"].unique()) == [0, 3]
    assert df.attrs["frames_analysed"] == "2 of 6 frames (one in 3)"


def test_swin_checkpoint_through_a_config_that_names_a_resnet(tmp_path_factory, tmp_path) -> None:
    """The other way round: a two-branch Swin checkpoint (with its SUN maps) predicted through a config whose
    model section names a ResNet."""
    from cli import cli_main

    tmp = tmp_path_factory.mktemp("tiny_swin")
    ckpt = train_tiny_checkpoint(tmp)
    video = classroom_video(tmp_path / "lesson.mp4", n_frames=4)
    cfg = _predict_config(tiny_predict_config(tmp, tmp / "unused"), tmp_path, tmp_path / "out", net=TINY_RESNET)
    cli = cli_main(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt),
                    "--data.init_args.source", str(video)])
    assert type(cli.model.net).__name__ == "TwoBranchSwin" and cli.datamodule.preprocessing.descriptor.kind == "sun"
    assert json.loads((tmp_path / "out" / "run_info.json").read_text())["faces"] == 8


def test_the_shipped_config_and_the_page_share_one_stride() -> None:
    from apps.classroom_api import DEFAULT_CONFIG

    shipped = yaml.safe_load(DEFAULT_CONFIG.read_text())["data"]["init_args"]["every_n_frames"]
    assert default_every_n_frames() == shipped == 5


@pytest.mark.parametrize("flag,value", [("image_size", "64"), ("descriptor", "lbp"), ("predict_source", "x.mp4")])
def test_a_preprocessing_or_misspelt_data_flag_is_an_error_naming_it(resnet, tmp_path, capsys, flag, value) -> None:
    """The preprocessing is the checkpoint's, not a setting of the prediction datamodule: a flag that would change
    it (or an old ``predict_*`` name) is refused by the parser, which names it, before anything runs."""
    from cli import cli_main

    ckpt, cfg, video = resnet
    with pytest.raises(SystemExit):
        cli_main(["predict", "--config", str(_predict_config(cfg, tmp_path, tmp_path / "out")), "--ckpt_path",
                  str(ckpt), "--data.init_args.source", str(video), f"--data.init_args.{flag}", value])
    assert flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
