"""The Shapes world: procedurally rendered scenes whose captions say exactly what is in them.

Text-to-image needs captioned images and a way to check that an image follows its prompt. Public benchmarks
(GenEval, T2I-CompBench) need large detectors and downloads; the Shapes world needs neither. A scene is 1 to 4
flat objects on a plain background; each object has a shape, a color, a size class and a position. The caption
is written from the scene (minidiff/data/captions.py), so the scene is its exact ground truth, and ShapesEval
(minidiff/eval/shapeseval.py) can check any image against any prompt.

Everything here is resolution-free: positions and sizes are fractions of the canvas, so one scene renders at
any size from 16 to 256 pixels. Rendering is analytic and anti-aliased: each shape is a signed distance
function d(p) (negative inside, in pixels), and a pixel's coverage is clip(0.5 - d, 0, 1), i.e. a one-pixel
linear ramp across the edge. No fonts, no files, no network; the same seed gives the same pixels.

    name            meaning
    r               half the side of the object's bounding box, as a fraction of the canvas side
    x, y            the bounding box's center, fractions of the canvas (y grows downwards, as in images)
    alpha           a pixel's coverage by an object, in [0, 1]; pixel = (1 - alpha) * below + alpha * color
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Six hues 55-75 degrees apart on the color wheel: blur and a neutral background change a pixel's brightness
# and saturation, not its hue, so these stay apart when a generator smears them.
COLORS = {
    "red": (220, 38, 38),
    "yellow": (235, 200, 30),
    "green": (40, 175, 60),
    "cyan": (30, 190, 200),
    "blue": (40, 80, 225),
    "purple": (150, 55, 200),
}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255), "gray": (128, 128, 128)}
SIZES = {"small": 0.12, "medium": 0.16, "large": 0.21}     # r for each size class
CROWDED = 3          # scenes of this many objects or more use no large ones (four large ones do not fit)
CROSS_ARM = 0.4                                            # a cross's arm width, as a fraction of its side
MIN_RESOLUTION, MAX_RESOLUTION = 16, 256
MAX_OBJECTS = 4

# Color-shape pairs that never appear in the train, validation or test splits: the held-out split is made of
# scenes that use them, to measure compositional generalization (a red diamond, having seen red things and
# diamonds of other colors). One pair per shape, each color at most once.
HELDOUT_PAIRS = frozenset({("circle", "cyan"), ("square", "yellow"), ("triangle", "purple"),
                           ("diamond", "red"), ("cross", "green")})


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: its attributes, and where it is (fractions of the canvas)."""
    shape: str
    color: str
    size: str
    x: float
    y: float

    @property
    def r(self) -> float:
        return SIZES[self.size]


@dataclass
class Scene:
    objects: list[ShapeObject]
    background: str = "black"

    def to_dict(self) -> dict:
        return {"objects": [asdict(o) for o in self.objects], "background": self.background}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        return cls([ShapeObject(**o) for o in d["objects"]], d.get("background", "black"))


def check_resolution(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or not MIN_RESOLUTION <= size <= MAX_RESOLUTION:
        raise ValueError(f"Shapes images can be rendered at {MIN_RESOLUTION} to {MAX_RESOLUTION} pixels, got {size!r}; "
                         f"pick a size in that range (32 is the course's default)")


def check_attribute(kind: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; the Shapes world has {', '.join(allowed)}")


# ---------------------------------------------------------------------------- signed distance functions


def _box(dx: np.ndarray, dy: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    """Exact signed distance to an axis-aligned box centered at the origin."""
    qx, qy = np.abs(dx) - half_w, np.abs(dy) - half_h
    outside = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0))
    return outside + np.minimum(np.maximum(qx, qy), 0)


def signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, R: float) -> np.ndarray:
    """Signed distance (pixels) from points (dx, dy), relative to the object's center, to a shape of half-side R.

    Every shape fills the box [-R, R]^2 so that a size class means the same extent for all of them.
    The triangle points up: apex (0, -R), base from (-R, R) to (R, R); its distance is the largest of the
    three edge distances (exact along the edges, which is all that anti-aliasing needs).
    """
    if shape == "circle":
        return np.hypot(dx, dy) - R
    if shape == "square":
        return _box(dx, dy, R, R)
    if shape == "diamond":
        return (np.abs(dx) + np.abs(dy) - R) / math.sqrt(2)
    if shape == "cross":
        arm = CROSS_ARM * R
        return np.minimum(_box(dx, dy, R, arm), _box(dx, dy, arm, R))
    if shape == "triangle":
        base = dy - R
        sides = (2 * np.abs(dx) - dy - R) / math.sqrt(5)
        return np.maximum(base, sides)
    raise ValueError(f"unknown shape {shape!r}; the Shapes world has {', '.join(SHAPES)}")


def coverage(shape: str, x: float, y: float, r: float, size: int) -> np.ndarray:
    """(size, size) anti-aliased coverage alpha in [0, 1] of one object, sampled at pixel centers."""
    centers = (np.arange(size, dtype=np.float64) + 0.5)
    dx = centers[None, :] - x * size              # (1, size): columns
    dy = centers[:, None] - y * size              # (size, 1): rows
    return np.clip(0.5 - signed_distance(shape, dx, dy, r * size), 0.0, 1.0)


def render(scene: Scene, size: int = 32) -> np.ndarray:
    """A scene as a (size, size, 3) uint8 RGB image. Objects are painted in order, later ones on top.

    Any size renders; datasets and ShapesEval check that it lies in MIN_RESOLUTION..MAX_RESOLUTION.
    """
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        alpha = coverage(obj.shape, obj.x, obj.y, obj.r, size)[..., None]     # (size, size, 1)
        image = (1 - alpha) * image + alpha * np.asarray(COLORS[obj.color], dtype=np.float64)
    return np.round(image).astype(np.uint8)


# ---------------------------------------------------------------------------- placing objects

POSITIONS = {  # the 3x3 grid of thirds: name -> (column, row), 0..2
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
RELATIONS = ("above", "below", "left of", "right of")
RELATION_MARGIN = 0.1   # A is above B when B's center is at least this much lower AND the vertical gap dominates
RELATION_SLACK = 0.05  # extra margin of drawn scenes (relation_holds)
GAP = 0.05              # minimum empty space between two objects' boxes (fraction of the canvas)


def position_of(x: float, y: float) -> str:
    """Name of the third-grid cell that holds the point (x, y)."""
    col, row = min(int(x * 3), 2), min(int(y * 3), 2)
    return next(name for name, cell in POSITIONS.items() if cell == (col, row))


def relation_holds(relation: str, a: tuple[float, float], b: tuple[float, float], slack: float = 0.0) -> bool:
    """Does 'A <relation> B' hold for centers a and b? The offset along the named axis must exceed
    RELATION_MARGIN and be larger than the offset along the other axis (no diagonal ambiguity).
    Scenes are drawn with slack > 0, so that a judge's small error in locating centers cannot flip them."""
    dx, dy = b[0] - a[0], b[1] - a[1]         # from A to B
    along, across = {"above": (dy, dx), "below": (-dy, dx), "left of": (dx, dy), "right of": (-dx, dy)}.get(
        relation, (None, None))
    if along is None:
        raise ValueError(f"unknown relation {relation!r}; the Shapes world has {', '.join(RELATIONS)}")
    return along > RELATION_MARGIN + slack and along > abs(across) + slack


def _separated(a: ShapeObject, b: ShapeObject) -> bool:
    """Boxes at least GAP apart along x or along y."""
    return (abs(a.x - b.x) >= a.r + b.r + GAP) or (abs(a.y - b.y) >= a.r + b.r + GAP)


def _center_range(r: float, cell: int | None, margin: float) -> tuple[float, float]:
    """Where a center may lie: inside the canvas (with margin), and inside a third if cell is given.
    Inside a third the center keeps 0.04 away from the cell's border, so its position word is unambiguous."""
    low, high = r + margin, 1 - r - margin
    if cell is not None:
        low, high = max(low, cell / 3 + 0.04), min(high, (cell + 1) / 3 - 0.04)
    return low, high


def place(attributes: list[tuple[str, str, str]], rng: np.random.Generator, relation: str | None = None,
          position: str | None = None, tries: int = 200) -> list[ShapeObject] | None:
    """Random non-overlapping centers for objects given as (shape, color, size); None if none found.

    relation: objects[0] <relation> objects[1] must hold. position: every object's center in that third.
    """
    margin = 0.01
    for _ in range(tries):
        objects: list[ShapeObject] = []
        for shape, color, size in attributes:
            r = SIZES[size]
            col, row = POSITIONS[position] if position else (None, None)
            (x_lo, x_hi), (y_lo, y_hi) = _center_range(r, col, margin), _center_range(r, row, margin)
            if x_lo > x_hi or y_lo > y_hi:
                return None
            obj = ShapeObject(shape, color, size, float(rng.uniform(x_lo, x_hi)), float(rng.uniform(y_lo, y_hi)))
            if not all(_separated(obj, other) for other in objects):
                break
            objects.append(obj)
        else:
            if relation is None or relation_holds(relation, (objects[0].x, objects[0].y), (objects[1].x, objects[1].y),
                                                  slack=RELATION_SLACK):
                return objects
    return None


def allowed_colors(shape: str, heldout: bool) -> list[str]:
    """Colors a shape may take outside the held-out split (never its held-out pair), or inside it (only that)."""
    return [c for c in COLORS if ((shape, c) in HELDOUT_PAIRS) == heldout]

