"""Every chapter's exercise checks: they pass the reference solutions, fail the files learners start from, catch
plausible bugs with a message that names them, and accept other correct implementations.

The chapters are found on disk: every `chapters/NN-slug/exercises.py` must have a checker `minidiff.exercises.chNN`,
reference solutions in the instructor kit (`instructors/solutions/NN-slug.py`), and at least one known mistake per
exercise in `tests/exercise_cases_chNN.py`.
"""
import importlib
import inspect
import subprocess
import sys
import types

import pytest
import torch

from exercise_paths import CHAPTERS, solutions_path
from minidiff.exercises.checking import (NotImplementedYet, build_along, command_line, is_build_along, snapshot,
                                         load_exercise_file, unmoved_weights)

CHECKERS = {chapter: importlib.import_module(f"minidiff.exercises.{chapter}") for chapter in CHAPTERS}
SOLUTIONS = {chapter: load_exercise_file(solutions_path(chapter)) for chapter in CHAPTERS}
STUBS = {chapter: load_exercise_file(folder / "exercises.py") for chapter, folder in CHAPTERS.items()}
CASES = {chapter: importlib.import_module(f"exercise_cases_{chapter}") for chapter in CHAPTERS}
EXERCISES = [(chapter, name) for chapter in CHAPTERS for name in CHECKERS[chapter].EXERCISES]
EXERCISE_IDS = [f"{chapter}-{name}" for chapter, name in EXERCISES]

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def test_the_chapters_are_found():
    assert {"ch00", "ch01", "ch02", "ch03"} <= set(CHAPTERS)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_learner_file_and_the_solutions_define_the_same_exercises(chapter):
    stubs, solutions = STUBS[chapter], SOLUTIONS[chapter]
    for name in CHECKERS[chapter].EXERCISES:
        assert inspect.signature(getattr(stubs, name)) == inspect.signature(getattr(solutions, name)), name
    constants = [name for name in vars(stubs) if name.isupper()]          # such as Chapter 2's LOGVAR_RANGE
    for name in constants:
        assert getattr(stubs, name) == getattr(solutions, name), name


def test_loading_a_missing_file_names_the_problem():
    with pytest.raises(ValueError, match="is not a file"):
        load_exercise_file(CHAPTERS["ch01"] / "no_such_file.py")


@pytest.mark.parametrize("chapter, name", EXERCISES, ids=EXERCISE_IDS)
def test_check_passes_the_solution(chapter, name):
    CHECKERS[chapter].CHECKS[name](getattr(SOLUTIONS[chapter], name))


@pytest.mark.parametrize("chapter, name", EXERCISES, ids=EXERCISE_IDS)
def test_check_fails_the_stub_as_not_implemented(chapter, name):
    with pytest.raises(NotImplementedYet, match="not implemented yet"):
        CHECKERS[chapter].CHECKS[name](getattr(STUBS[chapter], name))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_run_checks_reports_every_exercise(chapter, capsys):
    checker, solutions = CHECKERS[chapter], SOLUTIONS[chapter]
    exercises = checker.EXERCISES
    assert checker.run_checks(solutions) == 0
    out = capsys.readouterr().out
    assert out.count("PASS") == len(exercises) and "FAIL" not in out

    assert checker.run_checks(STUBS[chapter]) == len(exercises)
    out = capsys.readouterr().out
    assert out.count("not implemented yet") == len(exercises)

    # A file half done: the first exercise right, the last one wrong, the others missing.
    first, missing, last = exercises[0], exercises[1], exercises[-1]
    wrong = next(fn for name, fn, _ in KNOWN_MISTAKES[chapter] if name == last)
    partial = types.SimpleNamespace(__name__="partial", **{first: getattr(solutions, first), last: wrong})
    assert checker.run_checks(partial) == len(exercises) - 1
    out = capsys.readouterr().out
    assert f"PASS  {first}" in out and f"FAIL  {last}" in out and f"no function named {missing!r}" in out
    assert f"--- {last} ---" in out  # the details of a real failure follow the summary


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_exercise_file_runs_its_checks_and_fails_cleanly(chapter):
    """What a learner runs: `python chapters/NN-slug/exercises.py`, in a fresh interpreter."""
    result = subprocess.run([sys.executable, str(CHAPTERS[chapter] / "exercises.py")], capture_output=True, text=True,
                            timeout=120)
    exercises = CHECKERS[chapter].EXERCISES
    assert result.returncode == len(exercises), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout.count("not implemented yet") == len(exercises)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_the_command_line_grades_the_solutions(chapter, monkeypatch, capsys):
    """`python -m minidiff.exercises.chNN path/to/solutions.py`, run in this process (a fresh interpreter costs
    seconds; the learner's own entry point above keeps one)."""
    checker = CHECKERS[chapter]
    monkeypatch.setattr(sys, "argv", [checker.__file__, str(solutions_path(chapter))])
    with pytest.raises(SystemExit) as exit_status:
        command_line(checker.__name__, checker.CHECKS, checker.TITLE)
    out = capsys.readouterr().out
    assert exit_status.value.code == 0, out
    assert out.count("PASS") == len(checker.EXERCISES)


def test_the_command_line_refuses_a_file_that_does_not_import(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "exercises.py"
    broken.write_text("def q_sample(:\n")
    checker = CHECKERS["ch01"]
    monkeypatch.setattr(sys, "argv", [checker.__file__, str(broken)])
    with pytest.raises(SystemExit) as exit_status:
        command_line(checker.__name__, checker.CHECKS, checker.TITLE)
    assert exit_status.value.code == len(checker.EXERCISES)     # every exercise counts as failed
    assert capsys.readouterr().err.startswith(f"minidiff: error: cannot import {broken}: SyntaxError")


# ---------------------------------------------------------------------------------------------------------
# Plausible but wrong implementations, one per bug a learner is likely to write, each with a phrase its
# failure message must contain; and other correct implementations (a check must not demand one spelling).
# ---------------------------------------------------------------------------------------------------------

KNOWN_MISTAKES = {chapter: cases.WRONG for chapter, cases in CASES.items()}
MISTAKES = [(chapter, *mistake) for chapter, mistakes in KNOWN_MISTAKES.items() for mistake in mistakes]
OTHER_CORRECT = [(chapter, *right) for chapter, cases in CASES.items() for right in getattr(cases, "RIGHT", [])]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_exercise_has_a_known_mistake(chapter):
    assert set(CHECKERS[chapter].EXERCISES) == {name for name, _, _ in KNOWN_MISTAKES.get(chapter, [])}


@pytest.mark.parametrize("chapter, name, wrong, message", MISTAKES,
                         ids=[f"{chapter}-{wrong.__name__}" for chapter, _, wrong, _ in MISTAKES])
def test_check_catches_a_plausible_bug(chapter, name, wrong, message):
    expect_failure_with_hint(chapter, name, wrong, message)


def expect_failure_with_hint(chapter, name, fn, message):
    """The check of `name` fails `fn` (not as unimplemented) with `message` in its text and a hint."""
    with pytest.raises(AssertionError, match=message) as caught:
        CHECKERS[chapter].CHECKS[name](fn)
    assert not isinstance(caught.value, NotImplementedYet)
    assert "Hint:" in str(caught.value)


@pytest.mark.parametrize("chapter, name, right", OTHER_CORRECT,
                         ids=[f"{chapter}-{right.__name__}" for chapter, _, right in OTHER_CORRECT])
def test_check_accepts_another_correct_implementation(chapter, name, right):
    CHECKERS[chapter].CHECKS[name](right)


# ---------------------------------------------------------------------------------------------------------
# Build-along exercises: the learner's block, step or sampler inside the real model, training or sampler. Each
# chapter from 1 on has at least two; each has a deliberately broken version (for example a block that returns
# the right shapes but does not train) in the chapter's BROKEN list, which its check must fail with a message.
# ---------------------------------------------------------------------------------------------------------

BUILD_ALONG = [(chapter, name) for chapter, name in EXERCISES if is_build_along(CHECKERS[chapter].CHECKS[name])]
BROKEN = [(chapter, *broken) for chapter, cases in CASES.items() for broken in getattr(cases, "BROKEN", [])]


@pytest.mark.parametrize("chapter", [chapter for chapter in CHAPTERS if chapter != "ch00"])
def test_every_model_chapter_has_two_build_along_exercises(chapter):
    assert sum(1 for c, _ in BUILD_ALONG if c == chapter) >= 2


@pytest.mark.parametrize("chapter, name", BUILD_ALONG, ids=[f"{c}-{n}" for c, n in BUILD_ALONG])
def test_every_build_along_exercise_has_a_broken_version(chapter, name):
    assert any(c == chapter and n == name for c, n, _, _ in BROKEN)


@pytest.mark.parametrize("chapter, name, broken, message", BROKEN,
                         ids=[f"{chapter}-{broken.__name__}" for chapter, _, broken, _ in BROKEN])
def test_build_along_check_fails_a_broken_block(chapter, name, broken, message):
    expect_failure_with_hint(chapter, name, broken, message)


def test_a_build_along_check_remembers_passes_and_not_failures():
    calls = []

    def check(fn):
        calls.append(fn)
        if fn() != 1:
            raise AssertionError("wrong")

    checked = build_along(check)
    assert is_build_along(checked) and not is_build_along(check)

    def right():
        return 1

    def wrong():
        return 2

    checked(right), checked(right)
    for _ in range(2):
        with pytest.raises(AssertionError):
            checked(wrong)
    assert calls == [right, wrong, wrong]


def test_a_build_along_pass_holds_for_the_same_file_loaded_again_and_not_for_an_edited_one(tmp_path):
    calls = []
    checked = build_along(lambda fn: calls.append(fn()))
    path = tmp_path / "exercises.py"
    path.write_text("def answer():\n    return 1\n")
    checked(load_exercise_file(path).answer)
    checked(load_exercise_file(path).answer)          # the command line loads the file afresh: not checked again
    path.write_text("def answer():\n    return 2\n")
    checked(load_exercise_file(path).answer)          # an edited file is checked again
    assert calls == [1, 2]


def test_unmoved_weights_names_the_parameters_no_gradient_reached():
    class Block(torch.nn.Module):
        def __init__(self, cut: bool):
            super().__init__()
            self.cut, self.inner, self.outer = cut, torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)

        def forward(self, x):
            h = self.inner(x)
            return self.outer(h.detach() if self.cut else h)

    torch.manual_seed(0)
    model = torch.nn.ModuleList([Block(cut=False), Block(cut=True)])           # side by side, outputs summed
    before = snapshot(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    x = torch.randn(4, 3)
    (model[0](x) + model[1](x)).pow(2).mean().backward()
    optimizer.step()
    assert unmoved_weights(model, Block, before) == {"1": ["inner.weight", "inner.bias"]}
