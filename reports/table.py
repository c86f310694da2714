"""The results table as plain data (a context for the Jinja templates)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from bench.store import DONE, LOWER_IS_BETTER, METRIC_LABELS
from models.architecture import network_counts
from models.names import ATTENTION_NAMES, attention_label, model_sort_key

from .significance import difference, difference_from_value

if TYPE_CHECKING:
    import pandas as pd

# Metrics whose differences read best in percentage points.
PROPORTIONS = {'val_acc', 'train_acc'}
# Size columns shown with `overhead`: store field -> column label.
OVERHEAD_COLUMNS = {'params': 'params', 'macs': 'MACs'}


def default_order(names: Iterable[str], known: Sequence[str] = ATTENTION_NAMES) -> list[str]:
    """Known names in their usual order (vanilla first), then the rest sorted."""
    names = list(dict.fromkeys(names))
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


class Summary(NamedTuple):
    """The finished values of a cell: their mean, sample std (0 for one seed) and count."""

    mean: float
    std: float
    n: int


def summarise(values: Iterable[float | None]) -> Summary | None:
    """(mean, std, n) of the finished values; std is the sample std (0 for one seed)."""
    values = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not values:
        return None
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Summary(mean, std, n)


def format_cell(summary: Summary | None, digits: int = 4) -> str:
    if summary is None:
        return 'TBA'
    mean, std, n = summary
    if n == 1:
        return f'{mean:.{digits}f}'
    return f'{mean:.{digits}f} ± {std:.{digits}f} (n={n})'


def format_count(value: float) -> str:
    value = float(value)
    for unit, size in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(value) >= size:
            return f'{value / size:.2f}{unit}'
    return f'{value:.0f}'


def table_context(
    trials: pd.DataFrame,
    models: Sequence[str] | None = None,
    attentions: Sequence[str] | None = None,
    metrics: Sequence[str] = ('val_loss', 'val_acc'),
    overhead: bool = False,
    reference: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Header groups and rows of the README table from the trials DataFrame.

    Rows are models and column groups attentions, in the given order (default:
    the order they appear in the store). A cell is mean ± std over finished
    seeds, or TBA; the best value of each metric in a row is marked bold where it is
    significantly better than every other cell of the row (reports.significance). An
    attention's cell is marked (`beyond_vanilla`) where it differs significantly from
    vanilla. With a `reference` (reports.reference.load_reference), a cell of a metric
    and model it published carries the published value, our difference to it, and
    `beyond_reference` by the one-sample test.
    """
    done = trials[trials['status'] == DONE]
    models = list(models) if models else sorted(set(trials['model']), key=model_sort_key)
    attentions = list(attentions) if attentions else default_order(trials['attention'])
    groups = [
        {
            'name': a,
            'label': attention_label(a),
            'columns': [METRIC_LABELS[m] for m in metrics]
            + (list(OVERHEAD_COLUMNS.values()) if overhead else []),
        }
        for a in attentions
    ]
    rows, reference_rows = [], []
    for model in models:
        seeds = {
            (a, m): _finished(done[(done['model'] == model) & (done['attention'] == a)][m].tolist())
            for a in attentions
            for m in metrics
        }
        summaries = {key: summarise(values) for key, values in seeds.items()}
        best = {}
        for metric in metrics:
            present = [a for a in attentions if summaries[(a, metric)] is not None]
            if len(present) > 1:
                pick = min if metric in LOWER_IS_BETTER else max
                leader = pick(present, key=lambda a: (summaries[(a, metric)].mean, a))  # noqa: B023
                # Best only where the seeds say so: apart from every other cell.
                if all(
                    difference(seeds[(other, metric)], seeds[(leader, metric)]).significant
                    for other in present
                    if other != leader
                ):
                    best[metric] = leader
        cells = []
        for attention in attentions:
            for metric in metrics:
                summary = summaries[(attention, metric)]
                cell = {
                    'text': format_cell(summary),
                    'bold': best.get(metric) == attention and summary is not None,
                    'n': summary.n if summary else 0,
                    'beyond_vanilla': attention != 'none'
                    and bool(seeds[(attention, metric)])
                    and bool(seeds.get(('none', metric)))
                    and difference(seeds[('none', metric)], seeds[(attention, metric)]).significant,
                }
                if reference and metric in reference['metrics'] and model in reference['models']:
                    published = reference['values'].get((model, attention), {}).get(metric)
                    cell.update(_reference_cell(seeds[(attention, metric)], published, metric))
                    reference_rows.append(
                        dict(cell, model=model, attention=attention, metric=METRIC_LABELS[metric])
                    )
                cells.append(cell)
            if overhead:
                cells += [
                    {
                        'text': _overhead_text(trials, model, attention, column),
                        'bold': False,
                        'n': 0,
                    }
                    for column in OVERHEAD_COLUMNS
                ]
        rows.append({'model': model, 'cells': cells})
    data_names = sorted({str(n) for n in trials['data_name'].dropna()})
    official = bool(len(trials)) and bool(trials['data_official'].all())
    seeds = sorted({int(s) for s in done['seed']}) if len(done) else []
    most_seeds = max((cell['n'] for row in rows for cell in row['cells']), default=0)
    return {
        'groups': groups,
        'rows': rows,
        'metrics': list(metrics),
        'overhead': overhead,
        'official': official,
        'data_names': data_names,
        'seeds': seeds,
        'finished': int(len(done)),
        'total': int(len(trials)),
        'reference': reference and {'name': reference['name'], 'source': reference['source']},
        'reference_rows': reference_rows,
        'most_seeds': most_seeds,
    }


def _finished(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def _reference_cell(
    values: list[float], published: float | None, metric: str
) -> dict[str, str | float | bool | None]:
    """What a cell shows of the published value: 'orig 0.9171' and our difference to it
    (accuracy in points), or 'orig TBA' where the reference left the cell out; for the
    report, the difference's confidence interval and p."""
    found = {
        'reference': 'orig TBA' if published is None else f'orig {published:.4f}',
        'published': published,
        'delta': None,
        'beyond_reference': False,
        'ci': None,
        'p': None,
        'judged': False,
    }
    if published is None or not values:
        return found
    gap = difference_from_value(values, published)
    found.update(
        delta=format_difference(gap.difference, metric),
        beyond_reference=gap.significant,
        judged=gap.judged,
        ci=gap.ci and format_interval(gap.ci, metric),
        p=None if gap.p is None else format_p(gap.p),
    )
    return found


def format_difference(value: float, metric: str) -> str:
    """A difference as the table says it: accuracy in points, losses as they are."""
    return f'{100 * value:+.2f} pt' if metric in PROPORTIONS else f'{value:+.4f}'


def format_interval(interval: tuple[float, float], metric: str) -> str:
    low, high = interval
    if metric in PROPORTIONS:
        return f'[{100 * low:+.2f}, {100 * high:+.2f}] pt'
    return f'[{low:+.4f}, {high:+.4f}]'


def format_p(p: float) -> str:
    return 'p < 0.001' if p < 0.001 else f'p = {p:.3f}'


def _overhead_text(trials: pd.DataFrame, model: str, attention: str, column: str) -> str:
    """Vanilla: its count of `column` (params or macs); an attention: what it adds, and %.
    Counts come from the store, else from the architecture (models.architecture), so
    cells not trained yet show them too."""

    def count_of(name: str) -> float | None:
        rows = trials[(trials['model'] == model) & (trials['attention'] == name)]
        found = rows[column].dropna()
        if len(found):
            return float(found.iloc[0])
        if not len(rows):
            return None
        try:
            params, macs = network_counts(
                model, name, json.loads(rows['attention_kwargs'].iloc[0] or '{}')
            )
        except (KeyError, TypeError, ValueError):
            return None
        return float(params if column == 'params' else macs)

    own, vanilla = count_of(attention), count_of('none')
    if own is None:
        return '-'
    if attention == 'none' or vanilla is None:
        return format_count(own)
    extra = own - vanilla
    return f'+{format_count(extra)} ({100 * extra / vanilla:.2f}%)'
