"""A careless or hostile user (issue #23): flags that contradict each other, outputs that
point at files that are not ours, crafted files in the store, markup in names. Nothing is
lost, nothing is executed, every case ends in one clear message. No training."""

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

import run_sweep
from bench.store import DONE, PARTIAL, ResultsStore
from bench.sweep.config import load_config
from bench.sweep.plan import load_sweep_data, plan

from .sweep_helpers import write_sweep, write_tiny_data
from .test_store import dry_run, fake_trial, sweep  # noqa: F401  (the fixture)

MARKUP = 'x<img src=x onerror=alert(1)>'


def snapshot(root):
    """Every file and folder under root with its content's hash: what a run changed."""
    root = Path(root)
    return {
        str(p.relative_to(root)): (
            hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else 'dir'
        )
        for p in sorted(root.rglob('*'))
    }


def run(args, capsys):
    capsys.readouterr()
    code = run_sweep.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_dry_run_writes_deletes_and_downloads_nothing_whatever_else_is_on_the_line(
    sweep, tmp_path, capsys, monkeypatch
):
    path, loaded, store, ids = sweep

    def no_network(*args, **kwargs):
        raise AssertionError('a dry run tried to download')

    monkeypatch.setattr('urllib.request.urlopen', no_network)
    monkeypatch.setattr('builtins.input', lambda prompt: 'y')
    before = snapshot(tmp_path)
    for extra in (
        ['--fresh', '--yes'],
        ['--fresh'],
        ['--fresh', '--yes', '--only', 'attention=eca'],
        ['--retry-failed', '--insert'],
        ['--report-only'],
        ['--no-report'],
        ['--fresh', '--yes', '--report-only', '--insert'],
    ):
        code, out, err = run(['--config', str(path), '--dry-run', *extra], capsys)
        assert code in (0, 2), (extra, err)
        assert snapshot(tmp_path) == before, extra
    code, out, err = run(['--config', str(path), '--dry-run', '--fresh', '--yes'], capsys)
    assert code == 0 and 'dry run: nothing was written, deleted or downloaded' in out
    assert f'--fresh would delete 3 path(s):\n  {store.trial_dir(ids["finished"])}' in out
    # The estimate is of what the run would train: both trials again from epoch 1.
    assert '(2 trial(s) to train)' in out and 'nothing left to train' not in out
    code, out, err = run(
        ['--config', str(path), '--dry-run', '--fresh', '--only', 'attention=eca'], capsys
    )
    assert f'--fresh would delete 1 path(s):\n  {store.trial_dir(ids["partial"])}\n' in out


def test_a_dry_run_of_demo_data_that_is_not_written_yet_writes_none_and_plans_the_same(
    tmp_path, capsys
):
    sweep_file = tmp_path / 'demo.yaml'
    sweep_file.write_text(
        'name: d\nmodels: [cifar_resnet8_v1]\nattentions: [none]\n'
        'recipe: {epochs: 1, batch_size: 16}\n'
        'data: {dataset: demo, root: digits}\n'
        'outputs: {readme: null, report: null}\n'
    )
    code, out, err = run(['--config', str(sweep_file), '--dry-run'], capsys)
    assert code == 0, err
    assert f'the demo data is not written yet: a run writes it to {tmp_path / "digits"}' in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['demo.yaml']
    planned_id = re.search(r'cifar_resnet8_v1-none-s0 +(\w{12})', out).group(1)
    loaded = load_config(sweep_file)
    data = load_sweep_data(loaded)  # a run writes the files, then reads them
    assert plan(loaded, data.identity.to_dict())[0].trial_id == planned_id


def test_the_plan_of_official_cifar10_is_shown_without_its_files(tmp_path, capsys, monkeypatch):
    from bench.trial.data import OFFICIAL_DIGEST, official_identity

    monkeypatch.setattr('urllib.request.urlopen', lambda *a, **k: 1 / 0)
    text = Path('sweep.yaml').read_text().replace('root: null', f'root: {tmp_path / "none"}')
    shipped = tmp_path / 'sweep.yaml'
    shipped.write_text(text.replace('results: results', f'results: {tmp_path / "results"}'))
    code, out, err = run(['--config', str(shipped), '--dry-run'], capsys)
    assert code == 0, err
    assert f'data: CIFAR-10 was not found under {tmp_path / "none"}.' in out
    assert 'The plan below is for the official CIFAR-10' in out and 'a run downloads it' in out
    assert '16 trials: 0 done, 0 partial, 16 pending, 0 failed' in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ['sweep.yaml']
    # The ids are those the official files get once loaded (any layout).
    assert official_identity().digest == OFFICIAL_DIGEST
    from bench.sweep.config import expand, trial_id

    first = expand(load_config(shipped).config)[0]
    assert trial_id(first, official_identity().to_dict()) in out


def test_fresh_deletes_only_a_store_and_only_its_own_files(tmp_path, capsys):
    data_root = write_tiny_data(tmp_path / 'cifar', train=32, test=8)
    unrelated = tmp_path / 'photos'
    unrelated.mkdir()
    (unrelated / 'holiday.jpg').write_bytes(b'jpeg')
    (unrelated / '.notes.tmp').write_text('mine')
    (unrelated / 'ray').mkdir()
    (unrelated / 'ray' / 'experiment').write_text('mine')
    path = write_sweep(
        tmp_path,
        data_root,
        name='photos',
        extra={'outputs': {'results': '.', 'readme': None, 'figures': 'figs', 'report': None}},
    )
    before = snapshot(unrelated)
    for args in (['--fresh', '--yes'], ['--fresh', '--yes', '--dry-run'], [], ['--dry-run']):
        code, out, err = run(['--config', str(path), *args], capsys)
        assert code == 2 and f'{unrelated} is not a results store of this project' in err, args
        assert 'nothing was written or deleted there' in err
        assert snapshot(unrelated) == before
    # Results pointed at a file, at a folder inside one, or through a link to nothing or a
    # link loop: named, and nothing written.
    (tmp_path / 'gone').symlink_to(tmp_path / 'nowhere')
    (tmp_path / 'loop').symlink_to(tmp_path / 'loop')
    for results, blocked in (
        ('photos/holiday.jpg', f'{unrelated / "holiday.jpg"} is a file'),
        ('photos/holiday.jpg/deeper', f'{unrelated / "holiday.jpg"} is a file'),
        ('gone', f'{tmp_path / "gone"} is a link to nothing'),
        ('loop/deeper', f'{tmp_path / "loop"} is a link to nothing'),
    ):
        path = write_sweep(
            tmp_path,
            data_root,
            name='photos',
            extra={'outputs': {'results': results, 'readme': None, 'figures': 'f', 'report': None}},
        )
        for args in (['--fresh', '--yes'], ['--dry-run'], ['--report-only'], []):
            code, out, err = run(['--config', str(path), *args], capsys)
            assert code == 2 and f'{blocked}, not a folder' in err, (args, err)
            assert 'set outputs.results (in the sweep file or on the command line)' in err
            assert snapshot(unrelated) == before
    assert not (tmp_path / 'nowhere').exists()
    # In a store, --fresh leaves what is not the store's own.
    store = ResultsStore(tmp_path / 'store')
    (store.root / 'trials' / '0123456789ab').mkdir(parents=True)
    (store.root / 'trials' / '0123456789ab' / 'history.csv').write_text('epoch\n')
    (store.root / 'trials' / 'mine').mkdir()
    (store.root / 'keep.txt').write_text('mine')
    store.delete(store.fresh_targets())
    assert sorted(p.name for p in store.root.rglob('*')) == ['keep.txt', 'mine', 'trials']


def test_fresh_with_only_deletes_only_the_selected_cells_trials(sweep, capsys, monkeypatch):
    path, loaded, store, ids = sweep
    trained = []

    def no_training(loaded, data, planned, **options):
        from bench.sweep.driver import SweepOutcome

        trained.extend(p.name for p in planned if p.will_train)
        return SweepOutcome(planned, [], {p.trial_id: p.status for p in planned}, {})

    monkeypatch.setattr('bench.sweep.driver.run_sweep', no_training)
    code, out, err = run(
        ['--config', str(path), '--fresh', '--yes', '--no-report', '--only', 'attention=eca'],
        capsys,
    )
    assert code == 0, err
    assert 'deleted 1 stored trial(s) of the cells --only selects' in out
    assert trained == ['cifar_resnet8_v1-eca-s0']
    assert not store.trial_dir(ids['partial']).exists()
    assert store.trial_state(ids['finished']).status == DONE
    assert (store.root / 'sweep.json').is_file()


def test_outputs_never_overwrite_a_file_this_project_did_not_write(sweep, tmp_path, capsys):
    path, loaded, store, ids = sweep
    text = path.read_text()
    notes = tmp_path / 'notes.html'
    notes.write_text('<html>my notes</html>')
    bad = tmp_path / 'bad.yaml'
    (tmp_path / 'notes.md').write_text('# my notes\n')
    (tmp_path / 'Makefile').write_text('all:\n')
    (tmp_path / 'home' / '.ssh').mkdir(parents=True)
    (tmp_path / 'linked.html').symlink_to(tmp_path / 'elsewhere.html')
    cases = {
        ('report: report.html', f'report: {notes}'): 'which this project did not write',
        (
            'report: report.html',
            'report: home/.ssh/authorized_keys',
        ): 'the HTML report is written only to a file ending in .html or .htm',
        ('report: report.html', 'report: linked.html'): 'a link; name a file of its own',
        ('readme: null', 'readme: bad.yaml'): 'the sweep file itself',
        ('readme: null', f'readme: {path.name}'): 'written only to a file ending in .md',
        ('readme: null', 'readme: Makefile'): 'written only to a file ending in .md',
        ('readme: null', 'readme: notes.md'): 'has no results markers',
        ('figures: figures', 'figures: bad.yaml'): 'the sweep file itself',
        ('figures: figures', f'figures: {path.name}'): 'a file; name a folder',
    }
    for (old, new), expected in cases.items():
        bad.write_text(text.replace(old, new))
        before = snapshot(tmp_path)
        for args in ([], ['--report-only'], ['--dry-run']):
            code, out, err = run(['--config', str(bad), *args], capsys)
            assert code == 2 and expected in err, (new, args, err)
            assert snapshot(tmp_path) == before, (new, args)
    bad.write_text(text.replace('readme: null', 'readme: Makefile'))
    code, out, err = run(['--config', str(bad), '--report-only', '--insert'], capsys)
    assert code == 2 and 'written only to a file ending in .md' in err
    assert (tmp_path / 'Makefile').read_text() == 'all:\n'
    assert not (tmp_path / 'home' / '.ssh' / 'authorized_keys').exists()
    assert not (tmp_path / 'elsewhere.html').exists()
    bad.write_text(text.replace('report: report.html', 'report: bad.yaml'))
    assert 'the sweep file itself' in run(['--config', str(bad), '--report-only'], capsys)[2]
    figures = tmp_path / 'figures'
    figures.mkdir()
    (figures / 'final_accuracy.png').write_text('not a png of ours')
    code, out, err = run(['--config', str(path), '--report-only'], capsys)
    assert code == 2 and 'final_accuracy.png is not a figure this project wrote' in err
    assert (figures / 'final_accuracy.png').read_text() == 'not a png of ours'
    (figures / 'final_accuracy.png').unlink()
    # Its own report is rewritten, of course, also one an earlier version wrote.
    assert run(['--config', str(path), '--report-only'], capsys)[0] == 0
    report = tmp_path / 'report.html'
    report.write_text(
        report.read_text().replace('<meta name="generator" content="channel-attention-bench">', '')
    )
    assert run(['--config', str(path), '--report-only'], capsys)[0] == 0


def test_markup_in_a_data_folder_name_is_text_in_every_output(tmp_path, capsys):
    data_root = write_tiny_data(tmp_path / f'{MARKUP}<!-- results:end -->', train=32, test=8)
    path = write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v1'],
        attentions=['none'],
        extra={
            'outputs': {
                'results': 'results',
                'readme': 'README.md',
                'figures': 'figures',
                'report': 'report.html',
            }
        },
    )
    readme = tmp_path / 'README.md'
    readme.write_text('# mine\n<!-- results:begin -->\n<!-- results:end -->\n')
    loaded = load_config(path)
    identity = load_sweep_data(loaded).identity.to_dict()
    ((tid, spec),) = [(p.trial_id, p.spec) for p in plan(loaded, identity)]
    fake_trial(ResultsStore(loaded.store_dir), tid, spec, identity, 1, finished=True)
    for _ in range(2):
        code, out, err = run(['--config', str(path), '--report-only'], capsys)
        assert code == 0, err
    text = readme.read_text()
    assert text.count('<!-- results:begin') == 1 and text.count('<!-- results:end -->') == 1
    for output in (readme, loaded.store_dir / 'table.md', tmp_path / 'report.html'):
        written = output.read_text()
        assert not re.search(r'(?<!\\)<img src=x', written), output  # never a tag
        assert 'img src' in written, output  # shown, as text
    assert r'x\<img src=x onerror=alert(1)\>' in text
    assert '&lt;img src=x onerror=alert(1)&gt;' in (tmp_path / 'report.html').read_text()


def test_a_readme_with_two_marker_pairs_is_refused(sweep, tmp_path, capsys):
    from reports import BEGIN, END, ReportError, inject_block

    with pytest.raises(ReportError, match='2 result begin markers and 2 end markers'):
        inject_block(f'{BEGIN}\n{END}\n{BEGIN}\n{END}\n', 'block')
    with pytest.raises(ReportError, match='contains result marker text'):
        inject_block(f'{BEGIN}\n{END}\n', f'a {END} in it')


@pytest.mark.parametrize(
    'damage',
    [
        {'history': None},
        {'history': [{'epoch': 1}]},
        {'epoch': '1e400'},
        {'epoch': 'NaN'},
        {'history': 'x'},
        {'spec': {'model': 3}},
    ],
)
def test_a_checkpoint_state_of_the_wrong_shape_is_named_not_a_crash(sweep, capsys, damage):
    path, loaded, store, ids = sweep
    state_file = store.trial_dir(ids['partial']) / 'checkpoint' / 'state.json'
    state = json.loads(state_file.read_text())
    state.update(damage)
    state_file.write_text(json.dumps(state).replace('"1e400"', '1e400').replace('"NaN"', 'NaN'))
    out = dry_run_allowing_problems(path, capsys)
    assert f'problem: {state_file}: ' in out
    assert 'cifar_resnet8_v1-none-s0' in out
    code, out, err = run(['--config', str(path), '--report-only'], capsys)
    assert code == 0, err
    assert store.trial_state(ids['finished']).status == DONE


def dry_run_allowing_problems(path, capsys):
    code, out, err = run(['--config', str(path), '--dry-run'], capsys)
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    'manifest',
    [
        '{"trials": "x"}',
        '[]',
        '{"name": "t", "models": [], "attentions": [], "trials": [{"trial_id": 5}]}',
        'nul',
    ],
)
def test_a_sweep_record_of_the_wrong_shape_is_named_and_rewritten(sweep, capsys, manifest):
    from reports.__main__ import main as reports_main

    path, loaded, store, ids = sweep
    (store.root / 'sweep.json').write_text(manifest)
    capsys.readouterr()
    assert reports_main([str(store.root)]) == 2
    err = capsys.readouterr().err
    assert f'{store.root / "sweep.json"}: ' in err and '--report-only' in err
    assert dry_run_allowing_problems(path, capsys)
    code, out, err = run(['--config', str(path), '--report-only'], capsys)
    assert code == 0, err
    assert reports_main([str(store.root)]) == 0


UNREADABLE_SCRIPT = """
import sys
from bench.arguments import writable_folder_problem, writable_json_problem
from reports.store import ReportError, load_manifest

locked = sys.argv[1]
print(writable_json_problem(locked + '/inner/r.json', '--json', 'bench.benchmark'))
print(writable_folder_problem(locked + '/inner/c', '--checkpoint-dir'))
try:
    load_manifest(locked + '/inner')
except ReportError as error:
    print(error)
"""


def test_a_folder_the_user_may_not_enter_is_a_message_not_a_traceback(tmp_path):
    """Checked as another user (root reads every folder): the output checks and the
    reports' store check say the folder cannot be entered."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if os.geteuid() != 0 or not shutil.which('setpriv'):
        pytest.skip('needs root and setpriv to check as another user')
    root = Path(__file__).resolve().parents[1]
    locked = tmp_path / 'locked'
    (locked / 'inner').mkdir(parents=True)
    locked.chmod(0o700)
    tmp_path.chmod(0o755)
    done = subprocess.run(
        ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']
        + [sys.executable, '-c', UNREADABLE_SCRIPT, str(locked)],
        capture_output=True,
        text=True,
        cwd='/',
        env=dict(os.environ, PYTHONPATH=str(root)),
        timeout=120,
    )
    if 'Permission denied' in done.stderr and 'python' in done.stderr.split('\n')[0]:
        pytest.skip('the interpreter is not readable by another user here')
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        f'--json {locked}/inner/r.json cannot be checked (Permission denied)',
        f'--checkpoint-dir {locked}/inner/c cannot be checked (Permission denied)',
        f'{locked}/inner cannot be read (Permission denied)',
    ]


def test_the_report_commands_given_a_file_or_nothing_say_so(tmp_path, capsys):
    from reports.__main__ import main as reports_main
    from reports.compare import main as compare_main

    readme = tmp_path / 'README.md'
    readme.write_text('# mine\n')
    (tmp_path / 'gone').symlink_to(tmp_path / 'nowhere')
    for given, what in (
        (readme, 'is a file, not a folder'),
        (tmp_path / 'none', 'does not exist'),
        (tmp_path / 'gone', 'is a link to nothing, not a folder'),
    ):
        for command, args in ((reports_main, [given]), (compare_main, [given, tmp_path])):
            code = command([str(a) for a in args])
            err = capsys.readouterr().err
            assert code == 2 and f'{given} {what}: give the folder of a sweep' in err
            assert 'sweep.json' not in err
    assert readme.read_text() == '# mine\n'
    assert sorted(tmp_path.iterdir()) == [readme, tmp_path / 'gone']
    # The results folder itself, where one of its stores was meant.
    from .store_helpers import add_trial, record_sweep

    store = ResultsStore(tmp_path / 'results' / 'demo')
    add_trial(store, 'cifar_resnet20_v1', 'none', 0, train_loss=0.1, val_acc=0.9)
    record_sweep(store, ['cifar_resnet20_v1'], ['none'])
    assert reports_main([str(tmp_path / 'results')]) == 2
    assert f'holds the stores of several sweeps, not one; give the folder of one: {store.root}' in (
        capsys.readouterr().err
    )
    assert reports_main([str(store.root), '--no-overhead']) == 0
    assert 'no README block written: name the README with --readme' in capsys.readouterr().out


@pytest.mark.parametrize('content', ['', 'garbage', '{"host": null}', '[1]'])
def test_an_unreadable_lock_says_so_and_what_to_do(tmp_path, content):
    from bench.store import StoreLocked

    store = ResultsStore(tmp_path / 'store')
    store.root.mkdir()
    (store.root / 'sweep.lock').write_text(content)
    with pytest.raises(StoreLocked) as error:
        with store.lock():
            pass
    message = str(error.value)
    assert 'sweep.lock' in message and 'process None' not in message
    assert 'if none is' in message and 'delete' in message
    assert (store.root / 'sweep.lock').read_text() == content


def test_contradicting_flags_and_an_empty_only_are_one_message(sweep, capsys):
    path, loaded, store, ids = sweep
    for args, expected in (
        (['--report-only', '--fresh'], 'does not take --fresh'),
        (['--report-only', '--only', 'seed=0'], 'does not take --only'),
        (['--report-only', '--yes'], 'does not take --yes'),
        (['--only', ',,,'], "--only ',,,' selects nothing"),
        (['--only', 'model='], 'key=value pairs'),
        (['--yes'], '--yes answers the question --fresh asks'),
        (['--dry-run', '--yes'], 'without --fresh nothing is asked'),
        (['--insert', '--no-report'], '--no-report writes no reports; leave out one'),
    ):
        before = snapshot(store.root)
        code, out, err = run(['--config', str(path), *args], capsys)
        assert code == 2 and expected in err, (args, err)
        assert snapshot(store.root) == before and not out, args
    assert store.trial_state(ids['partial']).status == PARTIAL


def _failing_writes(monkeypatch, code, after=0):
    """Every atomic write fails with OSError `code` (after `after` that succeed), as on a
    full disk or a read-only folder."""
    import bench.fileio

    real, calls = bench.fileio.write_bytes_atomic, []

    def write(path, data):
        calls.append(path)
        if len(calls) > after:
            raise OSError(code, os.strerror(code), str(path))
        return real(path, data)

    monkeypatch.setattr(bench.fileio, 'write_bytes_atomic', write)
    for module in ('bench.store', 'reports', 'reports.figures', 'reports.readme'):
        module_object = __import__(module, fromlist=['_'])
        if hasattr(module_object, 'write_bytes_atomic'):
            monkeypatch.setattr(module_object, 'write_bytes_atomic', write)


@pytest.mark.parametrize('code', ['ENOSPC', 'EROFS', 'EACCES'])
def test_a_full_or_read_only_store_is_one_message_and_loses_nothing(
    sweep, capsys, monkeypatch, code
):
    import errno

    path, loaded, store, ids = sweep
    before = snapshot(store.root)
    number = getattr(errno, code)
    # At the start: the lock cannot be created.
    import bench.store

    def no_lock(path, text):
        raise OSError(number, os.strerror(number), str(path))

    with monkeypatch.context() as patch:
        patch.setattr(bench.store, '_create_with', no_lock)
        exit_code, out, err = run(['--config', str(path)], capsys)
    assert (
        exit_code == 2
        and f'{store.root / "sweep.lock"}: {os.strerror(number)} ({code})' in err
        and 'Nothing finished was lost' in err
        and 'Traceback' not in err
    )
    # The reports, with nothing trained: --report-only.
    with monkeypatch.context() as patch:
        _failing_writes(patch, number)
        exit_code, out, err = run(['--config', str(path), '--report-only'], capsys)
    assert exit_code == 2 and f'({code})' in err and 'Traceback' not in err
    assert len(err.strip().splitlines()) == 1
    assert snapshot(store.root) == before
    assert not (store.root / 'sweep.lock').exists()


def test_tunes_wrapping_of_a_failed_write_is_unwrapped_for_the_message():
    import errno

    from bench.sweep.driver import _os_error_in

    full = OSError(errno.ENOSPC, 'No space left on device', '/store/x')
    try:
        try:
            raise full
        except OSError:
            raise RuntimeError('TuneError: ...')  # noqa: B904 (as Tune does: context only)
    except RuntimeError as wrapped:
        assert _os_error_in(wrapped) is full
    assert _os_error_in(ValueError('no')) is None


@pytest.mark.parametrize(
    'args,expected',
    [
        (['--num-gpus', '-1'], 'argument --num-gpus: expected 0 to 64, got -1'),
        (['--num-epochs', '1e23'], "argument --num-epochs: expected a whole number, got '1e23'"),
        (['--num-epochs', str(10**23)], '--num-epochs: Input should be less than or equal to'),
        (['--lr', 'inf'], 'error: --lr: Input should be a finite number'),
        (['--lr-decay', '2'], 'error: --lr-decay: Input should be less than or equal to 1'),
        (['--lr-decay-epoch', '8,0'], '--lr-decay-epoch (value 2): Input should be greater'),
        (['--mode', 'imperative', '--backend', 'torch'], 'the torch backend has no such mode'),
        (['--compile'], '--compile is an option of --backend torch'),
        (['--precision', 'amp_bfloat16'], '--precision amp_bfloat16 runs with --backend torch'),
        (['--seed', '-1'], 'argument --seed: expected 0 to 2147483647, got -1'),
        (['--model', 'cifar_resnet60000002_v1'], '8 <= depth <= 1202'),
        (['--lr-decay-epoch', '8,x'], '--lr-decay-epoch takes comma-separated whole numbers'),
    ],
)
def test_bench_train_refuses_nonsense_before_training(args, expected, tmp_path, capsys):
    from bench.train import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(
            args + ['--data-root', str(tmp_path), '--no-download', '--num-gpus', '0']
            if '--num-gpus' not in args
            else args
        )
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_bench_train_checks_its_outputs_before_training(tiny_cifar_root, tmp_path, capsys):
    from bench.train import main as train_main

    a_file = tmp_path / 'a-file'
    a_file.write_text('mine')
    common = [
        '--model',
        'cifar_resnet8_v1',
        '--num-epochs',
        '1',
        '--batch-size',
        '16',
        '--data-root',
        str(tiny_cifar_root),
        '--no-download',
        '--num-gpus',
        '0',
        '--quiet',
    ]
    for extra, expected in (
        (['--checkpoint-dir', str(a_file)], '--checkpoint-dir'),
        (['--checkpoint-dir', str(a_file / 'below')], 'cannot be written'),
        (['--output', str(tmp_path)], '--output'),
        (
            ['--checkpoint-dir', str(tmp_path / 'new' / 'ckpt'), '--output', str(tmp_path)],
            '--output',
        ),
    ):
        with pytest.raises(SystemExit) as exit_info:
            train_main(common + extra)
        err = capsys.readouterr()
        assert exit_info.value.code == 2 and expected in err.err, err
        assert '[epoch' not in err.out  # nothing trained
    assert a_file.read_text() == 'mine'
    assert not (tmp_path / 'new').exists()  # the checked folder, not made for a refused run


@pytest.mark.parametrize('backend', ['gluon', 'torch'])
def test_bench_train_refuses_a_precision_the_device_lacks_before_loading_data(
    tmp_path, capsys, backend
):
    """The device check comes before the data: no download (170 MB) only to be refused."""
    from bench.train import main as train_main

    with pytest.raises(SystemExit) as exit_info:
        train_main(
            ['--backend', backend, '--precision', 'amp_float16', '--num-gpus', '0']
            + ['--data-root', str(tmp_path / 'no-data'), '--no-download', '--quiet']
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and 'amp_float16 needs' in err, err
    assert 'CIFAR-10 was not found' not in err


def test_bench_train_uses_the_cells_thread_count_and_says_so(tmp_path, monkeypatch):
    from bench.errors import BadArguments
    from bench.train import parse_args, thread_count

    sweep_file = tmp_path / 'sweep.yaml'
    sweep_file.write_text(
        'name: s\nmodels: [cifar_resnet20_v1]\nattentions: [none]\nresources: {cpus_per_trial: 3}\n'
    )
    monkeypatch.setenv('OMP_NUM_THREADS', '7')
    assert thread_count(parse_args(['--config', str(sweep_file)])[1]) == (
        3,
        f"{sweep_file}'s cpus_per_trial, as the sweep's trial of the cell",
    )
    assert thread_count(parse_args(['--config', str(sweep_file), '--threads', '5'])[1])[0] == 5
    # No --config and no sweep.yaml in this folder: the environment's count.
    (tmp_path / 'elsewhere').mkdir()
    monkeypatch.chdir(tmp_path / 'elsewhere')
    assert thread_count(parse_args([])[1]) == (7, 'OMP_NUM_THREADS')
    monkeypatch.chdir(tmp_path)
    assert thread_count(parse_args([])[1])[0] == 3  # ./sweep.yaml, the default
    # A sweep file named that is none is an error (tests/test_trainer.py), not a fallback.
    with pytest.raises(BadArguments, match='--config .*none.yaml: no such file'):
        thread_count(parse_args(['--config', str(tmp_path / 'none.yaml')])[1])


@pytest.mark.parametrize(
    'args,expected',
    [
        (['--batch-size', '0'], 'argument --batch-size: expected 1 to'),
        (['--rounds', '-1'], 'argument --rounds: expected 1 to 1000, got -1'),
        (['--batches', '0'], 'argument --batches: expected 1 to'),
        (['--images', '0'], 'argument --images: expected 1 to'),
        (['--images', '10'], '--images 10 holds no batch of --batch-size 128'),
        (['--models', 'resnet50'], "unknown model 'resnet50'"),
        (['--attentions', 'coord'], "unknown attention 'coord'"),
        (['--compile'], '--compile compiles the torch backend (torch.compile) and --backend gluon'),
        (
            ['--backend', 'torch', '--threads-compare'],
            '--threads-compare compares Gluon runs',
        ),
        (
            ['--backend', 'torch', '--kernels-compare'],
            '--kernels-compare compares Gluon runs',
        ),
    ],
)
def test_bench_benchmark_refuses_nonsense_before_measuring(args, expected, capsys):
    from bench.benchmark.cli import main as benchmark_main

    with pytest.raises(SystemExit) as exit_info:
        benchmark_main(args + ['--num-gpus', '0', '--no-original', '--epoch-images', '0'])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and 'Traceback' not in err


def test_bench_benchmark_checks_its_json_before_measuring(tmp_path, capsys):
    from bench.benchmark.cli import main as benchmark_main

    a_file = tmp_path / 'a-file'
    a_file.write_text('mine')
    gone = tmp_path / 'gone'
    gone.symlink_to(tmp_path / 'nowhere')
    for target, expected in (
        (tmp_path, 'is a folder'),
        (a_file / 'rows.json', f'cannot be written: {a_file} is a file, not a folder'),
        (gone / 'rows.json', f'cannot be written: {gone} is a link to nothing, not a folder'),
    ):
        with pytest.raises(SystemExit) as exit_info:
            benchmark_main(['--num-gpus', '0', '--json', str(target)])
        err = capsys.readouterr()
        assert exit_info.value.code == 2 and expected in err.err
        assert 'img/s' not in err.out
    # Checking a path in folders yet to be made makes none: a run refused for another
    # reason leaves nothing behind.
    with pytest.raises(SystemExit) as exit_info:
        benchmark_main(['--models', 'resnet50', '--json', str(tmp_path / 'new' / 'rows.json')])
    assert exit_info.value.code == 2 and "unknown model 'resnet50'" in capsys.readouterr().err
    assert not (tmp_path / 'new').exists()


# ------------------------------------------------- found by trying to break the first fixes


def test_a_link_where_the_scratch_belongs_is_removed_as_a_link_not_followed(sweep):
    path, loaded, store, ids = sweep
    precious = store.root.parent.parent / 'precious'
    (precious / 'code').mkdir(parents=True)
    (precious / 'thesis.tex').write_text('years of work')
    (store.root / 'ray').symlink_to(precious)
    linked_trial = store.root / 'trials' / 'abcdefabcdef'
    linked_trial.symlink_to(precious)
    (precious / '.checkpoint-x').mkdir()
    with store.lock():
        store.clean_scratch()
    assert (precious / 'thesis.tex').read_text() == 'years of work'
    assert (precious / 'code').is_dir() and (precious / '.checkpoint-x').is_dir()
    assert not (store.root / 'ray').exists()


@pytest.mark.parametrize('layout', ['a sweep.json of another tool', 'trials of another tool'])
def test_a_folder_of_another_tool_is_not_taken_for_a_store(tmp_path, capsys, layout):
    data_root = write_tiny_data(tmp_path / 'cifar', train=32, test=8)
    other = tmp_path / 'results' / 'shared'
    if layout == 'a sweep.json of another tool':
        other.mkdir(parents=True)
        (other / 'sweep.json').write_text('{"method": "bayes"}')
        (other / 'results.csv').write_text('theirs')
    else:
        (other / 'trials' / 'run-2024-01').mkdir(parents=True)
        (other / 'trials' / 'run-2024-01' / 'history.csv').write_text('theirs')
    (other / 'ray' / 'important').mkdir(parents=True)
    (other / 'ray' / 'important' / 'notes.txt').write_text('theirs')
    path = write_sweep(tmp_path, data_root, name='shared')
    before = snapshot(other)
    for args in (['--dry-run', '--fresh'], ['--fresh', '--yes'], []):
        code, out, err = run(['--config', str(path), *args], capsys)
        assert code == 2 and 'is not a results store of this project' in err, (args, err)
        assert snapshot(other) == before


def test_stored_names_are_registered_ones_and_never_markup_in_the_readme(sweep, tmp_path, capsys):
    from reports.__main__ import main as reports_main

    path, loaded, store, ids = sweep
    manifest = json.loads((store.root / 'sweep.json').read_text())
    manifest['models'].append('cifar_resnet8_v1 \n\n[Click](https://evil.example/phish)\n\n')
    (store.root / 'sweep.json').write_text(json.dumps(manifest))
    readme = tmp_path / 'README.md'
    readme.write_text('<!-- results:begin -->\n<!-- results:end -->\n')
    capsys.readouterr()
    assert reports_main([str(store.root), '--readme', str(readme)]) == 2
    assert "unknown model 'cifar_resnet8_v1" in capsys.readouterr().err
    assert 'evil' not in readme.read_text()
    # A trial's spec.json naming a model that does not exist is damaged, not a crash.
    spec_file = store.trial_dir(ids['finished']) / 'spec.json'
    spec = json.loads(spec_file.read_text())
    spec['spec']['model'] = 'cifar_resnet9_v1'
    spec_file.write_text(json.dumps(spec))
    code, out, err = run(['--config', str(path), '--report-only'], capsys)
    assert code == 0, err
    import html

    assert "unknown model 'cifar_resnet9_v1'" in html.unescape(
        (tmp_path / 'report.html').read_text()
    )


def test_one_line_per_stored_text_in_html_too():
    from markupsafe import Markup

    from reports import render

    html = render(
        'readme_table.html.j2',
        groups=[],
        rows=[{'model': 'a\n\n[x](y)', 'cells': [{'text': 'b\r\n\nc', 'bold': False}]}],
    )
    assert '\n\n' not in html and '[x](y)' in html
    assert str(Markup('<b>kept</b>')) in render(
        'readme_block.md.j2',
        title='t',
        caption='c',
        notes=['n'],
        table_html=Markup('<b>kept</b>'),
        cost_html=None,
        figures=[],
    )


@pytest.mark.parametrize('kind', ['folder', 'dangling link', 'fifo'])
def test_a_lock_that_is_no_file_is_one_message_not_a_spin(tmp_path, kind):
    import time

    from bench.store import StoreLocked

    store = ResultsStore(tmp_path / 'store')
    store.root.mkdir()
    lock = store.root / 'sweep.lock'
    if kind == 'folder':
        lock.mkdir()
    elif kind == 'dangling link':
        lock.symlink_to(tmp_path / 'nowhere')
    else:
        os.mkfifo(lock)
    started = time.monotonic()
    with pytest.raises(StoreLocked, match='is not a lock file of this project'):
        with store.lock():
            pass
    assert time.monotonic() - started < 5
    assert not list(store.root.glob('.sweep.lock.*'))


def test_names_have_one_spelling(capsys):
    from models.names import parse_model_name

    for name in (
        'cifar_resnet020_v1',
        'cifar_resnet\u0662\u0660_v1',
        'cifar_resnet\uff12\uff10_v1',
        'cifar_resnet20_v1\n',
        ' cifar_resnet20_v1',
        'cifar_resnet' + '2' * 5000 + '_v1',
    ):
        with pytest.raises(KeyError, match='unknown model'):
            parse_model_name(name)
    assert parse_model_name('cifar_resnet1202_v2') == (2, 1202, '')


def test_our_own_json_outputs_never_replace_someone_elses_file(tmp_path, capsys):
    from bench.arguments import tool_json, writable_json_problem
    from bench.benchmark.cli import main as benchmark_main
    from bench.train import main as train_main

    sweep_file = tmp_path / 'tiny.yaml'
    sweep_file.write_text('name: t\n')
    # JSON is not enough: a store's own files, another tool's output, a package.json.
    store = tmp_path / 'results' / 'tiny'
    (store / 'trials' / '0123456789ab').mkdir(parents=True)
    (store / 'sweep.json').write_text('{"name": "tiny", "trials": []}')
    final = store / 'trials' / '0123456789ab' / 'final.json'
    final.write_text('{"epochs": 3, "val_acc": 0.9}')
    package = tmp_path / 'package.json'
    package.write_text('{"name": "site"}')
    trained = tmp_path / 'trained.json'
    trained.write_text(json.dumps(tool_json('bench.train', {'history': []})))
    theirs = {path: path.read_bytes() for path in (sweep_file, final, package, trained)}
    for target in theirs:
        with pytest.raises(SystemExit) as exit_info:
            benchmark_main(['--num-gpus', '0', '--json', str(target)])
        assert exit_info.value.code == 2
        assert (
            f'--json {target} exists and bench.benchmark did not write it (it is not JSON '
            'with "written_by": "bench.benchmark"), so it is left as it is'
        ) in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(
            [
                '--num-gpus',
                '0',
                '--data-root',
                str(tmp_path),
                '--no-download',
                '--output',
                str(sweep_file),
            ]
        )
    assert 'exists and bench.train did not write it' in capsys.readouterr().err
    # Nothing new inside a store either, at any depth.
    for target in (store / 'rows.json', store / 'trials' / '0123456789ab' / 'out.json'):
        with pytest.raises(SystemExit):
            benchmark_main(['--num-gpus', '0', '--json', str(target)])
        assert (
            f'--json {target} is inside the results store {store}, which only run_sweep.py '
            'writes; choose a path outside it'
        ) in capsys.readouterr().err
        assert not target.exists()
    assert {path: path.read_bytes() for path in theirs} == theirs
    # The tool's own output of an earlier run is replaced.
    assert writable_json_problem(trained, '--output', 'bench.train') is None
    assert writable_json_problem(tmp_path / 'new.json', '--json', 'bench.benchmark') is None


def test_figures_of_the_user_are_neither_deleted_nor_replaced(sweep, tmp_path, capsys):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    path, loaded, store, ids = sweep
    figures = tmp_path / 'figures'
    figures.mkdir()
    plt.plot([1, 2])
    plt.savefig(figures / 'curves_my_experiment.png')  # the user's, matplotlib's defaults
    assert run(['--config', str(path), '--report-only'], capsys)[0] == 0
    assert (figures / 'curves_my_experiment.png').is_file()
    plt.savefig(figures / 'final_accuracy.png')
    code, out, err = run(['--config', str(path), '--report-only'], capsys)
    assert code == 2 and 'final_accuracy.png is not a figure this project wrote' in err
    plt.close('all')


def test_outputs_showing_another_store_are_refused_not_replaced(sweep, tmp_path, capsys):
    """Two sweeps pointed at one README, report and figures folder: the second is refused
    with what to do, the first one's outputs stay as they were, and a checkout moved as a
    whole still owns its outputs."""
    import shutil

    import yaml

    from reports import BEGIN

    path, loaded, store, ids = sweep
    for args in (['--report-only', '--insert'], ['--dry-run', '--insert'], ['--insert']):
        code, out, err = run(['--config', str(path), *args], capsys)
        assert code == 2 and 'this sweep names none (outputs.readme: null)' in err, args
    values = yaml.safe_load(path.read_text())
    values['outputs']['readme'] = 'README.md'
    path.write_text(yaml.safe_dump(values))
    (tmp_path / 'README.md').write_text(f'# Mine\n\n{BEGIN}\n<!-- results:end -->\n')
    assert run(['--config', str(path), '--report-only'], capsys)[0] == 0
    readme_text = (tmp_path / 'README.md').read_text()
    assert 'from the store results/tiny;' in readme_text
    assert '<meta name="results-store" content="results/tiny">' in (
        (tmp_path / 'report.html').read_text()
    )
    ours = {p: p.read_bytes() for p in [tmp_path / 'README.md', tmp_path / 'report.html']}
    ours |= {p: p.read_bytes() for p in (tmp_path / 'figures').glob('*.png')}
    assert len(ours) > 3

    shutil.copytree(tmp_path / 'results', tmp_path / 'results2')
    values['outputs']['results'] = 'results2'
    other = tmp_path / 'other.yaml'
    other.write_text(yaml.safe_dump(values))
    for args in (['--report-only'], ['--dry-run']):
        code, out, err = run(['--config', str(other), *args], capsys)
        assert code == 2 and 'Traceback' not in err, (args, err)
        assert f'whose results block shows another store ({tmp_path / "results" / "tiny"})' in err
        assert f'{BEGIN} to give the block to this sweep' in err
        assert 'the report of another store' in err
        assert 'is a figure of another store' in err
    assert {p: p.read_bytes() for p in ours} == ours

    # The README's block handed over by its begin marker; the rest pointed elsewhere.
    (tmp_path / 'README.md').write_text(readme_text.replace(readme_text.split('\n')[2], BEGIN))
    values['outputs'] |= {'report': 'report2.html', 'figures': 'figures2'}
    other.write_text(yaml.safe_dump(values))
    assert run(['--config', str(other), '--report-only'], capsys)[0] == 0
    assert 'from the store results2/tiny;' in (tmp_path / 'README.md').read_text()
    # `python -m reports` names its flags in the same refusal.
    from reports.__main__ import main as reports_main

    capsys.readouterr()
    first_store = tmp_path / 'results' / 'tiny'
    code = reports_main([str(first_store), '--readme', str(tmp_path / 'README.md')])
    err = capsys.readouterr().err
    assert code == 2 and '--readme is' in err and 'point --readme at' in err, err
    assert 'outputs.' not in err
    with pytest.raises(SystemExit):
        reports_main([str(first_store), '--insert'])
    assert '--insert appends the results block to the README of --readme' in (
        capsys.readouterr().err
    )
    assert {p: p.read_bytes() for p in ours if p.suffix != '.md'} == {
        p: b for p, b in ours.items() if p.suffix != '.md'
    }

    moved = tmp_path / 'moved'
    moved.mkdir()
    for name in ('results', 'figures', 'report.html', path.name):
        (shutil.copytree if (tmp_path / name).is_dir() else shutil.copy)(
            tmp_path / name, moved / name
        )
    (moved / 'README.md').write_bytes(ours[tmp_path / 'README.md'])
    assert run(['--config', str(moved / path.name), '--report-only'], capsys)[0] == 0


def test_outputs_keep_their_store_through_links_and_odd_names(tmp_path):
    """A results folder moved to another disk and linked back, or linked from the start
    and the checkout moved, still owns its outputs; a store named by undecodable bytes is
    quoted, not a traceback; a crafted reference is quoted in a bounded message; a store
    that is gone is said to be gone."""
    import shutil

    from reports import BEGIN, END, render_all
    from reports.outputs import output_problems

    from .store_helpers import add_trial, record_sweep

    def make_store(root):
        store = ResultsStore(root)
        add_trial(store, 'cifar_resnet20_v1', 'none', 0, train_loss=0.1, val_acc=0.9)
        record_sweep(store, ['cifar_resnet20_v1'], ['none'])
        return store.root

    checkout = tmp_path / 'checkout'
    store = make_store(checkout / 'results' / 'sweep')
    readme, report = checkout / 'README.md', checkout / 'report.html'
    readme.write_text(f'{BEGIN}\n{END}\n')
    outputs = {'readme': readme, 'report_path': report, 'figures_dir': checkout / 'figures'}
    render_all(store, **outputs)
    # The results folder moved to a bigger disk and linked back.
    shutil.move(checkout / 'results', tmp_path / 'disk')
    (checkout / 'results').symlink_to(tmp_path / 'disk')
    render_all(store, **outputs)
    # Then the whole checkout moved elsewhere, its link with it.
    moved = tmp_path / 'deeper' / 'checkout'
    moved.parent.mkdir()
    shutil.move(checkout, moved)
    moved_outputs = {key: moved / path.relative_to(checkout) for key, path in outputs.items()}
    render_all(moved / 'results' / 'sweep', **moved_outputs)

    odd = make_store(tmp_path / 'w\udcff' / 'sweep')  # a folder name of bytes not UTF-8
    odd_readme = tmp_path / 'odd.md'
    odd_readme.write_text(f'{BEGIN}\n{END}\n')
    for _ in range(2):  # written, then read back as its own
        render_all(odd, readme=odd_readme, figures_dir=odd.parent / 'figures', figures=False)
    assert 'from the store w%FF/sweep;' in odd_readme.read_text()

    crafted = tmp_path / 'crafted.md'
    crafted.write_text(
        BEGIN.replace('run_sweep.py;', f'run_sweep.py from the store {"x" * 10**5};') + f'\n{END}\n'
    )
    (problem,) = output_problems(readme=crafted, store_dir=store)
    assert len(problem) < 700 and 'which is not there any more: moved or renamed?' in problem


def test_the_repository_readme_belongs_to_the_sweep_file_beside_it(capsys):
    from reports.outputs import store_reference
    from reports.readme import block_owner

    root = Path(__file__).parents[1]
    owner = block_owner((root / 'README.md').read_text())
    assert owner == store_reference(load_config(root / 'sweep.yaml').store_dir, root / 'README.md')
    code, out, err = run(
        [
            '--config',
            str(root / 'sweeps' / 'demo.yaml'),
            '--dry-run',
            'outputs.readme=../README.md',
        ],
        capsys,
    )
    assert code == 2 and 'whose results block shows another store' in err, err


def test_a_sweep_file_that_is_a_device_is_refused(capsys):
    code, out, err = run(['--config', '/dev/zero', '--dry-run'], capsys)
    assert code == 2 and '/dev/zero: not a regular file' in err


def test_a_dry_run_writes_nothing_in_home_either(sweep, tmp_path):
    import subprocess
    import sys

    path, loaded, store, ids = sweep
    home = tmp_path / 'home'
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ('MPLCONFIGDIR', 'XDG_CACHE_HOME', 'XDG_CONFIG_HOME')
    }
    env['HOME'] = str(home)
    done = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / 'run_sweep.py'),
            '--config',
            str(path),
            '--dry-run',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert list(home.rglob('*')) == []


def test_crafted_optimizer_state_that_amplifies_or_resets_is_refused(tmp_path):
    import pickle

    import mxnet as mx

    from bench.trial.gluon.optimizer_state import read_legacy_states

    adam = mx.optimizer.Adam()
    shared = mx.nd.zeros((64, 64))
    many = pickle.dumps(({i: (shared, shared) for i in range(50)}, adam))
    with pytest.raises(ValueError, match='one array stands for several states'):
        read_legacy_states(many, 'adam')
    big = pickle.dumps(({0: (mx.nd.zeros((512, 512)), mx.nd.zeros((512, 512)))}, adam))
    with pytest.raises(ValueError, match='more array data'):
        read_legacy_states(big, 'adam', max_array_bytes=1 << 20)
    adam.num_update = b'not a count'
    with pytest.raises(ValueError, match='counters are not plain numbers'):
        read_legacy_states(pickle.dumps(({0: (mx.nd.zeros(2), mx.nd.zeros(2))}, adam)), 'adam')


@pytest.mark.parametrize(
    'address,expected',
    [
        ('ray://127.0.0.1:10001', 'Ray Client addresses (ray://) are not supported'),
        ('127.0.0.1:{free}', 'nothing answers there (Connection refused)'),
        ('not-an-address', 'cannot join the Ray cluster at not-an-address (Invalid address'),
    ],
)
def test_an_address_that_cannot_be_joined_is_one_message(sweep, capsys, address, expected):
    import socket

    path, loaded, store, ids = sweep
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        free = probe.getsockname()[1]
    code, out, err = run(
        ['--config', str(path), '--address', address.format(free=free), '--no-report'], capsys
    )
    assert code == 2 and expected in err and 'Traceback' not in err
    assert store.trial_state(ids['partial']).status == PARTIAL


def test_a_folder_with_a_table_md_of_someone_else_is_not_taken_for_a_store(tmp_path, capsys):
    data_root = write_tiny_data(tmp_path / 'cifar', train=32, test=8)
    other = tmp_path / 'results' / 'notes'
    other.mkdir(parents=True)
    (other / 'table.md').write_text('| my | table |\n')
    path = write_sweep(tmp_path, data_root, name='notes')
    for args in (['--dry-run', '--fresh'], ['--fresh', '--yes']):
        code, out, err = run(['--config', str(path), *args], capsys)
        assert code == 2 and 'is not a results store of this project' in err, (args, err)
        assert (other / 'table.md').read_text() == '| my | table |\n'


def test_a_trial_folder_without_a_readable_spec_is_named_in_the_report_not_dropped(tmp_path):
    """A stored trial outside the sweep whose spec.json is damaged or crafted makes no
    record; the report names it, escaped, among the store's problems, and leaves its files."""
    from reports import render_all

    from .store_helpers import add_trial, record_sweep

    store = ResultsStore(tmp_path / 'store')
    add_trial(store, 'cifar_resnet20_v1', 'none', 0, train_loss=0.1, val_acc=0.9)
    crafted = add_trial(store, 'cifar_resnet20_v1', 'se', 0, train_loss=0.1, val_acc=0.9)
    spec_file = store.trial_dir(crafted) / 'spec.json'
    value = json.loads(spec_file.read_text())
    value['spec']['attention'] = '<script>alert(1)</script>'
    spec_file.write_text(json.dumps(value))
    (store.trial_dir('0123456789ab')).mkdir()
    (store.trial_dir('0123456789ab') / 'spec.json').write_text('{"trial_id": ')
    record_sweep(store, ['cifar_resnet20_v1'], ['none'], overhead=False)
    report = tmp_path / 'report.html'
    render_all(store.root, figures_dir=tmp_path / 'f', report_path=report, figures=False)
    html = report.read_text()
    problems = html.split('Problems found in the store')[1]
    assert f'{crafted}: {spec_file}: not the spec.json this project writes' in problems
    assert '&lt;script&gt;alert(1)&lt;/script&gt;' in problems and '<script>' not in html
    assert '0123456789ab: ' in problems
    assert problems.count('the trial is in no table or results.csv until its spec.json') == 2
    assert json.loads(spec_file.read_text())['spec']['attention'] == '<script>alert(1)</script>'


# ------------------------------------------------- a crafted store: links, ids, numbers


def test_links_in_a_store_are_named_and_never_followed_by_a_run_or_a_report(
    sweep, tmp_path, capsys
):
    """A trial folder that is a link (writes and deletes would land elsewhere), a
    history.csv and an environment.json that are links (a report would show what they
    point to): each trial with a link is damaged, nothing is read, written or deleted
    through a link, and each link is named."""
    from bench.store import LinkInStore

    path, loaded, store, ids = sweep
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    secret = elsewhere / 'credentials'
    secret.write_text('epoch,lr\nSECRET-TOKEN-123,1\n')
    victim = elsewhere / 'victim'
    store.trial_dir(ids['finished']).rename(victim)
    store.trial_dir(ids['finished']).symlink_to(victim)
    history = store.trial_dir(ids['partial']) / 'history.csv'
    history.unlink()
    history.symlink_to(secret)
    (store.root / 'environment.json').symlink_to(secret)
    (store.root / 'trials' / 'abcdefabcdef').symlink_to(elsewhere)
    before = snapshot(elsewhere)

    code, out, err = run(['--config', str(path), '--dry-run'], capsys)
    assert code == 0 and out.count('damaged') >= 2, out
    assert f'{store.trial_dir(ids["finished"])} is a link; a results store holds none' in out
    assert f'{history} is a link' in out
    code, out, err = run(['--config', str(path)], capsys)  # trains nothing: both damaged
    assert code != 0 and 'not trained because their stored files are damaged' in err
    code, out, err = run(['--config', str(path), '--report-only'], capsys)
    html = (loaded.base_dir / 'report.html').read_text()
    assert 'SECRET-TOKEN' not in html and f'{store.root / "environment.json"} is a link' in html
    assert f'{store.root / "trials" / "abcdefabcdef"} is a link' in html
    for output in store.root.rglob('*'):
        if output.is_file() and not output.is_symlink():
            assert 'SECRET-TOKEN' not in output.read_text(errors='replace'), output
    assert snapshot(elsewhere) == before
    with pytest.raises(LinkInStore, match='is a link'):
        store.write_spec(ids['finished'], 'x', {}, {}, 1)
    with pytest.raises(LinkInStore, match='is a link'):
        store.record_checkpoint(ids['finished'], tmp_path)
    # --fresh removes the links as links, never what they point to.
    targets = store.fresh_targets()
    assert store.trial_dir(ids['finished']) in targets
    store.delete(targets)
    assert snapshot(elsewhere) == before and not os.path.lexists(store.trial_dir(ids['finished']))


def test_a_spec_json_changed_to_another_cell_moves_no_result_between_cells(tmp_path):
    """The trial id names what trained in its folder: a spec.json edited to say another
    attention (or recipe, or data) puts no result into another cell."""
    from reports import load_manifest, load_trials, split_by_sweep

    from .store_helpers import add_trial, record_sweep

    store = ResultsStore(tmp_path / 'store')
    vanilla = add_trial(store, 'cifar_resnet20_v1', 'none', 0, train_loss=0.1, val_acc=0.9)
    add_trial(store, 'cifar_resnet20_v1', 'se', 0, train_loss=0.1, val_acc=0.5)
    spec_file = store.trial_dir(vanilla) / 'spec.json'
    value = json.loads(spec_file.read_text())
    value['spec']['attention'] = 'se'
    value['data']['digest'] = 'e' * 40
    spec_file.write_text(json.dumps(value))
    record_sweep(store, ['cifar_resnet20_v1'], ['none', 'se'])
    manifest = load_manifest(store.root)
    current, others = split_by_sweep(load_trials(store.root, manifest), manifest)
    cells = {row['attention']: row for row in current.to_dict('records')}
    assert len(current) == 2 and others.empty
    assert (cells['none']['val_acc'], cells['se']['val_acc']) == (0.9, 0.5)
    assert cells['none']['problems'] == [
        f'{spec_file}: describes another trial than the one its id names (its attention, its '
        "data differ from the sweep's); the sweep's record of the trial is used, and the next "
        'run rewrites it'
    ]


def test_a_final_json_that_contradicts_the_recipe_or_the_history_is_damage(sweep, capsys):
    path, loaded, store, ids = sweep
    final_file = store.trial_dir(ids['finished']) / 'final.json'
    final = json.loads(final_file.read_text())
    for epochs, why in ((1, 'its recipe trains 3'), (3, 'its history holds 2')):
        if epochs == 3:  # the recipe's count, but one epoch row less than it says
            store._write_history(ids['finished'], store.read_history(ids['finished'])[:2])
            (store.trial_dir(ids['finished']) / 'checkpoint').rename(store.root / 'moved')
        final_file.write_text(json.dumps(dict(final, epochs=epochs)))
        problem = f'{final_file}: says the trial finished after {epochs} epochs, but {why}'
        out = dry_run_allowing_problems(path, capsys)
        assert 'damaged' in out and problem in out, out
        row = {r.trial_id: r for r in store.trial_records(store.read_manifest())}[ids['finished']]
        assert row.status == 'damaged' and row.final is None
        assert any(p.startswith(problem) for p in row.problems)


def _crafted_store(tmp_path):
    """Four finished trials (ResNet-20 vanilla and SE, seeds 0 and 1) and their sweep record."""
    from .store_helpers import add_trial, record_sweep

    store = ResultsStore(tmp_path / 'store')
    ids = {
        (attention, seed): add_trial(
            store, 'cifar_resnet20_v1', attention, seed, train_loss=0.1, val_acc=0.8 + seed / 100
        )
        for attention in ('none', 'se')
        for seed in (0, 1)
    }
    record_sweep(store, ['cifar_resnet20_v1'], ['none', 'se'], seeds=(0, 1))
    return store, ids


def _edit_json(path, change):
    value = json.loads(Path(path).read_text())
    change(value)
    Path(path).write_text(json.dumps(value))


@pytest.mark.parametrize(
    'change, expected',
    [
        (lambda m: m['trials'].append(m['trials'][0]), 'listed twice'),
        (lambda m: m.update(models=m['models'] * 2), "model 'cifar_resnet20_v1' is listed twice"),
        (lambda m: m['report'].update(metrics='val_acc'), 'report: metrics'),
        (lambda m: m['report'].update(metrics=['bogus']), 'report: metrics.0'),
        (lambda m: m['report'].update(metrics=[]), 'report: metrics'),
        (lambda m: m['report'].update(overhead=5), 'report: overhead'),
        (lambda m: m.update(data={}), 'data.name: Field required'),
    ],
)
def test_a_sweep_record_with_copies_or_options_of_the_wrong_type_is_named(
    tmp_path, capsys, change, expected
):
    from reports.__main__ import main as reports_main

    store, ids = _crafted_store(tmp_path)
    _edit_json(store.root / 'sweep.json', change)
    before = snapshot(store.root / 'trials')
    assert reports_main([str(store.root)]) == 2
    err = capsys.readouterr().err
    assert 'not the sweep.json this project writes' in err and expected in err, err
    assert 'Traceback' not in err and '--report-only' in err
    assert snapshot(store.root / 'trials') == before


@pytest.mark.parametrize(
    'final, expected',
    [
        ({'val_acc': float('inf')}, 'val_acc inf is not a number a trial records'),
        ({'val_loss': 1e308}, 'val_loss 1e+308 is not a number a trial records'),
        ({'val_loss': -1e308}, 'val_loss -1e+308 is not a number a trial records'),
        ({'val_acc': 1.5}, 'val_acc 1.5 is not an accuracy'),
    ],
)
def test_numbers_no_trial_records_are_damage_not_a_crash(tmp_path, final, expected):
    from reports import render_all

    store, ids = _crafted_store(tmp_path)
    tid = ids[('se', 0)]
    _edit_json(store.trial_dir(tid) / 'final.json', lambda v: v.update(final))
    # The tables alone: the figures' handling of stored numbers has a test of its own.
    render_all(store.root, report_path=tmp_path / 'r.html', figures=False)
    assert expected in (tmp_path / 'r.html').read_text()
    record = {r.trial_id: r for r in store.trial_records()}[tid]
    assert record.status == 'damaged' and record.final is None


def test_stored_text_is_inert_in_the_terminal_csv_latex_and_figures(sweep, tmp_path, capsys):
    """Control characters (a terminal's escape sequences), lone surrogates, a formula for a
    spreadsheet, a blank line for LaTeX and a formula for matplotlib in stored text."""
    from reports import render_all

    from .store_helpers import add_trial

    path, loaded, store, ids = sweep
    store.write_error(ids['partial'], 'boom\r\x1b]52;c;aGk=\x07 \ud800 hidden', 2)
    code, out, err = run(['--config', str(path), '--dry-run'], capsys)
    assert code == 0 and '\x1b' not in out and '\r' not in out and '\x07' not in out
    assert 'error:  ]52;c;aGk=  \\ud800 hidden' in out  # \r ends a line
    code, out, err = run(['--config', str(path), '--report-only'], capsys)
    assert code == 0 and 'Traceback' not in err, err

    other = ResultsStore(tmp_path / 'other')
    tid = add_trial(other, 'cifar_resnet20_v1', 'none', 0, train_loss=0.1, val_acc=0.9)
    outside = add_trial(other, 'cifar_resnet20_v1', 'se', 0, train_loss=0.1, val_acc=0.9)
    _edit_json(other.trial_dir(outside) / 'spec.json', lambda v: v.update(name='=HYPERLINK("x")'))
    _edit_json(other.trial_dir(tid) / 'final.json', lambda v: v.update(device_kind='$x^{$'))
    from .store_helpers import record_sweep

    record_sweep(other, ['cifar_resnet20_v1'], ['none'])
    figures = tmp_path / 'other-figures'  # tmp_path/figures holds the sweep's own
    render_all(other.root, figures_dir=figures, report_path=tmp_path / 'r.html')
    assert (figures / 'speed.png').is_file()
    other.write_results_csv(other.read_manifest())
    assert '\'=HYPERLINK(""x"")' in (other.root / 'results.csv').read_text()
    from reports.exports import latex_text

    assert latex_text('a\n\nb\\x') == 'a b\\textbackslash{}x'  # no blank line ends a caption


def test_a_lock_with_a_process_id_no_system_has_is_one_message(tmp_path):
    from bench.store import StoreLocked

    store = ResultsStore(tmp_path / 'store')
    store.root.mkdir()
    (store.root / 'sweep.lock').write_text(json.dumps({'host': 'h', 'pid': 10**30, 'since': 'x'}))
    with pytest.raises(StoreLocked, match='not the sweep.lock this project writes'):
        with store.lock():
            pass


def test_compare_passes_over_a_finished_trial_without_a_metric(tmp_path):
    from reports.compare import compare_stores

    first, ids = _crafted_store(tmp_path / 'a')
    second, _ = _crafted_store(tmp_path / 'b')
    _edit_json(first.trial_dir(ids[('se', 0)]) / 'final.json', lambda v: v.pop('val_acc') and None)
    rows = {(r['attention'], r['metric']): r for r in compare_stores(first.root, second.root)}
    assert rows[('se', 'val_acc')]['n_a'] == 1 and rows[('se', 'val_loss')]['n_a'] == 2


def _swap_first_and_third_cells(manifest):
    first, third = manifest['trials'][0], manifest['trials'][2]
    for key in ('spec', 'name', 'attention'):
        first[key], third[key] = third[key], first[key]


@pytest.mark.parametrize(
    'change, expected',
    [
        (_swap_first_and_third_cells, 'is not the id of the spec it lists'),
        (lambda m: m['trials'][0].update(name='se-s9'), "is named 'se-s9', not "),
    ],
)
def test_a_sweep_record_whose_entries_are_not_their_ids_is_damaged(
    tmp_path, capsys, change, expected
):
    """Editing sweep.json with the spec.json files cannot move a result between cells:
    an entry's id is recomputed from its spec."""
    from reports.__main__ import main as reports_main

    store, ids = _crafted_store(tmp_path)
    _edit_json(store.root / 'sweep.json', change)
    if 'spec' in expected:  # the trials' own files say the same as the edited record
        for tid, entry in [
            (e['trial_id'], e)
            for e in json.loads((store.root / 'sweep.json').read_text())['trials']
        ]:
            _edit_json(
                store.trial_dir(tid) / 'spec.json',
                lambda v, e=entry: v.update(spec=e['spec'], name=e['name']),
            )
    assert reports_main([str(store.root)]) == 2
    err = capsys.readouterr().err
    assert 'not the sweep.json this project writes: trials.0: ' in err and expected in err, err
    assert '(found {' not in err


def test_stored_text_in_an_error_message_reaches_the_terminal_inert(tmp_path, capsys):
    from reports.__main__ import main as reports_main

    store, ids = _crafted_store(tmp_path)
    _edit_json(store.root / 'sweep.json', lambda m: m['attentions'].append('x\x1b[2J\x07'))
    assert reports_main([str(store.root)]) == 2
    err = capsys.readouterr().err
    assert 'names attention(s) this installation does not know: x [2J' in err
    assert '\x1b' not in err and '\x07' not in err


def test_odd_values_in_a_stored_history_and_recipe_are_passed_over_or_named(tmp_path, capsys):
    """An epoch's 1e308 images/s is left out of the speeds and figures; a decay schedule
    that is not a list makes the spec.json damaged, not a crash."""
    from reports import render_all

    store, ids = _crafted_store(tmp_path)
    for seed in (0, 1):
        history = store.trial_dir(ids[('se', seed)]) / 'history.csv'
        lines = history.read_text().splitlines()
        history.write_text(
            '\n'.join(lines[:1] + [line.rsplit(',', 1)[0] + ',1e308' for line in lines[1:]]) + '\n'
        )
    outside = ids[('none', 1)]
    _edit_json(store.root / 'sweep.json', lambda m: m.update(seeds=[0]))
    _edit_json(
        store.root / 'sweep.json',
        lambda m: m.update(trials=[t for t in m['trials'] if t['trial_id'] != outside]),
    )
    _edit_json(
        store.trial_dir(outside) / 'spec.json',
        lambda v: v['spec']['recipe'].update(lr_decay_epochs=5),
    )
    render_all(store.root, figures_dir=tmp_path / 'figures', report_path=tmp_path / 'r.html')
    html = (tmp_path / 'r.html').read_text()
    assert (tmp_path / 'figures' / 'speed.png').is_file()
    assert 'recipe.lr_decay_epochs: Input should be a valid list' in html


def test_a_listed_trial_whose_folder_is_a_link_is_damaged_in_the_reports_too(tmp_path):
    from reports import load_manifest, load_trials, split_by_sweep

    store, ids = _crafted_store(tmp_path)
    folder = store.trial_dir(ids[('se', 0)])
    folder.rename(tmp_path / 'elsewhere')
    folder.symlink_to(tmp_path / 'elsewhere')
    manifest = load_manifest(store.root)
    current, _ = split_by_sweep(load_trials(store.root, manifest), manifest)
    row = current.set_index('trial_id').loc[ids[('se', 0)]]
    assert row['status'] == 'damaged' and f'{folder} is a link' in row['problems'][0]
    assert ids[('se', 0)] in set(store.write_results_csv(manifest)['trial_id'])


def test_a_fifo_where_a_report_or_table_belongs_is_not_waited_on(tmp_path):
    import threading

    from bench.store import NotAStore
    from reports.outputs import is_our_report

    (tmp_path / 'store').mkdir()
    os.mkfifo(tmp_path / 'store' / 'table.md')
    os.mkfifo(tmp_path / 'report.html')
    outcome = []

    def check():
        outcome.append(is_our_report(tmp_path / 'report.html'))
        try:
            ResultsStore(tmp_path / 'store').check_is_store()
        except NotAStore as error:
            outcome.append(str(error))

    worker = threading.Thread(target=check, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), 'a FIFO was opened and waited on'
    assert outcome[0] is False and 'is not a results store of this project' in outcome[1]


def test_bidi_controls_zero_counts_and_a_linked_or_deep_sweep_record_in_a_store(tmp_path, capsys):
    """Found by fuzzing the store's JSON files: a right-to-left override in environment.json
    reached report.html as is (it shows text in another order than it is); a network of 0
    parameters in a spec.json divided by zero in the table; a sweep.json nested past
    Python's recursion limit was a traceback, and one linked elsewhere was read through
    the link for its message."""
    from bench.validation import one_line
    from reports import render_all
    from reports.__main__ import main as reports_main
    from reports.store import _unregistered_attentions

    from .store_helpers import add_trial, record_sweep

    store = ResultsStore(tmp_path / 'store')
    tid = add_trial(store, 'cifar_resnet20_v1', 'none', 0, train_loss=0.1, val_acc=0.9)
    add_trial(store, 'cifar_resnet20_v1', 'se', 0, train_loss=0.1, val_acc=0.9)
    record_sweep(store, ['cifar_resnet20_v1'], ['none', 'se'])
    (store.root / 'environment.json').write_text(json.dumps({'devices': 'cpu\u202eevil\u202c'}))
    _edit_json(store.trial_dir(tid) / 'spec.json', lambda v: v['model_stats'].update(params=0))
    render_all(store.root, report_path=tmp_path / 'r.html')
    html = (tmp_path / 'r.html').read_text()
    assert 'cpu evil ' in html and '\u202e' not in html and '\u202c' not in html
    assert one_line('a\u2066b\u2069c\u200dd') == 'a b c\u200dd'  # joiners are text
    assert one_line('a\u200eb\u200fc\u061cd') == 'a b c d'  # direction marks are not
    # A sweep record nested too deeply: one message, no traceback.
    manifest = store.root / 'sweep.json'
    manifest.write_text('[' * 100_000 + ']' * 100_000)
    capsys.readouterr()
    assert reports_main([str(store.root)]) != 0
    err = capsys.readouterr().err
    assert 'Traceback' not in err and 'sweep.json' in err, err
    # ...and linked elsewhere: its message does not read through the link.
    secret = tmp_path / 'secret.json'
    secret.write_text(json.dumps({'attentions': ['secret-attention']}))
    manifest.unlink()
    manifest.symlink_to(secret)
    assert _unregistered_attentions(manifest) == []
    assert reports_main([str(store.root)]) != 0
    assert 'secret-attention' not in capsys.readouterr().err
