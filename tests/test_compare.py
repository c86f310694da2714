"""Comparing two stores' cells against their seed spread (reports.spread, reports.compare)."""
import math

import pytest

from bench.store import ResultsStore
from reports.compare import compare_stores, format_comparison, main
from reports.spread import difference

from .store_helpers import add_trial, record_sweep


def test_the_rule_is_two_welch_standard_errors():
    same = difference([0.90, 0.92, 0.91], [0.91, 0.93, 0.90])
    assert same.judged and not same.exceeds_spread
    assert same.difference == pytest.approx(0.0033333, abs=1e-6)
    assert same.standard_error == pytest.approx(math.sqrt(0.0001 / 3 + 0.00023333 / 3),
                                                rel=1e-3)
    apart = difference([0.90, 0.91, 0.90], [0.95, 0.96, 0.95])
    assert apart.exceeds_spread and apart.difference == pytest.approx(0.05)
    single = difference([0.90], [0.99])
    assert not single.judged and not single.exceeds_spread and single.standard_error is None
    with pytest.raises(ValueError):
        difference([], [0.5])


def store_of(root, backend, accuracies):
    """A store of cifar_resnet20_v1 cells, one finished trial per seed and accuracy."""
    store = ResultsStore(root / backend)
    seeds = range(len(next(iter(accuracies.values()))))
    for attention, values in accuracies.items():
        for seed, acc in zip(seeds, values):
            add_trial(store, 'cifar_resnet20_v1', attention, seed, 0.05, acc, backend=backend)
    record_sweep(store, ['cifar_resnet20_v1'], list(accuracies), seeds=list(seeds),
                 backend=backend)
    return store.root


def test_two_backends_stores_compared_cell_by_cell(tmp_path, capsys):
    gluon = store_of(tmp_path, 'gluon', {'none': [0.90, 0.92, 0.91], 'se': [0.90, 0.91, 0.90]})
    torch = store_of(tmp_path, 'torch', {'none': [0.91, 0.93, 0.90], 'se': [0.95, 0.96, 0.95]})
    rows = {(r['attention'], r['metric']): r for r in compare_stores(gluon, torch, ['val_acc'])}
    assert rows['none', 'val_acc']['n_a'] == rows['none', 'val_acc']['n_b'] == 3
    assert (rows['none', 'val_acc']['backend_a'], rows['none', 'val_acc']['backend_b']) == \
        ('gluon', 'torch')
    assert not rows['none', 'val_acc']['exceeds_spread']
    assert rows['se', 'val_acc']['exceeds_spread']
    text = format_comparison(list(rows.values()), 'gluon', 'torch')
    assert '1 of 2 judged comparisons differ by more than 2 standard errors' in text
    assert main([str(gluon), str(torch), '--metrics', 'val_acc']) == 0
    out = capsys.readouterr().out
    assert 'within spread' in out and 'differ' in out
    assert main([str(gluon), str(tmp_path / 'nothing')]) == 2
    assert 'sweep.json is missing' in capsys.readouterr().err
