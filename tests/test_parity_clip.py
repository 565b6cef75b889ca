"""Loading transformers CLIPTextModel folders into minidiff's CLIPTextEncoder: same outputs, and clear errors.

Each case builds a tiny random transformers.CLIPTextModel, saves it with save_pretrained, loads it with
minidiff.load_pretrained, and compares last_hidden_state and the pooled output on token ids padded after the
end-of-text token (max abs diff <= 1e-5 in float32, <= 1e-10 in float64).
The other direction: a tiny random minidiff CLIPTextEncoder converted with
minidiff.models.clip_transformers.to_transformers loads into transformers' class and computes the same (<= 1e-5),
and minidiff -> transformers layout -> minidiff is the identity.
"""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

import minidiff  # noqa: E402
from minidiff.models import PRESETS, count_parameters  # noqa: E402
from minidiff.models.clip import CLIPTextConfig, CLIPTextEncoder  # noqa: E402
from minidiff.models.clip_transformers import to_transformers  # noqa: E402
from minidiff.weights import PretrainedError, clip_text_config_from_transformers  # noqa: E402
from parity_helpers import assert_round_trip, edit_config, randomized  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 64
TINY = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=16)
# The legacy config (eos_token_id=2, as in SD 1.x's text_encoder) pools at argmax(input_ids): the tokenizer's real
# end-of-text id is the largest one. The fixed config pools at the first eos_token_id, here an id in the middle of
# the vocabulary, so that the two rules pick different positions.
EOS_RULES = {"legacy-eos-2": dict(bos_token_id=0, eos_token_id=2, pad_token_id=1),
             "eos-40": dict(bos_token_id=41, eos_token_id=40, pad_token_id=1)}
TEXT_EOS = {"legacy-eos-2": VOCAB - 1, "eos-40": 40}   # the id the tokenizer writes at the end of the text


# minidiff configs for the other direction (minidiff -> transformers), each with the EOS rule of its token ids
MINIDIFF_SIZES = dict(vocab_size=VOCAB, context_length=16, width=32, layers=2, heads=4, mlp_width=37)
MINIDIFF_CONFIGS = {
    "eos-40": (CLIPTextConfig(**MINIDIFF_SIZES, eos_token_id=40), "eos-40"),
    "legacy-argmax-gelu": (CLIPTextConfig(**MINIDIFF_SIZES, eos_token_id=2, pooling="argmax", activation="gelu"),
                           "legacy-eos-2"),
    "projection": (CLIPTextConfig(**MINIDIFF_SIZES, eos_token_id=40, projection_dim=24), "eos-40"),
}


def save(tmp_path, cls=transformers.CLIPTextModel, **config):
    torch.manual_seed(0)
    reference = randomized(cls(transformers.CLIPTextConfig(**config)))
    reference.save_pretrained(tmp_path)
    return reference


def token_ids(rule: str, length: int = 16) -> torch.Tensor:
    """BOS, random tokens, the end-of-text id, then padding: with EOS (row 0, as SD's tokenizer pads) or pad ids.

    Random tokens stay below VOCAB - 1 and avoid the ids 40 and 41, so each rule has one right answer; ids above
    40 do occur before the end of the text, where argmax pooling would go wrong for the eos-40 config.
    """
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB - 1, (3, length), generator=g)
    ids[(ids == 40) | (ids == 41)] = 42
    bos, eos = EOS_RULES[rule]["bos_token_id"], TEXT_EOS[rule]
    for row, (end, pad) in enumerate([(5, eos), (length - 1, 1), (2, 1)]):
        ids[row, 0], ids[row, end], ids[row, end + 1:] = bos, eos, pad
    return ids


@pytest.mark.parametrize("rule", EOS_RULES)
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_same_hidden_states_and_pooled_output(tmp_path, rule, activation, dtype, tolerance):
    reference = save(tmp_path, hidden_act=activation, **TINY, **EOS_RULES[rule]).to(dtype)
    ours = minidiff.load_pretrained(tmp_path, dtype=dtype)
    assert isinstance(ours, CLIPTextEncoder) and not ours.training
    assert ours.config.pooling == ("argmax" if rule == "legacy-eos-2" else "first_eos")
    for length in (16, 9):                     # the full context, and a shorter batch
        ids = token_ids(rule, length)
        with torch.no_grad():
            expected = reference(input_ids=ids)
            last, pooled = ours(ids)
        assert last.dtype == dtype and last.shape == expected.last_hidden_state.shape == (3, length, 32)
        assert (last - expected.last_hidden_state).abs().max().item() <= tolerance
        assert (pooled - expected.pooler_output).abs().max().item() <= tolerance


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_converted_minidiff_encoder_matches_transformers(name):
    """minidiff -> transformers with the inverse converter: the class config.json names, a strict load."""
    config, rule = MINIDIFF_CONFIGS[name]
    torch.manual_seed(0)
    ours = randomized(CLIPTextEncoder(config))
    state_dict, reference_config = to_transformers(ours.state_dict(), config)
    cls = getattr(transformers, reference_config["architectures"][0])
    theirs = cls(transformers.CLIPTextConfig.from_dict(reference_config))
    theirs.load_state_dict(state_dict)                                   # strict: every key, every shape
    theirs.eval()
    ids = token_ids(rule)
    with torch.no_grad():
        expected = theirs(input_ids=ids)
        last, pooled = ours(ids)
    pooled_expected = expected.text_embeds if config.projection_dim else expected.pooler_output
    assert (last - expected.last_hidden_state).abs().max().item() <= 1e-5
    assert (pooled - pooled_expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", MINIDIFF_CONFIGS)
def test_round_trip_through_the_transformers_layout(tmp_path, name):
    torch.manual_seed(0)
    assert_round_trip(randomized(CLIPTextEncoder(MINIDIFF_CONFIGS[name][0])), to_transformers, tmp_path / name,
                      weights="model.safetensors")


@pytest.mark.parametrize("change, message", [
    (dict(causal=False), "causal=False, but transformers' CLIP text model is causal"),
    (dict(pooling="argmax"), "pooling='argmax' with eos_token_id=40, but transformers pools at argmax exactly"),
])
def test_what_transformers_cannot_hold_does_not_convert(change, message):
    config = CLIPTextConfig(**MINIDIFF_SIZES, **{"eos_token_id": 40, **change})
    with pytest.raises(PretrainedError, match=message):
        to_transformers(CLIPTextEncoder(config).state_dict(), config)


def test_with_projection(tmp_path):
    reference = save(tmp_path, transformers.CLIPTextModelWithProjection, projection_dim=24, **TINY,
                     **EOS_RULES["eos-40"])
    assert "text_projection.weight" in load_file(str(tmp_path / "model.safetensors"))
    ours = minidiff.load_pretrained(tmp_path)
    ids = token_ids("eos-40")
    with torch.no_grad():
        expected = reference(input_ids=ids)
        last, pooled = ours(ids)
    assert pooled.shape == (3, 24)
    assert (last - expected.last_hidden_state).abs().max().item() <= 1e-5
    assert (pooled - expected.text_embeds).abs().max().item() <= 1e-5


def test_folder_saved_by_older_transformers(tmp_path):
    """SD 1.x's text_encoder/model.safetensors prefixes every key with text_model. and stores position_ids."""
    reference = save(tmp_path, **TINY, **EOS_RULES["legacy-eos-2"])
    weights = load_file(str(tmp_path / "model.safetensors"))
    old = {f"text_model.{key}": value for key, value in weights.items()}
    old["text_model.embeddings.position_ids"] = torch.arange(16)[None]
    save_file(old, str(tmp_path / "model.safetensors"))
    ours = minidiff.load_pretrained(tmp_path)
    ids = token_ids("legacy-eos-2")
    with torch.no_grad():
        assert (ours(ids)[1] - reference(input_ids=ids).pooler_output).abs().max().item() <= 1e-5


def test_sd_text_encoder_config_is_the_preset():
    """Fact sheet A, section 8: CLIP ViT-L/14's text tower has 123,060,480 parameters in transformers, and its
    config maps onto CLIPTextConfig.clip_vit_l_text(); with the 768x768 projection it has 123,650,304."""
    config = transformers.CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                         num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                         hidden_act="quick_gelu", projection_dim=768)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with torch.device("meta"):
        assert count(transformers.CLIPTextModel(config)) == 123_060_480 == count_parameters("clip-vit-l-text")
        assert count(transformers.CLIPTextModelWithProjection(config)) == 123_650_304
        with_projection = clip_text_config_from_transformers({**config.to_dict(),
                                                              "architectures": ["CLIPTextModelWithProjection"]})
        assert count(CLIPTextEncoder(with_projection)) == 123_650_304
    loaded = clip_text_config_from_transformers({**config.to_dict(), "architectures": ["CLIPTextModel"]})
    assert loaded == CLIPTextConfig.clip_vit_l_text() == PRESETS["clip-vit-l-text"][1]()


# ---------------------------------------------------------------------------- errors



@pytest.mark.parametrize("key, value, fix", [
    ("hidden_act", "gelu_new", "it has quick_gelu and gelu"),
    ("attention_dropout", 0.1, "set attention_dropout to 0.0 in config.json"),
    ("eos_token_id", [40, 41], "set it to the tokenizer's one end-of-text id"),
])
def test_unsupported_option_is_a_one_line_error(tmp_path, key, value, fix):
    save(tmp_path, **TINY, **EOS_RULES["eos-40"])
    edit_config(tmp_path, **{key: value})
    with pytest.raises(PretrainedError, match=f"config has {key}=.*not support; {fix}") as error:
        minidiff.load_pretrained(tmp_path)
    assert "\n" not in str(error.value)


def test_pickled_weights_only(tmp_path):
    reference = save(tmp_path, **TINY)
    (tmp_path / "model.safetensors").unlink()
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(PretrainedError, match="only pickled .bin weights, which minidiff never loads"):
        minidiff.load_pretrained(tmp_path)


def test_full_clip_model_is_refused(tmp_path):
    save(tmp_path, **TINY)
    edit_config(tmp_path, architectures=["CLIPModel"])
    with pytest.raises(PretrainedError, match="holds a 'CLIPModel'.*CLIPTextModel, CLIPTextModelWithProjection"):
        minidiff.load_pretrained(tmp_path)


def test_weights_that_do_not_fit_the_config(tmp_path):
    save(tmp_path, **TINY)
    edit_config(tmp_path, num_hidden_layers=1)
    with pytest.raises(PretrainedError, match=r"do not fit the model \(unexpected \['encoder.layers.1."):
        minidiff.load_pretrained(tmp_path)
