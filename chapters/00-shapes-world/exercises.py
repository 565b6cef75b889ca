"""Chapter 0 exercises: the Shapes world and ShapesEval, read from the inside.

Replace each `raise NotImplementedError(...)` with your code, then run

    python chapters/00-shapes-world/exercises.py

It prints PASS or FAIL for every exercise, with a hint for each failure, and exits with a non-zero status
until all three pass. Use plain Python: do not call `minidiff.data.captions.parse`, `minidiff.eval.shapeseval.check`
or `minidiff.data.shapes.relation_holds` here (the checks compare your answers with them, on hundreds of
captions, centers and rendered scenes).

The world's vocabulary (minidiff/data/shapes.py; data/README.md has the caption grammar with examples):
- shapes: circle, square, triangle, diamond, cross;
- colors: red, yellow, green, cyan, blue, purple;
- size classes: small, medium, large; backgrounds: black, white, gray;
- positions: the nine thirds of the canvas, "top left", "top", "top right", "left", "center", "right",
  "bottom left", "bottom", "bottom right".
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # for the annotations only: the functions use these objects' attributes, nothing else
    from minidiff.data.captions import PromptSpec
    from minidiff.eval.shapeseval import Detection


def parse_count(caption: str) -> tuple[int, str, str | None, str | None]:
    """Exercise 1. Read a counting caption back into what it claims.

    A counting caption names how many objects of one kind the image shows, in any of the paraphrases the
    dataset writes: "three purple squares", "two small crosses, all green", "an image of four large circles on
    a gray background". It may start with an intro phrase and end with a background phrase; neither says
    anything about the objects.

    Args:
        caption: one counting caption, lower case, as minidiff.data.captions.describe writes it.
    Returns:
        (count, shape, color, size): count an int (2 to 4); shape the singular shape name ("cross");
        color and size the named color and size class, or None where the caption does not name one.
    """
    raise NotImplementedError("Exercise 1: read the number, the shape, and the color and size if named")


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Exercise 2. Is object A <relation> object B, as the captions and ShapesEval mean it?

    Centers are fractions of the canvas, (x, y), with (0, 0) the top-left corner of the image, as in
    minidiff.data.shapes. "A above B" must hold clearly: B's center lies lower than A's by more than a margin of
    0.1 of the canvas, and by more than it lies to the side, so that a pair placed diagonally is neither above nor
    beside. "left of" is the same rule along x; "below" and "right of" are "above" and "left of" with A and B
    swapped.

    Args:
        relation: "above", "below", "left of" or "right of".
        a, b: the centers (x, y) of objects A and B, floats in [0, 1].
    Returns:
        True if "A <relation> B" holds (a Python bool).
    """
    raise NotImplementedError("Exercise 2: compare the offset from A to B along and across the relation")


def prompt_holds(spec: PromptSpec, detections: list[Detection]) -> bool:
    """Exercise 3. ShapesEval's verdict on a counting or a position prompt, from what its detector found.

    ShapesEval first detects the objects in an image (minidiff.eval.shapeseval.detect), then checks the
    prompt's spec against those detections. Write that second step for two categories.

    Args:
        spec: a minidiff.data.captions.PromptSpec whose `category` is "counting" or "position". Its one Thing,
            spec.things[0], has `.shape`, `.color` (or None), `.size` (a size class, or None) and `.count`;
            a position prompt also has `spec.position`, one of the nine thirds.
        detections: the objects found in one image, each a minidiff.eval.shapeseval.Detection with `.shape`,
            `.color`, `.size` (a size class) and `.position` (the third that holds its center).
    Returns:
        True if the image shows what the prompt says, False otherwise (a Python bool). Other objects in the
        image do not make a prompt fail, except where the prompt is about how many there are.
    """
    raise NotImplementedError("Exercise 3: match the detections against the prompt's thing, then count or locate")


if __name__ == "__main__":
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for a checkout without pip
    from minidiff.exercises.ch00 import run_checks

    sys.exit(run_checks(sys.modules[__name__]))
