"""Helpers the parity tests share: perturbed random models, editing a saved config, and writing a minidiff model
out in a reference layout (diffusers, transformers) with its converter's inverse."""
import json

import torch
from safetensors.torch import save_file

import minidiff


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


def write_folder(folder, state_dict: dict, config: dict, weights: str = "diffusion_pytorch_model.safetensors"):
    """A model folder as save_pretrained writes it: config.json and the safetensors weights."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(folder / weights))
    return folder


def assert_round_trip(model: torch.nn.Module, to_reference, folder,
                      weights: str = "diffusion_pytorch_model.safetensors") -> None:
    """minidiff -> the reference layout on disk -> minidiff.load_pretrained gives back the same config and tensors."""
    state, config = to_reference(model.state_dict(), model.config)
    loaded = minidiff.load_pretrained(write_folder(folder, state, config, weights))
    assert type(loaded) is type(model) and loaded.config == model.config
    original, back = model.state_dict(), loaded.state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
