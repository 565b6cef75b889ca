"""Chapter 0 exercises: reference solutions (for instructors).

Each function is written from the caption grammar and ShapesEval's rules in words (data/README.md), not by
calling minidiff, so that the checks in `minidiff.exercises.ch00` compare two independent implementations.
Same signatures as exercises.py.

    python instructors/solutions/00-shapes-world.py        # every check passes: exit status 0
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # for the annotations only: the functions use these objects' attributes, nothing else
    from minidiff.data.captions import PromptSpec
    from minidiff.eval.shapeseval import Detection

NUMBERS = {"two": 2, "three": 3, "four": 4}
SINGULAR = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
            "crosses": "cross"}                     # "crosses" loses "es", the others "s": a table, not a rule
SIZE_WORDS = ("small", "medium", "large")
COLOR_WORDS = ("red", "yellow", "green", "cyan", "blue", "purple")
INTRO_PHRASES = ("a picture of ", "an image of ")
MARGIN = 0.1                                        # the least offset, as a fraction of the canvas


def parse_count(caption: str) -> tuple[int, str, str | None, str | None]:
    """Exercise 1: (count, shape, color, size) of a counting caption."""
    text = caption.strip()
    if " on a " in text and text.endswith(" background"):           # "... on a gray background"
        text = text[:text.rindex(" on a ")]
    for intro in INTRO_PHRASES:
        text = text.removeprefix(intro)
    color = None
    if ", all " in text:                                              # "two crosses, all green"
        text, color = text.split(", all ")
    number, *words = text.split()
    plural = words.pop()                                              # the plural always comes last
    size = words.pop(0) if words and words[0] in SIZE_WORDS else None
    if words and words[0] in COLOR_WORDS:
        color = words.pop(0)
    return NUMBERS[number], SINGULAR[plural], color, size


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Exercise 2: does "A <relation> B" hold for centers a and b (y grows downwards)?"""
    dx, dy = b[0] - a[0], b[1] - a[1]                                 # from A to B
    along, across = {"above": (dy, dx), "left of": (dx, dy),         # B lower than A; B right of A
                     "below": (-dy, dx), "right of": (-dx, dy)}[relation]
    return along > MARGIN and along > abs(across)                       # clear, and not diagonal


def prompt_holds(spec: PromptSpec, detections: list[Detection]) -> bool:
    """Exercise 3: does an image with these detections satisfy a counting or position prompt?"""
    thing = spec.things[0]
    matching = [d for d in detections
                if d.shape == thing.shape
                and (thing.color is None or d.color == thing.color)      # None: the prompt names no color
                and (thing.size is None or d.size == thing.size)]
    if spec.category == "counting":
        return len(matching) == thing.count                              # exact: one too many fails
    return any(d.position == spec.position for d in matching)          # any of them, not only the first


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch00 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
