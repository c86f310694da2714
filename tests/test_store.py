"""A damaged results store: every damage is reported with its file and what to do, no
finished trial is lost or retrained, and the sweep and the reports read one status."""

import re
import shutil

import pytest

import run_sweep
from bench.fileio import write_json_atomic
from bench.store import DAMAGED, DONE, PARTIAL, PENDING, ResultsStore
from bench.sweep.config import expand, trial_id
from bench.sweep.plan import load_sweep_data, plan, record_sweep
from reports import load_manifest, load_trials, render_all, split_by_sweep

from .sweep_helpers import loaded, write_sweep, write_tiny_data

EPOCHS = 3


def metrics(epoch):
    return {
        'epoch': epoch,
        'lr': 0.003,
        'train_loss': 1.0 / epoch,
        'train_acc': 0.5,
        'val_loss': 2.0 / epoch,
        'val_acc': 0.3 + 0.1 * epoch,
        'epoch_seconds': 1.0,
        'train_seconds': 0.9,
        'images_per_second': 100.0,
    }


def fake_trial(store, tid, spec, identity, epochs_trained, finished=False):
    """What the sweep leaves for a trial: spec, history, a checkpoint, maybe final.json."""
    store.write_spec(tid, spec.name, spec.to_dict(), identity, 1)
    history = [metrics(e) for e in range(1, epochs_trained + 1)]
    for row in history:
        store.record_epoch(tid, row)
    if epochs_trained:
        write_json_atomic(
            store.trial_dir(tid) / 'checkpoint' / 'state.json',
            {'epoch': epochs_trained, 'history': history, 'spec': spec.to_dict()},
        )
    if finished:
        store.write_final(tid, dict(history[-1], epochs=epochs_trained, total_seconds=3.0))


@pytest.fixture
def sweep(tmp_path):
    """A 2-trial sweep on tiny data: one finished trial, one partial (2 of 3 epochs)."""
    data_root = write_tiny_data(tmp_path / 'cifar', train=32, test=8)
    path = write_sweep(
        tmp_path,
        data_root,
        models=['cifar_resnet8_v1'],
        attentions=['none', 'eca'],
        epochs=EPOCHS,
        extra={
            'outputs': {
                'results': 'results',
                'readme': None,
                'figures': 'figures',
                'report': 'report.html',
            }
        },
    )
    sweep = loaded(path)
    identity = load_sweep_data(sweep).identity.to_dict()
    store = ResultsStore(sweep.store_dir)
    finished, partial = expand(sweep.config)
    ids = {'finished': trial_id(finished, identity), 'partial': trial_id(partial, identity)}
    fake_trial(store, ids['finished'], finished, identity, EPOCHS, finished=True)
    fake_trial(store, ids['partial'], partial, identity, 2)
    record_sweep(sweep, identity)
    return path, sweep, store, ids


def planned(sweep):
    return plan(sweep, load_sweep_data(sweep).identity.to_dict())


def test_only_given_twice_selects_either(sweep, capsys):
    path = sweep[0]
    for only, count in (
        (['--only', 'attention=eca'], 1),
        (['--only', 'attention=eca', '--only', 'attention=none'], 2),
        (['--only', 'attention=eca,attention=none'], 2),
    ):
        capsys.readouterr()
        assert run_sweep.main(['--config', str(path), '--dry-run', *only]) == 0
        assert f'{count} trial{"s" if count > 1 else ""}: ' in capsys.readouterr().out


def test_a_variant_that_would_train_the_files_trials_again_is_refused(sweep, capsys):
    """attentions=[none] on the command line makes a variant with a store of its own, in
    which the trials the file's store holds would train again from epoch 1: named, with
    --only for what was meant, before anything trains or is written."""
    path, _, store, _ = sweep
    for run in (['--dry-run'], []):
        capsys.readouterr()
        assert run_sweep.main(['--config', str(path), *run, 'attentions=[none]']) == 2
        err = capsys.readouterr().err
        assert re.search(
            r'error: cifar_resnet8_v1-none-s0: trained \(finished or in part\) in '
            rf'{re.escape(str(store.root))}, the store of the sweep tiny in tiny.yaml, and '
            r"would train again from epoch 1 in this variant's own store \S+tiny-[0-9a-f]{6}\. "
            r'For a part of the sweep, use --only',
            err,
        ), err
    assert [p.name for p in (path.parent / 'results').iterdir()] == ['tiny']
    # The partial trial counts as trained too; a variant of new trials is no problem.
    capsys.readouterr()
    assert run_sweep.main(['--config', str(path), '--dry-run', "attentions=['eca']"]) == 2
    assert 'cifar_resnet8_v1-eca-s0: trained (finished or in part)' in capsys.readouterr().err
    assert run_sweep.main(['--config', str(path), '--dry-run', 'attentions=[se]']) == 0


def statuses(sweep):
    return {p.name.split('-')[1]: (p.status, p.epochs_done) for p in planned(sweep)}


def dry_run(path, capsys):
    capsys.readouterr()
    assert run_sweep.main(['--config', str(path), '--dry-run']) == 0
    return capsys.readouterr().out


def report_rows(sweep):
    render_all(
        sweep.store_dir,
        figures_dir=sweep.base_dir / 'figures',
        report_path=sweep.base_dir / 'report.html',
    )
    trials, _ = split_by_sweep(
        load_trials(sweep.store_dir, load_manifest(sweep.store_dir)), load_manifest(sweep.store_dir)
    )
    return {row['attention']: row for row in trials.to_dict('records')}


def cut(path, keep_bytes_from_end):
    text = path.read_bytes()
    path.write_bytes(text[:-keep_bytes_from_end])


def test_an_intact_store_reads_the_same_everywhere(sweep):
    path, sweep, store, ids = sweep
    assert statuses(sweep) == {'none': (DONE, 3), 'eca': (PARTIAL, 2)}
    rows = report_rows(sweep)
    assert (rows['none']['status'], rows['eca']['status'], rows['eca']['epochs_done']) == (
        DONE,
        PARTIAL,
        2,
    )
    assert all(not row['problems'] for row in rows.values())


def test_a_cut_history_of_a_partial_trial_is_read_from_the_checkpoint_and_rewritten(sweep, capsys):
    path, sweep, store, ids = sweep
    history = store.trial_dir(ids['partial']) / 'history.csv'
    cut(history, 20)  # the last row loses its tail
    state = store.trial_state(ids['partial'])
    assert (state.status, state.epochs_done) == (PARTIAL, 2)
    assert any('line 3 is cut or garbled' in p and str(history) in p for p in state.problems)
    assert [r['epoch'] for r in store.read_history(ids['partial'])] == [1, 2]
    out = dry_run(path, capsys)
    assert 'problem: ' in out and 'line 3 is cut' in out
    # What the Tune callback does with the next epoch no longer crashes on the cut row.
    store.record_epoch(ids['partial'], metrics(3))
    assert [r['epoch'] for r in store.read_history(ids['partial'])] == [1, 2, 3]
    cut(history, 20)
    assert store.repair(ids['partial']) == [f'{history}: rewritten from the checkpoint (2 epochs)']
    assert store.trial_state(ids['partial']).problems == ()


def test_a_cut_history_of_a_finished_trial_keeps_every_point_of_its_curves(sweep):
    path, sweep, store, ids = sweep
    cut(store.trial_dir(ids['finished']) / 'history.csv', 30)
    assert store.trial_state(ids['finished']).status == DONE
    rows = report_rows(sweep)
    assert rows['none']['status'] == DONE and rows['none']['problems']
    from reports import load_histories

    histories = load_histories(sweep.store_dir)
    assert sorted(histories[histories['attention'] == 'none']['epoch']) == [1, 2, 3]
    assert 'Problems found in the store' in (sweep.base_dir / 'report.html').read_text()


def test_garbage_in_final_json_is_named_and_nothing_is_retrained(sweep, capsys):
    path, sweep, store, ids = sweep
    final = store.trial_dir(ids['finished']) / 'final.json'
    final.write_text('{"epochs": 3, "val_a')
    state = store.trial_state(ids['finished'])
    assert state.status == DAMAGED and state.epochs_done == 3
    (problem,) = state.problems
    assert (
        problem.startswith(f'{final}: not valid JSON')
        and 'the checkpoint holds epoch 3: delete the file and run again' in problem
    )
    out = dry_run(path, capsys)
    assert 'damaged' in out and f'problem: {final}: not valid JSON' in out
    assert '2 trials: 0 done, 1 partial, 0 pending, 0 failed, 1 damaged' in out
    assert not [p for p in planned(sweep) if p.status == DAMAGED and p.will_train]
    assert run_sweep.main(['--config', str(path), '--report-only']) == 0
    assert report_rows(sweep)['none']['status'] == DAMAGED


def test_a_missing_spec_json_does_not_hide_a_finished_trial(sweep):
    path, sweep, store, ids = sweep
    (store.trial_dir(ids['finished']) / 'spec.json').unlink()
    rows = report_rows(sweep)
    assert rows['none']['status'] == DONE and rows['none']['val_acc'] == pytest.approx(0.6)
    assert any('spec.json: missing' in p for p in rows['none']['problems'])
    readme_like = (sweep.base_dir / 'results' / 'tiny' / 'table.md').read_text()
    assert '1 of 2 trials finished' in readme_like


def test_a_checkpoint_left_retired_by_a_crash_is_used_and_put_back(sweep, capsys):
    path, sweep, store, ids = sweep
    folder = store.trial_dir(ids['partial'])
    (folder / 'checkpoint').rename(folder / '.checkpoint.retired')  # crash mid-swap
    state = store.trial_state(ids['partial'])
    assert (state.status, state.epochs_done) == (PARTIAL, 2)
    assert 'partial (epoch 2 of 3)' in dry_run(path, capsys)
    assert report_rows(sweep)['eca']['epochs_done'] == 2  # the report agrees
    assert store.repair(ids['partial'])[0].endswith('put back from .checkpoint.retired')
    assert (folder / 'checkpoint' / 'state.json').is_file()
    assert store.trial_state(ids['partial']).problems == ()


def test_a_lost_checkpoint_is_reported_instead_of_retraining_from_epoch_0(sweep, capsys):
    path, sweep, store, ids = sweep
    shutil.rmtree(store.trial_dir(ids['partial']) / 'checkpoint')
    state = store.trial_state(ids['partial'])
    assert state.status == DAMAGED
    assert 'history.csv records 2 epochs but the checkpoint is missing' in state.problems[0]
    assert 'delete the folder to train the trial from scratch' in state.problems[0]
    out = dry_run(path, capsys)
    assert re.search(r'cifar_resnet8_v1-eca-s0 +\w{12} +damaged', out)
    assert report_rows(sweep)['eca']['status'] == DAMAGED


def test_one_epoch_ahead_of_the_checkpoint_is_the_normal_crash_window(sweep):
    path, sweep, store, ids = sweep
    store.record_epoch(ids['partial'], metrics(3))  # reported, not yet checkpointed
    state = store.trial_state(ids['partial'])
    assert (state.status, state.epochs_done, state.problems) == (PARTIAL, 2, ())
    fresh = store.trial_dir('0123456789ab')
    store.record_epoch('0123456789ab', metrics(1))  # killed before the first checkpoint
    assert store.trial_state('0123456789ab').status == PENDING
    assert fresh.is_dir()


def test_a_lock_of_a_dead_process_is_taken_over_and_a_live_one_refuses(tmp_path):
    import json
    import socket
    import subprocess
    import sys

    from bench.store import StoreLocked

    store = ResultsStore(tmp_path / 'store')
    store.root.mkdir()
    lock = store.root / 'sweep.lock'
    gone = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
    ).stdout.strip()
    lock.write_text(
        json.dumps({'host': socket.gethostname(), 'pid': int(gone), 'since': 'yesterday'})
    )
    said = []
    with store.lock(progress=said.append):
        assert json.loads(lock.read_text())['pid'] == __import__('os').getpid()
        assert said == [
            f'took over the lock of {store.root}: process {gone} (since '
            'yesterday) is no longer running'
        ]
        with pytest.raises(
            StoreLocked,
            match=r'another sweep is running on .*: process \d+ '
            r'on host .*, since .*delete .*sweep\.lock',
        ):
            with store.lock():
                pass
    assert not lock.exists()
    # On another host nothing tells whether the process lives: refuse, and say how to go on.
    lock.write_text(json.dumps({'host': 'node-7', 'pid': 1, 'since': 'noon'}))
    with pytest.raises(StoreLocked, match='process 1 on host node-7, since noon'):
        with store.lock():
            pass
    assert lock.exists()


def test_fresh_without_a_terminal_says_to_add_yes(sweep, monkeypatch, capsys):
    path, sweep, store, ids = sweep

    def no_terminal(prompt):
        raise EOFError

    monkeypatch.setattr('builtins.input', no_terminal)
    assert run_sweep.main(['--config', str(path), '--fresh']) == 2
    assert 'with no one to answer (no terminal), add --yes' in capsys.readouterr().err
    assert store.trial_state(ids['finished']).status == DONE


# ------------------------------------------------- problems found before anything trains


def test_problems_that_would_stop_a_sweep_part_way_are_found_before_it_starts(
    sweep, tmp_path, capsys
):
    path, sweep, store, ids = sweep

    def run(*extra, config=path):
        capsys.readouterr()
        code = run_sweep.main(['--config', str(config), *extra])
        return code, capsys.readouterr().err

    code, err = run('--only', 'model=resnet50')
    assert (
        code == 2
        and '--only model=resnet50 matches no trial of the sweep (models: '
        'cifar_resnet8_v1; attentions: none, eca; seeds: 0)'
        in err
    )

    readme = tmp_path / 'README.md'
    readme.write_text('# no markers here\n')
    text = path.read_text().replace('readme: null', f'readme: {readme}')
    with_readme = tmp_path / 'with_readme.yaml'
    with_readme.write_text(text)
    code, err = run(config=with_readme)
    assert code == 2 and 'has no results markers' in err and '--insert' in err

    big_batch = tmp_path / 'big.yaml'
    big_batch.write_text(path.read_text().replace('batch_size: 16', 'batch_size: 64'))
    code, err = run('--dry-run', config=big_batch)
    assert code == 2 and 'batch_size 64 is larger than the 32 training images' in err

    blocked = tmp_path / 'blocked.yaml'
    (tmp_path / 'a-file').write_text('x')
    blocked.write_text(
        path.read_text().replace('results: results', f'results: {tmp_path / "a-file" / "results"}')
    )
    code, err = run(config=blocked)
    assert code == 2 and f'{tmp_path / "a-file"} is a file' in err
    assert 'set outputs.results (in the sweep file or on the command line)' in err
    assert store.trial_state(ids['finished']).status == DONE


def test_a_trial_no_node_can_hold_is_refused_and_the_dry_run_says_so(sweep, capsys):
    from bench.sweep.cluster import check_trials_fit, local_devices
    from bench.sweep.config import Resources
    from bench.sweep.plan import SweepError

    class OneSmallNode:
        @staticmethod
        def nodes():
            return [
                {'Alive': True, 'Resources': {'CPU': 2.0}},
                {'Alive': False, 'Resources': {'CPU': 128.0}},
            ]

    with pytest.raises(
        SweepError,
        match='each trial asks for 64 CPUs, but the largest node '
        'of the Ray cluster has 2; lower '
        'resources.cpus_per_trial',
    ):
        check_trials_fit(OneSmallNode, Resources(cpus_per_trial=64))
    check_trials_fit(OneSmallNode, Resources(cpus_per_trial=2))
    assert 'cpus_per_trial 64 is more than this machine has' in local_devices(
        Resources(cpus_per_trial=64)
    )


def test_a_read_only_readme_stays_read_only_and_a_failed_write_leaves_no_temporary_file(tmp_path):
    import os
    import stat

    from reports import BEGIN, END, ReportError
    from reports.readme import write_readme

    readme = tmp_path / 'README.md'
    readme.write_text(f'intro\n{BEGIN}\n{END}\n')
    readme.chmod(0o444)
    write_readme(readme, 'the table')
    assert 'the table' in readme.read_text()
    assert stat.S_IMODE(readme.stat().st_mode) == 0o444
    folder = tmp_path / 'README-is-a-folder.md'
    folder.mkdir()
    with pytest.raises(ReportError, match='cannot write .*README-is-a-folder.md'):
        write_readme(folder, 'the table', insert=True)
    assert sorted(os.listdir(tmp_path)) == ['README-is-a-folder.md', 'README.md']


def test_what_killed_runs_left_behind_is_cleaned_under_the_lock(sweep):
    path, sweep, store, ids = sweep
    folder = store.trial_dir(ids['partial'])
    (folder / '.checkpoint-abc123').mkdir()
    (folder / '.history.csv.x1y2.tmp').write_text('half')
    (store.root / 'ray' / 'tiny-20260101-000000').mkdir(parents=True)
    (folder / '.checkpoint.retired').mkdir()  # a recovery copy: kept
    with store.lock():
        assert store.clean_scratch() == 3
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith('.')) == [
        '.checkpoint.retired'
    ]
    assert list((store.root / 'ray').iterdir()) == []


def test_a_damaged_environment_record_is_shown_not_fatal(sweep):
    path, sweep, store, ids = sweep
    (store.root / 'environment.json').write_text('{"packages": ')
    report_rows(sweep)
    assert 'environment.json: not valid JSON' in (sweep.base_dir / 'report.html').read_text()


def test_the_sweep_store_planner_and_reports_run_with_no_deep_learning_framework(sweep):
    """--dry-run and --report-only, and every module they use, with MXNet unimportable
    (as where the gpu extra meets a machine without an NVIDIA driver) and no torch."""
    import subprocess
    import sys
    from pathlib import Path

    path, sweep, store, ids = sweep
    root = Path(__file__).resolve().parents[1]
    # Installed but unimportable (found by importlib.util.find_spec, as the backend
    # check before training looks for them, yet any import of them raises).
    code = (
        'import builtins, sys\n'
        'real_import = builtins.__import__\n'
        'def refuse(name, *args, **kwargs):\n'
        '    if name.split(".")[0] in ("mxnet", "torch", "gluoncv"):\n'
        '        raise ImportError(f"{name} may not be imported here")\n'
        '    return real_import(name, *args, **kwargs)\n'
        'builtins.__import__ = refuse\n'
        'import bench.environment, bench.gpu, bench.store, reports, run_sweep\n'
        'import bench.sweep.cluster, bench.sweep.config, bench.sweep.driver, bench.sweep.plan\n'
        'import bench.trial.checkpoint, bench.trial.data, bench.trial.loop\n'
        'import bench.trial.recipe\n'
        f'assert run_sweep.main(["--config", {str(path)!r}, "--dry-run"]) == 0\n'
        f'assert run_sweep.main(["--config", {str(path)!r}, "--report-only"]) == 0\n'
        'assert "ray" not in sys.modules\n'
        'assert not {"mxnet", "torch", "gluoncv"} & set(sys.modules)\n'
    )
    done = subprocess.run(
        [sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert '2 trials: 1 done, 1 partial, 0 pending, 0 failed' in done.stdout
    assert (sweep.base_dir / 'report.html').is_file()


def test_the_environment_records_the_commit_of_the_code_wherever_the_sweep_file_is(
    tmp_path, monkeypatch
):
    """A sweep file kept outside the checkout (the tests', a user's) still records which
    code trained: the commit of the checkout the code runs from."""
    import subprocess
    from pathlib import Path

    from bench.environment import describe_environment
    from bench.trial.data import DataIdentity

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True)
    if head.returncode:
        pytest.skip('the code does not run from a git checkout here')
    monkeypatch.chdir(tmp_path)  # no repository here
    identity = DataIdentity('x', False, '0' * 40, 'bin', str(tmp_path), 1, 1)
    recorded = describe_environment(identity, 'cpu')['git_commit']
    assert recorded in (head.stdout.strip(), head.stdout.strip() + '-dirty')
