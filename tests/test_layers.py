"""The package's layer rule, read from its source: no import cycles, and every import points down the layers.

The layers, from the ground up (docs/architecture.md says what each holds):

    rank  layers
    0     minidiff.config, minidiff.io, minidiff.plotting
    1     minidiff.blocks, minidiff.process, minidiff.data
    2     minidiff.models
    3     minidiff.weights
    4     minidiff.pipelines, minidiff.training
    5     minidiff.eval                  (and never minidiff.models: a judge sees images, not a network's insides)
    6     minidiff.recipes
    7     minidiff.cli (minidiff.__main__, `python -m minidiff`, belongs to it), minidiff.exercises (they train
          with the shipped parts that recipes find)

A module may import its own layer and lower ranks, never a higher rank nor another layer of the same rank. The
root `minidiff/__init__.py` re-exports and sits above every layer: it is never checked, and importing it from inside
the package is refused (it would import every layer back).

The checker reads the source with `ast`; nothing is imported, so a cycle is found even where Python would not trip on
it today. Every import counts: at module level and inside functions, methods, classes and `if` blocks. An edge goes
to the module named: `from minidiff.x import y` goes to `minidiff.x.y` when y is a submodule, else to `minidiff.x`,
whose `__init__.py` is a module like any other (so a package's member importing its package's `__init__`, which
imports that member, is a cycle). Relative imports are resolved against the importing file's package.
"""
from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

RANKS = {
    "config": 0, "io": 0, "plotting": 0,
    "blocks": 1, "process": 1, "data": 1,
    "models": 2,
    "weights": 3,
    "pipelines": 4, "training": 4,
    "eval": 5,
    "recipes": 6,
    "cli": 7, "exercises": 7,
}
# Modules that belong to another name's layer: `python -m minidiff` is the command line's entry point.
ALIASES = {"__main__": "cli"}
# Pairs the ranks alone allow but the architecture forbids: (importing layer, imported layer) -> why.
FORBIDDEN = {("eval", "models"): "eval never imports models (a judge sees images, not a network's internals)"}


# ---------------------------------------------------------------------------- the checker


@dataclass(frozen=True)
class Edge:
    source: str       # importing module, e.g. "minidiff.eval.digits"
    target: str       # imported module, e.g. "minidiff.training.classifier"
    file: str         # importing file, relative to the package's parent folder: "minidiff/eval/digits.py"
    line: int


def package_modules(root: Path) -> dict[str, Path]:
    """Every module of the package at `root` (a folder holding __init__.py), by dotted name -> file.

    `pkg/a/b.py` is `pkg.a.b`; `pkg/a/__init__.py` is `pkg.a`. Folders without __init__.py (namespace packages)
    hold modules all the same."""
    root = Path(root)
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if "__pycache__" in parts:
            continue
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_module(name: str, modules: dict[str, Path], root: Path) -> bool:
    """A module file, a package, or a namespace folder of the package."""
    return name in modules or (root.parent / name.replace(".", "/")).is_dir()


def import_edges(root: Path) -> list[Edge]:
    """Every import of one of the package's own modules, anywhere in its files, in file and line order."""
    root = Path(root)
    modules = package_modules(root)
    package = root.name
    edges = []
    for source, path in modules.items():
        is_init = path.name == "__init__.py"
        file = path.relative_to(root.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:       # relative: from the file's own package, up level - 1 packages
                    base = source.split(".") if is_init else source.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module
                targets = [f"{stem}.{alias.name}" if _is_module(f"{stem}.{alias.name}", modules, root) else stem
                           for alias in node.names]
            for target in dict.fromkeys(targets):
                if (target == package or target.startswith(package + ".")) and target != source:
                    edges.append(Edge(source, target, file, node.lineno))
    return sorted(edges, key=lambda e: (e.file, e.line, e.target))


def layer_of(module: str) -> str | None:
    """The layer a module belongs to: `minidiff.recipes` and `minidiff.recipes.base` are both "recipes"; the
    root package is None. A module file at the root (`minidiff/recipes_text.py`) is its own name, unless ALIASES
    places it in another layer (`minidiff.__main__` is "cli")."""
    parts = module.split(".")
    return ALIASES.get(parts[1], parts[1]) if len(parts) > 1 else None


def rank_violations(root: Path, ranks: dict[str, int] = RANKS,
                    forbidden: dict[tuple[str, str], str] = FORBIDDEN) -> list[str]:
    """One line per import that breaks the layer rule: 'file:line: what is wrong; the rule'."""
    package = Path(root).name
    problems = [f"{path.relative_to(Path(root).parent).as_posix()}: {module} has no layer rank: move it into a "
                f"layer, or give it a rank in tests/test_layers.py RANKS and docs/architecture.md"
                for module, path in package_modules(root).items()
                if layer_of(module) is not None and layer_of(module) not in ranks]
    for edge in import_edges(root):
        source, target = layer_of(edge.source), layer_of(edge.target)
        where = f"{edge.file}:{edge.line}: {edge.source} imports {edge.target}"
        if source is None or source not in ranks or source == target:
            continue                    # the root re-exports, above every layer; an unranked module is named above
        if target is None:
            problems.append(f"{where}; the root package re-exports every layer and would import them all back: "
                            f"import from the module that defines the name")
        elif target not in ranks:
            continue
        elif (source, target) in forbidden:
            problems.append(f"{where}; {forbidden[source, target]}")
        elif ranks[target] > ranks[source]:
            problems.append(f"{where}; {source} (rank {ranks[source]}) may not import the higher layer {target} "
                            f"(rank {ranks[target]})")
        elif ranks[target] == ranks[source]:
            problems.append(f"{where}; {source} and {target} are both rank {ranks[source]}: layers of one rank "
                            f"do not import each other")
    return problems


def import_cycles(root: Path) -> list[list[Edge]]:
    """The package's import cycles, each as its edges in order: for every group of modules that reach each other
    (a strongly connected component of the import graph), shortest cycles until every module of it is named."""
    edges = import_edges(Path(root))
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)    # the first line that imports it

    # Tarjan's strongly connected components, iteratively (no recursion limit on a large package)
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

    cycles = []
    for component in sorted(components, key=min):
        covered = set()
        for first in sorted(component):          # until every module of the group is on a reported cycle
            if first not in covered:
                cycles.append(_shortest_cycle(graph, component, first))
                covered.update(edge.source for edge in cycles[-1])
    return cycles


def _shortest_cycle(graph: dict[str, dict[str, Edge]], component: set[str], first: str) -> list[Edge]:
    """The shortest cycle from `first` back to itself inside `component` (breadth first), as edges in order."""
    parents, frontier = {first: None}, [first]
    while not any(first in graph.get(node, {}) for node in frontier):
        nxt = []
        for node in frontier:
            for target in sorted(graph.get(node, {})):
                if target in component and target not in parents:
                    parents[target] = node
                    nxt.append(target)
        frontier = nxt
    path = [next(node for node in frontier if first in graph.get(node, {}))]
    while parents[path[-1]] is not None:
        path.append(parents[path[-1]])
    path.reverse()                                       # first -> ... -> the module that imports first
    return [graph[a][b] for a, b in zip(path, path[1:] + [first])]


def describe_cycle(cycle: list[Edge]) -> str:
    """'a -> b -> a (a.py:3, b.py:9)': the modules in order, then where each import is."""
    names = " -> ".join([edge.source for edge in cycle] + [cycle[0].source])
    return f"import cycle {names} ({', '.join(f'{e.file}:{e.line}' for e in cycle)}); break it by moving the " \
           f"shared code down a layer"


def layer_problems(root: Path) -> list[str]:
    """Everything wrong with the package's imports, one line each: cycles first, then rank violations."""
    return [describe_cycle(c) for c in import_cycles(root)] + rank_violations(root)


# ---------------------------------------------------------------------------- the checker on made-up packages


def write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A package `minidiff` under tmp_path from {relative path: source}; every folder gets an __init__.py."""
    root = tmp_path / "minidiff"
    for name, source in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == root.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
    return root


CLEAN = {
    "config.py": "import json\n",
    "io.py": "import os\n",
    "blocks/__init__.py": "from minidiff.blocks.attention import Attention\n",
    "blocks/attention.py": "import torch\nfrom .. import config\n",
    "process/__init__.py": "from .ddpm import q_sample\n",
    "process/ddpm.py": "from minidiff.io import atomic_write\n",
    "models/__init__.py": "from minidiff.models.unet import UNet\n",
    "models/unet.py": """
        from minidiff.blocks import Attention
        from minidiff.config import parse


        def build():
            from minidiff.models import mlp      # same layer: fine
            return mlp
        """,
    "models/mlp.py": "import minidiff.blocks.attention\n",
    "training/loop.py": "from minidiff.models.unet import UNet\nfrom minidiff.process import ddpm\n",
    "eval/digits.py": "from minidiff.data import digits\nfrom minidiff.training import loop\n",
    "data/digits.py": "import numpy\n",
    "weights.py": "from minidiff.models import mlp\n",
    "eval/toy2d.py": "from minidiff.data.digits import load\n",
    "recipes/__init__.py": "from minidiff.recipes.base import Recipe\n",
    "recipes/base.py": "from minidiff.eval.digits import score\nfrom minidiff.training.loop import train\n",
    "recipes/ch01.py": "from .base import Recipe\nfrom ..models import unet\n",
    "cli.py": "from minidiff.recipes import base\n\ndef main():\n    import minidiff.eval.digits\n",
    "__main__.py": "from minidiff.cli import main\n",
}


def test_a_clean_package_passes(tmp_path):
    root = write_package(tmp_path, CLEAN)
    assert layer_problems(root) == []
    edges = {(e.source, e.target) for e in import_edges(root)}
    # every form of import resolves to the module it names
    assert ("minidiff.blocks.attention", "minidiff.config") in edges                  # from .. import config
    assert ("minidiff.process", "minidiff.process.ddpm") in edges                     # from .ddpm import q_sample
    assert ("minidiff.models.unet", "minidiff.models.mlp") in edges                   # inside a function
    assert ("minidiff.models.mlp", "minidiff.blocks.attention") in edges              # import a.b.c
    assert ("minidiff.recipes.ch01", "minidiff.models.unet") in edges                 # from ..models import unet
    assert ("minidiff.training.loop", "minidiff.process.ddpm") in edges               # from pkg import submodule
    assert ("minidiff.eval.digits", "minidiff.training.loop") in edges                # namespace folder
    assert ("minidiff.models.unet", "minidiff.blocks") in edges                       # a package's __init__


def test_a_cycle_through_a_function_level_import_fails(tmp_path):
    root = write_package(tmp_path, {**CLEAN, "models/mlp.py": """
        import torch


        class MLP:
            def forward(self):
                from minidiff.models.unet import UNet    # unet imports mlp (in a function too)
                return UNet
        """})
    (cycle,) = import_cycles(root)
    assert describe_cycle(cycle).startswith(
        "import cycle minidiff.models.mlp -> minidiff.models.unet -> minidiff.models.mlp (minidiff/models/mlp.py:7, "
        "minidiff/models/unet.py:7)")
    assert layer_problems(root)[0] == describe_cycle(cycle)


def test_a_cycle_through_a_package_init_fails(tmp_path):
    # process/__init__.py imports process/ddpm.py, which imports the package back for a name it re-exports
    root = write_package(tmp_path, {**CLEAN, "process/ddpm.py": "from minidiff.process import q_sample\n"})
    assert [describe_cycle(c).split(" (")[0] for c in import_cycles(root)] == [
        "import cycle minidiff.process -> minidiff.process.ddpm -> minidiff.process"]


def test_a_longer_cycle_is_named_in_order(tmp_path):
    root = write_package(tmp_path, {**CLEAN, "data/a.py": "from . import b\n", "data/b.py": "from . import c\n",
                                    "data/c.py": "def f():\n    from minidiff.data import a\n"})
    (cycle,) = import_cycles(root)
    assert [e.source for e in cycle] == ["minidiff.data.a", "minidiff.data.b", "minidiff.data.c"]
    assert [e.line for e in cycle] == [1, 1, 2]


def test_every_module_of_a_tangle_is_named(tmp_path):
    """recipes <-> recipes_latent and recipes <-> recipes_text: two cycles through one module, both reported."""
    root = write_package(tmp_path, {**CLEAN, "data/a.py": "from . import b, c\n", "data/b.py": "from . import a\n",
                                    "data/c.py": "from . import a\n"})
    assert [[e.source for e in cycle] for cycle in import_cycles(root)] == [
        ["minidiff.data.a", "minidiff.data.b"], ["minidiff.data.c", "minidiff.data.a"]]


@pytest.mark.parametrize("file, source, message", [
    ("models/unet.py", "def f():\n    from minidiff.weights import load\n",
     "minidiff/models/unet.py:2: minidiff.models.unet imports minidiff.weights; models (rank 2) may not "
     "import the higher layer weights (rank 3)"),
    ("process/ddpm.py", "from minidiff.models import unet\n",
     "minidiff/process/ddpm.py:1: minidiff.process.ddpm imports minidiff.models.unet; process (rank 1) may not "
     "import the higher layer models (rank 2)"),
    ("training/loop.py", "import minidiff.eval.toy2d\n",
     "minidiff/training/loop.py:1: minidiff.training.loop imports minidiff.eval.toy2d; training (rank 4) may not "
     "import the higher layer eval (rank 5)"),
    ("eval/digits.py", "from minidiff.models.unet import UNet\n",
     "minidiff/eval/digits.py:1: minidiff.eval.digits imports minidiff.models.unet; eval never imports models"),
    ("data/digits.py", "from ..blocks import attention\n",
     "minidiff/data/digits.py:1: minidiff.data.digits imports minidiff.blocks.attention; data and blocks are both "
     "rank 1: layers of one rank do not import each other"),
    ("recipes/base.py", "from minidiff import load_pretrained\n",
     "minidiff/recipes/base.py:1: minidiff.recipes.base imports minidiff; the root package re-exports"),
    ("recipes_text.py", "from minidiff.models import unet\n",
     "minidiff/recipes_text.py: minidiff.recipes_text has no layer rank: move it into a layer"),
])
def test_an_import_against_the_ranks_fails(tmp_path, file, source, message):
    root = write_package(tmp_path, {**CLEAN, file: source})
    problems = layer_problems(root)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_recipes_rank_as_a_module_or_as_a_package(tmp_path):
    """`minidiff/recipes.py` today, `minidiff/recipes/` after the refactor: both are the recipes layer."""
    files = {k: v for k, v in CLEAN.items() if not k.startswith("recipes/")}
    root = write_package(tmp_path, {**files, "recipes.py": "from minidiff.eval import digits\n"})
    assert layer_problems(root) == []
    root = write_package(tmp_path / "again", {**files, "recipes.py": "def f():\n    from minidiff.cli import main\n"})
    assert rank_violations(root) == ["minidiff/recipes.py:2: minidiff.recipes imports minidiff.cli; recipes (rank 6) "
                                     "may not import the higher layer cli (rank 7)"]


# ---------------------------------------------------------------------------- the real package


def test_minidiff_keeps_its_layers():
    import minidiff

    problems = layer_problems(Path(minidiff.__file__).parent)
    assert not problems, f"{len(problems)} import(s) break the layer rule:\n" + "\n".join(problems)
