"""The training loop: checkpoints, exact resume, learning-rate schedule, non-finite loss, config validation."""
import json
import os

import pytest
import torch

from conftest import TINY_DIGITS
from minidiff.process import GaussianDiffusion, NoiseSchedule
from minidiff.recipes import load_run, run_training
from minidiff.io import FileError
from minidiff.training import checkpoint as checkpoint_module
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
    with pytest.raises(TrainingError, match=r"at step 3; the last good checkpoint \(step 2\) is kept") as error:
        train(Exploding(), diffusion, torch.randn(16, 2), config, tmp_path, {"recipe": "ddpm-2d"}, progress=False)
    # the advice is a command that works: --resume keeps the run's lr, so a fresh run with a lower one
    assert "`minidiff train ddpm-2d --out NEW_FOLDER lr=0.0005`" in str(error.value)
    assert "--resume" not in str(error.value) and "\n" not in str(error.value)
    _, meta = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert meta["step"] == 2


def test_non_finite_loss_before_any_checkpoint_names_none(tmp_path):
    config = TrainConfig(steps=10, batch_size=4, checkpoint_every=5, warmup_steps=1, sample_every=0)
    with pytest.raises(TrainingError, match=r"at step 3, before any checkpoint was saved; start a fresh run"):
        train(Exploding(), GaussianDiffusion(NoiseSchedule.make("linear", 10)), torch.randn(16, 2), config,
              tmp_path, {}, progress=False)
    assert not (tmp_path / "checkpoint.safetensors").exists()


class Diverging(torch.nn.Module):
    """A 'network' whose loss grows a million-fold (finite) at its 4th call and becomes NaN at its 6th."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))
        self.calls = 0

    def forward(self, x, t):
        self.calls += 1
        factor = 1.0 if self.calls <= 3 else 1e6 if self.calls <= 5 else float("nan")
        return x * self.scale * factor


def test_a_checkpoint_saved_while_the_loss_exploded_is_not_called_good(tmp_path):
    config = TrainConfig(steps=10, batch_size=4, checkpoint_every=2, warmup_steps=1, sample_every=0)
    with pytest.raises(TrainingError, match=r"at step 5; the checkpoint of step 4 .* was saved while the loss was "
                                            r"already exploding \(up to [0-9.]+e\+1[0-9]\), so do not build on it"):
        train(Diverging(), GaussianDiffusion(NoiseSchedule.make("linear", 10)), torch.randn(16, 2), config,
              tmp_path, {}, progress=False)


@pytest.mark.parametrize("key,value,message", [
    ("steps", 0, "steps=0 is out of range; use a value at least 1"),
    ("batch_size", -1, "batch_size=-1 is out of range"),
    ("lr", 0.0, "lr=0.0 is out of range; use a value a finite number above 0"),
    ("lr", float("nan"), "lr=nan is out of range"),
    ("lr", float("inf"), "lr=inf is out of range"),
    ("warmup_steps", -5, "warmup_steps=-5"),
    ("weight_decay", -0.1, "weight_decay=-0.1"),
    ("grad_clip", -1.0, r"grad_clip=-1.0 is out of range; use a value 0 \(no clipping\) or more"),
    ("ema_decay", 1.5, r"ema_decay=1.5 is out of range; use a value in \[0, 1\]"),
    ("log_every", 0, "log_every=0"),
    ("checkpoint_every", 0, "checkpoint_every=0"),
    ("sample_every", -1, "sample_every=-1"),
    ("lr_schedule", "linear", "unknown lr_schedule 'linear'; choose one of constant, cosine"),
    ("device", "tpu", "unknown device 'tpu'; choose 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    ("device", "cuda:x", "unknown device 'cuda:x'"),
])
def test_train_config_validation_names_the_allowed_range(key, value, message):
    with pytest.raises(TrainingError, match=message):
        TrainConfig(**{key: value}).validate()


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_train_config_validation_accepts_the_devices(device):
    TrainConfig(device=device, sample_every=0, ema_decay=1.0, grad_clip=0.0, warmup_steps=0).validate()


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


def scale_run(tmp_path, steps=4, resume=False):
    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(()))

        def forward(self, x, t):
            return x * self.scale

    config = TrainConfig(steps=steps, batch_size=4, warmup_steps=1, sample_every=0, checkpoint_every=2, log_every=1)
    return train(Scale(), GaussianDiffusion(NoiseSchedule.make("linear", 10)), torch.randn(16, 2), config, tmp_path,
                 {"note": "test"}, resume=resume, progress=False)


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    scale_run(tmp_path)
    before = (tmp_path / "checkpoint.safetensors").read_bytes()
    for error in (OSError(28, "No space left on device"), SafetensorError("Error while serializing: IoError")):
        def fail(tensors, filename, metadata=None, error=error):
            with open(filename, "wb") as f:
                f.write(b"half a checkpoint")          # what a full disk leaves behind
            raise error

        monkeypatch.setattr(checkpoint_module, "save_file", fail)
        with pytest.raises(FileError, match="could not write .*checkpoint.safetensors .*unchanged") as caught:
            scale_run(tmp_path)
        assert "\n" not in str(caught.value)
        assert (tmp_path / "checkpoint.safetensors").read_bytes() == before
        assert not list(tmp_path.glob("*.tmp"))


def test_checkpoints_get_the_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ck.safetensors", {"a": torch.zeros(2)}, {"step": 1})
    finally:
        os.umask(mask)
    assert (tmp_path / "ck.safetensors").stat().st_mode & 0o777 == 0o644


def test_broken_checkpoint_metadata_is_one_line(tmp_path):
    from safetensors.torch import save_file

    cases = [({}, "without minidiff's metadata"), ({"minidiff": "{not json"}, "damaged config"),
             ({"minidiff": json.dumps({"config": {}})}, "does not record the step"),
             ({"minidiff": json.dumps({"step": "7"})}, "does not record the step")]
    for metadata, message in cases:
        path = tmp_path / "ck.safetensors"
        save_file({"a": torch.zeros(2)}, str(path), metadata=metadata)
        with pytest.raises(CheckpointError, match=message) as caught:
            load_checkpoint(path)
        assert "\n" not in str(caught.value)


def test_resume_skips_a_torn_log_line_and_removes_stale_temporaries(tmp_path, capsys):
    scale_run(tmp_path, steps=4)
    with open(tmp_path / "log.jsonl", "a") as log:
        log.write('{"step": 4, "lo')                       # a crash in the middle of a write
    (tmp_path / "checkpoint.safetensors.4242.tmp").write_bytes(b"left by a kill")
    _, _, logs = scale_run(tmp_path, steps=6, resume=True)
    assert "skipped 1 unreadable line(s)" in capsys.readouterr().err
    assert [r["step"] for r in logs] == [4, 5]
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_refuses_weights_that_do_not_fit(tmp_path):
    scale_run(tmp_path)
    config = TrainConfig(steps=6, batch_size=4, warmup_steps=1, sample_every=0)
    with pytest.raises(FileError, match=r"do not fit the model .*resume with the recipe and overrides"):
        train(torch.nn.Linear(2, 2), GaussianDiffusion(NoiseSchedule.make("linear", 10)), torch.randn(16, 2), config,
              tmp_path, {}, resume=True, progress=False)
