import pytest
import torch

from models.hgcl import MultimodalGraphBuilder

LENS = {"text": 5, "audio": 4, "vision": 6}


def _inputs(seed=0, B=3, d=8):
    g = torch.Generator().manual_seed(seed)
    feats = {m: torch.randn(B, n, d, generator=g) for m, n in LENS.items()}
    valid = {"text": [5, 3, 2], "audio": [4, 4, 1], "vision": [6, 2, 4]}
    masks = {m: torch.arange(n)[None] < torch.tensor(valid[m])[:, None] for m, n in LENS.items()}
    return feats, masks


def _blocks(adj):
    t, a = LENS["text"], LENS["audio"]
    sl = {"text": slice(0, t), "audio": slice(t, t + a), "vision": slice(t + a, None)}
    return lambda m1, m2: adj[:, sl[m1], sl[m2]]


@pytest.mark.parametrize("cross", ["topk", "threshold", "cooccur"])
@pytest.mark.parametrize("intra", ["window", "full"])
def test_graph_is_symmetric_loopless_and_ignores_padding(intra, cross):
    feats, masks = _inputs()
    builder = MultimodalGraphBuilder(
        intra_edges=intra, window=1, cross_edges=cross, cross_k=2, cross_threshold=0.0
    )
    V, A, mask = builder(feats, masks)
    N = sum(LENS.values())
    assert V.shape == (3, N, 8) and A.shape == (3, N, N) and mask.shape == (3, N)
    assert torch.equal(A, A.transpose(1, 2))
    assert (torch.diagonal(A, dim1=1, dim2=2) == 0).all()
    pad = ~mask
    assert (A[pad.unsqueeze(2).expand_as(A)] == 0).all()
    assert (V[pad] == 0).all()
    blk = _blocks(A)
    assert (blk("text", "audio") == 0).all()  # vision-centred: no text-audio edges
    assert A.sum() > 0
    # changing padded features changes nothing
    feats2 = {m: v.clone() for m, v in feats.items()}
    for m in LENS:
        feats2[m][~masks[m]] = torch.randn_like(feats2[m][~masks[m]]) * 100
    V2, A2, _ = builder(feats2, masks)
    assert torch.equal(A2, A) and torch.equal(V2, V)


def test_window_and_full_intra_edges():
    feats, masks = _inputs()
    A = MultimodalGraphBuilder(intra_edges="window", window=1)(feats, masks)[1]
    tt = _blocks(A)("text", "text")[0]
    expected = ((torch.arange(5)[:, None] - torch.arange(5)[None]).abs() == 1).float()
    assert torch.equal(tt, expected)
    A = MultimodalGraphBuilder(intra_edges="full")(feats, masks)[1]
    tt = _blocks(A)("text", "text")[1]  # 3 valid text nodes
    ref = torch.zeros(5, 5)
    ref[:3, :3] = 1 - torch.eye(3)
    assert torch.equal(tt, ref)


def test_topk_picks_most_similar_valid_vision_nodes():
    feats, masks = _inputs()
    A = MultimodalGraphBuilder(cross_edges="topk", cross_k=2)(feats, masks)[1]
    tv = _blocks(A)("text", "vision")
    # sample 0: all 6 vision nodes valid -> every valid text node has exactly 2 vision neighbours, the top-2
    assert torch.equal(tv[0].sum(-1), torch.full((5,), 2.0))
    sim = (
        torch.nn.functional.normalize(feats["text"][0], dim=-1)
        @ torch.nn.functional.normalize(feats["vision"][0], dim=-1).t()
    )
    assert torch.equal(
        tv[0].bool(), torch.zeros(5, 6, dtype=torch.bool).scatter_(1, sim.topk(2).indices, True)
    )
    # sample 1: only 2 valid vision nodes, 3 valid text nodes -> at most 2 each, padded vision never picked
    assert (tv[1][:, 2:] == 0).all() and (tv[1][3:] == 0).all()
    # audio sample 2 has one valid node: it links to 2 of the 4 valid vision nodes
    av = _blocks(A)("audio", "vision")[2]
    assert av[0].sum() == 2 and av[1:].sum() == 0 and av[0, 4:].sum() == 0


def test_cooccur_aligned_is_same_index_and_threshold_and_text_audio_option():
    d = 4
    feats = {m: torch.randn(2, 5, d) for m in LENS}
    mask = torch.tensor([[1] * 5, [1] * 3 + [0] * 2], dtype=torch.bool)
    masks = dict.fromkeys(LENS, mask)
    A = MultimodalGraphBuilder(cross_edges="cooccur")(feats, masks)[1]
    tv = A[:, 0:5, 10:15]
    assert torch.equal(tv[0], torch.eye(5))
    ref = torch.zeros(5, 5)
    ref[:3, :3] = torch.eye(3)
    assert torch.equal(tv[1], ref)
    # threshold 1.0 keeps only (near-)identical directions: identical features -> edge
    feats["vision"] = feats["text"].clone()
    A = MultimodalGraphBuilder(cross_edges="threshold", cross_threshold=0.999)(feats, masks)[1]
    assert torch.equal(A[0, 0:5, 10:15], torch.eye(5))
    A = MultimodalGraphBuilder(cross_edges="cooccur", text_audio_edges="same")(feats, masks)[1]
    assert torch.equal(A[0, 0:5, 5:10], torch.eye(5))


def test_cooccur_unaligned_uses_relative_time():
    feats = {"text": torch.randn(1, 2, 3), "audio": torch.randn(1, 4, 3), "vision": torch.randn(1, 4, 3)}
    masks = {m: torch.ones(1, v.size(1), dtype=torch.bool) for m, v in feats.items()}
    A = MultimodalGraphBuilder(cross_edges="cooccur")(feats, masks)[1]
    tv = A[0, 0:2, 6:10]  # text token 0 spans the first half of the vision steps
    assert torch.equal(tv, torch.tensor([[1.0, 1, 0, 0], [0, 0, 1, 1]]))


def test_builder_validates_and_repr():
    assert "cross_k=3" in repr(MultimodalGraphBuilder())
    for kwargs in (
        {"intra_edges": "ring"},
        {"cross_edges": "knn"},
        {"window": 0},
        {"cross_threshold": 2.0},
        {"text_audio_edges": "all"},
    ):
        with pytest.raises(ValueError, match="MultimodalGraphBuilder"):
            MultimodalGraphBuilder(**kwargs)
