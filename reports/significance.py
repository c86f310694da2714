"""Whether two cells differ: Welch's t-test on their seeds (scipy.stats), at a stated level.

The rule, stated wherever a mark or a verdict is shown: a difference is significant when
Welch's two-sided t-test (each cell's seeds, unequal variances, Welch-Satterthwaite
degrees of freedom) gives p < ALPHA; against a published value (a single number), the
one-sample t-test of our seeds. A cell with fewer than MIN_SEEDS seeds is not judged: with
two seeds the test has about one degree of freedom and says next to nothing, and a mark
would read as a finding it is not. The 95 % confidence interval of each difference is
given wherever both sides have two seeds or more.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass

ALPHA = 0.05
MIN_SEEDS = 3
CONFIDENCE = 0.95
RULE = (
    f"Welch's t-test on the cells' seeds, p < {ALPHA:g} (two-sided); "
    f'cells with fewer than {MIN_SEEDS} seeds are not judged'
)
REFERENCE_RULE = (
    f'the one-sample t-test of our seeds against the published value, p < {ALPHA:g} '
    f'(two-sided; the paper gives one number); fewer than {MIN_SEEDS} seeds: not judged'
)


@dataclass(frozen=True)
class Difference:
    """b's mean minus a's, with what the seeds say of it."""

    difference: float
    n: tuple[int, ...]  # seeds of each side: (a, b), or (ours,) against a published value
    standard_error: float | None = None
    dof: float | None = None  # Welch-Satterthwaite (or n - 1 against a published value)
    p: float | None = None
    ci: tuple[float, float] | None = None  # CONFIDENCE interval of the difference

    @property
    def judged(self) -> bool:
        """Enough seeds for a verdict: MIN_SEEDS on each side that has seeds."""
        return self.p is not None and min(self.n) >= MIN_SEEDS

    @property
    def significant(self) -> bool:
        return self.judged and self.p < ALPHA


def finished_values(values: Iterable[float]) -> list[float]:
    """The values that are there (None and NaN left out), as floats."""
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def difference(a: Iterable[float], b: Iterable[float]) -> Difference:
    """Welch's comparison of b's seeds with a's."""
    from scipy import stats

    a, b = finished_values(a), finished_values(b)
    if not a or not b:
        raise ValueError('both cells need at least one value')
    gap = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return Difference(gap, (len(a), len(b)))
    error = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    if error == 0:  # no spread on either side: the test is undefined
        return Difference(gap, (len(a), len(b)), standard_error=0.0)
    result = stats.ttest_ind(b, a, equal_var=False)
    interval = result.confidence_interval(CONFIDENCE)
    return Difference(
        gap,
        (len(a), len(b)),
        standard_error=error,
        dof=float(result.df),
        p=float(result.pvalue),
        ci=(float(interval.low), float(interval.high)),
    )


def difference_from_value(values: Iterable[float], value: float) -> Difference:
    """Our seeds' mean minus a published `value`, by the one-sample t-test."""
    from scipy import stats

    values = finished_values(values)
    if not values:
        raise ValueError('the cell needs at least one value')
    gap = statistics.fmean(values) - float(value)
    if len(values) < 2:
        return Difference(gap, (len(values),))
    error = statistics.stdev(values) / math.sqrt(len(values))
    if error == 0:
        return Difference(gap, (len(values),), standard_error=0.0)
    result = stats.ttest_1samp(values, float(value))
    interval = result.confidence_interval(CONFIDENCE)
    return Difference(
        gap,
        (len(values),),
        standard_error=error,
        dof=float(result.df),
        p=float(result.pvalue),
        ci=(float(interval.low) - float(value), float(interval.high) - float(value)),
    )
