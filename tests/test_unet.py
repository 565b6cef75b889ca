"""The U-Net and its blocks: shapes, parameter counts, input errors, attention, timestep embeddings."""
import math

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.embeddings import get_timestep_embedding

from minidiff.blocks import SpatialSelfAttention, attention, sinusoidal_embedding
from minidiff.models.unet import UNet, UNetConfig


def small_config(**overrides) -> UNetConfig:
    """Two levels, multi-head attention on both, two ResBlocks per level: covers what toy() does not."""
    defaults = dict(in_channels=3, out_channels=2, block_channels=(16, 32), attention_levels=(0, 1),
                    layers_per_block=2, attention_head_dim=8, norm_groups=4, downsample_padding=1)
    return UNetConfig(**{**defaults, **overrides})


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    return UNet(UNetConfig.toy()).eval()


# ---------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("H, W", [(16, 16), (8, 8), (32, 32), (24, 40)])
def test_toy_output_shape(toy, H, W):
    x = torch.randn(2, 1, H, W)
    with torch.no_grad():
        assert toy(x, torch.tensor([0, 999])).shape == (2, 1, H, W)


@pytest.mark.parametrize("H, W", [(8, 8), (6, 10), (16, 16)])
def test_small_config_output_shape(H, W):
    model = UNet(small_config()).eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, H, W), torch.tensor([1, 2, 3])).shape == (3, 2, H, W)


def test_gradients_reach_every_parameter():
    model = UNet(small_config())
    model(torch.randn(2, 3, 8, 8), torch.tensor([5, 500])).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_patches_are_a_unet_on_the_folded_image():
    """patch_size=2: fold 2x2 pixel patches into channels, run the levels at half the size, unfold the output.

    So the patched toy U-Net on 16x16 digits is, weight for weight, a 4-channel U-Net on 8x8 images."""
    torch.manual_seed(0)
    patched = UNet(UNetConfig.toy(patch_size=2)).eval()
    folded = UNet(UNetConfig.toy(in_channels=4, out_channels=4, sample_size=8, patch_size=1)).eval()
    folded.load_state_dict(patched.state_dict())
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([0, 10, 999])
    with torch.no_grad():
        out = patched(x, t)
        inner = folded(F.pixel_unshuffle(x, 2), t)                      # (3, 4, 8, 8)
    assert out.shape == x.shape
    torch.testing.assert_close(out, F.pixel_shuffle(inner, 2), rtol=0, atol=0)
    # the fold: pixel (2i + a, 2j + b) is channel 2a + b of folded pixel (i, j)
    assert torch.equal(F.pixel_unshuffle(x, 2)[:, 3, 1, 2], x[:, 0, 3, 5])
    assert patched.downsampling_factor == 8


# ---------------------------------------------------------------------------- parameter counts


def test_ddpm_cifar10_parameter_count():
    """Ho et al.'s CIFAR-10 model: 35.7M in the paper, 35,746,307 exactly (fact sheet A, sections 0 and 8)."""
    with torch.device("meta"):
        model = UNet(UNetConfig.ddpm_cifar10())
    assert count(model) == 35_746_307


def test_toy_parameter_count():
    """The fold adds only conv_in's and conv_out's extra channels: 3 x 16 x 9 weights in, 16 x 3 x 9 + 3 out."""
    with torch.device("meta"):
        assert count(UNet(UNetConfig.toy())) == 687_636
        assert count(UNet(UNetConfig.toy(patch_size=1))) == 686_769 == 687_636 - 2 * (3 * 16 * 9) - 3


def test_parameter_count_by_hand():
    """One level, one ResBlock down, two up, no resampling: every parameter accounted for."""
    c, temb = 8, 32
    config = UNetConfig(in_channels=1, out_channels=1, block_channels=(c,), attention_levels=(), layers_per_block=1,
                        norm_groups=4)
    linear = lambda i, o: i * o + o  # noqa: E731
    conv3 = lambda i, o: 9 * i * o + o  # noqa: E731
    norm = lambda ch: 2 * ch  # noqa: E731

    def resblock(i, o):
        return norm(i) + conv3(i, o) + linear(temb, o) + norm(o) + conv3(o, o) + (i * o + o if i != o else 0)

    attention_block = norm(c) + 4 * linear(c, c)
    expected = (linear(c, temb) + linear(temb, temb)      # time embedding MLP
                + conv3(1, c)                             # conv_in
                + resblock(c, c)                          # down
                + 2 * resblock(c, c) + attention_block    # middle
                + 2 * resblock(2 * c, c)                  # up: each takes a skip
                + norm(c) + conv3(c, 1))                  # out
    assert count(UNet(config)) == expected


# ---------------------------------------------------------------------------- input errors


def test_size_not_divisible(toy):
    with pytest.raises(ValueError, match=r"image size 12x16 is not divisible by 8: the U-Net folds 2x2 patches and "
                                         r"halves the resolution 2 times.*multiple of 8"):
        toy(torch.randn(1, 1, 12, 16), 0)
    with pytest.raises(ValueError, match=r"image size 18x16 is not divisible by 4: the U-Net halves the resolution "
                                         r"2 times.*multiple of 4"):
        UNet(UNetConfig.toy(patch_size=1))(torch.randn(1, 1, 18, 16), 0)


def test_wrong_channel_count(toy):
    message = r"expected images of shape \(B, 1, H, W\), got \(2, 3, 16, 16\).*in_channels=1"
    with pytest.raises(ValueError, match=message):
        toy(torch.randn(2, 3, 16, 16), 0)
    with pytest.raises(ValueError, match="expected images of shape"):
        toy(torch.randn(1, 16, 16), 0)


def test_bad_configs():
    with pytest.raises(ValueError, match=r"attention_levels \[3.*out of range.*levels 0..2"):
        UNetConfig.toy(attention_levels=(3,))
    with pytest.raises(ValueError, match=r"block_channels \[20\] are not divisible by norm_groups=8"):
        UNetConfig.toy(block_channels=(16, 20, 32))
    with pytest.raises(ValueError, match=r"patch_size=0: use 1 \(no patches\)"):
        UNetConfig.toy(patch_size=0)
    with pytest.raises(ValueError, match="not divisible by head_dim 12"):
        UNet(UNetConfig.toy(attention_head_dim=12))


# ---------------------------------------------------------------------------- timesteps


def test_scalar_and_batched_timesteps_agree(toy):
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        batched = toy(x, torch.full((3,), 250))
        for t in (250, 250.0, torch.tensor(250), torch.tensor([250, 250, 250])):
            torch.testing.assert_close(toy(x, t), batched)
        mixed = toy(x, torch.tensor([0, 250, 999]))
    torch.testing.assert_close(mixed[1], batched[1])
    assert not torch.allclose(mixed[0], batched[0])   # t changes the output


def test_batch_elements_are_independent(toy):
    x = torch.randn(4, 1, 16, 16)
    t = torch.tensor([3, 30, 300, 900])
    with torch.no_grad():
        together = toy(x, t)
        alone = torch.cat([toy(x[i:i + 1], t[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- attention


def naive_attention(q, k, v):
    """softmax(Q K^T / sqrt(d)) V written out (Vaswani et al. eq. 1)."""
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])      # (B, heads, L, L)
    return torch.softmax(scores, dim=-1) @ v                       # (B, heads, L, head_dim)


def test_attention_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 8, generator=g) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v), naive_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("head_dim", [None, 8])
def test_spatial_self_attention_matches_naive(head_dim):
    torch.manual_seed(0)
    C, H, W = 32, 4, 5
    block = SpatialSelfAttention(C, head_dim=head_dim, groups=8).eval()
    x = torch.randn(2, C, H, W)
    heads = C // (head_dim or C)
    h = torch.nn.functional.group_norm(x, 8, block.group_norm.weight, block.group_norm.bias, eps=1e-6)
    h = h.flatten(2).transpose(1, 2)                                           # (B, L, C)
    split = lambda t: t.reshape(2, H * W, heads, C // heads).transpose(1, 2)   # noqa: E731  (B, heads, L, head_dim)
    out = naive_attention(split(block.to_q(h)), split(block.to_k(h)), split(block.to_v(h)))
    out = block.to_out(out.transpose(1, 2).reshape(2, H * W, C))               # (B, L, C)
    expected = x + out.transpose(1, 2).reshape(2, C, H, W)
    with torch.no_grad():
        torch.testing.assert_close(block(x), expected, rtol=1e-5, atol=1e-5)
    assert block.heads == heads


# ---------------------------------------------------------------------------- timestep embedding


@pytest.mark.parametrize("dim", [32, 128, 320, 33])
@pytest.mark.parametrize("flip_sin_to_cos, freq_shift", [(False, 1), (True, 0)])
def test_sinusoidal_embedding_matches_diffusers(dim, flip_sin_to_cos, freq_shift):
    t = torch.tensor([0, 1, 17, 500, 999, 2.5])
    ours = sinusoidal_embedding(t, dim, flip_sin_to_cos, freq_shift)
    theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=flip_sin_to_cos, downscale_freq_shift=freq_shift)
    assert ours.shape == (6, dim)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_sinusoidal_embedding_stable_diffusion_anchor():
    """SD's 320-d embedding of t = 999, cos first, denominator half (fact sheet A, section 9, pitfall 2)."""
    emb = sinusoidal_embedding(torch.tensor([999]), 320, flip_sin_to_cos=True, freq_shift=0)[0]
    for i, value in {0: 0.99965, 1: 0.80268, 160: -0.02646, 161: 0.59641}.items():
        assert emb[i].item() == pytest.approx(value, abs=1e-5), i


def test_sinusoidal_embedding_ddpm_convention():
    """DDPM: sin first, w_i = 10000^(-i / (half - 1)): the first sine is sin(t), the last sin(t / 10000)."""
    t = torch.tensor([7.0, 999.0])
    emb = sinusoidal_embedding(t, 64)                      # flip_sin_to_cos=False, freq_shift=1
    torch.testing.assert_close(emb[:, 0], torch.sin(t))
    torch.testing.assert_close(emb[:, 31], torch.sin(t / 10000))
    torch.testing.assert_close(emb[:, 32], torch.cos(t))
    torch.testing.assert_close(emb[:, 63], torch.cos(t / 10000))
