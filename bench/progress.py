"""Progress output of the sweep and its Tune callback."""


def print_line(text):
    """Default progress output. A module function, since Tune pickles its callbacks and
    Ray may have replaced builtins.print by then (the original is then unpicklable)."""
    print(text, flush=True)
