"""Checks for Chapter 0's exercises (chapters/00-shapes-world/exercises.py): the Shapes world and ShapesEval.

Each `check_<name>(fn)` calls a learner's function on many scenes or captions and compares the result with
minidiff's own code: the caption grammar of `minidiff.data.captions` (exercise 1), the spatial rule of
`minidiff.data.shapes.relation_holds` (exercise 2) and ShapesEval's verdicts, `minidiff.eval.shapeseval.check`,
on images the renderer drew (exercise 3). It returns quietly when everything agrees and raises AssertionError
otherwise, saying which input failed, what was expected, what came back, and giving a hint. A function that still
raises NotImplementedError fails with `NotImplementedYet`, a kind of AssertionError. `run_checks(module)` runs them all.

| exercise         | what it is                                         | minidiff reference                   |
|------------------|----------------------------------------------------|--------------------------------------|
| `parse_count`    | read a counting caption back into what it claims   | `captions.parse` (the `_COUNT` rule) |
| `relation_holds` | is A above, below, left of or right of B?          | `shapes.relation_holds`              |
| `prompt_holds`   | judge a counting or position prompt on detections  | `shapeseval.check`                   |
"""
from __future__ import annotations

from dataclasses import replace
from functools import lru_cache
from types import ModuleType
from typing import Callable

import numpy as np

from minidiff.data.captions import INTROS, PLURALS, PromptSpec, Thing, describe, parse, plain_caption
from minidiff.data.shapes import (BACKGROUNDS, RELATION_MARGIN, RELATIONS, SIZES, Scene, ShapeObject,
                                  relation_holds, render)
from minidiff.data.shapes_dataset import random_spec
from minidiff.eval.shapeseval import Detection, check, detect, load_suite, render_prompts, shuffled_within_category
from minidiff.exercises.checking import Check, call, command_line, report


# ---------------------------------------------------------------------------------------------------------
# Exercise 1: a counting caption, read back into (count, shape, color, size).
# ---------------------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _counting_captions() -> tuple[tuple[str, tuple], ...]:
    """Counting captions in every paraphrase `describe` writes, each with what `parse` reads from it."""
    rng = np.random.default_rng(20261206)
    cases = []
    for i in range(400):
        spec = random_spec("counting", rng)
        thing = spec.things[0]
        thing = replace(thing, size=thing.size if i % 2 else None, color=thing.color if i % 5 else None)
        background = (None, *BACKGROUNDS)[i % 4]
        caption = describe(replace(spec, things=(thing,), background=background), rng)
        read = parse(caption).things[0]
        cases.append((caption, (read.count, read.shape, read.color, read.size)))
    return tuple(cases)


def _diagnose_count(caption: str, expected: tuple, got) -> str:
    """The known mistake that turns `expected` into `got` on this caption, or ''."""
    _, shape, color, _ = expected
    if not isinstance(got, tuple) or len(got) != 4:
        return ""
    if isinstance(got[0], str):
        return "return the number word ('three') instead of the number (3)"
    if got[1] == PLURALS[shape][:-1] and got[1] != shape:
        return f"strip one letter from the plural ('{PLURALS[shape]}' is not '{shape}' plus 's')"
    if ", all " in caption and got[2] is None and color is not None:
        return "miss the color written after the plural (', all green')"
    if got[2] in ("", "None") or got[3] in ("", "None"):
        return "return an empty string or 'None' for an attribute the caption leaves open, instead of None"
    return ""


def check_parse_count(fn: Callable) -> None:
    """fn(caption) -> (count, shape, color, size), what `captions.parse` reads from a counting caption."""
    hint = ("strip an intro ('a picture of ', 'an image of ') and a background (' on a gray background') first; the "
            "first word is the number ('two', 'three', 'four' -> 2, 3, 4); the plural names the shape, and "
            "'crosses' loses 'es', not 's' (captions.PLURALS maps shapes to plurals: invert it); a size and a color "
            "may stand before the plural, or the color after it as ', all <color>'; an attribute the caption does "
            "not name is None.")
    for caption, expected in _counting_captions():
        got = call(fn, caption, hint=hint)
        if isinstance(got, list):
            got = tuple(got)
        if got == expected:
            continue
        message = f"parse_count({caption!r}): expected {expected}, got {got!r}.\n"
        if mistake := _diagnose_count(caption, expected, got):
            message += f"  This is what you get if you {mistake}.\n"
        if caption.startswith(INTROS):
            message += "  This caption starts with an intro phrase, which says nothing about the objects.\n"
        raise AssertionError(message + f"  Hint: {hint}")


# ---------------------------------------------------------------------------------------------------------
# Exercise 2: a spatial relation between two objects' centers, as captions and ShapesEval read it.
# ---------------------------------------------------------------------------------------------------------

def _along_across(relation: str, a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """The offset from A to B along the relation's direction, and the offset across it."""
    dx, dy = b[0] - a[0], b[1] - a[1]
    return {"above": (dy, dx), "below": (-dy, dx), "left of": (dx, dy), "right of": (-dx, dy)}[relation]


@lru_cache(maxsize=1)
def _center_pairs() -> tuple[tuple[str, tuple[float, float], tuple[float, float], bool], ...]:
    """(relation, a, b, shapes.relation_holds(relation, a, b)) for random centers, half of them near the rule's
    edges: an offset of about the margin, or about as large across the relation as along it."""
    rng = np.random.default_rng(20261207)
    cases = []
    for i in range(800):
        a = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)))
        if i % 2:
            first = RELATION_MARGIN * rng.uniform(0.5, 1.5) * rng.choice([-1, 1])
            second = first * rng.uniform(0.7, 1.3) * rng.choice([-1, 1]) if i % 3 == 0 else rng.uniform(-0.05, 0.05)
            dx, dy = (first, second) if i % 4 == 1 else (second, first)
            b = (a[0] + float(dx), a[1] + float(dy))
        else:
            b = (float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.1, 0.9)))
        relation = RELATIONS[i // 2 % len(RELATIONS)]
        cases.append((relation, a, b, relation_holds(relation, a, b)))
    return tuple(cases)


def check_relation_holds(fn: Callable) -> None:
    """fn(relation, a, b) -> bool, as minidiff.data.shapes.relation_holds(relation, a, b)."""
    hint = (f"y grows downwards (row 0 is the top of the image), so 'A above B' means B's y is larger than A's. "
            f"Measure the offset from A to B along the relation's axis (for 'left of', B's x minus A's x; for "
            f"'above', B's y minus A's y; 'right of' and 'below' the opposite): the relation holds when that "
            f"offset is larger than RELATION_MARGIN = {RELATION_MARGIN} and larger than the absolute offset along "
            f"the other axis, so that a diagonal pair is neither.")
    for relation, a, b, expected in _center_pairs():
        got = call(fn, relation, a, b, hint=hint)
        if isinstance(got, np.bool_):
            got = bool(got)
        if not isinstance(got, bool):
            raise AssertionError(f"relation_holds: expected True or False, got {type(got).__name__} {got!r}.\n"
                                 f"  Hint: return a bool. {hint}")
        if got == expected:
            continue
        along, across = _along_across(relation, a, b)
        message = (f"relation_holds({relation!r}, a=({a[0]:.3f}, {a[1]:.3f}), b=({b[0]:.3f}, {b[1]:.3f})): "
                   f"expected {expected}, got {got} (from A to B: dx = {b[0] - a[0]:+.3f}, "
                   f"dy = {b[1] - a[1]:+.3f}).\n")
        flipped = {"above": "below", "below": "above"}.get(relation)
        if flipped and got == relation_holds(flipped, a, b):
            message += "  This is what you get if you take y to grow upwards, as on a plot.\n"
        elif got == (along > abs(across)):
            message += "  This is what you get if you forget the margin: centers this close are too close to tell.\n"
        elif got == (along > RELATION_MARGIN):
            message += "  This is what you get if you ignore the offset across the relation (a diagonal pair).\n"
        raise AssertionError(message + f"  Hint: {hint}")


# ---------------------------------------------------------------------------------------------------------
# Exercise 3: ShapesEval's verdict on a counting or position prompt, from one image's detections.
# ---------------------------------------------------------------------------------------------------------

def _scene(*objects: tuple[str, str, str, float, float]) -> np.ndarray:
    """A 32-pixel image of objects given as (shape, color, size, x, y)."""
    return render(Scene([ShapeObject(*o) for o in objects]), 32)


@lru_cache(maxsize=1)
def _judged_prompts() -> tuple[tuple[PromptSpec, tuple[Detection, ...], bool], ...]:
    """(spec, detections, ShapesEval's verdict) for images drawn for their own prompt, for another prompt of the
    same category, with size classes named, and for scenes built to tell the usual mistakes apart."""
    suite = [e for e in load_suite("v1") if e["category"] in ("counting", "position")]
    suite = [e for c in ("counting", "position") for e in [e for e in suite if e["category"] == c][:30]]
    specs = [PromptSpec.from_json(e["spec"]) for e in suite]
    images = render_prompts(suite, size=32, seed=1)
    pairs = list(zip(specs, images))
    pairs += zip([PromptSpec.from_json(e["spec"]) for e in shuffled_within_category(suite, seed=2)], images)
    pairs += [(replace(s, things=(replace(s.things[0], size=size),)), image)
              for (s, image), size in zip(list(zip(specs, images))[::3], list(SIZES) * 20)]
    pairs += [
        # the red square in the right third is the second one: every candidate counts, not only the first
        (PromptSpec("position", (_thing("square", "red"),), position="bottom right"),
         _scene(("square", "red", "small", 0.2, 0.2), ("square", "red", "small", 0.8, 0.8))),
        # three circles, one of them blue: two red circles, not three
        (PromptSpec("counting", (_thing("circle", "red", count=3),)),
         _scene(("circle", "red", "small", 0.2, 0.2), ("circle", "red", "small", 0.8, 0.2),
                ("circle", "blue", "small", 0.5, 0.8))),
        # four green crosses for a prompt of three: one too many fails, counting is exact
        (PromptSpec("counting", (_thing("cross", "green", count=3),)),
         _scene(*[("cross", "green", "small", x, y) for x in (0.25, 0.75) for y in (0.25, 0.75)])),
        # the yellow diamond at the top is large, the prompt asks for a small one
        (PromptSpec("position", (_thing("diamond", "yellow", size="small"),), position="top"),
         _scene(("diamond", "yellow", "large", 0.5, 0.2))),
    ]
    judged = []
    for spec, image in pairs:
        detections = tuple(detect(image))
        judged.append((spec, detections, check(spec, list(detections))[0]))
    return tuple(judged)


def _thing(shape: str, color: str, size: str | None = None, count: int = 1) -> Thing:
    return Thing(shape, color, size, count)


def _describe_detections(detections) -> str:
    return "; ".join(f"{d.size} {d.color} {d.shape} at the {d.position}" for d in detections) or "nothing"


def check_prompt_holds(fn: Callable) -> None:
    """fn(spec, detections) -> bool, ShapesEval's verdict (`shapeseval.check(spec, detections)[0]`)."""
    hint = ("an object matches the prompt's thing when its shape is the named shape and, where the prompt names "
            "them, its color and its size class are the named ones (None names nothing); a counting prompt holds "
            "when exactly `count` detections match; a position prompt when at least one matching detection has "
            "`.position` equal to spec.position.")
    for spec, detections, expected in _judged_prompts():
        got = call(fn, spec, list(detections), hint=hint)
        if isinstance(got, np.bool_):
            got = bool(got)
        if not isinstance(got, bool):
            raise AssertionError(f"prompt_holds: expected True or False, got {type(got).__name__} {got!r}.\n"
                                 f"  Hint: return a bool. {hint}")
        if got == expected:
            continue
        message = (f"prompt_holds for the {spec.category} prompt {plain_caption(spec)!r} on an image where the "
                   f"detector found [{_describe_detections(detections)}]: expected {expected}, got {got}.\n")
        t = spec.things[0]
        matching = [d for d in detections if d.shape == t.shape and t.color in (None, d.color)
                    and t.size in (None, d.size)]
        loosened = lambda **open_: check(replace(spec, things=(replace(t, **open_),)), detections)[0]  # noqa: E731
        if spec.category == "counting" and got == (len(matching) >= t.count):
            message += "  This is what you get if you count at least N instead of exactly N.\n"
        elif t.size is not None and got == loosened(size=None):
            message += "  This is what you get if you ignore the size class the prompt names.\n"
        elif t.color is not None and got == loosened(color=None):
            message += "  This is what you get if you ignore the color of the objects.\n"
        elif spec.category == "position" and got == (bool(matching) and matching[0].position == spec.position):
            message += "  This is what you get if you look only at the first matching object.\n"
        raise AssertionError(message + f"  Hint: {hint}")


# ---------------------------------------------------------------------------------------------------------
# The checks, in the order of the exercise file.
# ---------------------------------------------------------------------------------------------------------

TITLE = "Chapter 0 exercises"
CHECKS: dict[str, Check] = {
    "parse_count": check_parse_count,
    "relation_holds": check_relation_holds,
    "prompt_holds": check_prompt_holds,
}
EXERCISES = tuple(CHECKS)


def run_checks(module: ModuleType) -> int:
    """Check every exercise function found in `module`; print one line per exercise, a summary, then the
    details of each failure. Returns the number of exercises that failed."""
    return report(module, CHECKS, TITLE)


if __name__ == "__main__":
    command_line("minidiff.exercises.ch00", CHECKS, TITLE)
