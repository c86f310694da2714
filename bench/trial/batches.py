"""Which images each batch of an epoch holds, and how they are augmented: plain numpy.

Every trial backend draws its epochs from here, so two backends given the same
seed see the same batches, crops and flips.
"""

from __future__ import annotations

import numpy as np


def epoch_plan(
    rng: np.random.Generator,
    count: int,
    batch_size: int,
    pad: int = 4,
    random_crop: bool = True,
    random_flip: bool = True,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per-batch (indices, row offsets, col offsets, flips) for one shuffled training epoch.

    All randomness of an epoch is drawn here, from `rng`, at the epoch's start, so a
    checkpoint that stores the generator's state between epochs resumes exactly.
    The last partial batch is dropped, as the original recipe's loader did.
    """
    order = rng.permutation(count)
    offsets = (
        rng.integers(0, 2 * pad + 1, size=(2, count)) if random_crop else np.full((2, count), pad)
    )
    flips = rng.random(count) < 0.5 if random_flip else np.zeros(count, dtype=bool)
    batches = []
    for start in range(0, count - batch_size + 1, batch_size):
        chosen = order[start : start + batch_size]
        batches.append(
            (
                chosen,
                offsets[0, start : start + batch_size],
                offsets[1, start : start + batch_size],
                flips[start : start + batch_size],
            )
        )
    return batches


def eval_batches(count: int, batch_size: int) -> list[np.ndarray]:
    """Index arrays covering a split in order, the last batch possibly short."""
    return [
        np.arange(start, min(start + batch_size, count)) for start in range(0, count, batch_size)
    ]
