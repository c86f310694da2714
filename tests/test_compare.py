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
    assert same.standard_error == pytest.approx(math.sqrt(0.0001 / 3 + 0.00023333 / 3), rel=1e-3)
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
    record_sweep(store, ['cifar_resnet20_v1'], list(accuracies), seeds=list(seeds), backend=backend)
    return store.root


def test_two_backends_stores_compared_cell_by_cell(tmp_path, capsys):
    gluon = store_of(tmp_path, 'gluon', {'none': [0.90, 0.92, 0.91], 'se': [0.90, 0.91, 0.90]})
    torch = store_of(tmp_path, 'torch', {'none': [0.91, 0.93, 0.90], 'se': [0.95, 0.96, 0.95]})
    rows = {(r['attention'], r['metric']): r for r in compare_stores(gluon, torch, ['val_acc'])}
    assert rows['none', 'val_acc']['n_a'] == rows['none', 'val_acc']['n_b'] == 3
    assert (rows['none', 'val_acc']['backend_a'], rows['none', 'val_acc']['backend_b']) == (
        'gluon',
        'torch',
    )
    assert not rows['none', 'val_acc']['exceeds_spread']
    assert rows['se', 'val_acc']['exceeds_spread']
    text = format_comparison(list(rows.values()), 'gluon', 'torch')
    assert '1 of 2 judged comparisons have means more than 2 standard errors' in text
    assert main([str(gluon), str(torch), '--metrics', 'val_acc']) == 0
    out = capsys.readouterr().out
    assert 'within spread' in out and 'differ' in out
    assert main([str(gluon), str(tmp_path / 'nothing')]) == 2
    assert 'sweep.json is missing' in capsys.readouterr().err


# ------------------------------------------------------------- the published reference


def reference_store(root, seeds_acc, seeds_loss=None):
    """cifar_resnet20_v1 x (none, se, eca) with the given per-seed accuracies, and the
    sweep record asking for the original's reference."""
    store = ResultsStore(root / 'results' / 'ref')
    for attention, values in seeds_acc.items():
        for seed, acc in enumerate(values):
            loss = (seeds_loss or {}).get(attention, [0.03] * len(values))[seed]
            add_trial(store, 'cifar_resnet20_v1', attention, seed, loss, acc)
    seeds = list(range(max(len(v) for v in seeds_acc.values())))
    record_sweep(
        store,
        ['cifar_resnet20_v1'],
        ['none', 'se', 'eca'],
        seeds=seeds,
        metrics=['val_acc', 'train_loss'],
        overhead=False,
        reference='original',
    )
    return store.root


def cell_texts(store_root):
    from reports import load_trials
    from reports.reference import load_reference
    from reports.store import load_manifest, split_by_sweep
    from reports.table import table_context

    manifest = load_manifest(store_root)
    current, _ = split_by_sweep(load_trials(store_root, manifest), manifest)
    context = table_context(
        current,
        ['cifar_resnet20_v1'],
        ['none', 'se', 'eca'],
        metrics=['val_acc', 'train_loss'],
        reference=load_reference('original'),
    )
    names = [f'{a} {m}' for a in ('none', 'se', 'eca') for m in ('val_acc', 'train_loss')]
    return context, dict(zip(names, context['rows'][0]['cells']))


def test_differences_to_the_published_values_and_their_marks(tmp_path):
    # Published: vanilla 0.9171 / 0.0344, ECA 0.9189 / 0.0302, SE left TBA.
    root = reference_store(
        tmp_path,
        {
            'none': [0.9171, 0.9181, 0.9176],
            'se': [0.9300, 0.9310, 0.9305],
            'eca': [0.9000, 0.9010, 0.9005],
        },
        {'none': [0.030, 0.031, 0.032], 'se': [0.030, 0.031, 0.032], 'eca': [0.029, 0.031, 0.0306]},
    )
    context, cells = cell_texts(root)
    assert cells['none val_acc']['reference'] == 'orig 0.9171'
    assert cells['none val_acc']['delta'] == '+0.05 pt'  # 0.9176 - 0.9171
    assert not cells['none val_acc']['beyond_reference']  # 0.05 pt < 2 SE (0.058 pt)
    assert cells['eca val_acc']['delta'] == '-1.84 pt'  # 0.9005 - 0.9189
    assert cells['eca val_acc']['beyond_reference']
    assert cells['none train_loss']['delta'] == '-0.0034'  # 0.031 - 0.0344
    assert cells['none train_loss']['beyond_reference']  # 2 SE = 0.0012
    assert cells['eca train_loss']['delta'] == '+0.0000'  # 0.0302 - 0.0302
    assert not cells['eca train_loss']['beyond_reference']
    assert cells['se val_acc']['reference'] == 'orig TBA' and cells['se val_acc']['delta'] is None
    # Against vanilla: SE (+1.3 pt, spread 0.05) and ECA (-1.7 pt) differ; vanilla is the base.
    assert cells['se val_acc']['beyond_vanilla'] and cells['eca val_acc']['beyond_vanilla']
    assert not cells['none val_acc']['beyond_vanilla']
    assert not cells['se train_loss']['beyond_vanilla']  # identical losses
    verdicts = {(r['attention'], r['metric']): r for r in context['reference_rows']}
    assert verdicts[('eca', 'val acc')]['two_se'] == '0.06 pt'


def test_marks_follow_the_rule_and_one_seed_judges_nothing(tmp_path, capsys):
    from reports import render_all

    close = reference_store(
        tmp_path / 'close', {'none': [0.91, 0.93], 'se': [0.92, 0.94], 'eca': [0.90, 0.94]}
    )
    _, cells = cell_texts(close)
    assert not any(cell['beyond_vanilla'] for cell in cells.values())  # within spread
    single = reference_store(tmp_path / 'single', {'none': [0.91], 'se': [0.99], 'eca': [0.80]})
    context, cells = cell_texts(single)
    assert not any(cell['beyond_vanilla'] or cell['beyond_reference'] for cell in cells.values())
    assert cells['eca val_acc']['delta'] == '-11.89 pt' and cells['eca val_acc']['two_se'] is None
    readme = tmp_path / 'README.md'
    readme.write_text('x\n')
    render_all(single, readme=readme, insert=True)
    text = readme.read_text()
    assert (
        'One seed per cell: no difference between cells, or from the published values, '
        'can be judged against seed spread' in text
    )
    assert '<sub>orig 0.9189 (-11.89 pt)</sub>' in text
    render_all(close, readme=readme)
    text = readme.read_text()
    assert "†: this attention's mean and vanilla's are more than 2 standard errors" in text
    assert '*: our mean is more than 2 standard errors of our mean from the published' in text


def test_the_published_table_renders_before_anything_is_trained(tmp_path, capsys):
    """--report-only with no CIFAR-10 here and an empty store: the original's numbers
    under cells not trained yet, from the shipped data alone."""
    import textwrap

    import run_sweep

    readme = tmp_path / 'README.md'
    readme.write_text(
        '# x\n<!-- results:begin (written by run_sweep.py; edits inside are '
        'overwritten) -->\n<!-- results:end -->\n'
    )
    (tmp_path / 'sweep.yaml').write_text(
        textwrap.dedent(f"""\
        name: original-table
        models: [cifar_resnet20_v1, cifar_resnet56_v2]
        attentions: [none, se, eca]
        data: {{dataset: cifar10, root: {tmp_path / 'no-data'}, download: false}}
        outputs: {{results: results, readme: README.md, figures: figures, report: report.html}}
        report: {{metrics: [val_acc, train_loss], reference: original}}
        """)
    )
    assert run_sweep.main(['--config', str(tmp_path / 'sweep.yaml'), '--report-only']) == 0
    assert 'showing the published original table' in capsys.readouterr().out
    text = readme.read_text()
    assert 'Not reproduced yet' in text and '0 of 6 trials finished' in text
    assert 'TBA<br><sub>orig 0.9165</sub>' in text  # ResNet-56 v2 vanilla accuracy
    assert 'TBA<br><sub>orig TBA</sub>' in text  # SE: the original left it out
    assert 'mnikitin/channel-attention' in text
    assert not (tmp_path / 'results' / 'original-table' / 'sweep.json').exists()
    report = (tmp_path / 'report.html').read_text()
    assert 'Against the published table (original)' in report and 'not trained yet' in report
    # The folder it leaves is this sweep's store to a later run (found on a fresh clone:
    # the next dry run refused it as not a store).
    capsys.readouterr()
    assert run_sweep.main(['--config', str(tmp_path / 'sweep.yaml'), '--dry-run']) == 0
    assert '6 trials: 0 done' in capsys.readouterr().out
