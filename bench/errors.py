"""The one base of every failure a user of this project can act on.

A `BenchError` says what is wrong (its message), what to do about it when that is not
already in the message (`hint`), and what the command exits with (`exit_code`). Each
command-line entry point catches `BenchError` once and hands it to `report`; anything
else that escapes is a bug and keeps its traceback.

The specific errors (a bad sweep file, missing data, a store held by another run, a GPU
that cannot train, ...) subclass it where they are defined; several also subclass the
built-in exception they always were (ValueError, KeyError, RuntimeError), so code that
catches those keeps working.
"""

from __future__ import annotations

import sys
from typing import TextIO

# Exit codes of the command-line tools: 2 for input or environment the user must fix
# before anything runs (argparse's own code), 1 for a run that ran and failed, 130 for
# an interrupt (the shell's code for SIGINT).
USAGE = 2
FAILED = 1
INTERRUPTED = 130
# What to run when a failure is this machine's (frameworks, driver, GPUs).
DOCTOR_HINT = (
    'python -m bench.doctor checks this machine in under a minute (frameworks, '
    'driver, each GPU and which backend can use it) and says what to fix'
)


class BenchError(Exception):
    """A failure with a message for the user, an optional hint and an exit code."""

    exit_code: int = USAGE
    hint: str | None = None  # a class may give every instance the same hint

    def __init__(
        self, *args: object, hint: str | None = None, exit_code: int | None = None
    ) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code

    def __reduce__(self) -> tuple:
        # Pickled whole (hint, exit code, a subclass's own fields), not rebuilt from
        # args alone: errors come back from the benchmark's child processes.
        return (_rebuild_error, (type(self), self.args, self.__dict__))


def _rebuild_error(cls: type[BenchError], args: tuple, state: dict) -> BenchError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class BadArguments(BenchError, ValueError):
    """A command-line value that fails its rules; the message names the option."""


class ProblemsFound(BenchError):
    """Several independent problems found before anything ran, each its own error line."""

    def __init__(self, problems: list[str], *, hint: str | None = None) -> None:
        self.problems = tuple(problems)
        super().__init__('\n'.join(self.problems), hint=hint)


def report(error: BenchError, stream: TextIO | None = None) -> int:
    """Print `error` (and its hint) as the command's last word; its exit code."""
    stream = stream or sys.stderr
    for problem in getattr(error, 'problems', None) or (str(error),):
        print(f'error: {_inert(problem)}', file=stream)
    if error.hint:
        print(_inert(error.hint), file=stream)
    return error.exit_code


def _inert(message: object) -> str:
    """A message's lines, each made inert for the terminal: messages quote stored text
    (names, a lock's host, a file name), which could hold escape sequences."""
    from bench.validation import one_line

    return '\n'.join(one_line(line) for line in str(message).split('\n'))
