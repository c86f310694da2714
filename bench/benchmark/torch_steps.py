"""Training steps of a PyTorch trial as the sweep runs them (its session's own step), and
of the same network written as idiomatic PyTorch would be (the reference the backend is
measured against), for timing; each round ends with the device's queue empty."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.benchmark.timing import endless
from bench.trial.batches import epoch_plan
from bench.trial.host_memory import keep_freed_memory_for_reuse
from bench.trial.pytorch.augment import DeviceImages
from bench.trial.pytorch.trainer import TorchSession

if TYPE_CHECKING:
    from bench.trial.recipe import TrialSpec


def _synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _session(
    spec: TrialSpec, images: np.ndarray, labels: np.ndarray, device: torch.device
) -> TorchSession:
    # The benchmark's images serve as both splits: only training steps are timed.
    data = SimpleNamespace(
        train_images=images,
        train_labels=labels,
        test_images=images[:1],
        test_labels=labels[:1],
        classes=10,
    )
    return TorchSession(spec, data, device)


def trial_stepper(
    spec: TrialSpec, images: np.ndarray, labels: np.ndarray, device: str | torch.device
) -> Callable[[], None]:
    """One training step of a TorchSession on its on-device batches; `settle` waits for
    the GPU, so each timed round holds all of its own work."""
    device = torch.device(device)
    session = _session(spec, images, labels, device)
    rng = np.random.default_rng(0)
    plans = endless(lambda: epoch_plan(rng, len(images), spec.recipe.batch_size))

    def step() -> None:
        session.train_step(*session.train_images.batch(*next(plans)))

    step.settle = lambda: _synchronize(device)
    step.describe = session.describe  # what ran: compiled or not, CUDA graphs, kernels
    step()  # the first call builds (and with compile, compiles) what later ones reuse
    step.settle()
    return step


def idiomatic_network(
    model: str, attention: str, device: torch.device, seed: int = 0
) -> torch.nn.Module:
    """The same network with PyTorch's own BatchNorm2d in place of MXNetBatchNorm (same
    weights), in channels-last memory: what a PyTorch user would write."""
    from torch import nn

    from models.pytorch import MXNetBatchNorm, get_model

    net = get_model(model, attention, seed=seed)

    def plain(module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, MXNetBatchNorm):
                bn = nn.BatchNorm2d(
                    child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine
                )
                bn.load_state_dict(child.state_dict())
                setattr(module, name, bn)
            else:
                plain(child)

    plain(net)
    return net.to(device, memory_format=torch.channels_last)


def reference_stepper(
    spec: TrialSpec, images: np.ndarray, labels: np.ndarray, device: str | torch.device
) -> Callable[[], None]:
    """One training step of idiomatic PyTorch on the same batches as the trial's: the same
    network with nn.BatchNorm2d, its attentions differentiated by autograd (no
    hand-written backward), torch.optim.Adam (its defaults for this device), the mean
    cross-entropy; torch.compile'd as the recipe's `compile` says."""
    from torch.nn import functional as F

    from bench.trial.pytorch.trainer import compile_network
    from models.pytorch.channel_gate import autograd_formulas

    device = torch.device(device)
    net = idiomatic_network(spec.model, spec.attention, device, seed=spec.seed)
    forward = compile_network(net) if spec.recipe.compile else net
    optimizer = torch.optim.Adam(net.parameters(), lr=spec.recipe.lr, weight_decay=spec.recipe.wd)
    pipeline = DeviceImages(images, labels, device, channels_last=True)
    rng = np.random.default_rng(0)
    plans = endless(lambda: epoch_plan(rng, len(images), spec.recipe.batch_size))

    def step() -> None:
        x, y = pipeline.batch(*next(plans))
        with autograd_formulas():
            loss = F.cross_entropy(forward(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step.settle = lambda: _synchronize(device)
    step()
    step.settle()
    return step


def steppers(
    specs: Mapping[tuple[str, str], TrialSpec],
    images: np.ndarray,
    labels: np.ndarray,
    device: str | torch.device,
) -> dict[tuple[str, str, str], Callable[[], None]]:
    """The trial's and the idiomatic reference's stepper of each (model, attention):
    {('torch', model, attention): ..., ('torch-reference', model, attention): ...}."""
    device = torch.device(device)
    if device.type == 'cpu':
        keep_freed_memory_for_reuse()  # the trial's setting, for the reference rows too
    found = {}
    for (model, attention), spec in specs.items():
        found[('torch', model, attention)] = trial_stepper(spec, images, labels, device)
        found[('torch-reference', model, attention)] = reference_stepper(
            spec, images, labels, device
        )
    return found


def measure_data_pipeline(
    images: np.ndarray,
    labels: np.ndarray,
    device: str | torch.device,
    batch_size: int,
    batches: int,
) -> float:
    """Images/s of the torch DeviceImages batches alone, the device's queue emptied."""
    import time

    device = torch.device(device)
    pipeline = DeviceImages(images, labels, device, channels_last=True)  # as the session's
    plan = epoch_plan(np.random.default_rng(0), len(images), batch_size)
    pipeline.batch(*plan[0])
    _synchronize(device)
    started = time.perf_counter()
    done = 0
    while done < batches:
        for step in plan[: batches - done]:
            pipeline.batch(*step)
            done += 1
    _synchronize(device)
    return done * batch_size / (time.perf_counter() - started)
