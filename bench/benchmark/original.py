"""The original repository's input path and epoch loop, rebuilt to be timed against ours.

Its script fed Gluon DataLoader workers with per-image transforms (gluoncv's
RandomCrop, then flip, ToTensor and Normalize) and updated an accuracy metric
every batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.gluon.data.vision import transforms

from bench.benchmark.gluon_steps import train_step_fn
from bench.trial.data import CIFAR_MEAN, CIFAR_STD
from bench.trial.gluon.trainer import build_parts
from models.gluoncv_compat import import_gluoncv

if TYPE_CHECKING:
    import numpy as np

    from bench.trial.recipe import TrialSpec


class _EndlessLoader:
    """Batches of a DataLoader pass after pass, from its one worker pool (as the original
    script used one loader for all epochs), with a way to wait for its prefetching."""

    def __init__(self, loader: gluon.data.DataLoader) -> None:
        self.loader = loader
        self.batches = None

    def next(self) -> list[mx.nd.NDArray]:
        if self.batches is None:
            # What `iter(loader)` wraps; kept at hand so that settle() can see its
            # prefetched batches (MXNet 1.9's _MultiWorkerIter keeps them in _data_buffer).
            self.batches = self.loader._prefetch_iter()
        try:
            return next(self.batches)
        except StopIteration:
            self.batches = None
            return self.next()

    def settle(self) -> None:
        """Wait until the workers have finished every batch they were asked to prefetch."""
        for pending in list(getattr(self.batches, '_data_buffer', {}).values()):
            pending.wait()


def original_loader(
    images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int
) -> gluon.data.DataLoader:
    """The original script's input path: per-image transforms in DataLoader workers."""
    transform = transforms.Compose(
        [
            import_gluoncv('gluoncv.data.transforms').RandomCrop(32, pad=4),
            transforms.RandomFlipLeftRight(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
        ]
    )
    # NDArray images in HWC layout, what Gluon's CIFAR10 dataset hands the transforms.
    dataset = gluon.data.ArrayDataset(
        mx.nd.array(images.transpose(0, 2, 3, 1), dtype='uint8'), labels
    )
    return gluon.data.DataLoader(
        dataset.transform_first(transform),
        batch_size=batch_size,
        shuffle=True,
        last_batch='discard',
        num_workers=workers,
    )


def original_stepper(
    spec: TrialSpec, images: np.ndarray, labels: np.ndarray, ctx: mx.Context, workers: int
) -> Callable[[], None]:
    """One step of the same model fed through the original input path."""
    train_step = train_step_fn(spec, ctx)
    batches = _EndlessLoader(original_loader(images, labels, spec.recipe.batch_size, workers))

    def step() -> None:
        x, y = batches.next()
        train_step(x.as_in_context(ctx), y.as_in_context(ctx))

    def settle() -> None:
        batches.settle()
        mx.nd.waitall()

    step.settle = settle
    return step


def original_test_loader(
    images: np.ndarray, labels: np.ndarray, batch_size: int, workers: int
) -> gluon.data.DataLoader:
    """The original script's evaluation input: ToTensor and Normalize per image in workers."""
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)]
    )
    dataset = gluon.data.ArrayDataset(
        mx.nd.array(images.transpose(0, 2, 3, 1), dtype='uint8'), labels
    )
    return gluon.data.DataLoader(
        dataset.transform_first(transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )


def original_epoch_fn(
    spec: TrialSpec,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    ctx: mx.Context,
    workers: int,
) -> Callable[[], tuple[float, float, float]]:
    """One epoch as the original script ran it: train from the DataLoader, summing the loss
    and updating an accuracy metric every batch, then evaluate on the test loader."""
    net, trainer, loss_fn = build_parts(spec, [ctx])
    train_loader = original_loader(*train, spec.recipe.batch_size, workers)
    test_loader = original_test_loader(*test, spec.recipe.batch_size, workers)

    def epoch() -> tuple[float, float, float]:
        train_metric, test_metric = mx.metric.Accuracy(), mx.metric.Accuracy()
        train_loss = 0.0
        for x, y in train_loader:
            x, y = x.as_in_context(ctx), y.as_in_context(ctx)
            with autograd.record():
                output = net(x)
                loss = loss_fn(output, y)
            loss.backward()
            trainer.step(x.shape[0])
            train_loss += loss.sum().asscalar()
            train_metric.update(y, output)
        for x, y in test_loader:
            test_metric.update(y.as_in_context(ctx), net(x.as_in_context(ctx)))
        return train_loss, train_metric.get()[1], test_metric.get()[1]

    return epoch
