"""Loading diffusers AutoencoderKL folders into minidiff's autoencoder: same posterior, same decoder output.

Each case builds a tiny random AutoencoderKL, saves it with save_pretrained, loads it with
minidiff.load_pretrained and compares the encoder's mean and log-variance and the decoder's output
(max abs diff <= 1e-5 in float32, <= 1e-10 in float64).
The other direction: a tiny random minidiff Autoencoder converted with
minidiff.models.autoencoder_diffusers.to_diffusers loads into diffusers' AutoencoderKL and computes the same
(<= 1e-5), and minidiff -> diffusers layout -> minidiff is the identity.
"""
import json

import pytest
import torch
from diffusers import AutoencoderKL

import minidiff
from minidiff.models import PRESETS, count_parameters
from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.models.autoencoder_diffusers import to_diffusers
from minidiff.weights import PretrainedError, autoencoder_config_from_diffusers
from parity_helpers import assert_round_trip, randomized

BLOCKS = lambda n: dict(down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n)

CONFIGS = {
    # mirrors AutoencoderConfig.toy(): f=4, 4 latent channels
    "toy": dict(block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                **BLOCKS(3)),
    # the SD kl-f8 layout at 1/8 width: f=8, two ResBlocks per level, quant convs
    "sd-vae-narrow": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=2, latent_channels=4,
                          norm_num_groups=8, scaling_factor=0.18215, **BLOCKS(4)),
    # the SD3 layout at 1/8 width: 16 latent channels, no quant convs, a shift factor
    "sd3-vae-narrow": dict(block_out_channels=(16, 32, 64, 64), layers_per_block=2, latent_channels=16,
                           norm_num_groups=8, use_quant_conv=False, use_post_quant_conv=False,
                           scaling_factor=1.5305, shift_factor=0.0609, **BLOCKS(4)),
    # one-channel images, a single level (f=1)
    "gray-f1": dict(in_channels=1, out_channels=1, block_out_channels=(16,), layers_per_block=1,
                    latent_channels=2, norm_num_groups=4, **BLOCKS(1)),
}

# minidiff configs for the other direction (minidiff -> diffusers)
MINIDIFF_CONFIGS = {
    "toy": AutoencoderConfig.toy(),
    # SD3's options: 16 latent channels, no quant convs, a shift factor; one-channel images
    "sd3-like": AutoencoderConfig.toy(in_channels=1, out_channels=1, latent_channels=16, use_quant_conv=False,
                                      use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609),
}


def save(tmp_path, dtype=torch.float32, **config):
    torch.manual_seed(0)
    model = randomized(AutoencoderKL(**config)).to(dtype)
    model.save_pretrained(tmp_path)
    return model, str(tmp_path)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_same_posterior_and_decoder_output(tmp_path, name, dtype, tolerance):
    config = CONFIGS[name]
    reference, path = save(tmp_path, dtype, **config)
    ours = minidiff.load_pretrained(path, dtype=dtype)
    assert isinstance(ours, Autoencoder)
    channels, factor = config.get("in_channels", 3), 2 ** (len(config["block_out_channels"]) - 1)
    x = torch.randn(2, channels, 4 * factor, 2 * factor, generator=torch.Generator().manual_seed(1), dtype=dtype)
    with torch.no_grad():
        expected = reference.encode(x).latent_dist
        posterior = ours.encode(x)
        assert (posterior.mean - expected.mean).abs().max() <= tolerance
        assert (posterior.logvar - expected.logvar).abs().max() <= tolerance
        assert (posterior.kl() - expected.kl()).abs().max() <= tolerance * 1e3 * max(1.0, expected.kl().abs().max())
        z = torch.randn(expected.mean.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        assert (ours.decode(z) - reference.decode(z).sample).abs().max() <= tolerance
    assert ours.config.scaling_factor == pytest.approx(config.get("scaling_factor", 0.18215))
    assert ours.config.shift_factor == pytest.approx(config.get("shift_factor", 0.0))


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_converted_minidiff_autoencoder_matches_diffusers(name):
    """minidiff -> diffusers with the inverse converter: AutoencoderKL.from_config + a strict load."""
    config = MINIDIFF_CONFIGS[name]
    torch.manual_seed(0)
    ours = randomized(Autoencoder(config))
    state_dict, reference_config = to_diffusers(ours.state_dict(), config)
    theirs = AutoencoderKL.from_config(reference_config)
    theirs.load_state_dict(state_dict)                                   # strict: every key, every shape
    theirs.eval()
    x = torch.randn(2, config.in_channels, 16, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs.encode(x).latent_dist
        posterior = ours.encode(x)
        assert (posterior.mean - expected.mean).abs().max() <= 1e-5
        assert (posterior.logvar - expected.logvar).abs().max() <= 1e-5
        assert (ours.decode(posterior.mean) - theirs.decode(expected.mean).sample).abs().max() <= 1e-5
    assert theirs.config.scaling_factor == config.scaling_factor


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_round_trip_through_the_diffusers_layout(tmp_path, name):
    torch.manual_seed(0)
    assert_round_trip(randomized(Autoencoder(MINIDIFF_CONFIGS[name])), to_diffusers, tmp_path / name)


def test_other_norm_eps_does_not_convert():
    config = AutoencoderConfig.toy(norm_eps=1e-5)
    with pytest.raises(PretrainedError, match="norm_eps=1e-05, but diffusers' AutoencoderKL fixes it at 1e-06"):
        to_diffusers(Autoencoder(config).state_dict(), config)


def test_minidiff_presets_match_diffusers_configs():
    """The toy preset is the 'toy' diffusers config above; the full presets count what diffusers' classes count."""
    with torch.device("meta"):
        reference = AutoencoderKL(**CONFIGS["toy"])
    assert count_parameters("vae-toy") == sum(p.numel() for p in reference.parameters())
    toy = autoencoder_config_from_diffusers({**CONFIGS["toy"]})
    assert toy.block_channels == AutoencoderConfig.toy().block_channels
    for name in ("sd-vae", "sd3-vae"):
        assert count_parameters(name) == PRESETS[name][2]


def test_state_dict_keys_map_one_to_one(tmp_path):
    """Every diffusers key lands on exactly one minidiff key (load_pretrained loads strictly)."""
    _, path = save(tmp_path, **CONFIGS["sd-vae-narrow"])
    ours = minidiff.load_pretrained(path)
    with torch.device("meta"):
        fresh = Autoencoder(autoencoder_config_from_diffusers(json.loads((tmp_path / "config.json").read_text())))
    assert set(ours.state_dict()) == set(fresh.state_dict())


def test_unsupported_block_type_is_a_clear_error(tmp_path):
    save(tmp_path, **CONFIGS["toy"])
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["down_block_types"] = ["DownEncoderBlock2D", "DownEncoderBlock2D", "AttnDownEncoderBlock2D"]
    config_file.write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match="AttnDownEncoderBlock2D"):
        minidiff.load_pretrained(tmp_path)


def test_weights_that_do_not_fit_the_config_are_a_clear_error(tmp_path):
    save(tmp_path, **CONFIGS["toy"])
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["latent_channels"] = 8
    config_file.write_text(json.dumps(config))
    with pytest.raises(PretrainedError, match="do not fit"):
        minidiff.load_pretrained(tmp_path)
