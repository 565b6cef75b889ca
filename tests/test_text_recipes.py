"""Chapter 3's recipes end to end on tiny settings: clip-shapes, sd-shapes, their command line and their errors."""
import json

import pytest
import torch

from minidiff.cli import main
from minidiff.data.tokenizer import BPETokenizer
from minidiff.pipelines.text_to_image import TextToImage
from minidiff.recipes import load_run, run_evaluation, run_training, sample_from_run
from minidiff.recipes.text import generate
from minidiff.training.checkpoint import load_checkpoint, unprefixed

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_VAE = ["block_channels=8,16,16", "norm_groups=4", "batch_size=4", "steps=2", "log_every=1", "sample_every=0",
            "warmup_steps=1", "train_examples=32", "perceptual_weight=0", "disc_weight=0"]
TINY_CLIP = ["batch_size=16", "steps=4", "checkpoint_every=2", "log_every=1", "warmup_steps=2", "train_examples=64"]
TINY_SD = ["block_channels=8,16", "norm_groups=4", "attention_heads=2", "batch_size=8", "steps=4", "log_every=1",
           "sample_every=0", "sample_steps=2", "warmup_steps=2", "train_examples=48"]


def logged(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    run_training("clip-shapes", out, overrides=TINY_CLIP, progress=False, evaluate_after=False)
    return out


@pytest.fixture(scope="module")
def sd_run(tmp_path_factory, clip_run):
    vae = tmp_path_factory.mktemp("vae")
    run_training("vae-shapes", vae, overrides=TINY_VAE, progress=False, evaluate_after=False)
    out = tmp_path_factory.mktemp("sd")
    run_training("sd-shapes", out, progress=False, evaluate_after=False,
                 overrides=TINY_SD + [f"latent.autoencoder_run={vae}", f"text.clip_run={clip_run}"])
    return out


def test_clip_run_trains_its_tokenizer_and_sizes_the_text_tower_to_it(clip_run):
    tokenizer = BPETokenizer.from_folder(clip_run / "tokenizer")
    config = json.loads((clip_run / "config.json").read_text())
    assert config["model"]["text"]["vocab_size"] == len(tokenizer) < 1000
    assert config["model"]["text"]["eos_token_id"] == tokenizer.eos_id
    assert config["model"]["text"]["context_length"] == config["text"]["context_length"]
    tensors, meta = load_checkpoint(clip_run / "checkpoint.safetensors")
    assert meta["step"] == 4 and {k.split(".")[0] for k in tensors} == {"model", "ema", "optimizer"}
    assert len(logged(clip_run)) == 4


def test_clip_resume_is_exact(tmp_path, clip_run):
    part = tmp_path / "part"
    run_training("clip-shapes", part, overrides=TINY_CLIP + ["steps=2"], progress=False, evaluate_after=False)
    run_training("clip-shapes", part, overrides=["steps=4"], resume=True, progress=False, evaluate_after=False)
    assert [r["loss"] for r in logged(part)] == [r["loss"] for r in logged(clip_run)]
    a, _ = load_checkpoint(part / "checkpoint.safetensors")
    b, _ = load_checkpoint(clip_run / "checkpoint.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_clip_eval_reports_zero_shot_retrieval(clip_run):
    metrics = run_evaluation(clip_run, n=40)
    assert 0 <= metrics["retrieval_image_to_text"] <= 1 and 0 <= metrics["retrieval_text_to_image"] <= 1
    assert json.loads((clip_run / "metrics.json").read_text()) == metrics


def test_clip_run_does_not_sample(clip_run):
    model, sections = load_run(clip_run)
    with pytest.raises(ValueError, match="CLIP, which does not sample"):
        sample_from_run(model, sections, 2)


def test_sd_run_holds_the_frozen_clip_text_tower_and_its_tokenizer(sd_run, clip_run):
    config = json.loads((sd_run / "config.json").read_text())
    clip_config = json.loads((clip_run / "config.json").read_text())
    assert config["text_encoder"] == {"family": "clip-text", **clip_config["model"]["text"]}   # which class reads it
    assert config["model"]["cross_attention_dim"] == clip_config["model"]["text"]["width"]
    assert (sd_run / "tokenizer" / "vocab.json").read_text() == (clip_run / "tokenizer" / "vocab.json").read_text()
    sd, _ = load_checkpoint(sd_run / "checkpoint.safetensors")
    clip, _ = load_checkpoint(clip_run / "checkpoint.safetensors")
    text = unprefixed(unprefixed(clip, "ema"), "text_model")
    stored = unprefixed(unprefixed(sd, "ema"), "text_encoder")
    assert stored.keys() == text.keys() and all(torch.equal(stored[k], text[k]) for k in text)   # frozen, unchanged
    model, _ = load_run(sd_run)
    assert isinstance(model, TextToImage)


def test_sd_generate_follows_overrides_and_seed(sd_run):
    model, sections = load_run(sd_run)
    a = generate(model, sections, ["a red circle", "a blue square"], seed=0)
    assert a.shape == (2, 3, 32, 32)
    assert torch.equal(a, generate(model, sections, ["a red circle", "a blue square"], seed=0))
    assert not torch.equal(a, generate(model, sections, ["a red circle", "a blue square"], seed=0, guidance_scale=1.0))


def test_sd_eval_runs_shapeseval_with_its_guidance(sd_run):
    metrics = run_evaluation(sd_run, guidance_scale=2.0)
    assert set(metrics["categories"]) == {"single_object", "two_objects", "attribute_binding", "spatial_relation",
                                          "counting", "position"}
    assert metrics["guidance_scale"] == 2.0 and metrics["suite"] == "v1" and 0 <= metrics["overall"] <= 1


def test_sd_cli_sample_writes_one_png_per_image(sd_run, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(sd_run), "--prompt", "a red circle left of a blue square", "-n", "3",
                 "--guidance", "5", "--seed", "0", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("sample_*.png")) == ["sample_0000.png", "sample_0001.png", "sample_0002.png"]


def test_sd_cli_errors(sd_run, clip_run, tmp_path, capsys):
    assert main(["sample", str(sd_run), "-n", "2", "--out", str(tmp_path / "a")]) != 0
    assert "--prompt" in capsys.readouterr().err
    assert main(["sample", str(clip_run), "-n", "2", "--out", str(tmp_path / "b")]) != 0
    assert "does not sample" in capsys.readouterr().err


def test_sd_refuses_a_clip_run_that_is_not_one(tmp_path, sd_run):
    vae_dir = json.loads((sd_run / "config.json").read_text())["latent"]["autoencoder_run"]
    with pytest.raises(ValueError, match="not a CLIP"):
        run_training("sd-shapes", tmp_path / "x", progress=False, evaluate_after=False,
                     overrides=TINY_SD + [f"latent.autoencoder_run={vae_dir}", f"text.clip_run={vae_dir}"])


def test_sd_refuses_an_unfinished_clip_run(tmp_path, sd_run):
    clip = tmp_path / "clip"
    run_training("clip-shapes", clip, overrides=TINY_CLIP + ["steps=2"], progress=False, evaluate_after=False)
    config = json.loads((clip / "config.json").read_text())
    config["train"]["steps"] = 4                       # as if it had been stopped half way
    tensors, meta = load_checkpoint(clip / "checkpoint.safetensors")
    from minidiff.training.checkpoint import save_checkpoint

    save_checkpoint(clip / "checkpoint.safetensors", tensors, {**meta, "config": config})
    vae_dir = json.loads((sd_run / "config.json").read_text())["latent"]["autoencoder_run"]
    with pytest.raises(ValueError, match="stopped at step 2 of 4"):
        run_training("sd-shapes", tmp_path / "x", progress=False, evaluate_after=False,
                     overrides=TINY_SD + [f"latent.autoencoder_run={vae_dir}", f"text.clip_run={clip}"])


def test_bad_text_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="probability"):
        run_training("sd-shapes", tmp_path / "x", overrides=["p_uncond=1.5"], progress=False)
    with pytest.raises(ValueError, match="context_length"):
        run_training("clip-shapes", tmp_path / "y", overrides=TINY_CLIP + ["context_length=6"], progress=False)


def test_clip_recipe_defaults_and_the_first_recipes_settings(tmp_path, clip_run):
    config = json.loads((clip_run / "config.json").read_text())          # the recipe: hard negatives, fixed positions
    assert config["text"]["hard_negatives"] is True and config["model"]["image"]["position_embedding"] == "sincos"
    clip, _ = load_run(clip_run)
    assert "vision_model.embeddings.position_embedding" not in dict(clip.named_parameters())
    out = tmp_path / "clip"             # the first recipe's CLIP: random batches only, learned image positions
    run_training("clip-shapes", out, progress=False, evaluate_after=False,
                 overrides=TINY_CLIP + ["hard_negatives=false", "model.image.position_embedding=learned", "steps=2"])
    config = json.loads((out / "config.json").read_text())
    assert config["text"]["hard_negatives"] is False and config["model"]["image"]["position_embedding"] == "learned"
    assert len(logged(out)) == 2 and all(r["loss"] > 0 for r in logged(out))
    clip, _ = load_run(out)
    assert "vision_model.embeddings.position_embedding" in dict(clip.named_parameters())


def test_sd_with_a_trained_text_encoder_fine_tunes_it_and_resumes_exactly(tmp_path, sd_run, clip_run):
    vae_dir = json.loads((sd_run / "config.json").read_text())["latent"]["autoencoder_run"]
    common = TINY_SD + [f"latent.autoencoder_run={vae_dir}", f"text.clip_run={clip_run}", "text.train_encoder=true"]
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_training("sd-shapes", whole, overrides=common, progress=False, evaluate_after=False)
    sd, _ = load_checkpoint(whole / "checkpoint.safetensors")
    clip, _ = load_checkpoint(clip_run / "checkpoint.safetensors")
    text = unprefixed(unprefixed(clip, "ema"), "text_model")
    tuned = unprefixed(unprefixed(sd, "model"), "text_encoder")
    assert tuned.keys() == text.keys() and not all(torch.equal(tuned[k], text[k]) for k in text)
    model, _ = load_run(whole)                        # sampling reads the fine-tuned encoder from the run
    stored = unprefixed(unprefixed(sd, "ema"), "text_encoder")
    assert all(torch.equal(v, stored[k]) for k, v in model.text_encoder.state_dict().items())
    run_training("sd-shapes", part, overrides=common + ["steps=2"], progress=False, evaluate_after=False)
    run_training("sd-shapes", part, overrides=["steps=4"], resume=True, progress=False, evaluate_after=False)
    assert [r["loss"] for r in logged(part)] == [r["loss"] for r in logged(whole)]


def test_category_weights_choose_the_captions_both_runs_train_on(tmp_path, sd_run, clip_run, monkeypatch):
    import minidiff.data as data
    from minidiff.data.shapes_dataset import make_example
    seen, real = [], data.shapes_tensors

    def spy(split="train", n=1000, size=32, seed=0, options=None):
        seen.append((split, options))
        return real(split, n, size, seed, options)

    monkeypatch.setattr(data, "shapes_tensors", spy)
    only_relations = ["category_weights=0,0,1,0,0", "steps=2"]
    run_training("clip-shapes", tmp_path / "clip", overrides=TINY_CLIP + only_relations, progress=False,
                 evaluate_after=False)
    vae_dir = json.loads((sd_run / "config.json").read_text())["latent"]["autoencoder_run"]
    run_training("sd-shapes", tmp_path / "sd", progress=False, evaluate_after=False, overrides=TINY_SD + only_relations
                 + [f"latent.autoencoder_run={vae_dir}", f"text.clip_run={clip_run}"])
    train_options = [options for split, options in seen if split == "train"]
    assert len(train_options) == 3                       # the tokenizer's captions, CLIP's scenes, the U-Net's scenes
    for options in train_options:
        assert [make_example("train", i, 32, options=options)["category"] for i in range(20)] == ["spatial_relation"] * 20
    assert json.loads((tmp_path / "sd" / "config.json").read_text())["data"]["category_weights"] == [0, 0, 1, 0, 0]


@pytest.mark.parametrize("weights", ["0,0,1,0", "0,0,0,0,0", "1,1,-1,1,1"])
def test_bad_category_weights_are_refused(tmp_path, weights):
    with pytest.raises(ValueError, match="non-negative weights, not all zero, for the Shapes categories"):
        run_training("sd-shapes", tmp_path / "x", overrides=[f"category_weights={weights}"], progress=False)


def test_category_weights_outside_shapes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="recipe ddpm-digits trains on digits, so drop it"):
        run_training("ddpm-digits", tmp_path / "x", overrides=["category_weights=1,1,1,1,1"], progress=False)
