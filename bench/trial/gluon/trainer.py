"""The Gluon trial backend (the reference): a CIFAR ResNet with an attention, trained
by the recipe on MXNet devices.

`open_session` gives the session that `bench.trial.loop.run_epochs` drives (the trial
seam); `train` is both together, a library function that takes the spec and the
data, returns the per-epoch metrics and reports each epoch to a callback.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from bench.store import HISTORY_FIELDS
from bench.trial.batches import eval_batches
from bench.trial.data import Dataset
from bench.trial.gluon.augment import DeviceImages
from bench.trial.gluon.devices import describe, trial_contexts, trial_device_plan
from bench.trial.gluon.optimizer_state import load_optimizer_state, save_optimizer_state
from bench.trial.host_memory import keep_freed_memory_for_reuse
from bench.trial.loop import UnsupportedRecipe, run_epochs
from bench.trial.recipe import Recipe, TrialSpec
from models import get_model, load_parameters
from models.cifar_resnet import network_initializer

# Each epoch's metrics are one row of the store's history.
METRICS = HISTORY_FIELDS


# The checkpoint files of this backend (beside the loop's state.json): the weights, and
# the optimizer's state as arrays and JSON (optimizer_state; never pickle).
PARAMS_FILE = 'model.params'


def make_loss() -> gluon.loss.SoftmaxCrossEntropyLoss:
    return gluon.loss.SoftmaxCrossEntropyLoss()


def check_precision(recipe: Recipe, contexts: list[mx.Context]) -> None:
    """Refuse mixed precision off the GPU before anything is built."""
    if recipe.precision == 'amp_float16' and any(c.device_type != 'gpu' for c in contexts):
        raise UnsupportedRecipe(
            f'precision amp_float16 needs GPUs, but this trial runs on '
            f"{', '.join(str(c) for c in contexts)}: MXNet's float16 AMP has no CPU kernels. "
            'Use precision float32, or train on a GPU.'
        )


def _amp() -> ModuleType:
    # mxnet.contrib.amp is imported only where mixed precision is asked for.
    from mxnet.contrib import amp

    return amp


def build_network(
    spec: TrialSpec, contexts: list[mx.Context], classes: int = 10
) -> gluon.HybridBlock:
    """The spec's network, initialised from the spec's seed, on `contexts`."""
    check_precision(spec.recipe, contexts)
    if spec.recipe.precision == 'amp_float16':
        # AMP rewrites MXNet's operators for the whole process, so it must come before
        # the network is built (Ray gives every trial a fresh process: reuse_actors=False).
        _amp().init(target_dtype='float16')
    net = get_model(
        spec.model, spec.attention, classes=classes, attention_kwargs=spec.attention_kwargs
    )
    return initialize_network(net, spec, contexts)


def initialize_network(
    net: gluon.HybridBlock, spec: TrialSpec, contexts: list[mx.Context]
) -> gluon.HybridBlock:
    """`net` initialised from the spec's seed on `contexts` (MXNet's Xavier(), or what
    the network's variant declares), hybridized as the recipe says; returns net."""
    mx.random.seed(spec.seed)
    net.initialize(network_initializer(spec.model), ctx=contexts)
    if spec.recipe.hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def build_parts(
    spec: TrialSpec, contexts: list[mx.Context], classes: int = 10
) -> tuple[gluon.HybridBlock, gluon.Trainer, gluon.loss.Loss]:
    """(network, gluon.Trainer, loss) of a trial: what every Gluon training loop needs."""
    net = build_network(spec, contexts, classes=classes)
    return net, make_trainer(net, spec.recipe), make_loss()


def make_trainer(net: gluon.HybridBlock, recipe: Recipe) -> gluon.Trainer:
    options = {'learning_rate': recipe.lr, 'wd': recipe.wd}
    if recipe.optimizer in ('sgd', 'nag'):
        options['momentum'] = recipe.momentum
    # update_on_kvstore=False keeps the optimizer in the Trainer, so its updater
    # stores its state (Adam's moments and step counts) for an exact resume.
    trainer = gluon.Trainer(
        net.collect_params(), recipe.optimizer, options, update_on_kvstore=False
    )
    if recipe.precision == 'amp_float16':
        _amp().init_trainer(trainer)  # dynamic loss scaling; steps that overflow are skipped
    return trainer


class GluonSession:
    """One trial's network, optimizer, loss and data on its MXNet devices
    (a bench.trial.loop.Session)."""

    def __init__(self, spec: TrialSpec, data: Dataset, contexts: list[mx.Context]) -> None:
        self.recipe, self.contexts = spec.recipe, contexts
        if all(context.device_type == 'cpu' for context in contexts):
            keep_freed_memory_for_reuse()
        self.net, self.trainer, self.loss_fn = build_parts(spec, contexts, data.classes)
        self.train_images = DeviceImages(data.train_images, data.train_labels, contexts[0])
        self.test_images = DeviceImages(data.test_images, data.test_labels, contexts[0])

    def set_learning_rate(self, lr: float) -> None:
        self.trainer.set_learning_rate(lr)

    def train_batch(
        self, indices: np.ndarray, rows: np.ndarray, cols: np.ndarray, flips: np.ndarray
    ) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        """One update on the batch, split over the trial's devices; its summed loss and
        correct count, left on the first device."""
        x, y = self.train_images.batch(indices, rows, cols, flips)
        xs = gluon.utils.split_and_load(x, self.contexts, even_split=False)
        ys = gluon.utils.split_and_load(y, self.contexts, even_split=False)
        with autograd.record():
            outputs = [self.net(part) for part in xs]
            losses = [self.loss_fn(out, label) for out, label in zip(outputs, ys)]
        self._backward(losses)
        self.trainer.step(x.shape[0])
        return (
            _sum_on_devices([loss.sum() for loss in losses]),
            _sum_on_devices(
                [(out.argmax(axis=1) == label).sum() for out, label in zip(outputs, ys)]
            ),
        )

    def _backward(self, losses: list[mx.nd.NDArray]) -> None:
        if self.recipe.precision == 'amp_float16':
            with _amp().scale_loss(losses, self.trainer) as scaled:
                autograd.backward(scaled)
        else:
            autograd.backward(losses)

    def values(self, scalars: Sequence[mx.nd.NDArray]) -> np.ndarray:
        """Host values of MXNet scalars (waits for them)."""
        return (
            mx.nd.stack(*scalars).asnumpy() if len(scalars) > 1 else scalars[0].asnumpy().reshape(1)
        )

    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) on every test image, unaugmented."""
        images, loss_total, correct_total = self.test_images, [], []
        for indices in eval_batches(images.count, self.recipe.batch_size):
            x, y = images.plain_batch(indices)
            xs = gluon.utils.split_and_load(x, self.contexts, even_split=False)
            ys = gluon.utils.split_and_load(y, self.contexts, even_split=False)
            for part, label in zip(xs, ys):
                out = self.net(part)
                loss_total.append(self.loss_fn(out, label).sum().as_in_context(mx.cpu()))
                correct_total.append((out.argmax(axis=1) == label).sum().as_in_context(mx.cpu()))
        return _total(loss_total) / images.count, _total(correct_total) / images.count

    def save_weights(self, folder: Path) -> None:
        self.net.save_parameters(str(folder / PARAMS_FILE))
        save_optimizer_state(self.trainer, self.recipe.optimizer, folder)

    def load_weights(self, folder: Path) -> None:
        load_parameters(self.net, folder / PARAMS_FILE, ctx=self.contexts)
        note = load_optimizer_state(self.trainer, self.recipe.optimizer, folder)
        if note:
            print(note, flush=True)

    def describe(self) -> dict[str, Any]:
        """Where and with what the trial ran, recorded with its results."""
        found = {'devices': describe(self.contexts), 'kernels': kernels_used(self.contexts)}
        if found['kernels'] == 'fused':
            from models.kernels import kernel_isa

            found['kernel_isa'] = kernel_isa()
        if any(ctx.device_type == 'gpu' for ctx in self.contexts):
            from models.cuda_runtime import loaded_library_versions

            found.update(loaded_library_versions())
            found['tf32'] = (
                'off'
                if os.environ.get('NVIDIA_TF32_OVERRIDE') == '0'
                else 'on where the card has it'
            )
        return found


def _sum_on_devices(parts: list[mx.nd.NDArray]) -> mx.nd.NDArray:
    """Sum of per-device scalars, on the first device, without waiting for any of them."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part.as_in_context(total.context)
    return total


def _total(scalars: list[mx.nd.NDArray]) -> float:
    return (
        float(mx.nd.add_n(*scalars).asscalar())
        if len(scalars) > 1
        else float(scalars[0].asscalar())
    )


def trial_devices(gpus_per_trial: float, gpu_ids: list[str]) -> list[mx.Context]:
    """The MXNet contexts of a scheduled trial (see devices.trial_device_plan)."""
    return trial_device_plan(gpus_per_trial, gpu_ids)


def open_session(spec: TrialSpec, data: Dataset, devices: list[mx.Context]) -> GluonSession:
    return GluonSession(spec, data, devices)


def kernels_used(contexts: list[mx.Context]) -> str:
    """Which implementation of the attentions' pooling and gating ran: it sets their speed."""
    from models.kernels import fused_kernels_for

    return 'fused' if fused_kernels_for(ctx.device_type for ctx in contexts) else 'mxnet'


def train(
    spec: TrialSpec,
    data: Dataset,
    checkpoint_dir: str | Path | None = None,
    resume_from: Path | None = None,
    contexts: list[mx.Context] | None = None,
    on_epoch: Callable[[dict, Path | None], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Train `spec` on `data` with Gluon; the list of per-epoch metric dicts (METRICS).
    The arguments are bench.trial.loop.run_epochs's; `contexts` default to every visible GPU,
    else the CPU."""
    session = GluonSession(spec, data, contexts or trial_contexts())
    return run_epochs(
        session,
        spec,
        data,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        on_epoch=on_epoch,
        on_batch=on_batch,
    )
