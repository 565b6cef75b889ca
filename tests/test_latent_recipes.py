"""Chapter 2's recipes end to end on tiny settings: vae-shapes, ldm-shapes, ddpm-shapes, and their errors."""
import json

import pytest
import torch

from minidiff.cli import main
from minidiff.pipelines import LatentDiffusion
from minidiff.recipes import load_run, make_run_config, run_evaluation, run_training, sample_from_run
from minidiff.training.checkpoint import load_checkpoint

from conftest import TINY_LATENT, TINY_VAE, logged

pytestmark = pytest.mark.usefixtures("one_thread")


def test_autoencoder_run_writes_a_self_contained_checkpoint_with_its_latent_scale(vae_run):
    tensors, meta = load_checkpoint(vae_run / "checkpoint.safetensors")
    assert meta["step"] == 6
    prefixes = {key.split(".")[0] for key in tensors}
    assert prefixes == {"model", "ema", "optimizer", "discriminator", "d_optimizer", "perceptual"}
    config = json.loads((vae_run / "config.json").read_text())
    assert config["model"]["scaling_factor"] != 1.0 and config["model"]["scaling_factor"] > 0
    assert meta["config"]["model"]["scaling_factor"] == config["model"]["scaling_factor"]
    logs = logged(vae_run)
    assert "g_loss" not in logs[1] and "g_loss" in logs[2] and "d_loss" in logs[2]   # the GAN starts at disc_start
    assert (vae_run / "samples.png").exists()


def test_autoencoder_resume_is_exact_with_the_discriminator_on(tmp_path, vae_run):
    part = tmp_path / "part"
    # steps=3 then 6: the cosine schedule (warmup 2) gives steps 0-2 the same learning rate either way
    run_training("vae-shapes", part, overrides=TINY_VAE + ["steps=3"], progress=False, evaluate_after=False)
    run_training("vae-shapes", part, overrides=["steps=6"], resume=True, progress=False, evaluate_after=False)
    assert [r["loss"] for r in logged(part)] == [r["loss"] for r in logged(vae_run)]
    a, _ = load_checkpoint(part / "checkpoint.safetensors")
    b, _ = load_checkpoint(vae_run / "checkpoint.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_autoencoder_eval_measures_reconstructions(vae_run):
    metrics = run_evaluation(vae_run, n=24)
    assert set(metrics) >= {"psnr", "object_recall", "scene_recall", "scaling_factor"}
    assert 0 <= metrics["object_recall"] <= 1 and metrics["psnr"] > 0
    assert json.loads((vae_run / "metrics.json").read_text()) == metrics


def test_latent_run_trains_on_the_autoencoders_latents_and_decodes_samples(tmp_path, vae_run):
    out = tmp_path / "ldm"
    run_training("ldm-shapes", out, overrides=TINY_LATENT + [f"autoencoder_run={vae_run}"], progress=False,
                 evaluate_after=False)
    model, sections = load_run(out)
    assert isinstance(model, LatentDiffusion)
    assert sections["model"].in_channels == 4 and sections["model"].sample_size == 8
    assert sections["autoencoder"].scaling_factor == json.loads((vae_run / "config.json").read_text())["model"]["scaling_factor"]
    images = sample_from_run(model, sections, 3, seed=0)
    assert images.shape == (3, 3, 32, 32) and images.abs().max() <= 1
    # the autoencoder is frozen: its weights in the run are the autoencoder run's EMA weights
    vae_tensors, _ = load_checkpoint(vae_run / "checkpoint.safetensors")
    assert torch.equal(model.autoencoder.decoder.conv_out.weight, vae_tensors["ema.decoder.conv_out.weight"])
    assert main(["sample", str(out), "-n", "2", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    assert (tmp_path / "s" / "sample_0001.png").exists()


def test_latent_run_refuses_a_run_that_is_not_an_autoencoder(tmp_path, capsys):
    digits = tmp_path / "digits"
    from conftest import TINY_DIGITS
    run_training("ddpm-digits", digits, overrides=TINY_DIGITS, progress=False, evaluate_after=False)
    code = main(["train", "ldm-shapes", "--out", str(tmp_path / "ldm"), f"autoencoder_run={digits}"] + TINY_LATENT)
    assert code == 2
    assert "is a 'ddpm-digits' run, not an autoencoder" in capsys.readouterr().err


def test_sampling_an_autoencoder_run_is_a_clear_error(vae_run, tmp_path, capsys):
    assert main(["sample", str(vae_run), "--out", str(tmp_path / "s")]) == 2
    assert "autoencoder, which does not sample" in capsys.readouterr().err


def test_pixel_shapes_recipe_trains(tmp_path):
    out = tmp_path / "pix"
    run_training("ddpm-shapes", out, overrides=TINY_LATENT, progress=False, evaluate_after=False)
    model, sections = load_run(out)
    assert sample_from_run(model, sections, 2, seed=0).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("overrides,message", [
    (["sample_size=30"], "cannot go through this autoencoder"),
    (["pixel_loss=l3"], "unknown pixel_loss"),
    (["dataset=digits"], "does not fit recipe vae-shapes"),
    (["train_examples=0"], "train_examples=0 must be between 1 and 200000"),
])
def test_bad_autoencoder_configs_are_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_run_config("vae-shapes", overrides=overrides)


def test_latent_run_refuses_an_unfinished_autoencoder_run(tmp_path, vae_run):
    import shutil
    from minidiff.training.checkpoint import save_checkpoint
    unfinished = tmp_path / "vae"
    shutil.copytree(vae_run, unfinished)
    tensors, meta = load_checkpoint(unfinished / "checkpoint.safetensors")
    save_checkpoint(unfinished / "checkpoint.safetensors", tensors, {**meta, "step": 3})
    with pytest.raises(ValueError, match="stopped at step 3 of 6 .* --resume"):
        run_training("ldm-shapes", tmp_path / "ldm", overrides=TINY_LATENT + [f"autoencoder_run={unfinished}"],
                     progress=False, evaluate_after=False)
