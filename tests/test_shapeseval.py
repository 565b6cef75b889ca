"""ShapesEval must be trustworthy before it judges models: near-perfect on true images, near chance on false ones."""
import numpy as np
import pytest
import torch

from minidiff.data.captions import CATEGORIES, PromptSpec, Thing
from minidiff.data.shapes import Scene, ShapeObject, render
from minidiff.eval.shapeseval import (build_suite, check, degrade, detect, evaluate_generator, load_suite,
                                      render_prompts, score, shuffled_within_category)

SUITE = load_suite("v1")


def subset(suite, per_category):
    return [e for c in CATEGORIES for e in [e for e in suite if e["category"] == c][:per_category]]


def test_suites_are_fixed_and_cover_every_category():
    assert build_suite("v1") == {"v1": load_suite("v1"), "v1-heldout": load_suite("v1-heldout")}
    counts = {c: sum(e["category"] == c for e in SUITE) for c in CATEGORIES}
    assert counts == {c: 100 for c in CATEGORIES}
    assert len({e["id"] for e in SUITE}) == len(SUITE)


def test_heldout_suite_uses_only_heldout_pairs_first():
    from minidiff.data.shapes import HELDOUT_PAIRS
    for e in load_suite("v1-heldout"):
        first = e["spec"]["things"][0]
        assert (first["shape"], first["color"]) in HELDOUT_PAIRS
    for e in SUITE:
        assert not any((t["shape"], t["color"]) in HELDOUT_PAIRS for t in e["spec"]["things"])


@pytest.mark.parametrize("size", [32, 64])
def test_true_images_score_near_perfect(size):
    result = score(render_prompts(SUITE, size, seed=1), SUITE)
    assert all(acc >= 0.99 for acc in result["categories"].values()), result["categories"]


@pytest.mark.parametrize("size", [24, 32, 48, 64])
def test_true_images_after_generator_blur_and_noise(size):
    result = score(degrade(render_prompts(SUITE, size, seed=2), blur=0.02, noise=0.1, seed=size), SUITE)
    assert all(acc >= 0.99 for acc in result["categories"].values()), result["categories"]


@pytest.mark.parametrize("size", [128, 256])
def test_large_resolutions(size):
    prompts = subset(SUITE, 15)
    for images in (render_prompts(prompts, size, seed=3), degrade(render_prompts(prompts, size, seed=3), seed=4)):
        result = score(images, prompts)
        assert all(acc >= 0.99 for acc in result["categories"].values()), result["categories"]


def test_heldout_suite_on_true_images():
    suite = load_suite("v1-heldout")
    result = score(degrade(render_prompts(suite, 32, seed=5)), suite)
    assert result["overall"] >= 0.99, result["categories"]


def test_blank_and_noise_images_score_zero():
    blank = [np.zeros((32, 32, 3), np.uint8) for _ in SUITE]
    assert score(blank, SUITE)["overall"] == 0.0
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in SUITE]
    result = score(noise, SUITE)
    assert max(result["categories"].values()) <= 0.05, result["categories"]


def test_wrong_prompt_images_score_near_chance():
    """Valid scenes for another prompt of the same category: the score is the chance level, far below 1.
    Analytic chance for single objects is 1/25 (25 shape-color pairs); two objects, where only shapes
    count, is the highest (about 2/25 plus the cases where the shapes coincide)."""
    images = render_prompts(shuffled_within_category(SUITE, seed=0), 32, seed=6)
    result = score(images, SUITE)
    assert result["categories"]["single_object"] <= 0.12
    assert all(acc <= 0.3 for acc in result["categories"].values()), result["categories"]
    assert result["overall"] <= 0.15


def test_detect_reads_a_known_scene():
    scene = Scene([ShapeObject("triangle", "yellow", "large", 0.25, 0.3), ShapeObject("cross", "blue", "small", 0.75, 0.75)])
    found = sorted(detect(render(scene, 64)), key=lambda d: d.x)
    assert [(d.shape, d.color, d.size, d.position) for d in found] == [
        ("triangle", "yellow", "large", "top left"), ("cross", "blue", "small", "bottom right")]
    assert found[0].x == pytest.approx(0.25, abs=0.02) and found[0].y == pytest.approx(0.3, abs=0.02)


def test_each_check_fails_for_its_reason():
    scene = Scene([ShapeObject("circle", "red", "medium", 0.5, 0.2), ShapeObject("square", "blue", "medium", 0.5, 0.8)])
    found = detect(render(scene, 32))
    red_circle, blue_square = Thing("circle", "red"), Thing("square", "blue")
    assert check(PromptSpec("spatial_relation", (red_circle, blue_square), relation="above"), found)[0]
    passed, reason = check(PromptSpec("spatial_relation", (red_circle, blue_square), relation="below"), found)
    assert not passed and "not below" in reason
    swapped = (Thing("circle", "blue"), Thing("square", "red"))
    assert check(PromptSpec("two_objects", swapped), found)[0]                  # shapes only
    assert not check(PromptSpec("attribute_binding", swapped), found)[0]        # colors bound to shapes
    passed, reason = check(PromptSpec("counting", (Thing("circle", "red", count=2),)), found)
    assert not passed and "counted 1" in reason
    assert check(PromptSpec("position", (red_circle,), position="top"), found)[0]
    assert not check(PromptSpec("position", (red_circle,), position="bottom"), found)[0]
    assert not check(PromptSpec("single_object", (Thing("circle", "red", "large"),)), found)[0]   # size named


def test_score_accepts_tensors_and_strings_and_reports_per_prompt():
    prompts = ["a red circle above a blue square", "three green crosses"]
    images = render_prompts(prompts, 32, seed=0)
    tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
    for x in (images, np.stack(images), tensor):
        result = score(x, prompts)
        assert result["overall"] == 1.0 and result["counts"] == {"spatial_relation": 1, "counting": 1}
    wrong = score(images[::-1], prompts)
    assert wrong["overall"] == 0.0
    assert all(r["reason"] != "ok" and r["detected"] for r in wrong["per_prompt"])


@pytest.mark.parametrize("images, prompts, message", [
    ([np.zeros((32, 32, 3), np.uint8)], [], "no prompts"),
    ([np.zeros((32, 32, 3), np.uint8)] * 2, ["a red circle"], "one prompt per image"),
    ([np.zeros((16, 16, 3), np.uint8)], ["a red circle"], "24 to 256"),
    ([np.zeros((32, 32, 3), np.float32)], ["a red circle"], "uint8"),
    (torch.zeros(1, 1, 32, 32), ["a red circle"], "N, 3, H, W"),
    ([np.zeros((32, 32, 3), np.uint8)], ["a pink circle"], "prompt"),
    ([np.zeros((32, 32, 3), np.uint8)], [""], "empty prompt"),
])
def test_bad_input_is_a_clear_error(images, prompts, message):
    with pytest.raises(ValueError, match=message):
        score(images, prompts)


def test_unknown_suite_and_attributes():
    with pytest.raises(ValueError, match="unknown ShapesEval suite"):
        load_suite("v9")
    with pytest.raises(ValueError, match="unknown color"):
        PromptSpec("single_object", (Thing("circle", "pink"),))
    with pytest.raises(ValueError, match="unknown shape"):
        PromptSpec("single_object", (Thing("hexagon", "red"),))


def test_evaluate_generator_runs_a_suite_in_batches():
    calls = []

    def perfect(prompts, seed):
        calls.append(len(prompts))
        return render_prompts(prompts, 32, seed=seed)

    result = evaluate_generator(perfect, suite="v1-heldout", batch_size=40)
    assert calls == [40, 40, 20] and result["overall"] >= 0.99 and result["suite"] == "v1-heldout"

    def ignores_prompt(prompts, seed):
        return render_prompts(["a red square"] * len(prompts), 32, seed=seed)

    assert evaluate_generator(ignores_prompt, suite="v1-heldout")["overall"] <= 0.3
