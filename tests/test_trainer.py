"""One training trial: metrics, schedule, checkpoints and exact resume, divergence, the CLI."""

import json

import mxnet as mx
import numpy as np
import pytest

from bench.train import main as train_main
from bench.trial.checkpoint import (
    CheckpointMismatch,
    latest_checkpoint,
    list_checkpoints,
    read_state,
)
from bench.trial.data import load_cifar10, write_cifar10
from bench.trial.gluon import trainer as trainer_module
from bench.trial.gluon.trainer import METRICS, train
from bench.trial.loop import TrainingDiverged
from bench.trial.recipe import Recipe, TrialSpec

from .conftest import make_images

TINY_RECIPE = Recipe(epochs=2, batch_size=16, lr_decay_epochs=(1,))


@pytest.fixture(autouse=True)
def on_the_cpu(monkeypatch):
    """Every training here runs on the CPU, also on a machine with GPUs: results there
    are bit-exact (cuDNN's autotuning and TF32 are not)."""
    from bench.trial.gluon import trainer as gluon_trainer

    monkeypatch.setattr(gluon_trainer, 'trial_contexts', lambda num_gpus=None: [mx.cpu()])


def tiny_spec(attention='eca', **recipe_changes):
    recipe = Recipe(**{**TINY_RECIPE.to_dict(), **recipe_changes})
    return TrialSpec('cifar_resnet8_v1', attention, seed=3, recipe=recipe)


def parameters(net_or_folder):
    loaded = mx.nd.load(str(net_or_folder / 'model.params'))
    return {name: array.asnumpy() for name, array in loaded.items()}


def test_learning_rate_schedule_is_the_original_recipe():
    recipe = Recipe()
    assert (recipe.epochs, recipe.batch_size, recipe.optimizer, recipe.wd) == (
        186,
        128,
        'adam',
        1e-4,
    )
    assert recipe.lr_at(0) == pytest.approx(0.003)
    assert recipe.lr_at(80) == pytest.approx(0.003)
    assert recipe.lr_at(81) == pytest.approx(0.0003)
    assert recipe.lr_at(122) == pytest.approx(0.00003)
    assert recipe.lr_at(185) == pytest.approx(0.00003)


def test_bad_recipe_values_are_named():
    with pytest.raises(
        ValueError,
        match="recipe.optimizer: Input should be 'adam', 'sgd' or 'nag' \\(found 'adamw'\\)",
    ):
        Recipe.from_dict({'optimizer': 'adamw'})
    with pytest.raises(ValueError):
        Recipe(optimizer='adamw')
    with pytest.raises(
        ValueError, match='recipe.lr_decay_epoch: unknown key; valid keys: epochs, batch_size'
    ):
        Recipe.from_dict({'lr_decay_epoch': [81]})
    assert TrialSpec.from_dict(tiny_spec().to_dict()) == tiny_spec()


def test_train_returns_every_metric_of_every_epoch(tiny_cifar_root, tmp_path):
    data = load_cifar10(tiny_cifar_root, download=False)
    seen = []
    history = train(
        tiny_spec(),
        data,
        checkpoint_dir=tmp_path / 'ckpt',
        on_epoch=lambda metrics, path: seen.append((metrics, path)),
    )
    assert [m['epoch'] for m in history] == [1, 2]
    assert all(set(m) == set(METRICS) for m in history)
    assert [m['lr'] for m in history] == pytest.approx([0.003, 0.0003])
    for metrics in history:
        assert 0.0 <= metrics['train_acc'] <= 1.0 and 0.0 <= metrics['val_acc'] <= 1.0
        assert np.isfinite(metrics['train_loss']) and np.isfinite(metrics['val_loss'])
        assert metrics['images_per_second'] > 0
    assert [m for m, _ in seen] == history
    # Only the newest checkpoint is kept, and it is the one reported last.
    assert list_checkpoints(tmp_path / 'ckpt') == [seen[-1][1]]
    assert read_state(seen[-1][1])['epoch'] == 2


def test_val_loss_is_cross_entropy_on_the_test_set(tiny_cifar_root):
    data = load_cifar10(tiny_cifar_root, download=False)
    history = train(tiny_spec(epochs=1), data)
    assert history[0]['val_loss'] != pytest.approx(history[0]['train_loss'])
    assert history[0]['val_acc'] in {k / 40 for k in range(41)}


class _Killed(Exception):
    pass


def _kill_after_epoch(last):
    def on_epoch(metrics, _checkpoint):
        if metrics['epoch'] == last:
            raise _Killed()

    return on_epoch


# Adam (the recipe's) and SGD resume bit for bit. MXNet's NAG kernel does not: its
# fused update rounds differently on freshly loaded arrays (seen with and without
# hybridization, never above 2e-6), so it is held to float32 round-off.
EXACT = {'adam': 0, 'sgd': 0, 'nag': 1e-5}


@pytest.mark.parametrize('attention,optimizer', [('gct', 'adam'), ('se', 'nag'), ('none', 'sgd')])
def test_two_epochs_equal_one_plus_resume_plus_one(tiny_cifar_root, tmp_path, attention, optimizer):
    data = load_cifar10(tiny_cifar_root, download=False)
    spec = tiny_spec(attention, optimizer=optimizer, lr=0.01)
    straight = train(spec, data, checkpoint_dir=tmp_path / 'straight')

    interrupted = tmp_path / 'interrupted'
    with pytest.raises(_Killed):
        train(spec, data, checkpoint_dir=interrupted, on_epoch=_kill_after_epoch(1))
    assert latest_checkpoint(interrupted).name == 'epoch-0001'
    trained = []
    resumed = train(
        spec,
        data,
        checkpoint_dir=interrupted,
        on_epoch=lambda metrics, _path: trained.append(metrics['epoch']),
    )

    assert trained == [2]
    assert [m['epoch'] for m in resumed] == [1, 2]
    for key in ('train_loss', 'train_acc', 'val_loss', 'val_acc', 'lr'):
        assert resumed[1][key] == pytest.approx(straight[1][key], rel=EXACT[optimizer]), key
    a = parameters(latest_checkpoint(tmp_path / 'straight'))
    b = parameters(latest_checkpoint(interrupted))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(
            a[name], b[name], rtol=EXACT[optimizer], atol=EXACT[optimizer], err_msg=name
        )


def test_more_epochs_continue_a_finished_shorter_run(tiny_cifar_root, tmp_path):
    data = load_cifar10(tiny_cifar_root, download=False)
    train(tiny_spec(epochs=1), data, checkpoint_dir=tmp_path)
    trained = []
    history = train(
        tiny_spec(epochs=2),
        data,
        checkpoint_dir=tmp_path,
        on_epoch=lambda metrics, _path: trained.append(metrics['epoch']),
    )
    assert trained == [2] and len(history) == 2


def test_a_finished_trial_resumed_trains_nothing(tiny_cifar_root, tmp_path):
    data = load_cifar10(tiny_cifar_root, download=False)
    first = train(tiny_spec(epochs=1), data, checkpoint_dir=tmp_path)
    batches = []
    again = train(
        tiny_spec(epochs=1),
        data,
        checkpoint_dir=tmp_path,
        on_batch=lambda done, total: batches.append(done),
    )
    assert again == first and batches == []


def test_a_checkpoint_of_another_trial_is_refused(tiny_cifar_root, tmp_path):
    data = load_cifar10(tiny_cifar_root, download=False)
    train(tiny_spec('se', epochs=2), data, checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointMismatch, match='another trial') as refused:
        train(tiny_spec('gct', epochs=2, lr=0.01), data, checkpoint_dir=tmp_path)
    # What differs, named: not the whole spec.
    assert (
        "(attention: 'gct' here, 'se' in the checkpoint; recipe.lr: 0.01 here, 0.003 in "
        'the checkpoint)'
    ) in str(refused.value)
    # Other data: the same trial on other images would mix two data sets in one history.
    images, labels = make_images(96, seed=7)
    test_images, test_labels = make_images(40, seed=8)
    write_cifar10(tmp_path / 'other', images, labels, test_images, test_labels)
    other = load_cifar10(tmp_path / 'other', download=False)
    with pytest.raises(CheckpointMismatch) as refused:
        train(tiny_spec('se', epochs=3), other, checkpoint_dir=tmp_path)
    assert (
        f'data digest: {other.identity.digest!r} here, {data.identity.digest!r} in the checkpoint'
    ) in str(refused.value)
    # Fewer epochs than the checkpoint holds: a run is extended, never shortened.
    with pytest.raises(CheckpointMismatch) as refused:
        train(tiny_spec('se', epochs=1), data, checkpoint_dir=tmp_path)
    assert 'holds 2 epochs, more than the 1 this trial trains' in str(refused.value)
    assert latest_checkpoint(tmp_path).name == 'epoch-0002'


def test_half_written_checkpoints_are_never_resumed_from(tiny_cifar_root, tmp_path):
    data = load_cifar10(tiny_cifar_root, download=False)
    train(tiny_spec(epochs=1), data, checkpoint_dir=tmp_path)
    # What a crash mid-write leaves: a staging folder and an epoch folder without its state.
    (tmp_path / '.staging-x').mkdir()
    (tmp_path / 'epoch-0002').mkdir()
    (tmp_path / 'epoch-0002' / 'model.params').write_bytes(b'garbage')
    assert latest_checkpoint(tmp_path).name == 'epoch-0001'
    history = train(tiny_spec(epochs=2), data, checkpoint_dir=tmp_path)
    assert [m['epoch'] for m in history] == [1, 2]
    assert latest_checkpoint(tmp_path).name == 'epoch-0002'


@pytest.mark.parametrize('check_every', [20, 2])
def test_a_non_finite_loss_stops_with_epoch_and_batch(tiny_cifar_root, monkeypatch, check_every):
    # Every 2 batches: the bad batch is found by a later check than the first one.
    from bench.trial import loop

    monkeypatch.setattr(loop, 'DIVERGENCE_CHECK_EVERY', check_every)
    data = load_cifar10(tiny_cifar_root, download=False)
    real_loss = trainer_module.make_loss

    def loss_that_explodes_at_the_third_call():
        inner, calls = real_loss(), []

        def loss(out, label):
            calls.append(1)
            value = inner(out, label)
            return value * float('nan') if len(calls) == 3 else value

        return loss

    monkeypatch.setattr(trainer_module, 'make_loss', loss_that_explodes_at_the_third_call)
    with pytest.raises(TrainingDiverged) as error:
        train(tiny_spec(epochs=2), data)
    assert (error.value.epoch, error.value.batch) == (0, 2)
    assert 'epoch 1, batch 3' in str(error.value)


def test_command_line_trains_one_cell(tiny_cifar_root, tmp_path, capsys):
    output = tmp_path / 'history.json'
    arguments = [
        '--model',
        'cifar_resnet8_v2',
        '--attention',
        'se',
        '--num-epochs',
        '1',
        '--batch-size',
        '16',
        '--lr-decay-epoch',
        '81,122',
        '--quiet',
        '--num-gpus',
        '0',
        '--data-root',
        str(tiny_cifar_root),
        '--no-download',
        '--checkpoint-dir',
        str(tmp_path / 'ckpt'),
        '--output',
        str(output),
    ]
    assert train_main(arguments) == 0
    saved = json.loads(output.read_text())
    assert saved['spec']['attention'] == 'se'
    assert saved['spec']['recipe']['lr_decay_epochs'] == [81, 122]
    assert len(saved['history']) == 1
    assert saved['data']['official'] is False
    assert '[epoch   1/1]' in capsys.readouterr().out
    # The same command again trains nothing, and says so.
    assert train_main(arguments) == 0
    out = capsys.readouterr().out
    assert f'nothing trained: the checkpoint in {tmp_path / "ckpt"} already holds all 1' in out
    assert '[epoch' not in out


def test_command_line_reports_bad_input_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(['--model', 'resnet50', '--data-root', str(tmp_path), '--no-download'])
    assert exit_info.value.code == 2
    assert 'unknown model' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(['--data-root', str(tmp_path / 'none'), '--no-download'])
    assert 'CIFAR-10 was not found' in capsys.readouterr().err
    # A sweep file named for its thread count must be one (it was passed over in silence).
    typo = tmp_path / 'sweep.yml'
    unknown_key = tmp_path / 'bad.yaml'
    unknown_key.write_text('name: t\nmodels: [cifar_resnet8_v1]\nattentions: [none]\nthreads: 2\n')
    for config, expected in ((typo, 'no such file'), (unknown_key, 'threads')):
        with pytest.raises(SystemExit) as exit_info:
            train_main(['--config', str(config), '--data-root', str(tmp_path), '--no-download'])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f'error: --config {config}' in err, err
        assert expected in err


@pytest.mark.slow
def test_a_small_real_data_set_is_learned(tmp_path):
    from bench.trial.data import make_digits_dataset

    data = load_cifar10(make_digits_dataset(tmp_path), download=False, name='sklearn-digits')
    spec = TrialSpec(
        'cifar_resnet8_v1',
        'eca',
        seed=0,
        recipe=Recipe(epochs=4, batch_size=64, lr_decay_epochs=(3,)),
    )
    history = train(spec, data)
    assert history[-1]['val_acc'] > 0.6
    assert history[-1]['train_loss'] < history[0]['train_loss']


def test_mixed_precision_is_a_recipe_option_refused_off_the_gpu(tiny_cifar_root, capsys):
    from bench.trial.gluon.trainer import check_precision

    with pytest.raises(
        ValueError,
        match="recipe.precision: Input should be 'float32', 'amp_float16' or 'amp_bfloat16'",
    ):
        Recipe.from_dict({'precision': 'bfloat16'})
    with pytest.raises(
        ValueError, match='precision must be one of float32, amp_float16 with backend gluon'
    ):
        Recipe.from_dict({'precision': 'amp_bfloat16'})
    amp = Recipe(precision='amp_float16')
    assert Recipe.from_dict(amp.to_dict()) == amp
    check_precision(amp, [mx.gpu(0)])  # accepted where it can run
    with pytest.raises(ValueError, match='amp_float16 needs GPUs, but this trial runs on cpu'):
        check_precision(amp, [mx.cpu()])
    data = load_cifar10(tiny_cifar_root, download=False)
    with pytest.raises(ValueError, match='Use precision float32'):
        train(tiny_spec(precision='amp_float16'), data, contexts=[mx.cpu()])
    with pytest.raises(SystemExit) as exit_code:
        train_main(
            [
                '--model',
                'cifar_resnet8_v1',
                '--data-root',
                str(tiny_cifar_root),
                '--precision',
                'amp_float16',
                '--num-gpus',
                '0',
                '--quiet',
            ]
        )
    assert exit_code.value.code == 2
    assert 'amp_float16 needs GPUs' in capsys.readouterr().err


ORIGINAL_COMMAND = (
    '--mode hybrid --num-gpus 1 -j 8 --batch-size 128 --num-epochs 186 --lr 0.003 '
    '--lr-decay 0.1 --lr-decay-epoch 81,122 --wd 0.0001 --optimizer adam '
    '--random-crop --model cifar_resnet20_v1 --eca'
).split()


def test_the_original_readme_command_line_is_accepted_as_written():
    from bench.sweep.config import expand, load_config
    from bench.train import parse_args, spec_from_args

    _, args = parse_args(ORIGINAL_COMMAND)
    spec = spec_from_args(args)
    (table_cell,) = [
        s
        for s in expand(load_config('sweep.yaml').config)
        if s.model == 'cifar_resnet20_v1' and s.attention == 'eca'
    ]
    assert spec == table_cell  # the very trial the sweep trains for that cell
    assert args.num_gpus == 1 and args.num_data_workers == 8
    for flag in ('--se', '--gct'):
        assert spec_from_args(parse_args([flag])[1]).attention == flag[2:]
    assert spec_from_args(parse_args(['--attention', 'gct'])[1]).attention == 'gct'
    assert spec_from_args(parse_args([])[1]).attention == 'none'
    assert spec_from_args(parse_args(['--no-random-crop'])[1]).recipe.random_crop is False


def test_the_original_command_line_says_what_to_do_without_a_gpu(tiny_cifar_root, capsys):
    from bench.train import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(['--se', '--eca'])
    assert exit_info.value.code == 2
    assert 'not allowed with argument' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        train_main(ORIGINAL_COMMAND + ['--data-root', str(tiny_cifar_root), '--no-download'])
    assert exit_info.value.code == 2
    assert (
        '1 GPU(s) asked for but 0 visible to this process (a CPU build of MXNet sees none); '
        'ask for fewer, or --num-gpus 0 to train on the CPU'
    ) in capsys.readouterr().err


def test_the_original_command_line_trains_on_the_cpu(tiny_cifar_root, tmp_path):
    output = tmp_path / 'history.json'
    command = [a if a != '186' else '1' for a in ORIGINAL_COMMAND]
    command[command.index('--num-gpus') + 1] = '0'
    command[command.index('--batch-size') + 1] = '16'
    command[command.index('--model') + 1] = 'cifar_resnet8_v1'
    assert (
        train_main(
            command
            + [
                '--data-root',
                str(tiny_cifar_root),
                '--no-download',
                '--quiet',
                '--output',
                str(output),
            ]
        )
        == 0
    )
    saved = json.loads(output.read_text())
    assert saved['spec']['attention'] == 'eca' and len(saved['history']) == 1


def test_a_batch_larger_than_the_training_set_is_one_message(tiny_cifar_root, capsys):
    code = train_main(
        [
            '--model',
            'cifar_resnet8_v1',
            '--data-root',
            str(tiny_cifar_root),
            '--no-download',
            '--num-gpus',
            '0',
            '--batch-size',
            '5000',
            '--quiet',
        ]
    )
    assert code == 2
    assert 'error: batch_size 5000 is larger than the' in capsys.readouterr().err


def test_ctrl_c_in_bench_train_is_one_line_saying_what_was_kept(tmp_path, monkeypatch, capsys):
    import bench.train as command

    def interrupted(args, prepared):
        raise KeyboardInterrupt

    monkeypatch.setattr(command, 'prepare', lambda args: None)
    monkeypatch.setattr(command, 'train_prepared', interrupted)
    assert command.main(['--checkpoint-dir', str(tmp_path / 'ck')]) == 130
    err = capsys.readouterr().err
    assert err == (
        f'\ninterrupted: every finished epoch is checkpointed in {tmp_path / "ck"}; run the '
        'same command to resume\n'
    )
    assert command.main([]) == 130
    assert '--checkpoint-dir keeps every finished epoch' in capsys.readouterr().err
