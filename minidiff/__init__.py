"""minidiff: text-to-image diffusion from scratch, one chapter at a time."""
__version__ = "0.1.0"


def load_pretrained(path, dtype=None):
    """Load a diffusers-layout model folder as the equivalent minidiff model (see minidiff.weights)."""
    import torch

    from minidiff.weights import load_pretrained as _load

    return _load(path, dtype or torch.float32)
