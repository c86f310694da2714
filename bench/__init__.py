"""One training trial and the sweep that schedules many of them.

Knows nothing of HTML: it produces metrics and stores them.
"""
# Loads the CUDA libraries of the GPU build (a no-op on CPU) before any bench
# module imports MXNet; importing `models` does not import MXNet itself.
import models  # noqa: F401
