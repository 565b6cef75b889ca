import pytest
import torch

# Tiny settings that make a whole `ddpm-digits` run take seconds on a CPU.
TINY_DIGITS = ["block_channels=8,16", "attention_levels=1", "norm_groups=4", "batch_size=8", "steps=6",
               "checkpoint_every=3", "log_every=1", "sample_every=0", "num_images=4", "sample_steps=5",
               "warmup_steps=2"]


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
