"""The text-to-image pipeline on tiny random parts: shapes, determinism, guidance on/off, negative prompts, errors."""
import pytest
import torch

from minidiff.data.tokenizer import BPETokenizer
from minidiff.models import Autoencoder, AutoencoderConfig, UNet, UNetConfig
from minidiff.models.clip import CLIPTextConfig, CLIPTextEncoder
from minidiff.pipelines.text_to_image import TextToImage
from minidiff.process import GaussianDiffusion, NoiseSchedule, sample

CAPTIONS = ["a red circle", "a blue square left of a green triangle", "two yellow crosses", "a purple diamond"]


@pytest.fixture(scope="module")
def pipeline():
    torch.manual_seed(0)
    tokenizer = BPETokenizer.train(CAPTIONS, vocab_size=600)
    text = CLIPTextEncoder(CLIPTextConfig.toy(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_id, width=32,
                                              heads=2, mlp_width=64, context_length=32))
    unet = UNet(UNetConfig.text_toy(block_channels=(16, 32), cross_attention_dim=32))
    vae = Autoencoder(AutoencoderConfig.toy())
    return TextToImage(unet, vae, text, tokenizer, context_length=32).eval()


DIFFUSION = GaussianDiffusion(NoiseSchedule.make("scaled_linear", 1000))


def test_generate_shapes_and_range(pipeline):
    images = pipeline.generate(CAPTIONS[:3], DIFFUSION, guidance_scale=3.0, steps=4, seed=0)
    assert images.shape == (3, 3, 32, 32)
    assert images.min() >= -1 and images.max() <= 1


def test_generate_is_deterministic_and_depends_on_seed_and_prompt(pipeline):
    a = pipeline.generate(["a red circle"], DIFFUSION, steps=3, seed=1)
    assert torch.equal(a, pipeline.generate(["a red circle"], DIFFUSION, steps=3, seed=1))
    assert not torch.equal(a, pipeline.generate(["a red circle"], DIFFUSION, steps=3, seed=2))
    assert not torch.equal(a, pipeline.generate(["a purple diamond"], DIFFUSION, steps=3, seed=1))


def test_guidance_scale_one_ignores_the_negative_prompt(pipeline):
    kwargs = dict(guidance_scale=1.0, steps=3, seed=0)
    assert torch.allclose(pipeline.generate("a red circle", DIFFUSION, negative_prompt="", **kwargs),
                          pipeline.generate("a red circle", DIFFUSION, negative_prompt="a blue square", **kwargs))
    kwargs["guidance_scale"] = 4.0
    assert not torch.allclose(pipeline.generate("a red circle", DIFFUSION, negative_prompt="", **kwargs),
                              pipeline.generate("a red circle", DIFFUSION, negative_prompt="a blue square", **kwargs))


def test_guidance_zero_is_the_unconditional_model(pipeline):
    """At scale 0 the prompt no longer matters: only the negative ("") branch steers."""
    kwargs = dict(guidance_scale=0.0, steps=3, seed=0)
    assert torch.allclose(pipeline.generate("a red circle", DIFFUSION, **kwargs),
                          pipeline.generate("two yellow crosses", DIFFUSION, **kwargs), atol=1e-6)


def test_given_latents_are_the_starting_noise(pipeline):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    a = pipeline.generate(CAPTIONS[:2], DIFFUSION, steps=3, seed=0, latents=latents)
    b = pipeline.generate(CAPTIONS[:2], DIFFUSION, steps=3, seed=9, latents=latents)   # DDIM eta=0: seed unused
    assert torch.equal(a, b)


def test_frozen_parts_and_training_mode(pipeline):
    assert not any(p.requires_grad for p in pipeline.text_encoder.parameters())
    assert not any(p.requires_grad for p in pipeline.autoencoder.parameters())
    pipeline.train()
    assert pipeline.denoiser.training and not pipeline.text_encoder.training and not pipeline.autoencoder.training
    pipeline.eval()


def test_bad_input_errors(pipeline):
    with pytest.raises(ValueError, match="no prompts"):
        pipeline.generate([], DIFFUSION, steps=2)
    with pytest.raises(ValueError, match="negative prompts"):
        pipeline.generate(CAPTIONS[:2], DIFFUSION, negative_prompt=["a", "b", "c"], steps=2)
    with pytest.raises(ValueError, match="noise images"):
        pipeline.generate(CAPTIONS[:2], DIFFUSION, latents=torch.randn(3, 4, 8, 8), steps=2)
    with pytest.raises(ValueError, match="initial_noise"):
        sample(lambda x, t: x, DIFFUSION, (2, 4, 8, 8), steps=2, initial_noise=torch.randn(2, 4, 4, 4))


def test_attention_probabilities_are_what_forward_uses():
    from minidiff.blocks.attention import Attention

    torch.manual_seed(0)
    layer = Attention(8, heads=2, context_dim=6)
    x, context = torch.randn(2, 5, 8), torch.randn(2, 3, 6)
    p = layer.probabilities(x, context)                                  # (2, 2, 5, 3)
    assert torch.allclose(p.sum(-1), torch.ones(2, 2, 5))
    v = layer.to_v(context).view(2, 3, 2, 4).transpose(1, 2)              # (B, heads, L_ctx, d)
    by_hand = layer.to_out((p @ v).transpose(1, 2).reshape(2, 5, 8))
    assert torch.allclose(by_hand, layer(x, context), atol=1e-6)


def test_cross_attention_maps_one_map_per_token_and_layer(pipeline):
    from minidiff.pipelines.text_to_image import cross_attention_maps

    context = pipeline.encode_prompts(["a red circle", "a blue square"])  # (2, 32, 32)
    z = torch.randn(2, 4, 8, 8)
    maps = cross_attention_maps(pipeline.denoiser, z, torch.tensor([500, 500]), context)
    # one per attention layer: 8x8 and 4x4 on the way down, the middle (4x4), two per level on the way up
    assert len(maps) == 7
    assert sorted(m.shape[-1] for m in maps.values()) == [4, 4, 4, 4, 8, 8, 8]
    for m in maps.values():
        assert m.shape[:2] == (2, 32) and torch.allclose(m.sum(dim=1), torch.ones(2, m.shape[-1], m.shape[-1]))
    assert not any(h for h in pipeline.denoiser.modules() if h._forward_hooks)   # hooks removed
