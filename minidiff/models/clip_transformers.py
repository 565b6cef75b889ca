"""minidiff's CLIPTextEncoder <-> transformers' CLIPTextModel and CLIPTextModelWithProjection (SD's text encoders).

minidiff's module names are transformers' own; the only difference is a prefix. CLIPTextModelWithProjection, and
CLIPTextModel folders saved before transformers 5 (SD 1.x's text_encoder), put the tower's keys under
`text_model.`; older folders also store the constant buffer `embeddings.position_ids` (0..L-1), which minidiff
computes. The projection, `text_projection.weight`, keeps its name.

The pooled row: transformers takes the first position holding eos_token_id, except when eos_token_id is 2, the
value in configs written before transformers fixed it (SD 1.x's); then it takes the position of the largest token
id, as OpenAI's CLIP does, whose end-of-text token has the largest id. minidiff's CLIPTextConfig says which rule
in `pooling` ("first_eos" or "argmax").
"""
from __future__ import annotations

import torch

from minidiff.models.clip import CLIPTextConfig, CLIPTextEncoder
from minidiff.models.convert import (MAX_REPEATS, Converter, PretrainedError, integer, number, rename_keys, text,
                                     texts)

CLIP_TEXT_ARCHITECTURES = ("CLIPTextModel", "CLIPTextModelWithProjection")
# transformers name -> minidiff name
CLIP_TEXT_KEY_MAP = [(r"^text_model\.", "")]
CLIP_TEXT_IGNORED_KEYS = ("embeddings.position_ids",)
LEGACY_EOS_TOKEN_ID = 2          # transformers pools at argmax(input_ids) for this eos_token_id


def _refuse(key: str, value, fix: str) -> None:
    raise PretrainedError(f"transformers config has {key}={value!r}, which minidiff's CLIP text encoder does not "
                          f"support; {fix}")


def clip_text_config_from_transformers(config: dict) -> CLIPTextConfig:
    """transformers CLIPTextModel / CLIPTextModelWithProjection config.json -> CLIPTextConfig.

    The sizes are required (every saved config has them); other missing keys take transformers' defaults."""
    activation = text(config, "hidden_act", "quick_gelu")
    if activation not in ("quick_gelu", "gelu"):
        _refuse("hidden_act", activation, "it has quick_gelu and gelu (the exact, erf-based GELU)")
    for key in ("attention_dropout", "dropout"):
        if config.get(key) not in (None, 0, 0.0):
            _refuse(key, config[key], f"set {key} to 0.0 in config.json (minidiff's encoder has no dropout)")
    eos_token_id = config.get("eos_token_id", 49407)
    if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int):
        _refuse("eos_token_id", eos_token_id, "set it to the tokenizer's one end-of-text id")
    architectures = {"architectures": config.get("architectures") or ["CLIPTextModel"]}
    with_projection = texts(architectures, "architectures")[0] == "CLIPTextModelWithProjection"
    return CLIPTextConfig(
        vocab_size=integer(config, "vocab_size"),
        context_length=integer(config, "max_position_embeddings"),
        width=integer(config, "hidden_size"),
        layers=integer(config, "num_hidden_layers", maximum=MAX_REPEATS),
        heads=integer(config, "num_attention_heads", maximum=MAX_REPEATS),
        mlp_width=integer(config, "intermediate_size"),
        activation=activation,
        layer_norm_eps=number(config, "layer_norm_eps", None, strictly_positive=True) or 1e-5,
        eos_token_id=eos_token_id,
        pooling="argmax" if eos_token_id == LEGACY_EOS_TOKEN_ID else "first_eos",
        projection_dim=integer(config, "projection_dim", 512) if with_projection else None,
    )


def to_transformers(state_dict: dict[str, torch.Tensor],
                    config: CLIPTextConfig) -> tuple[dict[str, torch.Tensor], dict]:
    """A minidiff CLIPTextEncoder's state dict and config -> (transformers' state dict, its config.json as a dict).

    With projection_dim: a CLIPTextModelWithProjection (tower under text_model.); without: a CLIPTextModel, in
    transformers 5's layout (no prefix)."""
    c = config
    if not c.causal:
        raise PretrainedError("CLIPTextConfig has causal=False, but transformers' CLIP text model is causal; only a "
                              "causal encoder converts")
    if (c.pooling == "argmax") != (c.eos_token_id == LEGACY_EOS_TOKEN_ID):
        raise PretrainedError(f"CLIPTextConfig has pooling={c.pooling!r} with eos_token_id={c.eos_token_id}, but "
                              f"transformers pools at argmax exactly when eos_token_id is {LEGACY_EOS_TOKEN_ID}; set "
                              f"eos_token_id={LEGACY_EOS_TOKEN_ID} for argmax, another id for first_eos")
    with_projection = c.projection_dim is not None
    reference = dict(
        architectures=[CLIP_TEXT_ARCHITECTURES[with_projection]], model_type="clip_text_model",
        vocab_size=c.vocab_size, max_position_embeddings=c.context_length, hidden_size=c.width,
        num_hidden_layers=c.layers, num_attention_heads=c.heads, intermediate_size=c.mlp_width,
        hidden_act=c.activation, layer_norm_eps=c.layer_norm_eps, eos_token_id=c.eos_token_id,
        attention_dropout=0.0, dropout=0.0,
    )
    if not with_projection:
        return dict(state_dict), reference
    tower = {(k if k.startswith("text_projection.") else f"text_model.{k}"): v for k, v in state_dict.items()}
    return tower, {**reference, "projection_dim": c.projection_dim}


def _keys_from_transformers(state_dict: dict) -> dict:
    renamed = rename_keys(state_dict, CLIP_TEXT_KEY_MAP)
    return {k: v for k, v in renamed.items() if k not in CLIP_TEXT_IGNORED_KEYS}


CLIP_TEXT = Converter("CLIPTextModel", CLIPTextEncoder, clip_text_config_from_transformers, _keys_from_transformers,
                      to_transformers)
CLIP_TEXT_WITH_PROJECTION = Converter("CLIPTextModelWithProjection", CLIPTextEncoder,
                                      clip_text_config_from_transformers, _keys_from_transformers, to_transformers)
CONVERTERS = (CLIP_TEXT, CLIP_TEXT_WITH_PROJECTION)
