"""Pipelines: networks and a process put together, from noise (and later a prompt) to images."""
from minidiff.pipelines.latent_diffusion import LatentDiffusion

__all__ = ["LatentDiffusion"]
