"""What a user mistypes, moves or breaks around `minidiff train / sample / eval`: one `minidiff: error:` line each,
and nothing on disk lost. Also the recipes' registries, which the command line's choices come from."""
import json
import shutil

import pytest
import torch

from minidiff.cli import build_parser, main
from minidiff.recipes import RECIPES, RUN_KINDS, load_run, make_run_config, run_training
from minidiff.recipes.base import PREPARING, load_sections
from minidiff.recipes.sections import Sections, section_from_dict
from minidiff.training.checkpoint import load_checkpoint, save_checkpoint
from conftest import TINY_2D, TINY_LATENT, TINY_VAE, error_line, files_of, logged

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def points_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("points")
    run_training("ddpm-2d", out, overrides=TINY_2D, progress=False, evaluate_after=False)
    return out




# ---------------------------------------------------------------------------- the registries


def test_every_recipe_names_a_registered_kind_with_the_sections_it_needs():
    assert set(RECIPES) >= {"ddpm-digits", "ddpm-2d", "vae-shapes", "ldm-shapes", "ddpm-shapes", "clip-shapes",
                            "sd-shapes"}
    for recipe in RECIPES.values():
        kind = RUN_KINDS[recipe.kind]
        assert set(kind.sections) <= set(recipe.sections), recipe.name
        make_run_config(recipe.name)              # every default config validates


def test_the_command_lines_choices_come_from_the_registries(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    help_text = capsys.readouterr().out
    for name, recipe in RECIPES.items():
        assert name in help_text and recipe.description[:40] in help_text.replace("\n", " ").replace("  ", " ")
    assert main(["train"]) == 2                   # no recipe: the list, not "key=value required"
    line = error_line(capsys)
    assert all(name in line for name in RECIPES)


def test_a_section_with_families_is_saved_with_its_tag_and_older_untagged_runs_still_load():
    config = make_run_config("ddpm-2d")
    assert config["diffusion"]["family"] == "gaussian" and "family" not in config["train"]
    untagged = {**config, "diffusion": {k: v for k, v in config["diffusion"].items() if k != "family"}}
    assert load_sections(untagged)["diffusion"] == load_sections(config)["diffusion"]
    with pytest.raises(ValueError, match="family 'rectified-flow', which this minidiff does not have"):
        section_from_dict("diffusion", {**config["diffusion"], "family": "rectified-flow"})
    assert isinstance(load_sections(config), Sections) and load_sections(config).recipe == "ddpm-2d"


# ---------------------------------------------------------------------------- values refused at parse time


@pytest.mark.parametrize("override,message", [
    ("steps=0", "steps=0"), ("steps=-5", "steps=-5"), ("batch_size=0", "batch_size=0"),
    ("ema_decay=1.5", "ema_decay=1.5"), ("grad_clip=-1", "grad_clip=-1"), ("warmup_steps=-1", "warmup_steps=-1"),
    ("lr=-0.001", "lr=-0.001"), ("log_every=0", "log_every=0"), ("checkpoint_every=0", "checkpoint_every=0"),
    ("device=tpu", "device"), ("num_images=0", "num_images=0"), ("num_points=0", "num_points=0"),
    ("eta=2", "eta=2"), ("sample_steps=0", "sample_steps=0"), ("min_snr_gamma=-1", "min_snr_gamma=-1"),
    ("hidden=0", "hidden"),
])
def test_out_of_range_values_are_refused_before_anything_runs(tmp_path, capsys, override, message):
    assert main(["train", "ddpm-2d", "--out", str(tmp_path / "run"), override]) == 2
    assert message in error_line(capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override,message", [
    ("guidance_scale=nan", "guidance_scale=nan"), ("guidance_scale=1e300", "guidance_scale=1e+300"),
    ("latent.scaling_factor=0", "scaling_factor=0"), ("p_uncond=2", "p_uncond=2"),
])
def test_text_and_latent_values_are_refused(override, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        make_run_config("sd-shapes", overrides=[override])


# ---------------------------------------------------------------------------- output folders


def test_an_output_folder_that_cannot_be_one_is_refused_before_any_work(tmp_path, capsys, points_run):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    for out in (a_file, a_file / "under"):
        assert main(["train", "ddpm-2d", "--out", str(out)] + TINY_2D) == 2
        assert "is a file" in error_line(capsys)
        assert main(["sample", str(points_run), "--out", str(out)]) == 2
        assert "is a file" in error_line(capsys)
    assert a_file.read_text() == "mine"


def test_a_read_only_output_folder_is_refused(tmp_path, capsys, points_run, monkeypatch):
    import minidiff.recipes.base as base

    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(base.os, "access", lambda path, mode: path != locked)   # root may write anywhere
    assert main(["sample", str(points_run), "--out", str(locked / "samples")]) == 2
    assert f"{locked} is not writable" in error_line(capsys)
    assert not (locked / "samples").exists()


# ---------------------------------------------------------------------------- eval and sample options


def test_eval_and_sample_options_are_checked_against_the_run(points_run, capsys, tmp_path):
    assert main(["eval", str(points_run), "-n", "-3"]) == 2
    assert "-n must be at least 1" in error_line(capsys)
    assert main(["eval", str(points_run), "--guidance", "3"]) == 2
    assert "need a text-to-image run" in error_line(capsys)
    assert main(["eval", str(points_run), "--steps", "0"]) == 2
    assert "--steps must be between 1 and" in error_line(capsys)
    assert main(["sample", str(points_run), "--eta", "2", "--out", str(tmp_path / "s")]) == 2
    assert "eta=2" in error_line(capsys)
    assert main(["sample", str(points_run), "--prompt", "a red circle", "--out", str(tmp_path / "s")]) == 2
    assert "--prompt needs a text-to-image run" in error_line(capsys)
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------- resume


def test_resume_refuses_another_recipes_run_naming_both(points_run, capsys):
    before = files_of(points_run)
    assert main(["train", "ddpm-digits", "--out", str(points_run), "--resume"]) == 2
    line = error_line(capsys)
    assert "ddpm-2d run, not ddpm-digits" in line
    assert files_of(points_run) == before


def test_resume_refuses_a_config_json_edited_by_hand(tmp_path, points_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(points_run, run)
    config = json.loads((run / "config.json").read_text())
    config["diffusion"]["schedule"] = "cosine"
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "ddpm-2d", "--out", str(run), "--resume", "steps=8"]) == 2
    assert "does not read edits to config.json" in error_line(capsys)


def test_resume_with_fewer_steps_than_done_is_refused(points_run, capsys):
    assert main(["train", "ddpm-2d", "--out", str(points_run), "--resume", "steps=2"]) == 2
    assert "behind the checkpoint" in error_line(capsys)


def test_load_run_is_strict_about_the_checkpoint(tmp_path, points_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(points_run, run)
    tensors, meta = load_checkpoint(run / "checkpoint.safetensors")
    first = next(k for k in tensors if k.startswith("ema."))
    save_checkpoint(run / "checkpoint.safetensors", {k: v for k, v in tensors.items() if k != first}, meta)
    with pytest.raises(ValueError, match="do not fit the model .missing"):
        load_run(run)
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_checkpoint(run / "checkpoint.safetensors", tensors, meta)
    assert main(["sample", str(run), "--out", str(tmp_path / "s")]) == 2
    assert "NaN or Inf" in error_line(capsys)


def test_a_resumed_latent_run_encodes_with_the_autoencoder_it_started_with(tmp_path, vae_run):
    """The autoencoder folder is retrained (other weights) and then moved away between the two halves: the
    resumed run follows the uninterrupted one exactly, because its checkpoint embeds the autoencoder."""
    vae = tmp_path / "vae"
    shutil.copytree(vae_run, vae)
    overrides = TINY_LATENT + [f"autoencoder_run={vae}", "steps=4"]
    run_training("ldm-shapes", tmp_path / "straight", overrides=overrides, progress=False, evaluate_after=False)
    run_training("ldm-shapes", tmp_path / "split", overrides=overrides[:-1] + ["steps=2"], progress=False,
                 evaluate_after=False)
    tensors, meta = load_checkpoint(vae / "checkpoint.safetensors")
    save_checkpoint(vae / "checkpoint.safetensors", {k: v + 0.01 if v.is_floating_point() else v
                                                     for k, v in tensors.items()}, meta)
    vae.rename(tmp_path / "moved")
    run_training("ldm-shapes", tmp_path / "split", overrides=["steps=4"], resume=True, progress=False,
                 evaluate_after=False)
    assert [r["loss"] for r in logged(tmp_path / "split")] == [r["loss"] for r in logged(tmp_path / "straight")]


def test_a_run_interrupted_while_its_autoencoder_trains_resumes_that_stage(tmp_path, monkeypatch):
    """`ldm-shapes --retrain-parts` killed in its autoencoder stage: --resume finishes the autoencoder where it
    stopped, then trains the U-Net, instead of answering "no checkpoint; train first"."""
    import minidiff.recipes.base as base

    out = tmp_path / "ldm"
    overrides = TINY_LATENT
    calls = []
    real = base.run_training

    def stop_after_three_steps(recipe, folder, **kwargs):
        calls.append((recipe, kwargs.get("resume")))
        if recipe == "vae-shapes" and not kwargs.get("resume"):   # 3 steps of 6, then killed
            real(recipe, folder, overrides=TINY_VAE + ["steps=3"], progress=False, evaluate_after=False)
            tensors, meta = load_checkpoint(folder / "checkpoint.safetensors")
            meta["config"]["train"]["steps"] = 6
            save_checkpoint(folder / "checkpoint.safetensors", tensors, meta)
            raise KeyboardInterrupt
        return real(recipe, folder, overrides=["steps=6"], resume=True, progress=False, evaluate_after=False)

    monkeypatch.setattr(base, "run_training", stop_after_three_steps)
    with pytest.raises(KeyboardInterrupt):
        real("ldm-shapes", out, overrides=overrides, retrain_parts=True, progress=False, evaluate_after=False)
    assert json.loads((out / "config.json").read_text())["status"] == PREPARING
    assert load_checkpoint(out / "autoencoder" / "checkpoint.safetensors")[1]["step"] == 3
    real("ldm-shapes", out, resume=True, progress=False, evaluate_after=False)
    assert calls == [("vae-shapes", False), ("vae-shapes", True)]
    assert load_checkpoint(out / "autoencoder" / "checkpoint.safetensors")[1]["step"] == 6
    _, meta = load_checkpoint(out / "checkpoint.safetensors")
    assert meta["step"] == 4 and meta["config"]["latent"]["autoencoder_run"] == str(out / "autoencoder")
    assert "status" not in json.loads((out / "config.json").read_text())


def test_a_fresh_run_into_a_folder_being_prepared_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"status": PREPARING, "recipe": "ldm-shapes"}))
    assert main(["train", "ldm-shapes", "--out", str(out)] + TINY_LATENT) == 2
    assert "already holds a run; continue it with --resume" in error_line(capsys)
