"""Differences between cells judged by Welch's t-test (reports.significance), in the table's
marks and between two stores (reports.compare)."""

import math

import numpy as np
import pytest

from bench.store import ResultsStore
from reports.compare import compare_stores, format_comparison, main, setting_differences
from reports.significance import ALPHA, MIN_SEEDS, difference, difference_from_value

from .store_helpers import add_trial, record_sweep


def welch_by_hand(a, b):
    """Welch's t, degrees of freedom, two-sided p and 95 % interval of mean(b) - mean(a),
    from the textbook formulas (scipy only for the t distribution's quantiles)."""
    from scipy.stats import t as student

    var_a, var_b = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    gap, error = np.mean(b) - np.mean(a), math.sqrt(var_a + var_b)
    dof = (var_a + var_b) ** 2 / (var_a**2 / (len(a) - 1) + var_b**2 / (len(b) - 1))
    p = 2 * student.sf(abs(gap / error), dof)
    half = student.ppf(0.975, dof) * error
    return dof, p, (gap - half, gap + half)


def test_differences_are_judged_by_welchs_t_test_with_three_seeds_or_more():
    a, b = [0.90, 0.92, 0.91, 0.905], [0.91, 0.93, 0.90]
    same = difference(a, b)
    dof, p, interval = welch_by_hand(a, b)
    assert same.dof == pytest.approx(dof) and same.p == pytest.approx(p)
    assert same.ci == pytest.approx(interval)
    assert same.judged and not same.significant and same.p > ALPHA
    assert same.difference == pytest.approx(np.mean(b) - np.mean(a))
    apart = difference([0.90, 0.91, 0.90], [0.95, 0.96, 0.95])
    assert apart.significant and apart.p < ALPHA and apart.difference == pytest.approx(0.05)
    assert apart.ci[0] > 0
    # Two seeds: the test is computed (one degree of freedom or so), but never judged.
    two = difference([0.90, 0.91], [0.95, 0.96])
    assert two.p is not None and not two.judged and not two.significant and MIN_SEEDS == 3
    single = difference([0.90], [0.99])
    assert not single.judged and single.p is None and single.ci is None
    flat = difference([0.9, 0.9, 0.9], [0.95, 0.95, 0.95])  # no spread: no test
    assert flat.p is None and not flat.significant
    with pytest.raises(ValueError):
        difference([], [0.5])


def test_a_difference_from_a_published_value_is_the_one_sample_t_test():
    from scipy import stats

    ours = [0.9176, 0.9181, 0.9171, 0.9190]
    gap = difference_from_value(ours, 0.9171)
    expected = stats.ttest_1samp(ours, 0.9171)
    assert gap.p == pytest.approx(expected.pvalue) and gap.dof == len(ours) - 1
    low, high = expected.confidence_interval(0.95)
    assert gap.ci == pytest.approx((low - 0.9171, high - 0.9171))
    assert gap.judged and gap.n == (4,)


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
    assert not rows['none', 'val_acc']['significant']
    assert rows['se', 'val_acc']['significant']
    assert rows['se', 'val_acc']['p'] == pytest.approx(
        welch_by_hand([0.90, 0.91, 0.90], [0.95, 0.96, 0.95])[1]
    )
    text = format_comparison(list(rows.values()), 'gluon', 'torch')
    assert "1 of 2 judged comparisons differ; the rule: Welch's t-test" in text
    assert main([str(gluon), str(torch), '--metrics', 'val_acc']) == 0
    out = capsys.readouterr().out
    assert 'no significant difference' in out and ' differ' in out and 'p = 0.' in out
    # What else the two sweeps trained differently is said before any difference.
    assert out.startswith('trained differently (gluon | torch): recipe.backend: "gluon" | "torch"')
    assert setting_differences(gluon, gluon) == []
    assert main([str(gluon), str(gluon / '..' / 'gluon')]) == 2
    assert 'are the same store' in capsys.readouterr().err
    (tmp_path / 'empty').mkdir()
    assert main([str(gluon), str(tmp_path / 'empty')]) == 2
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
    assert cells['none val_acc']['reference'] == 'orig 91.71'
    assert cells['none val_acc']['delta'] == '+0.05 pt'  # 0.9176 - 0.9171
    assert not cells['none val_acc']['beyond_reference']  # p = 0.23
    assert cells['eca val_acc']['delta'] == '-1.84 pt'  # 0.9005 - 0.9189
    assert cells['eca val_acc']['beyond_reference']
    assert cells['none train_loss']['delta'] == '-0.0034'  # 0.031 - 0.0344
    assert cells['none train_loss']['beyond_reference']  # p = 0.028
    assert cells['eca train_loss']['delta'] == '+0.0000'  # 0.0302 - 0.0302
    assert not cells['eca train_loss']['beyond_reference']
    assert cells['se val_acc']['reference'] == 'orig TBA' and cells['se val_acc']['delta'] is None
    # Against vanilla: SE (+1.3 pt) and ECA (-1.7 pt) differ; vanilla is the base.
    assert cells['se val_acc']['beyond_vanilla'] and cells['eca val_acc']['beyond_vanilla']
    assert not cells['none val_acc']['beyond_vanilla']
    assert not cells['se train_loss']['beyond_vanilla']  # identical losses
    # Bold only where the best is apart from every other cell: SE's accuracy is; no loss is.
    assert cells['se val_acc']['bold'] and not cells['none val_acc']['bold']
    assert not any(cells[f'{a} train_loss']['bold'] for a in ('none', 'se', 'eca'))
    verdicts = {(r['attention'], r['metric']): r for r in context['reference_rows']}
    from scipy import stats

    expected = stats.ttest_1samp([0.9000, 0.9010, 0.9005], 0.9189)
    low, high = (100 * (x - 0.9189) for x in expected.confidence_interval(0.95))
    assert verdicts[('eca', 'val acc')]['ci'] == f'[{low:+.2f}, {high:+.2f}] pt'
    assert verdicts[('eca', 'val acc')]['p'] == 'p < 0.001'
    assert (
        verdicts[('none', 'val acc')]['p']
        == f'p = {stats.ttest_1samp([0.9171, 0.9181, 0.9176], 0.9171).pvalue:.3f}'
    )


def test_marks_follow_the_rule_and_fewer_than_three_seeds_judge_nothing(tmp_path, capsys):
    from reports import render_all

    close = reference_store(
        tmp_path / 'close',
        {'none': [0.91, 0.93, 0.92], 'se': [0.92, 0.94, 0.925], 'eca': [0.90, 0.94, 0.93]},
    )
    _, cells = cell_texts(close)
    assert not any(cell['beyond_vanilla'] or cell['bold'] for cell in cells.values())
    # Two seeds, far apart: still not judged (about one degree of freedom).
    two = reference_store(
        tmp_path / 'two', {'none': [0.91, 0.92], 'se': [0.99, 0.995], 'eca': [0.5, 0.51]}
    )
    _, cells = cell_texts(two)
    assert not any(
        c['beyond_vanilla'] or c['bold'] or c['beyond_reference'] for c in cells.values()
    )
    single = reference_store(tmp_path / 'single', {'none': [0.91], 'se': [0.99], 'eca': [0.80]})
    context, cells = cell_texts(single)
    assert not any(cell['beyond_vanilla'] or cell['beyond_reference'] for cell in cells.values())
    assert cells['eca val_acc']['delta'] == '-11.89 pt' and cells['eca val_acc']['ci'] is None
    readme = tmp_path / 'README.md'
    readme.write_text('x\n')
    render_all(single, readme=readme, insert=True)
    text = readme.read_text()
    assert (
        'Fewer than 3 seeds per cell: no difference between cells, or from the published '
        'values, is judged (train 3 seeds or more to judge), so nothing is marked' in text
    )
    assert '<sub>orig 91.89 (-11.89 pt)</sub>' in text
    readme = tmp_path / 'close.md'
    render_all(close, readme=readme, insert=True)
    text = readme.read_text()
    # (Markdown-escaped: \\< and \\*)
    assert (
        '†: differs from vanilla and bold: better than every other cell of the row, by '
        "Welch's t-test on the cells' seeds, p \\< 0.05 (two-sided); cells with fewer than "
        '3 seeds are not judged' in text
    )
    assert '\\*: differs from the published value by the one-sample t-test of our seeds' in text


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
    assert 'TBA<br><sub>orig 91.65</sub>' in text  # ResNet-56 v2 vanilla accuracy
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
