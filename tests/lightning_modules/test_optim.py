"""Weight decay by parameter name: biases, norms, position-bias tables and timm's ``no_weight_decay()`` are exempt."""

from __future__ import annotations

import functools

import pytest
import timm
import torch
from torch import nn

from lightning_modules.optim import build_optimization, build_param_groups, no_weight_decay_names
from models.timm_classifier import TimmClassifier


def _tiny_swin() -> TimmClassifier:
    return TimmClassifier(3, model_name="swin_tiny_patch4_window7_224", img_size=32,
                          model_kwargs={"patch_size": 4, "embed_dim": 8, "depths": (1, 1), "num_heads": (1, 2),
                                        "window_size": 4})


class _Declares(nn.Module):
    """A 2-D table named like nothing in the fragments list, declared through timm's protocol."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.ones(3, 3))
        self.proj = nn.Linear(3, 3)

    def no_weight_decay(self) -> set[str]:
        return {"table"}


def test_swin_position_bias_tables_norms_and_biases_are_exempt() -> None:
    net = _tiny_swin()
    names = dict(net.named_parameters())
    exempt = no_weight_decay_names(net)
    tables = [n for n in names if "relative_position_bias_table" in n]
    norms = [n for n, m in net.named_modules() if isinstance(m, nn.LayerNorm)]
    assert tables and norms
    assert set(tables) <= exempt
    assert {f"{n}.weight" for n in norms} <= exempt and {n for n in names if n.endswith(".bias")} <= exempt
    decayed = [n for n in names if n not in exempt]
    assert decayed and all(names[n].ndim >= 2 for n in decayed)
    assert any(n.endswith("qkv.weight") for n in decayed)


def test_nested_no_weight_decay_declarations_are_prefixed() -> None:
    net = nn.Sequential(nn.Linear(3, 3), _Declares())
    assert no_weight_decay_names(net) == {"0.bias", "1.table", "1.proj.bias"}


def test_vit_declared_tokens_are_exempt() -> None:
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=2, img_size=32, patch_size=16,
                            embed_dim=16, depth=1, num_heads=2)
    exempt = no_weight_decay_names(vit)
    assert {"pos_embed", "cls_token"} <= exempt and "patch_embed.proj.weight" not in exempt


def test_optimizer_gives_no_decay_groups_zero_weight_decay_and_decays_the_rest() -> None:
    net = _tiny_swin()
    opt = build_optimization(net, functools.partial(torch.optim.AdamW, lr=0.1, weight_decay=0.5), None,
                             {"model.head.": 2.0}, "val/loss")
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"base", "base/no_decay", "model.head.", "model.head./no_decay"}
    assert by_name["base/no_decay"]["weight_decay"] == 0.0 and by_name["base"]["weight_decay"] == 0.5
    assert by_name["model.head./no_decay"]["lr"] == pytest.approx(0.2)
    # one step with zero gradients: only the decayed parameters shrink
    table = next(p for n, p in net.named_parameters() if "relative_position_bias_table" in n)
    norm = next(m for m in net.modules() if isinstance(m, nn.LayerNorm)).weight
    qkv = next(p for n, p in net.named_parameters() if n.endswith("qkv.weight"))
    with torch.no_grad():
        table.fill_(1.0)
    before = {k: p.detach().clone() for k, p in (("table", table), ("norm", norm), ("qkv", qkv))}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(table, before["table"]) and torch.equal(norm, before["norm"])
    assert not torch.equal(qkv, before["qkv"])


def test_every_parameter_lands_in_exactly_one_group() -> None:
    net = _tiny_swin()
    groups = build_param_groups(net, {"model.layers.0.": 0.5})
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for _ in net.parameters())


def test_fused_optimizer_clips_under_mixed_precision() -> None:
    """configs/fer/* pair fused AdamW with gradient clipping; Lightning's mixed-precision plugin refuses to clip an
    optimizer that unscales internally, so under 16-/bf16-mixed the optimizer is built unfused (fp32 keeps fused)."""
    import lightning as L

    net = nn.Linear(4, 2)
    factory = functools.partial(torch.optim.AdamW, lr=1e-3, fused=True)
    amp = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, logger=False)
    assert build_optimization(net, factory, None, None, "val/loss", trainer=amp).defaults["fused"] is False
    fp32 = L.Trainer(accelerator="cpu", gradient_clip_val=1.0, logger=False)
    assert build_optimization(net, factory, None, None, "val/loss", trainer=fp32).defaults["fused"] is True
    no_clip = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False)
    assert build_optimization(net, factory, None, None, "val/loss", trainer=no_clip).defaults["fused"] is True

    class System(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def training_step(self, batch, batch_idx):
            return self.net(batch[0]).float().pow(2).mean()

        def configure_optimizers(self):
            return build_optimization(self.net, factory, None, None, "val/loss", trainer=self._trainer)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", gradient_clip_val=1.0, max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(System(), data)  # raised "does not allow for gradient clipping" with the fused optimizer
    assert trainer.global_step == 2
