"""minidiff: text-to-image diffusion from scratch, one chapter at a time."""
__version__ = "0.1.0"


def load_pretrained(path, dtype=None):
    """Load a diffusers-layout model folder as the equivalent minidiff model (see minidiff.weights), or a whole
    Stable Diffusion pipeline folder, one with model_index.json, as a TextToImage (see minidiff.pipelines.pretrained)."""
    import torch

    from minidiff.pipelines.pretrained import is_pipeline_folder, load_pipeline
    from minidiff.weights import load_pretrained as _load

    return (load_pipeline if is_pipeline_folder(path) else _load)(path, dtype or torch.float32)
