"""Writes notebooks/00_shapes_world.ipynb from the cells below (then execute it to store outputs)."""
import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md("""
# Lab 0: the Shapes world and ShapesEval

Chapters 3 to 8 teach a model to draw what a prompt says. To know whether it does, we need captioned images whose
captions are *exactly* true, and a judge that checks an image against a prompt. Public benchmarks (GenEval,
T2I-CompBench) need large detectors and downloads; the Shapes world needs neither. It is drawn by
`minidiff/data/shapes.py`, captioned by `minidiff/data/captions.py`, served as a Hugging Face dataset by
`minidiff/data/shapes_dataset.py`, and judged by `minidiff/eval/shapeseval.py`. The dataset card is
[data/README.md](../data/README.md).

This lab takes about a minute on a laptop CPU and trains nothing.
""")
code("""
# NBVAL_IGNORE_OUTPUT
import json, tempfile, time
import matplotlib.pyplot as plt
import numpy as np

from minidiff.data.captions import PromptSpec, Thing, describe, parse, plain_caption
from minidiff.data.shapes import COLORS, HELDOUT_PAIRS, SHAPES, SIZES, Scene, ShapeObject, render
from minidiff.data.shapes_dataset import ShapesOptions, build_shapes, make_example, scene_for_spec
from minidiff.eval.shapeseval import (degrade, detect, load_suite, render_prompts, score,
                                      shuffled_within_category)

start = time.perf_counter()

def show(images, titles=None, ncols=8, scale=1.6):
    nrows = (len(images) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * (1.25 if titles else 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, image in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(image, interpolation="nearest")
        if titles:
            ax.set_title(titles[i], fontsize=7, wrap=True)
    plt.tight_layout()
    plt.show()
""")
md("""
## 1. The world

Five shapes, six colors spread around the color wheel (blur changes a pixel's brightness, not its hue), three size
classes, and a position anywhere on the canvas. Positions and sizes are fractions of the canvas, so one scene
renders at any resolution from 16 to 256 pixels; every shape is a signed distance function, and a pixel's coverage
is `clip(0.5 - distance, 0, 1)`: anti-aliasing without supersampling.
""")
code("""
print("shapes:", SHAPES)
print("colors:", list(COLORS))
print("sizes (half-side, fraction of the canvas):", SIZES)
scene = Scene([ShapeObject("triangle", "yellow", "large", 0.3, 0.3), ShapeObject("cross", "blue", "medium", 0.72, 0.65),
               ShapeObject("circle", "red", "small", 0.25, 0.78)])
sizes = [16, 32, 64, 128]
show([render(scene, s) for s in sizes], [f"{s}x{s}" for s in sizes], ncols=4, scale=2.5)
""")
md("""
## 2. Captions that say exactly what is there

A scene is drawn from a *spec*, the structured claim of its caption; the caption is one of several paraphrases of
that spec. Five kinds of caption: a single object, two objects, a spatial relation, a count, a position.
`parse` reads any caption of the grammar back to its spec (the grammar is in the card and in `captions.py`).
""")
code("""
examples = [make_example("train", i, 32) for i in range(24)]
show([e["image"] for e in examples], [e["caption"] for e in examples], ncols=6, scale=2.2)
""")
code("""
spec = PromptSpec("spatial_relation", (Thing("triangle", "yellow"), Thing("circle", "green")), relation="above")
rng = np.random.default_rng(3)
paraphrases = sorted({describe(spec, rng) for _ in range(40)})
for text in paraphrases[:8]:
    print(f"{text:55s} -> same claim: {parse(text).canonical() == spec.canonical()}")
""")
code("""
example = make_example("train", 7, 32)
print(example["caption"])
print(json.dumps(json.loads(example["spec"]), indent=1))
print(json.dumps(example["objects"], indent=1))
""")
md("""
## 3. Splits, and combinations no model is trained on

`train`, `validation` and `test` come from one distribution, with different seeds per example. The `heldout` split
uses five color-shape pairs that never occur in the other three: a model that learned "cyan" and "circle"
separately should still draw a cyan circle. ShapesEval has a matching held-out suite.
""")
code("""
print("held-out pairs:", sorted(HELDOUT_PAIRS))
heldout = [make_example("heldout", i, 32) for i in range(12)]
show([e["image"] for e in heldout], [e["caption"] for e in heldout], ncols=6, scale=2.2)
""")
md("""
## 4. As a Hugging Face dataset

`minidiff data shapes --size 32 --n 20000 --out DIR` builds the four splits and saves them;
`datasets.load_from_disk(DIR)` opens them. Here a small one in a temporary folder.
""")
code("""
# NBVAL_IGNORE_OUTPUT
folder = tempfile.mkdtemp()
data = build_shapes(f"{folder}/shapes", size=32, n=500)
print(data)
row = data["train"][0]
print(row["caption"], row["original_size"], row["crop_top_left"])
""")
md("""
Chapter 5 (SDXL) conditions on the size an image had before it was rescaled and on where it was cropped. With
`original_scale`, scenes are rendered larger and randomly cropped (objects may be cut, as in real photos), or
rendered smaller and upscaled (blurry); each example records both.
""")
code("""
options = ShapesOptions(original_scale=(0.5, 1.5))
crops = [make_example("train", i, 32, options=options) for i in range(8)]
show([e["image"] for e in crops], [f"orig {e['original_size'][0]}, crop {tuple(e['crop_top_left'])}" for e in crops],
     ncols=8, scale=1.8)
""")
md("""
## 5. ShapesEval: a judge with no training

For each image: estimate the background from the border, explain every pixel as a mix of the background and one
palette color, group pixels of one color into objects, and name each object's shape by drawing every shape with
the object's area at its centroid and keeping the one that matches best. Then check the prompt's spec as GenEval
does: are the named objects there, with the right colors, relation, count or position?
""")
code("""
suite = load_suite("v1")
print(len(suite), "prompts;", {c: sum(e["category"] == c for e in suite) for c in dict.fromkeys(e["category"] for e in suite)})
picked = [suite[i] for i in (0, 150, 250, 330, 420, 560)]
images = render_prompts(picked, 64, seed=0)
result = score(images, picked)
show(images, [e["prompt"] for e in picked], ncols=6, scale=2.2)
for r in result["per_prompt"]:
    print(f"{r['prompt']:42s} {'PASS' if r['passed'] else 'FAIL'}  detected: {'; '.join(r['detected'])}")
""")
md("""
A judge must be trusted before it judges models. Three checks: images that are true for their prompts (drawn by a
perfect generator, then blurred and noised as a small diffusion model leaves them) must score near 1; blank and
noise images must score 0; and true scenes *for another prompt of the same category* give the chance level, what a
model that ignores its prompt but draws valid scenes would get.
""")
code("""
true = render_prompts(suite, 32, seed=1)
degraded = degrade(true, blur=0.02, noise=0.1, seed=0)
show(true[:6] + degraded[:6], ["true"] * 6 + ["blurred + noisy"] * 6, ncols=6, scale=1.8)
""")
code("""
rng = np.random.default_rng(0)
judged = {
    "true renders": score(true, suite),
    "blurred + noisy": score(degraded, suite),
    "blank": score([np.zeros((32, 32, 3), np.uint8)] * len(suite), suite),
    "uniform noise": score([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in suite], suite),
    "another prompt's scene": score(render_prompts(shuffled_within_category(suite), 32, seed=2), suite),
}
categories = list(judged["true renders"]["categories"])
print(f"{'':24s}" + "".join(f"{c[:12]:>13s}" for c in categories) + f"{'overall':>10s}")
for name, r in judged.items():
    print(f"{name:24s}" + "".join(f"{r['categories'][c]:13.2f}" for c in categories) + f"{r['overall']:10.2f}")
""")
md("""
A failure report says why each prompt failed, which is how later chapters find their models' failure modes:
""")
code("""
wrong = judged["another prompt's scene"]["per_prompt"]
for r in [r for r in wrong if not r["passed"]][:6]:
    print(f"{r['category']:17s} {r['prompt']:40s} -> {r['reason']}")
""")
md("""
## What this lab promised
""")
code("""
for name in ("true renders", "blurred + noisy"):
    assert min(judged[name]["categories"].values()) >= 0.99, (name, judged[name]["categories"])
assert judged["blank"]["overall"] == 0.0
assert max(judged["uniform noise"]["categories"].values()) <= 0.05
assert judged["another prompt's scene"]["overall"] <= 0.15
print("ShapesEval: >= 0.99 in every category on true images, blurred or not; 0 on blank and noise; near chance on wrong scenes")
""")
code("""
# NBVAL_IGNORE_OUTPUT
print(f"lab time: {time.perf_counter() - start:.0f} s")
""")
md("""
## Where next

Chapter 3 trains a text-conditioned latent diffusion model on this world and reports ShapesEval; every later chapter
adds one idea and reports the same number in `benchmarks/RESULTS.md`.
""")

nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
nbf.write(nb, "notebooks/00_shapes_world.ipynb")
