"""`python -m reports.compare STORE_A STORE_B`: the same cells trained twice (e.g. by the
gluon and the torch backend), compared cell by cell.

Reads only the two stores (their sweep.json and finished trials): no training, no
framework. Each metric's means, their difference with its 95 % confidence interval and
Welch's p per cell, and whether the difference is significant (reports.significance).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import BenchError, report
from bench.store import DONE, METRIC_LABELS
from bench.validation import one_line

from .readme import ReportError
from .significance import MIN_SEEDS, RULE, difference, finished_values
from .store import load_manifest, load_trials, split_by_sweep
from .table import format_p

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_METRICS = ('val_acc', 'val_loss', 'train_loss')


def finished_trials(store_dir: str | Path) -> pd.DataFrame:
    """The finished trials the store's sweep consists of (pandas rows)."""
    manifest = load_manifest(store_dir)
    current, _ = split_by_sweep(load_trials(store_dir, manifest), manifest)
    return current[current['status'] == DONE]


def compare_stores(
    store_a: str | Path, store_b: str | Path, metrics: Sequence[str] = DEFAULT_METRICS
) -> list[dict[str, Any]]:
    """One dict per cell present in both stores and metric: n, mean and std of each side,
    the difference (b - a), its standard error, confidence interval and p, and whether it
    is significant."""
    a, b = finished_trials(store_a), finished_trials(store_b)
    rows = []
    cells = [
        cell
        for cell in dict.fromkeys(zip(a['model'], a['attention']))
        if cell in set(zip(b['model'], b['attention']))
    ]
    for model, attention in cells:
        side_a = a[(a['model'] == model) & (a['attention'] == attention)]
        side_b = b[(b['model'] == model) & (b['attention'] == attention)]
        for metric in metrics:
            # A finished trial may hold no value of a metric (an older final.json).
            values_a = finished_values(side_a[metric])
            values_b = finished_values(side_b[metric])
            if not values_a or not values_b:
                continue
            gap = difference(values_a, values_b)
            rows.append(
                {
                    'model': model,
                    'attention': attention,
                    'metric': metric,
                    'backend_a': one_line(','.join(sorted(set(side_a['backend'])))),
                    'backend_b': one_line(','.join(sorted(set(side_b['backend'])))),
                    'n_a': len(values_a),
                    'mean_a': statistics.fmean(values_a),
                    'std_a': _std(values_a),
                    'n_b': len(values_b),
                    'mean_b': statistics.fmean(values_b),
                    'std_b': _std(values_b),
                    'difference': gap.difference,
                    'standard_error': gap.standard_error,
                    'ci': gap.ci,
                    'p': gap.p,
                    'dof': gap.dof,
                    'judged': gap.judged,
                    'significant': gap.significant,
                }
            )
    return rows


def setting_differences(store_a: str | Path, store_b: str | Path) -> list[str]:
    """What the two sweeps trained differently besides their cells' seeds: the data, and
    each recipe setting whose values differ (`recipe.lr: 0.003 | 0.01`); [] for none. A
    difference between the stores is then read as a difference of these settings."""
    manifest_a, manifest_b = load_manifest(store_a), load_manifest(store_b)
    lines = []
    data_a, data_b = manifest_a.get('data') or {}, manifest_b.get('data') or {}
    if (data_a.get('digest'), data_a.get('official')) != (
        data_b.get('digest'),
        data_b.get('official'),
    ):
        lines.append(f'data: {_data_label(data_a)} | {_data_label(data_b)}')
    recipes_a, recipes_b = _recipe_values(manifest_a), _recipe_values(manifest_b)
    for key in sorted(set(recipes_a) | set(recipes_b)):
        values_a, values_b = recipes_a.get(key, ['-']), recipes_b.get(key, ['-'])
        if values_a != values_b:
            lines.append(f'recipe.{one_line(key)}: {", ".join(values_a)} | {", ".join(values_b)}')
    return lines


def _data_label(data: dict[str, Any]) -> str:
    return one_line(f'{data.get("name", "?")} ({str(data.get("digest", "?"))[:8]})')


def _recipe_values(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Each recipe setting of the sweep's trials: its values, as text, sorted."""
    import json

    from bench.trial.recipe import LATER_OPTIONS

    values: dict[str, set[str]] = {}
    for trial in manifest.get('trials', []):
        # A stored recipe leaves out later options at their defaults (the ids stay).
        recipe = {**LATER_OPTIONS, **((trial.get('spec') or {}).get('recipe') or {})}
        for key, value in recipe.items():
            values.setdefault(key, set()).add(one_line(json.dumps(value, sort_keys=True)))
    return {key: sorted(found) for key, found in values.items()}


def _std(values: Sequence[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def format_comparison(rows: Sequence[dict[str, Any]], label_a: str, label_b: str) -> str:
    def number(value: float | None) -> str:
        return '-' if value is None else f'{value:.4f}'

    header = (
        f'{"model":<20} {"attention":<9} {"metric":<10} {label_a[:22]:>22} '
        f'{label_b[:22]:>22} {"b - a":>8} {"95% CI of b - a":>19} {"p":>11}  verdict'
    )
    lines = [header, '-' * len(header)]
    for row in rows:
        verdict = (
            ('differ' if row['significant'] else 'no significant difference')
            if row['judged']
            else f'n < {MIN_SEEDS}: not judged'
        )
        interval = '-' if row['ci'] is None else f'[{row["ci"][0]:+.4f}, {row["ci"][1]:+.4f}]'
        lines.append(
            f'{row["model"]:<20} {row["attention"]:<9} {METRIC_LABELS[row["metric"]]:<10} '
            f'{number(row["mean_a"]):>10} ± {number(row["std_a"]):<7} (n={row["n_a"]}) '
            f'{number(row["mean_b"]):>10} ± {number(row["std_b"]):<7} (n={row["n_b"]}) '
            f'{row["difference"]:>+8.4f} {interval:>19} '
            f'{"-" if row["p"] is None else format_p(row["p"]):>11}  {verdict}'
        )
    differ = sum(1 for row in rows if row['significant'])
    judged = sum(1 for row in rows if row['judged'])
    lines.append(f'{differ} of {judged} judged comparisons differ; the rule: {RULE}')
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog='python -m reports.compare',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('store_a', help='a sweep folder of a store, e.g. results/backends-gluon')
    parser.add_argument('store_b', help='another, e.g. results/backends-torch')
    parser.add_argument(
        '--metrics', nargs='+', default=list(DEFAULT_METRICS), choices=list(METRIC_LABELS)
    )
    args = parser.parse_args(argv)
    try:
        if Path(args.store_a).resolve() == Path(args.store_b).resolve():
            raise ReportError(
                f'{args.store_a} and {args.store_b} are the same store; give two stores of '
                'the same cells, e.g. results/backends-gluon results/backends-torch'
            )
        rows = compare_stores(args.store_a, args.store_b, args.metrics)
        if not rows:
            raise ReportError('the two stores have no finished cell in common')
        differences = setting_differences(args.store_a, args.store_b)
    except BenchError as error:
        return report(error)
    label_a, label_b = Path(args.store_a).name, Path(args.store_b).name
    print(
        f'trained differently ({one_line(label_a)} | {one_line(label_b)}): '
        + ('; '.join(differences) if differences else 'nothing but the trials themselves')
    )
    print(format_comparison(rows, label_a, label_b))
    return 0


if __name__ == '__main__':
    sys.exit(main())
