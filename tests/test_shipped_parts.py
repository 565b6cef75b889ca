"""The toy parts that ship with minidiff (minidiff/recipes/parts/): each is scored again on held-out data, so a
corrupted or stale part fails here, and recipes that build on one use it without training it again."""
import json

import pytest
import torch

from minidiff.recipes import load_run, make_run_config, run_training, shipped_part
from minidiff.recipes.base import PARTS_DIR
from minidiff.recipes.latent import reconstruction_metrics
from minidiff.recipes.text import clip_metrics
from minidiff.training.checkpoint import load_checkpoint

from conftest import TINY_LATENT

PARTS = ("vae-shapes", "clip-shapes")


@pytest.mark.parametrize("name", PARTS)
def test_each_part_is_a_finished_run_of_its_recipe_small_and_unpickled(name):
    folder = shipped_part(name)
    assert folder is not None and folder.parent == PARTS_DIR
    tensors, meta = load_checkpoint(folder / "checkpoint.safetensors")
    config = meta["config"]
    assert config["recipe"] == name and meta["step"] == config["train"]["steps"]
    recipe = json.loads(json.dumps(make_run_config(name)["train"]))       # the recipe's own settings, less the
    assert config["train"] == {k: v for k, v in recipe.items() if k in config["train"]}   # fields added since
    assert set(recipe) - set(config["train"]) <= {"shard"}
    assert {key.split(".")[0] for key in tensors} == {"ema"}                         # weights for use, no more
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size < 10 * 2**20
    assert {p.suffix for p in folder.rglob("*") if p.is_file()} <= {".safetensors", ".json", ".txt", ".png"}


def test_the_shipped_autoencoder_still_reconstructs_held_out_scenes():
    model, sections = load_run(shipped_part("vae-shapes"))
    metrics = reconstruction_metrics(model, sections, 200)            # test scenes 0..199
    assert metrics["object_recall"] >= 0.98, metrics
    recorded = json.loads((shipped_part("vae-shapes") / "metrics.json").read_text())
    assert metrics["psnr"] == pytest.approx(recorded["psnr"], abs=1.0)   # 200 of the 500 scenes it was measured on


def test_the_shipped_clip_retrieves_as_it_did_when_it_was_made():
    folder = shipped_part("clip-shapes")
    model, sections = load_run(folder)
    recorded = json.loads((folder / "metrics.json").read_text())
    metrics = clip_metrics(model, sections, folder, recorded["test_images"])
    for key in ("retrieval_image_to_text", "retrieval_text_to_image"):
        assert metrics[key] == pytest.approx(recorded[key], abs=0.01), key   # same scenes: float noise only
        assert metrics[key] > 0.8                                            # chance is 0.01


def test_a_latent_recipe_uses_the_shipped_autoencoder_unless_told_to_retrain(tmp_path, capsys):
    out = tmp_path / "ldm"
    run_training("ldm-shapes", out, overrides=TINY_LATENT, progress=False, evaluate_after=False)
    config = json.loads((out / "config.json").read_text())
    assert config["latent"]["autoencoder_run"] == str(shipped_part("vae-shapes"))
    assert not (out / "autoencoder").exists()
    assert "using the shipped vae-shapes part" in capsys.readouterr().out
    model, _ = load_run(out)
    shipped, _ = load_checkpoint(shipped_part("vae-shapes") / "checkpoint.safetensors")
    assert torch.equal(model.autoencoder.decoder.conv_out.weight, shipped["ema.decoder.conv_out.weight"])
