import pytest
import timm
import torch

from models.timm_classifier import TimmClassifier


def test_resnet18_small_input_and_gradients() -> None:
    net = TimmClassifier(4, "resnet18")
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 4)
    out.sum().backward()
    assert net.model.conv1.weight.grad is not None
    assert net.inputs == ("image",)
    assert net.head_name == "fc"


def test_tiny_vit_through_model_kwargs_and_gray_input() -> None:
    net = TimmClassifier(
        3,
        "vit_tiny_patch16_224",
        in_chans=1,
        img_size=32,
        model_kwargs={"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8},
    )
    assert net.model.patch_embed.proj.weight.shape == (16, 1, 8, 8)
    assert net(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_pretrained_file_loaded(tmp_path) -> None:
    src = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    net = TimmClassifier(6, "resnet18", pretrained_file=str(path))
    assert torch.equal(net.model.layer3[0].conv1.weight, src.layer3[0].conv1.weight)
    assert net.model.fc.weight.shape == (6, 512)
    rand = TimmClassifier(6, "resnet18")
    assert not torch.equal(rand.model.layer3[0].conv1.weight, src.layer3[0].conv1.weight)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="TimmClassifier.*unknown"):
        TimmClassifier(3, "not_a_model")
    with pytest.raises(ValueError, match="TimmClassifier.*num_classes"):
        TimmClassifier(0, "resnet18")
