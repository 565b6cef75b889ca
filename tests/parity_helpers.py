"""Helpers the parity tests share: perturbed random reference models, and editing a saved config."""
import json

import torch


def randomized(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every weight (norm scales start at 1 and biases at 0): a wrong mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model.eval()


def edit_config(path, **changes) -> None:
    """Change keys of the config.json in the model folder `path`."""
    config_file = path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **changes}))
