"""One training trial and the sweep that schedules many of them.

Knows nothing of HTML: it produces metrics and stores them.

- `bench.trial`: one trial. Its contract (recipe, data, epoch loop, checkpoints,
  threads) is framework-free; each backend is a sub-package (`bench.trial.gluon`).
- `bench.sweep`: the sweep file, the plan, the cluster checks and the Ray Tune driver;
  framework-free.
- `bench.store`: the results store, its layout and its one status rule; framework-free.
- `bench.gpu`, `bench.environment`: what this machine has and what a run records of it.
- Tools: `python -m bench.train` (one trial), `python -m bench.benchmark` (speed).
"""

# Loads the CUDA libraries of the GPU build (a no-op on CPU) before any bench
# module imports MXNet; importing `models` does not import MXNet itself.
import models  # noqa: F401
