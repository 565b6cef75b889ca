"""Automatic checks for the exercises at the end of each chapter.

`minidiff.exercises.ch00` checks `chapters/00-shapes-world/exercises.py`, `minidiff.exercises.ch01` checks
`chapters/01-ddpm/exercises.py`, and so on, one module per chapter. A check calls the learner's
function, compares the result with minidiff's own implementation and with closed-form properties of the maths,
and raises AssertionError (with what was expected, what came back and a hint) when they disagree. What every
chapter shares lives in `minidiff.exercises.checking`: loading a file by its path, calling the learner's
function, comparing with a tolerance, `NotImplementedYet`, the report and the command line.

A chapter's module defines `CHECKS` ({exercise name: check}), `EXERCISES` (the names, in order), `TITLE` and
`run_checks(module)`, which the chapter's exercises.py calls when run as a script:

    python chapters/01-ddpm/exercises.py                        # exit status = number of failed exercises

Grade any copy of an exercise file, wherever it lives:

    python -m minidiff.exercises.ch01 path/to/exercises.py      # exit status = number of failed exercises
"""
