"""CPU threads of a trial.

MXNet sizes its OpenMP pool from OMP_NUM_THREADS when it is first imported and
ignores later changes (MXSetNumOMPThreads does not reach the engine's workers).
Unset, it leaves cores idle: on a 2-core machine ResNet-20 trains at 190 img/s
instead of 350. So every entry point calls `use_cpus` before importing MXNet.
"""

from __future__ import annotations

import os
import sys

# Set (to anything) to leave MXNet's own default thread count, for comparisons.
KEEP_DEFAULT_ENV = 'BENCH_MXNET_DEFAULT_THREADS'


def available_cpus() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def trial_threads(cpus: float) -> int:
    """The CPU threads of a trial given `cpus` (resources.cpus_per_trial): a whole count,
    at least one."""
    return max(1, int(cpus))


def pin_cpus(cpus: float) -> int | None:
    """Set OMP_NUM_THREADS to exactly `cpus`, whatever the environment says (Ray trials:
    the thread count follows cpus_per_trial, not what the driver's environment held).
    Must run before `import mxnet`; returns the count, or None if MXNet was already loaded."""
    if 'mxnet' in sys.modules:
        return None
    count = trial_threads(cpus)
    os.environ['OMP_NUM_THREADS'] = str(count)
    return count


def use_cpus(cpus: float | None = None) -> int | None:
    """Set OMP_NUM_THREADS to `cpus` (default: all available) unless the user already chose.

    Returns the thread count in force. Must run before `import mxnet`; afterwards
    it only reports, since MXNet would not see the change.
    """
    chosen = os.environ.get('OMP_NUM_THREADS')
    if chosen:
        return int(chosen)
    if os.environ.get(KEEP_DEFAULT_ENV):
        return None
    count = max(1, int(cpus if cpus else available_cpus()))
    if 'mxnet' not in sys.modules:
        os.environ['OMP_NUM_THREADS'] = str(count)
        return count
    return None
