"""The trial seam: the epochs of one trial, whatever framework trains it.

A backend (`bench.trial.gluon.trainer` for MXNet Gluon, the reference;
`bench.trial.pytorch.trainer` for PyTorch) opens a session for a spec, its data and its
devices. This loop drives the session through one small
interface and owns everything that must not differ between backends: the
learning-rate schedule, the batches and augmentation of each epoch (drawn from
the spec's seed), the metrics of an epoch, divergence, and the checkpoint's
state (epoch, history, RNG state).

A session is a `Session` (below); a backend's module is a `Backend`.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from bench.errors import DOCTOR_HINT, FAILED, BenchError
from bench.trial.batches import epoch_plan
from bench.trial.checkpoint import (
    CheckpointMismatch,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

if TYPE_CHECKING:
    from bench.trial.data import Dataset
    from bench.trial.recipe import TrialSpec

# How many batches may pass between checks for a non-finite loss: each check waits
# for the device, so checking every batch would stall a GPU's queue.
DIVERGENCE_CHECK_EVERY = 20
# Backend name -> the module that opens its sessions (imported only when used).
BACKENDS = {'gluon': 'bench.trial.gluon.trainer', 'torch': 'bench.trial.pytorch.trainer'}
# Backend name -> (the framework's module, how to install it).
BACKEND_FRAMEWORKS = {
    'gluon': (
        'mxnet',
        "pip install -c constraints.txt -e '.[cpu]' ('.[gpu]' for MXNet's CUDA build)",
    ),
    'torch': (
        'torch',
        "pip install -c constraints-torch.txt -e '.[torch]' (beside MXNet: -c constraints.txt)",
    ),
}


@runtime_checkable
class Session(Protocol):
    """One trial's network, optimizer and data on its devices, as the loop drives it.

    Scalars are the framework's device values (an MXNet NDArray, a torch Tensor): the
    loop never waits for one except through `values`, since waiting would stall a
    GPU's queue."""

    def set_learning_rate(self, lr: float) -> None:
        """The learning rate of the next steps."""

    def train_batch(
        self, indices: np.ndarray, rows: np.ndarray, cols: np.ndarray, flips: np.ndarray
    ) -> tuple[Any, Any]:
        """One step on the training images `indices`, cropped at (`rows`, `cols`) and
        flipped where `flips`: the batch's summed loss and correct count, as scalars."""

    def values(self, scalars: Sequence[Any]) -> np.ndarray:
        """The host values of scalars of train_batch (waits for them)."""

    def evaluate(self) -> tuple[float, float]:
        """(mean loss, accuracy) on the test split."""

    def save_weights(self, folder: Path) -> None:
        """Write the weights and the optimizer's state into `folder`, in the framework's
        own files."""

    def load_weights(self, folder: Path) -> None:
        """Read back what save_weights wrote into `folder`."""

    def describe(self) -> dict[str, Any]:
        """Where and how the trial ran ({'devices': ..., 'kernels': ...}, library versions
        on GPUs), recorded with its results."""


class Backend(Protocol):
    """A backend's module (BACKENDS): the devices of a scheduled trial and its session."""

    def trial_devices(self, gpus_per_trial: float, gpu_ids: list[str]) -> list[Any]:
        """The devices of a trial that Ray gave `gpu_ids` (its share: gpus_per_trial)."""

    def open_session(self, spec: TrialSpec, data: Dataset, devices: list[Any]) -> Session:
        """The session of `spec` on `data` and `devices`."""


class TrainingDiverged(BenchError, RuntimeError):
    """The loss became NaN or infinite."""

    exit_code = FAILED

    def __init__(self, epoch: int, batch: int | None, value: float) -> None:
        self.epoch, self.batch, self.value = epoch, batch, value
        where = f'batch {batch + 1}' if batch is not None else 'validation'
        super().__init__(
            f'training diverged: loss was {value} at epoch {epoch + 1}, {where}; '
            'lower the learning rate or check the data'
        )


def missing_framework(name: str) -> str | None:
    """Why backend `name` cannot run in this environment (None when it can), found without
    importing the framework."""
    module, install = BACKEND_FRAMEWORKS[name]
    if importlib.util.find_spec(module) is not None:
        return None
    return (
        f'backend {name} needs {module}, which is not installed here: {install}, or '
        '`make install`, whose default installs both backends'
    )


class DeviceError(BenchError, RuntimeError):
    """The trial's device cannot be used as asked; the message says what to change."""


class UnsupportedRecipe(BenchError, ValueError):
    """A recipe this trial cannot train here (mixed precision off the GPU, a batch larger
    than the training set); the message says what to change."""


class BackendUnavailable(BenchError, RuntimeError):
    """The backend's framework is installed but cannot be loaded here; the message says why
    and what to do."""

    hint = DOCTOR_HINT


def get_backend(name: str = 'gluon') -> Backend:
    """The module of backend `name`: it has `trial_devices(gpus_per_trial, gpu_ids)` and
    `open_session(spec, data, devices)`. BackendUnavailable where its framework fails to
    load (MXNet's GPU build on a machine without the NVIDIA driver dies on libcuda.so.1)."""
    if name not in BACKENDS:
        raise KeyError(f'unknown trial backend {name!r}; valid: {", ".join(BACKENDS)}')
    try:
        return importlib.import_module(BACKENDS[name])
    except OSError as error:
        module, _ = BACKEND_FRAMEWORKS[name]
        hint = (
            ' This is the GPU build on a machine without the NVIDIA driver: install the '
            'driver, or on a CPU-only machine the CPU build (pip uninstall mxnet-cu112, '
            "then pip install -c constraints.txt -e '.[cpu]')"
            if 'libcuda' in str(error)
            else ''
        )
        raise BackendUnavailable(
            f'backend {name}: {module} is installed but cannot be loaded here ({error}).{hint}'
        ) from None


def train_epoch(
    session: Session,
    plan: list[tuple[np.ndarray, ...]],
    epoch: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> tuple[float, float, int]:
    """One pass over `plan` through `session.train_batch`; returns (mean loss, accuracy,
    images seen). The losses since the last look are brought to the host every
    DIVERGENCE_CHECK_EVERY batches and at the end; a non-finite one stops the trial
    at its batch."""
    loss_sums, correct_sums = [], []
    seen = checked = 0
    for batch_index, (indices, rows, cols, flips) in enumerate(plan):
        loss_sum, correct = session.train_batch(indices, rows, cols, flips)
        loss_sums.append(loss_sum)
        correct_sums.append(correct)
        seen += len(indices)
        if (batch_index + 1) % DIVERGENCE_CHECK_EVERY == 0 or batch_index + 1 == len(plan):
            values = np.asarray(session.values(loss_sums[checked:]), dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise TrainingDiverged(epoch, checked + int(bad[0]), float(values[bad[0]]))
            checked = len(loss_sums)
        if on_batch is not None:
            on_batch(batch_index + 1, len(plan))
    if not seen:
        return float('nan'), float('nan'), 0
    return (
        float(np.sum(session.values(loss_sums), dtype=np.float64)) / seen,
        float(np.sum(session.values(correct_sums), dtype=np.float64)) / seen,
        seen,
    )


def run_epochs(
    session: Session,
    spec: TrialSpec,
    data: Dataset,
    checkpoint_dir: str | Path | None = None,
    resume_from: Path | None = None,
    on_epoch: Callable[[dict, Path | None], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Train `session` through the spec's remaining epochs; the per-epoch metrics.

    checkpoint_dir: a checkpoint is written there after every epoch, and training
        resumes from the newest one found there.
    resume_from: a checkpoint folder to resume from instead (e.g. Ray Tune's).
    on_epoch(metrics, checkpoint_path): called after every epoch and its checkpoint.
    on_batch(done, total): called after every training batch (progress bars).
    """
    recipe = spec.recipe
    if len(data.train_images) < recipe.batch_size:
        raise UnsupportedRecipe(
            f'batch_size {recipe.batch_size} is larger than the '
            f'{len(data.train_images)} training images'
        )
    rng = np.random.default_rng(spec.seed)
    history = []
    spec_dict = spec.to_dict()

    resume_from = resume_from or (latest_checkpoint(checkpoint_dir) if checkpoint_dir else None)
    if resume_from is not None:
        state = load_checkpoint(
            resume_from,
            session.load_weights,
            expected_spec=spec_dict,
            expected_data=data.identity.to_dict(),
        )
        rng.bit_generator.state = state['rng']
        history = state['history']
        if len(history) > recipe.epochs:
            # A run is extended from its checkpoint, never shortened: its history would
            # hold epochs its recipe does not.
            raise CheckpointMismatch(
                f'the checkpoint in {resume_from} holds {len(history)} epochs, more than '
                f'the {recipe.epochs} this trial trains; ask for {len(history)} or more, or '
                'point the trial at its own folder'
            )

    for epoch in range(len(history), recipe.epochs):
        started = time.perf_counter()
        lr = recipe.lr_at(epoch)
        session.set_learning_rate(lr)
        plan = epoch_plan(
            rng,
            len(data.train_images),
            recipe.batch_size,
            random_crop=recipe.random_crop,
            random_flip=recipe.random_flip,
        )
        train_loss, train_acc, seen = train_epoch(session, plan, epoch, on_batch)
        train_seconds = time.perf_counter() - started
        val_loss, val_acc = session.evaluate()
        if not math.isfinite(val_loss):
            raise TrainingDiverged(epoch, None, val_loss)
        metrics = {
            'epoch': epoch + 1,
            'lr': lr,
            'train_loss': train_loss,
            'train_acc': train_acc,
            'val_loss': val_loss,
            'val_acc': val_acc,
            'epoch_seconds': time.perf_counter() - started,
            'train_seconds': train_seconds,
            'images_per_second': seen / train_seconds,
        }
        history.append(metrics)
        checkpoint_path = None
        if checkpoint_dir is not None:
            checkpoint_path = save_checkpoint(
                checkpoint_dir,
                session.save_weights,
                {
                    'epoch': epoch + 1,
                    'spec': spec_dict,
                    'history': history,
                    'rng': rng.bit_generator.state,
                    'data': data.identity.to_dict(),
                },
            )
        if on_epoch is not None:
            on_epoch(metrics, checkpoint_path)
    return history
