"""The time estimate of a sweep: from stored epochs, from a calibration, by MACs."""

import json
import math

import pytest

import run_sweep
from bench.records import PENDING, TrialRecord
from bench.store import ResultsStore
from bench.sweep import estimate as est
from bench.sweep.config import Resources, load_config
from bench.trial.recipe import Recipe, TrialSpec

from .sweep_helpers import write_sweep, write_tiny_data

DEVICE = 'cpu: Test CPU x 1 threads'
IDENTITY = {'name': 'tiny', 'official': False, 'digest': 'd' * 40, 'train_images': 1000,
            'test_images': 200}  # fmt: skip
RESOURCES = Resources(cpus_per_trial=1, gpus_per_trial=0)


def spec(model='cifar_resnet20_v1', attention='none', seed=0, epochs=10):
    return TrialSpec(model, attention, seed, Recipe(epochs=epochs, batch_size=100))


def planned(*specs, done=0):
    return [TrialRecord(f'{i:012x}', s.name, s, PENDING, done) for i, s in enumerate(specs)]


def stored_trial(store, tid, trial_spec, epoch_seconds, device=DEVICE, train_images=1000):
    """A finished trial in `store` whose epochs took `epoch_seconds` on `device`."""
    identity = dict(IDENTITY, train_images=train_images)
    store.write_spec(tid, trial_spec.name, trial_spec.to_dict(), identity, 1)
    for epoch, seconds in enumerate(epoch_seconds, start=1):
        store.record_epoch(tid, {'epoch': epoch, 'lr': 0.1, 'train_loss': 1.0,
                                 'train_acc': 0.5, 'val_loss': 1.0, 'val_acc': 0.5,
                                 'epoch_seconds': seconds, 'train_seconds': seconds,
                                 'images_per_second': 1.0})  # fmt: skip
    store.write_final(tid, {'epochs': len(epoch_seconds), 'device_kind': device,
                            'epoch_seconds': epoch_seconds[-1]})  # fmt: skip


def test_stored_epochs_of_the_same_network_and_device_are_the_estimate(tmp_path):
    store = ResultsStore(tmp_path / 'store')
    # The first epoch (building the network) is left out where there are others.
    stored_trial(store, 'a' * 12, spec(epochs=4), [30.0, 10.0, 12.0, 11.0])
    stored_trial(store, 'b' * 12, spec(seed=1, epochs=4), [40.0, 9.0, 13.0, 14.0])
    stored_trial(store, 'c' * 12, spec(epochs=4), [99.0, 99.0], device='gpu: Other')
    stored_trial(store, 'd' * 12, spec(epochs=4), [99.0, 99.0], train_images=50)
    to_train = planned(spec(seed=2), spec(seed=3), spec(seed=4), done=0)
    to_train[2] = TrialRecord('f' * 12, 'partial', spec(seed=4), 'partial', 6)
    estimate = est.estimate_sweep(
        to_train,
        est.stored_epoch_times([store]),
        RESOURCES,
        IDENTITY,
        device=DEVICE,
        slots=(2, 'two lanes'),
    )
    epoch = estimate.trials[0].epoch
    assert (epoch.source, epoch.seconds, epoch.low, epoch.high) == ('measured', 11.5, 9.0, 14.0)
    assert epoch.detail == '6 stored epoch(s) of 2 trial(s)'
    assert [t.epochs for t in estimate.trials] == [10, 10, 4]
    assert estimate.total() == pytest.approx(24 * 11.5)
    # Two lanes in the sweep's order: 115 | 115, then 46 on the first to free.
    assert estimate.wall() == pytest.approx(115 + 46)
    text = est.format_estimate(estimate)
    assert 'cifar_resnet20_v1-none-s2  10 epochs x 12s = 1m55s (1m30s-2m20s; measured' in text
    assert '24 trial' not in text and '3 trial(s) to train: 0.0767 CPU-hours' in text
    assert 'with 2 trial(s) at a time (two lanes)' in text


def test_few_measured_epochs_make_a_wider_range():
    epoch = est.measured_epoch([10.0, 12.0], trials=1)
    assert (epoch.seconds, epoch.low, epoch.high) == (11.0, 8.0, 15.0)


def test_a_calibration_and_a_derivation_by_macs(tmp_path):
    calibration = {'step_seconds': [0.2, 0.25, 0.3], 'eval_seconds_per_image': 0.001}
    epoch = est.calibrated_epoch(calibration, train_images=1000, test_images=200, batch_size=100)
    # The typical step is the first quartile's: a busy moment only slows steps.
    assert epoch.seconds == pytest.approx(10 * 0.2 + 0.2)
    assert epoch.low == pytest.approx((10 * 0.2 + 0.2) * est.CALIBRATION_SPREAD[0])
    assert epoch.high == pytest.approx((10 * 0.3 + 0.2) * est.CALIBRATION_SPREAD[1])
    small, large = spec(), spec(model='cifar_resnet56_v1')
    estimate = est.estimate_sweep(
        planned(small, large), {}, RESOURCES, IDENTITY,
        calibration={est.network_key(small): calibration}, device=DEVICE, slots=(1, 'one'),
    )  # fmt: skip
    derived = estimate.trials[1].epoch
    assert derived.source == 'derived' and derived.detail == 'from cifar_resnet20_v1 none by MACs'
    from models.architecture import network_counts

    ratio = network_counts('cifar_resnet56_v1').macs / network_counts('cifar_resnet20_v1').macs
    assert 3.0 < ratio < 3.2 and derived.seconds == pytest.approx(epoch.seconds * ratio)
    assert derived.high / derived.seconds > epoch.high / epoch.seconds  # a rougher figure
    # --only leaves the measured network out of the plan: the sweep's others still count.
    only_large = est.estimate_sweep(
        planned(large), {}, RESOURCES, IDENTITY,
        calibration={est.network_key(small): calibration}, device=DEVICE, slots=(1, 'one'),
        also_known=planned(small),
    )  # fmt: skip
    assert [t.name for t in only_large.trials] == [large.name]
    assert only_large.trials[0].epoch == derived


def test_without_measurements_the_estimate_says_how_to_get_one(tmp_path):
    estimate = est.estimate_sweep(
        planned(spec()), {}, RESOURCES, IDENTITY,
        device=DEVICE, slots=(1, 'one'),
    )  # fmt: skip
    assert est.format_estimate(estimate) == (
        f'no estimate: the store holds no epoch of these networks on this device ({DEVICE}); '
        'run with --estimate to time a few steps of each (1 trial(s) to train)'
    )
    assert run_sweep.took_against_estimate(75, estimate) == 'took 1m15s (no estimate)'


def test_trials_at_once_follow_the_resources(monkeypatch):
    from bench import gpu
    from bench.trial import threads

    monkeypatch.setattr(threads, 'available_cpus', lambda: 16)
    monkeypatch.setattr(gpu, 'physical_gpus', lambda: [object(), object()])
    assert est.local_slots(Resources(cpus_per_trial=2, gpus_per_trial=0))[0] == 8
    assert est.local_slots(Resources(cpus_per_trial=2, gpus_per_trial=0.5))[0] == 4
    assert est.local_slots(Resources(cpus_per_trial=4, gpus_per_trial=0.25))[0] == 4
    monkeypatch.setattr(gpu, 'physical_gpus', lambda: [])
    assert est.local_slots(Resources(cpus_per_trial=1, gpus_per_trial=1))[0] == 16
    # In the sweep's order, each on the lane that frees first: 5+3 | 4+3+3.
    assert est.makespan([5, 4, 3, 3, 3], 2) == 10 and est.makespan([], 3) == 0


def test_a_damaged_calibration_cache_counts_as_empty(tmp_path, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    key = est.network_key(spec())
    for damage in ('not json', '[]', json.dumps({'x': 1})):
        est.cache_path().parent.mkdir(parents=True, exist_ok=True)
        est.cache_path().write_text(damage)
        assert est.cached_calibration(DEVICE, [key]) == {}
    est._store_calibration(DEVICE, {key: {'step_seconds': [-1], 'eval_seconds_per_image': 0}})
    assert est.cached_calibration(DEVICE, [key]) == {}  # a nonsense figure is not used


@pytest.mark.slow
def test_a_calibration_times_each_network_once_and_a_dry_run_uses_the_cache(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    write_tiny_data(tmp_path / 'data')
    path = write_sweep(tmp_path, tmp_path / 'data', models=['cifar_resnet8_v1'],
                       attentions=['none', 'eca'], extra={'seeds': [0, 1]})  # fmt: skip
    loaded = load_config(path)
    device = est.local_trial_device(loaded.config.resources)
    specs = [p for p in __import__('bench.sweep.config', fromlist=['x']).expand(loaded.config)]
    found = est.calibrate(specs, loaded.config.resources, device, progress=lambda _: None)
    assert sorted(found) == sorted({est.network_key(s) for s in specs})  # two networks
    for figures in found.values():
        assert len(figures['step_seconds']) == est.CALIBRATION_STEPS
        assert all(s > 0 for s in figures['step_seconds'])
        assert figures['eval_seconds_per_image'] > 0
    assert est.cached_calibration(device, found) == found
    capsys.readouterr()
    assert run_sweep.main(['--config', str(path), '--dry-run']) == 0
    out = capsys.readouterr().out
    assert out.count('calibrated: 6 steps timed here') == 4 and '4 trial(s) to train' in out


@pytest.mark.slow
def test_a_run_records_its_device_and_the_next_estimate_rests_on_its_epochs(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    write_tiny_data(tmp_path / 'data')
    path = write_sweep(tmp_path, tmp_path / 'data', models=['cifar_resnet8_v1'],
                       attentions=['none'], epochs=2)  # fmt: skip
    assert run_sweep.main(['--config', str(path), '--no-report']) == 0
    out = capsys.readouterr().out
    assert 'no estimate' in out and 'took ' in out
    store = ResultsStore(load_config(path).store_dir)
    (record,) = store.trial_records()
    device = est.local_trial_device(load_config(path).config.resources)
    assert record.final['device_kind'] == device
    # ...and what it was trained with, kept with the trial (environment.json is the last
    # run's only).
    last_run = json.loads((store.root / 'environment.json').read_text())
    assert record.final['environment'] == {
        key: value for key, value in last_run.items() if key != 'recorded_at'
    }
    assert record.final['environment']['packages']['mxnet'] == '1.9.1'
    # The same network with more epochs: estimated from the stored epoch (the first
    # epoch is the only other one, so it is used).
    assert run_sweep.main(['--config', str(path), '--dry-run', 'recipe.epochs=5']) == 0
    out = capsys.readouterr().out
    assert '5 epochs x' in out and 'measured: 1 stored epoch(s) of 1 trial(s)' in out
    assert not math.isnan(store.read_history(record.trial_id)[-1]['epoch_seconds'])


def test_on_a_cluster_as_many_trials_run_at_once_as_its_nodes_hold(monkeypatch):
    from bench.sweep import cluster

    class FakeRay:
        shut = False

        def cluster_resources(self):
            return {'CPU': 64.0, 'GPU': 4.0, 'memory': 1e12}

        def shutdown(self):
            FakeRay.shut = True

    monkeypatch.setattr(cluster, 'start_ray', lambda address: FakeRay())
    slots, why = est.cluster_slots('10.0.0.5:6379', Resources(cpus_per_trial=4, gpus_per_trial=0.5))
    assert slots == 8 and FakeRay.shut
    assert why == 'the cluster at 10.0.0.5:6379 has 64 CPUs and 4 GPUs now'
    assert est.cluster_slots('a:1', Resources(cpus_per_trial=2, gpus_per_trial=0))[0] == 32


def test_stored_epochs_that_are_not_figures_are_left_out(tmp_path):
    """A hand-edited or damaged store never makes the estimate crash or say nonsense."""
    store = ResultsStore(tmp_path / 'store')
    stored_trial(store, 'a' * 12, spec(epochs=3), [10.0, float('nan'), -5.0])
    stored_trial(store, 'b' * 12, spec(seed=1, epochs=2), [1e300, 12.0])
    stored_trial(store, 'c' * 12, spec(seed=2, epochs=2), [11.0, 11.0], device={'x': 1})
    estimate = est.estimate_sweep(
        planned(spec(seed=5)),
        est.stored_epoch_times([store]),
        RESOURCES,
        IDENTITY,
        device=DEVICE,
        slots=(1, 'one'),
    )
    epoch = estimate.trials[0].epoch
    # Trial a's later epochs are no figures (its first, building the network, is not
    # used where it has others), trial c's device is no name: trial b's 12 s remains.
    assert epoch.detail == '1 stored epoch(s) of 1 trial(s)'
    assert (epoch.seconds, epoch.low, epoch.high) == pytest.approx((12.0, 9.6, 15.0))


def test_a_cache_that_is_a_pipe_a_device_or_too_deep_counts_as_empty(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    key = est.network_key(spec())
    path = est.cache_path()
    path.parent.mkdir(parents=True)
    os.mkfifo(path)  # a read would wait forever
    assert est.cached_calibration(DEVICE, [key]) == {}
    path.unlink()
    path.symlink_to('/dev/zero')  # a read would never end
    assert est.cached_calibration(DEVICE, [key]) == {}
    path.unlink()
    path.write_text('[' * 100_000)
    assert est.cached_calibration(DEVICE, [key]) == {}
    est._store_calibration(DEVICE, {key: {'step_seconds': [1e-300], 'eval_seconds_per_image': 0}})
    assert est.cached_calibration(DEVICE, [key]) == {}


def test_a_calibration_runs_the_projects_own_code_whatever_the_working_folder(
    tmp_path, monkeypatch
):
    """`python -m` puts the working folder first on the import path: a bench/ there
    must never be what runs."""
    import subprocess

    (tmp_path / 'bench').mkdir()
    (tmp_path / 'bench' / '__init__.py').write_text('raise SystemExit("the wrong bench ran")')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    seen = {}

    def fake_run(command, **options):
        seen.update(options, command=command)
        raise SystemExit('stop here')

    monkeypatch.setattr(subprocess, 'run', fake_run)
    with pytest.raises(SystemExit, match='stop here'):
        est.calibrate([spec()], RESOURCES, DEVICE, progress=lambda _: None)
    assert seen['cwd'] == est.PROJECT_ROOT and (est.PROJECT_ROOT / 'bench' / 'sweep').is_dir()


def test_each_backend_is_calibrated_in_a_process_of_its_own(tmp_path, monkeypatch):
    """MXNet and PyTorch in one process share one OpenMP runtime that then slows
    PyTorch's steps down (bench/benchmark/child.py): a sweep with cells of both backends
    times each backend's networks in its own child, as its trials run."""
    import subprocess

    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    children = []

    def fake_run(command, **options):
        request = json.loads(open(command[-2]).read())
        children.append({TrialSpec.from_dict(s).recipe.backend for s in request['specs']})
        figures = {'step_seconds': [0.1, 0.1], 'eval_seconds_per_image': 0.001}
        answer = {est.network_key(TrialSpec.from_dict(s)): figures for s in request['specs']}
        open(command[-1], 'w').write(json.dumps(answer))
        return subprocess.CompletedProcess(command, 0, '', '')

    monkeypatch.setattr(subprocess, 'run', fake_run)
    torch_recipe = Recipe(epochs=10, batch_size=100, backend='torch')
    specs = [spec(), spec(attention='se'), TrialSpec('cifar_resnet20_v1', 'eca', 0, torch_recipe)]
    found = est.calibrate(specs, RESOURCES, DEVICE, progress=lambda _: None)
    assert sorted(children, key=sorted) == [{'gluon'}, {'torch'}]
    assert sorted(found) == sorted(est.network_key(s) for s in specs)
    children.clear()
    est.calibrate(specs[:2], RESOURCES, DEVICE, progress=lambda _: None)
    assert children == []  # cached


def test_networks_the_store_measured_are_not_calibrated_again(tmp_path):
    store = ResultsStore(tmp_path / 'store')
    stored_trial(store, 'a' * 12, spec(epochs=2), [10.0, 11.0])
    todo = est.unmeasured(
        [spec(seed=3), spec(attention='se')], est.stored_epoch_times([store]), DEVICE, 1000
    )
    assert [s.attention for s in todo] == ['se']
    assert len(est.unmeasured([spec()], est.stored_epoch_times([store]), 'gpu: Other', 1000)) == 1


def test_fewer_trials_than_room_train_all_at_once():
    from bench.sweep.estimate import _at_once

    class Room:
        slots, slots_why = 4, '4 CPUs, 1 per trial'

    assert _at_once(1, Room) == 'all 1 at once (room for 4: 4 CPUs, 1 per trial)'
    assert _at_once(4, Room) == '4 trial(s) at a time (4 CPUs, 1 per trial)'
