"""The trial seam: bench.trial.loop drives any backend's session through one interface."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.trial.loop import BACKENDS, TrainingDiverged, get_backend, run_epochs
from bench.trial.recipe import Recipe, TrialSpec

from .conftest import make_images


class RecordingSession:
    """A backend without a framework: 'weights' are one number, trained by each batch."""

    def __init__(self, diverge_at=None):
        self.weight, self.lr, self.calls, self.diverge_at = 0.0, None, [], diverge_at

    def set_learning_rate(self, lr):
        # The loop sets the rate once per epoch: each epoch's record starts here.
        self.lr = lr
        self.calls.append(('train', lr, []))

    def train_batch(self, indices, rows, cols, flips):
        self.calls[-1][2].append(indices.tolist())
        self.weight += self.lr * len(indices)
        return 1.0 * len(indices), 0.5 * len(indices)  # loss 1, half of them right

    def values(self, scalars):
        return scalars

    def evaluate(self):
        loss = float('nan') if self.diverge_at == len(self.calls) - 1 else 0.1
        return loss, 0.9

    def save_weights(self, folder):
        (folder / 'weight.json').write_text(json.dumps(self.weight))

    def load_weights(self, folder):
        self.weight = json.loads((folder / 'weight.json').read_text())

    def describe(self):
        return {'devices': 'none', 'kernels': 'none'}


class Data:
    def __init__(self, count=24):
        from bench.trial.data import DataIdentity

        self.train_images, _ = make_images(count, seed=1)
        self.identity = DataIdentity('fake', False, 'd' * 40, 'bin', 'x', count, 0)


def spec(epochs):
    return TrialSpec(
        'cifar_resnet8_v1',
        'none',
        5,
        Recipe(epochs=epochs, batch_size=8, lr=0.5, lr_decay_epochs=(1,)),
    )


def test_the_loop_owns_schedule_batches_and_resume_for_every_backend(tmp_path):
    straight = RecordingSession()
    history = run_epochs(straight, spec(3), Data(), checkpoint_dir=tmp_path / 'a')
    assert [h['lr'] for h in history] == [0.5, 0.05, 0.05]
    assert [c[1] for c in straight.calls] == [0.5, 0.05, 0.05]
    assert all(len(c[2]) == 3 for c in straight.calls)  # 24 images, batches of 8
    assert [(h['train_loss'], h['train_acc']) for h in history] == [(1.0, 0.5)] * 3

    class Killed(Exception):
        pass

    def kill_after_first_epoch(metrics, checkpoint_path):
        raise Killed

    with pytest.raises(Killed):
        run_epochs(
            RecordingSession(),
            spec(3),
            Data(),
            checkpoint_dir=tmp_path / 'c',
            on_epoch=kill_after_first_epoch,
        )
    resumed = RecordingSession()
    history = run_epochs(resumed, spec(3), Data(), checkpoint_dir=tmp_path / 'c')
    # Resumed from epoch 1's checkpoint: the same batches, the same weight as straight.
    assert len(resumed.calls) == 2  # epochs 2 and 3
    assert resumed.calls == straight.calls[1:]
    assert resumed.weight == pytest.approx(straight.weight)
    assert [h['epoch'] for h in history] == [1, 2, 3]


def test_divergence_and_too_large_batches_are_the_loops_errors():
    with pytest.raises(TrainingDiverged, match='at epoch 2, validation'):
        run_epochs(RecordingSession(diverge_at=1), spec(3), Data())
    with pytest.raises(ValueError, match='batch_size 8 is larger than the 4 training images'):
        run_epochs(RecordingSession(), spec(1), Data(count=4))


def test_backends_are_found_by_name_and_the_loop_needs_no_framework():
    for name in ('gluon', 'torch'):
        assert get_backend(name).open_session and get_backend(name).trial_devices
    with pytest.raises(KeyError, match="unknown trial backend 'caffe'; valid: gluon, torch"):
        get_backend('caffe')
    assert set(BACKENDS) == {'gluon', 'torch'}
    code = (
        'import sys\n'
        'sys.modules["mxnet"] = sys.modules["torch"] = None\n'
        'import bench.trial.loop, bench.trial.batches, bench.trial.checkpoint\n'
    )
    done = subprocess.run(
        [sys.executable, '-c', code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_a_backend_whose_framework_is_missing_is_found_before_training(monkeypatch):
    """Found without importing the framework, with the command that installs it; the
    planner names the trials it stops, and torch trials ask for one GPU at most."""
    import importlib.util

    from bench.sweep.config import Resources
    from bench.sweep.plan import PlannedTrial, backend_problems
    from bench.trial import loop

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        'find_spec',
        lambda name, *args: None if name == 'torch' else real_find_spec(name, *args),
    )
    assert loop.missing_framework('gluon') is None
    message = loop.missing_framework('torch')
    assert message.startswith(
        'backend torch needs torch, which is not installed here: pip '
        "install -c constraints-torch.txt -e '.[torch]'"
    )
    torch_spec = TrialSpec('cifar_resnet8_v1', 'se', 0, Recipe(backend='torch'))
    planned = [
        PlannedTrial(f'id{i}', f'{torch_spec.name}-{i}', torch_spec, status, 0)
        for i, status in enumerate(('pending', 'pending', 'done'))
    ]
    problems = backend_problems(planned, Resources(gpus_per_trial=2))
    assert problems[0] == f'{torch_spec.name}-0 and 1 more: {message}'
    assert (
        'backend torch trains a trial on one GPU; set resources.gpus_per_trial to 1 '
        'or less (it is 2)' in problems[1]
    )
    assert backend_problems(planned[2:], Resources(gpus_per_trial=2)) == []  # nothing trains


def test_the_benchmark_names_a_missing_framework_before_measuring(monkeypatch, capsys):
    """A torch-only install (the GPU machines MXNet cannot use) asked for the default
    Gluon benchmark: one message with the install command, not an import traceback."""
    import importlib.util

    from bench.benchmark.cli import main as benchmark_main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        'find_spec',
        lambda name, *args: None if name == 'mxnet' else real_find_spec(name, *args),
    )
    for backend in ('gluon', 'both'):
        with pytest.raises(SystemExit) as exit_info:
            benchmark_main(
                ['--backend', backend, '--num-gpus', '0', '--models', 'cifar_resnet8_v1']
                # Small, so that a benchmark that runs after all fails soon.
                + ['--batches', '1', '--rounds', '1', '--images', '32', '--batch-size', '16']
                + ['--no-original', '--epoch-images', '0']
            )
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and 'Traceback' not in err
        assert err.startswith('error: backend gluon needs mxnet, which is not installed here')
