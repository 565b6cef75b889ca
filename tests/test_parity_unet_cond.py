"""Loading diffusers UNet2DConditionModel folders (Stable Diffusion's U-Net) into minidiff's U-Net.

Each case builds a tiny random UNet2DConditionModel, saves it with save_pretrained, loads it with
minidiff.load_pretrained, and compares the two networks on the same (x_t, t, context): max abs diff <= 1e-5
in float32. Options minidiff does not implement are refused with a one-line PretrainedError.
The other direction: a tiny random minidiff U-Net converted with minidiff.models.unet_diffusers.to_diffusers loads
into diffusers' UNet2DConditionModel and computes the same (<= 1e-5), and minidiff -> diffusers layout -> minidiff
is the identity.
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel  # noqa: E402

import minidiff  # noqa: E402
from minidiff.models.unet import UNet, UNetConfig  # noqa: E402
from minidiff.models.unet_diffusers import to_diffusers  # noqa: E402
from minidiff.weights import PretrainedError, cond_unet_config_from_diffusers  # noqa: E402
from parity_helpers import assert_round_trip, edit_config, randomized  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SD_LAYOUT = dict(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))

# diffusers' attention_head_dim is the NUMBER of heads here (fact sheet A, section 5); up_block_types[i] is level n-1-i.
CONFIGS = {
    # SD 1.5's layout in miniature: cross-attention at every level but the lowest, 2 heads, 1x1 conv projections
    "sd15-layout": dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16, attention_head_dim=2,
                        norm_num_groups=8, **SD_LAYOUT),
    # SD 2's options: linear projections and a head count per level (2 at level 0, 4 at level 1 and the middle)
    "linear-projection-heads-per-level": dict(
        block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=24, attention_head_dim=[2, 4],
        use_linear_projection=True, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # two transformer blocks per attention layer, 8 heads, 32 groups, three levels, diffusers' DDPM-style embedding
    "depth-2": dict(block_out_channels=(32, 32, 64), layers_per_block=2, cross_attention_dim=16, attention_head_dim=8,
                    transformer_layers_per_block=2, norm_num_groups=32, flip_sin_to_cos=False, freq_shift=1,
                    downsample_padding=0, norm_eps=1e-6,
                    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")),
    # a depth per level, and an up path with less attention than the down path (levels 0 and 1 down, 0 up)
    "depth-per-level-asymmetric": dict(
        block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=8, attention_head_dim=[2, 4],
        transformer_layers_per_block=[1, 2], norm_num_groups=4, in_channels=3, out_channels=5,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # ADM's AdaGN (scale and shift from the timestep) in SD 1.5's layout
    "scale-shift": dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=16, attention_head_dim=2,
                        norm_num_groups=8, resnet_time_scale_shift="scale_shift", **SD_LAYOUT),
}

# UNetConfig.text_toy() spelled as diffusers arguments
TEXT_TOY = dict(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
                attention_head_dim=2, norm_num_groups=8,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))

# fact sheet A, section 8: SD 1.x's U-Net
SD15 = dict(sample_size=64, in_channels=4, out_channels=4, flip_sin_to_cos=True, freq_shift=0,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2, downsample_padding=1, norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768,
            attention_head_dim=8)


# minidiff configs for the other direction (minidiff -> diffusers)
MINIDIFF_CONFIGS = {
    "text-toy": UNetConfig.text_toy(),
    # heads and depths per level, linear projections, attention up only at level 0, AdaGN
    "per-level-asymmetric": UNetConfig.text_toy(block_channels=(16, 32), attention_heads=(2, 4),
                                                transformer_depth=(1, 2), up_attention_levels=(0,),
                                                use_linear_projection=True, time_scale_shift=True, in_channels=3,
                                                out_channels=5, cross_attention_dim=8),
}


def save(tmp_path, **config) -> tuple[UNet2DConditionModel, str]:
    torch.manual_seed(0)
    model = randomized(UNet2DConditionModel(**config))
    model.save_pretrained(tmp_path)
    return model, str(tmp_path)



def inputs(config: dict, dtype=torch.float32, tokens: int = 7):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, config.get("in_channels", 4), 16, 24, generator=g, dtype=dtype)   # not square
    context = torch.randn(2, tokens, config["cross_attention_dim"], generator=g, dtype=dtype)
    return x, context


# ---------------------------------------------------------------------------- same outputs


@pytest.mark.parametrize("name", CONFIGS)
def test_loaded_cond_unet_matches_diffusers(tmp_path, name):
    theirs, path = save(tmp_path, **CONFIGS[name])
    ours = minidiff.load_pretrained(path)
    assert isinstance(ours, UNet) and not ours.training
    assert ours.config.cross_attention_dim == CONFIGS[name]["cross_attention_dim"]
    x, context = inputs(CONFIGS[name])
    with torch.no_grad():
        for t in (torch.tensor([3, 871]), 500):
            expected = theirs(x, t, encoder_hidden_states=context).sample
            got = ours(x, t, context)
            assert got.shape == expected.shape == (2, CONFIGS[name].get("out_channels", 4), 16, 24)
            assert (got - expected).abs().max().item() <= 1e-5
        # the text matters in both networks, and in the same way
        other = torch.randn_like(context)
        assert (theirs(x, 500, encoder_hidden_states=other).sample - expected).abs().max().item() > 1e-3
        assert (ours(x, 500, other) - theirs(x, 500, encoder_hidden_states=other).sample).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_loaded_cond_unet_matches_diffusers_in_float64(tmp_path, name):
    """Without float32 rounding the two compute the same function to ~1e-14."""
    theirs, path = save(tmp_path, **CONFIGS[name])
    ours, theirs = minidiff.load_pretrained(path).double(), theirs.double()
    x, context = inputs(CONFIGS[name], torch.float64, tokens=3)
    with torch.no_grad():
        t = torch.tensor([3, 871])
        assert (ours(x, t, context) - theirs(x, t, encoder_hidden_states=context).sample).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_converted_minidiff_unet_matches_diffusers(name):
    """minidiff -> diffusers with the inverse converter: UNet2DConditionModel.from_config + a strict load."""
    config = MINIDIFF_CONFIGS[name]
    torch.manual_seed(0)
    ours = randomized(UNet(config))
    state_dict, reference_config = to_diffusers(ours.state_dict(), config)
    assert reference_config["_class_name"] == "UNet2DConditionModel"
    theirs = UNet2DConditionModel.from_config(reference_config)
    theirs.load_state_dict(state_dict)                                   # strict: every key, every shape
    theirs.eval()
    x, context = inputs(dict(in_channels=config.in_channels, cross_attention_dim=config.cross_attention_dim))
    with torch.no_grad():
        t = torch.tensor([3, 871])
        assert (ours(x, t, context) - theirs(x, t, encoder_hidden_states=context).sample).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_round_trip_through_the_diffusers_layout(tmp_path, name):
    torch.manual_seed(0)
    assert_round_trip(randomized(UNet(MINIDIFF_CONFIGS[name])), to_diffusers, tmp_path / name)


def test_position_embedding_does_not_convert():
    config = UNetConfig.text_toy(position_embedding=True)
    with pytest.raises(PretrainedError, match="position_embedding=True"):
        to_diffusers(UNet(config).state_dict(), config)


def test_heads_and_depths_are_read_per_level():
    config = cond_unet_config_from_diffusers(UNet2DConditionModel(**CONFIGS["depth-per-level-asymmetric"]).config)
    assert config.attention_heads == (2, 4) and config.transformer_depth == (1, 2)
    assert config.attention_levels == (0, 1) and config.up_levels == (0,)
    assert config.attention_head_dim is None        # diffusers' "attention_head_dim" was the number of heads


def test_text_toy_mirror_is_the_text_toy_preset(tmp_path):
    theirs, path = save(tmp_path, **TEXT_TOY)
    loaded = minidiff.load_pretrained(path).config
    assert loaded == UNetConfig.text_toy()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(theirs) == count(UNet(UNetConfig.text_toy()))


def test_sd15_config_is_the_sd15_preset():
    """diffusers' SD 1.x U-Net config reads as UNetConfig.sd15(); both have 859,520,964 parameters."""
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**SD15)
        loaded = cond_unet_config_from_diffusers(dict(theirs.config))
        ours = UNet(loaded)
    assert loaded == UNetConfig.sd15()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(theirs) == count(ours) == 859_520_964


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("key, value", [
    ("addition_embed_type", "text_time"),                # SDXL's micro-conditioning (Chapter 5)
    ("addition_time_embed_dim", 256),
    ("class_embed_type", "timestep"),
    ("num_class_embeds", 10),
    ("time_cond_proj_dim", 256),                         # LCM's guidance embedding
    ("encoder_hid_dim", 32),
    ("encoder_hid_dim_type", "text_proj"),
    ("only_cross_attention", True),
    ("dual_cross_attention", True),
    ("upcast_attention", True),
    ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn"),
    ("mid_block_only_cross_attention", True),
    ("attention_type", "gated"),
    ("resnet_time_scale_shift", "spatial"),
    ("time_embedding_type", "fourier"),
    ("conv_in_kernel", 1),
    ("timestep_post_act", "silu"),
    ("center_input_sample", True),
])
def test_unsupported_config_options(tmp_path, key, value):
    _, path = save(tmp_path, **CONFIGS["sd15-layout"])
    edit_config(tmp_path, **{key: value})
    with pytest.raises(PretrainedError, match=f"{key}=.*which minidiff's U-Net does not support"):
        minidiff.load_pretrained(path)


@pytest.mark.parametrize("key, value, message", [
    ("cross_attention_dim", [16, 32], "different per level.*one value for every level"),
    ("layers_per_block", [1, 2], "different per level.*one value for every level"),
    ("transformer_layers_per_block", [[1], [2]], "a depth per layer.*one depth per level"),
    ("norm_num_groups", None, "norm_num_groups=None"),
    ("down_block_types", ["SimpleCrossAttnDownBlock2D", "DownBlock2D"],
     r"unsupported block types \['SimpleCrossAttnDownBlock2D'\].*CrossAttnDownBlock2D"),
])
def test_unsupported_layouts(tmp_path, key, value, message):
    _, path = save(tmp_path, **CONFIGS["sd15-layout"])
    edit_config(tmp_path, **{key: value})
    with pytest.raises(PretrainedError, match=message):
        minidiff.load_pretrained(path)


def test_per_level_lists_of_one_value_are_fine(tmp_path):
    theirs, path = save(tmp_path, **CONFIGS["sd15-layout"])
    edit_config(tmp_path, cross_attention_dim=[16, 16], layers_per_block=[1, 1], only_cross_attention=[False, False])
    ours = minidiff.load_pretrained(path)
    x, context = inputs(CONFIGS["sd15-layout"])
    with torch.no_grad():
        assert (ours(x, 9, context) - theirs(x, 9, encoder_hidden_states=context).sample).abs().max().item() <= 1e-5


def test_weights_that_do_not_fit_the_config(tmp_path):
    _, path = save(tmp_path, **CONFIGS["sd15-layout"])
    edit_config(tmp_path, cross_attention_dim=32)
    with pytest.raises(PretrainedError, match="do not fit the model.*checkpoint and its config.json disagree"):
        minidiff.load_pretrained(path)


def test_unsupported_class_lists_the_conditional_unet(tmp_path):
    _, path = save(tmp_path, **CONFIGS["sd15-layout"])
    edit_config(tmp_path, _class_name="UNet3DConditionModel")
    with pytest.raises(PretrainedError, match="holds a 'UNet3DConditionModel'.*UNet2DConditionModel"):
        minidiff.load_pretrained(path)
