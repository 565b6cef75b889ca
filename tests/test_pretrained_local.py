"""Real weights, where a machine has them: a Stable Diffusion VAE saved locally in the diffusers layout.

Skipped unless MINIDIFF_SD_VAE names such a folder (e.g. `AutoencoderKL.from_pretrained("stabilityai/sd-vae-ft-mse")
.save_pretrained(folder)` run once where there is internet). Runs on a GPU when there is one, else on the CPU.
"""
import os

import pytest
import torch

import minidiff
from minidiff.data import shapes_tensors
from minidiff.training.autoencoder import psnr

FOLDER = os.environ.get("MINIDIFF_SD_VAE")


@pytest.mark.skipif(not FOLDER, reason="set MINIDIFF_SD_VAE to a local diffusers AutoencoderKL folder")
def test_a_real_sd_vae_reconstructs_images():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = minidiff.load_pretrained(FOLDER).to(device)
    images = shapes_tensors("test", 4, 256)[0].to(device)                   # (4, 3, 256, 256) in [-1, 1]
    with torch.no_grad():
        posterior = vae.encode(images)
        recon = vae.decode(posterior.mean).clamp(-1, 1)
        assert posterior.mean.shape == (4, vae.config.latent_channels, 32, 32)
        # flat colors and clean edges: a trained SD VAE reconstructs these far above an untrained one (~5 dB)
        assert psnr(images, recon).mean().item() > 25
        # its latents scaled by the config's factor have about unit variance (why 0.18215 exists)
        scaled = vae.to_diffusion(posterior.mean)
        assert 0.3 < scaled.std().item() < 3
