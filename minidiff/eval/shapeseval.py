"""ShapesEval: does an image show what its prompt says? minidiff's prompt-following benchmark.

GenEval (Ghosh et al. 2023, arXiv:2310.11513) runs an object detector on generated images and checks each
prompt's structured spec: are the named objects there, with the named colors, in the named relation, in the
named number? ShapesEval does the same for the Shapes world with a detector that needs no training, so it
cannot overfit to anything a generator saw:

1. Background: the median color of the image's one-pixel border.
2. Color unmixing: every pixel p is explained as a mix of the background b and one palette color c,
   p = b + alpha (c - b). For each c, alpha_c is the least-squares mix (clipped to [0, 1]) and the residual
   |p - b - alpha_c (c - b)| says how well c explains p. A pixel belongs to the color with the smallest
   residual if its alpha is at least 0.5; otherwise to the background. Blur and anti-aliasing mix an object
   with the background, which changes alpha, not which color explains the pixel best.
3. Objects: connected pixels of one color (8-neighbourhood). Specks smaller than a third of the smallest
   object the world draws are dropped.
4. Shape by template matching (analysis by synthesis): the object's soft mask (its alpha) has an area A and a
   centroid. For each shape, the renderer draws that shape with area A at that centroid; the shape whose
   drawing differs least from the mask (L1, divided by A) wins. A blob no template explains (difference
   above MAX_MISFIT) is no object: noise and mangled shapes are not counted.
5. Size class from the winning shape's extent; position from its box center.

Checks per category (a prompt passes or fails; accuracy is the share that pass):

    single_object      an object with the named shape and color
    two_objects        two different objects with the two named shapes (colors not checked)
    attribute_binding  two different objects with the two named shape-color pairs
    spatial_relation   two such objects, and the relation holds between them (shapes.relation_holds)
    counting           exactly N objects with the named shape and color
    position           an object with the named shape and color whose center is in the named third

A size class is checked only where the prompt names one. Other objects in the image are allowed, except that
counting is exact. `overall` is the mean over the categories scored.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minidiff.data.captions import CATEGORIES, PromptSpec, Thing, parse, plain_caption
from minidiff.data.shapes import (COLORS, CROSS_ARM, MAX_RESOLUTION, SHAPES, SIZES, position_of,
                                  relation_holds, signed_distance)

# Area of each shape whose box is [-R, R]^2, in units of R^2 (what coverage() draws).
UNIT_AREA = {"circle": math.pi, "square": 4.0, "diamond": 2.0, "triangle": 2.0,
             "cross": 2 * 2 * (2 * CROSS_ARM) - (2 * CROSS_ARM) ** 2}
CENTROID_OFFSET = {"circle": 0.0, "square": 0.0, "diamond": 0.0, "cross": 0.0,
                   "triangle": 1 / 3}          # the triangle's centroid lies R/3 below its box center
MIN_EVAL_RESOLUTION = 24   # at 16 px a small object is 4 pixels wide: blurred, its shape is a guess (counting 0.93)
MIN_ALPHA = 0.5        # a pixel belongs to a color when at least half of it is explained by that color
MIN_AREA_FRACTION = 1 / 3
MAX_MISFIT = 0.6       # largest template difference (L1 / area) of anything counted as an object
SUITES_DIR = Path(__file__).parent / "suites"


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    size: str
    x: float              # box center, fractions of the canvas
    y: float
    r: float              # half-side of the box, fraction of the canvas
    misfit: float         # template difference: 0 is a perfect render

    @property
    def position(self) -> str:
        return position_of(self.x, self.y)


# ---------------------------------------------------------------------------- images in


def as_uint8_images(images) -> list[np.ndarray]:
    """Accept uint8 HxWx3 arrays (one, a list, or an N x H x W x 3 array) or a float tensor (N, 3, H, W) in [-1, 1]."""
    if hasattr(images, "detach"):                                      # a torch tensor
        x = images.detach().float().cpu()
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a float tensor (N, 3, H, W) in [-1, 1], got shape {tuple(x.shape)}")
        x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(dtype=__import__("torch").uint8)
        images = list(x.permute(0, 2, 3, 1).numpy())
    elif isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    images = [np.asarray(im) for im in images]
    for im in images:
        if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3 or im.shape[0] != im.shape[1]:
            raise ValueError(f"expected square uint8 H x W x 3 images, got {im.dtype} {im.shape}; convert float "
                             f"images in [-1, 1] as a torch tensor (N, 3, H, W) instead")
        if not MIN_EVAL_RESOLUTION <= im.shape[0] <= MAX_RESOLUTION:
            raise ValueError(f"ShapesEval reads images of {MIN_EVAL_RESOLUTION} to {MAX_RESOLUTION} pixels, "
                             f"got {im.shape[0]}; generate at 24 or more (below that a small object is too few "
                             f"pixels to tell its shape)")
    return images


# ---------------------------------------------------------------------------- detection


_PALETTE = np.asarray(list(COLORS.values()), dtype=np.float64)        # (K, 3)
_COLOR_NAMES = list(COLORS)


BLURS = (0.0, 0.35, 0.7, 1.4, 2.8, 5.6)    # template blurs tried, in pixels: generators leave soft edges


def _template(shape: str, cx: float, cy: float, area: float, rows: np.ndarray,
              cols: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Coverage of `shape` with the given pixel area and centroid, sampled at pixel centers (rows, cols).
    Returns (template, R, box center y), R and y in pixels."""
    R = math.sqrt(area / UNIT_AREA[shape])
    box_y = cy - CENTROID_OFFSET[shape] * R
    template = np.clip(0.5 - signed_distance(shape, cols[None, :] - cx, rows[:, None] - box_y, R), 0, 1)
    return template, R, box_y


def _size_class(r: float) -> str:
    names, values = list(SIZES), np.log(list(SIZES.values()))
    return names[int(np.argmin(np.abs(values - math.log(max(r, 1e-6)))))]


def detect(image: np.ndarray) -> list[Detection]:
    """Objects in one uint8 H x W x 3 image of the Shapes world."""
    from scipy import ndimage

    size = image.shape[0]
    p = image.astype(np.float64)
    border = np.concatenate([p[0], p[-1], p[1:-1, 0], p[1:-1, -1]])   # (4S-4, 3)
    background = np.median(border, axis=0)
    d = p - background                                                  # (H, W, 3)
    direction = _PALETTE - background                                   # (K, 3)
    alpha = np.clip(np.einsum("hwc,kc->hwk", d, direction) / (direction ** 2).sum(-1), 0, 1)   # (H, W, K)
    # |d - alpha_k direction_k|, summed channel by channel: the same numbers, in the same order, as
    # np.linalg.norm over a trailing axis of 3, in half the time (no (H, W, K, 3) temporaries)
    squared = sum((d[:, :, None, c] - alpha * direction[:, c]) ** 2 for c in range(3))          # (H, W, K)
    residual = np.where(alpha >= MIN_ALPHA, np.sqrt(squared), np.inf)
    label = np.where(np.isfinite(residual.min(-1)), residual.argmin(-1), -1)                  # (H, W)

    min_area = MIN_AREA_FRACTION * min(UNIT_AREA.values()) * (min(SIZES.values()) * size) ** 2
    ring = max(1, round(size / 32))            # how far a blurred edge reaches beyond the pixels of alpha >= 0.5
    # objects: connected pixels of one color, specks dropped; `owner` marks which color owns each object pixel
    objects, owner = [], np.full(label.shape, -1)
    for k in range(len(_COLOR_NAMES)):
        components, _ = ndimage.label(label == k, structure=np.ones((3, 3)))
        for index, box in enumerate(ndimage.find_objects(components), start=1):
            if (components[box] == index).sum() >= min_area:
                objects.append((k, box, components == index))
                owner[components == index] = k
    detections = []
    for k, box, pixels in objects:
        color = _COLOR_NAMES[k]
        # work on a crop around the object: its pixels, the ring, and room for a blurred template
        pad = ring + 6
        top, left = max(box[0].start - pad, 0), max(box[1].start - pad, 0)
        crop = (slice(top, box[0].stop + pad), slice(left, box[1].stop + pad))
        grown = ndimage.binary_dilation(pixels[crop], structure=np.ones((3, 3)), iterations=ring)
        # the soft mask: this color's alpha on the object and its ring, where no other object is. Faint edge
        # pixels that a neighbouring hue explained slightly better still count: they are this object's blur.
        mask = np.where(grown & ((owner[crop] == k) | (owner[crop] == -1)), alpha[crop][..., k], 0.0)
        area = mask.sum()
        rows = np.arange(mask.shape[0]) + top + 0.5          # pixel centers, in image coordinates
        cols = np.arange(mask.shape[1]) + left + 0.5
        cy, cx = (mask.sum(1) * rows).sum() / area, (mask.sum(0) * cols).sum() / area
        drawn = [_template(shape, cx, cy, area, rows, cols) for shape in SHAPES]    # (template, R, box_y) each
        sharp = np.stack([template for template, _, _ in drawn])                     # (5, h, w)
        blurs = [b for b in BLURS if b <= 0.04 * size]        # blurs beyond 4% of the side erase shapes
        misfits = np.empty((len(SHAPES), len(blurs)))
        for j, blur in enumerate(blurs):   # all five shapes in one filter call (sigma 0 along the shape axis)
            templates = ndimage.gaussian_filter(sharp, (0, blur, blur), mode="constant") if blur else sharp
            misfits[:, j] = [np.abs(template - mask).sum() / area for template in templates]
        best = int(misfits.argmin()) // len(blurs)            # the first smallest, shape by shape
        misfit, (_, R, box_y), shape = misfits[best].min(), drawn[best], SHAPES[best]
        if misfit <= MAX_MISFIT:
            detections.append(Detection(shape, color, _size_class(R / size), float(cx / size),
                                        float(box_y / size), float(R / size), float(misfit)))
    return detections


# ---------------------------------------------------------------------------- checks


def _matches(det: Detection, thing: Thing, check_color: bool = True) -> bool:
    return (det.shape == thing.shape and (not check_color or thing.color is None or det.color == thing.color)
            and (thing.size is None or det.size == thing.size))


def check(spec: PromptSpec, detections: list[Detection]) -> tuple[bool, str]:
    """(passed, reason) for one prompt's spec against one image's detections."""
    category, things = spec.category, spec.things
    name = lambda t: " ".join(w for w in (t.size, t.color, t.shape) if w)                  # noqa: E731
    if category == "counting":
        (t,) = things
        found = sum(_matches(d, t) for d in detections)
        return found == t.count, f"counted {found} {name(t)}, expected {t.count}"
    if category in ("single_object", "position"):
        (t,) = things
        candidates = [d for d in detections if _matches(d, t)]
        if not candidates:
            return False, f"no {name(t)} found"
        if category == "position":
            if not any(d.position == spec.position for d in candidates):
                return False, f"{name(t)} is at the {candidates[0].position}, not the {spec.position}"
        return True, "ok"
    check_color = category != "two_objects"
    a_list = [d for d in detections if _matches(d, things[0], check_color)]
    b_list = [d for d in detections if _matches(d, things[1], check_color)]
    pairs = [(a, b) for a in a_list for b in b_list if a is not b]
    if not pairs:
        missing = [name(t) for t, found in ((things[0], a_list), (things[1], b_list)) if not found]
        return False, f"no {' and no '.join(missing)} found" if missing else "only one object for two prompts"
    if category == "spatial_relation":
        if not any(relation_holds(spec.relation, (a.x, a.y), (b.x, b.y)) for a, b in pairs):
            return False, f"{name(things[0])} is not {spec.relation} {name(things[1])}"
    return True, "ok"


def object_recall(images, objects: list[list[dict]], max_offset: float = 0.5) -> dict:
    """The share of known objects found in images that should show them: the judge of reconstructions.

    images: what `score` accepts, one per scene; objects: each scene's true objects (dicts with shape, color,
    size, x, y as in minidiff.data.shapes_dataset examples). An object counts as found if a detection has its
    shape, color and size class and a center within max_offset of its half-side. Returns {'recall', 'found',
    'objects', 'scene_recall'} (scene_recall: scenes whose every object was found, and nothing else).
    """
    images = as_uint8_images(images)
    if len(images) != len(objects):
        raise ValueError(f"{len(images)} images but {len(objects)} object lists: pass one list per image")
    found = total = whole = 0
    for image, truth in zip(images, objects):
        detections = detect(image)
        hits = sum(any(d.shape == o["shape"] and d.color == o["color"] and d.size == o["size"]
                       and math.hypot(d.x - o["x"], d.y - o["y"]) <= max_offset * SIZES[o["size"]]
                       for d in detections) for o in truth)
        found, total = found + hits, total + len(truth)
        whole += hits == len(truth) and len(detections) == len(truth)
    return {"recall": found / max(total, 1), "found": found, "objects": total, "scene_recall": whole / len(images)}


# ---------------------------------------------------------------------------- prompts and suites


def as_spec(prompt) -> PromptSpec:
    """A PromptSpec from a spec, a suite entry ({'prompt', 'category', 'spec'}) or a caption string.

    A caption naming two objects reads as category 'two_objects' (shapes checked, colors not); to check that each
    color is bound to its shape, pass a suite entry or a PromptSpec with category 'attribute_binding'."""
    if isinstance(prompt, PromptSpec):
        return prompt
    if isinstance(prompt, dict):
        spec = PromptSpec.from_json(prompt["spec"]) if "spec" in prompt else parse(prompt["prompt"])
        return replace(spec, category=prompt.get("category", spec.category))
    if isinstance(prompt, str):
        return parse(prompt)
    raise ValueError(f"a prompt is a caption string, a suite entry or a PromptSpec, not {type(prompt).__name__}")


def score(images, prompts, report: bool = True) -> dict:
    """Score images against their prompts (one prompt per image). Returns accuracy per category, `overall`
    (the mean over categories present), and with report=True a per-prompt list saying what failed and why."""
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to score: pass one prompt per image (see load_suite() for the fixed suites)")
    images = as_uint8_images(images)
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts: ShapesEval needs one prompt per image")
    specs = [as_spec(p) for p in prompts]
    results = []
    for image, spec, prompt in zip(images, specs, prompts):
        detections = detect(image)
        passed, reason = check(spec, detections)
        text = (prompt if isinstance(prompt, str) else prompt["prompt"] if isinstance(prompt, dict)
                else plain_caption(spec))
        results.append({"prompt": text, "category": spec.category, "passed": passed, "reason": reason,
                        "detected": [f"{d.size} {d.color} {d.shape} at the {d.position}" for d in detections]})
    categories = {}
    for category in CATEGORIES:
        passed = [r["passed"] for r in results if r["category"] == category]
        if passed:
            categories[category] = float(np.mean(passed))
    out = {"overall": float(np.mean(list(categories.values()))), "categories": categories,
           "counts": {c: sum(r["category"] == c for r in results) for c in categories}}
    if report:
        out["per_prompt"] = results
    return out


SUITE_SIZE = 100     # prompts per category
SUITE_SEED = {"v1": 20261122}


def build_suite(version: str = "v1") -> dict[str, list[dict]]:
    """Generate the suites of a version from its seed: {'v1': [...], 'v1-heldout': [...]}. The committed files
    in minidiff/eval/suites/ are this function's output (a test checks it); a new version gets a new seed."""
    from minidiff.data.shapes_dataset import random_spec

    rng = np.random.default_rng(SUITE_SEED[version])
    suites = {}
    for suite, heldout, categories, per_category in [
            (version, False, CATEGORIES, SUITE_SIZE),
            (f"{version}-heldout", True, ("single_object", "attribute_binding", "spatial_relation", "position"), 25)]:
        entries = []
        for category in categories:
            # distinct prompts while they last: single objects have only 25 shape-color pairs (30 less the
            # held-out 5), counting 75, so those suites name each one several times, each drawn anew
            seen: set[str] = set()
            misses = 0
            while len(seen) < per_category and misses < 500:
                drawn = "two_objects" if category == "attribute_binding" else category
                spec = random_spec(drawn, rng, heldout=heldout)
                if category == "two_objects" and spec.things[0].shape == spec.things[1].shape:
                    continue                                  # two objects means two different shapes
                spec = replace(spec, category=category, things=tuple(replace(t, size=None) for t in spec.things))
                text = plain_caption(spec)
                if text in seen:
                    misses += 1
                    continue
                seen.add(text)
                entries.append({"category": category, "prompt": text, "spec": json.loads(spec.to_json())})
            unique = [e for e in entries if e["category"] == category]
            entries += [dict(e) for e in (unique * per_category)[len(unique):per_category]]
        entries.sort(key=lambda e: CATEGORIES.index(e["category"]))
        for category in categories:
            for i, e in enumerate(e for e in entries if e["category"] == category):
                e["id"] = f"{suite}/{category}/{i:03d}"
        suites[suite] = entries
    return suites


def write_suites(version: str = "v1") -> None:
    SUITES_DIR.mkdir(exist_ok=True)
    for name, entries in build_suite(version).items():
        (SUITES_DIR / f"{name}.json").write_text(json.dumps({"suite": name, "prompts": entries}, indent=1) + "\n")


def load_suite(name: str = "v1") -> list[dict]:
    """A fixed prompt suite: entries {'id', 'category', 'prompt', 'spec'}. 'v1' holds about 100 prompts per
    category; 'v1-heldout' uses the held-out color-shape pairs that training never shows."""
    path = SUITES_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in SUITES_DIR.glob("*.json"))
        raise ValueError(f"unknown ShapesEval suite {name!r}; suites: {', '.join(known)}")
    return json.loads(path.read_text())["prompts"]


def evaluate_generator(generate, suite: str = "v1", images_per_prompt: int = 1, batch_size: int = 100,
                       seed: int = 0) -> dict:
    """Run a text-to-image generator on a fixed suite and score it: the ShapesEval number of a model.

    generate(prompts: list[str], seed: int) -> images (anything `score` accepts), called on batches of prompt
    texts; each prompt is drawn `images_per_prompt` times with different seeds. Chapter 3's `minidiff eval`
    calls this with a trained pipeline.
    """
    entries = load_suite(suite) * images_per_prompt
    images = []
    for start in range(0, len(entries), batch_size):
        batch = entries[start:start + batch_size]
        images += as_uint8_images(generate([e["prompt"] for e in batch], seed + start))
    result = score(images, entries)
    result["suite"], result["images_per_prompt"] = suite, images_per_prompt
    return result


# ---------------------------------------------------------------------------- references to judge the judge


def render_prompts(prompts, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    """A perfect generator: for each prompt, a random scene of the Shapes world that makes it true."""
    from minidiff.data.shapes import render
    from minidiff.data.shapes_dataset import scene_for_spec

    return [render(scene_for_spec(as_spec(p), np.random.default_rng([seed, i])), size) for i, p in enumerate(prompts)]


def degrade(images: list[np.ndarray], blur: float = 0.02, noise: float = 0.1, seed: int = 0) -> list[np.ndarray]:
    """What a small generator leaves on an image: a Gaussian blur of `blur` times the image side (0.64 px at 32),
    and Gaussian noise of standard deviation `noise` in the model's [-1, 1] range (13 of 255 levels at 0.1)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    out = []
    for image in images:
        x = ndimage.gaussian_filter(image.astype(np.float64), sigma=(blur * image.shape[0],) * 2 + (0,))
        x = x + rng.normal(0.0, noise * 127.5, x.shape)
        out.append(np.clip(np.round(x), 0, 255).astype(np.uint8))
    return out


def shuffled_within_category(prompts, seed: int = 0) -> list:
    """The same prompts, each moved to another prompt of its category: images drawn for the shuffled list are
    valid scenes that ignore their prompt, whose score is the chance level of each category."""
    rng = np.random.default_rng(seed)
    specs = [as_spec(p) for p in prompts]
    out = list(prompts)
    for category in dict.fromkeys(s.category for s in specs):     # in order of appearance: reproducible
        idx = [i for i, s in enumerate(specs) if s.category == category]
        for i, j in zip(idx, np.roll(rng.permutation(idx), 1)):
            out[i] = prompts[j]
    return out
