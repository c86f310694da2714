"""Progress output of the sweep and its Tune callback."""

from __future__ import annotations


def print_line(text: str) -> None:
    """Default progress output. A module function, since Tune pickles its callbacks and
    Ray may have replaced builtins.print by then (the original is then unpicklable)."""
    print(text, flush=True)
