import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from models.diffusion import (
    ClassLabelEmbedding,
    ConditionalLatentUNet,
    LatentAutoencoder,
    build_autoencoder_kl,
    contrastive_consistency_loss,
    decode_latents,
    encode_latents,
    load_autoencoder_kl,
    make_sampling_scheduler,
    predict_x0,
    sample_latents,
)


def tiny_net(num_classes: int = 3) -> ConditionalLatentUNet:
    torch.manual_seed(0)
    return ConditionalLatentUNet(
        num_classes, sample_size=8, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    )


def test_label_embedding_shapes_null_and_errors():
    emb = ClassLabelEmbedding(3, 16, num_tokens=2)
    out = emb(torch.tensor([0, 3]))
    assert out.shape == (2, 2, 16)
    assert emb.null_label == 3
    assert not torch.allclose(out[0], out[1])
    assert "null_label=3" in repr(emb)
    with pytest.raises(ValueError, match="ClassLabelEmbedding"):
        emb(torch.tensor([4]))
    with pytest.raises(ValueError, match="ClassLabelEmbedding"):
        ClassLabelEmbedding(0, 16)


def test_conditioning_changes_output_and_null_label_works():
    net = tiny_net().eval()
    with torch.no_grad():
        # make the label embeddings clearly different so the effect is not drowned by init scale
        net.label_embedding.embedding.weight.normal_(std=1.0)
        z = torch.randn(1, 4, 8, 8).repeat(4, 1, 1, 1)
        out = net(z, torch.tensor(10), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 4, 8, 8)
    assert torch.isfinite(out).all()
    for a in range(4):
        for b in range(a + 1, 4):
            assert (out[a] - out[b]).abs().max() > 1e-5


def test_gradients_reach_unet_and_embedding():
    net = tiny_net()
    out = net(torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), torch.tensor([0, 3]))
    out.pow(2).mean().backward()
    assert net.label_embedding.embedding.weight.grad is not None
    assert net.label_embedding.embedding.weight.grad[[0, 3]].abs().sum() > 0
    assert net.label_embedding.embedding.weight.grad[[1, 2]].abs().sum() == 0
    assert net.unet.conv_in.weight.grad.abs().sum() > 0


def test_scheduler_round_trip_recovers_x0():
    sched = DDPMScheduler(num_train_timesteps=1000)
    x0 = torch.randn(3, 4, 8, 8)
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 400, 999])
    z_t = sched.add_noise(x0, noise, t)
    assert not torch.allclose(z_t, x0)
    torch.testing.assert_close(predict_x0(sched, z_t, noise, t), x0, atol=2e-3, rtol=1e-3)
    wrong = predict_x0(sched, z_t, torch.zeros_like(noise), t)
    assert (wrong - x0).abs().max() > 0.1


def make_features():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    # class 0 features along e0, class 1 along e1: squared distance of normalised vectors = 2 > margin 1
    x = torch.zeros(4, 8)
    x[:2, 0] = 1.0
    x[2:, 1] = 1.0
    x = x + 0.01 * torch.randn(4, 8)
    z = torch.randn(4, 4, 2, 2)
    return x, z, labels


@pytest.mark.parametrize("pairing", ["triplet", "contrastive"])
def test_consistency_loss_zero_when_generated_equals_real(pairing):
    x, z, labels = make_features()
    loss = contrastive_consistency_loss(x.clone(), x, z.clone(), z, labels, margin=1.0, pairing=pairing)
    assert loss.item() == pytest.approx(0.0, abs=1e-3)


@pytest.mark.parametrize("pairing", ["triplet", "contrastive"])
def test_consistency_loss_positive_and_has_gradients(pairing):
    x, z, labels = make_features()
    # generated samples look like the other class and drift in latent space
    x_gen = (0.8 * x.flip(0) + 0.2 * x).requires_grad_(True)
    z_gen = (z + 1.0).requires_grad_(True)
    loss = contrastive_consistency_loss(x_gen, x, z_gen, z, labels, margin=1.0, pairing=pairing)
    assert loss.item() > 0.3
    loss.backward()
    assert x_gen.grad.abs().sum() > 0
    assert z_gen.grad.abs().sum() > 0


def test_consistency_loss_mask_and_errors():
    x, z, labels = make_features()
    x_gen = x.flip(0)
    full = contrastive_consistency_loss(x_gen, x, z, z, labels)
    none = contrastive_consistency_loss(x_gen, x, z, z, labels, mask=torch.zeros(4, dtype=torch.bool))
    assert full > 0 and none == 0
    # a batch with a single class has no negatives: triplet reading leaves the anchors out
    same = contrastive_consistency_loss(x_gen, x, z + 1, z, torch.zeros(4, dtype=torch.long))
    assert same == 0
    with pytest.raises(ValueError, match="pairing"):
        contrastive_consistency_loss(x, x, z, z, labels, pairing="cosine")


def test_sampling_is_seed_reproducible_and_batch_independent():
    net = tiny_net().eval()
    sched = make_sampling_scheduler(DDPMScheduler(num_train_timesteps=100), "ddim")
    assert isinstance(sched, DDIMScheduler)
    labels = torch.tensor([0, 1, 2])
    a = sample_latents(net, sched, labels, [1, 2, 3], num_inference_steps=4, guidance_scale=2.0)
    b = sample_latents(net, sched, labels[1:], [2, 3], num_inference_steps=4, guidance_scale=2.0)
    assert a.shape == (3, 4, 8, 8)
    torch.testing.assert_close(a[1:], b, atol=1e-4, rtol=1e-4)
    c = sample_latents(net, sched, labels, [4, 5, 6], num_inference_steps=4, guidance_scale=2.0)
    assert not torch.allclose(a, c)
    ddpm = make_sampling_scheduler(DDPMScheduler(num_train_timesteps=100), "ddpm")
    d1 = sample_latents(net, ddpm, labels, [1, 2, 3], num_inference_steps=5, guidance_scale=1.0)
    d2 = sample_latents(net, ddpm, labels[:1], [1], num_inference_steps=5, guidance_scale=1.0)
    torch.testing.assert_close(d1[:1], d2, atol=1e-4, rtol=1e-4)


def test_sampling_rejects_bad_steps_and_guidance():
    net = tiny_net().eval()
    sched = make_sampling_scheduler(DDPMScheduler(num_train_timesteps=100), "ddim")
    with pytest.raises(ValueError, match="num_inference_steps"):
        sample_latents(net, sched, torch.tensor([0]), [0], num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        sample_latents(net, sched, torch.tensor([0]), [0], num_inference_steps=101)
    with pytest.raises(ValueError, match="guidance_scale"):
        sample_latents(net, sched, torch.tensor([0]), [0], num_inference_steps=2, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="sampler"):
        make_sampling_scheduler(DDPMScheduler(), "euler")


def test_vae_round_trip_scaling_and_local_load(tmp_path):
    vae = build_autoencoder_kl(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4,
                               sample_size=16, scaling_factor=0.5).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = encode_latents(vae, x)
        raw = vae.encode(x).latent_dist.mode()
        assert z.shape == (2, 4, 8, 8)
        torch.testing.assert_close(z, raw * 0.5)
        assert decode_latents(vae, z).shape == x.shape
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_autoencoder_kl(tmp_path / "vae")
    torch.testing.assert_close(loaded.encoder.conv_in.weight, vae.encoder.conv_in.weight)
    with pytest.raises(FileNotFoundError, match="no AutoencoderKL"):
        load_autoencoder_kl(tmp_path / "missing")


def test_latent_autoencoder_is_the_builders_autoencoder_with_a_forward() -> None:
    """LatentAutoencoder types the VAE settings once (LitVAE injects it): the AutoencoderKL of
    build_autoencoder_kl, forward = (reconstruction, posterior mean, KL), a posterior sample only in training."""
    torch.manual_seed(0)
    net = LatentAutoencoder(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16)
    built = build_autoencoder_kl(block_out_channels=(8, 16), latent_channels=4, norm_num_groups=4, sample_size=16)
    assert dict(net.config) == dict(built.config)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, mean, kl = net.eval()(x)
    assert recon.shape == x.shape and mean.shape == (2, 4, 8, 8) and kl.shape == (2,)
    torch.testing.assert_close(net(x)[0], recon)  # eval: the posterior mean, deterministic
    assert not torch.equal(net.train()(x)[0], recon)  # training: a posterior sample
    assert "latent_channels=4" in repr(net) and "downsampling=2" in repr(net)
