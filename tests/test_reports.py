"""Reports from a fixture store holding the original table's published numbers."""

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from bench.store import ResultsStore
from bench.trial.recipe import Recipe, TrialSpec
from reports import BEGIN, END, ReportError, inject_block, load_trials, render_all
from reports.figures import curves_figure
from reports.table import table_context

from .store_helpers import IDENTITY, add_trial, record_sweep

MODELS = ['cifar_resnet20_v1', 'cifar_resnet20_v2', 'cifar_resnet56_v1', 'cifar_resnet56_v2']
ATTENTIONS = ['none', 'se', 'eca', 'gct']
# The original README's table: (loss, acc) per model for Vanilla and ECA; SE and GCT were TBA.
# Its "loss" was the last epoch's training loss, its "acc" the test accuracy.
ORIGINAL = {
    ('cifar_resnet20_v1', 'none'): (0.0344, 0.9171),
    ('cifar_resnet20_v1', 'eca'): (0.0302, 0.9189),
    ('cifar_resnet20_v2', 'none'): (0.1088, 0.9133),
    ('cifar_resnet20_v2', 'eca'): (0.0328, 0.9194),
    ('cifar_resnet56_v1', 'none'): (0.0431, 0.9154),
    ('cifar_resnet56_v1', 'eca'): (0.0170, 0.9243),
    ('cifar_resnet56_v2', 'none'): (0.0629, 0.9165),
    ('cifar_resnet56_v2', 'eca'): (0.0235, 0.9218),
}


@pytest.fixture
def original_store(tmp_path):
    store = ResultsStore(tmp_path / 'results' / 'original-table')
    for (model, attention), (loss, acc) in ORIGINAL.items():
        add_trial(store, model, attention, 0, loss, acc)
    for model in MODELS:  # SE and GCT planned but never trained: TBA
        add_trial(store, model, 'se', 0)
        add_trial(store, model, 'gct', 0)
    record_sweep(store, MODELS, ATTENTIONS)
    return store.root


class TableGrid(HTMLParser):
    """Cells of every <tr> as text, and whether the tags balance."""

    VOID = {'br', 'img', 'meta', 'link', 'hr', 'input'}

    def __init__(self, text):
        super().__init__()
        self.rows, self.stack, self.errors, self.text = [], [], [], []
        self.tables = []  # each table's rows, in document order
        self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == 'table':
            self.tables.append([])
        elif tag == 'tr':
            self.rows.append([])
            if self.tables:
                self.tables[-1].append(self.rows[-1])
        elif tag in ('td', 'th'):
            self._cell = ''

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f'stray </{tag}> with open {self.stack[-3:]}')
            return
        self.stack.pop()
        if tag in ('td', 'th'):
            self.rows[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell += data


def render_table(store_dir, tmp_path, metrics=('train_loss', 'val_acc'), overhead=False):
    readme = tmp_path / 'README.md'
    readme.write_text(f'# title\n\n{BEGIN}\n{END}\n\ntail\n')
    render_all(
        store_dir,
        readme=readme,
        figures_dir=tmp_path / 'figures',
        options={'metrics': list(metrics), 'overhead': overhead},
        layout={'models': MODELS, 'attentions': ATTENTIONS},
        figures=False,  # the tables are under test; drawing takes seconds
    )
    return readme.read_text()


def test_readme_table_has_the_original_cells_in_the_original_places(original_store, tmp_path):
    text = render_table(original_store, tmp_path)
    grid = TableGrid(text[text.index('<table>') : text.index('</table>') + 8])
    assert grid.errors == [] and grid.stack == []
    assert grid.rows[0] == ['Model', 'Vanilla', 'SE', 'ECA', 'GCT']
    assert grid.rows[1] == ['train loss', 'val acc (%)'] * 4
    for row, model in zip(grid.rows[2:], MODELS):
        assert row[0] == model
        expected = []
        vanilla_acc = ORIGINAL[(model, 'none')][1]
        for attention in ATTENTIONS:
            loss_acc = ORIGINAL.get((model, attention))
            if not loss_acc:
                expected += ['TBA'] * 2
                continue
            # Accuracy in percent; an attention's with its difference to vanilla's below.
            accuracy = f'{100 * loss_acc[1]:.2f}'
            if attention != 'none':
                accuracy += f'Δ {100 * (loss_acc[1] - vanilla_acc):+.2f} pt'
            expected += [f'{loss_acc[0]:.4f}', accuracy]
        assert row[1:] == expected
    assert len(grid.rows) == 2 + len(MODELS)


def test_one_seed_marks_no_best_and_columns_say_what_they_are(original_store, tmp_path):
    text = render_table(original_store, tmp_path, metrics=('val_loss', 'val_acc', 'train_loss'))
    assert '<th align="center">val loss</th>' in text
    # ECA has the better accuracy and the lower train loss in every row of the original,
    # but one run per cell cannot tell that from seed noise: nothing is bold.
    assert '<b>' not in text
    assert 'CIFAR-10 test set' in text
    assert 'what the original table called loss' in text


def test_multi_seed_cells_show_mean_std_and_n(tmp_path):
    store = ResultsStore(tmp_path / 'store')
    for seed, acc in enumerate((0.90, 0.92, 0.94)):
        add_trial(store, 'cifar_resnet20_v1', 'eca', seed, 0.03, acc)
    add_trial(store, 'cifar_resnet20_v1', 'none', 0, 0.04, 0.91)
    add_trial(store, 'cifar_resnet20_v1', 'none', 1, 0.05, 0.5, finished=False)  # partial
    trials = load_trials(store.root)
    context = table_context(trials, metrics=('val_acc',))
    cells = [c['text'] for c in context['rows'][0]['cells']]
    # Percent; the seed count said in a cell only where it is not the table's (3 here).
    assert cells == ['91.00 (n=1)', '92.00 ± 2.00']
    # Vanilla has one seed: nothing is judged, nothing is bold.
    assert [c['bold'] for c in context['rows'][0]['cells']] == [False, False]
    assert context['seeds'] == [0, 1, 2] and context['finished'] == 4 and context['total'] == 5


def test_best_is_bold_only_where_it_is_significantly_best(tmp_path):
    store = ResultsStore(tmp_path / 'store')
    accuracies = {
        'none': (0.900, 0.905, 0.902),
        'se': (0.930, 0.931, 0.929),  # apart from vanilla, but not from GCT
        'gct': (0.925, 0.935, 0.931),
        'eca': (0.850, 0.851, 0.852),
    }
    for attention, values in accuracies.items():
        for seed, acc in enumerate(values):
            add_trial(store, 'cifar_resnet20_v1', attention, seed, 1 - acc, acc)
    trials = load_trials(store.root)
    context = table_context(trials, attentions=['none', 'se', 'eca', 'gct'], metrics=('val_acc',))
    assert [c['bold'] for c in context['rows'][0]['cells']] == [False] * 4
    assert [c['beyond_vanilla'] for c in context['rows'][0]['cells']] == [False, True, True, True]
    # Without GCT, SE is apart from every other cell: bold.
    context = table_context(trials, attentions=['none', 'se', 'eca'], metrics=('val_acc',))
    assert [c['bold'] for c in context['rows'][0]['cells']] == [False, True, False]


def test_params_and_macs_overhead_columns(original_store, tmp_path):
    text = render_table(original_store, tmp_path, metrics=('val_acc',), overhead=True)
    results, cost = TableGrid(text).tables[:2]
    assert results[1] == ['val acc (%)'] * 4  # the results table: metrics only
    # The cost table, apart: per attention its params, MACs and measured speed.
    assert cost[0] == ['Cost', 'Vanilla', 'SE', 'ECA', 'GCT']
    assert cost[1] == ['params', 'MACs', 'speed'] * 4
    vanilla, se, eca, gct = (cost[2][1 + 3 * i : 4 + 3 * i] for i in range(4))
    assert vanilla[:2] == ['272.47K', '40.81M']
    assert se[:2] == ['+2.02K (0.74%)', '+174.05K (0.43%)']
    assert eca[:2] == ['+27 (0.01%)', '+173.04K (0.42%)']
    assert gct == ['+1.01K (0.37%)', '+172.03K (0.42%)', '-']
    assert 'MACs: convolutions and dense layers, plus each attention' in text


def test_injection_is_idempotent_and_preserves_the_rest_byte_for_byte(original_store, tmp_path):
    readme = tmp_path / 'README.md'
    head = '# Project\r\n\r\nSome   text with  odd spacing\t and CRLF.\r\n\r\n'
    tail = '\r\n## After\r\nno trailing newline'
    readme.write_bytes((head + BEGIN + '\r\nold table\r\n' + END + tail).encode())
    render_all(original_store, readme=readme, figures_dir=tmp_path / 'f')
    once = readme.read_bytes()
    assert once.startswith(head.encode()) and once.endswith((END + tail).encode())
    assert b'old table' not in once and b'<table>' in once and b'f/speed.png' in once
    render_all(original_store, readme=readme, figures_dir=tmp_path / 'f')
    assert readme.read_bytes() == once
    assert b'\n' not in once.replace(b'\r\n', b'')  # line endings kept


def test_readme_without_markers_gets_a_clear_message_or_an_appended_block(original_store, tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text('# Project\n')
    with pytest.raises(ReportError, match='(?s)no results markers.*--insert'):
        render_all(original_store, readme=readme, figures_dir=tmp_path / 'f', figures=False)
    assert readme.read_text() == '# Project\n'
    render_all(
        original_store, readme=readme, figures_dir=tmp_path / 'f', insert=True, figures=False
    )
    text = readme.read_text()
    begin = BEGIN.replace('run_sweep.py;', 'run_sweep.py from the store results/original-table;')
    assert text.startswith(f'# Project\n\n{begin}\n') and text.rstrip().endswith(END)
    with pytest.raises(ReportError, match='only one of the two'):
        inject_block(f'x\n{BEGIN}\n', 'block')


def test_figures_exist_with_one_line_per_attention(original_store, tmp_path):
    written = render_all(original_store, figures_dir=tmp_path / 'figures')
    names = sorted(p.name for p in written if p.suffix == '.png')
    assert names == sorted(
        [f'curves_{m}.png' for m in MODELS]
        + ['final_accuracy.png', 'accuracy_vs_cost.png', 'speed.png']
    )
    assert all(p.stat().st_size > 10_000 for p in written if p.suffix == '.png')
    from reports import load_histories

    histories = load_histories(original_store)
    figure = curves_figure(histories, 'cifar_resnet20_v1')
    accuracy_axis, loss_axis = figure.axes[:2]
    # Per attention a validation line (solid, in the legend) and a training line (dashed).
    labels = [line.get_label() for line in accuracy_axis.lines]
    assert labels == ['Vanilla', '_train', 'ECA', '_train']
    assert [line.get_linestyle() for line in loss_axis.lines] == ['-', '--'] * 2
    # The plotted data are the store's epochs.
    vanilla = histories[
        (histories['model'] == 'cifar_resnet20_v1') & (histories['attention'] == 'none')
    ]
    val, train = accuracy_axis.lines[:2]
    assert list(val.get_ydata()) == pytest.approx(list(100 * vanilla['val_acc']))
    assert list(train.get_ydata()) == pytest.approx(list(100 * vanilla['train_acc']))
    assert accuracy_axis.get_ylabel().startswith('accuracy (%)')
    assert list(loss_axis.lines[1].get_ydata()) == list(vanilla['train_loss'])
    assert accuracy_axis.get_xlabel() == 'epoch' and accuracy_axis.get_ylabel()
    assert accuracy_axis.get_title().startswith('accuracy axis from ')
    assert 'cifar_resnet20_v1' in figure._suptitle.get_text()


def test_html_report_is_valid_and_self_contained(original_store, tmp_path):
    (original_store / 'environment.json').write_text(
        json.dumps({'packages': {'mxnet': '1.9.1'}, 'git_commit': 'abc123', 'devices': 'cpu'})
    )
    report = tmp_path / 'report.html'
    render_all(original_store, figures_dir=tmp_path / 'f', report_path=report)
    html = report.read_text()
    grid = TableGrid(html)
    assert grid.errors == [] and grid.stack == []
    # A curves figure per model; final accuracy, accuracy against cost, speed.
    assert html.count('src="data:image/png;base64,') == len(MODELS) + 3
    assert 'src="http' not in html and 'href=' not in html
    # The results table is a table element with the numbers in its cells, and no
    # markup shows as text anywhere on the page.
    results = grid.tables[0]
    assert results[0] == ['Model', 'Vanilla', 'SE', 'ECA', 'GCT']
    assert [row[0] for row in results[2:]] == MODELS
    assert results[2][2] == f'{100 * ORIGINAL[("cifar_resnet20_v1", "none")][1]:.2f}'
    text = ''.join(grid.text)
    assert '<table' not in text and '<td' not in text and '</' not in text
    trials = grid.tables[2]
    assert trials[0][:5] == ['trial', 'seed', 'id', 'network rev.', 'status']
    assert trials[0][-2:] == ['device', 'error']  # what each number was trained on
    statuses = [row[4] for row in trials[1:]]
    # In the sweep's matrix order (model, then attention as the sweep lists them), seeds said.
    assert [row[0] for row in trials[1:5]] == [f'cifar_resnet20_v1-{a}-s0' for a in ATTENTIONS]
    assert {row[1] for row in trials[1:]} == {'0'}
    assert statuses.count('done') == 8 and statuses.count('pending') == 8
    assert 'packages.mxnet' in html and '1.9.1' in html and 'abc123' in html


def test_failed_trials_show_their_error_in_the_report(tmp_path):
    store = ResultsStore(tmp_path / 'store')
    add_trial(store, 'cifar_resnet20_v1', 'none', 0, 0.04, 0.91)
    add_trial(
        store,
        'cifar_resnet20_v1',
        'se',
        0,
        0.04,
        0.91,
        error='Traceback...\nTrainingDiverged: loss was nan at epoch 2, batch 7',
    )
    record_sweep(store, ['cifar_resnet20_v1'], ['none', 'se'])
    trials = load_trials(store.root)
    assert trials.set_index('attention').loc['se', 'status'] == 'failed'
    report = tmp_path / 'r.html'
    render_all(store.root, figures_dir=tmp_path / 'f', report_path=report)
    assert 'loss was nan at epoch 2, batch 7' in report.read_text()
    # The table says the cell failed, not that it is still to be trained.
    readme = tmp_path / 'README.md'
    render_all(store.root, readme=readme, figures_dir=tmp_path / 'f', insert=True)
    results_row = TableGrid(readme.read_text()).tables[0][-1]
    assert results_row[0] == 'cifar_resnet20_v1' and float(results_row[1]) > 0
    assert results_row[3:] == ['failed', 'failed']  # each metric of the failed cell
    assert 'TBA' not in readme.read_text()
    assert '1 of 2 trials finished, 1 failed.' in readme.read_text()
    assert 'Failed: every trial of the cell failed; report.html lists their errors' in (
        readme.read_text()
    )
    # pandas 3 reads a text column's missing values as NaN, not None: still no error.
    from reports import _trial_rows

    trials['error'] = [float('nan') if e is None else e for e in trials['error']]
    errors = {row['attention']: row['error'] for row in _trial_rows(trials)}
    assert errors == {'none': '', 'se': 'TrainingDiverged: loss was nan at epoch 2, batch 7'}


def test_a_store_without_its_sweep_record_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match=r'(?s)sweep\.json is missing.*--report-only'):
        render_all(tmp_path)


def test_report_commands_need_neither_ray_nor_mxnet(original_store, tmp_path):
    sweep = tmp_path / 'sweep.yaml'
    sweep.write_text(
        'name: original-table\nmodels: [cifar_resnet20_v1, cifar_resnet56_v1]\n'
        'attentions: [none, se, eca, gct]\nrecipe: {epochs: 3}\n'
        f'outputs: {{results: {original_store.parent}, readme: README.md, figures: figs, '
        'report: report.html}\n'
    )
    (tmp_path / 'README.md').write_text(f'intro\n{BEGIN}\n{END}\n')
    root = Path(__file__).resolve().parents[1]
    # `python -m reports` reads files only; run_sweep.py --report-only also validates
    # sweep.yaml (names from models.names, no MXNet) and starts no Ray.
    code = (
        'import sys\n'
        'import reports.__main__ as cli\n'
        f'code = cli.main([{str(original_store)!r}, "--report", '
        f'{str(tmp_path / "r2.html")!r}])\n'
        'assert "ray" not in sys.modules and "mxnet" not in sys.modules, "reports import"\n'
        'import run_sweep\n'
        f'code += run_sweep.main(["--config", {str(sweep)!r}, "--report-only"])\n'
        'assert "ray" not in sys.modules and "mxnet" not in sys.modules, "run_sweep"\n'
        'sys.exit(code)\n'
    )
    done = subprocess.run(
        [sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert '<table>' in (tmp_path / 'README.md').read_text()
    assert (tmp_path / 'figs' / 'final_accuracy.png').is_file()
    assert (tmp_path / 'report.html').is_file() and (tmp_path / 'r2.html').is_file()
    readme_rows = TableGrid((tmp_path / 'README.md').read_text()).rows
    assert [row[0] for row in readme_rows[2:4]] == ['cifar_resnet20_v1', 'cifar_resnet56_v1']


def test_only_the_sweeps_trials_enter_the_table_and_figures(tmp_path):
    """After `epochs: 3` became `epochs: 2`, the 3-epoch results are neither averaged in
    nor counted: they are listed apart, with what separates them from the sweep."""
    store = ResultsStore(tmp_path / 'results' / 'demo')
    for attention, acc in (('none', 0.50), ('se', 0.60)):
        add_trial(store, 'cifar_resnet20_v1', attention, 0, 0.3, acc, epochs=3)
    add_trial(store, 'cifar_resnet20_v1', 'none', 0, 0.4, 0.80, epochs=2)
    record_sweep(
        store, ['cifar_resnet20_v1'], ['none', 'se'], epochs=2, metrics=['val_acc'], overhead=False
    )
    readme, report = tmp_path / 'README.md', tmp_path / 'report.html'
    figures = tmp_path / 'figures'
    render_all(store.root, readme=readme, figures_dir=figures, report_path=report)
    table = TableGrid(readme.read_text()).rows
    assert table[2] == ['cifar_resnet20_v1', '80.00', 'TBA']
    assert '1 of 2 trials finished' in readme.read_text()
    grid = TableGrid(report.read_text())
    others = grid.tables[2]
    assert others[0][-1] == 'why it is not current'
    assert sorted(row[0] for row in others[1:]) == [
        'cifar_resnet20_v1-none-s0',
        'cifar_resnet20_v1-se-s0',
    ]
    assert all(row[-1] == 'recipe differs: epochs 3 (sweep: 2)' for row in others[1:])
    from reports import load_histories, load_manifest, split_by_sweep

    current, _ = split_by_sweep(load_trials(store.root), load_manifest(store.root))
    curves = curves_figure(load_histories(store.root, current), 'cifar_resnet20_v1')
    vanilla_line = curves.axes[0].lines[0]
    assert list(vanilla_line.get_xdata()) == [1, 2]  # the 2-epoch trial alone


def test_a_trial_of_an_older_network_definition_is_not_current(tmp_path):
    store = ResultsStore(tmp_path / 'results' / 't')
    spec = TrialSpec('cifar_resnet20_v2', 'none', 0, Recipe(epochs=3))
    # What the previous definition of v2 stored: no revision in its id or its spec.
    store.write_spec('68128bc50c3e', spec.name, spec.to_dict(), IDENTITY, 1)
    rows = [
        {
            'epoch': 1,
            'lr': 0.003,
            'train_loss': 0.1,
            'train_acc': 0.9,
            'val_loss': 0.2,
            'val_acc': 0.95,
            'epoch_seconds': 1.0,
            'train_seconds': 1.0,
            'images_per_second': 1.0,
        }
    ]
    store.record_epoch('68128bc50c3e', rows[0])
    store.write_final('68128bc50c3e', dict(rows[0], epochs=3, total_seconds=1.0))
    record_sweep(
        store,
        ['cifar_resnet20_v2'],
        ['none'],
        metrics=['val_loss', 'val_acc', 'train_loss'],
        overhead=False,
    )
    readme, report = tmp_path / 'README.md', tmp_path / 'report.html'
    render_all(store.root, readme=readme, figures_dir=tmp_path / 'f', report_path=report)
    assert TableGrid(readme.read_text()).rows[2][1:] == ['TBA', 'TBA', 'TBA']
    assert '0 of 1 trials finished' in readme.read_text()
    assert 'TBA: not trained yet' in readme.read_text()  # said where a cell shows it
    assert 'Network definitions: v2 revision 2' in readme.read_text()
    (other,) = TableGrid(report.read_text()).tables[2][1:]
    assert other[1] == '68128bc50c3e'
    assert other[-1] == 'trained by network definition revision 1 (now 2)'
    assert not (tmp_path / 'f' / 'curves_cifar_resnet20_v2.png').exists()


def test_one_seed_draws_no_error_bars_and_says_n_1(original_store, tmp_path):
    from reports import load_manifest, split_by_sweep
    from reports.figures import accuracy_bars_figure

    trials, _ = split_by_sweep(load_trials(original_store), load_manifest(original_store))
    figure = accuracy_bars_figure(trials)
    axis = figure.axes[0]
    assert not [c for c in axis.containers if type(c).__name__ == 'ErrorbarContainer']
    assert 'n=1' in axis.get_title()
    store = ResultsStore(tmp_path / 'two-seeds')
    for seed, acc in ((0, 0.90), (1, 0.92)):
        add_trial(store, 'cifar_resnet20_v1', 'none', seed, 0.03, acc)
    record_sweep(store, ['cifar_resnet20_v1'], ['none'], seeds=(0, 1))
    trials, _ = split_by_sweep(load_trials(store.root), load_manifest(store.root))
    axis = accuracy_bars_figure(trials).axes[0]
    (bars,) = [c for c in axis.containers if type(c).__name__ == 'ErrorbarContainer']
    assert 'error bars: std over seeds' in axis.get_title() and 'n=2' in axis.get_title()
    # In percent, as the tables: the mean of 90 % and 92 %.
    assert [patch.get_height() for patch in axis.patches] == pytest.approx([91.0])
    assert axis.get_ylim()[1] == 100.0 and axis.get_title().startswith('Final validation')


def test_figures_of_trials_no_longer_in_the_sweep_are_removed(original_store, tmp_path):
    figures = tmp_path / 'figures'
    render_all(original_store, figures_dir=figures)
    assert (figures / 'curves_cifar_resnet56_v2.png').is_file()
    (figures / 'notes.png').write_bytes(b'not ours')
    store = ResultsStore(original_store)
    record_sweep(store, ['cifar_resnet20_v1'], ATTENTIONS)
    render_all(original_store, figures_dir=figures)
    assert sorted(p.name for p in figures.iterdir()) == [
        'accuracy_vs_cost.png',
        'curves_cifar_resnet20_v1.png',
        'final_accuracy.png',
        'notes.png',
        'speed.png',
    ]


def three_seed_store(tmp_path, devices=None):
    """cifar_resnet20_v1 x (none, se, eca) x 3 seeds: SE clearly above vanilla; each
    trial's speed and device kind as given (attention -> (images/s, device))."""
    store = ResultsStore(tmp_path / 'results' / 'three')
    accuracies = {
        'none': (0.900, 0.905, 0.902),
        'se': (0.930, 0.931, 0.929),
        'eca': (0.901, 0.899, 0.906),
    }
    for attention, values in accuracies.items():
        for seed, acc in enumerate(values):
            tid = add_trial(store, 'cifar_resnet20_v1', attention, seed, 0.05, acc)
            speed, device = (devices or {}).get(attention, (5000.0, 'cpu: x'))
            rows = store.read_history(tid)
            for row in rows:
                store.record_epoch(tid, dict(row, images_per_second=speed + row['epoch']))
            store.write_final(tid, dict(rows[-1], epochs=3, total_seconds=30.0, device_kind=device))
    record_sweep(store, ['cifar_resnet20_v1'], list(accuracies), seeds=[0, 1, 2])
    return store, accuracies


def test_cells_csv_holds_each_cells_statistics_as_scipy_computes_them(tmp_path):
    import pandas as pd
    from scipy import stats

    store, accuracies = three_seed_store(tmp_path)
    written = render_all(store.root, figures_dir=tmp_path / 'figures', figures=False)
    assert not (tmp_path / 'figures').exists() and all(p.suffix != '.png' for p in written)
    cells = pd.read_csv(store.root / 'cells.csv', comment='#')
    se = cells[(cells['attention'] == 'se') & (cells['metric'] == 'val_acc')].iloc[0]
    expected = stats.ttest_ind(accuracies['se'], accuracies['none'], equal_var=False)
    assert se['n'] == 3 and se['p'] == pytest.approx(expected.pvalue)
    assert (se['ci_low'], se['ci_high']) == pytest.approx(tuple(expected.confidence_interval()))
    assert se['significant'] and se['mean'] == pytest.approx(sum(accuracies['se']) / 3)
    eca = cells[(cells['attention'] == 'eca') & (cells['metric'] == 'val_acc')].iloc[0]
    assert not eca['significant'] and eca['p'] > 0.05
    vanilla = cells[(cells['attention'] == 'none') & (cells['metric'] == 'val_acc')].iloc[0]
    assert pd.isna(vanilla['p']) and not vanilla['significant']


def test_table_tex_is_a_booktabs_table_that_compiles(tmp_path):
    import shutil

    store, _ = three_seed_store(tmp_path)
    render_all(store.root, figures_dir=tmp_path / 'figures', figures=False)
    latex = (store.root / 'table.tex').read_text()
    body = latex[latex.index(r'\begin{tabular}') : latex.index(r'\end{tabular}')]
    assert r'\toprule' in body and r'\midrule' in body and r'\bottomrule' in latex
    assert r'cifar\_resnet20\_v1' in body and r'$\pm$' in body and '±' not in latex
    # SE: significantly best of the row (bold) and apart from vanilla (dagger).
    assert r'\textbf{93.00 $\pm$ 0.10$^\dagger$}' in body and r'val acc (\%)' in body
    assert latex.count('{') == latex.count('}')
    assert body.count(r'\\') == 2 + 1  # two header rows, one row per model
    if not shutil.which('pdflatex'):
        pytest.skip('pdflatex is not installed here: the table was checked as text only')
    (tmp_path / 'doc.tex').write_text(
        '\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n'
        + latex
        + '\n\\end{document}\n'
    )
    done = subprocess.run(
        ['pdflatex', '-interaction=nonstopmode', '-halt-on-error', 'doc.tex'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:]


def test_speed_per_cell_against_vanilla_on_the_same_device_only(tmp_path):
    store, _ = three_seed_store(
        tmp_path,
        devices={
            'none': (4000.0, 'cpu: x'),
            'se': (3000.0, 'cpu: x'),
            'eca': (8000.0, 'cuda: H100'),
        },
    )
    report = tmp_path / 'report.html'
    render_all(store.root, figures_dir=tmp_path / 'figures', report_path=report, figures=False)
    cost = TableGrid(report.read_text()).tables[1]
    assert cost[1] == ['params', 'MACs', 'speed'] * 3
    speeds = cost[2][3::3]
    # Median over epochs (images/s + epoch: 1, 2, 3) and seeds.
    assert speeds == ['4,002 img/s', '3,002 img/s (0.75x)', '8,002 img/s (other device)']
    assert 'never compared' in report.read_text()


def test_speed_figure_draws_the_stored_speeds_per_device(tmp_path):
    from reports import load_histories
    from reports.figures import speed_figure

    store, _ = three_seed_store(
        tmp_path,
        devices={
            'none': (4000.0, 'cpu: x'),
            'se': (3000.0, 'cpu: x'),
            'eca': (8000.0, 'cuda: H100'),
        },
    )
    trials = load_trials(store.root)
    figure = speed_figure(trials, load_histories(store.root, trials))
    (axis,) = [a for a in figure.axes if a.get_visible()]
    bars = {patch.get_gid(): patch for patch in axis.patches}
    # Each bar: the median of the cell's epochs (images/s + epoch: 1, 2, 3), from zero,
    # and its ratio only against vanilla on the same device.
    assert {gid: bar.get_width() for gid, bar in bars.items()} == {
        'none|cpu: x': 4002.0,
        'se|cpu: x': 3002.0,
        'eca|cuda: H100': 8002.0,
    }
    assert all(bar.get_x() == 0 for bar in bars.values())
    labels = sorted(text.get_text() for text in axis.texts)
    assert labels == ['3,002  0.75x', '4,002', '8,002']
    assert axis.get_xlim()[0] == 0
    legend = figure.legends[0]
    assert sorted(t.get_text() for t in legend.get_texts()) == ['cpu: x', 'cuda: H100']
    assert [t.get_text() for t in axis.get_yticklabels()] == ['Vanilla', 'SE', 'ECA']


def test_accuracy_against_what_each_attention_adds(tmp_path):
    from reports.figures import accuracy_vs_cost_figure
    from tests.store_helpers import MACS, PARAMS

    store, accuracies = three_seed_store(tmp_path)
    trials = load_trials(store.root)
    figure = accuracy_vs_cost_figure(trials, ['cifar_resnet20_v1'], ['none', 'se', 'eca'])
    params_axis, macs_axis = figure.axes[:2]
    points = {}
    for container in params_axis.containers:
        line = container.lines[0]
        points[container.get_label()] = (line.get_xdata()[0], line.get_ydata()[0])
    for attention, label in (('none', 'Vanilla'), ('se', 'SE'), ('eca', 'ECA')):
        added = 100 * (PARAMS[attention] - PARAMS['none']) / PARAMS['none']
        mean = 100 * sum(accuracies[attention]) / 3
        assert points[label] == pytest.approx((added, mean))
    assert 'MACs added to vanilla (%)' == macs_axis.get_xlabel()
    assert MACS['se'] > MACS['none']
    assert params_axis.get_title().startswith('cifar_resnet20_v1 (accuracy axis from ')


def _environment_part(report):
    """report.html's Environment section: (paragraphs, tables), as text."""
    import html as html_module
    import re

    part = report.read_text().split('<h2>Environment</h2>')[1].split('<h2>Recipe</h2>')[0]
    paragraphs = [html_module.unescape(p) for p in re.findall(r'<p>(.*?)</p>', part, re.S)]
    return paragraphs, TableGrid(part).tables, part


def test_report_shows_the_environment_each_finished_trial_was_trained_with(tmp_path):
    """environment.json is the last run's only: a store's trials may have been finished by
    several runs (another commit, other packages), and each keeps its own."""
    store = ResultsStore(tmp_path / 'store')
    ids = {a: add_trial(store, 'cifar_resnet20_v1', a, 0, 0.04, 0.91) for a in ATTENTIONS[:3]}
    add_trial(store, 'cifar_resnet20_v1', 'gct', 0)  # not trained yet
    record_sweep(store, ['cifar_resnet20_v1'], ATTENTIONS)
    (store.root / 'environment.json').write_text(
        json.dumps({'git_commit': 'c3', 'recorded_at': '2026-12-02T10:00:00+0000'})
    )
    report = tmp_path / 'r.html'

    def trained_with(attention, environment):
        final = store.trial_dir(ids[attention]) / 'final.json'
        final.write_text(json.dumps(dict(json.loads(final.read_text()), environment=environment)))

    def environment_part():
        render_all(store.root, report_path=report, figures=False)
        return _environment_part(report)

    # Trials of an earlier version record none: the last run's is shown, said as such.
    paragraphs, tables, _ = environment_part()
    names = 'cifar_resnet20_v1-none-s0, cifar_resnet20_v1-se-s0, cifar_resnet20_v1-eca-s0'
    assert paragraphs == [
        '3 trials finished by an earlier version, which recorded no environment per trial: '
        + names,
        "The last run's (environment.json, recorded 2026-12-02T10:00:00+0000) (the finished "
        'trials may have been trained with another):',
    ]
    assert ['git_commit', 'c3'] in tables[0]
    caveat = (
        'Each finished trial keeps the environment of the run that finished it (a trial '
        "resumed by a later run: that run's); packages, GPUs and driver are those of the "
        "machine that ran run_sweep.py, each trial's device is in its row above."
    )

    first = {'git_commit': 'c1', 'packages': {'mxnet': '1.9.1'}}
    for attention in ATTENTIONS[:3]:
        trained_with(attention, first)
    paragraphs, tables, _ = environment_part()
    assert paragraphs == [caveat, 'All 3 finished trials shown were trained with:']
    assert tables == [[['git_commit', 'c1'], ['packages.mxnet', '1.9.1']]]

    # One trial finished by a later run, one by an earlier version, one whose record is
    # not what this project writes.
    trained_with('eca', {'git_commit': 'c2', 'devices': '<b>2 CPUs</b>'})
    trained_with('se', None)
    paragraphs, tables, part = environment_part()
    assert paragraphs == [
        caveat,
        '1 finished trial was trained with this: cifar_resnet20_v1-none-s0',
        '1 finished trial was trained with this: cifar_resnet20_v1-eca-s0',
        '1 trial finished by an earlier version, which recorded no environment per trial: '
        'cifar_resnet20_v1-se-s0',
    ]
    assert tables == [
        [['git_commit', 'c1'], ['packages.mxnet', '1.9.1']],
        [['git_commit', 'c2'], ['devices', '<b>2 CPUs</b>']],
    ]
    assert '<b>' not in part  # text, not markup
    trained_with('se', ['c1'])
    trained_with('none', {'git_commit': 'c2', 'devices': '<b>2 CPUs</b>'})
    paragraphs, _, _ = environment_part()
    assert paragraphs[1:] == [
        '2 finished trials were trained with this: cifar_resnet20_v1-none-s0, '
        'cifar_resnet20_v1-eca-s0',
        '1 trial whose final.json holds an environment that is not what this project '
        'writes: cifar_resnet20_v1-se-s0',
    ]

    # Where no run recorded anything, nothing is made up.
    (store.root / 'environment.json').unlink()
    for attention in ATTENTIONS[:3]:
        trained_with(attention, None)
    paragraphs, tables, _ = environment_part()
    assert paragraphs[-1] == 'No run has recorded its environment in this store yet.'
    assert tables == []
    (store.root / 'environment.json').write_text(json.dumps({'recorded_at': 'x' * 10**6}))
    paragraphs, _, _ = environment_part()
    assert len(paragraphs[-1]) < 200  # a crafted file's text is cut
    (store.root / 'environment.json').unlink()

    # A crafted final.json: nested past any reasonable depth, thousands of keys; and a
    # damaged environment.json is named although no trial is shown with it.
    deep = {}
    for _ in range(600):
        deep = {'k': deep}
    trained_with('eca', {'deep': deep, **{f'key{i}': i for i in range(5000)}})
    trained_with('none', first)
    (store.root / 'environment.json').write_text('{"cut')
    paragraphs, tables, _ = environment_part()
    rows = tables[1]
    assert len(rows) == 100 and rows[0][0] == 'deep.k.k.k' and '{...}' in rows[0][1]
    assert rows[-1] == ['...', 'more keys than the 99 listed']
    assert paragraphs[-1].startswith(f'{store.root / "environment.json"}: not valid JSON')
    (store.root / 'environment.json').unlink()
    (store.root / 'environment.json').mkdir()  # not taken for a store no run recorded
    paragraphs, _, _ = environment_part()
    assert paragraphs[-1] == (
        f'{store.root / "environment.json"} is not a file; it is rewritten by the next run '
        'once it is removed'
    )


def test_a_readme_inside_its_store_names_it_in_words_and_older_markers_still_read():
    from reports.readme import begin_marker, block_owner

    here = begin_marker('.')
    assert "from the store . (this README's folder); edits inside" in here
    assert block_owner(here) == '.'
    assert block_owner(begin_marker('results/demo')) == 'results/demo'
    older = '<!-- results:begin (written by run_sweep.py from the store .; edits inside are '
    assert block_owner(older + 'overwritten) -->') == '.'


def test_readme_links_reach_the_figures_whatever_their_folder_is_called(tmp_path):
    """A link's path is percent-encoded as it is: a direction mark or a space in a folder's
    name, taken out as text, would point the link at no file."""
    import re
    from urllib.parse import unquote

    store = ResultsStore(tmp_path / 'store')
    add_trial(store, 'cifar_resnet20_v1', 'none', 0, 0.04, 0.91)
    record_sweep(store, ['cifar_resnet20_v1'], ['none'])
    readme = tmp_path / 'README.md'
    figures = tmp_path / 'results\u200f 2'
    render_all(store.root, readme=readme, figures_dir=figures, insert=True)
    links = re.findall(r'!\[[^\]]*\]\(([^)]+)\)', readme.read_text())
    assert links and all((tmp_path / unquote(link)).is_file() for link in links), links
