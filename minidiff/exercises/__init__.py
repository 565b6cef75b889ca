"""Automatic checks for the exercises at the end of each chapter.

`minidiff.exercises.ch01` checks `chapters/01-ddpm/exercises.py`, `minidiff.exercises.ch02` checks
`chapters/02-latent-diffusion/exercises.py`, and so on, one module per chapter. A check calls the learner's
function, compares the result with minidiff's own implementation and with closed-form properties of the maths,
and raises AssertionError (with what was expected, what came back and a hint) when they disagree. What every
chapter shares lives here: loading a file by its path, `NotImplementedYet`, the report and the command line.

Grade any copy of an exercise file, wherever it lives:

    python -m minidiff.exercises.ch01 path/to/exercises.py      # exit status = number of failed exercises
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

Check = Callable[[Callable], None]   # check(fn) returns quietly or raises AssertionError


class NotImplementedYet(AssertionError):
    """The learner's function still raises NotImplementedError."""


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


def report(module: ModuleType, checks: dict[str, Check], title: str) -> int:
    """Check every exercise function found in `module`; print one line per exercise, a summary, then the
    details of each failure. Returns the number of exercises that failed."""
    source = getattr(module, "__file__", None) or getattr(module, "__name__", "the module")
    print(f"{title}: checking {source}")
    failures: list[tuple[str, str]] = []
    for name, check in checks.items():
        fn = getattr(module, name, None)
        if not callable(fn):
            status = f"no function named {name!r}"
            failures.append((name, ""))
        else:
            try:
                check(fn)
                status = ""
            except NotImplementedYet:
                status = "not implemented yet"
                failures.append((name, ""))
            except AssertionError as e:
                message = str(e) or "failed"
                status = message.splitlines()[0]
                failures.append((name, message))
        print(f"  {'FAIL' if status else 'PASS'}  {name}{': ' + status if status else ''}")
    passed = len(checks) - len(failures)
    print(f"{passed} of {len(checks)} exercises pass" + ("." if not failures else f", {len(failures)} fail."))
    for name, message in failures:
        if "\n" in message:
            print(f"\n--- {name} ---\n{message}")
    return len(failures)


def command_line(chapter_module: str, checks: dict[str, Check], title: str) -> None:
    """`python -m <chapter_module> path/to/exercises.py`: grade that file and exit with the number of failures."""
    if len(sys.argv) != 2:
        sys.exit(f"usage: python -m {chapter_module} path/to/exercises.py")
    try:
        submission = load_exercise_file(sys.argv[1])
    except Exception as e:  # a missing file, or a submission that does not even import: every exercise fails
        print(f"minidiff: error: cannot import {sys.argv[1]}: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(len(checks))
    sys.exit(report(submission, checks, title))
