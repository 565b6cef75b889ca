"""CLIP: the text tower's causal mask and pooling, the presets' sizes, and the contrastive loss by hand."""
import dataclasses
import math

import pytest
import torch

from minidiff.models import PRESETS, build_model, count_parameters
from minidiff.models.clip import (CLIP, CLIPConfig, CLIPImageConfig, CLIPImageEncoder, CLIPTextConfig,
                                  CLIPTextEncoder, contrastive_loss, retrieval_accuracy)

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, EOS = 1024, 1023   # CLIPTextConfig.toy(): the end-of-text id is the last one, as in CLIP


def token_ids(lengths, context=12, pad=EOS, seed=0) -> torch.Tensor:
    """Rows of random tokens (ids 3..VOCAB-3), each closed by EOS at position `length` and padded after it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB - 2, (len(lengths), context), generator=g)
    for row, length in enumerate(lengths):
        ids[row, length] = EOS
        ids[row, length + 1:] = pad
    return ids


def text_encoder(seed=0, **overrides) -> CLIPTextEncoder:
    torch.manual_seed(seed)
    return CLIPTextEncoder(CLIPTextConfig.toy(**overrides)).eval()


# ---------------------------------------------------------------------------- text tower


def test_text_encoder_shapes():
    ids = token_ids([3, 7, 10])
    last, pooled = text_encoder()(ids)
    assert last.shape == (3, 12, 64) and pooled.shape == (3, 64)
    last, pooled = text_encoder(projection_dim=16)(ids)
    assert last.shape == (3, 12, 64) and pooled.shape == (3, 16)


def test_text_longer_than_the_context_is_an_error():
    model = text_encoder()
    model(token_ids([5], context=32))          # the full context is fine
    with pytest.raises(ValueError, match=r"L <= 32.*max_length=32"):
        model(token_ids([5], context=33))


def test_causal_mask_earlier_positions_do_not_see_later_tokens():
    model = text_encoder()
    ids = token_ids([10, 10])
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] - 3 + 1) % (VOCAB - 5) + 3   # another ordinary token at position 6
    with torch.no_grad():
        before, _ = model(ids)
        after, _ = model(changed)
    assert (before[:, :6] - after[:, :6]).abs().max() < 1e-6     # positions 0..5 cannot see position 6
    assert (before[:, 6:] - after[:, 6:]).abs().amax(dim=-1).min() > 1e-3   # positions 6.. all can



def test_without_the_causal_mask_every_position_sees_every_token():
    model = text_encoder(causal=False)
    ids = token_ids([10, 10])
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] - 3 + 1) % (VOCAB - 5) + 3
    with torch.no_grad():
        before, _ = model(ids)
        after, _ = model(changed)
    assert (before - after).abs().amax(dim=-1).min() > 1e-3      # position 0 too reads what comes after it
    padded = ids.clone()
    padded[:, 11] = 7                                             # something else after EOS (at 10)
    with torch.no_grad():
        last, pooled = model(padded)
    torch.testing.assert_close(last[:, :11], before[:, :11])      # padding is masked out of every token's view
    torch.testing.assert_close(pooled, model(ids)[1])

def test_pooled_is_the_final_hidden_state_at_the_first_eos():
    model = text_encoder()
    ids = token_ids([2, 5, 11])                # padded with EOS, as SD's tokenizer does: the first EOS counts
    with torch.no_grad():
        last, pooled = model(ids)
    assert torch.equal(pooled, last[torch.arange(3), torch.tensor([2, 5, 11])])
    torch.testing.assert_close(pooled[:1], model(ids[:1, :3])[1])   # padding after EOS does not change it (causal)


def test_argmax_pooling_picks_the_largest_id():
    """OpenAI's rule: the end-of-text token is the largest id, so its position is argmax(input_ids); here no
    token equals eos_token_id (a legacy config's 2), yet the rule finds the largest id's first position."""
    model = text_encoder(pooling="argmax", eos_token_id=2)
    ids = token_ids([4, 8], pad=0)
    ids[ids == EOS] = 7
    ids[:, 4], ids[1, 8] = VOCAB - 2, VOCAB - 2  # the largest id in the batch, twice in row 1
    with torch.no_grad():
        last, pooled = model(ids)
    assert torch.equal(pooled, last[torch.arange(2), torch.tensor([4, 4])])   # first largest, not the last


def test_missing_eos_is_a_clear_error():
    ids = token_ids([4, 8])
    ids[1][ids[1] == EOS] = 5
    with pytest.raises(ValueError, match="row 1 of input_ids has no end-of-text token"):
        text_encoder()(ids)


def test_clip_skip_stops_early_and_keeps_the_final_layer_norm():
    model = text_encoder(layers=3)
    ids = token_ids([6])
    with torch.no_grad():
        x = model.embeddings(ids)
        for layer in model.encoder.layers[:2]:
            x = layer(x, causal=True)
        last, pooled = model(ids, clip_skip=1)
    torch.testing.assert_close(last, model.final_layer_norm(x))
    torch.testing.assert_close(pooled, last[:, 6])
    with pytest.raises(ValueError, match="clip_skip=3 is out of range"):
        model(ids, clip_skip=3)


def test_bad_configs_are_clear_errors():
    with pytest.raises(ValueError, match="width 64 is not divisible by heads 5"):
        CLIPTextConfig.toy(heads=5)
    with pytest.raises(ValueError, match="activation='relu' is unknown"):
        CLIPImageConfig(activation="relu")
    with pytest.raises(ValueError, match="pooling='mean' is unknown"):
        CLIPTextConfig.toy(pooling="mean")
    with pytest.raises(ValueError, match="leave the text tower's projection_dim=None"):
        CLIPConfig(text=CLIPTextConfig.toy(projection_dim=8))


# ---------------------------------------------------------------------------- presets


def test_clip_vit_l_text_has_exactly_the_published_count():
    """SD 1.x's text encoder: 123,060,480 parameters, counted on the meta device and by the formula."""
    V, L, D, N, M = 49408, 77, 768, 12, 3072
    per_layer = 4 * (D * D + D) + (D * M + M) + (M * D + D) + 2 * (2 * D)   # q, k, v, out; fc1; fc2; two LNs
    by_hand = V * D + L * D + N * per_layer + 2 * D                          # embeddings, layers, final LN
    assert by_hand == 123_060_480 == PRESETS["clip-vit-l-text"][2] == count_parameters("clip-vit-l-text")
    config = CLIPTextConfig.clip_vit_l_text()
    assert (config.context_length, config.activation, config.pooling) == (77, "quick_gelu", "first_eos")


def test_presets_build_the_right_networks():
    assert isinstance(build_model(CLIPConfig.toy()), CLIP)
    assert isinstance(build_model(CLIPTextConfig.toy()), CLIPTextEncoder)
    assert 0 < count_parameters("clip-toy") < 1_000_000


def test_clip_config_round_trips_through_a_dict():
    config = CLIPConfig.toy(embed_dim=32)
    assert CLIPConfig(**dataclasses.asdict(config)) == config


# ---------------------------------------------------------------------------- image tower and CLIP


def test_image_encoder_shapes_and_errors():
    config = CLIPImageConfig()
    model = CLIPImageEncoder(config)
    last, pooled = model(torch.randn(2, 3, 32, 32))
    assert last.shape == (2, 1 + 64, 64) and pooled.shape == (2, 64)     # class token + (32/4)^2 patches
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\)"):
        model(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="not divisible by patch_size 5"):
        CLIPImageConfig(patch_size=5)



def test_sincos_image_positions_are_fixed_row_and_column_features():
    model = CLIPImageEncoder(CLIPImageConfig(position_embedding="sincos"))
    positions = model.embeddings.position_embedding                                      # (1 + 64, 64)
    assert positions.shape == (65, 64) and not positions.requires_grad
    assert "embeddings.position_embedding" not in model.state_dict()                     # fixed, not saved
    assert positions[0].abs().max() == 0                                                 # the class token
    grid = positions[1:].reshape(8, 8, 64)                                               # (row, column, D)
    assert torch.equal(grid[2, 5, :32], grid[2, 0, :32]) and torch.equal(grid[2, 5, 32:], grid[0, 5, 32:])
    assert torch.equal(grid[2, 5, :32], grid[5, 2, 32:])                                 # same features per axis
    torch.testing.assert_close(grid.norm(dim=-1), torch.ones(8, 8))
    distinct = torch.cdist(positions[1:], positions[1:]) + torch.eye(64)
    assert distinct.min() > 0.05                                                         # every patch its own
    with pytest.raises(ValueError, match="position_embedding='rope' is unknown"):
        CLIPImageConfig(position_embedding="rope")

def test_clip_outputs_and_the_initial_temperature():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.toy())
    image_embeddings, text_embeddings, logit_scale = model(torch.randn(3, 3, 32, 32), token_ids([2, 4, 6]))
    assert image_embeddings.shape == text_embeddings.shape == (3, 64)
    assert logit_scale.item() == pytest.approx(math.log(1 / 0.07))       # tau = 0.07 (Radford et al., 2.5)


def test_contrastive_loss_by_hand():
    """I_e = [[1, 0], [0, 1]], T_e = [[1, 0], [0.6, 0.8]] (given unnormalised), exp(t) = 2:
    logits = 2 I_e T_e^T = [[2, 1.2], [0, 1.6]]. Each cross-entropy term is log(1 + exp(other - own))."""
    images = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    texts = torch.tensor([[2.0, 0.0], [3.0, 4.0]])
    image_to_text = (math.log(1 + math.exp(1.2 - 2)) + math.log(1 + math.exp(0 - 1.6))) / 2   # rows
    text_to_image = (math.log(1 + math.exp(0 - 2)) + math.log(1 + math.exp(1.2 - 1.6))) / 2   # columns
    expected = (image_to_text + text_to_image) / 2
    loss = contrastive_loss(images, texts, torch.tensor(math.log(2.0)))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert contrastive_loss(texts, images, torch.tensor(math.log(2.0))).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="one text per image"):
        contrastive_loss(images, texts[:1], torch.tensor(0.0))


def test_contrastive_loss_three_pairs_by_hand():
    """Orthonormal matching pairs: every logit is exp(t) on the diagonal and 0 elsewhere, so each of the six
    cross-entropies is log(1 + 2 exp(-exp(t)))."""
    eye = torch.eye(3)
    for t in (0.0, 1.0, 2.0):
        expected = math.log(1 + 2 * math.exp(-math.exp(t)))
        assert contrastive_loss(eye, 5 * eye, torch.tensor(t)).item() == pytest.approx(expected, rel=1e-5)


def test_temperature_gets_a_gradient_and_is_clamped():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.toy())
    images, ids = torch.randn(4, 3, 32, 32), token_ids([2, 4, 6, 8])
    contrastive_loss(*model(images, ids)).backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs().item() > 0
    model.zero_grad()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.clamped_logit_scale().item() == pytest.approx(math.log(100))
    contrastive_loss(*model(images, ids)).backward()
    assert model.logit_scale.grad.item() == 0.0                 # past the clamp, t stays where it is


def test_a_few_steps_reduce_the_loss():
    """20 AdamW steps on 8 random pairs: the loss falls well below where it started and below log(8), the loss of
    embeddings that cannot tell the pairs apart."""
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.toy())
    images, ids = torch.randn(8, 3, 32, 32), token_ids([2, 3, 4, 5, 6, 7, 8, 9], seed=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = contrastive_loss(*model(images, ids))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < min(0.6 * losses[0], math.log(8))


def test_retrieval_accuracy_by_hand():
    """Images e0, e1, e2; texts e0, e1, (0, 1, 0.1): every image finds its text, but text 2 is closer to
    image 1 (cosine 0.995) than to image 2 (0.0995), so text-to-image gets 2 of 3."""
    images = torch.eye(3)
    texts = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 1.0, 0.1]])
    accuracy = retrieval_accuracy(images, texts)
    assert accuracy["image_to_text"] == pytest.approx(1.0)
    assert accuracy["text_to_image"] == pytest.approx(2 / 3)


def test_hard_negatives_join_the_image_to_text_side_only():
    import math

    from minidiff.models.clip import contrastive_loss

    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negative = torch.tensor([[1.0, 0.0]])                  # as close to image 0 as its own caption
    t = torch.tensor(0.0)                                  # exp(t) = 1
    plain = contrastive_loss(image, text, t)
    hard = contrastive_loss(image, text, t, hard_negatives=negative)
    # image 0: logits (1, 0 | 1) -> -log(e / (2e + 1)); image 1: (0, 1 | 0) -> -log(e / (e + 2)); text side unchanged
    image_side = (-math.log(math.e / (2 * math.e + 1)) - math.log(math.e / (math.e + 2))) / 2
    text_side = -math.log(math.e / (math.e + 1))
    assert math.isclose(hard.item(), (image_side + text_side) / 2, rel_tol=1e-6)
    assert hard > plain


def test_swap_spatial_words():
    from minidiff.recipes.text import swap_spatial_words

    assert swap_spatial_words("a red circle left of a blue square") == "a red circle right of a blue square"
    assert swap_spatial_words("a cross in the top left") == "a cross in the bottom right"
    assert swap_spatial_words("a square above a circle") == "a square below a circle"
    assert swap_spatial_words("two green triangles") is None
