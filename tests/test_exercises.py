"""Every chapter's exercise checks: they pass the reference solutions, fail the files learners start from, catch
plausible bugs with a message that names them, and accept other correct implementations.

The chapters are found on disk: every `chapters/NN-slug/exercises.py` must have a checker `minidiff.exercises.chNN`,
a `solutions.py` beside it, and at least one known mistake per exercise in KNOWN_MISTAKES below.
"""
import importlib
import inspect
import math
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from minidiff.exercises.checking import NotImplementedYet, command_line, load_exercise_file

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = {f"ch{p.parent.name[:2]}": p.parent                         # {"ch01": chapters/01-ddpm, ...}
            for p in sorted(ROOT.glob("chapters/[0-9][0-9]-*/exercises.py"))}
CHECKERS = {chapter: importlib.import_module(f"minidiff.exercises.{chapter}") for chapter in CHAPTERS}
SOLUTIONS = {chapter: load_exercise_file(folder / "solutions.py") for chapter, folder in CHAPTERS.items()}
STUBS = {chapter: load_exercise_file(folder / "exercises.py") for chapter, folder in CHAPTERS.items()}
EXERCISES = [(chapter, name) for chapter in CHAPTERS for name in CHECKERS[chapter].EXERCISES]
EXERCISE_IDS = [f"{chapter}-{name}" for chapter, name in EXERCISES]
solutions_ch00, solutions_ch01 = SOLUTIONS["ch00"], SOLUTIONS["ch01"]
solutions_ch02, solutions_ch03 = SOLUTIONS["ch02"], SOLUTIONS["ch03"]

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_the_chapters_are_found():
    assert {"ch00", "ch01", "ch02", "ch03"} <= set(CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_learner_file_and_the_solutions_define_the_same_exercises(chapter):
    stubs, solutions = STUBS[chapter], SOLUTIONS[chapter]
    for name in CHECKERS[chapter].EXERCISES:
        assert inspect.signature(getattr(stubs, name)) == inspect.signature(getattr(solutions, name)), name
    constants = [name for name in vars(stubs) if name.isupper()]          # such as Chapter 2's LOGVAR_RANGE
    for name in constants:
        assert getattr(stubs, name) == getattr(solutions, name), name


def test_loading_a_missing_file_names_the_problem():
    with pytest.raises(ValueError, match="is not a file"):
        load_exercise_file(CHAPTERS["ch01"] / "no_such_file.py")


@pytest.mark.parametrize("chapter, name", EXERCISES, ids=EXERCISE_IDS)
def test_check_passes_the_solution(chapter, name):
    CHECKERS[chapter].CHECKS[name](getattr(SOLUTIONS[chapter], name))


@pytest.mark.parametrize("chapter, name", EXERCISES, ids=EXERCISE_IDS)
def test_check_fails_the_stub_as_not_implemented(chapter, name):
    with pytest.raises(NotImplementedYet, match="not implemented yet"):
        CHECKERS[chapter].CHECKS[name](getattr(STUBS[chapter], name))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_run_checks_reports_every_exercise(chapter, capsys):
    checker, solutions = CHECKERS[chapter], SOLUTIONS[chapter]
    exercises = checker.EXERCISES
    assert checker.run_checks(solutions) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(exercises) and "FAIL" not in out

    assert checker.run_checks(STUBS[chapter]) == len(exercises)
    out = capsys.readouterr().out
    assert out.count("not implemented yet") == len(exercises)

    # A file half done: the first exercise right, the last one wrong, the others missing.
    first, missing, last = exercises[0], exercises[1], exercises[-1]
    wrong = next(fn for name, fn, _ in KNOWN_MISTAKES[chapter] if name == last)
    partial = types.SimpleNamespace(__name__="partial", **{first: getattr(solutions, first), last: wrong})
    assert checker.run_checks(partial) == len(exercises) - 1
    out = capsys.readouterr().out
    assert f"PASS  {first}" in out and f"FAIL  {last}" in out and f"no function named {missing!r}" in out
    assert f"--- {last} ---" in out  # the details of a real failure follow the summary


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_exercise_file_runs_its_checks_and_fails_cleanly(chapter):
    """What a learner runs: `python chapters/NN-slug/exercises.py`, in a fresh interpreter."""
    result = subprocess.run([sys.executable, str(CHAPTERS[chapter] / "exercises.py")], capture_output=True, text=True,
                            timeout=120)
    exercises = CHECKERS[chapter].EXERCISES
    assert result.returncode == len(exercises), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count("not implemented yet") == len(exercises)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_command_line_grades_the_solutions(chapter, monkeypatch, capsys):
    """`python -m minidiff.exercises.chNN path/to/solutions.py`, run in this process (a fresh interpreter costs
    seconds; the learner's own entry point above keeps one)."""
    checker = CHECKERS[chapter]
    monkeypatch.setattr(sys, "argv", [checker.__file__, str(CHAPTERS[chapter] / "solutions.py")])
    with pytest.raises(SystemExit) as exit_status:
        command_line(checker.__name__, checker.CHECKS, checker.TITLE)
    out = capsys.readouterr().out
    assert exit_status.value.code == 0, out
    assert out.count("PASS") == len(checker.EXERCISES)


def test_the_command_line_refuses_a_file_that_does_not_import(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "exercises.py"
    broken.write_text("def q_sample(:\n")
    checker = CHECKERS["ch01"]
    monkeypatch.setattr(sys, "argv", [checker.__file__, str(broken)])
    with pytest.raises(SystemExit) as exit_status:
        command_line(checker.__name__, checker.CHECKS, checker.TITLE)
    assert exit_status.value.code == len(checker.EXERCISES)     # every exercise counts as failed
    assert capsys.readouterr().err.startswith(f"minidiff: error: cannot import {broken}: SyntaxError")


# ---------------------------------------------------------------------------------------------------------
# Plausible but wrong implementations, one per bug a learner is likely to write, each with a phrase its
# failure message must contain. Chapter 1: DDPM and DDIM.
# ---------------------------------------------------------------------------------------------------------

def parse_count_stripping_s(caption):
    count, shape, color, size = solutions_ch00.parse_count(caption)
    return count, shape + "e" if shape == "cross" else shape, color, size


def parse_count_missing_color_after_plural(caption):
    count, shape, color, size = solutions_ch00.parse_count(caption)
    return count, shape, None if ", all " in caption else color, size


def parse_count_number_word(caption):
    count, shape, color, size = solutions_ch00.parse_count(caption)
    return {2: "two", 3: "three", 4: "four"}[count], shape, color, size


def parse_count_keeping_the_intro(caption):
    words = caption.split()
    if caption.startswith(("a picture of ", "an image of ")):
        raise KeyError(words[0])                         # reads "a" or "an" as the number
    return solutions_ch00.parse_count(caption)


def relation_holds_y_up(relation, a, b):
    flipped = {"above": "below", "below": "above"}.get(relation, relation)
    return solutions_ch00.relation_holds(flipped, a, b)


def relation_holds_without_margin(relation, a, b):
    dx, dy = b[0] - a[0], b[1] - a[1]
    along, across = {"above": (dy, dx), "below": (-dy, dx), "left of": (dx, dy), "right of": (-dx, dy)}[relation]
    return along > abs(across)


def relation_holds_diagonal(relation, a, b):
    dx, dy = b[0] - a[0], b[1] - a[1]
    return {"above": dy, "below": -dy, "left of": dx, "right of": -dx}[relation] > 0.1


def prompt_holds_at_least(spec, detections):
    thing = spec.things[0]
    if spec.category == "counting":
        return sum(d.shape == thing.shape and thing.color in (None, d.color) and thing.size in (None, d.size)
                   for d in detections) >= thing.count
    return solutions_ch00.prompt_holds(spec, detections)


def prompt_holds_ignoring_color(spec, detections):
    return solutions_ch00.prompt_holds(replace(spec, things=(replace(spec.things[0], color=None),)), detections)


def prompt_holds_ignoring_size(spec, detections):
    return solutions_ch00.prompt_holds(replace(spec, things=(replace(spec.things[0], size=None),)), detections)


def prompt_holds_first_candidate_only(spec, detections):
    if spec.category == "position":
        thing = spec.things[0]
        matching = [d for d in detections if d.shape == thing.shape and thing.color in (None, d.color)
                    and thing.size in (None, d.size)]
        return bool(matching) and matching[0].position == spec.position
    return solutions_ch00.prompt_holds(spec, detections)


WRONG_CH00 = [
    ("parse_count", parse_count_stripping_s, "strip one letter from the plural"),
    ("parse_count", parse_count_missing_color_after_plural, "miss the color written after the plural"),
    ("parse_count", parse_count_number_word, "the number word"),
    ("parse_count", parse_count_keeping_the_intro, "raised KeyError"),
    ("relation_holds", relation_holds_y_up, "y to grow upwards"),
    ("relation_holds", relation_holds_without_margin, "forget the margin"),
    ("relation_holds", relation_holds_diagonal, "ignore the offset across"),
    ("prompt_holds", prompt_holds_at_least, "at least N instead of exactly N"),
    ("prompt_holds", prompt_holds_ignoring_color, "ignore the color"),
    ("prompt_holds", prompt_holds_ignoring_size, "ignore the size class"),
    ("prompt_holds", prompt_holds_first_candidate_only, "only at the first matching object"),
]


def q_sample_without_sqrt(x0, t, eps, alpha_bar):
    a = alpha_bar[t].reshape(-1, *([1] * (x0.ndim - 1)))
    return a * x0 + (1 - a) * eps


def q_sample_paper_index(x0, t, eps, alpha_bar):
    return solutions_ch01.q_sample(x0, t - 1, eps, alpha_bar)


def q_sample_first_timestep_for_all(x0, t, eps, alpha_bar):
    return solutions_ch01.q_sample(x0, t[:1].expand(len(t)), eps, alpha_bar)


def posterior_with_forward_variance(x0, x_t, alpha_bar_t, alpha_bar_prev):
    mean, _ = solutions_ch01.posterior_mean_variance(x0, x_t, alpha_bar_t, alpha_bar_prev)
    return mean, 1 - alpha_bar_t / alpha_bar_prev


def posterior_without_sqrt_alpha(x0, x_t, alpha_bar_t, alpha_bar_prev):
    alpha_t = alpha_bar_t / alpha_bar_prev
    beta_t = 1 - alpha_t
    mean = (alpha_bar_prev.sqrt() * beta_t * x0 + alpha_t * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar_t)
    return mean, beta_t * (1 - alpha_bar_prev) / (1 - alpha_bar_t)


def v_target_flipped(x0, eps, alpha_bar_t):
    return -solutions_ch01.v_target(x0, eps, alpha_bar_t)


def x0_eps_from_v_rotating_forward(v, x_t, alpha_bar_t):
    a, s = alpha_bar_t.sqrt(), (1 - alpha_bar_t).sqrt()
    return a * x_t + s * v, -s * x_t + a * v


def cosine_betas_uncapped(num_steps, s=0.008, max_beta=0.999):
    return solutions_ch01.cosine_betas(num_steps, s, max_beta=1.0)


def cosine_betas_float32(num_steps, s=0.008, max_beta=0.999):
    u = torch.arange(num_steps + 1, dtype=torch.float32) / num_steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def cosine_betas_without_offset(num_steps, s=0.008, max_beta=0.999):
    return solutions_ch01.cosine_betas(num_steps, 0.0, max_beta)


def ddim_step_wrong_sign(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    x0_hat = (x_t + (1 - alpha_bar_t).sqrt() * eps_hat) / alpha_bar_t.sqrt()  # + where eq. 12 has -
    return alpha_bar_prev.sqrt() * x0_hat + (1 - alpha_bar_prev).sqrt() * eps_hat


def ddim_step_ignoring_eta(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    return solutions_ch01.ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, None)


def ddim_step_without_sigma_in_direction(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, eta=0.0, noise=None):
    x_prev = solutions_ch01.ddim_step(x_t, eps_hat, alpha_bar_t, alpha_bar_prev, 0.0, None)
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)).sqrt()
    return x_prev + sigma * noise if eta > 0 else x_prev


def q_sample_without_reshape(x0, t, eps, alpha_bar):
    a = alpha_bar[t]  # (B,) does not broadcast against (B, C, H, W): torch raises a RuntimeError
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


WRONG_CH01 = [
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


# ---------------------------------------------------------------------------------------------------------
# Chapter 2: the autoencoder of latent diffusion.
# ---------------------------------------------------------------------------------------------------------

def reparameterize_variance_as_std(mean, logvar, eps):
    return mean + logvar.clamp(-30, 20).exp() * eps


def reparameterize_without_clamp(mean, logvar, eps):
    return mean + torch.exp(0.5 * logvar) * eps


def reparameterize_detached(mean, logvar, eps):
    return solutions_ch02.reparameterize(mean.detach(), logvar.detach(), eps)


def reparameterize_own_noise(mean, logvar, eps):
    return solutions_ch02.reparameterize(mean, logvar, torch.randn_like(eps))


def gaussian_kl_without_minus_one(mean, logvar):
    return 0.5 * (mean**2 + logvar.exp() - logvar).sum(dim=(1, 2, 3))


def gaussian_kl_averaged(mean, logvar):
    return 0.5 * (mean**2 + logvar.exp() - 1 - logvar).mean(dim=(1, 2, 3))


def gaussian_kl_without_half(mean, logvar):
    return 2 * solutions_ch02.gaussian_kl(mean, logvar)


def gaussian_kl_batch_mean(mean, logvar):
    return solutions_ch02.gaussian_kl(mean, logvar).mean()


def latent_scale_std_not_inverse(latents, shift=False):
    return latents.std().item(), latents.mean().item() if shift else 0.0


def latent_scale_biased_std(latents, shift=False):
    return 1 / latents.std(correction=0).item(), latents.mean().item() if shift else 0.0


def latent_scale_root_mean_square(latents, shift=False):
    return 1 / latents.pow(2).mean().sqrt().item(), latents.mean().item() if shift else 0.0


def latent_scale_tensors(latents, shift=False):
    return 1 / latents.std(), latents.mean() if shift else torch.tensor(0.0)


def latent_scale_always_shifting(latents, shift=False):
    return 1 / latents.std().item(), latents.mean().item()


def hinge_without_half(logits_real, logits_fake):
    return 2 * solutions_ch02.hinge_discriminator_loss(logits_real, logits_fake)


def hinge_fake_sign_flipped(logits_real, logits_fake):
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 - logits_fake).mean())


def hinge_without_relu(logits_real, logits_fake):
    return 0.5 * ((1 - logits_real).mean() + (1 + logits_fake).mean())


def _gradient_norms(rec_loss, g_loss, last_layer, **kwargs):
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True, **kwargs)
    g_grad, = torch.autograd.grad(g_loss, last_layer, retain_graph=True, **kwargs)
    return rec_grad.norm(), g_grad.norm()


def adaptive_weight_not_detached(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer, create_graph=True)
    return disc_weight * (rec_norm / (g_norm + 1e-4)).clamp(0, 1e4)


def adaptive_weight_without_clamp(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer)
    return disc_weight * rec_norm / (g_norm + 1e-4)


def adaptive_weight_clamped_after_scaling(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer)
    return (disc_weight * rec_norm / (g_norm + 1e-4)).clamp(0, 1e4)


def adaptive_weight_without_epsilon(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_norm, g_norm = _gradient_norms(rec_loss, g_loss, last_layer)
    return disc_weight * (rec_norm / g_norm).clamp(0, 1e4)


def adaptive_weight_with_backward(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_loss.backward(retain_graph=True)
    rec_grad = last_layer.grad.clone()
    last_layer.grad = None
    g_loss.backward(retain_graph=True)  # leaves its gradient in last_layer.grad
    return disc_weight * (rec_grad.norm() / (last_layer.grad.norm() + 1e-4)).clamp(0, 1e4)


def adaptive_weight_graph_freed(rec_loss, g_loss, last_layer, disc_weight=0.5):
    rec_grad, = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    g_grad, = torch.autograd.grad(g_loss, last_layer)  # frees the graph the training step still needs
    return disc_weight * (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4)


def psnr_peak_one(x, x_hat):
    return solutions_ch02.psnr(x, x_hat) - 10 * torch.log10(torch.tensor(4.0))


def psnr_without_clamp(x, x_hat):
    mse = (x - x_hat).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return 10 * torch.log10(4 / mse)


def psnr_twenty_log(x, x_hat):
    return 2 * solutions_ch02.psnr(x, x_hat)


def psnr_without_floor(x, x_hat):
    mse = (x - x_hat.clamp(-1, 1)).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(4 / mse)


WRONG_CH02 = [
    ("reparameterize", reparameterize_variance_as_std, "the variance, as the standard deviation"),
    ("reparameterize", reparameterize_without_clamp, "forget to clamp logvar"),
    ("reparameterize", reparameterize_detached, "does not depend differentiably"),
    ("reparameterize", reparameterize_own_noise, "values differ"),
    ("gaussian_kl", gaussian_kl_without_minus_one, "leave out the -1"),
    ("gaussian_kl", gaussian_kl_averaged, "average over L, h, w"),
    ("gaussian_kl", gaussian_kl_without_half, "forget the factor 1/2"),
    ("gaussian_kl", gaussian_kl_batch_mean, "expected shape"),
    ("latent_scale", latent_scale_std_not_inverse, "return the std itself"),
    ("latent_scale", latent_scale_biased_std, "biased std"),
    ("latent_scale", latent_scale_root_mean_square, "root mean square"),
    ("latent_scale", latent_scale_tensors, "expected a Python float"),
    ("latent_scale", latent_scale_always_shifting, "even though shift is False"),
    ("hinge_discriminator_loss", hinge_without_half, "leave out the factor 1/2"),
    ("hinge_discriminator_loss", hinge_fake_sign_flipped, "flip the sign on the fakes"),
    ("hinge_discriminator_loss", hinge_without_relu, "forget the ReLU"),
    ("adaptive_weight", adaptive_weight_not_detached, "still requires grad"),
    ("adaptive_weight", adaptive_weight_without_clamp, "forget the clamp"),
    ("adaptive_weight", adaptive_weight_clamped_after_scaling, "clamp after multiplying"),
    ("adaptive_weight", adaptive_weight_without_epsilon, "forget the 1e-4"),
    ("adaptive_weight", adaptive_weight_with_backward, "last_layer.grad was written"),
    ("adaptive_weight", adaptive_weight_graph_freed, "retain_graph=True"),
    ("psnr", psnr_peak_one, "peak of 1"),
    ("psnr", psnr_without_clamp, "forget to clamp"),
    ("psnr", psnr_twenty_log, "20 log10"),
    ("psnr", psnr_without_floor, "NaN or inf"),
]


# ---------------------------------------------------------------------------------------------------------
# Chapter 3: conditioning on text. First correct implementations written differently from the solutions (a
# check must not demand one spelling), then mistakes.
# ---------------------------------------------------------------------------------------------------------

def bpe_merge_by_recursion(symbols, pair):
    if len(symbols) < 2:
        return list(symbols)
    if (symbols[0], symbols[1]) == pair:
        return [symbols[0] + symbols[1], *bpe_merge_by_recursion(symbols[2:], pair)]
    return [symbols[0], *bpe_merge_by_recursion(symbols[1:], pair)]


def causal_mask_with_float_min(length):
    future = torch.ones(length, length, dtype=torch.bool).triu(diagonal=1)
    return torch.zeros(length, length).masked_fill(future, torch.finfo(torch.float32).min)


def contrastive_loss_texts_first(image_embeddings, text_embeddings, logit_scale):
    logits_per_text = logit_scale.exp() * F.normalize(text_embeddings, dim=1) @ F.normalize(image_embeddings, dim=1).T
    labels = torch.arange(len(logits_per_text))
    return 0.5 * F.cross_entropy(logits_per_text, labels) + 0.5 * F.cross_entropy(logits_per_text.T, labels)


def cross_attention_with_torch_kernel(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    q, k, v = (rearrange(t, "B N (heads d) -> B heads N d", heads=heads)
               for t in (F.linear(x, w_q), F.linear(context, w_k), F.linear(context, w_v)))
    h = F.scaled_dot_product_attention(q, k, v)
    return F.linear(rearrange(h, "B heads L d -> B L (heads d)"), w_out, b_out)


def drop_condition_by_blending(context, null_context, p_uncond, generator=None):
    keep = (torch.rand(len(context), generator=generator) >= p_uncond).float().reshape(-1, 1, 1)
    return keep * context + (1 - keep) * null_context


def classifier_free_guidance_paper_form(cond, uncond, guidance_scale):
    w = guidance_scale - 1
    return (1 + w) * cond - w * uncond


RIGHT_CH03 = [("bpe_merge", bpe_merge_by_recursion), ("causal_mask", causal_mask_with_float_min),
             ("contrastive_loss", contrastive_loss_texts_first), ("cross_attention", cross_attention_with_torch_kernel),
             ("drop_condition", drop_condition_by_blending),
             ("classifier_free_guidance", classifier_free_guidance_paper_form)]


def bpe_merge_first_only(symbols, pair):
    for i in range(len(symbols) - 1):
        if (symbols[i], symbols[i + 1]) == pair:
            return [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2:]]
    return list(symbols)


def bpe_merge_overlapping(symbols, pair):
    merged = []
    for i in range(len(symbols)):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
        elif not (i > 0 and (symbols[i - 1], symbols[i]) == pair):
            merged.append(symbols[i])
    return merged


def bpe_merge_from_the_right(symbols, pair):
    merged, i = [], len(symbols) - 1
    while i >= 0:
        if i > 0 and (symbols[i - 1], symbols[i]) == pair:
            merged.insert(0, symbols[i - 1] + symbols[i])
            i -= 2
        else:
            merged.insert(0, symbols[i])
            i -= 1
    return merged


def bpe_merge_string_replace(symbols, pair):
    return " ".join(symbols).replace(f"{pair[0]} {pair[1]}", pair[0] + pair[1]).split(" ")


def bpe_merge_ignoring_end_of_word(symbols, pair):
    plain = [s.removesuffix("</w>") for s in symbols]
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (plain[i], plain[i + 1]) == tuple(p.removesuffix("</w>") for p in pair):
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def bpe_merge_in_place(symbols, pair):
    symbols[:] = solutions_ch03.bpe_merge(symbols, pair)
    return symbols


def causal_mask_masking_the_diagonal(length):
    return torch.full((length, length), float("-inf")).triu(diagonal=0)


def causal_mask_transposed(length):
    return torch.full((length, length), float("-inf")).tril(diagonal=-1)


def causal_mask_boolean(length):
    return torch.ones(length, length, dtype=torch.bool).tril()


def causal_mask_zero_one(length):
    return torch.ones(length, length).tril()


def causal_mask_ones_where_allowed(length):
    mask = torch.ones(length, length).tril()
    mask[mask == 0] = float("-inf")
    return mask


def causal_mask_by_multiplying(length):
    return (1 - torch.ones(length, length).tril()) * float("-inf")


def causal_mask_small_negative(length):
    return -torch.ones(length, length).triu(diagonal=1)


def causal_mask_4d(length):
    return solutions_ch03.causal_mask(length)[None, None]


def _logits(image_embeddings, text_embeddings, scale):
    return scale * F.normalize(image_embeddings, dim=-1) @ F.normalize(text_embeddings, dim=-1).T


def contrastive_loss_unnormalised(image_embeddings, text_embeddings, logit_scale):
    logits = logit_scale.exp() * image_embeddings @ text_embeddings.T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def contrastive_loss_image_to_text_only(image_embeddings, text_embeddings, logit_scale):
    logits = _logits(image_embeddings, text_embeddings, logit_scale.exp())
    return F.cross_entropy(logits, torch.arange(len(logits)))


def contrastive_loss_text_to_image_only(image_embeddings, text_embeddings, logit_scale):
    logits = _logits(image_embeddings, text_embeddings, logit_scale.exp())
    return F.cross_entropy(logits.T, torch.arange(len(logits)))


def contrastive_loss_not_halved(image_embeddings, text_embeddings, logit_scale):
    return 2 * solutions_ch03.contrastive_loss(image_embeddings, text_embeddings, logit_scale)


def contrastive_loss_without_exp(image_embeddings, text_embeddings, logit_scale):
    return solutions_ch03.contrastive_loss(image_embeddings, text_embeddings, logit_scale.log())


def contrastive_loss_divided_by_scale(image_embeddings, text_embeddings, logit_scale):
    return solutions_ch03.contrastive_loss(image_embeddings, text_embeddings, -logit_scale)


def contrastive_loss_divided_by_logit_scale(image_embeddings, text_embeddings, logit_scale):
    return solutions_ch03.contrastive_loss(image_embeddings, text_embeddings, -logit_scale.log())


def contrastive_loss_summed(image_embeddings, text_embeddings, logit_scale):
    return len(image_embeddings) * solutions_ch03.contrastive_loss(image_embeddings, text_embeddings, logit_scale)


def contrastive_loss_normalised_over_the_batch(image_embeddings, text_embeddings, logit_scale):
    logits = logit_scale.exp() * F.normalize(image_embeddings, dim=0) @ F.normalize(text_embeddings, dim=0).T
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def contrastive_loss_with_math_exp(image_embeddings, text_embeddings, logit_scale):
    logits = _logits(image_embeddings, text_embeddings, math.exp(logit_scale.item()))
    labels = torch.arange(len(logits))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def _attention(x, context, w_q, w_k, w_v, w_out, b_out, heads, divisor=None, softmax_dim=-1, split="(heads d)",
               project=True):
    d = w_q.shape[0] // heads
    q, k, v = (rearrange(t, f"B N {split} -> B heads N d", heads=heads)
               for t in (x @ w_q.T, context @ w_k.T, context @ w_v.T))
    weights = (q @ k.transpose(-1, -2) / (divisor or math.sqrt(d))).softmax(dim=softmax_dim)
    h = rearrange(weights @ v, f"B heads L d -> B L {split}")
    return h @ w_out.T + b_out if project else h


def cross_attention_divided_by_d(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return _attention(x, context, w_q, w_k, w_v, w_out, b_out, heads, divisor=w_q.shape[0] // heads)


def cross_attention_divided_by_sqrt_width(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return _attention(x, context, w_q, w_k, w_v, w_out, b_out, heads, divisor=math.sqrt(w_q.shape[0]))


def cross_attention_unscaled(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return _attention(x, context, w_q, w_k, w_v, w_out, b_out, heads, divisor=1.0)


def cross_attention_softmax_over_queries(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return _attention(x, context, w_q, w_k, w_v, w_out, b_out, heads, softmax_dim=-2)


def cross_attention_heads_split_last(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return _attention(x, context, w_q, w_k, w_v, w_out, b_out, heads, split="(d heads)")


def cross_attention_without_output_projection(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return _attention(x, context, w_q, w_k, w_v, w_out, b_out, heads, project=False)


def cross_attention_single_head(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return _attention(x, context, w_q, w_k, w_v, w_out, b_out, 1)


def cross_attention_heads_by_reshape(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    (B, L, C), M = x.shape, context.shape[1]
    q = (x @ w_q.T).reshape(B, heads, L, C // heads)              # a reshape where a transpose belongs
    k, v = ((context @ w.T).reshape(B, heads, M, C // heads) for w in (w_k, w_v))
    h = (q @ k.transpose(-1, -2) / math.sqrt(C // heads)).softmax(dim=-1) @ v
    return h.reshape(B, L, C) @ w_out.T + b_out


def cross_attention_keys_from_x(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return solutions_ch03.cross_attention(x, x, w_q, w_k, w_v, w_out, b_out, heads)


def cross_attention_untransposed_weights(x, context, w_q, w_k, w_v, w_out, b_out, heads):
    return solutions_ch03.cross_attention(x, context, w_q.T, w_k.T, w_v.T, w_out.T, b_out, heads)


def drop_condition_inverted(context, null_context, p_uncond, generator=None):
    return solutions_ch03.drop_condition(context, null_context, 1 - p_uncond, generator)


def drop_condition_one_draw(context, null_context, p_uncond, generator=None):
    drop = torch.rand(1, generator=generator) < p_uncond
    return null_context.expand_as(context).clone() if drop else context.clone()


def drop_condition_per_token(context, null_context, p_uncond, generator=None):
    drop = torch.rand(context.shape[:2], generator=generator) < p_uncond
    return torch.where(drop[..., None], null_context, context)


def drop_condition_in_place(context, null_context, p_uncond, generator=None):
    drop = torch.rand(len(context), generator=generator) < p_uncond
    context[drop] = null_context
    return context


def drop_condition_own_generator(context, null_context, p_uncond, generator=None):
    return solutions_ch03.drop_condition(context, null_context, p_uncond, torch.Generator().manual_seed(0))


def guidance_swapped(cond, uncond, guidance_scale):
    return solutions_ch03.classifier_free_guidance(uncond, cond, guidance_scale)


def guidance_paper_w_as_scale(cond, uncond, guidance_scale):
    return (1 + guidance_scale) * cond - guidance_scale * uncond


def guidance_without_base(cond, uncond, guidance_scale):
    return guidance_scale * (cond - uncond)


def guidance_in_place(cond, uncond, guidance_scale):
    return uncond.add_(guidance_scale * (cond - uncond))


WRONG_CH03 = [
    ("bpe_merge", bpe_merge_first_only, "merge only the first occurrence"),
    ("bpe_merge", bpe_merge_overlapping, "merge overlapping pairs"),
    ("bpe_merge", bpe_merge_from_the_right, "scan from the right"),
    ("bpe_merge", bpe_merge_string_replace, "str.replace"),
    ("bpe_merge", bpe_merge_ignoring_end_of_word, "treat 'a</w>'"),
    ("bpe_merge", bpe_merge_in_place, "changed the list it was given"),
    ("causal_mask", causal_mask_masking_the_diagonal, "mask the diagonal too"),
    ("causal_mask", causal_mask_transposed, "mask the past instead of the future"),
    ("causal_mask", causal_mask_boolean, "expected a float tensor"),
    ("causal_mask", causal_mask_zero_one, "0/1 mask"),
    ("causal_mask", causal_mask_ones_where_allowed, "the mask must be 0"),
    ("causal_mask", causal_mask_by_multiplying, "NaN"),
    ("causal_mask", causal_mask_small_negative, "too small to block"),
    ("causal_mask", causal_mask_4d, "expected shape"),
    ("contrastive_loss", contrastive_loss_unnormalised, "forget to L2-normalise"),
    ("contrastive_loss", contrastive_loss_image_to_text_only, "only the image-to-text direction"),
    ("contrastive_loss", contrastive_loss_text_to_image_only, "only the text-to-image direction"),
    ("contrastive_loss", contrastive_loss_not_halved, "without halving"),
    ("contrastive_loss", contrastive_loss_without_exp, "logit_scale itself instead of exp"),
    ("contrastive_loss", contrastive_loss_divided_by_scale, r"divide by exp\(logit_scale\)"),
    ("contrastive_loss", contrastive_loss_divided_by_logit_scale, "as if it were the temperature"),
    ("contrastive_loss", contrastive_loss_summed, "sum the cross-entropies"),
    ("contrastive_loss", contrastive_loss_normalised_over_the_batch, "normalise over the batch"),
    ("contrastive_loss", contrastive_loss_with_math_exp, "logit_scale: none reached it"),
    ("cross_attention", cross_attention_divided_by_d, r"by head_dim instead of sqrt\(head_dim\)"),
    ("cross_attention", cross_attention_divided_by_sqrt_width, "the full width"),
    ("cross_attention", cross_attention_unscaled, "forget to divide the scores"),
    ("cross_attention", cross_attention_softmax_over_queries, "softmax over the queries"),
    ("cross_attention", cross_attention_heads_split_last, r"\(head_dim, heads\) instead of \(heads, head_dim\)"),
    ("cross_attention", cross_attention_without_output_projection, "forget the output projection"),
    ("cross_attention", cross_attention_single_head, "ignore the heads"),
    ("cross_attention", cross_attention_heads_by_reshape, "values differ"),
    ("cross_attention", cross_attention_keys_from_x, "raised RuntimeError"),
    ("cross_attention", cross_attention_untransposed_weights, r"raised RuntimeError(.|\n)*\(out, in\)"),
    ("drop_condition", drop_condition_inverted, "drops with probability 1 - p_uncond"),
    ("drop_condition", drop_condition_one_draw, "one number for the whole batch"),
    ("drop_condition", drop_condition_per_token, "one number per token"),
    ("drop_condition", drop_condition_in_place, "changed `context` in place"),
    ("drop_condition", drop_condition_own_generator, "values differ"),
    ("classifier_free_guidance", guidance_swapped, "swap cond and uncond"),
    ("classifier_free_guidance", guidance_paper_w_as_scale, "Ho & Salimans' w"),
    ("classifier_free_guidance", guidance_without_base, "leave out the starting point"),
    ("classifier_free_guidance", guidance_in_place, "in place"),
]


KNOWN_MISTAKES = {"ch00": WRONG_CH00, "ch01": WRONG_CH01, "ch02": WRONG_CH02, "ch03": WRONG_CH03}
MISTAKES = [(chapter, *mistake) for chapter, mistakes in KNOWN_MISTAKES.items() for mistake in mistakes]
OTHER_CORRECT = [("ch03", *right) for right in RIGHT_CH03]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_exercise_has_a_known_mistake(chapter):
    assert set(CHECKERS[chapter].EXERCISES) == {name for name, _, _ in KNOWN_MISTAKES.get(chapter, [])}


@pytest.mark.parametrize("chapter, name, wrong, message", MISTAKES,
                         ids=[f"{chapter}-{wrong.__name__}" for chapter, _, wrong, _ in MISTAKES])
def test_check_catches_a_plausible_bug(chapter, name, wrong, message):
    with pytest.raises(AssertionError, match=message) as caught:
        CHECKERS[chapter].CHECKS[name](wrong)
    assert not isinstance(caught.value, NotImplementedYet)
    assert "Hint:" in str(caught.value)


@pytest.mark.parametrize("chapter, name, right", OTHER_CORRECT,
                         ids=[f"{chapter}-{right.__name__}" for chapter, _, right in OTHER_CORRECT])
def test_check_accepts_another_correct_implementation(chapter, name, right):
    CHECKERS[chapter].CHECKS[name](right)
