"""One training trial: a CIFAR ResNet with an attention, trained by the recipe.

`train` is a library function: it takes the spec and the data, returns the
per-epoch metrics and reports each epoch to a callback; it never prints.
"""
import math
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from models import get_model

from .augment import DeviceImages, epoch_plan, eval_batches
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .devices import trial_contexts
from .store import HISTORY_FIELDS

# How many batches may pass between checks for a non-finite loss: each check
# waits for the device, so checking every batch would stall a GPU's pipeline.
DIVERGENCE_CHECK_EVERY = 20
# Each epoch's metrics are one row of the store's history.
METRICS = HISTORY_FIELDS


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""

    def __init__(self, epoch, batch, value):
        self.epoch, self.batch, self.value = epoch, batch, value
        where = f'batch {batch + 1}' if batch is not None else 'validation'
        super().__init__(
            f'training diverged: loss was {value} at epoch {epoch + 1}, {where}; '
            'lower the learning rate or check the data')


def make_loss():
    return gluon.loss.SoftmaxCrossEntropyLoss()


def check_precision(recipe, contexts):
    """Refuse mixed precision off the GPU before anything is built."""
    if recipe.precision == 'amp_float16' and any(c.device_type != 'gpu' for c in contexts):
        raise ValueError(
            f"precision amp_float16 needs GPUs, but this trial runs on "
            f"{', '.join(str(c) for c in contexts)}: MXNet's float16 AMP has no CPU kernels. "
            f"Use precision float32, or give the trial a GPU (gpus_per_trial).")


def _amp():
    from mxnet.contrib import amp
    return amp


def build_network(spec, contexts, classes=10):
    """The spec's network, Xavier-initialised from the spec's seed, on `contexts`."""
    check_precision(spec.recipe, contexts)
    if spec.recipe.precision == 'amp_float16':
        # AMP rewrites MXNet's operators for the whole process, so it must come before
        # the network is built (Ray gives every trial a fresh process: reuse_actors=False).
        _amp().init(target_dtype='float16')
    mx.random.seed(spec.seed)
    net = get_model(spec.model, spec.attention, classes=classes,
                    attention_kwargs=spec.attention_kwargs)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    if spec.recipe.hybridize:
        net.hybridize(static_alloc=True, static_shape=True)
    return net


def make_trainer(net, recipe):
    options = {'learning_rate': recipe.lr, 'wd': recipe.wd}
    if recipe.optimizer in ('sgd', 'nag'):
        options['momentum'] = recipe.momentum
    # update_on_kvstore=False keeps the optimizer in the Trainer, so save_states
    # stores its state (Adam's moments and step counts) for an exact resume.
    trainer = gluon.Trainer(net.collect_params(), recipe.optimizer, options,
                            update_on_kvstore=False)
    if recipe.precision == 'amp_float16':
        _amp().init_trainer(trainer)   # dynamic loss scaling; steps that overflow are skipped
    return trainer


def backward(losses, trainer, recipe):
    if recipe.precision == 'amp_float16':
        with _amp().scale_loss(losses, trainer) as scaled:
            autograd.backward(scaled)
    else:
        autograd.backward(losses)


def _sum_on_devices(parts):
    """Sum of per-device scalars, on the first device, without waiting for any of them."""
    total = parts[0]
    for part in parts[1:]:
        total = total + part.as_in_context(total.context)
    return total


def train_epoch(net, trainer, loss_fn, images, plan, contexts, epoch, recipe, on_batch=None):
    """One pass over `plan`; returns (mean loss, accuracy, images seen)."""
    loss_sums, correct_sums = [], []
    seen = checked = 0
    for batch_index, (indices, rows, cols, flips) in enumerate(plan):
        x, y = images.batch(indices, rows, cols, flips)
        xs = gluon.utils.split_and_load(x, contexts, even_split=False)
        ys = gluon.utils.split_and_load(y, contexts, even_split=False)
        with autograd.record():
            outputs = [net(part) for part in xs]
            losses = [loss_fn(out, label) for out, label in zip(outputs, ys)]
        backward(losses, trainer, recipe)
        trainer.step(len(indices))
        loss_sums.append(_sum_on_devices([loss.sum() for loss in losses]))
        correct_sums.append(_sum_on_devices(
            [(out.argmax(axis=1) == label).sum() for out, label in zip(outputs, ys)]))
        seen += len(indices)
        if (batch_index + 1) % DIVERGENCE_CHECK_EVERY == 0 or batch_index + 1 == len(plan):
            _check_finite(loss_sums[checked:], epoch, first_batch=checked)
            checked = len(loss_sums)
        if on_batch is not None:
            on_batch(batch_index + 1, len(plan))
    if not seen:
        return float('nan'), float('nan'), 0
    return _total(loss_sums) / seen, _total(correct_sums) / seen, seen


def _total(scalars):
    return float(mx.nd.add_n(*scalars).asscalar()) if len(scalars) > 1 \
        else float(scalars[0].asscalar())


def _check_finite(loss_sums, epoch, first_batch=0):
    """Raise TrainingDiverged at the first non-finite loss among batches first_batch, ..."""
    values = mx.nd.stack(*loss_sums).asnumpy() if len(loss_sums) > 1 \
        else loss_sums[0].asnumpy().reshape(1)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise TrainingDiverged(epoch, first_batch + int(bad[0]), float(values[bad[0]]))


def evaluate(net, loss_fn, images, contexts, batch_size):
    """(mean cross-entropy, accuracy) of `net` on every image of `images`, unaugmented."""
    loss_total, correct_total = [], []
    for indices in eval_batches(images.count, batch_size):
        x, y = images.plain_batch(indices)
        xs = gluon.utils.split_and_load(x, contexts, even_split=False)
        ys = gluon.utils.split_and_load(y, contexts, even_split=False)
        for part, label in zip(xs, ys):
            out = net(part)
            loss_total.append(loss_fn(out, label).sum().as_in_context(mx.cpu()))
            correct_total.append((out.argmax(axis=1) == label).sum().as_in_context(mx.cpu()))
    return _total(loss_total) / images.count, _total(correct_total) / images.count


def train(spec, data, checkpoint_dir=None, resume_from=None, contexts=None,
          on_epoch=None, on_batch=None):
    """Train `spec` on `data`; return the list of per-epoch metric dicts (METRICS).

    checkpoint_dir: a checkpoint is written there after every epoch, and training
        resumes from the newest one found there.
    resume_from: a checkpoint folder to resume from instead (e.g. Ray Tune's).
    on_epoch(metrics, checkpoint_path): called after every epoch and its checkpoint.
    on_batch(done, total): called after every training batch (progress bars).
    """
    recipe = spec.recipe
    contexts = contexts or trial_contexts()
    net = build_network(spec, contexts, classes=data.classes)
    trainer = make_trainer(net, recipe)
    loss_fn = make_loss()
    train_images = DeviceImages(data.train_images, data.train_labels, contexts[0])
    test_images = DeviceImages(data.test_images, data.test_labels, contexts[0])
    if len(data.train_images) < recipe.batch_size:
        raise ValueError(f'batch_size {recipe.batch_size} is larger than the '
                         f'{len(data.train_images)} training images')
    rng = np.random.default_rng(spec.seed)
    history = []
    spec_dict = spec.to_dict()

    resume_from = resume_from or (latest_checkpoint(checkpoint_dir) if checkpoint_dir else None)
    if resume_from is not None:
        state = load_checkpoint(resume_from, net, trainer, expected_spec=spec_dict)
        rng.bit_generator.state = state['rng']
        history = state['history']

    for epoch in range(len(history), recipe.epochs):
        started = time.perf_counter()
        lr = recipe.lr_at(epoch)
        trainer.set_learning_rate(lr)
        plan = epoch_plan(rng, train_images.count, recipe.batch_size,
                          random_crop=recipe.random_crop, random_flip=recipe.random_flip)
        train_loss, train_acc, seen = train_epoch(net, trainer, loss_fn, train_images, plan,
                                                  contexts, epoch, recipe, on_batch)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = evaluate(net, loss_fn, test_images, contexts, recipe.batch_size)
        if not math.isfinite(val_loss):
            raise TrainingDiverged(epoch, None, val_loss)
        metrics = {
            'epoch': epoch + 1, 'lr': lr,
            'train_loss': train_loss, 'train_acc': train_acc,
            'val_loss': val_loss, 'val_acc': val_acc,
            'epoch_seconds': time.perf_counter() - started,
            'train_seconds': train_seconds,
            'images_per_second': seen / train_seconds,
        }
        history.append(metrics)
        checkpoint_path = None
        if checkpoint_dir is not None:
            checkpoint_path = save_checkpoint(checkpoint_dir, net, trainer, {
                'epoch': epoch + 1, 'spec': spec_dict, 'history': history,
                'rng': rng.bit_generator.state, 'data': data.identity.to_dict()})
        if on_epoch is not None:
            on_epoch(metrics, checkpoint_path)
    return history
