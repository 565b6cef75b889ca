"""The Shapes world as a dataset: captioned scenes in fixed splits, served as Hugging Face `datasets`.

Every example is a function of (split, index, seed): its own random generator is seeded with those three
numbers, so example 1234 of the train split is the same on every machine, whatever else was generated
before it, and the splits can never share an example.

    split         what it holds
    train         scenes of every caption category, no held-out color-shape pair
    validation    the same distribution, other seeds
    test          the same distribution, other seeds
    heldout       scenes that use a held-out color-shape pair (shapes.HELDOUT_PAIRS), never seen in the others

Each example stores its image, its caption, the caption's structured claim (`spec`, JSON of a
captions.PromptSpec), the whole scene (every object's shape, color, size class and position), and the crop
and size metadata of Chapter 5 (SDXL micro-conditioning): `original_size` (the side it was rendered at) and
`crop_top_left` (where the size x size window was cut from it).
"""
from __future__ import annotations

import json
import os
import shutil
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from minidiff.data.captions import PromptSpec, Thing, describe
from minidiff.data.shapes import (CROWDED, MAX_OBJECTS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene, allowed_colors,
                                  check_resolution, place, render)
from minidiff.io import FileError, atomic_write_json, read_json

SPLITS = {"train": 0, "validation": 1, "test": 2, "heldout": 3}
TRAIN_CATEGORIES = ("single_object", "two_objects", "spatial_relation", "counting", "position")
DATASET_VERSION = "shapes-v1"     # bump when rendering, sampling or captions change: old caches are rebuilt


@dataclass
class ShapesOptions:
    """How examples are drawn. The defaults are the course's; Chapter 5 turns on `original_scale`."""
    categories: dict = field(default_factory=lambda: {
        "single_object": 0.25, "two_objects": 0.25, "spatial_relation": 0.2, "counting": 0.15, "position": 0.15})
    backgrounds: tuple[str, ...] = ("black",)    # drawn uniformly; captions name any background but the first
    name_size: float = 0.5                       # chance a caption names an object's size class
    original_scale: tuple[float, float] = (1.0, 1.0)   # render at size * U(lo, hi), then crop (>1) or upscale (<1)


def category_options(weights=None) -> ShapesOptions | None:
    """ShapesOptions drawing the TRAIN_CATEGORIES with these weights (in that order), or None (the defaults)."""
    return None if weights is None else ShapesOptions(categories=dict(zip(TRAIN_CATEGORIES, weights)))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown Shapes split {split!r}; choose one of {', '.join(SPLITS)}")


def check_count(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a whole number of at least 1, got {n!r}; ask for one example or more")


def check_index_and_seed(index: int, seed: int) -> None:
    """Both seed an example's generator, which takes whole numbers of 0 or more."""
    for name, value in (("example index", index), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a whole number of 0 or more, got {value!r}; seeds start at 0")


def _random_size(rng: np.random.Generator, count: int = 1) -> str:
    sizes = tuple(SIZES)[:-1] if count >= CROWDED else tuple(SIZES)
    return sizes[rng.integers(len(sizes))]


def _random_thing(rng: np.random.Generator, heldout: bool, count: int = 1) -> Thing:
    """A fully specified thing; `heldout` draws a held-out color-shape pair, else any other pair."""
    shape = SHAPES[rng.integers(len(SHAPES))]
    colors = allowed_colors(shape, heldout)
    return Thing(shape, colors[rng.integers(len(colors))], _random_size(rng, count), count)


def random_spec(category: str, rng: np.random.Generator, heldout: bool = False) -> PromptSpec:
    """A random, fully specified claim of a category. In the held-out split the first thing uses a held-out
    color-shape pair; elsewhere no thing does. The two things of a pair are different kinds of object."""
    if category == "counting":
        return PromptSpec(category, (_random_thing(rng, heldout, count=int(rng.integers(2, MAX_OBJECTS + 1))),))
    first = _random_thing(rng, heldout)
    if category in ("single_object", "position"):
        position = tuple(POSITIONS)[rng.integers(len(POSITIONS))] if category == "position" else None
        return PromptSpec(category, (first,), position=position)
    second = _random_thing(rng, False)
    while (second.shape, second.color) == (first.shape, first.color):
        second = _random_thing(rng, False)
    relation = RELATIONS[rng.integers(len(RELATIONS))] if category == "spatial_relation" else None
    return PromptSpec(category, (first, second), relation=relation)


def scene_for_spec(spec: PromptSpec, rng: np.random.Generator, background: str = "black") -> Scene:
    """A random scene that makes the spec true: exactly the things it names, attributes it leaves open drawn
    at random (never a held-out pair), placed to satisfy its relation or position. Raises if impossible."""
    total = sum(thing.count for thing in spec.things)
    for _ in range(100):
        attributes = []
        for thing in spec.things:
            for _ in range(thing.count):
                colors = allowed_colors(thing.shape, heldout=False)
                color = thing.color or colors[rng.integers(len(colors))]
                size = thing.size or _random_size(rng, total)
                attributes.append((thing.shape, color, size))
        objects = place(attributes, rng, relation=spec.relation, position=spec.position)
        if objects is not None:
            return Scene(objects, spec.background or background)
    raise ValueError(f"no scene of the Shapes world fits {spec}: too many or too large objects for the space")


def sample_example(rng: np.random.Generator, category: str, heldout: bool = False,
                   options: ShapesOptions | None = None) -> tuple[Scene, PromptSpec]:
    """A random scene of a category and the claim its caption states: the full spec, less the size classes
    (each named with chance options.name_size; a count names a size only when all its objects share it)."""
    options = options or ShapesOptions()
    full = random_spec(category, rng, heldout)
    if category == "counting" and rng.random() < 0.5:                  # objects of mixed sizes
        full = replace(full, things=(replace(full.things[0], size=None),))
    background = options.backgrounds[rng.integers(len(options.backgrounds))]
    scene = scene_for_spec(full, rng, background)
    name_size = rng.random() < options.name_size
    claimed = tuple(thing if name_size else replace(thing, size=None) for thing in full.things)
    spec = replace(full, things=claimed, background=background if background != options.backgrounds[0] else None)
    return scene, spec


def make_example(split: str, index: int, size: int = 32, seed: int = 0,
                 options: ShapesOptions | None = None) -> dict:
    """Example `index` of a split: a dict with the image (uint8 HxWx3), caption, spec and scene metadata."""
    check_split(split)
    check_resolution(size)
    check_index_and_seed(index, seed)
    options = options or ShapesOptions()
    rng = np.random.default_rng([SPLITS[split], index, seed])
    names, weights = zip(*options.categories.items())
    category = names[rng.choice(len(names), p=np.asarray(weights) / sum(weights))]
    scene, spec = sample_example(rng, category, heldout=split == "heldout", options=options)
    caption = describe(spec, rng)
    image, original, crop = _render_with_metadata(scene, size, rng, options.original_scale)
    return {"image": image, "caption": caption, "category": category, "spec": spec.to_json(),
            "objects": [asdict(o) for o in scene.objects], "background": scene.background,
            "original_size": [original, original], "crop_top_left": list(crop), "split": split, "index": index}


def _render_with_metadata(scene: Scene, size: int, rng: np.random.Generator,
                          scale: tuple[float, float]) -> tuple[np.ndarray, int, tuple[int, int]]:
    """Render at an original side `size * U(scale)`: larger is randomly cropped to size, smaller is upscaled."""
    lo, hi = scale
    if lo == hi == 1.0:
        return render(scene, size), size, (0, 0)
    original = int(np.clip(round(size * rng.uniform(lo, hi)), 16, 384))
    image = render(scene, original)
    if original > size:
        top, left = (int(v) for v in rng.integers(0, original - size + 1, size=2))
        return image[top:top + size, left:left + size], original, (top, left)
    if original < size:
        from PIL import Image
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    return image, original, (0, 0)



# ---------------------------------------------------------------------------- Hugging Face datasets


def _features():
    from datasets import Features, Image, List, Value

    obj = {"shape": Value("string"), "color": Value("string"), "size": Value("string"),
           "x": Value("float32"), "y": Value("float32")}
    return Features({"image": Image(), "caption": Value("string"), "category": Value("string"),
                     "spec": Value("string"), "objects": List(obj), "background": Value("string"),
                     "original_size": List(Value("int32")), "crop_top_left": List(Value("int32")),
                     "split": Value("string"), "index": Value("int64")})


def shapes_split(split: str = "train", n: int = 1000, size: int = 32, seed: int = 0,
                 options: ShapesOptions | None = None):
    """Examples 0..n-1 of a split as a `datasets.Dataset` (images as PIL, decoded on access)."""
    from datasets import Dataset

    check_count(n)
    rows = [make_example(split, i, size, seed, options) for i in range(n)]
    columns = {key: [row[key] for row in rows] for key in rows[0]}
    return Dataset.from_dict(columns, features=_features())


def split_sizes(n: int) -> dict[str, int]:
    """n training examples; validation, test and held-out get a tenth each (at least 100)."""
    return {"train": n, "validation": max(n // 10, 100), "test": max(n // 10, 100), "heldout": max(n // 10, 100)}


MANIFEST = "minidiff_shapes.json"     # what a build wrote it with; written last, so a folder that has it is whole
SPLIT_FILES = ("dataset_info.json", "state.json")     # beside data-*.arrow shards (and cache-*.arrow of a .map)


def _not_from_a_build(out: Path) -> list[str]:
    """What `out` holds that no build writes (a build writes its manifest, dataset_dict.json and one folder per
    split of Arrow shards), as paths relative to `out`."""
    others = []
    for entry in sorted(out.iterdir()):
        if entry.name in (MANIFEST, "dataset_dict.json") and entry.is_file():
            continue
        if entry.name not in SPLITS or not entry.is_dir():
            others.append(entry.name)
            continue
        others += [f"{entry.name}/{f.name}" for f in sorted(entry.iterdir())
                   if not (f.is_file() and (f.name in SPLIT_FILES or (f.suffix == ".arrow"
                                                                     and f.name.startswith(("data-", "cache-")))))]
    return others


def build_shapes(out: str | Path, size: int = 32, n: int = 20000, seed: int = 0,
                 options: ShapesOptions | None = None, rebuild: bool = False):
    """Build (or reuse) the Shapes dataset in `out`, as a `datasets.DatasetDict` saved with save_to_disk.

    A folder that already holds a build with the same version, size, n, seed and options is reused as it is;
    `datasets.load_from_disk(out)` opens it. A build with other parameters (or `rebuild`) replaces an earlier
    one, but never a file the build did not write: a folder holding anything else is refused, naming it, and
    left as it was. The new build is written beside `out` and swapped in, so an error leaves the old one.
    """
    from datasets import DatasetDict, load_from_disk

    check_resolution(size)
    check_count(n)
    options = options or ShapesOptions()
    out = Path(out)
    meta = {"version": DATASET_VERSION, "size": size, "n": n, "seed": seed, "options": asdict(options)}
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder; choose a new or empty folder as --out")
    manifest = out / MANIFEST
    if not rebuild and manifest.is_file():
        try:
            previous = read_json(manifest)
        except FileError:                    # an unreadable manifest: build again, as for other parameters
            previous = None
        if previous == json.loads(json.dumps(meta)):
            return load_from_disk(str(out))
    if out.exists() and any(out.iterdir()):
        if not manifest.is_file():
            raise ValueError(f"{out} exists and is not a Shapes dataset folder; choose an empty or new --out")
        others = _not_from_a_build(out)
        if others:
            listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise ValueError(f"{out} holds {listed} beside an earlier Shapes build, and a new build replaces the "
                             f"folder: move {'it' if len(others) == 1 else 'them'} elsewhere, or choose another --out")
    folder = out.resolve()
    if folder == Path.cwd() or folder in Path.cwd().parents:
        raise ValueError(f"{out} is the folder you are working in (or holds it), which a build replaces; choose a "
                         f"folder inside it, e.g. --out shapes")
    data = DatasetDict({split: shapes_split(split, count, size, seed, options)
                        for split, count in split_sizes(n).items()})
    staging = folder.with_name(f".{folder.name}.{os.getpid()}.building")    # hidden, beside out; ours by its name
    replaced = staging.with_suffix(".replaced")
    for leftover in (staging, replaced):                 # from a killed run of a process with the same id
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        data.save_to_disk(str(staging))
        atomic_write_json(staging / MANIFEST, meta)       # last: a folder with a manifest holds a whole build
        if folder.exists():
            folder.rename(replaced)
        staging.rename(folder)
    except BaseException:
        if replaced.exists() and not folder.exists():
            replaced.rename(folder)                       # put the earlier build back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(replaced, ignore_errors=True)           # the earlier build: only files a build wrote (checked)
    return load_from_disk(str(out))


# ---------------------------------------------------------------------------- tensors, rendered once per process


RENDERED_CACHE_BYTES = 256 * 2**20      # the pixels of 20000 32x32 scenes take 59 MiB; a few such runs fit
# (split, size, seed, options) -> (uint8 pixels (n, S, S, 3), captions, each scene's objects); least recently used
# first. The pixels are what the budget counts: a scene's caption and objects take a few hundred bytes beside them.
_rendered: OrderedDict[tuple, tuple[np.ndarray, list[str], list[list[dict]]]] = OrderedDict()


def _rendered_examples(split: str, n: int, size: int, seed: int,
                       options: ShapesOptions) -> tuple[np.ndarray, list[str], list[list[dict]]]:
    """uint8 pixels (n, size, size, 3), captions and objects of examples 0..n-1, each rendered once per process.

    An example is a function of (split, index, size, seed, options) alone, so the first n of a longer run are the
    same examples: a run of the same scenes serves any shorter request, and a longer one renders only what it
    lacks. What this returns is the cache's own: the public functions below hand out new tensors and copies."""
    key = (split, size, seed, repr(asdict(options)))     # repr keeps the categories' order, which draws matter
    pixels, captions, objects = _rendered.pop(key, (np.zeros((0, size, size, 3), np.uint8), [], []))
    if len(captions) < n:
        rows = [make_example(split, i, size, seed, options) for i in range(len(captions), n)]
        pixels = np.concatenate([pixels, np.stack([row["image"] for row in rows])])      # (n, S, S, 3)
        captions = captions + [row["caption"] for row in rows]
        objects = objects + [row["objects"] for row in rows]
    if pixels.nbytes <= RENDERED_CACHE_BYTES:
        _rendered[key] = pixels, captions, objects
        while sum(entry[0].nbytes for entry in _rendered.values()) > RENDERED_CACHE_BYTES:
            _rendered.popitem(last=False)
    return pixels[:n], captions[:n], objects[:n]


def _model_ready(pixels: np.ndarray):
    """uint8 (n, S, S, 3) -> a new float tensor (n, 3, S, S) in [-1, 1]: the visible data step.

    Contiguous in (n, 3, S, S) order, not the channels-last strides the permute leaves: on torch 2.13's CPU, GroupNorm's
    backward crashes the process (a segmentation fault) on a channels-last input that needs no gradient."""
    import torch

    from minidiff.data.images import to_model_range

    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()                 # (n, 3, S, S)
    return to_model_range(images.float() / 255)


def shapes_tensors(split: str = "train", n: int = 1000, size: int = 32, seed: int = 0,
                   options: ShapesOptions | None = None):
    """(images (n, 3, size, size) in [-1, 1], captions) for training, drawn through the same examples.

    The visible data step: uint8 pixels -> [0, 1] -> [-1, 1] (minidiff.data.images.to_model_range). The scenes
    are rendered once per process (a few runs of them are kept, see _rendered_examples); every call returns new
    tensors and a new list, so a caller may change them freely.
    """
    check_split(split)
    check_resolution(size)
    check_count(n)
    pixels, captions, _ = _rendered_examples(split, n, size, seed, options or ShapesOptions())
    return _model_ready(pixels), captions


def shapes_scenes(split: str = "train", n: int = 1000, size: int = 32, seed: int = 0,
                  options: ShapesOptions | None = None):
    """(images (n, 3, size, size) in [-1, 1], captions, objects): shapes_tensors with each scene's objects, the
    ground truth that judges and probes score against (a list per scene of dicts: shape, color, size, x, y).

    From the same once-per-process renders as shapes_tensors; the objects are copies a caller may change."""
    check_split(split)
    check_resolution(size)
    check_count(n)
    pixels, captions, objects = _rendered_examples(split, n, size, seed, options or ShapesOptions())
    return _model_ready(pixels), captions, [[dict(thing) for thing in scene] for scene in objects]
