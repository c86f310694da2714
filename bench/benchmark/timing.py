"""How the benchmark times: alternating rounds, per-round ratios, the CPU's peak.

Framework-free: the steppers it times come from bench.benchmark.gluon_steps,
bench.benchmark.original and bench.benchmark.torch_steps, the torch ones of a
two-backend run through a process of their own (bench.benchmark.child).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from bench.trial.threads import available_cpus


def synthetic_images(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(count, 3, 32, 32), dtype=np.uint8),
        rng.integers(0, 10, size=count).astype(np.int32),
    )


def batches_per_round(batches: int, rounds: int) -> int:
    """The batches each round times: every round times at least one, so fewer batches than
    rounds time one per round."""
    return max(1, batches // rounds)


def interleaved_rates(
    steppers: Mapping[Hashable, Callable[[], object]],
    batch_size: int,
    rounds: int,
    batches_per_round: int,
    warmup: int = 3,
) -> dict[Hashable, list[float]]:
    """Images/s of each step function in each round, timed in alternating rounds.

    The steppers take turns (round 1: a, b, c; round 2: a, b, c; ...), so a slow
    spell of a shared machine lands on all of them alike and their ratios hold.
    A stepper whose work runs on after it returns (MXNet's engine runs backward and
    the update asynchronously; a DataLoader prefetches; a GPU queues kernels) has a
    `settle()` that waits for all of it. Every timed round runs from a settled point
    to a settled point: settled before the clock starts (untimed, so nothing of the
    previous round is charged to it) and after its last step (timed, so all of its
    own work is), and each stepper is charged exactly the work of its own batches.
    A stepper living in another process (bench.benchmark.child) times its own rounds
    there, alike, with `warm_up` and `round_seconds` of its own.
    Returns {name: [images/s in round 1, round 2, ...]}.
    """
    for step in steppers.values():
        if hasattr(step, 'warm_up'):
            step.warm_up(warmup)
        else:
            warm_up(step, warmup)
    rates = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, step in steppers.items():
            if hasattr(step, 'round_seconds'):
                seconds = step.round_seconds(batches_per_round)
            else:
                seconds = round_seconds(step, batches_per_round)
            rates[name].append(batches_per_round * batch_size / seconds)
    return rates


def _settle(step: Callable[[], object]) -> None:
    if hasattr(step, 'settle'):
        step.settle()


def warm_up(step: Callable[[], object], steps: int) -> None:
    """Untimed steps (graph building, allocation, oneDNN primitives, compilation), then
    settled."""
    for _ in range(steps):
        step()
    _settle(step)


def round_seconds(step: Callable[[], object], steps: int) -> float:
    """Seconds of `steps` steps from a settled point to a settled point (see
    interleaved_rates)."""
    _settle(step)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _settle(step)
    return time.perf_counter() - started


def median_ratio(numerator_rates: Iterable[float], denominator_rates: Iterable[float]) -> float:
    """Median over rounds of the ratio of two steppers' rates in the same round.

    Neighbours in time share the machine's state, so per-round ratios cancel
    most of a shared machine's drift, which a ratio of medians would keep.
    """
    return statistics.median(a / b for a, b in zip(numerator_rates, denominator_rates))


def endless(make_iterable: Callable[[], Iterable[Any]]) -> Iterator[Any]:
    while True:
        yield from make_iterable()


def epoch_data(
    images: np.ndarray, labels: np.ndarray, count: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The whole-epoch comparison's (train, test) sets: `count` of the training images, and
    a fifth as many other images for evaluation (CIFAR-10's 50000 : 10000)."""
    return (images[:count], labels[:count]), synthetic_images(max(1, count // 5), seed=1)


# A training step costs about three forward passes (forward, and a backward that
# computes both input and weight gradients), each multiply-accumulate two FLOPs.
TRAIN_FLOPS_PER_MAC = 6


def cpu_peak_gflops(cpuinfo: str = '/proc/cpuinfo', cores: int | None = None) -> float | None:
    """Estimated FP32 peak of the cores this process may use, from /proc/cpuinfo.

    cores x clock x FLOPs per cycle (two FMA units: AVX-512 64, AVX2+FMA 32, else 16).
    None where the clock or the vector units cannot be read.
    """
    try:
        text = open(cpuinfo).read()
    except OSError:
        return None
    mhz = [
        float(line.split(':')[1])
        for line in text.splitlines()
        if line.lower().startswith('cpu mhz')
    ]
    flags = next(
        (line.split(':')[1].split() for line in text.splitlines() if line.startswith('flags')), []
    )
    if not mhz or not flags:
        return None
    per_cycle = 64 if 'avx512f' in flags else 32 if {'avx2', 'fma'} <= set(flags) else 16
    return (cores or available_cpus()) * max(mhz) / 1000.0 * per_cycle
