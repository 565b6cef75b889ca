"""Chapter 0's exercise cases for tests/test_exercises.py: the Shapes world and ShapesEval.

WRONG lists (exercise, plausible but wrong implementation, a phrase the failure message must contain);
RIGHT (optional) lists other correct implementations the checks must accept.
"""
from dataclasses import replace

from minidiff.exercises.checking import load_exercise_file
from exercise_paths import solutions_path

solutions_ch00 = load_exercise_file(solutions_path("ch00"))


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


WRONG = [
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
