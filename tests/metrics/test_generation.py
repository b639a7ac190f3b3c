import pytest
import torch
from torch import nn

from metrics.generation import QualityFilter, generation_quality, load_image_folder
from models.frozen_classifier import ClassifierView, FrozenImageEncoder


class LinearClassifier(nn.Module):
    """timm-like classifier: features = mean colour per channel (3-d), logits = fixed linear map."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features, self.num_classes = 3, 2
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward_features(self, x):
        return x.mean(dim=(2, 3))

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc


def images(n, level, seed):
    g = torch.Generator().manual_seed(seed)
    return (level + 0.1 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)


def test_classifier_view_features_and_logits():
    clf = LinearClassifier()
    x = torch.full((2, 3, 8, 8), 0.75)
    f = ClassifierView(clf, "features", mean=(0.5,) * 3, std=(0.5,) * 3)(x)
    torch.testing.assert_close(f, torch.full((2, 3), 0.5))
    assert ClassifierView(clf, "logits")(x).shape == (2, 2)
    with pytest.raises(ValueError, match="output"):
        ClassifierView(clf, "pixels")


def test_fd_kid_floor_is_lower_than_a_shifted_generator():
    clf = LinearClassifier()
    real = torch.cat([images(40, 0.3, 0), images(40, 0.7, 1)])
    good = torch.cat([images(20, 0.3, 2), images(20, 0.7, 3)])
    bad = images(40, 0.95, 4)
    labels = torch.cat([torch.zeros(20), torch.ones(20)]).long()
    q_good = generation_quality(clf, real, good, labels, ["dark", "bright"], kid_subsets=5)
    q_bad = generation_quality(clf, real, bad, labels, ["dark", "bright"], kid_subsets=5)
    assert q_good["fd_clf"] < q_bad["fd_clf"]
    assert q_good["kid_clf"] < q_bad["kid_clf"]
    assert q_good["fd_clf_floor"] < q_bad["fd_clf"]
    assert q_good["fd_clf_floor"] == pytest.approx(q_bad["fd_clf_floor"])  # same real halves
    # the classifier calls values < 0.5 class 1 ("bright" has positive logit for negative features)
    assert q_good["acc_clf/dark"] == pytest.approx(0.0) and q_good["acc_clf/bright"] == pytest.approx(0.0)
    assert 1.0 <= q_good["is_clf"] <= 2.0 + 1e-4
    assert "fid_inception" not in q_good


def test_inception_path_needs_a_local_file(tmp_path):
    clf = LinearClassifier()
    real = images(16, 0.5, 0)
    with pytest.raises(FileNotFoundError, match="InceptionV3 weights"):
        generation_quality(clf, real, real[:8], torch.zeros(8).long(), ["a"], kid_subsets=2,
                           inception_weights=str(tmp_path / "pt_inception.pth"))


def test_quality_filter_confidence_and_memorisation(tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "data" / "a").mkdir(parents=True)
    ref = np.full((8, 8), 200, dtype=np.uint8)
    Image.fromarray(ref).save(tmp_path / "data" / "a" / "x.png")
    x, y, paths = load_image_folder(tmp_path / "data", ["a", "b"], 8)
    assert x.shape == (1, 3, 8, 8) and y.tolist() == [0] and paths[0].endswith("x.png")
    clf = LinearClassifier()
    qf = QualityFilter(clf, min_confidence=0.9, duplicate_metric="mse", duplicate_threshold=1e-3,
                       reference_root=str(tmp_path / "data"), class_names=["a", "b"])
    copy = x.clone()
    dark = torch.zeros(1, 3, 8, 8)
    res = qf(torch.cat([copy, dark, dark]), torch.tensor([0, 0, 1]))
    # copy of a real image -> memorised; dark image conditioned on class 0 -> low confidence; class 1 -> ok
    assert res["reason"] == ["memorised", "low_confidence", "ok"]
    assert res["accept"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="reference_root"):
        QualityFilter(clf, duplicate_metric="cosine")
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_image_folder(tmp_path / "nope", ["a"], 8)


def test_frozen_encoder_loads_lightning_checkpoint_prefix(tmp_path):
    torch.manual_seed(0)
    enc = FrozenImageEncoder("resnet10t", num_classes=3)
    state = {f"net.model.{k}": v + 1 for k, v in enc.model.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "clf.ckpt")
    loaded = FrozenImageEncoder("resnet10t", num_classes=3, checkpoint_path=str(tmp_path / "clf.ckpt"))
    k = "fc.weight"
    torch.testing.assert_close(loaded.model.state_dict()[k], enc.model.state_dict()[k] + 1)
    assert not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    loaded.train()
    assert not loaded.training
    loaded(x).sum().backward()  # gradients reach the input (eq. 2) but not the weights
    assert x.grad is not None and x.grad.abs().sum() > 0
    torch.save({"state_dict": {"other.w": torch.zeros(1)}}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match="matches only"):
        FrozenImageEncoder("resnet10t", num_classes=3, checkpoint_path=str(tmp_path / "bad.ckpt"))


@pytest.mark.slow
def test_standard_fid_and_is_from_a_local_inception_file(tmp_path, monkeypatch):
    """The standard FID/IS path loads InceptionV3 from a local file (here a randomly initialised one: the real
    weights cannot be downloaded on these machines) and never reaches the network."""
    pytest.importorskip("torch_fidelity")
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    from metrics.generation import inception_scores

    # Build a random-init InceptionV3 state dict without the download that the constructor would do.
    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    weights = tmp_path / "inception.pt"
    torch.save(net.state_dict(), weights)

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_network)
    g = torch.Generator().manual_seed(0)
    real, gen = torch.rand(6, 3, 32, 32, generator=g), torch.rand(6, 3, 32, 32, generator=g)
    out = inception_scores(real, gen, str(weights))
    assert set(out) == {"fid_inception", "is_inception"}
    assert out["fid_inception"] >= 0 and out["is_inception"] >= 1.0 - 1e-6
    # identical sets: FID ~ 0
    assert inception_scores(real, real, str(weights))["fid_inception"] < 1e-3 * (1 + out["fid_inception"])

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a plain InceptionV3 state dict"):
        inception_scores(real, gen, str(bad))


def test_the_classifier_normalisation_comes_from_its_checkpoint_once(tmp_path):
    """A classifier read from a LitFER checkpoint knows the mean/std it was trained with; the views over it (quality
    filter, generation metrics) use them, and a different value typed beside them is refused, not used."""
    enc = FrozenImageEncoder("resnet10t", num_classes=3)
    state = {f"net.model.{k}": v for k, v in enc.model.state_dict().items()}
    ckpt = tmp_path / "fer.ckpt"
    torch.save({"state_dict": state, "fer_preprocessing": {"version": 1, "settings": {
        "mean": [0.2, 0.3, 0.4], "std": [0.25, 0.5, 0.75]}}}, ckpt)
    trained = FrozenImageEncoder("resnet10t", num_classes=3, checkpoint_path=str(ckpt))
    assert (trained.image_mean, trained.image_std) == ((0.2, 0.3, 0.4), (0.25, 0.5, 0.75))
    view = ClassifierView(trained, "logits")
    assert view.mean.flatten().tolist() == pytest.approx([0.2, 0.3, 0.4])
    assert view.std.flatten().tolist() == pytest.approx([0.25, 0.5, 0.75])
    assert ClassifierView(trained, "logits", mean=(0.2, 0.3, 0.4)).mean.flatten().tolist() == pytest.approx(
        [0.2, 0.3, 0.4])  # the same value given again is fine
    with pytest.raises(ValueError, match=r"ClassifierView: mean=\(0.5, 0.5, 0.5\) differs .* trained with"):
        ClassifierView(trained, "logits", mean=(0.5,) * 3)
    with pytest.raises(ValueError, match="std"):
        QualityFilter(trained, duplicate_metric="none", std=(0.5,) * 3)
    assert QualityFilter(trained, duplicate_metric="none").logits.std.flatten().tolist() == pytest.approx(
        [0.25, 0.5, 0.75])
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": state}, plain)  # a checkpoint that does not say: the project default
    untold = FrozenImageEncoder("resnet10t", num_classes=3, checkpoint_path=str(plain))
    assert untold.image_mean is None
    assert ClassifierView(untold, "logits").mean.flatten().tolist() == [0.5, 0.5, 0.5]


class FaceStatsClassifier(nn.Module):
    """timm-like classifier that is CONFIDENT ON NOISE (the issue's failure): features = (brightness, contrast,
    mean absolute horizontal gradient); class 0's logit grows with contrast, so uniform noise is "class 0" with
    probability ~1."""

    def __init__(self) -> None:
        super().__init__()
        self.num_features, self.num_classes = 3, 2
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 40.0, 0.0], [0.0, 0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([-4.0, 0.0]))

    def forward_features(self, x):
        g = x.mean(dim=1)
        grad = (g[:, :, 1:] - g[:, :, :-1]).abs().mean(dim=(1, 2))
        return torch.stack([g.mean(dim=(1, 2)), g.std(dim=(1, 2)), grad], dim=1)

    def forward_head(self, x, pre_logits=False):
        return x if pre_logits else self.fc(x)

    def get_classifier(self):
        return self.fc


def test_noise_is_rejected_with_the_shipped_generation_settings(tmp_path):
    """Issue #24: the quality filter accepted pure noise as "disgust". With the settings of
    configs/ldm/generate_ckplus48.yaml the out-of-distribution check (Mahalanobis distance of the classifier features
    to the conditioned class, threshold from held-out real images) rejects noise the classifier is confident on,
    while fresh faces like the references pass; the confidence test alone (ood_quantile off) accepts the noise."""
    from pathlib import Path

    import numpy as np
    import yaml

    from tests.fakes_images import make_class_folders, synthetic_face

    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/ldm/generate_ckplus48.yaml").read_text())
    writer = cfg["trainer"]["callbacks"][0]["init_args"]["quality"]["init_args"]
    shipped = {k: writer[k] for k in ("min_confidence", "duplicate_metric", "duplicate_threshold", "ood_quantile")}
    assert shipped["ood_quantile"] is not None and shipped["min_confidence"] >= 0.5
    names = ["a", "b"]
    make_class_folders(tmp_path / "real", names, subjects=6, frames=3, size=32, seed=0)
    clf = FaceStatsClassifier()
    qf = QualityFilter(clf, reference_root=str(tmp_path / "real"), class_names=names, **shipped)
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 1, 32, 32, generator=g).expand(8, 3, 32, 32)
    labels = torch.zeros(8, dtype=torch.long)
    res = qf(noise, labels)
    assert (res["confidence"] > shipped["min_confidence"]).all()  # the classifier is confident on the noise ...
    assert res["reason"] == ["out_of_distribution"] * 8 and not res["accept"].any()  # ... and it is rejected
    faces = torch.stack([torch.from_numpy(synthetic_face(32, 0, seed=1000 + i)).float().div(255) for i in range(8)])
    res_faces = qf(faces[:, None].expand(8, 3, 32, 32), labels)
    assert sum(r != "out_of_distribution" for r in res_faces["reason"]) >= 7
    assert np.isfinite(res_faces["ood_distance"].numpy()).all()
    # the bug: confidence alone accepts every noise image
    no_ood = QualityFilter(clf, reference_root=str(tmp_path / "real"), class_names=names,
                           **{**shipped, "ood_quantile": None})
    assert no_ood(noise, labels)["accept"].all()
    with pytest.raises(ValueError, match="ood_quantile needs reference_root"):
        QualityFilter(clf, duplicate_metric="none", ood_quantile=0.99)
    with pytest.raises(ValueError, match="ood_quantile must be in"):
        QualityFilter(clf, duplicate_metric="none", reference_root=str(tmp_path / "real"), class_names=names,
                      ood_quantile=1.0)
