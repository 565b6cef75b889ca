"""The training loop: checkpoints, exact resume, learning-rate schedule, non-finite loss."""
import json

import pytest
import torch

from conftest import TINY_DIGITS
from minidiff.process import GaussianDiffusion, NoiseSchedule
from minidiff.recipes import load_run, run_training
from minidiff.training.checkpoint import (CheckpointError, load_checkpoint, load_optimizer_tensors, optimizer_tensors,
                                          save_checkpoint)
from minidiff.training.loop import TrainConfig, TrainingError, learning_rate, train, update_ema


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("fused", ["false", "true"])   # AdamW's reference loop and its fused kernel
def test_exact_resume_matches_uninterrupted_run(tmp_path, fused):
    full, part = tmp_path / "full", tmp_path / "part"
    overrides = TINY_DIGITS + [f"fused={fused}"]
    run_training("ddpm-digits", full, overrides=overrides, progress=False, evaluate_after=False)
    run_training("ddpm-digits", part, overrides=overrides + ["steps=3"], progress=False, evaluate_after=False)
    assert len(losses(part)) == 3
    run_training("ddpm-digits", part, overrides=["steps=6"], resume=True, progress=False, evaluate_after=False)
    assert losses(part) == losses(full)  # bit for bit, not approximately
    a, meta_a = load_checkpoint(full / "checkpoint.safetensors")
    b, meta_b = load_checkpoint(part / "checkpoint.safetensors")
    assert meta_a["step"] == meta_b["step"] == 6
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_ema_update_is_the_weighted_average():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2).requires_grad_(False)
    before = [e.clone() for e in ema.parameters()]
    update_ema(ema, model, 0.9)
    for e, old, p in zip(ema.parameters(), before, model.parameters()):
        assert torch.allclose(e, 0.9 * old + 0.1 * p.detach(), atol=1e-7)


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    path = tmp_path / "ck.safetensors"
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_checkpoint(path, tensors, {"step": 7, "config": {"x": [1, 2]}})
    loaded, meta = load_checkpoint(path)
    assert meta == {"step": 7, "config": {"x": [1, 2]}}
    assert all(torch.equal(tensors[k], loaded[k]) for k in tensors)
    assert not list(tmp_path.glob("*.tmp"))


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([p], lr=1e-2)
    p.grad = torch.ones(4)
    opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=1e-2)
    load_optimizer_tensors(opt2, optimizer_tensors(opt))
    p.grad = q.grad = torch.full((4,), 0.5)
    opt.step()
    opt2.step()
    assert torch.equal(p, q)


def test_corrupt_and_missing_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_run(tmp_path / "nowhere")


def test_learning_rate_schedule():
    c = TrainConfig(steps=110, lr=1.0, warmup_steps=10, lr_schedule="cosine")
    assert learning_rate(c, 0) == pytest.approx(0.1)
    assert learning_rate(c, 9) == pytest.approx(1.0)
    assert learning_rate(c, 60) == pytest.approx(0.5)
    assert learning_rate(c, 110) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(TrainConfig(lr=0.3, warmup_steps=0, lr_schedule="constant"), 50) == 0.3
    with pytest.raises(ValueError, match="lr_schedule"):
        learning_rate(TrainConfig(lr_schedule="linear"), 5)


class Exploding(torch.nn.Module):
    """A 'network' whose output becomes infinite after a few steps."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        return x * self.scale * (float("inf") if self.calls > 3 else 1.0)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    diffusion = GaussianDiffusion(NoiseSchedule.make("linear", 10))
    config = TrainConfig(steps=10, batch_size=4, checkpoint_every=2, warmup_steps=1, sample_every=0)
    with pytest.raises(TrainingError, match=r"at step 3; the last good checkpoint \(step 2\)"):
        train(Exploding(), diffusion, torch.randn(16, 2), config, tmp_path, {"note": "test"}, progress=False)
    _, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 2


def test_training_reduces_the_loss_on_2d_data(tmp_path):
    run_training("ddpm-2d", tmp_path, overrides=["steps=150", "hidden=64", "layers=2", "batch_size=256",
                                                  "log_every=1", "lr=3e-3"], progress=False, evaluate_after=False)
    values = losses(tmp_path)
    assert sum(values[-20:]) / 20 < 0.8 * sum(values[:20]) / 20


def test_sample_grids_every_sample_every_steps_but_not_at_the_end(tmp_path):
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t):
            return x * self.scale

    grids = []
    config = TrainConfig(steps=6, batch_size=4, warmup_steps=1, sample_every=2, checkpoint_every=6)
    train(Scale(), GaussianDiffusion(NoiseSchedule.make("linear", 10)), torch.randn(16, 2), config, tmp_path,
          {"note": "test"}, on_sample=lambda ema, step: grids.append(step), progress=False)
    assert grids == [2, 4]   # the run's final grid is samples.png, drawn by the recipe after training
