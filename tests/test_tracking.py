"""Live views of a sweep (bench.tracking): MLflow, embedded and a real tracking server
started here on 127.0.0.1, and TensorBoard event files read back with TensorBoard's own
reader. What they show must equal the store's history.csv."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import run_sweep
from bench.fileio import write_json_atomic
from bench.records import PARTIAL
from bench.store import HISTORY_FIELDS, ResultsStore
from bench.sweep.config import ConfigError, load_config
from bench.sweep.driver import trial_run
from bench.sweep.plan import load_sweep_data, plan
from bench.sweep.tune_trial import (
    CHECKPOINT_KEY,
    NODE_DEATH_WAIT_SECONDS,
    STARTED_KEY,
    StoreCallback,
)
from bench.tracking import FAILED, FINISHED, KILLED, open_trackers, tracking_problems
from bench.trial.checkpoint import pack_checkpoint

from .sweep_helpers import write_sweep, write_tiny_data

METRICS = [key for key in HISTORY_FIELDS if key != 'epoch']


def free_port():
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


@pytest.fixture(scope='module')
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (its own SQLite database and artifact store)."""
    folder = tmp_path_factory.mktemp('mlflow-server')
    port = free_port()
    log = open(folder / 'server.log', 'wb')
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / 'mlflow'),
            'server',
            '--host',
            '127.0.0.1',
            '--port',
            str(port),
            '--workers',
            '1',
            '--backend-store-uri',
            f'sqlite:///{folder / "mlflow.db"}',
            '--artifacts-destination',
            str(folder / 'artifacts'),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers end with it
    )
    uri = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f'{uri}/health', timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f'the MLflow server did not start:\n{(folder / "server.log").read_text()}')
        time.sleep(0.5)
    yield uri
    # Its data is the test's alone: no graceful stop (SIGTERM took ~6 s).
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    log.close()


def client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def trial_runs(uri, experiment):
    """The sweep's active trial runs (not its parent run), by name."""
    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    runs = mlflow.search_runs([found.experiment_id])
    runs = [r for r in runs if r.data.tags.get('bench_role') != 'sweep']
    return {r.info.run_name: r for r in runs}, found


def parent_run(uri, experiment):
    mlflow = client(uri)
    found = mlflow.get_experiment_by_name(experiment)
    (run,) = mlflow.search_runs([found.experiment_id], "tags.bench_role = 'sweep'")
    return run


def metric_rows(uri, run_id):
    """A run's metrics as history.csv rows: epoch -> {metric: value}, each epoch once."""
    rows = {}
    for key in METRICS:
        for metric in client(uri).get_metric_history(run_id, key):
            assert key not in rows.get(metric.step, {}), f'{key} of epoch {metric.step} twice'
            rows.setdefault(metric.step, {})[key] = metric.value
    return rows


def tensorboard_rows(folder):
    """A trial's TensorBoard scalars, read by TensorBoard's own reader, as history rows."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from bench.tracking.tensorboard_events import SCALAR_TAGS

    events = EventAccumulator(str(folder), size_guidance={'scalars': 0})
    events.Reload()
    rows = {}
    for key, tag in SCALAR_TAGS.items():
        for event in events.Scalars(tag):
            assert key not in rows.get(event.step, {}), f'{tag} of epoch {event.step} twice'
            rows.setdefault(event.step, {})[key] = event.value
    return rows, events


def stored_rows(store, trial_id, precision=float):
    """The store's history.csv as rows (`precision`: np.float32 for TensorBoard's values,
    which are float32)."""
    return {
        row['epoch']: {k: float(precision(row[k])) for k in METRICS}
        for row in store.read_history(trial_id)
    }


def stored_in_float32(store, trial_id):
    return stored_rows(store, trial_id, np.float32)


# --------------------------------------------------------------- the sweep file's section


def test_the_tracking_section_is_checked_and_changes_no_trial(tmp_path):
    path = write_sweep(tmp_path, tmp_path / 'data', extra={'tracking': {'mlflow': 'ture'}})
    with pytest.raises(ConfigError, match=r'tracking\.mlflow: expected true .* \(found .ture.\)'):
        load_config(path)
    path = write_sweep(tmp_path, tmp_path / 'data')
    tracked = load_config(path, ['tracking.mlflow=true', 'tracking.tensorboard=true'])
    # How a sweep is watched is not what it trains: the same sweep, store and trials.
    assert tracked.variant_of is None and tracked.store_dir == load_config(path).store_dir
    assert tracked.config.tracking.mlflow is True and tracked.config.tracking.tensorboard


def test_a_dry_run_says_where_to_watch_and_writes_nothing(tmp_path, capsys):
    data = write_tiny_data(tmp_path / 'data', train=16, test=8)
    path = write_sweep(tmp_path, data, extra={'tracking': {'tensorboard': True, 'mlflow': True}})
    assert run_sweep.main(['--config', str(path), '--dry-run']) == 0
    out = capsys.readouterr().out
    results = tmp_path / 'results'
    assert f'tensorboard --logdir {results / "tiny" / "tensorboard"}' in out
    assert f'mlflow ui --backend-store-uri sqlite:///{results / "mlflow" / "mlflow.db"}' in out
    assert not results.exists()


def test_a_password_in_a_tracking_uri_is_never_printed(tmp_path):
    from bench.tracking import describe_tracking
    from bench.validation import without_secrets as shown_uri

    uri = 'https://researcher:s3cret@mlflow.example.org:5000/base'
    assert shown_uri(uri) == 'https://researcher:***@mlflow.example.org:5000/base'
    assert shown_uri('http://127.0.0.1:5000') == 'http://127.0.0.1:5000'
    path = write_sweep(tmp_path, tmp_path / 'data', extra={'tracking': {'mlflow': uri}})
    (line,) = describe_tracking(load_config(path))
    assert 's3cret' not in line and 'researcher:***@mlflow.example.org' in line


def test_a_password_never_reaches_the_output_or_the_tracker(tmp_path, capsys):
    from bench.tracking import short_reason

    path = write_sweep(tmp_path, tmp_path / 'data')
    secret = 'tracking.mlflow=https://u:s3cr3t@mlflow.example.org:5000/'
    # The overrides as the header and the sweep's tags say them; a bad override beside it.
    assert 's3cr3t' not in load_config(path, [secret]).described
    with pytest.raises(ConfigError) as error:
        load_config(path, [secret, 'recipe.epochs=abc'])
    assert 's3cr3t' not in str(error.value) and 'u:***@mlflow.example.org' in str(error.value)
    with pytest.raises(ConfigError) as error:  # a typo: the value is quoted, the password not
        load_config(path, ['tracking.mlflow=http//u:s3cr3t@127.0.0.1:9'])
    assert 's3cr3t' not in str(error.value)
    # MLflow's own error texts quote the URL with its password.
    failure = RuntimeError('Invalid url: http://u:s3cr3t@127.0.0.1:99999/api/2.0/mlflow/x')
    assert short_reason(failure) == 'Invalid url: http://u:***@127.0.0.1:99999/api/2.0/mlflow/x'
    assert run_sweep.main(['--config', str(path), '--dry-run', secret]) != 1
    assert 's3cr3t' not in capsys.readouterr().out


def test_a_tracking_uri_that_is_no_url_is_a_config_error(tmp_path):
    path = write_sweep(tmp_path, tmp_path / 'data')
    for wrong in ('http://[::1:5000', 'http://host:port99', 'ture', ''):
        with pytest.raises(ConfigError, match='tracking.mlflow: expected true'):
            load_config(path, [f'tracking.mlflow={wrong}'])


def test_a_tracker_without_its_package_is_named_before_anything_trains(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, 'find_spec', lambda name, *a: None if name == 'mlflow' else real(name, *a)
    )
    path = write_sweep(tmp_path, tmp_path / 'data', extra={'tracking': {'mlflow': True}})
    (problem,) = tracking_problems(load_config(path))
    assert 'tracking.mlflow is on, but the package mlflow is not installed' in problem
    assert "pip install -e '.[tracking]'" in problem


# ------------------------------------------------- the driver's callback, with Ray's part faked


def epoch_row(epoch, offset):
    # Numbers no float32 holds exactly: a view that rounds them differs from the store.
    return {
        'epoch': epoch,
        'lr': 0.003,
        'train_loss': 2.0 / (epoch + offset) + 1e-9,
        'train_acc': 1.0 / 3.0 + epoch / 100,
        'val_loss': 2.0 / (epoch + offset + 0.5) + 1e-10,
        'val_acc': 0.1 + epoch / 7.0,
        'epoch_seconds': 1.0 / 3.0,
        'train_seconds': 0.3,
        'images_per_second': 1000.0 / 3.0,
    }


class FakeRun:
    """What the driver's callback sees of Ray Tune for one trial."""

    def __init__(self, callback, record, store, resources, tmp_path, identity):
        run = trial_run(record, store, resources)
        self.record, self.tmp_path, self.identity = record, tmp_path, identity
        self.history = store.read_history(record.trial_id)
        error_file = tmp_path / f'{record.trial_id}-error.txt'
        self.trial = SimpleNamespace(
            config={'trial': run.to_config()}, error_file=str(error_file), num_failures=0
        )
        self.callback, self.error_file, self.offset = callback, error_file, len(record.name) % 3

    def start(self, epoch):
        self.callback.on_trial_result(
            0,
            [],
            self.trial,
            {STARTED_KEY: epoch, 'node_id': 'node', 'devices': 'cpu(0)', 'device_kind': 'cpu'},
        )

    def epochs(self, *numbers):
        """Epochs reported as a trial reports them, each with its checkpoint."""
        for number in numbers:
            row = epoch_row(number, self.offset)
            self.history = [r for r in self.history if r['epoch'] < number] + [row]
            folder = self.tmp_path / f'checkpoint-{self.record.trial_id}-{number}'
            write_json_atomic(
                folder / 'state.json',
                {
                    'epoch': number,
                    'history': self.history,
                    'spec': self.record.spec.to_dict(),
                    'data': self.identity,
                },
            )
            report = dict(row, **{CHECKPOINT_KEY: pack_checkpoint(folder)})
            self.callback.on_trial_result(0, [], self.trial, report)

    def complete(self):
        self.callback.on_trial_complete(0, [], self.trial)

    def fail(self, text):
        self.error_file.write_text(text)
        self.callback.on_trial_error(0, [], self.trial)


def a_run_of_the_driver(sweep, identity, store, lines, tmp_path, retry_failed=False):
    """What one run_sweep.py run sets up: the plan, the trackers, the Tune callback."""
    planned = plan(sweep, identity, retry_failed=retry_failed)
    for p in planned:
        store.write_spec(p.trial_id, p.name, p.spec.to_dict(), identity, p.network_revision)
    trackers = open_trackers(sweep, warn=lines.append)
    callback = StoreCallback(store, planned, lines.append, quiet=True, trackers=trackers)
    trials = {
        p.spec.attention: FakeRun(callback, p, store, sweep.config.resources, tmp_path, identity)
        for p in planned
    }
    return trackers, trials, {p.spec.attention: p.trial_id for p in planned}


def tracked_sweep(tmp_path, mlflow, name='tiny'):
    data = write_tiny_data(tmp_path / 'data', train=16, test=8)
    path = write_sweep(
        tmp_path,
        data,
        name=name,
        models=['cifar_resnet8_v1'],
        attentions=['none', 'eca'],
        epochs=3,
        extra={'tracking': {'tensorboard': True, 'mlflow': mlflow}},
    )
    sweep = load_config(path)
    return sweep, load_sweep_data(sweep).identity.to_dict(), ResultsStore(sweep.store_dir)


def check_resume_failure_and_fresh(tmp_path, mlflow, name):
    """One trial is killed after 2 of 3 epochs and resumed by the next run, another
    fails; then the first is deleted (--fresh) and trains again."""
    sweep, identity, store = tracked_sweep(tmp_path, mlflow, name)
    store.root.mkdir(parents=True)
    lines = []
    trackers, trials, ids = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    assert trackers, lines
    uri = trackers.trackers[1].client.tracking_uri
    trials['none'].start(0)
    trials['none'].epochs(1, 2)
    trials['eca'].start(0)
    trials['eca'].epochs(1)
    trials['eca'].fail('Traceback (most recent call last):\n  ...\nRuntimeError: out of memory')
    trackers.sweep_ended(KILLED)  # the run is stopped: 'none' is left at epoch 2
    trackers.close()

    runs, experiment = trial_runs(uri, sweep.config.name)
    assert experiment.name == name and set(runs) == {'cifar_resnet8_v1-none-s0'} | {
        'cifar_resnet8_v1-eca-s0'
    }
    killed, failed = runs['cifar_resnet8_v1-none-s0'], runs['cifar_resnet8_v1-eca-s0']
    assert killed.info.status == 'KILLED' and failed.info.status == 'FAILED'
    assert failed.data.tags['error'] == 'RuntimeError: out of memory'
    error_file = client(uri).download_artifacts(failed.info.run_id, 'error.txt', str(tmp_path))
    assert Path(error_file).read_text().endswith('RuntimeError: out of memory')

    # The next run resumes 'none' at epoch 2 (its checkpoint): the same MLflow run goes on.
    assert {p.spec.attention: p.status for p in plan(sweep, identity)}['none'] == PARTIAL
    trackers, trials, _ = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    trials['none'].start(2)
    trials['none'].epochs(3)
    trials['none'].complete()
    table = store.root / 'table.md'
    table.write_text('| cell |\n')
    trackers.sweep_ended(FINISHED, [table, store.root / 'no-such-report.html'])
    trackers.close()

    runs, _ = trial_runs(uri, sweep.config.name)
    resumed = runs['cifar_resnet8_v1-none-s0']
    assert resumed.info.run_id == killed.info.run_id and resumed.info.status == 'FINISHED'
    assert metric_rows(uri, resumed.info.run_id) == stored_rows(store, ids['none'])
    assert sorted(stored_rows(store, ids['none'])) == [1, 2, 3]
    params = resumed.data.params
    assert params['model'] == 'cifar_resnet8_v1' and params['attention'] == 'none'
    assert params['trial_id'] == ids['none'] and params['recipe.epochs'] == '3'
    assert params['recipe.backend'] == 'gluon' and params['seed'] == '0'
    tags = resumed.data.tags
    assert tags['data.digest'] == identity['digest'] and tags['device_kind'] == 'cpu'
    assert tags['mlflow.parentRunId'] == parent_run(uri, name).info.run_id
    parent = parent_run(uri, name)
    assert parent.info.status == 'FINISHED'
    assert [a.path for a in client(uri).list_artifacts(parent.info.run_id)] == ['table.md']
    assert metric_rows(uri, failed.info.run_id) == stored_rows(store, ids['eca'])

    # TensorBoard: the store's numbers (in its float32), each epoch once, across the resume.
    board = sweep.store_dir / 'tensorboard'
    rows, events = tensorboard_rows(board / 'cifar_resnet8_v1-none-s0')
    assert rows == stored_in_float32(store, ids['none'])
    assert '_hparams_/session_start_info' in events.PluginTagToContent('hparams')
    assert tensorboard_rows(board / 'cifar_resnet8_v1-eca-s0')[0] == stored_in_float32(
        store, ids['eca']
    )

    # --fresh deletes the trial and it trains from scratch: its old run goes (to MLflow's
    # trash) rather than mixing two trainings in one curve.
    store.delete(store.fresh_targets([ids['none']]))
    trackers, trials, _ = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    trials['none'].start(0)
    trials['none'].epochs(1)
    trackers.sweep_ended(KILLED)
    runs, _ = trial_runs(uri, sweep.config.name)
    again = runs['cifar_resnet8_v1-none-s0']
    assert again.info.run_id != killed.info.run_id
    assert sorted(metric_rows(uri, again.info.run_id)) == [1]
    assert sorted(tensorboard_rows(board / 'cifar_resnet8_v1-none-s0')[0]) == [1]
    assert not [line for line in lines if 'warning' in line], lines


def test_a_resumed_trial_continues_its_run_in_the_embedded_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check_resume_failure_and_fresh(tmp_path, True, 'tiny')
    assert (tmp_path / 'results' / 'mlflow' / 'mlflow.db').is_file()
    # Artifacts beside the database, not in ./mlruns of wherever the sweep ran.
    assert (tmp_path / 'results' / 'mlflow' / 'artifacts' / 'tiny').is_dir()
    assert not Path('mlruns').exists()


def test_stores_of_one_sweep_name_share_an_experiment_never_their_runs(tmp_path):
    """Two machines (here: folders) run the sweep 'tiny' into one MLflow: each store keeps
    its own runs; one starting over (--fresh) deletes none of the other's."""
    uri = f'sqlite:///{tmp_path / "shared" / "mlflow.db"}'
    ids, lines = {}, []
    for side in ('a', 'b'):
        sweep, identity, store = tracked_sweep(tmp_path / side, uri)
        store.root.mkdir(parents=True)
        trackers, trials, ids[side] = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
        trials['none'].start(0)
        trials['none'].epochs(1, 2, 3)
        trials['none'].complete()
        trackers.sweep_ended(FINISHED)
    assert ids['a'] == ids['b']  # the same data and recipe: the same trial ids
    # b starts over: a's run stays.
    store.delete(store.fresh_targets())
    trackers, trials, _ = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    trials['none'].start(0)
    trials['none'].epochs(1)
    trackers.sweep_ended(KILLED)
    mlflow = client(uri)
    experiment = mlflow.get_experiment_by_name('tiny')
    runs = mlflow.search_runs([experiment.experiment_id])
    trial_runs_ = [r for r in runs if r.info.run_name == 'cifar_resnet8_v1-none-s0']
    assert sorted(r.info.status for r in trial_runs_) == ['FINISHED', 'KILLED']
    assert len([r for r in runs if r.data.tags.get('bench_role') == 'sweep']) == 2
    assert not [line for line in lines if 'warning' in line], lines


def test_finished_trials_are_left_alone_by_later_runs_and_a_retry_clears_the_error(tmp_path):
    sweep, identity, store = tracked_sweep(tmp_path, True)
    store.root.mkdir(parents=True)
    lines = []
    trackers, trials, ids = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    uri = trackers.trackers[1].client.tracking_uri
    trials['none'].start(0)
    trials['none'].epochs(1, 2, 3)
    trials['none'].complete()
    trials['eca'].start(0)
    trials['eca'].epochs(1)
    trials['eca'].fail('RuntimeError: <b>out of memory</b>')
    trackers.sweep_ended(FAILED)
    before, _ = trial_runs(uri, 'tiny')
    board = sweep.store_dir / 'tensorboard' / 'cifar_resnet8_v1-none-s0'
    events = {p: p.stat().st_mtime_ns for p in board.iterdir()}
    # A later run trains only the failed trial again (--retry-failed); the finished one is
    # as the store holds it in both views: untouched.
    trackers, trials, _ = a_run_of_the_driver(
        sweep, identity, store, lines, tmp_path, retry_failed=True
    )
    trackers.catch_up(plan(sweep, identity), store)
    trials['eca'].start(1)
    trials['eca'].epochs(2, 3)
    trials['eca'].complete()
    trackers.sweep_ended(FINISHED)
    after, _ = trial_runs(uri, 'tiny')
    name = 'cifar_resnet8_v1-none-s0'
    assert after[name].info.end_time == before[name].info.end_time
    assert {p: p.stat().st_mtime_ns for p in board.iterdir()} == events
    retried = after['cifar_resnet8_v1-eca-s0']
    assert retried.info.run_id == before['cifar_resnet8_v1-eca-s0'].info.run_id
    assert retried.info.status == 'FINISHED' and 'error' not in retried.data.tags
    assert metric_rows(uri, retried.info.run_id) == stored_rows(store, ids['eca'])


@pytest.mark.slow
def test_a_resumed_trial_continues_its_run_on_a_tracking_server(tmp_path, mlflow_server):
    check_resume_failure_and_fresh(tmp_path, mlflow_server, 'resumed')


def test_finished_trials_reach_a_tracker_turned_on_later(tmp_path):
    """Tracking turned on after trials finished: the next run gives them to the views."""
    sweep, identity, store = tracked_sweep(tmp_path, True)
    store.root.mkdir(parents=True)
    lines = []
    trackers, trials, ids = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    trackers.trackers = []  # tracking off for this run
    trials['none'].start(0)
    trials['none'].epochs(1, 2, 3)
    trials['none'].complete()
    trackers, _, _ = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    trackers.catch_up(plan(sweep, identity), store)
    trackers.sweep_ended(FINISHED)
    runs, _ = trial_runs(trackers.trackers[1].client.tracking_uri, 'tiny')
    (run,) = runs.values()
    assert run.info.status == 'FINISHED'
    assert metric_rows(trackers.trackers[1].client.tracking_uri, run.info.run_id) == (
        stored_rows(store, ids['none'])
    )
    board = sweep.store_dir / 'tensorboard' / 'cifar_resnet8_v1-none-s0'
    assert tensorboard_rows(board)[0] == stored_in_float32(store, ids['none'])
    # --fresh starts the whole store over, its views with it.
    assert sweep.store_dir / 'tensorboard' in store.fresh_targets()


def test_a_tracker_that_fails_mid_run_is_one_warning(tmp_path):
    sweep, identity, store = tracked_sweep(tmp_path, False)
    store.root.mkdir(parents=True)
    lines = []
    trackers, trials, ids = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)

    class Broken:
        label = 'a broken view'

        def __getattr__(self, name):
            def fail(*args):
                raise ConnectionError('Connection refused')

            return fail

    trackers.trackers.append(Broken())
    trials['none'].start(0)
    trials['none'].epochs(1, 2, 3)
    trials['none'].complete()
    trackers.sweep_ended(FINISHED)
    warnings = [line for line in lines if 'warning' in line]
    assert warnings == [
        'warning: a broken view stopped taking results (connection refused: is the server '
        'running?); the sweep goes on without it, the store keeps every result, and the next '
        'run brings it up to date'
    ]
    assert len(store.read_history(ids['none'])) == 3
    # The other view went on.
    rows, _ = tensorboard_rows(sweep.store_dir / 'tensorboard' / 'cifar_resnet8_v1-none-s0')
    assert rows == stored_in_float32(store, ids['none'])


# ------------------------------------------------------------------ real sweeps, with Ray


@pytest.mark.slow
def test_a_tracked_sweep_equals_its_store_in_mlflow_and_tensorboard(
    tmp_path, mlflow_server, capsys
):
    data = write_tiny_data(tmp_path / 'data', train=32, test=8)
    path = write_sweep(
        tmp_path,
        data,
        name='tracked',
        models=['cifar_resnet8_v1'],
        attentions=['none', 'eca'],
        epochs=2,
        extra={
            'tracking': {'tensorboard': True, 'mlflow': mlflow_server},
            'outputs': {
                'results': 'results',
                'readme': None,
                'figures': 'figures',
                'report': 'report.html',
            },
        },
    )
    assert run_sweep.main(['--config', str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(
        rf'tracking: MLflow at {mlflow_server}: open {mlflow_server}/#/experiments/\d+', out
    ), out
    assert 'warning' not in out and 'View run' not in out
    store = ResultsStore(load_config(path).store_dir)
    runs, _ = trial_runs(mlflow_server, 'tracked')
    assert sorted(runs) == ['cifar_resnet8_v1-eca-s0', 'cifar_resnet8_v1-none-s0']
    for name, run in runs.items():
        trial_id = run.data.params['trial_id']
        assert run.info.status == 'FINISHED'
        assert metric_rows(mlflow_server, run.info.run_id) == stored_rows(store, trial_id)
        assert sorted(stored_rows(store, trial_id)) == [1, 2]
        rows, _ = tensorboard_rows(store.root / 'tensorboard' / name)
        assert rows == stored_in_float32(store, trial_id)
    parent = parent_run(mlflow_server, 'tracked')
    artifacts = {a.path for a in client(mlflow_server).list_artifacts(parent.info.run_id)}
    assert {'report.html', 'table.md', 'results.csv'} <= artifacts, artifacts
    assert parent.info.status == 'FINISHED'


@pytest.mark.slow
def test_an_unreachable_mlflow_is_one_warning_and_the_sweep_finishes(tmp_path, capsys):
    data = write_tiny_data(tmp_path / 'data', train=16, test=8)
    path = write_sweep(
        tmp_path,
        data,
        models=['cifar_resnet8_v1'],
        attentions=['none'],
        extra={'tracking': {'mlflow': f'http://127.0.0.1:{free_port()}'}},
    )
    assert run_sweep.main(['--config', str(path), '--no-report']) == 0
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if 'warning' in line]
    assert len(warnings) == 1, out
    assert re.fullmatch(
        r'\d\d:\d\d:\d\d warning: MLflow at http://127\.0\.0\.1:\d+ cannot be used '
        r'\(connection refused: is the server running\?\); the sweep goes on without it .*',
        warnings[0],
    )
    assert '1 finished, 0 failed' in out


def test_a_worker_ray_lost_before_it_started_is_not_blamed_on_a_node(tmp_path):
    """Ray's 'actor died' where the trial never reported its start: there is no node to
    name (it read 'on node None'), only Ray's own reason."""
    sweep, identity, store = tracked_sweep(tmp_path, False)
    store.root.mkdir(parents=True)
    lines = []
    _, trials, ids = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    trials['none'].fail(
        'Failure # 1\nThe actor died unexpectedly before finishing this task.\n'
        '\tclass_name: ImplicitFunc\n'
        'The actor never ran - it was cancelled before it started running.\n'
    )
    error = store.read_error(ids['none'])
    assert error == (
        "Ray lost the trial's worker before it started (The actor never ran - it was "
        'cancelled before it started running.); run again with --retry-failed to train it, '
        'or raise resources.max_failures so that Tune retries it'
    ), error


def test_an_error_the_trials_own_code_raised_is_its_own_whatever_words_it_holds(tmp_path):
    """Ray's words for a lost worker ('node', 'actor died') inside an error that the
    trial's code raised (a path under /home/node, an FX graph node): the error is stored
    as it is, at once, not as a node that stopped answering after 15 s of waiting."""
    import time

    sweep, identity, store = tracked_sweep(tmp_path, False)
    store.root.mkdir(parents=True)
    _, trials, ids = a_run_of_the_driver(sweep, identity, store, [], tmp_path)
    trials['none'].start(0)
    started = time.monotonic()
    trials['none'].fail(
        'Failure # 1 (occurred at 2026-12-02_07-16-36)\n'
        '\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1, ip=192.0.2.2, repr=run_trial)\n'
        '  File "/home/node/project/bench/trial/loop.py", line 228, in run_epochs\n'
        'RuntimeError: the graph node add_3 is unavailable: the actor died\n'
    )
    assert time.monotonic() - started < NODE_DEATH_WAIT_SECONDS / 2
    error = store.read_error(ids['none'])
    assert error.endswith('RuntimeError: the graph node add_3 is unavailable: the actor died')
    assert 'stopped answering' not in error


def test_a_failure_is_judged_by_the_last_one_tune_appended_and_memory_kills_say_so(tmp_path):
    """Tune appends each failure of a trial to one error file: an earlier error of the
    trial's own code does not hide a later lost node. A creation-task error is the
    trial's own (a package missing on a node: retrying does not help), and a kill by
    Ray's memory monitor says so rather than 'stopped answering'."""
    sweep, identity, store = tracked_sweep(tmp_path, False)
    store.root.mkdir(parents=True)
    lines = []
    _, trials, ids = a_run_of_the_driver(sweep, identity, store, lines, tmp_path)
    own = (
        'Failure # 1 (occurred at 2026-12-02_07-16-36)\n'
        '\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=1, ip=192.0.2.2)\n'
        'RuntimeError: CUDA error: unspecified launch failure\n'
    )
    trials['none'].fail(
        own + 'Failure # 2 (occurred at 2026-12-02_07-18-00)\n'
        'The actor died unexpectedly before finishing this task.\n'
        'The actor never ran - it was cancelled before it started running.\n'
    )
    assert store.read_error(ids['none']).startswith("Ray lost the trial's worker before it")
    trials['eca'].fail(
        'Failure # 1 (occurred at 2026-12-02_07-16-36)\n'
        'The actor died because of an error raised in its creation task, '
        '\x1b[36mray::ImplicitFunc.__init__()\x1b[39m (pid=1, ip=192.0.2.2)\n'
        "ModuleNotFoundError: No module named 'mxnet'\n"
    )
    error = store.read_error(ids['eca'])
    assert error.splitlines()[-1] == "ModuleNotFoundError: No module named 'mxnet'", error
    store.clear_error(ids['eca'])
    trials['eca'].start(0)
    trials['eca'].fail(
        'Failure # 1 (occurred at 2026-12-02_07-16-36)\n'
        'ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on '
        'memory.\nMemory on the node (IP: 192.0.2.2, ID: ab12) where the task was running '
        'was 7.50GB / 7.77GB (0.96), which exceeds the memory usage threshold of 0.95.\n'
        'Refer to the documentation on how to address the out of memory issue.\n'
    )
    error = store.read_error(ids['eca'])
    assert error.splitlines()[-1] == (
        "Ray's memory monitor killed the trial's worker: ray.exceptions.OutOfMemoryError: "
        'Task was killed due to the node running low on memory. (fewer trials at once, '
        'resources.max_concurrent_trials, or a smaller recipe.batch_size leave each more '
        'memory)'
    ), error
    assert 'Memory on the node (IP: 192.0.2.2' in error  # Ray's own text is kept
    assert lines[-1].endswith(error.splitlines()[-1])
