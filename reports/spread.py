"""When a difference between two cells' seeds is larger than their seed spread.

The rule, stated wherever a mark or a verdict is shown: two cells differ when their
means are more than two standard errors of the difference apart (Welch's standard
error, sqrt(s_a^2 / n_a + s_b^2 / n_b), with each cell's sample standard deviation).
With fewer than two seeds in a cell nothing can be judged.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

STANDARD_ERRORS = 2
RULE = (
    f'more than {STANDARD_ERRORS} standard errors of the difference apart '
    "(Welch's, from each cell's seeds)"
)


@dataclass(frozen=True)
class Difference:
    difference: float  # mean of b minus mean of a
    standard_error: float  # None with fewer than two values on a side
    judged: bool  # whether the seeds allow a judgement at all

    @property
    def exceeds_spread(self) -> bool:
        return self.judged and abs(self.difference) > STANDARD_ERRORS * self.standard_error


REFERENCE_RULE = (
    f'more than {STANDARD_ERRORS} standard errors of our mean from the '
    'published value (a single run: only our seeds give a spread)'
)


def difference_from_value(values: Iterable[float], value: float) -> Difference:
    """The Difference of the mean of `values` (our seeds) from one published `value`."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError('the cell needs at least one value')
    gap = statistics.fmean(values) - float(value)
    if len(values) < 2:
        return Difference(gap, None, False)
    return Difference(gap, statistics.stdev(values) / math.sqrt(len(values)), True)


def difference(a: Iterable[float], b: Iterable[float]) -> Difference:
    """The Difference of b's mean from a's, for two lists of per-seed values."""
    a, b = [float(v) for v in a], [float(v) for v in b]
    if not a or not b:
        raise ValueError('both cells need at least one value')
    gap = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return Difference(gap, None, False)
    error = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    return Difference(gap, error, True)
