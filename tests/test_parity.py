"""Loading diffusers UNet2DModel folders into minidiff's U-Net: same outputs, and clear errors.

Each case builds a tiny random UNet2DModel, saves it with save_pretrained, loads it with
minidiff.load_pretrained, and compares the two networks on random inputs (max abs diff <= 1e-5).
The other direction: a tiny random minidiff U-Net converted with minidiff.models.unet_diffusers.to_diffusers loads
into diffusers' UNet2DModel and computes the same (<= 1e-5), and minidiff -> diffusers layout -> minidiff is the
identity.
"""
import json

import pytest
import torch
from diffusers import UNet2DModel

import minidiff
from minidiff.models.unet import UNet, UNetConfig
from minidiff.models.unet_diffusers import to_diffusers
from minidiff.weights import PretrainedError, unet_config_from_diffusers
from parity_helpers import assert_round_trip, edit_config, randomized

DDPM_EMBEDDING = dict(flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, downsample_padding=0)

# diffusers' up_block_types[i] works at level n-1-i: the up path lists the levels in reverse.
CONFIGS = {
    # mirrors UNetConfig.toy(patch_size=1) (diffusers has no patch fold): attention only at level 2 (4x4), one
    # ResBlock per level, one input channel
    "toy": dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64), layers_per_block=1,
                down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                norm_num_groups=8, attention_head_dim=None, **DDPM_EMBEDDING),
    # the CIFAR-10 layout of fact sheet A section 8 at 1/4 width: down attention at level 1, up attention
    # at index 1, i.e. level 2 (asymmetric)
    "cifar10-asymmetric": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2,
                               down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                               up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                               norm_num_groups=8, attention_head_dim=None, **DDPM_EMBEDDING),
    # the same with symmetric attention (level 1 both ways), as in UNetConfig.ddpm_cifar10()
    "cifar10-symmetric": dict(block_out_channels=(32, 64, 64, 64), layers_per_block=2,
                              down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                              up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                              norm_num_groups=8, attention_head_dim=None, **DDPM_EMBEDDING),
    # no attention outside the middle block; different in/out channels
    "no-attention": dict(in_channels=2, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                         down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                         norm_num_groups=4, attention_head_dim=None, **DDPM_EMBEDDING),
    # diffusers' defaults: SD-style embedding (cos first, shift 0), symmetric padding, eps 1e-5,
    # multi-head attention (attention_head_dim=8) at every level but the first
    "diffusers-defaults": dict(block_out_channels=(16, 32, 32), layers_per_block=2,
                               down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                               up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                               norm_num_groups=8, attention_head_dim=8),
    # attention everywhere, attention_head_dim that gives 2 and 4 heads, DDPM padding with SD embedding
    "all-attention": dict(block_out_channels=(16, 32), layers_per_block=1,
                          down_block_types=("AttnDownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "AttnUpBlock2D"),
                          norm_num_groups=4, attention_head_dim=8, downsample_padding=0),
    # ADM's AdaGN: the timestep scales and shifts the second GroupNorm of every ResBlock (time_scale_shift=True)
    "scale-shift": dict(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64),
                        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
                        attention_head_dim=None, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8,
                        **DDPM_EMBEDDING),
}


# minidiff configs for the other direction (minidiff -> diffusers)
MINIDIFF_CONFIGS = {
    "toy-unfolded": UNetConfig.toy(patch_size=1),
    # up-path attention at another level than down, different in/out channels, SD-style embedding and padding
    "asymmetric": UNetConfig(in_channels=2, out_channels=3, sample_size=16, block_channels=(16, 32, 32),
                             attention_levels=(1,), up_attention_levels=(2,), layers_per_block=1, norm_groups=8,
                             flip_sin_to_cos=True, freq_shift=0, downsample_padding=1),
    # AdaGN and 8-wide heads
    "scale-shift-heads": UNetConfig.toy(patch_size=1, time_scale_shift=True, attention_head_dim=8),
}


def save(tmp_path, **config) -> tuple[UNet2DModel, str]:
    torch.manual_seed(0)
    model = randomized(UNet2DModel(**config))
    model.save_pretrained(tmp_path)
    return model, str(tmp_path)



# ---------------------------------------------------------------------------- same outputs


@pytest.mark.parametrize("name", CONFIGS)
def test_loaded_unet_matches_diffusers(tmp_path, name):
    theirs, path = save(tmp_path, **CONFIGS[name])
    ours = minidiff.load_pretrained(path)
    assert isinstance(ours, UNet) and not ours.training
    in_channels = CONFIGS[name].get("in_channels", 3)
    x = torch.randn(2, in_channels, 16, 24, generator=torch.Generator().manual_seed(1))   # not square: H, W not swapped
    with torch.no_grad():
        for t in (torch.tensor([3, 871]), 500):
            expected = theirs(x, t).sample
            got = ours(x, t)
            assert got.shape == expected.shape == x.shape[:1] + expected.shape[1:]
            assert (got - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_loaded_unet_matches_diffusers_in_float64(tmp_path, name):
    """In float64 rounding noise vanishes: the two networks compute the same function to ~1e-14.

    In float32 each side is ~1e-6 away from the float64 answer by rounding alone (operations are summed in a
    different order), so the float32 test above cannot be much tighter than 1e-5; this one can.
    """
    theirs, path = save(tmp_path, **CONFIGS[name])
    ours = minidiff.load_pretrained(path).double()
    theirs = theirs.double()
    x = torch.randn(2, CONFIGS[name].get("in_channels", 3), 16, 24, generator=torch.Generator().manual_seed(1),
                    dtype=torch.float64)
    with torch.no_grad():
        t = torch.tensor([3, 871])
        assert (ours(x, t) - theirs(x, t).sample).abs().max().item() <= 1e-10


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_converted_minidiff_unet_matches_diffusers(name):
    """minidiff -> diffusers with the inverse converter: UNet2DModel.from_config + a strict load, same outputs."""
    config = MINIDIFF_CONFIGS[name]
    torch.manual_seed(0)
    ours = randomized(UNet(config))
    state_dict, reference_config = to_diffusers(ours.state_dict(), config)
    assert reference_config["_class_name"] == "UNet2DModel"
    theirs = UNet2DModel.from_config(reference_config)
    theirs.load_state_dict(state_dict)                                   # strict: every key, every shape
    theirs.eval()
    x = torch.randn(2, config.in_channels, 16, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        t = torch.tensor([3, 871])
        assert (ours(x, t) - theirs(x, t).sample).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_round_trip_through_the_diffusers_layout(tmp_path, name):
    torch.manual_seed(0)
    assert_round_trip(randomized(UNet(MINIDIFF_CONFIGS[name])), to_diffusers, tmp_path / name)


def test_patch_fold_does_not_convert():
    config = UNetConfig.toy()
    with pytest.raises(PretrainedError, match="patch_size=2, which diffusers' U-Nets do not have"):
        to_diffusers(UNet(config).state_dict(), config)


def test_toy_mirror_config_is_the_toy_preset(tmp_path):
    _, path = save(tmp_path, **CONFIGS["toy"])
    loaded = minidiff.load_pretrained(path).config
    assert loaded.up_levels == UNetConfig.toy().up_levels == (2,) and loaded.patch_size == 1
    # up-path attention where the down path has it reads as None ("as on the way down"), as in the preset
    assert loaded == UNetConfig.toy(patch_size=1)


def test_up_attention_levels_are_read_in_reverse():
    config = unet_config_from_diffusers(UNet2DModel(**CONFIGS["cifar10-asymmetric"]).config)
    assert config.attention_levels == (1,) and config.up_levels == (2,)
    config = unet_config_from_diffusers(UNet2DModel(**CONFIGS["cifar10-symmetric"]).config)
    assert config.attention_levels == (1,) and config.up_levels == (1,)


def test_parameter_counts_match_diffusers():
    """Fact sheet A, section 8: the DDPM CIFAR-10 UNet2DModel has 35,746,307 parameters; so does minidiff's preset,
    and so does the toy preset's diffusers mirror (without the patch fold, which diffusers does not have)."""
    cifar10 = dict(sample_size=32, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                   attention_head_dim=None, norm_num_groups=32, **DDPM_EMBEDDING)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        assert count(UNet2DModel(**cifar10)) == 35_746_307 == count(UNet(UNetConfig.ddpm_cifar10()))
        assert count(UNet2DModel(**CONFIGS["toy"])) == count(UNet(UNetConfig.toy(patch_size=1))) == 686_769


# ---------------------------------------------------------------------------- errors


def test_errors_are_value_errors():
    assert issubclass(PretrainedError, ValueError)


def test_not_a_folder(tmp_path):
    with pytest.raises(PretrainedError, match="is not a folder"):
        minidiff.load_pretrained(tmp_path / "missing")


def test_folder_without_config(tmp_path):
    with pytest.raises(PretrainedError, match="has no config.json; save the model with diffusers' save_pretrained"):
        minidiff.load_pretrained(tmp_path)


def test_config_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PretrainedError, match="is not valid JSON"):
        minidiff.load_pretrained(tmp_path)


def test_unsupported_class_name(tmp_path):
    _, path = save(tmp_path, **CONFIGS["no-attention"])
    edit_config(tmp_path, _class_name="VQModel")
    with pytest.raises(PretrainedError, match="holds a 'VQModel'.*supported: UNet2DModel, AutoencoderKL"):
        minidiff.load_pretrained(path)


def test_pickled_weights_only(tmp_path):
    UNet2DModel(**CONFIGS["no-attention"]).save_pretrained(tmp_path, safe_serialization=False)
    assert not list(tmp_path.glob("*.safetensors")) and list(tmp_path.glob("*.bin"))
    with pytest.raises(PretrainedError, match="only pickled .bin weights.*safe_serialization=True"):
        minidiff.load_pretrained(tmp_path)


def test_no_weights_at_all(tmp_path):
    edit_config_file = tmp_path / "config.json"
    edit_config_file.write_text(json.dumps(dict(UNet2DModel(**CONFIGS["no-attention"]).config)))
    with pytest.raises(PretrainedError, match="has no diffusion_pytorch_model.safetensors or model.safetensors"):
        minidiff.load_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path):
    _, path = save(tmp_path, **CONFIGS["no-attention"])
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])   # truncated download
    with pytest.raises(PretrainedError, match="is corrupt.*re-download or re-save"):
        minidiff.load_pretrained(path)


@pytest.mark.parametrize("key, value", [
    ("resnet_time_scale_shift", "spatial"),
    ("time_embedding_type", "fourier"),
    ("num_class_embeds", 10),
    ("attn_norm_num_groups", 2),        # would otherwise load with the wrong GroupNorm in the middle block
    ("time_embedding_dim", 128),
    ("downsample_type", "resnet"),
    ("upsample_type", "resnet"),
    ("mid_block_type", None),
])
def test_unsupported_config_options(tmp_path, key, value):
    _, path = save(tmp_path, **CONFIGS["no-attention"])
    edit_config(tmp_path, **{key: value})
    with pytest.raises(PretrainedError, match=f"{key}=.*which minidiff's U-Net does not support"):
        minidiff.load_pretrained(path)


def test_scale_shift_without_middle_attention_norm_is_refused(tmp_path):
    # diffusers drops the middle attention's GroupNorm for scale_shift unless attn_norm_num_groups is set
    _, path = save(tmp_path, **CONFIGS["scale-shift"])
    edit_config(tmp_path, attn_norm_num_groups=None)
    with pytest.raises(PretrainedError, match="attn_norm_num_groups=None.*it needs 8"):
        minidiff.load_pretrained(path)


def test_unsupported_block_type(tmp_path):
    _, path = save(tmp_path, **CONFIGS["no-attention"])
    edit_config(tmp_path, down_block_types=["SkipDownBlock2D", "DownBlock2D"])
    with pytest.raises(PretrainedError, match=r"unsupported block types \['SkipDownBlock2D'\]"):
        minidiff.load_pretrained(path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    _, path = save(tmp_path, **CONFIGS["no-attention"])
    edit_config(tmp_path, layers_per_block=2)
    with pytest.raises(PretrainedError, match="do not fit the model.*checkpoint and its config.json disagree"):
        minidiff.load_pretrained(path)
