"""The diffusion process: schedules, the forward process and losses, samplers. Model-agnostic:
a network is any callable (x_t, t) -> prediction (guidance wraps a text-conditioned one into that form)."""
from minidiff.process.ddpm import PREDICTIONS, GaussianDiffusion
from minidiff.process.guidance import ConditionalDiffusion, drop_condition, guide, guided_model, rescale
from minidiff.process.samplers import SAMPLERS, VARIANCES, ddim_step, ddpm_step, sample, timesteps
from minidiff.process.schedules import SCHEDULES, NoiseSchedule, cosine_betas, linear_betas, scaled_linear_betas

__all__ = ["ConditionalDiffusion", "GaussianDiffusion", "NoiseSchedule", "PREDICTIONS", "SAMPLERS", "SCHEDULES", "VARIANCES",
           "cosine_betas", "ddim_step", "ddpm_step", "drop_condition", "guide", "guided_model", "linear_betas", "rescale", "sample", "scaled_linear_betas", "timesteps"]
