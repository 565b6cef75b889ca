"""Every `minidiff` command and its error paths: one clear line, exit status 2, no traceback."""
import json
import subprocess
import sys

import pytest

from conftest import TINY_DIGITS, error_line
from minidiff.cli import main


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "ddpm-digits", "--out", str(out), "--no-eval", *TINY_DIGITS]) == 0
    return out




def test_presets_lists_counts_and_runs_as_a_program():
    out = subprocess.run([sys.executable, "-m", "minidiff.cli", "presets"], capture_output=True, text=True, check=True)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("ddpm-cifar10"))
    assert line.split()[-2:] == ["35,746,307", "35,746,307"]
    assert "unet-toy" in out.stdout and "mlp-toy" in out.stdout


def test_train_writes_a_run_folder(digits_run):
    for name in ("checkpoint.safetensors", "config.json", "log.jsonl", "samples.png"):
        assert (digits_run / name).is_file(), name
    config = json.loads((digits_run / "config.json").read_text())
    assert config["recipe"] == "ddpm-digits" and config["train"]["steps"] == 6


def test_sample_writes_pngs_and_grid(digits_run, tmp_path):
    assert main(["sample", str(digits_run), "--sampler", "ddim", "--steps", "4", "-n", "3", "--seed", "1",
                 "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["grid.png", "sample_0000.png", "sample_0001.png",
                                                              "sample_0002.png"]


def test_eval_prints_and_writes_metrics(digits_run, capsys):
    assert main(["eval", str(digits_run), "-n", "20", "--steps", "4"]) == 0
    metrics = json.loads((digits_run / "metrics.json").read_text())
    for key in ("recognizability", "real_recognizability", "coverage", "frechet", "real_frechet"):
        assert key in metrics
    assert '"coverage"' in capsys.readouterr().out


def test_train_and_eval_2d(tmp_path):
    out = tmp_path / "2d"
    assert main(["train", "ddpm-2d", "dataset=two_moons", "steps=20", "hidden=32", "layers=1", "batch_size=64",
                 "sample_steps=20", "num_images=100", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sliced_wasserstein"] > 0 and "real_sliced_wasserstein" in metrics
    assert main(["sample", str(out), "-n", "50", "--steps", "10", "--out", str(tmp_path / "pts")]) == 0
    assert len((tmp_path / "pts" / "points.csv").read_text().splitlines()) == 51


@pytest.mark.parametrize("argv, message", [
    (["train", "ddpm-cats"], "unknown recipe 'ddpm-cats'"),
    (["train", "ddpm-digits", "--preset", "unet-huge"], "unknown preset 'unet-huge'; run `minidiff presets`"),
    (["train", "ddpm-digits", "learning_rate=1"], "unknown config key 'learning_rate'"),
    (["train", "ddpm-digits", "lr=fast"], "lr='fast' is not a valid float"),
    (["train", "ddpm-digits", "sample_size=20"], "use a multiple of 8"),
    (["sample", "no/such/run", "--out", "x"], "does not exist"),
    (["eval", "no/such/run"], "does not exist"),
])
def test_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in error_line(capsys)


def test_missing_and_corrupt_checkpoints(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["sample", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no checkpoint" in error_line(capsys)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.safetensors").write_bytes(b"\x00" * 100)
    assert main(["eval", str(tmp_path / "bad")]) == 2
    assert "corrupt" in error_line(capsys)


def test_existing_run_needs_resume_and_resume_keeps_config(digits_run, capsys):
    assert main(["train", "ddpm-digits", "--out", str(digits_run), *TINY_DIGITS]) == 2
    assert "--resume" in error_line(capsys)
    assert main(["train", "ddpm-digits", "--out", str(digits_run), "--resume", "lr=0.5"]) == 2
    assert "only steps" in error_line(capsys)


def test_bad_sample_arguments(digits_run, tmp_path, capsys):
    assert main(["sample", str(digits_run), "--steps", "5000", "--out", str(tmp_path)]) == 2
    assert "--steps must be between 1 and 1000" in error_line(capsys)
    assert main(["sample", str(digits_run), "-n", "0", "--out", str(tmp_path)]) == 2
    assert "-n must be at least 1" in error_line(capsys)
