"""Loading diffusers AutoencoderKL folders into minidiff's autoencoder: same posterior, same decoder output.

Each case builds a tiny random AutoencoderKL, saves it with save_pretrained, loads it with
minidiff.load_pretrained and compares the encoder's mean and log-variance and the decoder's output
(max abs diff <= 1e-5 in float32, <= 1e-10 in float64).
"""
import json

import pytest
import torch
from diffusers import AutoencoderKL

import minidiff
from minidiff.models import PRESETS, count_parameters
from minidiff.models.autoencoder import Autoencoder, AutoencoderConfig
from minidiff.weights import PretrainedError, autoencoder_config_from_diffusers
from test_parity import randomized

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
