"""Chapter 3's U-Net: multi-head (cross-)attention against a naive implementation, the transformer blocks, the
text-conditional presets, and the promise that Chapters 1 and 2's networks did not change."""
import hashlib
import math

import pytest
import torch
import torch.nn.functional as F

from minidiff.blocks import GEGLU, Attention, SpatialSelfAttention, SpatialTransformer, TransformerBlock
from minidiff.config import apply_overrides, from_dict, to_dict
from minidiff.models import count_parameters
from minidiff.models.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def naive_attention(x: torch.Tensor, context: torch.Tensor, attn: Attention) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V head by head and row by row, with explicit weights: no fused kernel, no einops."""
    B, L, C = x.shape
    heads, d = attn.heads, C // attn.heads
    q, k, v = x @ attn.to_q.weight.T, context @ attn.to_k.weight.T, context @ attn.to_v.weight.T
    out = torch.zeros(B, L, C, dtype=x.dtype)
    for b in range(B):
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            for i in range(L):
                scores = torch.stack([q[b, i, cols] @ k[b, j, cols] for j in range(context.shape[1])]) / math.sqrt(d)
                weights = torch.exp(scores - scores.max())
                weights = weights / weights.sum()
                out[b, i, cols] = (weights[:, None] * v[b, :, cols]).sum(0)
    return out @ attn.to_out.weight.T + attn.to_out.bias


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every weight, norms included (they start at 1 and 0), so that no term can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# ---------------------------------------------------------------------------- attention against the formulas


def test_cross_attention_matches_naive_loops():
    """Context of another length (5 tokens vs 6 pixels) and another width (7 vs 8), two heads."""
    torch.manual_seed(0)
    attn = randomize(Attention(8, heads=2, context_dim=7)).double()
    x, context = torch.randn(3, 6, 8, dtype=torch.float64), torch.randn(3, 5, 7, dtype=torch.float64)
    expected = naive_attention(x, context, attn)
    assert attn(x, context).shape == (3, 6, 8)
    assert torch.allclose(attn(x, context), expected, atol=1e-12)


def test_self_attention_is_cross_attention_to_itself():
    torch.manual_seed(0)
    attn = randomize(Attention(12, heads=3))
    x = torch.randn(2, 5, 12)
    assert (attn(x) - naive_attention(x, x, attn)).abs().max().item() <= 1e-5
    assert attn.to_q.bias is None and attn.to_k.bias is None and attn.to_v.bias is None   # as in SD
    assert attn.to_out.bias is not None


def test_attention_rejects_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="not divisible by heads=3"):
        Attention(8, heads=3)


def test_geglu_formula():
    """GEGLU(x) = (x W + b) * GELU(x V + c), GELU(u) = u * Phi(u) with Phi the standard normal CDF."""
    torch.manual_seed(0)
    geglu = GEGLU(4, 6).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    W, V = geglu.proj.weight[:6], geglu.proj.weight[6:]
    b, c = geglu.proj.bias[:6], geglu.proj.bias[6:]
    u = x @ V.T + c
    phi = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    assert torch.allclose(geglu(x), (x @ W.T + b) * u * phi, atol=1e-12)


def test_transformer_block_is_three_residual_steps():
    """x + attn1(LN1 x), then + attn2(LN2 x, context), then + GEGLU feed-forward(LN3 x)."""
    torch.manual_seed(0)
    block = randomize(TransformerBlock(8, heads=2, context_dim=6)).double()
    x, context = torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, 3, 6, dtype=torch.float64)
    h = x + naive_attention(block.norm1(x), block.norm1(x), block.attn1)
    h = h + naive_attention(block.norm2(h), context, block.attn2)
    ff = block.ff.net
    h = h + ff[2](ff[0](block.norm3(h)))
    assert torch.allclose(block(x, context), h, atol=1e-12)


def test_linear_and_conv_projections_compute_the_same_function():
    """proj_in/proj_out as 1x1 convs (SD 1) or as Linear layers on the tokens (SD 2): the same map, other layout."""
    torch.manual_seed(0)
    conv = randomize(SpatialTransformer(16, heads=4, context_dim=5, depth=2, groups=4)).double()
    linear = SpatialTransformer(16, heads=4, context_dim=5, depth=2, groups=4, use_linear_projection=True).double()
    state = {k: v.flatten(1) if k.startswith(("proj_in.weight", "proj_out.weight")) else v
             for k, v in conv.state_dict().items()}
    linear.load_state_dict(state)
    x, context = torch.randn(2, 16, 3, 5, dtype=torch.float64), torch.randn(2, 7, 5, dtype=torch.float64)
    assert conv(x, context).shape == x.shape
    assert torch.allclose(conv(x, context), linear(x, context), atol=1e-12)
    assert len(conv.transformer_blocks) == 2


def test_spatial_transformer_is_a_residual_around_the_pixels_as_tokens():
    """With proj_out zeroed the layer is the identity; otherwise each pixel is one token of width C."""
    torch.manual_seed(0)
    layer = randomize(SpatialTransformer(8, heads=2, context_dim=3, groups=2)).double()
    x, context = torch.randn(1, 8, 2, 3, dtype=torch.float64), torch.randn(1, 4, 3, dtype=torch.float64)
    tokens = layer.proj_in(layer.norm(x)).flatten(2).transpose(1, 2)            # (1, 6, 8): H*W tokens
    tokens = layer.transformer_blocks[0](tokens, context)
    expected = x + layer.proj_out(tokens.transpose(1, 2).reshape(1, 8, 2, 3))
    assert torch.allclose(layer(x, context), expected, atol=1e-12)
    with torch.no_grad():
        layer.proj_out.weight.zero_()
        layer.proj_out.bias.zero_()
    assert torch.equal(layer(x, context), x)


# ---------------------------------------------------------------------------- presets


def test_sd15_unet_parameter_count():
    """Fact sheet A, sections 0 and 5: SD 1.5's UNet2DConditionModel has 859,520,964 parameters ("860M")."""
    assert count_parameters("sd15-unet") == 859_520_964


def test_sd15_unet_parameter_breakdown():
    """The per-block breakdown of fact sheet A, section 5 (what to debug a wrong total against)."""
    with torch.device("meta"):
        model = UNet(UNetConfig.sd15())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(model.conv_in) == 11_840 and count(model.time_embedding) == 2_050_560
    assert [count(b) for b in model.down_blocks] == [10_524_480, 36_818_560, 139_992_320, 62_277_120]
    assert count(model.mid_block) == 97_038_080
    assert [count(b) for b in model.up_blocks] == [162_241_280, 258_330_880, 71_413_120, 18_810_560]
    assert count(model.conv_norm_out) == 640 and count(model.conv_out) == 11_524
    transformers = sum(p.numel() for n, p in model.named_parameters()
                       if ".attentions." in n or "mid_block.attention." in n)
    assert transformers == 267_239_360
    text_dependent = sum(p.numel() for n, p in model.named_parameters() if ".attn2.to_k." in n or ".attn2.to_v." in n)
    assert text_dependent == 19_169_280


@pytest.fixture(scope="module")
def text_toy():
    torch.manual_seed(0)
    return randomize(UNet(UNetConfig.text_toy()), seed=1).eval()


@pytest.mark.parametrize("tokens", [1, 7, 77])
def test_text_toy_output_shape(text_toy, tokens):
    x = torch.randn(3, 4, 8, 8)                                               # the toy autoencoder's latents
    context = torch.randn(3, tokens, 64)
    with torch.no_grad():
        assert text_toy(x, torch.tensor([0, 500, 999]), context).shape == (3, 4, 8, 8)
        assert text_toy(x, 10, context).shape == (3, 4, 8, 8)                 # scalar t
        assert text_toy(torch.randn(3, 4, 12, 16), 10, context).shape == (3, 4, 12, 16)


def test_text_toy_is_small():
    assert UNetConfig.text_toy().cross_attention_dim == 64
    assert count_parameters("unet-text-toy") < 2_000_000


def test_the_context_conditions_each_image_separately(text_toy):
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 300])
    context = torch.randn(2, 5, 64)
    other = context.clone()
    other[1] = torch.randn(5, 64)                                             # change the second image's text only
    with torch.no_grad():
        a, b = text_toy(x, t, context), text_toy(x, t, other)
    assert (a[1] - b[1]).abs().max().item() > 1e-3                           # the text matters ...
    assert torch.equal(a[0], b[0])                                            # ... for its own image only


def test_gradients_reach_every_parameter_of_the_text_unet():
    model = UNet(UNetConfig.text_toy(attention_heads=(2, 4), transformer_depth=(1, 2)))
    context = torch.randn(2, 3, 64, requires_grad=True)
    model(torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), context).square().mean().backward()
    assert [name for name, p in model.named_parameters() if p.grad is None] == []
    assert context.grad.abs().sum().item() > 0                                # the text encoder would learn too


def test_heads_and_depth_per_level():
    config = UNetConfig.text_toy(attention_heads=(2, 8), transformer_depth=(1, 3))
    model = UNet(config)
    down0, down1 = model.down_blocks[0].attentions[0], model.down_blocks[1].attentions[0]
    assert down0.transformer_blocks[0].attn1.heads == 2 and len(down0.transformer_blocks) == 1
    assert down1.transformer_blocks[0].attn2.heads == 8 and len(down1.transformer_blocks) == 3
    # the middle block takes the last level's settings, as in Stable Diffusion
    assert model.mid_block.attention.transformer_blocks[0].attn1.heads == 8
    assert len(model.mid_block.attention.transformer_blocks) == 3
    assert UNetConfig.text_toy(attention_heads=4).attention_heads == (4,)  # a bare int means every level


# ---------------------------------------------------------------------------- errors


def test_a_text_unet_called_without_context_says_so(text_toy):
    with pytest.raises(ValueError, match=r"text-conditional \(cross_attention_dim=64\): pass context"):
        text_toy(torch.randn(1, 4, 8, 8), 5)


def test_an_unconditional_unet_refuses_a_context():
    model = UNet(UNetConfig.toy())
    with pytest.raises(ValueError, match="has no cross-attention.*call it without context"):
        model(torch.randn(1, 1, 16, 16), 5, torch.randn(1, 3, 64))


@pytest.mark.parametrize("shape", [(1, 5, 32), (2, 5, 64), (5, 64)])
def test_context_of_the_wrong_shape(text_toy, shape):
    with pytest.raises(ValueError, match=r"context has shape .* expected \(1, L_text, 64\)"):
        text_toy(torch.randn(1, 4, 8, 8), 5, torch.randn(*shape))


@pytest.mark.parametrize("overrides, message", [
    (dict(attention_head_dim=8), "takes attention_heads .* instead"),
    (dict(attention_heads=(3,)), "level 0 has 32 channels, not divisible by 3 attention heads"),
    (dict(attention_heads=(2, 2, 2)), r"attention_heads=\(2, 2, 2\) needs one value per level \(2\)"),
    (dict(transformer_depth=(1, 1, 1)), r"transformer_depth=.* needs one value per level"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig.text_toy(**overrides)


# ---------------------------------------------------------------------------- configs and earlier chapters


def test_text_config_round_trips_through_json_and_overrides():
    config = UNetConfig.text_toy(attention_heads=(2, 4), transformer_depth=(1, 2), use_linear_projection=True)
    assert from_dict(UNetConfig, to_dict(config)) == config
    changed = apply_overrides({"model": config}, ["cross_attention_dim=32", "attention_heads=4,8",
                                                  "transformer_depth=2"])["model"]
    assert (changed.cross_attention_dim, changed.attention_heads, changed.transformer_depth) == (32, (4, 8), (2,))


# sha256 of "name:shape" lines of each preset's state dict, computed with the Chapter 2 code (commit e35b018),
# before cross-attention existed: Chapter 1 and 2 checkpoints keep loading, key for key.
CHAPTER_1_2_LAYOUTS = {"toy": "911890baf2aa4d7d", "shapes_toy": "7073adbb32c836d4",
                       "latent_toy": "5a34747346fb720d", "ddpm_cifar10": "8ca660be3a7d5fdf"}


@pytest.mark.parametrize("preset", CHAPTER_1_2_LAYOUTS)
def test_earlier_chapters_networks_are_unchanged(preset):
    # the toy preset has folded 2x2 patches since 2026-12-05 (patch_size=2); unfolded, it is the original network
    config = getattr(UNetConfig, preset)(**({"patch_size": 1} if preset == "toy" else {}))
    assert config.cross_attention_dim is None
    with torch.device("meta"):
        model = UNet(config)
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == CHAPTER_1_2_LAYOUTS[preset]
    assert not any(isinstance(m, SpatialTransformer) for m in model.modules())
    assert any(isinstance(m, SpatialSelfAttention) for m in model.modules())


def test_runs_saved_before_patches_load_unfolded():
    """A config.json written before patch_size existed has no such key: it loads as patch_size=1, its network."""
    saved = to_dict(UNetConfig.toy(patch_size=1))
    del saved["patch_size"]
    assert from_dict(UNetConfig, saved) == UNetConfig.toy(patch_size=1)


def test_chapter_1_forward_still_takes_two_arguments():
    torch.manual_seed(0)
    model = UNet(UNetConfig.toy()).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([3, 500])), model(x, torch.tensor([3, 500]), None))
    assert F.mse_loss(model(x, 3), x).item() > 0


def test_position_embedding_starts_as_stable_diffusion_and_learns_positions():
    torch.manual_seed(0)
    plain = UNet(UNetConfig.text_toy(block_channels=(16, 32), cross_attention_dim=8, norm_groups=4))
    torch.manual_seed(0)
    positioned = UNet(UNetConfig.text_toy(block_channels=(16, 32), cross_attention_dim=8, norm_groups=4,
                                          position_embedding=True))
    extra = set(positioned.state_dict()) - set(plain.state_dict())
    assert extra and all(k.endswith("position_embedding") for k in extra)
    assert not any(k.endswith("position_embedding") for k in plain.state_dict())
    positioned.load_state_dict(plain.state_dict(), strict=False)       # same weights, zero position embeddings
    x, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 3, 8)
    assert torch.allclose(positioned(x, t, context), plain(x, t, context), atol=1e-6)
    # once trained, the embedding breaks translation symmetry: the loss reaches it
    positioned(x, t, context).pow(2).mean().backward()
    grads = [p.grad for n, p in positioned.named_parameters() if n.endswith("position_embedding")]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    with pytest.raises(ValueError, match="training resolution"):
        positioned(torch.randn(1, 4, 16, 16), torch.tensor([1]), torch.randn(1, 3, 8))
