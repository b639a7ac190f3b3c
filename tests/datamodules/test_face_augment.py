"""The train-time policies of FaceBatchTransform (TrivialAugment / RandAugment over face ops, random erasing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.datasets.images import FACE_AUGMENT_OPS, _apply_face_op
from tests.helpers.fer import batch_transform


def _samples(n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g),
             "descriptor": torch.randint(0, 256, (1, 32, 32), dtype=torch.uint8, generator=g),
             "label": torch.tensor(i % 3)} for i in range(n)]


@pytest.mark.parametrize("name", sorted(FACE_AUGMENT_OPS))
def test_geometric_ops_move_the_descriptor_with_the_face_photometric_ops_do_not(name: str) -> None:
    torch.manual_seed(0)
    img, desc = torch.rand(3, 32, 32), torch.rand(1, 32, 32)
    out_img, out_desc = _apply_face_op(name, img, desc, 1.0, 1.0)
    assert out_img.shape == img.shape and out_desc.shape == desc.shape
    assert 0 <= float(out_img.min()) and float(out_img.max()) <= 1
    geometric = FACE_AUGMENT_OPS[name][0]
    if geometric:
        # warping a stacked [image; descriptor] tensor: the descriptor equals the image's warp of the same map
        ref, _ = _apply_face_op(name, desc.expand(3, -1, -1), None, 1.0, 1.0)
        torch.testing.assert_close(out_desc[0], ref[0])
        assert not torch.equal(out_desc, desc)
    else:
        assert torch.equal(out_desc, desc)
    if name != "identity":
        assert not torch.equal(out_img, img)


@pytest.mark.parametrize("policy", ["trivial", "rand"])
def test_policies_change_train_batches_only(policy: str) -> None:
    plain = batch_transform(augment="train")
    aug = batch_transform(augment="train", policy=policy, random_erasing=1.0)
    torch.manual_seed(1)
    a = plain(_samples())
    torch.manual_seed(1)
    b = aug(_samples())
    assert a["image"].shape == b["image"].shape and a["descriptor"].shape == b["descriptor"].shape
    assert not torch.equal(a["image"], b["image"])
    ev = batch_transform(augment="none", policy=policy, random_erasing=1.0)
    torch.testing.assert_close(ev(_samples())["image"], batch_transform()(_samples())["image"])


def test_random_erasing_hits_image_and_descriptor_in_the_same_box() -> None:
    plain = batch_transform(augment="train")
    erase = batch_transform(augment="train", random_erasing=1.0)
    torch.manual_seed(3)
    a = plain(_samples())
    torch.manual_seed(3)
    b = erase(_samples())
    changed_img = (a["image"] != b["image"]).any(1)
    changed_desc = (a["descriptor"] != b["descriptor"]).any(1)
    assert changed_img.any() and torch.equal(changed_img, changed_desc)


def test_bad_policy_options_raise() -> None:
    with pytest.raises(ValueError, match="policy must be"):
        batch_transform(policy="auto")
    with pytest.raises(ValueError, match="policy_magnitude"):
        batch_transform(policy="rand", policy_magnitude=11)
    with pytest.raises(ValueError, match="random_erasing"):
        batch_transform(random_erasing=1.5)


def test_grey_colour_turns_faces_grey_for_training_and_evaluation() -> None:
    """colour='grey' (models trained on grey faces): the same luma for every path; grey input is unchanged."""
    from common.tensors import grey_rgb

    rng = np.random.default_rng(0)
    samples = [{"image": torch.from_numpy(rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)),
                "label": torch.tensor(0)} for _ in range(4)]
    ev = batch_transform(mean=(0, 0, 0), std=(1, 1, 1), colour="grey")(samples)["image"]
    want = grey_rgb(torch.stack([s["image"] for s in samples]), channel_dim=1).float() / 255
    torch.testing.assert_close(ev, want)
    tr = batch_transform(mean=(0, 0, 0), std=(1, 1, 1), augment="train", hflip_prob=0.5, affine_degrees=10,
                            colour="grey")(samples)["image"]
    torch.testing.assert_close(tr[:, 0], tr[:, 1])
    torch.testing.assert_close(tr[:, 1], tr[:, 2])
    grey = [{"image": grey_rgb(s["image"], channel_dim=0), "label": s["label"]} for s in samples]
    torch.testing.assert_close(batch_transform(colour="grey")(grey)["image"], batch_transform()(grey)["image"])
    with pytest.raises(ValueError, match="colour"):
        batch_transform(colour="gray")
