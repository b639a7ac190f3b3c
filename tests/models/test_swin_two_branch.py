import pytest
import timm
import torch
import torch.nn.functional as F

from models.swin_two_branch import StageFusion, TwoBranchSwin

TINY = {"img_size": 32, "embed_dim": 8, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 4), "window_size": 4}


def _inputs(b: int = 2, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(b, 3, size, size), torch.rand(b, 1, size, size)


@pytest.mark.parametrize(
    ("fusion", "branches"), [("tile_concat", "two"), ("add", "two"), ("late", "two"), ("tile_concat", "global")]
)
def test_output_shape_and_inputs(fusion: str, branches: str) -> None:
    net = TwoBranchSwin(5, fusion=fusion, branches=branches, **TINY)
    image, desc = _inputs()
    out = net(image, desc)
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()
    assert net.inputs == (("image", "descriptor") if branches == "two" else ("image",))
    assert f"fusion={fusion!r}" in repr(net)


def test_stage_shapes_and_fused_feature_feeds_next_stage() -> None:
    net = TwoBranchSwin(3, **TINY).eval()
    image, desc = _inputs()
    seen: dict[str, list] = {"fusion_in": [], "fusion_out": [], "stage_in": []}

    def fusion_hook(module, args, out) -> None:
        seen["fusion_in"].append(args)
        seen["fusion_out"].append(out)

    def stage_hook(module, args) -> None:
        seen["stage_in"].append(args[0])

    for fusion in net.fusions:
        fusion.register_forward_hook(fusion_hook)
    for stage in net.global_branch.layers:
        stage.register_forward_pre_hook(stage_hook)
    net(image, desc)
    expected = [(2, 8, 8, 8), (2, 4, 4, 16), (2, 2, 2, 32), (2, 1, 1, 64)]  # NHWC per stage
    for i, shape in enumerate(expected):
        g, loc = seen["fusion_in"][i]
        assert g.shape == shape and loc.shape == shape
        assert seen["fusion_out"][i].shape == shape
    for i in range(1, 4):  # E'_i (not G_i) is the input of global stage i+1
        assert torch.equal(seen["stage_in"][i], seen["fusion_out"][i - 1])


def test_gate_matches_equation_5_on_hand_set_gate() -> None:
    fusion = StageFusion(4, fusion="tile_concat", refine="none", init="default")
    with torch.no_grad():
        fusion.gate_conv.weight.zero_()
        fusion.gate_conv.bias.fill_(0.0)  # S = sigmoid(0) = 0.5 everywhere
    g, loc = torch.randn(2, 3, 3, 4), torch.randn(2, 3, 3, 4)
    f = fusion.fuse(g.permute(0, 3, 1, 2), loc.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    torch.testing.assert_close(fusion(g, loc), 0.5 * f + g)
    with torch.no_grad():
        fusion.gate_conv.bias.fill_(-1e4)  # S = 0: E = G exactly
    torch.testing.assert_close(fusion(g, loc), g)


@pytest.mark.parametrize("refine", ["residual", "replace", "none"])
def test_fusion_nhwc_matches_manual_nchw(refine: str) -> None:
    torch.manual_seed(1)
    fusion = StageFusion(6, fusion="tile_concat", refine=refine, init="default")
    g, loc = torch.randn(2, 5, 4, 6), torch.randn(2, 5, 4, 6)  # NHWC, H != W to catch transposes
    g_c, l_c = g.permute(0, 3, 1, 2), loc.permute(0, 3, 1, 2)
    f = F.conv2d(torch.cat([g_c, l_c], 1), fusion.fuse_conv.weight, fusion.fuse_conv.bias, padding=1)
    s = torch.sigmoid(F.conv2d(f, fusion.gate_conv.weight, fusion.gate_conv.bias))
    e = s * f + g_c
    if refine != "none":
        r = F.conv2d(e, fusion.refine_conv1.weight, fusion.refine_conv1.bias).relu()
        r = torch.tanh(F.conv2d(r, fusion.refine_conv2.weight, fusion.refine_conv2.bias))
        e = e + r if refine == "residual" else r
    out = fusion(g, loc)
    assert out.shape == g.shape
    torch.testing.assert_close(out, e.permute(0, 2, 3, 1))


def test_add_fusion_and_tiling_of_smaller_local_map() -> None:
    fusion = StageFusion(4, fusion="add", refine="none")
    g, loc = torch.randn(1, 4, 4, 4), torch.randn(1, 2, 2, 4)
    f = fusion.fuse(g.permute(0, 3, 1, 2), loc.permute(0, 3, 1, 2))
    tiled = loc.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).permute(0, 3, 1, 2)
    torch.testing.assert_close(f, g.permute(0, 3, 1, 2) + tiled)


def test_global_only_equals_plain_swin_forward() -> None:
    net = TwoBranchSwin(4, branches="global", **TINY).eval()
    plain = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=4, drop_path_rate=0.1, **TINY
    ).eval()
    plain.load_state_dict(net.global_branch.state_dict())
    image, _ = _inputs()
    torch.testing.assert_close(net(image), plain(image))
    assert net.local_branch is None and len(net.fusions) == 0


def test_gradients_reach_both_branches_and_fusions() -> None:
    # 64 px so that stage 4 has 2x2 tokens (a 1x1 map gives its position-bias table no gradient)
    net = TwoBranchSwin(3, drop_path_rate=0.0, fusion_init="default", **{**TINY, "img_size": 64})
    image, desc = _inputs(size=64)
    F.cross_entropy(net(image, desc), torch.tensor([0, 2])).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, missing
    assert net.local_branch.patch_embed.proj.weight.grad.abs().sum() > 0


def test_zero_init_starts_as_global_model_then_learns_to_use_local_branch() -> None:
    net = TwoBranchSwin(3, drop_path_rate=0.0, fusion_init="zero", **TINY)
    glob = TwoBranchSwin(3, branches="global", drop_path_rate=0.0, **TINY)
    glob.global_branch.load_state_dict(net.global_branch.state_dict())
    image, desc = _inputs()
    torch.testing.assert_close(net(image, desc), glob(image))  # E'_i = G_i at initialisation
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # step 1 moves the fusion conv off zero, step 2 then reaches the local branch
        opt.zero_grad()
        F.cross_entropy(net(image, desc), torch.tensor([0, 2])).backward()
        assert net.fusions[0].fuse_conv.weight.grad.abs().sum() > 0
        opt.step()
    assert net.local_branch.patch_embed.proj.weight.grad.abs().sum() > 0
    assert not torch.allclose(net(image, desc), net(image, torch.zeros_like(desc)))


def test_late_fusion_uses_local_features() -> None:
    net = TwoBranchSwin(3, fusion="late", **TINY).eval()
    image, desc = _inputs()
    assert not torch.allclose(net(image, desc), net(image, torch.zeros_like(desc)))


def test_missing_descriptor_and_bad_options_raise() -> None:
    net = TwoBranchSwin(3, **TINY)
    with pytest.raises(ValueError, match="TwoBranchSwin.*descriptor"):
        net(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="TwoBranchSwin.*fusion"):
        TwoBranchSwin(3, fusion="concat", **TINY)
    with pytest.raises(ValueError, match="TwoBranchSwin.*branches"):
        TwoBranchSwin(3, branches="local", **TINY)
    with pytest.raises(ValueError, match="StageFusion.*refine"):
        StageFusion(4, refine="mlp")
    with pytest.raises(ValueError, match="TwoBranchSwin.*fusion_init"):
        TwoBranchSwin(3, fusion_init="ones", **TINY)
    with pytest.raises(ValueError, match="TwoBranchSwin.*fusion_conv"):
        TwoBranchSwin(3, fusion_conv="depthwise", **TINY)
    with pytest.raises(ValueError, match="StageFusion.*fusion_conv"):
        StageFusion(4, fusion_conv="dense")


def test_pretrained_file_is_loaded_into_both_branches(tmp_path) -> None:
    src = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=1000, **TINY)
    path = tmp_path / "swin_tiny.pth"
    torch.save(src.state_dict(), path)
    net = TwoBranchSwin(5, pretrained_file=str(path), **TINY)
    rand = TwoBranchSwin(5, **TINY)
    key = "layers.2.blocks.0.attn.qkv.weight"
    src_sd, g_sd, l_sd = src.state_dict(), net.global_branch.state_dict(), net.local_branch.state_dict()
    assert torch.equal(g_sd[key], src_sd[key]) and torch.equal(l_sd[key], src_sd[key])
    assert not torch.equal(rand.global_branch.state_dict()[key], src_sd[key])
    assert torch.equal(g_sd["patch_embed.proj.weight"], src_sd["patch_embed.proj.weight"])
    # timm adapts the RGB patch embedding to the 1-channel descriptor by summing over input channels
    torch.testing.assert_close(l_sd["patch_embed.proj.weight"], src_sd["patch_embed.proj.weight"].sum(1, True))
    assert net.global_branch.head.fc.weight.shape == (5, 64)  # new head for 5 classes


def test_fusion_linear_1x1_path_matches_conv2d_reference_in_values_and_gradients() -> None:
    """The NHWC fast path (1x1 convs as F.linear, NCHW only for the 3x3 conv) is the same maths as nn.Conv2d."""
    torch.manual_seed(2)
    fusion = StageFusion(6, fusion="tile_concat", refine="residual", init="default")
    assert set(fusion.state_dict()) == {
        f"{name}.{p}" for name in ("fuse_conv", "gate_conv", "refine_conv1", "refine_conv2") for p in ("weight", "bias")
    }
    assert fusion.gate_conv.weight.shape == (6, 6, 1, 1)  # checkpoints keep the Conv2d layout
    g = torch.randn(2, 4, 6, 6, requires_grad=True)
    loc = torch.randn(2, 2, 3, 6, requires_grad=True)  # smaller local grid: tiled (nearest) onto G's grid
    fusion(g, loc).square().sum().backward()
    fast = [t.grad.clone() for t in (g, loc, *fusion.parameters())]
    for t in (g, loc, *fusion.parameters()):
        t.grad = None
    g_c = g.permute(0, 3, 1, 2)
    l_c = F.interpolate(loc.permute(0, 3, 1, 2), size=(4, 6), mode="nearest")
    f = fusion.fuse_conv(torch.cat([g_c, l_c], 1))
    e = torch.sigmoid(fusion.gate_conv(f)) * f + g_c
    e = e + torch.tanh(fusion.refine_conv2(fusion.refine_conv1(e).relu()))
    e.permute(0, 2, 3, 1).square().sum().backward()
    for got, ref in zip(fast, (g.grad, loc.grad, *(p.grad for p in fusion.parameters()))):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)


def test_separable_fusion_matches_depthwise_then_pointwise_reference_and_is_cheaper() -> None:
    """fusion_conv="separable": depthwise 3x3 over concat(G, L) then a pointwise 2C -> C map (values and grads)."""
    torch.manual_seed(3)
    fusion = StageFusion(6, fusion="tile_concat", refine="residual", init="default", fusion_conv="separable")
    assert fusion.fuse_dw.weight.shape == (12, 1, 3, 3) and fusion.fuse_conv.weight.shape == (6, 12, 1, 1)
    assert "fusion_conv='separable'" in repr(fusion)
    g = torch.randn(2, 5, 4, 6, requires_grad=True)  # NHWC, H != W
    loc = torch.randn(2, 5, 4, 6, requires_grad=True)
    fusion(g, loc).square().sum().backward()
    fast = [t.grad.clone() for t in (g, loc, *fusion.parameters())]
    for t in (g, loc, *fusion.parameters()):
        t.grad = None
    x = torch.cat([g.permute(0, 3, 1, 2), loc.permute(0, 3, 1, 2)], 1).contiguous()
    f = F.conv2d(F.conv2d(x, fusion.fuse_dw.weight, fusion.fuse_dw.bias, padding=1, groups=12),
                 fusion.fuse_conv.weight, fusion.fuse_conv.bias)
    e = torch.sigmoid(fusion.gate_conv(f)) * f + g.permute(0, 3, 1, 2)
    e = e + torch.tanh(fusion.refine_conv2(fusion.refine_conv1(e).relu()))
    e.permute(0, 2, 3, 1).square().sum().backward()
    for got, ref in zip(fast, (g.grad, loc.grad, *(p.grad for p in fusion.parameters()))):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # a corner output only sees its 3x3 neighbourhood: eq. 3's receptive field is kept
    probe = torch.zeros(1, 5, 5, 6)
    far = probe.clone()
    far[0, 4, 4] = 1.0
    with torch.no_grad():
        assert torch.equal(fusion._fuse_nhwc(probe, probe)[0, 0, 0], fusion._fuse_nhwc(far, probe)[0, 0, 0])
    full = StageFusion(64, fusion_conv="full")
    sep = StageFusion(64, fusion_conv="separable")
    n_full = sum(p.numel() for p in full.fuse_conv.parameters())
    n_sep = sum(p.numel() for m in (sep.fuse_dw, sep.fuse_conv) for p in m.parameters())
    assert n_sep * 7 < n_full  # 2C^2 + 20C vs 18C^2 + C weights: ~1/9 for large C


def test_separable_fusion_zero_init_starts_as_global_model() -> None:
    net = TwoBranchSwin(3, drop_path_rate=0.0, fusion_conv="separable", **TINY)
    glob = TwoBranchSwin(3, branches="global", drop_path_rate=0.0, **TINY)
    glob.global_branch.load_state_dict(net.global_branch.state_dict())
    image, desc = _inputs()
    torch.testing.assert_close(net(image, desc), glob(image))
    F.cross_entropy(net(image, desc), torch.tensor([0, 2])).backward()
    assert net.fusions[0].fuse_conv.weight.grad.abs().sum() > 0
    assert "fusion_conv='separable'" in repr(net)


def test_model_name_picks_the_architecture_and_explicit_args_override() -> None:
    """``model_name`` chooses the Swin (a swin_base name builds a Swin-B, not the former Swin-T defaults)."""
    base = TwoBranchSwin(3, model_name="swin_base_patch4_window7_224", depths=(1, 1, 1, 1), branches="global")
    g = base.global_branch
    assert g.embed_dim == 128 and [layer.blocks[0].attn.num_heads for layer in g.layers] == [4, 8, 16, 32]
    tiny = TwoBranchSwin(3, model_name="swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), branches="global")
    assert tiny.global_branch.embed_dim == 96
    small = TwoBranchSwin(3, model_name="swin_small_patch4_window7_224", branches="global", embed_dim=32,
                          depths=(1, 1, 1, 1), img_size=64, window_size=4)
    assert small.global_branch.embed_dim == 32 and small.global_branch.patch_embed.img_size == (64, 64)


def test_conv_stem_replaces_the_patch_embedding_of_both_branches_with_the_same_token_grid() -> None:
    from models.swin_two_branch import ConvStem

    net = TwoBranchSwin(4, stem="conv", fusion_init="gate_closed", **TINY)  # the local branch gets gradient at step 0
    plain = TwoBranchSwin(4, **TINY)
    image, desc = _inputs()
    for branch, x in ((net.global_branch, image), (net.local_branch, desc)):
        assert isinstance(branch.patch_embed, ConvStem)
        # patch 4 -> two stride-2 3x3 convs (widths embed/2, embed), a 1x1 projection, the Swin's LayerNorm
        convs = [m for m in branch.patch_embed.convs if isinstance(m, torch.nn.Conv2d)]
        assert [(c.in_channels, c.out_channels, c.stride) for c in convs] == [(x.shape[1], 8, (2, 2)), (8, 8, (2, 2))]
        assert branch.patch_embed(x).shape == (2, 8, 8, 8)  # [B, 32/4, 32/4, embed_dim], NHWC
    assert net(image, desc).shape == (2, 4)
    assert set(net.fusions.state_dict()) == set(plain.fusions.state_dict())  # only the embedding differs
    net(image, desc).sum().backward()
    assert net.global_branch.patch_embed.convs[0].weight.grad.abs().sum() > 0
    assert net.local_branch.patch_embed.convs[0].weight.grad.abs().sum() > 0


def test_conv_stem_bad_sizes_and_hub_weights_are_refused(tmp_path) -> None:
    from models.swin_two_branch import ConvStem

    with pytest.raises(ValueError, match="ConvStem: patch_size"):
        ConvStem(img_size=32, patch_size=3, embed_dim=8)
    with pytest.raises(ValueError, match="ConvStem: img_size"):
        ConvStem(img_size=30, patch_size=4, embed_dim=8)
    with pytest.raises(ValueError, match="ConvStem: input"):
        ConvStem(img_size=32, patch_size=4, embed_dim=8)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="TwoBranchSwin.*stem"):
        TwoBranchSwin(3, stem="resnet", **TINY)
    src = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TINY)
    path = tmp_path / "swin.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(ValueError, match="stem='conv' has no file weights"):
        TwoBranchSwin(3, stem="conv", pretrained=str(path), **TINY)
