"""Shared fixtures: small CIFAR-format data written by the tests themselves."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from bench.trial.data import write_cifar10


def make_images(count, seed=0, classes=10):
    """Images whose class is visible (a bright stripe at a class-dependent row), plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=count).astype(np.int32)
    images = rng.integers(0, 64, size=(count, 3, 32, 32)).astype(np.uint8)
    for index, label in enumerate(labels):
        images[index, :, 3 * label : 3 * label + 3, :] = 255
    return images, labels


@pytest.fixture
def tiny_cifar_root(tmp_path):
    """A folder in the official binary layout: 96 training and 40 test images."""
    train_images, train_labels = make_images(96, seed=1)
    test_images, test_labels = make_images(40, seed=2)
    write_cifar10(tmp_path / 'cifar', train_images, train_labels, test_images, test_labels)
    return tmp_path / 'cifar'


PLUGIN_SOURCE = Path(__file__).parent / 'fixtures' / 'attention_plugin'


@pytest.fixture(scope='module')
def installed_plugin(tmp_path_factory):
    """The fixture package that brings attention 'gate' (tests/fixtures/attention_plugin),
    installed by pip into a folder of its own, found through its entry point: in this
    process (the folder on sys.path) and in subprocesses given `env`; gone again after
    the module's tests. Yields (folder, env)."""
    import os
    import subprocess
    import sys

    from models import registry

    target = tmp_path_factory.mktemp('plugin-site')
    build = tmp_path_factory.mktemp('plugin-build')
    # A copy: building writes egg-info and build/ beside the sources.
    shutil.copytree(PLUGIN_SOURCE, build / 'src')
    done = subprocess.run(
        [
            sys.executable,
            '-m',
            'pip',
            'install',
            '--quiet',
            '--no-deps',
            '--no-index',
            '--no-build-isolation',
            '--target',
            str(target),
            str(build / 'src'),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    sys.path.insert(0, str(target))
    registry.refresh()
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(target), os.environ.get('PYTHONPATH', '')]).rstrip(
            os.pathsep
        ),
    )
    try:
        yield target, env
    finally:
        sys.path.remove(str(target))
        for name in [
            m for m in sys.modules if m == 'channel_gate' or m.startswith('channel_gate.')
        ]:
            del sys.modules[name]
        registry.refresh()
