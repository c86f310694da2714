"""A Gluon trial's optimizer state is stored and read without pickle (#23 point 1):
checkpoints of earlier versions (MXNet's pickled trainer.states) resume exactly, read
as data; a crafted pickle is refused with one message and runs nothing."""

import os
import pickle

import mxnet as mx
import numpy as np
import pytest

from bench.trial.checkpoint import latest_checkpoint
from bench.trial.data import load_cifar10
from bench.trial.gluon import trainer as gluon_trainer
from bench.trial.gluon.optimizer_state import (
    LEGACY_STATES,
    STATE_ARRAYS,
    STATE_RECORD,
    UnreadableOptimizerState,
    parse_pickle,
    read_legacy_states,
)
from bench.trial.gluon.trainer import GluonSession, train

from .test_trainer import _kill_after_epoch, _Killed, parameters, tiny_spec


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    monkeypatch.setattr(gluon_trainer, 'trial_contexts', lambda num_gpus=None: [mx.cpu()])


def interrupted_after_one_epoch(spec, data, folder):
    with pytest.raises(_Killed):
        train(spec, data, checkpoint_dir=folder, on_epoch=_kill_after_epoch(1))
    return latest_checkpoint(folder)


def as_an_earlier_version_wrote_it(spec, data, checkpoint):
    """The checkpoint with its optimizer state as MXNet's Trainer.save_states pickles it
    (what this project wrote before), instead of arrays and JSON."""
    session = GluonSession(spec, data, [mx.cpu()])
    session.load_weights(checkpoint)
    session.trainer.save_states(str(checkpoint / LEGACY_STATES))
    (checkpoint / STATE_RECORD).unlink()
    (checkpoint / STATE_ARRAYS).unlink()


@pytest.mark.parametrize('optimizer', ['adam', 'nag'])
def test_a_checkpoint_of_an_earlier_version_resumes_exactly_read_as_data(
    tiny_cifar_root, tmp_path, optimizer, capsys
):
    data = load_cifar10(tiny_cifar_root, download=False)
    spec = tiny_spec('se', optimizer=optimizer, lr=0.01)
    straight = train(spec, data, checkpoint_dir=tmp_path / 'straight')
    checkpoint = interrupted_after_one_epoch(spec, data, tmp_path / 'old')
    as_an_earlier_version_wrote_it(spec, data, checkpoint)
    capsys.readouterr()
    resumed = train(spec, data, checkpoint_dir=tmp_path / 'old')
    assert (
        'read as data, never unpickled; the next checkpoint is written without pickle'
        in capsys.readouterr().out
    )
    assert resumed[1]['val_loss'] == pytest.approx(
        straight[1]['val_loss'], rel=0 if optimizer == 'adam' else 1e-5
    )
    now = latest_checkpoint(tmp_path / 'old')
    assert (now / STATE_RECORD).is_file() and not (now / LEGACY_STATES).exists()
    a, b = parameters(latest_checkpoint(tmp_path / 'straight')), parameters(now)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_the_legacy_reader_gives_what_mxnet_pickled(tiny_cifar_root, tmp_path):
    data = load_cifar10(tiny_cifar_root, download=False)
    spec = tiny_spec('gct')
    checkpoint = interrupted_after_one_epoch(spec, data, tmp_path)
    session = GluonSession(spec, data, [mx.cpu()])
    session.load_weights(checkpoint)
    session.trainer.save_states(str(tmp_path / 'mxnet.states'))
    blob = (tmp_path / 'mxnet.states').read_bytes()
    record, arrays = read_legacy_states(blob, 'adam')
    states, optimizer = pickle.loads(blob)  # our own file, in a test: to compare with
    assert record['num_update'] == optimizer.num_update > 0
    assert record['index_update_counts'] == {
        str(d): {str(i): c for i, c in counts.items()}
        for d, counts in optimizer._all_index_update_counts.items()
    }
    assert set(record['states']) == {str(i) for i in states}
    for index, (mean, variance) in states.items():
        np.testing.assert_array_equal(arrays[f'{index}/0'].asnumpy(), mean.asnumpy())
        np.testing.assert_array_equal(arrays[f'{index}/1'].asnumpy(), variance.asnumpy())


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


CRAFTED = {
    'a command': lambda marker: pickle.dumps(_RunsACommand(marker)),
    'a command as a state': lambda marker: pickle.dumps(
        ({0: _RunsACommand(marker)}, _RunsACommand(marker))
    ),
    'a command as the optimizer': lambda marker: pickle.dumps(({}, _RunsACommand(marker))),
    'garbage': lambda marker: b'\x80\x04garbage',
    'an unknown opcode': lambda marker: b'\x80\x02cos\nsystem\n(S"touch x"\ntR.',
}


@pytest.mark.parametrize('kind', sorted(CRAFTED))
def test_a_crafted_pickle_runs_nothing_and_says_how_to_retrain(tiny_cifar_root, tmp_path, kind):
    data = load_cifar10(tiny_cifar_root, download=False)
    spec = tiny_spec('eca')
    checkpoint = interrupted_after_one_epoch(spec, data, tmp_path / 'ckpt')
    (checkpoint / STATE_RECORD).unlink()
    (checkpoint / STATE_ARRAYS).unlink()
    marker = tmp_path / 'it-ran'
    (checkpoint / LEGACY_STATES).write_bytes(CRAFTED[kind](marker))
    with pytest.raises(UnreadableOptimizerState) as error:
        train(spec, data, checkpoint_dir=tmp_path / 'ckpt')
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert 'never unpickled' in message and f'delete the checkpoint folder {checkpoint}' in message
    assert not marker.exists()


def test_the_pickle_reader_builds_inert_records_only():
    parsed = parse_pickle(pickle.dumps({'a': [1, 2.5, None, True, b'x', ('t',)]}))
    assert parsed == {'a': [1, 2.5, None, True, b'x', ('t',)]}
    call = parse_pickle(pickle.dumps(_RunsACommand('/nonexistent/x')))
    assert repr(call.function) == 'posix.system' and call.args == ('touch /nonexistent/x',)


@pytest.mark.parametrize(
    'damage',
    [
        'drop an array',
        'wrong shape',
        'other optimizer',
        'bad count',
        'json garbage',
        'no states',
        'empty states',
    ],
)
def test_a_damaged_optimizer_state_is_one_message(tiny_cifar_root, tmp_path, damage):
    import json

    data = load_cifar10(tiny_cifar_root, download=False)
    spec = tiny_spec('none')
    checkpoint = interrupted_after_one_epoch(spec, data, tmp_path / 'ckpt')
    record = json.loads((checkpoint / STATE_RECORD).read_text())
    arrays = mx.nd.load(str(checkpoint / STATE_ARRAYS))
    first = sorted(arrays)[0]
    if damage == 'drop an array':
        del arrays[first]
    elif damage == 'wrong shape':
        arrays[first] = mx.nd.zeros((2, 2))
    elif damage == 'other optimizer':
        record['optimizer'] = 'sgd'
    elif damage == 'bad count':
        record['num_update'] = -3
    elif damage == 'no states':  # each parameter's moments replaced by nothing
        record['states'] = dict.fromkeys(record['states'], 'none')
    elif damage == 'empty states':  # the moments silently reset
        record['states'] = {}
    mx.nd.save(str(checkpoint / STATE_ARRAYS), arrays)
    (checkpoint / STATE_RECORD).write_text('{' if damage == 'json garbage' else json.dumps(record))
    with pytest.raises(UnreadableOptimizerState, match='cannot be restored'):
        train(spec, data, checkpoint_dir=tmp_path / 'ckpt')
