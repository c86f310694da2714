"""Helpers for the end-to-end sweep tests: tiny sweeps over tiny CIFAR-format data."""

import textwrap

import yaml

from bench.sweep.config import load_config
from bench.trial.data import write_cifar10

from .conftest import make_images


def write_tiny_data(root, train=128, test=40):
    train_images, train_labels = make_images(train, seed=1)
    test_images, test_labels = make_images(test, seed=2)
    write_cifar10(root, train_images, train_labels, test_images, test_labels)
    return root


def write_sweep(
    folder,
    data_root,
    name='tiny',
    models=('cifar_resnet8_v1', 'cifar_resnet8_v2'),
    attentions=('none', 'eca'),
    epochs=1,
    overrides=(),
    extra=None,
):
    values = {
        'name': name,
        'models': list(models),
        'attentions': list(attentions),
        'seeds': [0],
        'recipe': {'epochs': epochs, 'batch_size': 16, 'lr_decay_epochs': [100]},
        'overrides': list(overrides),
        'data': {'dataset': 'cifar10', 'root': str(data_root), 'download': False},
        'resources': {'cpus_per_trial': 1, 'gpus_per_trial': 0, 'max_failures': 0},
        'outputs': {'results': 'results', 'readme': None, 'figures': 'figures', 'report': None},
    }
    values.update(extra or {})
    path = folder / f'{name}.yaml'
    path.write_text(textwrap.dedent(yaml.safe_dump(values, sort_keys=False)))
    return path


def loaded(path):
    return load_config(path)
