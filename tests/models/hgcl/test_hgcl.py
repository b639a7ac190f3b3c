from functools import partial

import pytest
import torch
from torch import nn

from models.hgcl import HGCL, GNNEncoder, GraphAugment, MultimodalGraphBuilder, TextEncoder
from tests.fakes import write_tiny_bert

DIMS = {"text": 12, "audio": 5, "vision": 7}
LENS = {"text": 8, "audio": 8, "vision": 8}
SMALL = {"dim": 16, "heads": 2, "codebook_size": 8, "proj_dim": 8, "head_hidden": 16, "dropout": 0.0}


def make_batch(B=4, lens=LENS, dims=DIMS, valid=(8, 6, 4, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = {m: torch.randn(B, lens[m], dims[m], generator=g) for m in lens}
    for m in lens:
        n = torch.tensor(valid) * lens[m] // lens["text"]
        batch[f"{m}_mask"] = torch.arange(lens[m])[None] < n.clamp(min=1)[:, None]
    batch["label"] = torch.randn(B, generator=g)
    return batch


def test_forward_shapes_keys_and_eval():
    torch.manual_seed(0)
    model = HGCL(DIMS, LENS, **SMALL)
    out = model(make_batch())
    assert out["pred"].shape == (4,)
    assert set(out["aux_losses"]) == {"local", "nce", "dvae"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out["aux_losses"].values())
    for m in ("text", "audio", "vision"):
        assert 1.0 <= float(out["logs"][f"codebook_ppl_{m}"]) <= 8.0
        assert f"dvae_ppl_{m}" in out["logs"]
    model.eval()
    out = model(make_batch())
    assert out["aux_losses"] == {} and out["pred"].shape == (4,)
    assert "codebook_ppl_text" in out["logs"]
    r = repr(model)
    assert "graphs='local+global'" in r and "DenseGraphConv" in r


def test_aux_losses_are_weighted():
    batch = make_batch()
    torch.manual_seed(0)
    a = HGCL(DIMS, LENS, **SMALL)(batch)["aux_losses"]
    torch.manual_seed(0)
    b = HGCL(DIMS, LENS, **SMALL, lambda_local=0.02, lambda_nce=0.2, lambda_dvae=2.0)(batch)["aux_losses"]
    for k in a:
        torch.testing.assert_close(b[k], 2.0 * a[k])


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = HGCL(DIMS, LENS, **SMALL)
    batch = make_batch()
    out = model(batch)
    loss = (out["pred"] - batch["label"]).abs().mean() + sum(out["aux_losses"].values())
    loss.backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert missing == []


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_padding_changes_nothing(mode):
    batch = make_batch()
    batch2 = {k: v.clone() for k, v in batch.items()}
    for m in LENS:
        pad = ~batch[f"{m}_mask"]
        batch2[m][pad] = torch.randn_like(batch2[m][pad]) * 100.0
    torch.manual_seed(0)
    model = HGCL(DIMS, LENS, **{**SMALL, "dropout": 0.1})
    state = {k: v.clone() for k, v in model.state_dict().items()}
    getattr(model, mode)()
    torch.manual_seed(1)
    out1 = model(batch)
    model.load_state_dict(state)
    torch.manual_seed(1)
    out2 = model(batch2)
    torch.testing.assert_close(out1["pred"], out2["pred"])
    assert out1["aux_losses"].keys() == out2["aux_losses"].keys()
    for k in out1["aux_losses"]:
        torch.testing.assert_close(out1["aux_losses"][k], out2["aux_losses"][k])
    for k in out1["logs"]:
        torch.testing.assert_close(out1["logs"][k], out2["logs"][k])


@pytest.mark.parametrize(
    ("kwargs", "keys"),
    [
        ({}, {"local", "nce", "dvae"}),
        ({"graphs": "local", "nce": "none"}, {"local"}),
        ({"graphs": "global", "nce": "none"}, {"dvae"}),
        ({"nce": "none"}, {"local", "dvae"}),
        ({"lambda_local": 0.0}, {"nce", "dvae"}),
        ({"lambda_dvae": 0.0}, {"local", "nce"}),
        ({"augmentation": "none"}, {"local", "nce", "dvae"}),
    ],
)
def test_ablation_switches_change_aux_losses(kwargs, keys):
    torch.manual_seed(0)
    model = HGCL(DIMS, LENS, **SMALL, **kwargs)
    out = model(make_batch())
    assert set(out["aux_losses"]) == keys
    assert ("local_graph" in out["logs"]) == (
        "local" in keys and kwargs.get("augmentation", "auto") == "auto"
    )
    sum(out["aux_losses"].values()).add(out["pred"].sum()).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if (
        kwargs.get("lambda_dvae") == 0.0
    ):  # codebooks stay (data-initialised, quantisation only), dVAE nets idle
        missing = [n for n in missing if not n.startswith("dvae.")]
    assert missing == []  # ablations build only the parts they use


@pytest.mark.parametrize(
    "kwargs",
    [
        {"gnn": partial(GNNEncoder, gnn="gin"),
         "graph_builder": MultimodalGraphBuilder(cross_edges="cooccur", intra_edges="full")},
        {"gnn": partial(GNNEncoder, gnn="gcn"), "graph_builder": MultimodalGraphBuilder(cross_edges="threshold"),
         "node_features": "attended", "nce": "local_to_global"},
        {"gnn": partial(GNNEncoder, gnn="sage", num_layers=3), "graph_builder": MultimodalGraphBuilder(
            text_audio_edges="same"), "gnn_sharing": "shared", "head_inputs": "graphs",
         "augmenter": GraphAugment(sigma=0.3, p_add=0.1, p_drop=0.2)},
        {"attn_layers": 0, "positional": "none", "codebook_size": {"text": 4, "audio": 5, "vision": 6}},
    ],
)
def test_config_variants_run(kwargs):
    torch.manual_seed(0)
    out = HGCL(DIMS, LENS, **{**SMALL, **kwargs})(make_batch())
    assert out["pred"].shape == (4,) and torch.isfinite(out["pred"]).all()


def test_unaligned_pooling_bounds_node_count():
    lens = {"text": 6, "audio": 40, "vision": 30}
    batch = make_batch(B=3, lens=lens, valid=(6, 4, 2))
    torch.manual_seed(0)
    model = HGCL(DIMS, lens, **SMALL, max_nodes_per_modality=5,
                 graph_builder=MultimodalGraphBuilder(cross_edges="cooccur"))
    assert model.num_nodes == {"text": 5, "audio": 5, "vision": 5}
    feats, masks = model._inputs(batch)
    assert {m: v.shape[1] for m, v in feats.items()} == {"text": 5, "audio": 5, "vision": 5}
    # audio sample 2 has 40*2//6 = 13 valid steps -> 5 non-empty segments; text sample 2 has 2 -> 2 nodes
    assert masks["audio"][2].all() and masks["text"][2].tolist() == [True, True, False, False, False]
    out = model(batch)
    assert out["pred"].shape == (3,) and torch.isfinite(sum(out["aux_losses"].values()))


def test_dvae_warmup_uses_unquantised_features():
    torch.manual_seed(0)
    model = HGCL(DIMS, LENS, **SMALL, graphs="global", nce="none", dvae_warmup_steps=2, head_inputs="graphs")
    batch = make_batch()

    def pred_with_codebook_scaled(step, scale):
        model.train_steps.fill_(step)
        with torch.no_grad():
            for book in model.dvae.values():
                book.codebook.mul_(scale)
        return model(batch)["pred"]

    # during warm-up (steps 1-2) the prediction does not depend on the codebook
    torch.testing.assert_close(pred_with_codebook_scaled(0, 1.0), pred_with_codebook_scaled(0, 3.0))
    # after warm-up it does (nearest codewords feed the global graph)
    assert not torch.allclose(pred_with_codebook_scaled(5, 1.0), pred_with_codebook_scaled(5, 3.0))


def test_injected_parts_are_used():
    """The graph builder and the augmenter are used as given; the GNN factory is called with ``dim`` once per
    encoder (two separate ones, or one shared by both levels)."""
    builder, augmenter = MultimodalGraphBuilder(cross_edges="cooccur"), GraphAugment(sigma=0.5)
    calls = []

    def gnn(dim: int) -> nn.Module:
        calls.append(dim)
        return GNNEncoder(dim, num_layers=1, gnn="gcn")

    model = HGCL(DIMS, LENS, **SMALL, graph_builder=builder, augmenter=augmenter, gnn=gnn)
    assert model.builder is builder and model.augment is augmenter
    assert calls == [16, 16] and model.gnn_local is not model.gnn_global
    assert model.gnn_local.gnn == "gcn" and model.gnn_local.num_layers == 1
    calls.clear()
    shared = HGCL(DIMS, LENS, **SMALL, gnn=gnn, gnn_sharing="shared")
    assert calls == [16] and shared.gnn_local is shared.gnn_global
    calls.clear()
    HGCL(DIMS, LENS, **SMALL, gnn=gnn, graphs="global", nce="none")
    assert calls == [16]
    # the augmenter is dropped where no augmented view is built
    assert HGCL(DIMS, LENS, **SMALL, augmenter=augmenter, augmentation="none").augment is None


def test_default_parts_are_the_paper_defaults():
    """``None`` parts build MultimodalGraphBuilder(), GraphAugment() and GNNEncoder(dim, dropout=dropout): the same
    net, parameter for parameter, as those parts given explicitly."""
    torch.manual_seed(0)
    default = HGCL(DIMS, LENS, **{**SMALL, "dropout": 0.2})
    torch.manual_seed(0)
    explicit = HGCL(DIMS, LENS, **{**SMALL, "dropout": 0.2}, graph_builder=MultimodalGraphBuilder(),
                    augmenter=GraphAugment(), gnn=partial(GNNEncoder, dropout=0.2))
    assert repr(default) == repr(explicit)
    for (n, a), (m, b) in zip(default.state_dict().items(), explicit.state_dict().items(), strict=True):
        assert n == m
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_bad_arguments_and_batches_raise():
    for kwargs in (
        {"graphs": "both"},
        {"augmentation": "random"},
        {"nce": "triplet"},
        {"graphs": "local"},  # the InfoNCE needs both graphs: nce must say "none"
        {"lambda_nce": 0.0},  # one switch for the InfoNCE: nce="none", not a zero weight
        {"dim": 0},
        {"tau": 0.0},
        {"lambda_nce": -1.0},
        {"codebook_size": {"text": 4}},
        {"node_features": "attended", "attn_layers": 0},
    ):
        with pytest.raises(ValueError, match="HGCL"):
            HGCL(DIMS, LENS, **kwargs)
    with pytest.raises(ValueError, match="HGCL: feature_dims"):
        HGCL({"text": 3, "audio": 2}, LENS)
    with pytest.raises(TypeError, match="HGCL: gnn\\(dim\\) must return an nn.Module"):
        HGCL(DIMS, LENS, gnn=lambda dim: dim)
    model = HGCL(DIMS, LENS, **SMALL)
    batch = make_batch()
    del batch["audio"]
    with pytest.raises(ValueError, match="'audio'"):
        model(batch)
    batch = make_batch()
    batch["vision_mask"] = batch["vision_mask"][:, :3]
    with pytest.raises(ValueError, match="vision_mask"):
        model(batch)
    with pytest.raises(ValueError, match="TextEncoder"):
        HGCL(DIMS, LENS, text_encoder="bert-base-uncased")


@pytest.fixture
def tiny_bert_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return write_tiny_bert(tmp_path / "tiny_bert", vocab_size=120, max_positions=32)


@pytest.mark.parametrize("mode", ["frozen", "finetune"])
def test_bert_ids_path(tiny_bert_dir, mode):
    torch.manual_seed(0)
    model = HGCL(
        {"text": 768, "audio": 5, "vision": 7},
        LENS,
        **SMALL,
        text_encoder=tiny_bert_dir,
        text_encoder_mode=mode,
    )
    assert model.proj["text"].in_dim == 16
    batch = make_batch()
    del batch["text"]
    ids = torch.randint(1, 120, (4, 8))
    mask = batch.pop("text_mask").long()
    batch["text_bert"] = torch.stack([ids * mask, mask, torch.zeros_like(ids)], dim=1).double()
    out = model(batch)
    (out["pred"].sum() + sum(out["aux_losses"].values())).backward()
    bert_grads = [p.grad for p in model.text_encoder.parameters()]
    if mode == "frozen":
        assert all(g is None for g in bert_grads)
        assert not model.text_encoder.bert.training
        assert not any(p.requires_grad for p in model.text_encoder.parameters())
    else:
        assert any(g is not None and g.any() for g in bert_grads)
        assert model.text_encoder.bert.training  # dropout on while fine-tuned (from_pretrained returns eval mode)
    del batch["text_bert"]
    with pytest.raises(ValueError, match="text_bert"):
        model(batch)


def test_text_encoder_rejects_bad_mode(tiny_bert_dir):
    with pytest.raises(ValueError, match="TextEncoder"):
        TextEncoder(tiny_bert_dir, mode="partial")
    enc = TextEncoder(tiny_bert_dir)
    with pytest.raises(ValueError, match="TextEncoder"):
        enc(torch.zeros(2, 8, dtype=torch.long))
    assert "mode='frozen'" in repr(enc)


def test_eq1_attention_is_built_only_where_used():
    assert HGCL(DIMS, LENS, **SMALL, head_inputs="graphs").attention is None  # no_fusion_head, projected nodes
    assert HGCL(DIMS, LENS, **SMALL, head_inputs="graphs", node_features="attended").attention is not None
    assert HGCL(DIMS, LENS, **SMALL).attention is not None  # the fusion head reads R_t, R_a, R_v


def test_offline_codebooks_are_fitted_before_training_then_frozen():
    torch.manual_seed(0)
    model = HGCL(DIMS, LENS, **SMALL, codebooks="offline")
    assert model.dvae is None and model.requires_prefit
    with pytest.raises(ValueError, match="not fitted"):
        model(make_batch())
    with pytest.raises(ValueError, match="at least codebook_size=8 valid text steps"):
        model.prefit([make_batch(B=1, valid=(1,))])
    state = model.prefit([make_batch(seed=s) for s in range(6)])
    assert not model.requires_prefit and set(state) == {"codebook_text", "codebook_audio", "codebook_vision", "codebooks_fitted"}
    assert state["codebook_audio"].shape == (8, 5) and state["codebook_audio"].abs().sum() > 0
    books = {k: v.clone() for k, v in state.items() if k != "codebooks_fitted"}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(make_batch())
    assert set(out["aux_losses"]) == {"local", "nce"}
    (out["pred"].sum() + sum(out["aux_losses"].values())).backward()
    opt.step()
    for k, v in books.items():
        torch.testing.assert_close(getattr(model, k), v)  # frozen
    # the global graph reads the codewords: other codebooks change the prediction
    model.eval()
    pred = model(make_batch())["pred"]
    model.codebook_vision.mul_(2.0)
    assert not torch.allclose(pred, model(make_batch())["pred"])
    # the fitted codebooks travel with the state dict (a resumed run does not refit)
    other = HGCL(DIMS, LENS, **SMALL, codebooks="offline")
    other.load_state_dict(model.state_dict())
    assert not other.requires_prefit


def test_offline_codebook_arguments_are_checked():
    for kwargs in ({"codebooks": "online"}, {"codebooks": "offline", "dvae_warmup_steps": 3}):
        with pytest.raises(ValueError, match="HGCL"):
            HGCL(DIMS, LENS, **kwargs)
    with pytest.raises(ValueError, match="HGCL: prefit"):
        HGCL(DIMS, LENS, **SMALL).prefit([make_batch()])
