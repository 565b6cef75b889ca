"""What every chapter's exercise checker shares: calling the learner's code, comparing, reporting, the command line.

A chapter's checker (`minidiff/exercises/chNN.py`) defines one `check_<name>(fn)` per exercise and a dict
`CHECKS = {name: check}`. A check calls the learner's function through `call`, compares the result with
`expect_close` / `expect_float` / `expect_pair` (each raises AssertionError saying what was expected, what came
back, which known mistake gives that answer, and a hint), and returns quietly when everything agrees.
`report` runs a chapter's checks on a loaded file and prints one line per exercise; `command_line` is
`python -m minidiff.exercises.chNN path/to/exercises.py`.

A failure message reads, for example (Chapter 1's q_sample, written with alpha_bar[t] for its square root):

    x_t for x0 of shape (4, 1, 16, 16), t = [0, 10, 500, 999], eps = 0 (the signal part): values differ (largest
    difference 0.609, at index (2, 0, 5, 7): expected 0.845169, got 0.235735).
      expected: [-1.52552, -0.750194, -0.653948, -1.6094, ...] (shape (4, 1, 16, 16))
      got:      [-1.52544, -0.750157, -0.653916, -1.60932, ...] (shape (4, 1, 16, 16))
      This is what you get if you scale x0 by alpha_bar[t] instead of its square root.
      Hint: with eps = 0, x_t is x0 scaled by sqrt(alpha_bar[t]): the square root of alpha-bar, gathered per
      sample and reshaped to (B, 1, ...) so it broadcasts over x0.

A report prints the first line of each failure next to the exercise's name, then the whole message.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import sys
import weakref
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Callable

import torch
from torch import nn

Check = Callable[[Callable], None]   # check(fn) returns quietly or raises AssertionError

CALL_HINT = ("Common causes: a per-sample (B,) tensor multiplied into a (B, ...) one without reshaping it to "
             "(B, 1, ..., 1) first; using an optional argument (noise) when it is None.")


class NotImplementedYet(AssertionError):
    """The learner's function still raises NotImplementedError."""


# ---------------------------------------------------------------------------------------------------------
# Loading a learner's file.
# ---------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------
# Calling the learner's function.
# ---------------------------------------------------------------------------------------------------------

def describe(value) -> str:
    """A short description of an argument: the shape of a tensor, the value of a 0-d one, else repr."""
    if torch.is_tensor(value):
        return f"tensor{tuple(value.shape)}" if value.ndim else f"tensor({value.item():.6g})"
    return repr(value)


def call(fn: Callable, *args, hint: str = CALL_HINT, **kwargs):
    """fn(*args, **kwargs), turning whatever the learner's code raises into an AssertionError.

    NotImplementedError becomes NotImplementedYet; any other exception an AssertionError that shows the call
    (argument shapes) and the exception, and ends with `hint` (what usually causes an error in this exercise)."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        raise NotImplementedYet(f"not implemented yet ({e})" if str(e) else "not implemented yet") from None
    except Exception as e:
        shown = ", ".join([describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()])
        raise AssertionError(f"{getattr(fn, '__name__', 'the function')}({shown}) raised "
                             f"{type(e).__name__}: {e}\n"
                             f"  Hint: call it yourself on inputs of these shapes and read the traceback. "
                             f"{hint}") from e


# ---------------------------------------------------------------------------------------------------------
# Comparing what came back with what was expected.
# ---------------------------------------------------------------------------------------------------------

def preview(x: torch.Tensor) -> str:
    """The first four values of a tensor and its shape, for a failure message."""
    flat = x.detach().double().reshape(-1)
    shown = ", ".join(f"{v:.6g}" for v in flat[:4].tolist())
    return f"[{shown}{', ...' if flat.numel() > 4 else ''}] (shape {tuple(x.shape)})"


def close(got: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> bool:
    """True when the shapes agree and |got - expected| <= atol + rtol |expected| everywhere (in float64)."""
    if got.shape != expected.shape:
        return False
    got, expected = got.detach().double(), expected.detach().double()
    return bool(((got - expected).abs() <= atol + rtol * expected.abs()).all())


def expect_close(got, expected: torch.Tensor, what: str, hint: str, rtol: float = 1e-4, atol: float = 1e-5,
                 mistakes: dict[str, torch.Tensor] | None = None) -> None:
    """Assert that `got` is a tensor matching `expected` elementwise; name a known mistake if `got` matches one.

    what: what was computed, for the message's first line; hint: how to get it right;
    mistakes: {"<what the learner did>": the tensor that mistake gives}, read as "This is what you get if you ..."."""
    if not torch.is_tensor(got):
        raise AssertionError(f"{what}: expected a torch.Tensor, got {type(got).__name__}.\n  Hint: {hint}")
    if got.shape != expected.shape:
        raise AssertionError(f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}.\n"
                             f"  Hint: {hint}")
    if not torch.isfinite(got).all():
        raise AssertionError(f"{what}: the result holds NaN or inf: {preview(got)}.\n  Hint: {hint}")
    if close(got, expected, rtol, atol):
        return
    difference = (got.detach().double() - expected.detach().double()).abs()
    flat_index = int(difference.reshape(-1).argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat_index), expected.shape))
    at_expected, at_got = expected.reshape(-1)[flat_index].item(), got.reshape(-1)[flat_index].item()
    message = (f"{what}: values differ (largest difference {difference.max().item():.3g}, at index {index}: "
               f"expected {at_expected:.6g}, got {at_got:.6g}).\n"
               f"  expected: {preview(expected)}\n"
               f"  got:      {preview(got)}\n")
    for description, wrong in (mistakes or {}).items():
        if close(got, wrong, rtol, atol):
            message += f"  This is what you get if you {description}.\n"
            break
    raise AssertionError(message + f"  Hint: {hint}")


def expect_float(got, expected: float, what: str, hint: str, rtol: float = 1e-5, atol: float = 1e-7,
                 mistakes: dict[str, float] | None = None) -> None:
    """Assert that `got` is a Python number close to `expected`; name a known mistake if `got` matches one."""
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        raise AssertionError(f"{what}: expected a Python float, got {type(got).__name__}.\n"
                             f"  Hint: turn a 0-d tensor into a float with .item(); a config stores floats.")
    if math.isclose(got, expected, rel_tol=rtol, abs_tol=atol):
        return
    message = f"{what}: expected {expected:.7g}, got {got:.7g}.\n"
    for description, wrong in (mistakes or {}).items():
        if math.isclose(got, wrong, rel_tol=rtol, abs_tol=atol):
            message += f"  This is what you get if you {description}.\n"
            break
    raise AssertionError(message + f"  Hint: {hint}")


def expect_pair(result, what: str, expected: str = "a pair (two tensors)",
                hint: str = "end with `return first, second`.") -> tuple:
    """`result` as a tuple if it is a pair (a tuple or list of two); else an AssertionError naming `expected`."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise AssertionError(f"{what}: expected {expected}, got {type(result).__name__}.\n  Hint: {hint}")
    return tuple(result)


# ---------------------------------------------------------------------------------------------------------
# Build-along exercises: the learner's block, step or sampler inside minidiff's real model, training or sampler.
# ---------------------------------------------------------------------------------------------------------

def _file_key(fn: Callable) -> tuple[str, str, str] | None:
    """(path, hash of the file's text, name) for a function or class defined at the top level of a file, else None.
    The same text gives the same seeded training, whichever load of the file the object comes from."""
    name = getattr(fn, "__qualname__", None)
    if isinstance(fn, type):        # a class: its module's file (every load of one file has the same path)
        path = getattr(sys.modules.get(fn.__module__), "__file__", None)
    else:                           # a function: the file whose globals it reads
        path = getattr(fn, "__globals__", {}).get("__file__")
    if name is None or "<" in name or "." in name or path is None or not Path(path).is_file():
        return None
    return str(Path(path).resolve()), hashlib.sha256(Path(path).read_bytes()).hexdigest(), name


@contextmanager
def one_thread():
    """Run tiny models on one CPU thread, and restore the thread count after: their tensors are so small that one
    thread is about as fast as several on a laptop and several times faster on a busy machine, and the numbers do not
    depend on the machine's thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def build_along(check: Check) -> Check:
    """Mark `check` as a build-along check: one that plugs the learner's code into a real model, training run or
    sampler and holds it to a floor, so that passing means the learner's code trains or samples.

    Such a check trains tiny models on one CPU thread (faster for them, and steady on a busy machine). It costs
    seconds, so a pass is remembered for the life of the process: for the object that passed, and for the same
    exercise of an identical file loaded again (the command line loads a file afresh). A failure is never
    remembered."""
    passed_objects: weakref.WeakSet = weakref.WeakSet()
    passed_files: set[tuple[str, str, str]] = set()

    def remembered(fn: Callable) -> bool:
        try:
            if fn in passed_objects:
                return True
        except TypeError:          # an object that cannot be weakly referenced
            pass
        key = _file_key(fn)
        return key is not None and key in passed_files

    @functools.wraps(check)
    def checked(fn: Callable) -> None:
        if remembered(fn):
            return
        with one_thread():
            check(fn)
        try:
            passed_objects.add(fn)
        except TypeError:
            pass
        key = _file_key(fn)
        if key is not None:
            passed_files.add(key)

    checked.build_along = True
    return checked


def is_build_along(check: Check) -> bool:
    return getattr(check, "build_along", False)


def replace_modules(model: nn.Module, kind: type, make: Callable[[nn.Module], nn.Module]) -> int:
    """Replace every submodule of `model` that is an instance of `kind` with `make(old)`, in place; return how many
    were replaced. How a build-along check puts the learner's block where minidiff's was: `make` reads the old
    block's sizes (and may copy its weights) and builds the learner's."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                setattr(parent, name, make(child))
                replaced += 1
    return replaced


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of every parameter of `model`, by name, to compare with after training (`unmoved_weights`)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def unmoved_weights(model: nn.Module, kind: type, before: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """{name of each `kind` module in `model`: its parameters that training left exactly where they started}, for
    the modules that have any. An optimizer skips a parameter that no gradient reaches (a .detach(), .data or
    torch.no_grad() in forward), so it never moves; every parameter of a working block does. `before` is
    `snapshot(model)` taken before training."""
    unmoved: dict[str, list[str]] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, kind):
            names = [name for name, p in module.named_parameters()
                     if torch.equal(p.detach(), before[f"{module_name}.{name}" if module_name else name])]
            if names:
                unmoved[module_name] = names
    return unmoved


def expect_floor(value: float, floor: float, what: str, hint: str, higher_is_better: bool = True) -> None:
    """Assert that a measured quality (a recognizability, a PSNR, a prompt-following score) clears its floor."""
    ok = value >= floor if higher_is_better else value <= floor
    if not ok:
        side = "at least" if higher_is_better else "at most"
        raise AssertionError(f"{what}: {value:.4g}, but a working implementation reaches {side} {floor:.4g}.\n"
                             f"  Hint: {hint}")


# ---------------------------------------------------------------------------------------------------------
# Running a chapter's checks: the report and the command line.
# ---------------------------------------------------------------------------------------------------------

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
