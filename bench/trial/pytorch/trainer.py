"""The PyTorch trial backend: the Gluon backend's networks and recipe with MXNet's
semantics (models/pytorch, bench/trial/pytorch/optim.py) on one torch device.

`open_session` gives the session that `bench.trial.loop.run_epochs` drives; the
loop owns the schedule, the batches and their augmentation (the same as Gluon's for
the same seed), the metrics and the checkpoint state.

Fast by construction: the split lives on the device as uint8 and each batch is one
gather there; channels-last memory; BatchNorm in one pass and Adam in one fused kernel
(models/pytorch, optim.py); `torch.compile` as the recipe's `compile`: inductor on the
CPU, and on a GPU with CUDA graphs (mode 'reduce-overhead': a small network's step is
bound by kernel launches, which a graph replays as one), falling back to eager with a
message where compiling or capturing fails in the first steps or in any evaluation (the
failed step retried from BatchNorm's statistics as they were), and saying so, in a
message and the trial's record, where inductor skips CUDA graphs; mixed precision as the
recipe's `precision` (bfloat16 autocast, or float16 autocast with a gradient scaler),
refused on the CPU.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from bench.trial.batches import eval_batches
from bench.trial.host_memory import keep_freed_memory_for_reuse
from bench.trial.loop import DeviceError, UnsupportedRecipe, run_epochs
from bench.trial.pytorch.augment import DeviceImages
from bench.trial.pytorch.optim import make_optimizer, set_learning_rate
from bench.trial.threads import available_cpus
from models.kernels.torch_ops import kernels_used, torch_kernel_isa
from models.pytorch import get_model

if TYPE_CHECKING:
    from bench.trial.data import Dataset
    from bench.trial.recipe import Recipe, TrialSpec

# The checkpoint file of this backend (beside the loop's state.json).
CHECKPOINT_FILE = 'torch.pt'
AUTOCAST_DTYPES = {'amp_bfloat16': torch.bfloat16, 'amp_float16': torch.float16}
# torch.compile's mode per device type: CUDA graphs on GPUs, inductor's default elsewhere.
COMPILE_MODES = {'cuda': 'reduce-overhead'}


# Training steps a compiled network must get through before compiling counts as proven
# (until then a failure falls back to eager): CUDA graph trees run a function's first
# call as a warm-up, record its graph on the second and replay it from the third, and
# capturing can fail at the second. (Evaluations are guarded every time: they change no
# state, and their graphs are not necessarily captured in the first.)
STEPS_TO_PROVE = {'reduce-overhead': 3, 'default': 1}
# Where inductor says why it skipped CUDA graphs (a warning that it also counts).
CUDAGRAPH_LOGGER = 'torch._inductor.cudagraph_utils'


def compile_mode(device: str | torch.device) -> str:
    return COMPILE_MODES.get(torch.device(device).type, 'default')


def cudagraph_skips() -> int:
    """How many compiled graphs inductor has run without CUDA graphs in this process."""
    from torch._dynamo.utils import counters

    return counters['inductor']['cudagraph_skips']


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def cudagraph_skip_reasons() -> Iterator[list[str]]:
    """The first lines of inductor's "skipping cudagraphs due to ..." warnings inside."""
    handler = _Messages()
    logger = logging.getLogger(CUDAGRAPH_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        handler.messages[:] = [_first_line(message) for message in handler.messages]


def _first_line(message: str) -> str:
    """A message's first line (at most 300 characters), without the dangling "Found
    from:" that announces a stack (inductor's skip warnings)."""
    line = (message.splitlines() or [''])[0]
    return re.sub(r'[.\s]*Found from:?\s*$', '', line)[:300]


# Versions of one code object that dynamo compiles before it runs the code eagerly for
# good (torch._dynamo.config.recompile_limit's default): a network's training step, its
# evaluation and a last short batch take a few.
RECOMPILES_PER_NETWORK = 8


def compile_network(net: torch.nn.Module, mode: str | None = None) -> Callable[..., Any]:
    """torch.compile(net), with room for this network's own versions of the shared
    `forward` code while it lives: every network compiled in one process (the benchmark's
    rows, trials run one after another) is another version of the same code object, and
    past dynamo's limit the rest would silently train eagerly while recorded as
    compiled."""
    _change_recompile_limits(RECOMPILES_PER_NETWORK)
    weakref.finalize(net, _change_recompile_limits, -RECOMPILES_PER_NETWORK)
    return torch.compile(net, mode=mode)


def _change_recompile_limits(by: int) -> None:
    import torch._dynamo

    config = torch._dynamo.config
    # Named *_cache_size_limit before PyTorch 2.7 (still accepted as aliases after).
    for names in (
        ('recompile_limit', 'cache_size_limit'),
        ('accumulated_recompile_limit', 'accumulated_cache_size_limit'),
    ):
        name = next((name for name in names if hasattr(config, name)), None)
        if name is not None:
            setattr(config, name, getattr(config, name) + by)


def trial_devices(gpus_per_trial: float, gpu_ids: list[str]) -> list[torch.device]:
    """The device of a Ray trial: cuda:0 when Ray assigned a GPU (Ray exports it as
    CUDA_VISIBLE_DEVICES, so a fractional share too sees its card as cuda:0), else the CPU."""
    if not gpus_per_trial or not gpu_ids:
        return [torch.device('cpu')]
    if len(gpu_ids) > 1:
        raise DeviceError(
            f'the torch backend trains a trial on one GPU, but Ray assigned '
            f'{len(gpu_ids)}; set resources.gpus_per_trial to 1 or less'
        )
    if gpus_per_trial < 1:
        # Within its share of the card's memory, beside the trials that share it.
        torch.cuda.set_per_process_memory_fraction(float(gpus_per_trial), 0)
    return [torch.device('cuda', 0)]


def device_for(num_gpus: int | None = None) -> torch.device:
    """cuda:0 when a GPU is visible and num_gpus is not 0, else the CPU (bench.train)."""
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = min(available, 1) if num_gpus is None else int(num_gpus)
    if wanted > 1:
        raise DeviceError(f'the torch backend trains on one GPU; got --num-gpus {wanted}')
    if wanted > available:
        raise DeviceError(
            f'{wanted} GPU asked for but {available} visible to this process '
            f'(PyTorch {torch.__version__}, CUDA '
            f'{torch.version.cuda or "not built in"})'
        )
    return torch.device('cuda', 0) if wanted else torch.device('cpu')


def describe(device: torch.device) -> str:
    if device.type == 'cuda':
        return f'{device} ({torch.cuda.get_device_name(device)})'
    return str(device)


def check_precision(recipe: Recipe, device: torch.device) -> None:
    """Refuse mixed precision off the GPU, and bfloat16 on a GPU without it, before
    anything is built."""
    if recipe.precision == 'float32':
        return
    if device.type != 'cuda':
        raise UnsupportedRecipe(
            f'precision {recipe.precision} needs a GPU, but this trial '
            f'runs on {device}: mixed precision is refused on CPUs. Use '
            'precision float32, or train on a GPU.'
        )
    if recipe.precision == 'amp_bfloat16' and not torch.cuda.is_bf16_supported():
        raise UnsupportedRecipe(
            f'precision amp_bfloat16 needs a GPU with bfloat16 (compute '
            f'capability 8.0 or newer); {describe(device)} has none. '
            'Use amp_float16 or float32.'
        )


def use_trial_threads() -> int:
    """PyTorch's intra-op threads = the trial's OMP_NUM_THREADS (cpus_per_trial), else
    every core this process may use."""
    threads = int(os.environ.get('OMP_NUM_THREADS') or available_cpus())
    torch.set_num_threads(threads)
    return threads


class TorchSession:
    """One trial's network, optimizer and data on one torch device."""

    def __init__(self, spec: TrialSpec, data: Dataset, device: str | torch.device) -> None:
        device = torch.device(device)
        self.recipe, self.device = spec.recipe, device
        check_precision(self.recipe, device)
        self.threads = use_trial_threads()
        kernels_used(reset=True)  # describe() says whether this session's attentions took them
        if device.type == 'cpu':
            keep_freed_memory_for_reuse()
        if device.type == 'cuda':
            # The recipe's tf32 (on: MXNet's default) for cuDNN and cuBLAS alike;
            # PyTorch's own default leaves matrix products in full float32.
            torch.backends.cuda.matmul.allow_tf32 = self.recipe.tf32
            torch.backends.cudnn.allow_tf32 = self.recipe.tf32
        net = get_model(
            spec.model,
            spec.attention,
            classes=data.classes,
            attention_kwargs=spec.attention_kwargs,
            seed=spec.seed,
        )
        # Channels-last suits oneDNN's and cuDNN's convolutions alike: ResNet-20 trained
        # 1.3x faster on 2 CPU cores with it (docs/backends.md).
        net = net.to(device, memory_format=torch.channels_last)
        self.net = net  # what checkpoints hold
        self.compile_mode = compile_mode(device) if self.recipe.compile else None
        self.forward = compile_network(net, self.compile_mode) if self.compile_mode else net
        # Where and why inductor ran some of this session's graphs without CUDA graphs,
        # if it did. (Seen when the graph is compiled: a second session of the same
        # network in one process reuses the first's graphs and cannot see it again.)
        self.cudagraphs_skipped: tuple[str, str] | None = None
        # Compiled training steps taken (until STEPS_TO_PROVE of them have run, a failure
        # falls back to eager), and where compiling failed (the record says both).
        self._compiled_steps = 0
        self._compiling_failed_in: str | None = None
        self.optimizer = make_optimizer(net, self.recipe)
        self.autocast_dtype = AUTOCAST_DTYPES.get(self.recipe.precision)
        self.scaler = (
            torch.amp.GradScaler('cuda') if self.recipe.precision == 'amp_float16' else None
        )
        self.train_images = DeviceImages(
            data.train_images, data.train_labels, device, channels_last=True
        )
        self.test_images = DeviceImages(
            data.test_images, data.test_labels, device, channels_last=True
        )

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def set_learning_rate(self, lr: float) -> None:
        set_learning_rate(self.optimizer, lr)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One update on (x, y); the batch's summed loss and correct count, on the device."""
        if not self.compile_mode:
            return self._train_step(x, y)
        proven = self._compiled_steps >= STEPS_TO_PROVE[self.compile_mode]
        # A step that fails after its forward pass has moved BatchNorm's running
        # statistics: its eager retry starts from them as they were.
        buffers = [] if proven else [buffer.clone() for buffer in self.net.buffers()]
        try:
            with self._watching_cudagraphs('training'):
                result = self._train_step(x, y)
        except Exception as error:  # compiling or capturing: any failure, one message
            if proven:
                raise
            self._fall_back_to_eager(error, 'a training step')
            with torch.no_grad():
                for buffer, saved in zip(self.net.buffers(), buffers, strict=True):
                    buffer.copy_(saved)
            return self._train_step(x, y)
        self._compiled_steps += 1
        return result

    def _fall_back_to_eager(self, error: Exception, where: str) -> None:
        cause = _first_line(str(error))
        print(
            f'torch.compile (mode {self.compile_mode}) failed on {self.device} in {where}: '
            f'{type(error).__name__}: {cause}; this trial trains without compiling '
            '(same network, slower)',
            flush=True,
        )
        # The compiled graphs (and on a GPU their memory pools) are left as they are:
        # CUDA graph trees are shared by every compiled network in the process, and
        # freeing them would break the others' (the benchmark holds several at once).
        self.forward = self.net
        self.compile_mode = None
        self.cudagraphs_skipped = None
        self._compiling_failed_in = where

    @contextlib.contextmanager
    def _watching_cudagraphs(self, where: str) -> Iterator[None]:
        """Says once, and records, that inductor skipped CUDA graphs inside (`where`:
        training or evaluation): it then runs that graph's kernels without them (correct,
        but launch-bound again on a GPU) and says why only in a warning of its own."""
        if self.compile_mode != 'reduce-overhead' or self.cudagraphs_skipped:
            yield
            return
        skips_before = cudagraph_skips()
        with cudagraph_skip_reasons() as reasons:
            yield
        if cudagraph_skips() == skips_before:
            return
        reason = reasons[0] if reasons else 'inductor gave no reason'
        self.cudagraphs_skipped = (where, reason)
        print(
            f'CUDA graphs skipped on {self.device} in {where}: {reason}; inductor runs '
            'that graph without them (slower on small networks)',
            flush=True,
        )

    def _train_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.compile_mode == 'reduce-overhead':
            # A new iteration of the CUDA graphs: last step's outputs may be overwritten.
            torch.compiler.cudagraph_mark_step_begin()
        with self._autocast():
            out = self.forward(x)
        losses = F.cross_entropy(out.float(), y, reduction='none')
        loss_sum = losses.sum()
        # The gradient of the batch's mean loss: MXNet's Trainer.step(batch) divides the
        # summed loss's gradient by the batch size.
        mean = loss_sum / len(y)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(mean).backward()
            self.scaler.step(self.optimizer)  # skips a step whose gradients overflowed
            self.scaler.update()
        else:
            mean.backward()
            self.optimizer.step()
        return loss_sum.detach(), (out.argmax(dim=1) == y).sum()

    def train_batch(
        self, indices: np.ndarray, rows: np.ndarray, cols: np.ndarray, flips: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_step(*self.train_images.batch(indices, rows, cols, flips))

    def values(self, scalars: Sequence[torch.Tensor]) -> np.ndarray:
        """Host values of device scalars (waits for them)."""
        return torch.stack(scalars).double().cpu().numpy()

    def evaluate(self) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) on every test image, unaugmented, in inference mode."""
        if not self.compile_mode:
            return self._evaluate()
        # Inference compiles and captures graphs of its own, not in the first evaluation
        # alone; evaluating changes no state, so any failure can fall back.
        try:
            with self._watching_cudagraphs('evaluation'):
                return self._evaluate()
        except Exception as error:
            self.net.train()
            self._fall_back_to_eager(error, 'an evaluation')
            return self._evaluate()

    def _evaluate(self) -> tuple[float, float]:
        self.net.eval()
        loss_total = torch.zeros((), device=self.device)
        correct_total = torch.zeros((), device=self.device, dtype=torch.int64)
        batch_size = self.recipe.batch_size
        with torch.inference_mode(), self._autocast():
            for indices in eval_batches(self.test_images.count, batch_size):
                count = len(indices)
                if self.compile_mode:
                    # One batch shape, so one compiled (and captured) inference graph:
                    # the short last batch is filled up with copies of its last image,
                    # whose outputs are dropped (in inference each image's output is its
                    # own).
                    indices = np.pad(indices, (0, batch_size - count), mode='edge')
                if self.compile_mode == 'reduce-overhead':
                    torch.compiler.cudagraph_mark_step_begin()
                x, y = self.test_images.plain_batch(indices)
                out, y = self.forward(x).float()[:count], y[:count]
                loss_total += F.cross_entropy(out, y, reduction='sum')
                correct_total += (out.argmax(dim=1) == y).sum()
        self.net.train()
        count = self.test_images.count
        return float(loss_total) / count, float(correct_total) / count

    def save_weights(self, folder: Path) -> None:
        torch.save(
            {
                'model': self.net.state_dict(),
                'optimizer': self.optimizer.state_dict(),
                'scaler': self.scaler.state_dict() if self.scaler is not None else None,
            },
            folder / CHECKPOINT_FILE,
        )

    def load_weights(self, folder: Path) -> None:
        # map_location: a checkpoint taken on a GPU resumes on the CPU and vice versa.
        saved = torch.load(folder / CHECKPOINT_FILE, map_location=self.device, weights_only=True)
        self.net.load_state_dict(saved['model'])
        self.optimizer.load_state_dict(saved['optimizer'])
        if self.scaler is not None and saved.get('scaler'):
            self.scaler.load_state_dict(saved['scaler'])

    def _how_compiled(self) -> str:
        if self.cudagraphs_skipped:
            where, _reason = self.cudagraphs_skipped
            return f' compiled ({self.compile_mode}, CUDA graphs skipped in {where})'
        if self.compile_mode:
            return f' compiled ({self.compile_mode})'
        if not self.recipe.compile:
            return ''
        if self._compiled_steps:
            return (
                f' compiled for {self._compiled_steps} steps, then eager (compiling failed '
                f'in {self._compiling_failed_in})'
            )
        return ' eager (compiling failed)'

    def describe(self) -> dict[str, str | int | None]:
        """Where and with what the trial ran, recorded with its results."""
        kernels = f'torch {torch.__version__}' + self._how_compiled()
        found = {'devices': describe(self.device), 'kernels': kernels}
        if kernels_used():
            found['kernels'] += ' + fused attention CPU kernels'
            found['kernel_isa'] = torch_kernel_isa()
        if self.device.type == 'cuda':
            capability = torch.cuda.get_device_capability(self.device)
            found.update(
                cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(),
                tf32=('on' if self.recipe.tf32 and capability >= (8, 0) else 'off'),
            )
        return found


def open_session(spec: TrialSpec, data: Dataset, devices: list[torch.device]) -> TorchSession:
    return TorchSession(spec, data, devices[0])


def train(
    spec: TrialSpec,
    data: Dataset,
    checkpoint_dir: str | Path | None = None,
    resume_from: Path | None = None,
    device: str | torch.device | None = None,
    on_epoch: Callable[[dict, Path | None], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Train `spec` on `data` with PyTorch; the per-epoch metrics (bench.trial.loop.run_epochs's
    arguments); `device` defaults to cuda:0 where a GPU is visible, else the CPU."""
    session = TorchSession(spec, data, device or device_for())
    return run_epochs(
        session,
        spec,
        data,
        checkpoint_dir=checkpoint_dir,
        resume_from=resume_from,
        on_epoch=on_epoch,
        on_batch=on_batch,
    )
