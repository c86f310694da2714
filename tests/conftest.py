"""Shared fixtures: small CIFAR-format data written by the tests themselves."""

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
