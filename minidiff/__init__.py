"""minidiff: text-to-image diffusion from scratch, one chapter at a time."""
__version__ = "0.1.0"


def load_pretrained(path, dtype=None):
    """Load a diffusers-layout model folder as the equivalent minidiff model, or a whole pipeline folder, one with
    model_index.json, as a minidiff pipeline (see minidiff.pipelines.pretrained.load_pretrained)."""
    from minidiff.pipelines.pretrained import load_pretrained as _load

    return _load(path, dtype)
