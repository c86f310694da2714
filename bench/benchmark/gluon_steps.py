"""Training steps and epochs of a Gluon trial as the sweep runs them, for timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from types import ModuleType, SimpleNamespace
from typing import TYPE_CHECKING, Any

import mxnet as mx
import numpy as np
from mxnet import autograd
from mxnet.gluon.block import HybridBlock

from bench.benchmark.timing import endless
from bench.trial.batches import epoch_plan
from bench.trial.gluon.augment import DeviceImages
from bench.trial.gluon.trainer import (
    GluonSession,
    build_parts,
    initialize_network,
    make_loss,
    make_trainer,
)
from bench.trial.loop import train_epoch
from models.cifar_resnet import CIFARResNet
from models.kernels import mxnet_operators_only
from models.names import network_variant, parse_model_name

if TYPE_CHECKING:
    from bench.trial.recipe import TrialSpec


def measure_data_pipeline(
    images: np.ndarray, labels: np.ndarray, ctx: mx.Context, batch_size: int, batches: int
) -> float:
    """Images/s of DeviceImages batches alone, waiting for each to be computed."""
    device = DeviceImages(images, labels, ctx)
    rng = np.random.default_rng(0)
    plan = epoch_plan(rng, len(images), batch_size)
    device.batch(*plan[0])[0].wait_to_read()
    started = time.perf_counter()
    done = 0
    while done < batches:
        for step in plan[: batches - done]:
            device.batch(*step)[0].wait_to_read()
            done += 1
    return done * batch_size / (time.perf_counter() - started)


def train_step_fn(
    spec: TrialSpec, ctx: mx.Context, network: HybridBlock | None = None
) -> Callable[[mx.nd.NDArray, mx.nd.NDArray], None]:
    """A fresh network for `spec` (or `network`, a built one) and a function doing one
    waited-for training step on (x, y)."""
    if network is None:
        net, trainer, loss_fn = build_parts(spec, [ctx])
    else:
        net, trainer, loss_fn = network, make_trainer(network, spec.recipe), make_loss()

    def train_step(x: mx.nd.NDArray, y: mx.nd.NDArray) -> None:
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(x.shape[0])
        loss.wait_to_read()

    return train_step


def trial_stepper(
    spec: TrialSpec,
    images: np.ndarray,
    labels: np.ndarray,
    ctx: mx.Context,
    mxnet_operators: bool = False,
    network: HybridBlock | None = None,
) -> Callable[[], None]:
    """One step of the trainer fed by the on-device pipeline, as the trial runs it.

    mxnet_operators: build the network's graph with MXNet's operators instead of
    the fused attention kernels (models/kernels), to measure what they gain.
    network: train this built network instead of the spec's.
    """

    train_step = train_step_fn(spec, ctx, network)
    device = DeviceImages(images, labels, ctx)
    rng = np.random.default_rng(0)
    plans = endless(lambda: epoch_plan(rng, len(images), spec.recipe.batch_size))

    def step() -> None:
        train_step(*device.batch(*next(plans)))

    # The engine runs backward and the update after the loss is ready: a round ends
    # when all of it is done (see timing.interleaved_rates).
    step.settle = mx.nd.waitall
    # The first call builds the hybridized graph, which later calls reuse.
    with mxnet_operators_only() if mxnet_operators else contextlib.nullcontext():
        step()
    return step


class ExtensionCopy(HybridBlock):
    """Stands where an attention sits and copies its input through the kernels' extension
    interface (`cab_copy`): no arithmetic, only what MXNet does around any extension
    operator. oneDNN keeps activations in blocked layouts, and MXNet converts them to
    and from the plain layout such an operator sees, forward and backward."""

    def __init__(self, channels: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def hybrid_forward(
        self, F: ModuleType, x: mx.nd.NDArray | mx.sym.Symbol
    ) -> mx.nd.NDArray | mx.sym.Symbol:
        return F.cab_copy(x)


def extension_floor_stepper(
    spec: TrialSpec, images: np.ndarray, labels: np.ndarray, ctx: mx.Context
) -> Callable[[], None]:
    """The vanilla network of `spec.model` with an ExtensionCopy on every residual
    branch, trained like a trial: the fastest any fused attention can be, as a share
    of vanilla (`--kernels-compare`)."""
    parts = parse_model_name(spec.model)
    net = CIFARResNet(
        parts.version,
        (parts.depth - 2) // 6,
        attention_class=ExtensionCopy,
        variant=network_variant(spec.model),
    )
    return trial_stepper(spec, images, labels, ctx, network=initialize_network(net, spec, [ctx]))


def trial_epoch_fn(
    spec: TrialSpec,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    ctx: mx.Context,
) -> Callable[[], tuple[tuple[float, float, int], tuple[float, float]]]:
    """One epoch as a trial runs it: the Gluon session's training pass through the trial
    loop, then its evaluation."""
    data = SimpleNamespace(
        train_images=train[0],
        train_labels=train[1],
        test_images=test[0],
        test_labels=test[1],
        classes=10,
    )
    session = GluonSession(spec, data, [ctx])
    rng = np.random.default_rng(0)

    def epoch() -> tuple[tuple[float, float, int], tuple[float, float]]:
        plan = epoch_plan(rng, len(train[0]), spec.recipe.batch_size)
        return train_epoch(session, plan, 0), session.evaluate()

    return epoch
