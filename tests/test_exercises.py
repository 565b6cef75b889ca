"""The Chapter 1 exercise checks: they pass the reference solutions, fail the stubs, and catch plausible bugs."""
import inspect
import math
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from minidiff.exercises import load_exercise_file
from minidiff.exercises.ch01 import CHECKS, EXERCISES, NotImplementedYet, run_checks

CHAPTER = Path(__file__).resolve().parents[1] / "chapters" / "01-ddpm"
solutions = load_exercise_file(CHAPTER / "solutions.py")
stubs = load_exercise_file(CHAPTER / "exercises.py")


def test_the_learner_file_and_the_solutions_define_the_same_exercises():
    for name in EXERCISES:
        assert inspect.signature(getattr(stubs, name)) == inspect.signature(getattr(solutions, name)), name


def test_loading_a_missing_file_names_the_problem():
    with pytest.raises(ValueError, match="is not a file"):
        load_exercise_file(CHAPTER / "no_such_file.py")


@pytest.mark.parametrize("name", EXERCISES)
def test_check_passes_the_solution(name):
    CHECKS[name](getattr(solutions, name))


@pytest.mark.parametrize("name", EXERCISES)
def test_check_fails_the_stub_as_not_implemented(name):
    with pytest.raises(NotImplementedYet, match="not implemented yet"):
        CHECKS[name](getattr(stubs, name))


# Plausible but wrong implementations, one per bug a learner is likely to write.

def q_sample_without_sqrt(x0, t, eps, alpha_bar):
    a = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return a * x0 + (1 - a) * eps


def q_sample_paper_index(x0, t, eps, alpha_bar):
    return solutions.q_sample(x0, t - 1, eps, alpha_bar)


def q_sample_first_timestep_for_all(x0, t, eps, alpha_bar):
    return solutions.q_sample(x0, t[:1].expand(len(t)), eps, alpha_bar)


def posterior_with_forward_variance(x0, x_t, alpha_bar_t, alpha_bar_prev):
    mean, _ = solutions.posterior_mean_variance(x0, x_t, alpha_bar_t, alpha_bar_prev)
    return mean, 1 - alpha_bar_t / alpha_bar_prev


def posterior_without_sqrt_alpha(x0, x_t, alpha_bar_t, alpha_bar_prev):
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    mean = (alpha_bar_prev.sqrt() * beta_t * x0 + alpha_t * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar_t)
    return mean, beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)


def v_target_flipped(x0, eps, alpha_bar_t):
    return -solutions.v_target(x0, eps, alpha_bar_t)


def x0_eps_from_v_rotating_forward(v, x_t, alpha_bar_t):
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    return a * x_t + s * v, -s * x_t + a * v


def cosine_betas_uncapped(num_steps, s=0.008, max_beta=0.999):
    return solutions.cosine_betas(num_steps, s, max_beta=1.0)


def cosine_betas_float32(num_steps, s=0.008, max_beta=0.999):
    u = torch.arange(num_steps + 1, dtype=torch.float32) / num_steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def cosine_betas_without_offset(num_steps, s=0.008, max_beta=0.999):
    return solutions.cosine_betas(num_steps, 0.0, max_beta)


def ddim_step_wrong_sign(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    x0_hat = (x_t + (1 - alpha_bar_t).sqrt() * eps_hat) / alpha_bar_t.sqrt()  # + where eq. 12 has -
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps_hat


def ddim_step_ignoring_eta(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    return solutions.ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, None)


def ddim_step_without_sigma_in_direction(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    x_prev = solutions.ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, None)
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
    return x_prev + sigma * noise if eta > 0 else x_prev


def q_sample_without_reshape(x0, t, eps, alpha_bar):
    a = alpha_bar[t]  # (B,) does not broadcast against (B, C, H, W): torch raises a RuntimeError
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


WRONG = [
    ("q_sample", q_sample_without_sqrt, "instead of its square root"),
    ("q_sample", q_sample_paper_index, "paper's numbering"),
    ("q_sample", q_sample_first_timestep_for_all, "values differ"),
    ("q_sample", q_sample_without_reshape, "raised RuntimeError"),
    ("posterior_mean_variance", posterior_with_forward_variance, "forward step's variance"),
    ("posterior_mean_variance", posterior_without_sqrt_alpha, "values differ"),
    ("v_target", v_target_flipped, "flip the sign"),
    ("x0_eps_from_v", x0_eps_from_v_rotating_forward, "values differ"),
    ("cosine_betas", cosine_betas_uncapped, "forget the cap"),
    ("cosine_betas", cosine_betas_float32, "float64"),
    ("cosine_betas", cosine_betas_without_offset, "values differ"),
    ("ddim_step", ddim_step_wrong_sign, "flip the sign"),
    ("ddim_step", ddim_step_ignoring_eta, "ignore eta"),
    ("ddim_step", ddim_step_without_sigma_in_direction, "eta = 1"),
]


@pytest.mark.parametrize("name, wrong, message", WRONG, ids=[w.__name__ for _, w, _ in WRONG])
def test_check_catches_a_plausible_bug(name, wrong, message):
    with pytest.raises(AssertionError, match=message) as caught:
        CHECKS[name](wrong)
    assert not isinstance(caught.value, NotImplementedYet)
    assert "Hint:" in str(caught.value)


def test_run_checks_reports_every_exercise(capsys):
    assert run_checks(solutions) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(EXERCISES) and "FAIL" not in out

    assert run_checks(stubs) == len(EXERCISES)
    out = capsys.readouterr().out
    assert out.count("not implemented yet") == len(EXERCISES)

    partial = types.SimpleNamespace(__name__="partial", q_sample=solutions.q_sample, v_target=v_target_flipped)
    assert run_checks(partial) == len(EXERCISES) - 1
    out = capsys.readouterr().out
    assert "PASS  q_sample" in out and "FAIL  v_target" in out and "no function named 'ddim_step'" in out
    assert "--- v_target ---" in out  # the details of a real failure follow the summary


def test_the_exercise_file_runs_its_checks_and_fails_cleanly():
    result = subprocess.run([sys.executable, str(CHAPTER / "exercises.py")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == len(EXERCISES), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count("not implemented yet") == len(EXERCISES)
