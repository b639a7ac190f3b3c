"""MAG-BERT (and the optional local-BERT text encoders of MISA / Self-MM) with a tiny random local BERT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.mag_bert import MAG, MAGBERT
from models.misa import MISA
from models.self_mm import SelfMM
from tests.fakes import write_tiny_bert

DIMS = {"text": 16, "audio": 5, "vision": 7}
LENS = {"text": 8, "audio": 8, "vision": 8}
VOCAB = 40


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 16-wide random BERT written with ``save_pretrained`` (no hub access)."""
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"), vocab_size=VOCAB, num_layers=2, max_positions=16)


def make_batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([8, 5, 3])
    mask = torch.arange(8)[None] < lengths[:, None]
    ids = torch.randint(5, VOCAB, (3, 8), generator=g) * mask
    ids[:, 0] = 2  # a [CLS]-like first token
    text_bert = torch.stack([ids, mask.long(), torch.zeros_like(ids)], dim=1)
    batch = {m: torch.randn(3, 8, d, generator=g) for m, d in DIMS.items()}
    batch.update({f"{m}_mask": mask.clone() for m in DIMS})
    batch.update(text_bert=text_bert, label=torch.tensor([1.0, -2.0, 0.3]), id=["a", "b", "c"])
    return batch


@pytest.mark.parametrize("injection_layer", [0, 1, 2])
def test_mag_bert_shape_and_gradients(tiny_bert: str, injection_layer: int) -> None:
    torch.manual_seed(0)
    net = MAGBERT(DIMS, LENS, text_encoder=tiny_bert, injection_layer=injection_layer).train()
    out = net(make_batch())
    assert out["pred"].shape == (3,) and torch.isfinite(out["pred"]).all()
    out["pred"].sum().backward()
    missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    assert net.mag.gate_audio.weight.grad.any() and net.mag.proj_vision.weight.grad.any()


def test_mag_bert_uses_nonverbal_features_and_ignores_padding(tiny_bert: str) -> None:
    torch.manual_seed(0)
    net = MAGBERT(DIMS, LENS, text_encoder=tiny_bert).eval()
    batch = make_batch()
    with torch.no_grad():
        ref = net(batch)["pred"]
        pad = ~batch["text_mask"]
        changed = dict(batch)
        for m in ("audio", "vision"):
            changed[m] = torch.where(pad.unsqueeze(-1), torch.full_like(batch[m], 1e3), batch[m])
        tb = batch["text_bert"].clone()
        tb[:, 0][pad] = 7  # other token ids at padded positions
        changed["text_bert"] = tb
        assert torch.allclose(net(changed)["pred"], ref, atol=1e-5)
        moved = dict(batch, audio=batch["audio"] + 1.0)
        assert not torch.allclose(net(moved)["pred"], ref, atol=1e-5)


def test_mag_bert_hook_only_active_inside_forward(tiny_bert: str) -> None:
    torch.manual_seed(0)
    net = MAGBERT(DIMS, LENS, text_encoder=tiny_bert).eval()
    ids, att, seg = make_batch()["text_bert"].unbind(1)
    with torch.no_grad():
        plain = net.bert(input_ids=ids, attention_mask=att, token_type_ids=seg).pooler_output
        net(make_batch())
        again = net.bert(input_ids=ids, attention_mask=att, token_type_ids=seg).pooler_output
    assert torch.equal(plain, again)


def test_mag_gate_bounds_the_shift() -> None:
    torch.manual_seed(0)
    gate = MAG(hidden_size=6, audio_dim=3, vision_dim=2, beta_shift=0.5, dropout=0.0)
    gate.norm = torch.nn.Identity()  # look at Z + alpha H directly
    z = torch.randn(2, 4, 6)
    shifted = gate(z, 100 * torch.randn(2, 4, 3), 100 * torch.randn(2, 4, 2))
    assert ((shifted - z).norm(dim=-1) <= 0.5 * z.norm(dim=-1) + 1e-4).all()


def test_mag_bert_bad_arguments(tiny_bert: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="MAGBERT.*required"):
        MAGBERT(DIMS, LENS)
    with pytest.raises(ValueError, match="MAGBERT.*local model directory"):
        MAGBERT(DIMS, LENS, text_encoder=str(tmp_path))
    with pytest.raises(ValueError, match="MAGBERT.*aligned"):
        MAGBERT(DIMS, {"text": 8, "audio": 20, "vision": 8}, text_encoder=tiny_bert)
    with pytest.raises(ValueError, match="MAGBERT.*injection_layer"):
        MAGBERT(DIMS, LENS, text_encoder=tiny_bert, injection_layer=3)
    net = MAGBERT(DIMS, LENS, text_encoder=tiny_bert)
    batch = make_batch()
    batch["audio"] = batch["audio"][:, :6]
    with pytest.raises(ValueError, match="MAGBERT.*aligned"):
        net(batch)


@pytest.mark.parametrize("cls", [MISA, SelfMM])
def test_local_bert_text_encoder(tiny_bert: str, cls: type) -> None:
    torch.manual_seed(0)
    kwargs = {"hidden_size": 8} if cls is MISA else {"fusion_dim": 8}
    net = cls(DIMS, LENS, text_encoder=tiny_bert, **kwargs).train()
    batch = make_batch()
    batch["text"] = batch["text"][..., :3]  # never read when a text encoder is given
    out = net(batch)
    assert out["pred"].shape == (3,)
    (out["pred"].sum() + sum(out["aux_losses"].values())).backward()
    assert net.text_encoder.embeddings.word_embeddings.weight.grad.any()


def test_loaded_encoder_starts_in_training_mode(tiny_bert: str) -> None:
    """``from_pretrained`` returns eval mode and Lightning keeps module modes: the helper must switch it back."""
    net = MAGBERT(DIMS, LENS, text_encoder=tiny_bert)
    assert all(m.training for m in net.modules())
    net.eval()
    assert not any(m.training for m in net.modules())
