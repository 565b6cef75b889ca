"""Text to image: Stable Diffusion's pipeline, from a prompt to pixels.

Paper: Rombach et al. 2022 (arXiv:2112.10752), section 3.3: a domain-specific encoder tau_theta maps the prompt y
to tokens tau_theta(y) (B, L_text, D_text), and the U-Net reads them through cross-attention at every resolution,

    L_LDM = E_{z = E(x), y, eps, t} || eps - eps_theta(z_t, t, tau_theta(y)) ||^2           (eq. 3)

Sampling adds classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598; minidiff/process/guidance.py):

    prompt ─ tokenizer ─ (B, L) ids ─ text encoder (frozen) ─ context (B, L, D)
    negative prompt ("" by default) ─ same ─ null_context (B, L, D)
    noise z_T ─ sampler, each step eps = guide(eps(z_t, t, context), eps(z_t, t, null_context), scale) ─ z_0
    z_0 ─ unscale ─ autoencoder.decode ─ images (B, 3, H, W) in [-1, 1]

`TextToImage` holds the four parts (tokenizer, text encoder, U-Net, autoencoder) and nothing else: the noise
schedule and sampler come from the process, so one pipeline samples with DDPM or DDIM alike.
"""
from __future__ import annotations

import torch
from torch import nn

from minidiff.models.autoencoder import Autoencoder
from minidiff.pipelines.latent_diffusion import LatentDiffusion
from minidiff.process import GaussianDiffusion, guided_model, sample


class TextToImage(LatentDiffusion):
    """A text-conditioned denoiser over scaled latents, with its frozen text encoder and autoencoder.

    forward(z_t (B, C, h, w), t, context (B, L, D)) -> prediction (B, C, h, w): the network the diffusion loss
    trains. encode_prompts(list of str) -> context (B, L, D). generate(prompts, diffusion, ...) -> images.
    Only the denoiser trains unless train_text_encoder() says otherwise; the autoencoder is always frozen. All
    travel in the same checkpoint.
    """

    def __init__(self, denoiser: nn.Module, autoencoder: Autoencoder, text_encoder: nn.Module, tokenizer,
                 context_length: int):
        super().__init__(denoiser, autoencoder)
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer                   # not a module: saved as files beside the checkpoint
        self.context_length = context_length

    def train(self, mode: bool = True):
        super().train(mode)
        self.text_encoder.eval()
        return self

    def train_text_encoder(self) -> "TextToImage":
        """Let the diffusion loss fine-tune the text encoder too (its weights then differ from the CLIP run's)."""
        self.text_encoder.requires_grad_(True)
        return self

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int, context: torch.Tensor) -> torch.Tensor:
        return self.denoiser(z_t, t, context)

    def encode_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) -> the text encoder's last hidden states (B, L, D), the context cross-attention reads."""
        return self.text_encoder(ids.to(next(self.text_encoder.parameters()).device))[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: str | list[str]) -> torch.Tensor:
        """Prompts -> contexts (B, L, D)."""
        return self.encode_tokens(self.tokenizer(prompts, context_length=self.context_length))

    @torch.no_grad()
    def generate(self, prompts: str | list[str], diffusion: GaussianDiffusion, guidance_scale: float = 7.5,
                 negative_prompt: str | list[str] = "", sampler: str = "ddim", steps: int = 50, eta: float = 0.0,
                 guidance_rescale: float = 0.0, seed: int = 0, latents: torch.Tensor | None = None,
                 latent_shape: tuple[int, int, int] | None = None, **sampler_options) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1], float32 whatever the parts' dtype, for B prompts.

        negative_prompt: "" (the unconditional embedding the network learned with caption dropout) or text to
        steer away from, one for all prompts or one per prompt. latents: the initial noise z_T (B, C, h, w);
        otherwise drawn from `seed` with shape latent_shape (default: the denoiser's own sample size).
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given; pass a prompt string or a list of them")
        negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; pass one, or one each")
        context = self.encode_prompts(prompts)                                     # (B, L, D)
        null_context = self.encode_prompts(negatives)                              # (B, L, D)
        # the sampler keeps z_t in float32; a float16 or bfloat16 U-Net reads it in its own dtype
        dtype = next(self.denoiser.parameters()).dtype
        denoiser = lambda z_t, t, context: self.denoiser(z_t.to(dtype), t, context)  # noqa: E731
        model = guided_model(denoiser, context, null_context, guidance_scale, guidance_rescale)
        if latents is None:
            config = self.denoiser.config
            shape = latent_shape or (config.in_channels, config.sample_size, config.sample_size)
            latents = torch.randn((len(prompts), *shape), generator=torch.Generator().manual_seed(seed))
        if latents.shape[0] != len(prompts):
            raise ValueError(f"latents hold {latents.shape[0]} noise images for {len(prompts)} prompts; pass one each")
        device = next(self.denoiser.parameters()).device
        z_0 = sample(model, diffusion, tuple(latents.shape), sampler=sampler, steps=steps, eta=eta,
                     initial_noise=latents.to(device), generator=torch.Generator().manual_seed(seed), device=device,
                     **sampler_options)                                            # (B, C, h, w)
        images = self.decode(z_0.to(next(self.autoencoder.parameters()).dtype))        # (B, 3, H, W)
        return images.float().clamp(-1, 1)


@torch.no_grad()
def cross_attention_maps(denoiser: nn.Module, z_t: torch.Tensor, t: torch.Tensor | int,
                         context: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where each text token looks: the cross-attention weights of every SpatialTransformer in a U-Net.

    Runs denoiser(z_t, t, context) once on square latents z_t (B, C, H, H) and returns
    {module name: (B, L_text, h, h)}, each map averaged over heads:
    map[b, j] is how strongly each position of that feature map (h x w) attends to token j. Rows sum to 1 over the
    tokens, so a word's map shows where in the image that word is read. Hooks capture the layers' inputs; the
    network itself is unchanged.
    """
    from minidiff.blocks.attention import Attention

    captured, hooks = {}, []
    for name, module in denoiser.named_modules():
        if isinstance(module, Attention) and name.endswith("attn2"):
            hooks.append(module.register_forward_hook(
                lambda m, args, kwargs, out, name=name: captured.__setitem__(name, m.probabilities(*args, **kwargs)),
                with_kwargs=True))
    try:
        denoiser(z_t, t, context)
    finally:
        for hook in hooks:
            hook.remove()
    maps = {}
    for name, probabilities in captured.items():                                 # (B, heads, h*w, L_text)
        side = int(round(probabilities.shape[2] ** 0.5))
        maps[name] = probabilities.mean(dim=1).transpose(1, 2).reshape(z_t.shape[0], -1, side, side)  # (B, L, h, w)
    return maps
