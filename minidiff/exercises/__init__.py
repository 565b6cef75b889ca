"""Automatic checks for the exercises at the end of each chapter.

`minidiff.exercises.ch01` checks `chapters/01-ddpm/exercises.py`, and so on, one module per chapter. A check
calls the learner's function, compares the result with minidiff's own implementation and with closed-form
properties of the maths, and raises AssertionError (with what was expected, what came back and a hint) when
they disagree.

Grade any copy of an exercise file, wherever it lives:

    python -m minidiff.exercises.ch01 path/to/exercises.py      # exit status = number of failed exercises
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_exercise_file(path: str | Path) -> ModuleType:
    """Import a Python file by its path (chapter folders such as `chapters/01-ddpm` are not packages)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise ValueError(f"{path} is not a file; pass the path of an exercises.py or solutions.py")
    name = f"exercise_file_{path.stem}_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as a normal import would; dataclasses and pickling look the module up here
    spec.loader.exec_module(module)
    return module
