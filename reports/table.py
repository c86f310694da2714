"""The results table as plain data (a context for the Jinja templates)."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from bench.store import DONE, FAILED, LOWER_IS_BETTER, METRIC_LABELS
from bench.validation import one_line
from models.architecture import network_counts
from models.names import model_sort_key
from models.registry import attention_label, attention_names

from .significance import Difference, difference, difference_from_value, finished_values

if TYPE_CHECKING:
    import pandas as pd

# Metrics whose differences read best in percentage points.
PROPORTIONS = {'val_acc', 'train_acc'}
# Size columns shown with `overhead`: store field -> column label.
OVERHEAD_COLUMNS = {'params': 'params', 'macs': 'MACs'}


def default_order(names: Iterable[str], known: Sequence[str] | None = None) -> list[str]:
    """Registered names in the registry's order (vanilla first), then the rest sorted."""
    names = list(dict.fromkeys(names))
    known = attention_names() if known is None else known
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


class Summary(NamedTuple):
    """The finished values of a cell: their mean, sample std (0 for one seed) and count."""

    mean: float
    std: float
    n: int


def summarise(values: Iterable[float | None]) -> Summary | None:
    """(mean, std, n) of the finished values; std is the sample std (0 for one seed)."""
    values = finished_values(values)
    if not values:
        return None
    n = len(values)
    return Summary(statistics.fmean(values), statistics.stdev(values) if n > 1 else 0.0, n)


class CellStatistics(NamedTuple):
    """One cell and metric of the table: its finished values (one per seed), their
    summary, and Welch's comparison with vanilla's cell of the same model (None for
    vanilla itself, or where either side has nothing finished)."""

    values: list[float]
    summary: Summary | None
    vs_vanilla: Difference | None


def cell_statistics(
    trials: pd.DataFrame,
    models: Sequence[str],
    attentions: Sequence[str],
    metrics: Sequence[str],
) -> dict[tuple[str, str, str], CellStatistics]:
    """{(model, attention, metric): CellStatistics} of the finished trials: what both the
    tables and cells.csv show, computed once."""
    done = trials[trials['status'] == DONE]
    values = {
        (model, a, m): _finished(
            done[(done['model'] == model) & (done['attention'] == a)][m].tolist()
        )
        for model in models
        for a in dict.fromkeys(['none', *attentions])  # vanilla: every difference's base
        for m in metrics
    }
    found = {}
    for model in models:
        for attention in attentions:
            for metric in metrics:
                own, vanilla = values[(model, attention, metric)], values[(model, 'none', metric)]
                gap = difference(vanilla, own) if attention != 'none' and own and vanilla else None
                found[(model, attention, metric)] = CellStatistics(own, summarise(own), gap)
    return found


def format_value(value: float, metric: str) -> str:
    """A metric as the tables show it: accuracies in percent, losses as they are."""
    return f'{100 * value:.2f}' if metric in PROPORTIONS else f'{value:.4f}'


def format_cell(summary: Summary | None, metric: str = 'val_loss', common_n: int = 1) -> str:
    """mean ± std; the seed count only where it is not the table's (`common_n`)."""
    if summary is None:
        return 'TBA'
    mean, std, n = summary
    text = format_value(mean, metric)
    if n > 1:
        text += f' ± {format_value(std, metric)}'
    return text + (f' (n={n})' if n != common_n else '')


def metric_label(metric: str) -> str:
    return METRIC_LABELS[metric] + (' (%)' if metric in PROPORTIONS else '')


def format_count(value: float) -> str:
    value = float(value)
    for unit, size in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if abs(value) >= size:
            return f'{value / size:.2f}{unit}'
    return f'{value:.0f}'


class Speed(NamedTuple):
    """A cell's measured training pace: images/s (median over its epochs and seeds), and
    the kinds of device its trials ran on."""

    images_per_second: float
    devices: frozenset


def device_label(kind: object) -> str:
    """The kind of device a trial recorded, as tables and figures name it (an older
    trial's missing one, None or NaN from pandas: 'unknown device')."""
    if not isinstance(kind, str) or not kind.strip():
        return 'unknown device'
    # One line, and never a leading underscore, which hides a legend entry.
    text = one_line(kind).strip()[:80]
    return ' ' + text if text.startswith('_') else text


def cell_speeds(
    histories: pd.DataFrame, devices: Mapping[str, str | None]
) -> dict[tuple[str, str], Speed]:
    """Each cell's Speed from the finished trials' epochs (`histories`, one row per trial
    and epoch) and each trial's device kind (`devices`: trial id -> kind)."""
    speeds = {}
    if histories.empty:
        return speeds
    for (model, attention), rows in histories.groupby(['model', 'attention'], sort=False):
        values = [float(v) for v in rows['images_per_second'] if v == v and v is not None]
        if values:
            kinds = frozenset(device_label(devices.get(t)) for t in rows['trial_id'])
            speeds[(model, attention)] = Speed(statistics.median(values), kinds)
    return speeds


def _speed_text(speeds: Mapping[tuple[str, str], Speed], model: str, attention: str) -> str:
    """'2,310 img/s (0.93x)': against vanilla's on the same kind of device only."""
    own = speeds.get((model, attention))
    if own is None:
        return '-'
    text = f'{own.images_per_second:,.0f} img/s'
    vanilla = speeds.get((model, 'none'))
    if attention == 'none' or vanilla is None:
        return text
    if own.devices != vanilla.devices or len(own.devices) != 1:
        return text + ' (other device)'
    return text + f' ({own.images_per_second / vanilla.images_per_second:.2f}x)'


def table_context(
    trials: pd.DataFrame,
    models: Sequence[str] | None = None,
    attentions: Sequence[str] | None = None,
    metrics: Sequence[str] = ('val_loss', 'val_acc'),
    overhead: bool = False,
    reference: dict[str, Any] | None = None,
    speeds: Mapping[tuple[str, str], Speed] | None = None,
) -> dict[str, Any]:
    """The results table and the cost table of the README block, table.md and report.html.

    Results: rows are models and column groups attentions, in the given order (default:
    the order they appear in the store), a column per metric. A cell is mean ± std over
    its finished seeds (accuracies in percent), or TBA; the seed count is said in a cell
    only where it differs from the table's (`common_n`). An attention's accuracy cell
    carries its difference to vanilla in points (`vs_vanilla`), and is marked
    (`beyond_vanilla`) where that difference is significant (reports.significance); the
    best value of a row is bold only where it is significantly better than every other.
    With a `reference` (reports.reference.load_reference), a cell of a metric and model
    it published carries the published value, our difference to it, its confidence
    interval and p, and `beyond_reference` by the one-sample test.

    Cost (with `overhead`): per model and attention the parameters and MACs (an
    attention: what it adds to vanilla), and with `speeds` the measured images/s and
    its ratio to vanilla's on the same kind of device.
    """
    done = trials[trials['status'] == DONE]
    models = list(models) if models else sorted(set(trials['model']), key=model_sort_key)
    attentions = list(attentions) if attentions else default_order(trials['attention'])
    groups = [
        {'name': a, 'label': attention_label(a), 'columns': [metric_label(m) for m in metrics]}
        for a in attentions
    ]
    cells_of = cell_statistics(trials, models, attentions, metrics)
    # A cell whose trials all failed says so: TBA would read as "not trained yet".
    failed = trials[trials['status'] == FAILED]
    failed_cells = set(zip(failed['model'], failed['attention'])) - set(
        zip(done['model'], done['attention'])
    )
    seeds = {key: cell.values for key, cell in cells_of.items()}
    counts = [len(values) for values in seeds.values() if values]
    common_n = max(set(counts), key=lambda n: (counts.count(n), n)) if counts else 0
    rows, reference_rows = [], []
    for model in models:
        best = {metric: _significant_best(seeds, model, attentions, metric) for metric in metrics}
        cells = []
        for attention in attentions:
            for metric in metrics:
                values, summary, gap = cells_of[(model, attention, metric)]
                cell = {
                    'text': 'failed'
                    if (model, attention) in failed_cells
                    else format_cell(summary, metric, common_n),
                    'bold': best[metric] == attention,
                    'n': len(values),
                    'beyond_vanilla': bool(gap and gap.significant),
                    'vs_vanilla': (
                        f'Δ {format_difference(gap.difference, metric)}'
                        if gap and metric in PROPORTIONS
                        else None
                    ),
                }
                if reference and metric in reference['metrics'] and model in reference['models']:
                    published = reference['values'].get((model, attention), {}).get(metric)
                    cell.update(_reference_cell(values, published, metric))
                    reference_rows.append(
                        dict(cell, model=model, attention=attention, metric=METRIC_LABELS[metric])
                    )
                cells.append(cell)
        rows.append({'model': model, 'cells': cells})
    data_names = sorted({str(n) for n in trials['data_name'].dropna()})
    official = bool(len(trials)) and bool(trials['data_official'].all())
    seed_list = sorted({int(s) for s in done['seed']}) if len(done) else []
    return {
        'groups': groups,
        'rows': rows,
        'metrics': list(metrics),
        'overhead': overhead,
        'cost': _cost_context(trials, models, attentions, speeds) if overhead else None,
        'official': official,
        'data_names': data_names,
        'seeds': seed_list,
        'common_n': common_n,
        'uneven_seeds': len(set(counts)) > 1,
        'finished': int(len(done)),
        'failed': int(len(failed)),
        'total': int(len(trials)),
        'reference': reference and {'name': reference['name'], 'source': reference['source']},
        'reference_rows': reference_rows,
        'most_seeds': max(counts, default=0),
        # cells.csv is written from these (reports.exports.cells_frame).
        'statistics': cells_of,
    }


def _significant_best(
    seeds: Mapping[tuple[str, str, str], list[float]],
    model: str,
    attentions: Sequence[str],
    metric: str,
) -> str | None:
    """The attention whose cell is significantly better than every other of the row."""
    present = [a for a in attentions if seeds[(model, a, metric)]]
    if len(present) < 2:
        return None
    pick = min if metric in LOWER_IS_BETTER else max
    leader = pick(present, key=lambda a: (statistics.fmean(seeds[(model, a, metric)]), a))
    apart = all(
        difference(seeds[(model, other, metric)], seeds[(model, leader, metric)]).significant
        for other in present
        if other != leader
    )
    return leader if apart else None


def _cost_context(
    trials: pd.DataFrame,
    models: Sequence[str],
    attentions: Sequence[str],
    speeds: Mapping[tuple[str, str], Speed] | None,
) -> dict[str, Any]:
    columns = list(OVERHEAD_COLUMNS.values()) + (['speed'] if speeds is not None else [])
    rows = []
    for model in models:
        cells = []
        for attention in attentions:
            cells += [_overhead_text(trials, model, attention, c) for c in OVERHEAD_COLUMNS]
            if speeds is not None:
                cells.append(_speed_text(speeds, model, attention))
        rows.append({'model': model, 'cells': cells})
    return {
        'groups': [{'label': attention_label(a), 'columns': columns} for a in attentions],
        'rows': rows,
        'speed': speeds is not None,
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
        'reference': 'orig TBA' if published is None else f'orig {format_value(published, metric)}',
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
    # A count of 0 is a damaged record (every network has weights): no share of it.
    if attention == 'none' or not vanilla:
        return format_count(own)
    extra = own - vanilla
    return f'+{format_count(extra)} ({100 * extra / vanilla:.2f}%)'
