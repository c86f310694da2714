"""End-to-end sweeps on CPU under a local Ray: store, resume, incremental runs, failures."""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import run_sweep
from bench.store import ResultsStore
from bench.sweep.cluster import start_ray
from bench.sweep.driver import run_sweep as run
from bench.sweep.plan import load_sweep_data, plan

from .sweep_helpers import loaded, write_sweep, write_tiny_data

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    return write_tiny_data(tmp_path_factory.mktemp('data') / 'cifar')


@pytest.fixture(scope='module')
def local_ray():
    ray = start_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def run_loaded(path, **plan_options):
    sweep = loaded(path)
    data = load_sweep_data(sweep)
    lines = []
    outcome = run(
        sweep, data, plan(sweep, data.identity.to_dict(), **plan_options), progress=lines.append
    )
    return sweep, outcome, lines


def epoch_lines(lines):
    return [line for line in lines if re.search(r' epoch \d+/\d+:', line)]


def test_a_two_by_two_sweep_fills_the_store_and_new_cells_train_alone(
    tmp_path, data_root, local_ray
):
    """One cell trained first; then a row and a column more: their three cells train, the
    stored one does not, and the store holds all four."""
    run_loaded(write_sweep(tmp_path, data_root, models=['cifar_resnet8_v1'], attentions=['none']))
    sweep, outcome, lines = run_loaded(write_sweep(tmp_path, data_root))
    assert sorted(p.name for p in outcome.trained) == sorted(
        ['cifar_resnet8_v1-eca-s0', 'cifar_resnet8_v2-none-s0', 'cifar_resnet8_v2-eca-s0']
    )
    assert len(outcome.statuses) == 4
    assert set(outcome.statuses.values()) == {'done'} and not outcome.failed
    store = ResultsStore(sweep.store_dir)
    for trial_id in store.trial_ids():
        final = store.read_final(trial_id)
        assert final['epochs'] == 1 and 0 <= final['val_acc'] <= 1
        assert final['omp_threads'] == 1  # exactly the cpus_per_trial it was given
        assert final['kernels'] == 'fused'  # the attentions' C++ kernels ran on the CPU
        assert final['kernel_isa'] in ('avx512', 'avx2', 'baseline')
        assert [row['epoch'] for row in store.read_history(trial_id)] == [1]
        assert store.checkpoint_epoch(trial_id) == 1
        spec = store.read_spec(trial_id)
        assert spec['data']['official'] is False and spec['model_stats']['params'] > 0
    import pandas as pd

    frame = pd.read_csv(sweep.store_dir / 'results.csv')
    assert len(frame) == 4 and set(frame['status']) == {'done'}
    assert (sweep.store_dir / 'environment.json').is_file()
    assert len(epoch_lines(lines)) == 3 and any('done: val acc' in line for line in lines)

    # The same command again trains nothing (and needs no Ray to find that out).
    _, again, lines = run_loaded(write_sweep(tmp_path, data_root))
    assert again.trained == [] and epoch_lines(lines) == []


def test_a_torch_sweep_trains_resumes_and_reports_like_a_gluon_one(
    tmp_path, data_root, local_ray, capsys
):
    """backend: torch in sweep.yaml: trials train on PyTorch, say so in the store and the
    reports, and sit beside the Gluon trials of the same cells without sharing them."""
    pytest.importorskip('torch', reason='the torch extra is not installed')
    outputs = {
        'outputs': {
            'results': 'results',
            'readme': 'README.md',
            'figures': 'figures',
            'report': 'report.html',
        },
        'report': {'metrics': ['val_acc'], 'overhead': True},
    }
    gluon_path = write_sweep(
        tmp_path, data_root, models=['cifar_resnet8_v2'], attentions=['none', 'gct'], extra=outputs
    )
    assert run_sweep.main(['--config', str(gluon_path), '--insert']) == 0
    torch_values = dict(
        outputs,
        recipe={'epochs': 2, 'batch_size': 16, 'lr_decay_epochs': [100], 'backend': 'torch'},
    )
    path = write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v2'],
        attentions=['none', 'gct'],
        extra=torch_values,
    )
    capsys.readouterr()
    assert run_sweep.main(['--config', str(path), '--dry-run']) == 0
    assert '2 trials: 0 done, 0 partial, 2 pending' in capsys.readouterr().out
    assert run_sweep.main(['--config', str(path)]) == 0
    store = ResultsStore(tmp_path / 'results' / 'tiny')
    import pandas as pd

    frame = pd.read_csv(store.root / 'results.csv')
    assert sorted(zip(frame['backend'], frame['in_sweep'])) == [
        ('gluon', False),
        ('gluon', False),
        ('torch', True),
        ('torch', True),
    ]
    from models.kernels.torch_ops import torch_kernel_status

    for trial_id in frame[frame['backend'] == 'torch']['trial_id']:
        final = store.read_final(trial_id)
        assert final['epochs'] == 2 and final['devices'] == 'cpu'
        assert final['kernels'].startswith('torch ') and final['omp_threads'] == 1
        # What the trial's steps took, not what the session knew before its first step.
        took_kernels = (
            torch_kernel_status().loaded and store.read_spec(trial_id)['spec']['attention'] == 'gct'
        )
        assert final['kernels'].endswith('+ fused attention CPU kernels') == took_kernels
        assert (final['kernel_isa'] is not None) == took_kernels
        assert store.read_spec(trial_id)['model_stats']['params'] > 0
    readme = (tmp_path / 'README.md').read_text()
    assert 'Trained with PyTorch (backend torch)' in readme
    assert '2 of 2 trials finished' in readme
    assert (
        'recipe differs: backend &#34;gluon&#34; (sweep: &#34;torch&#34;), epochs 1 '
        '(sweep: 2)' in (tmp_path / 'report.html').read_text()
    )
    # Run again: nothing is retrained.
    capsys.readouterr()
    assert run_sweep.main(['--config', str(path)]) == 0
    out = capsys.readouterr().out
    assert '2 trials: 2 done' in out and 'epoch 1/2' not in out


def test_both_backends_sweeps_compared_cell_by_cell(tmp_path, data_root, local_ray, capsys):
    """The small version of docs/backends.md's comparison: the same cells, two seeds,
    trained by each backend through run_sweep, then reports.compare on the two stores."""
    pytest.importorskip('torch', reason='the torch extra is not installed')
    from reports.compare import compare_stores
    from reports.compare import main as compare_main

    stores = {}
    for backend in ('gluon', 'torch'):
        values = {
            'seeds': [0, 1],
            'recipe': {
                'epochs': 1,
                'batch_size': 16,
                'lr': 0.01,
                'lr_decay_epochs': [100],
                'backend': backend,
            },
        }
        path = write_sweep(
            tmp_path,
            data_root,
            name=f'both-{backend}',
            models=['cifar_resnet8_v1'],
            # One cell a side: the comparison's plumbing, not its statistics.
            attentions=['gct'],
            extra=values,
        )
        assert run_sweep.main(['--config', str(path), '--no-report']) == 0
        stores[backend] = tmp_path / 'results' / f'both-{backend}'
    rows = compare_stores(stores['gluon'], stores['torch'], ['val_acc', 'train_loss'])
    assert [(r['attention'], r['metric']) for r in rows] == [
        ('gct', 'val_acc'),
        ('gct', 'train_loss'),
    ]
    for row in rows:
        assert (row['backend_a'], row['backend_b']) == ('gluon', 'torch')
        # Two seeds a side: no verdict (n < 3), whatever p says.
        assert row['n_a'] == row['n_b'] == 2 and not row['judged'] and not row['significant']
        assert abs(row['difference']) < 1.0  # both learned the same task, roughly
    capsys.readouterr()
    assert compare_main([str(stores['gluon']), str(stores['torch'])]) == 0
    out = capsys.readouterr().out
    assert '0 of 0 judged comparisons differ' in out and 'n < 3: not judged' in out


def test_a_failing_and_a_diverging_trial_are_stored_and_the_rest_go_on(
    tmp_path, data_root, local_ray, capsys
):
    path = write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v1'],
        attentions=['none', 'se', 'eca'],
        overrides=[{'match': {'attention': 'se'}, 'recipe': {'optimizer': 'sgd', 'lr': 1.0e30}}],
    )
    _plant_a_broken_checkpoint(loaded(path), 'eca')  # a trial that fails when it runs
    code = run_sweep.main(['--config', str(path), '--no-report'])
    assert code == 1
    err = capsys.readouterr().err
    assert '2 trial(s) failed' in err and '--retry-failed' in err
    assert 'Invalid NDArray file format' in err
    assert 'training diverged' in err and 'epoch 1, batch' in err
    sweep = loaded(path)
    store = ResultsStore(sweep.store_dir)
    statuses = {store.read_spec(t)['name']: store.status(t)[0] for t in store.trial_ids()}
    assert statuses == {
        'cifar_resnet8_v1-none-s0': 'done',
        'cifar_resnet8_v1-se-s0': 'failed',
        'cifar_resnet8_v1-eca-s0': 'failed',
    }

    # Without --retry-failed a failed trial stays failed; the dry run shows why.
    assert run_sweep.main(['--config', str(path), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert re.search(r'cifar_resnet8_v1-se-s0 +\w+ +failed', out)
    assert 'error: ' in out and '1 done, 0 partial, 0 pending, 2 failed' in out

    # Once the cause is fixed, --retry-failed trains them again.
    path = write_sweep(
        tmp_path, data_root, models=['cifar_resnet8_v1'], attentions=['none', 'se', 'eca']
    )
    sweep, outcome, _ = run_loaded(path, retry_failed=True)
    assert [p.name for p in outcome.trained] == [
        'cifar_resnet8_v1-se-s0',
        'cifar_resnet8_v1-eca-s0',
    ] or sorted(p.name for p in outcome.trained) == [
        'cifar_resnet8_v1-eca-s0',
        'cifar_resnet8_v1-se-s0',
    ]
    names = {p.trial_id: p.name for p in outcome.planned}
    assert {names[t]: s for t, s in outcome.statuses.items()} == {
        'cifar_resnet8_v1-none-s0': 'done',
        'cifar_resnet8_v1-se-s0': 'done',
        'cifar_resnet8_v1-eca-s0': 'failed',
    }


def _plant_a_broken_checkpoint(sweep, attention):
    """The cell's trial as a crash could leave it: one epoch checkpointed, but its weights
    file garbage, so that it fails when it resumes."""
    import numpy as np

    from bench.fileio import write_json_atomic

    data = load_sweep_data(sweep)
    (planned,) = [p for p in plan(sweep, data.identity.to_dict()) if p.spec.attention == attention]
    folder = ResultsStore(sweep.store_dir).trial_dir(planned.trial_id) / 'checkpoint'
    row = {
        'epoch': 1,
        'lr': 0.003,
        'train_loss': 2.0,
        'train_acc': 0.1,
        'val_loss': 2.0,
        'val_acc': 0.1,
        'epoch_seconds': 1.0,
        'train_seconds': 1.0,
        'images_per_second': 100.0,
    }
    write_json_atomic(
        folder / 'state.json',
        {
            'epoch': 1,
            'history': [row],
            'spec': planned.spec.to_dict(),
            'rng': np.random.default_rng(0).bit_generator.state,
            'data': data.identity.to_dict(),
        },
    )
    (folder / 'model.params').write_bytes(b'not an MXNet array file')


def test_tune_restarts_a_crashed_trial_from_its_last_checkpoint(tmp_path, data_root, local_ray):
    """The worker of a trial is SIGKILLed after its first epoch; with max_failures 1 Tune
    restarts it from the checkpoint of that epoch, not from scratch."""
    from bench.sweep import tune_trial

    path = write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v1'],
        attentions=['gct'],
        epochs=3,
        extra={'resources': {'cpus_per_trial': 1, 'gpus_per_trial': 0, 'max_failures': 1}},
    )
    sweep = loaded(path)
    data = load_sweep_data(sweep)
    reported, pids, lines = [], [], []
    real_on_result = tune_trial.StoreCallback.on_trial_result

    def on_result_then_crash(self, iteration, trials, trial, result, **info):
        real_on_result(self, iteration, trials, trial, result, **info)  # epoch, checkpoint
        if 'epoch' in result:
            reported.append(result['epoch'])
            pids.append(result['pid'])
            if reported == [1]:  # the worker dies while training epoch 2
                os.kill(pids[-1], signal.SIGKILL)

    tune_trial.StoreCallback.on_trial_result = on_result_then_crash
    try:
        outcome = run(sweep, data, plan(sweep, data.identity.to_dict()), progress=lines.append)
    finally:
        tune_trial.StoreCallback.on_trial_result = real_on_result
    assert len(set(pids)) == 2, 'the trial was not restarted in a new worker'
    assert set(outcome.statuses.values()) == {'done'}
    assert reported[0] == 1 and reported[-2:] == [2, 3] and reported.count(1) == 1, reported
    assert any(
        'Tune retries it (retry 1 of 1) from the last epoch the store holds (1)' in line
        for line in lines
    ), lines
    assert any(
        re.match(r'\d\d:\d\d:\d\d cifar_resnet8_v1-gct-s0 resumes after epoch 1 on node ', line)
        for line in lines
    ), lines
    store = ResultsStore(sweep.store_dir)
    (trial_id,) = store.trial_ids()
    assert [r['epoch'] for r in store.read_history(trial_id)] == [1, 2, 3]


def test_dry_run_only_and_fresh(tmp_path, data_root, local_ray, capsys, monkeypatch):
    path = write_sweep(tmp_path, data_root)
    assert (
        run_sweep.main(
            ['--config', str(path), '--no-report', '--only', 'model=cifar_resnet8_v2,attention=eca']
        )
        == 0
    )
    capsys.readouterr()
    assert run_sweep.main(['--config', str(path), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert re.search(r'cifar_resnet8_v2-eca-s0 +\w{12} +done', out)
    assert re.search(r'cifar_resnet8_v1-none-s0 +\w{12} +pending +asks 1 CPU', out)
    assert '4 trials: 1 done, 0 partial, 3 pending, 0 failed' in out

    # A dry run deletes nothing, --yes or not; it lists what --fresh would delete.
    monkeypatch.setattr('builtins.input', lambda prompt: 'y')
    assert run_sweep.main(['--config', str(path), '--fresh', '--yes', '--dry-run']) == 0
    out = capsys.readouterr().out
    assert '1 done' in out and re.search(r'--fresh would delete \d+ path\(s\):\n  \S+/trials/', out)
    monkeypatch.setattr('builtins.input', lambda prompt: 'n')
    assert run_sweep.main(['--config', str(path), '--fresh', '--no-report']) == 1
    assert 'nothing deleted' in capsys.readouterr().out
    assert (
        run_sweep.main(
            [
                '--config',
                str(path),
                '--fresh',
                '--yes',
                '--no-report',
                '--only',
                'model=cifar_resnet8_v2,attention=eca',
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert 'deleted 1 stored trial(s) of the cells --only selects' in out
    assert re.findall(r'^\d\d:\d\d:\d\d (\S+) epoch 1/1:', out, flags=re.M) == [
        'cifar_resnet8_v2-eca-s0'
    ]


def test_plan_and_reports_agree_after_the_recipe_changes(tmp_path, data_root, local_ray, capsys):
    """A sweep trained with 1 epoch, then edited to 2: the dry run, --report-only and the
    run's closing plan all count the 1-epoch result as not done, and no table shows it."""
    outputs = {
        'outputs': {
            'results': 'results',
            'readme': 'README.md',
            'figures': 'figures',
            'report': 'report.html',
        },
        'report': {'metrics': ['val_acc'], 'overhead': False},
    }
    path = write_sweep(
        tmp_path, data_root, models=['cifar_resnet8_v1'], attentions=['none'], extra=outputs
    )
    assert run_sweep.main(['--config', str(path), '--insert']) == 0
    readme = tmp_path / 'README.md'
    assert '1 of 1 trials finished' in readme.read_text()

    path = write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v1'],
        attentions=['none'],
        epochs=2,
        extra=outputs,
    )
    capsys.readouterr()
    assert run_sweep.main(['--config', str(path), '--dry-run']) == 0
    assert '1 trial: 0 done, 0 partial, 1 pending' in capsys.readouterr().out
    assert run_sweep.main(['--config', str(path), '--report-only']) == 0
    text = readme.read_text()
    assert '0 of 1 trials finished' in text and 'TBA' in text
    assert 'recipe differs: epochs 1 (sweep: 2)' in (tmp_path / 'report.html').read_text()

    capsys.readouterr()
    assert run_sweep.main(['--config', str(path)]) == 0
    assert '1 trial: 1 done, 0 partial, 0 pending' in capsys.readouterr().out
    assert '1 of 1 trials finished' in readme.read_text()
    import pandas as pd

    frame = pd.read_csv(tmp_path / 'results' / 'tiny' / 'results.csv')
    assert sorted(zip(frame['epochs'], frame['in_sweep'])) == [(1, False), (2, True)]


def test_bad_config_and_missing_data_exit_with_a_message(tmp_path, capsys):
    bad = tmp_path / 'bad.yaml'
    bad.write_text(
        'name: x\nmodels: [cifar_resnet20_v1]\nattentions: [eca]\nrecipe: {lr_decay_epoch: [3]}\n'
    )
    assert run_sweep.main(['--config', str(bad)]) == 2
    assert f'{bad}: recipe.lr_decay_epoch: unknown key' in capsys.readouterr().err
    nodata = write_sweep(tmp_path, tmp_path / 'nowhere')
    assert run_sweep.main(['--config', str(nodata)]) == 2
    assert 'CIFAR-10 was not found under' in capsys.readouterr().err


def _statuses(store_dir):
    store = ResultsStore(store_dir)
    return {t: store.status(t) for t in store.trial_ids()}


def test_a_sweep_killed_with_sigkill_resumes_without_retraining(tmp_path, data_root):
    """The driver is SIGKILLed mid-sweep; the next run skips finished trials, resumes the
    partial ones from their checkpoints and trains the rest, counted in epochs."""
    epochs = 3
    path = write_sweep(
        tmp_path,
        data_root,
        epochs=epochs,
        extra={
            'resources': {
                'cpus_per_trial': 1,
                'gpus_per_trial': 0,
                'max_concurrent_trials': 2,
                'max_failures': 0,
            }
        },
    )
    store_dir = tmp_path / 'results' / 'tiny'
    env = dict(os.environ, RAY_ADDRESS='', PYTHONUNBUFFERED='1')
    env.pop('RAY_ADDRESS')
    log = open(tmp_path / 'first.log', 'w')
    first = subprocess.Popen(
        [sys.executable, str(ROOT / 'run_sweep.py'), '--config', str(path), '--no-report'],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            states = [s for s, _ in _statuses(store_dir).values()]
            if states.count('done') >= 1 and states.count('partial') >= 1:
                break
            if first.poll() is not None:
                pytest.fail(
                    'the sweep ended before it could be killed: '
                    + (tmp_path / 'first.log').read_text()[-2000:]
                )
            time.sleep(0.05)
        else:
            pytest.fail('no trial finished in time: ' + (tmp_path / 'first.log').read_text())
        os.kill(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        _end_sweep(first, log)

    before = _statuses(store_dir)
    assert 'done' in [s for s, _ in before.values()]
    # The killed trials' temporary folders are in the store's scratch, not in /tmp for
    # good. (A worker that Ray ends gracefully, not by SIGKILL, removes its own: a run
    # under load left none in the scratch once; then none may be anywhere else either.)
    left = list((store_dir / 'ray' / 'trials').iterdir())
    assert all(p.name.split('-')[0] in before for p in left)
    in_tmp = [p for t in before for p in Path(tempfile.gettempdir()).glob(f'{t}-*')]
    assert not in_tmp, in_tmp
    partial_epochs = {t: e for t, (s, e) in before.items() if s == 'partial'}
    # A trial killed after its last checkpoint but before final.json is partial at
    # epochs of epochs: resuming it trains nothing and only writes final.json.
    assert partial_epochs and all(0 < e <= epochs for e in partial_epochs.values())
    expected_epochs = sum(epochs - e for s, e in before.values() if s != 'done')

    second = subprocess.run(
        [sys.executable, str(ROOT / 'run_sweep.py'), '--config', str(path), '--no-report'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    trained = re.findall(r'^\d\d:\d\d:\d\d (\S+) epoch (\d+)/\d+:', second.stdout, flags=re.M)
    assert len(trained) == expected_epochs, second.stdout
    names = {ResultsStore(store_dir).read_spec(t)['name']: t for t in before}
    for name, epoch in trained:
        status, done_epochs = before[names[name]]
        assert status != 'done', f'{name} was finished but trained again'
        assert int(epoch) > done_epochs, f'{name} retrained epoch {epoch}'
    after = _statuses(store_dir)
    assert all(s == 'done' for s, _ in after.values())
    store = ResultsStore(store_dir)
    for trial_id in store.trial_ids():
        assert [r['epoch'] for r in store.read_history(trial_id)] == list(range(1, epochs + 1))
    # Cleaned by the resumed run (at its start, and at its end for what the killed run's
    # lingering workers wrote after that).
    assert not [p for p in left if os.path.lexists(p)]


def _end_sweep(process, log):
    """End what is left of a sweep started in its own session (the driver and the Ray it
    started: the process group), and close its log."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    log.close()


def _start_sweep(path, tmp_path, log_name):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('RAY_ADDRESS', None)
    log = open(tmp_path / log_name, 'w')
    process = subprocess.Popen(
        [sys.executable, str(ROOT / 'run_sweep.py'), '--config', str(path), '--no-report'],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    return process, log, env


def _wait_for(condition, process, log_path, seconds=240):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            pytest.fail('the sweep ended too early: ' + log_path.read_text()[-3000:])
        time.sleep(0.05)
    pytest.fail('timed out: ' + log_path.read_text()[-3000:])


def test_one_sweep_per_store_and_ctrl_c_ends_with_130_and_resumes(tmp_path, data_root):
    """A second run on a busy store is refused with who holds it; Ctrl-C (SIGINT to the
    process group, as a terminal sends it) ends the first with 130 and a way on; the next
    run resumes without training a finished epoch again."""
    epochs = 3
    path = write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v1'],
        attentions=['eca'],  # one trial: interrupted mid-way, then resumed
        epochs=epochs,
        extra={
            'resources': {
                'cpus_per_trial': 1,
                'gpus_per_trial': 0,
                'max_concurrent_trials': 1,
                'max_failures': 0,
            }
        },
    )
    store_dir = tmp_path / 'results' / 'tiny'
    first, log, env = _start_sweep(path, tmp_path, 'first.log')
    try:
        _wait_for(
            lambda: any(s == 'partial' for s, _ in _statuses(store_dir).values()),
            first,
            tmp_path / 'first.log',
        )
        second = subprocess.run(
            [sys.executable, str(ROOT / 'run_sweep.py'), '--config', str(path), '--no-report'],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert second.returncode == 2
        assert re.search(
            rf'another sweep is running on {re.escape(str(store_dir))}: process '
            rf'{first.pid} on host \S+, since .*; if it is gone .*, delete '
            rf'{re.escape(str(store_dir / "sweep.lock"))}',
            second.stderr,
        ), second.stderr
        os.killpg(first.pid, signal.SIGINT)
        assert first.wait(120) == 130
    finally:
        _end_sweep(first, log)
    output = (tmp_path / 'first.log').read_text()
    assert 'interrupted: every finished epoch is in the store; run the same command' in output
    assert not (store_dir / 'sweep.lock').exists()
    before = _statuses(store_dir)
    assert set(s for s, _ in before.values()) <= {'done', 'partial', 'pending'}, before

    third = subprocess.run(
        [sys.executable, str(ROOT / 'run_sweep.py'), '--config', str(path), '--no-report'],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=400,
    )
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    trained = re.findall(r'^\d\d:\d\d:\d\d (\S+) epoch (\d+)/\d+:', third.stdout, flags=re.M)
    assert len(trained) == sum(epochs - e for s, e in before.values() if s != 'done')
    store = ResultsStore(store_dir)
    for trial_id in store.trial_ids():
        assert store.status(trial_id) == ('done', epochs)
        assert [r['epoch'] for r in store.read_history(trial_id)] == list(range(1, epochs + 1))


def _processes_below(pid):
    from bench.sweep.watchdog import descendants

    return descendants(pid)


@pytest.mark.parametrize('which', ['gcs_server', 'raylet'])
def test_the_death_of_rays_head_ends_the_run_with_one_message_and_nothing_left(
    tmp_path, data_root, which
):
    """The run's GCS server or raylet is killed mid-sweep: the run ends within seconds
    (Ray's own driver would wait a minute and exit from C++), with one message, its lock
    released, every Ray process it started ended, and the trial in progress resumable."""
    from bench.sweep.watchdog import _stat

    path = write_sweep(
        tmp_path, data_root, models=['cifar_resnet8_v1'], attentions=['none'], epochs=200
    )
    store_dir = tmp_path / 'results' / 'tiny'
    run, log, env = _start_sweep(path, tmp_path, 'run.log')
    seen = {}
    try:
        _wait_for(
            lambda: any(s == 'partial' for s, _ in _statuses(store_dir).values()),
            run,
            tmp_path / 'run.log',
        )
        seen = _processes_below(run.pid)
        head = [
            pid
            for pid in seen
            if which
            in Path(f'/proc/{pid}/cmdline').read_bytes().split(b'\0')[0].decode(errors='replace')
        ]
        assert head, seen
        os.kill(head[0], signal.SIGKILL)
        assert run.wait(60) == 1
        time.sleep(1)
        # Before the test's own clean-up below ends the process group.
        alive = [pid for pid, started in seen.items() if (_stat(pid) or (0, None))[1] == started]
    finally:
        _end_sweep(run, log)
    output = (tmp_path / 'run.log').read_text()
    assert re.search(
        r"error: Ray's (head|node) process \(the (GCS server|raylet)\), pid \d+, "
        r'was killed by signal 9, so the sweep stopped\. Every finished epoch is in '
        r'the store; run the same command again to resume',
        output,
    ), output[-3000:]
    assert not (store_dir / 'sweep.lock').exists()
    assert not alive, alive
    assert [s for s, _ in _statuses(store_dir).values()] == ['partial']


def test_without_an_address_a_sweep_never_joins_a_cluster_someone_else_started(tmp_path, data_root):
    """A stranger's `ray start --head` on the same machine (which ray.init() would join):
    the sweep starts its own Ray instead, and the stranger's cluster is left alone."""
    import json

    env = dict(os.environ)
    env.pop('RAY_ADDRESS', None)
    stranger = subprocess.Popen(
        [
            str(Path(sys.executable).parent / 'ray'),
            'start',
            '--head',
            '--num-cpus',
            '7',
            '--port',
            '0',
            '--include-dashboard',
            'false',
            '--block',
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    current = Path('/tmp/ray/ray_current_cluster')
    try:
        deadline = time.monotonic() + 60
        while not current.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert current.exists(), "the stranger's cluster did not start"
        path = write_sweep(tmp_path, data_root, models=['cifar_resnet8_v1'], attentions=['none'])
        done = subprocess.run(
            [sys.executable, str(ROOT / 'run_sweep.py'), '--config', str(path), '--no-report'],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        environment = json.loads((tmp_path / 'results' / 'tiny' / 'environment.json').read_text())
        assert '7 CPUs' not in json.dumps(environment['devices'])
        assert stranger.poll() is None  # the stranger's cluster lives on
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait(30)
        current.unlink(missing_ok=True)


def test_a_disk_that_fills_mid_run_is_one_message_and_the_next_run_resumes(
    tmp_path, data_root, local_ray, capsys, monkeypatch
):
    import errno

    path = write_sweep(
        tmp_path, data_root, models=['cifar_resnet8_v1'], attentions=['none'], epochs=3
    )
    real = ResultsStore.record_epoch

    def full_at_epoch_two(self, trial_id, metrics):
        if metrics['epoch'] >= 2:
            raise OSError(
                errno.ENOSPC,
                'No space left on device',
                str(self.trial_dir(trial_id) / 'history.csv'),
            )
        return real(self, trial_id, metrics)

    monkeypatch.setattr(ResultsStore, 'record_epoch', full_at_epoch_two)
    assert run_sweep.main(['--config', str(path), '--no-report']) == 2
    err = capsys.readouterr().err
    assert 'history.csv: No space left on device (ENOSPC); free space on that disk' in err
    assert 'Traceback' not in err
    store_dir = tmp_path / 'results' / 'tiny'
    (state,) = _statuses(store_dir).values()
    assert state[0] == 'partial' and not (store_dir / 'sweep.lock').exists()
    monkeypatch.setattr(ResultsStore, 'record_epoch', real)
    assert run_sweep.main(['--config', str(path), '--no-report']) == 0
    out = capsys.readouterr().out
    assert re.findall(r' epoch (\d+)/3:', out) == [str(e) for e in range(state[1] + 1, 4)]


def test_bench_train_trains_the_sweeps_trial_bit_for_bit(tmp_path, data_root, local_ray):
    """The same cell by hand: bench.train takes the sweep file's cpus_per_trial as its
    thread count, so its numbers are the sweep trial's to the last bit."""
    import json

    path = write_sweep(
        tmp_path, data_root, models=['cifar_resnet8_v1'], attentions=['gct'], epochs=2
    )
    sweep, outcome, _ = run_loaded(path)
    (trial_id,) = [p.trial_id for p in outcome.planned]
    final = ResultsStore(sweep.store_dir).read_final(trial_id)
    env = dict(os.environ)
    env.pop('OMP_NUM_THREADS', None)
    done = subprocess.run(
        [
            sys.executable,
            '-m',
            'bench.train',
            '--config',
            str(path),
            '--model',
            'cifar_resnet8_v1',
            '--gct',
            '--num-epochs',
            '2',
            '--batch-size',
            '16',
            '--lr-decay-epoch',
            '100',
            '--num-gpus',
            '0',
            '--data-root',
            str(data_root),
            '--no-download',
            '--quiet',
            '--output',
            str(tmp_path / 'by-hand.json'),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (
        f"1 CPU thread(s) ({path}'s cpus_per_trial, as the sweep's trial of the cell)"
        in done.stdout
    )
    by_hand = json.loads((tmp_path / 'by-hand.json').read_text())['history'][-1]
    for key in ('train_loss', 'val_loss', 'val_acc'):
        assert by_hand[key] == final[key], key
