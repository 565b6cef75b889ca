import json

import pytest
import torch

# Tiny settings that make a whole `ddpm-digits` run take seconds on a CPU.
TINY_DIGITS = ["block_channels=8,16", "attention_levels=1", "norm_groups=4", "batch_size=8", "steps=6",
               "checkpoint_every=3", "log_every=1", "sample_every=0", "num_images=4", "sample_steps=5",
               "warmup_steps=2"]
# ... a `ddpm-2d` run, a `vae-shapes` run and an `ldm-shapes` run on its latents.
TINY_2D = ["hidden=16", "layers=1", "batch_size=16", "steps=6", "checkpoint_every=3", "log_every=1",
           "num_points=64", "num_images=8", "sample_steps=4", "warmup_steps=2"]
TINY_VAE = ["block_channels=8,16,16", "norm_groups=4", "batch_size=4", "steps=6", "checkpoint_every=3",
            "log_every=1", "sample_every=0", "warmup_steps=2", "train_examples=48", "disc_start=2",
            "discriminator.width=8", "perceptual_weight=0.1"]
TINY_LATENT = ["block_channels=8,16", "norm_groups=4", "attention_levels=1", "layers_per_block=1", "batch_size=8",
               "steps=4", "log_every=1", "sample_every=0", "num_images=4", "sample_steps=3", "warmup_steps=2",
               "train_examples=48"]


def error_line(capsys) -> str:
    """The one line a command printed on stderr, checked to be a `minidiff: error:` line and no traceback."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("minidiff: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def logged(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def files_of(folder) -> dict:
    """Every file under folder with its bytes: to check that a refused command changed nothing."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One classifier cache for the whole test session."""
    return tmp_path_factory.mktemp("minidiff-cache")


@pytest.fixture(autouse=True)
def _cache_env(monkeypatch, cache_dir):
    monkeypatch.setenv("MINIDIFF_CACHE", str(cache_dir))


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny tensors: on a shared 2-core machine one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """A finished tiny `vae-shapes` run (6 steps, the GAN from step 2 on)."""
    from minidiff.recipes import run_training

    out = tmp_path_factory.mktemp("vae")
    run_training("vae-shapes", out, overrides=TINY_VAE, progress=False, evaluate_after=False)
    return out
