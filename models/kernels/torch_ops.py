"""Fused CPU kernels for the torch backend (`torch_ops.cc`), loaded through ctypes.

SimAM's gate is per element, so eager PyTorch writes a dozen activation-sized tensors
each way, where the kernel reads each image's plane three times forward and twice
backward (4-5x faster on ResNet-20's shapes, 2-core AVX2). The channel gates (SE, ECA,
GCT, CBAM, SRM; models/pytorch/channel_gate.py) take their statistics in one read
(mean, maximum with its index, sum of squares, variance), the gate's gradient
sum(grad * x) in one more, and x's gradient grad * gate + x * A + B in one write
(ResNet-20's attentions at 91-94 % of vanilla's speed, from 87-91 %).

The library has a plain C ABI and no PyTorch headers: it is built like the MXNet
extension (same cache, trust checks, one build per instruction set; see
models/kernels/__init__.py) in about a second, and its OpenMP loops run in PyTorch's
own runtime where that is PyTorch's libgomp (the library is loaded after torch), with
torch.get_num_threads() threads in any case.

The kernels take float32 tensors on the CPU in channels-last layout, which the torch
backend's networks use; anything else (CUDA, other dtypes or layouts, torch.compile,
torch.func) takes the PyTorch formulas. Where the library cannot be built, or with
CHANNEL_ATTENTION_FUSED=0, so does everything: same numbers, slower; a warning says
why once.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from . import (
    FUSED_ENV,
    KernelStatus,
    LibrarySpec,
    build_library,
    library_isa,
    warn_unavailable,
)

if TYPE_CHECKING:
    import torch

SOURCE = Path(__file__).with_name('torch_ops.cc')
LIBRARY_NAME = 'libcab_torch_ops-{isa}.so'

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_status: KernelStatus | None = None
_used = False


def torch_library() -> LibrarySpec:
    # Without trapping math GCC if-converts the kernels' float comparisons and so
    # vectorises the exp (PyTorch itself is built with both flags); errno is never read.
    return LibrarySpec(
        name=LIBRARY_NAME,
        sources=(SOURCE,),
        flags=('-fno-trapping-math', '-fno-math-errno'),
    )


def _declare(library: ctypes.CDLL) -> ctypes.CDLL:
    pointer, count, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32
    signatures = {
        'simam_forward': [pointer] * 5 + [count] * 3 + [ctypes.c_double, threads],
        'simam_backward': [pointer] * 6 + [count] * 3 + [threads],
        'channel_statistics': [pointer] + [count] * 3 + [pointer] * 5 + [threads],
        'channel_dot': [pointer] * 2 + [count] * 3 + [pointer, threads],
        'channel_gate_input_gradient': [pointer] * 6 + [count] * 3 + [threads],
        'gated_residual': [pointer] * 4 + [count] * 3 + [ctypes.c_int32, threads],
        'relu_masked_channel_dot': [pointer] * 3 + [count] * 3 + [pointer] * 2 + [threads],
    }
    for name, arguments in signatures.items():
        function = getattr(library, name)
        function.argtypes, function.restype = arguments, None
    return library


def _load() -> tuple[ctypes.CDLL | None, KernelStatus]:
    if os.environ.get(FUSED_ENV, '1') == '0':
        return None, KernelStatus(False, f'turned off by {FUSED_ENV}=0')
    try:
        import torch  # noqa: F401  (its libgomp first: the library's OpenMP joins it)

        path = build_library(spec=torch_library())
        library = _declare(ctypes.CDLL(str(path)))
    except Exception as error:  # any failure leaves PyTorch's operators, which always work
        warn_unavailable('fused torch CPU kernels', error, 'PyTorch operators', 5)
        return None, KernelStatus(False, str(error))
    return library, KernelStatus(True, str(path))


def torch_kernel_status() -> KernelStatus:
    """(loaded, detail): whether the torch kernels are loaded, their path or why not."""
    global _library, _status
    if _status is not None:  # every attention call asks: no lock once it is known
        return _status
    with _lock:
        if _status is None:
            _library, _status = _load()
        return _status


def torch_kernel_isa() -> str | None:
    """The instruction set of the loaded torch kernels (None where PyTorch's run)."""
    loaded, detail = torch_kernel_status()
    return library_isa(detail, LIBRARY_NAME) if loaded else None


def fused_kernels_apply(x: torch.Tensor) -> bool:
    """Whether the kernels can take x: a non-empty 4-D float32 CPU tensor in channels-last
    layout, and the library loaded. A yes is counted (kernels_used)."""
    global _used
    import torch

    applies = (
        x.device.type == 'cpu'
        and x.layout == torch.strided
        and x.dtype == torch.float32
        and x.dim() == 4
        and x.numel() > 0
        and x.shape[2] * x.shape[3] < 2**31  # the kernels' plane index is 32-bit
        and x.is_contiguous(memory_format=torch.channels_last)
        and torch_kernel_status().loaded
    )
    _used = _used or applies
    return applies


def kernels_used(reset: bool = False) -> bool:
    """Whether an attention took the kernels since the last reset (a training session
    resets at its start and records the answer with its results)."""
    global _used
    used = _used
    if reset:
        _used = False
    return used


def fused_simam_applies(x: torch.Tensor) -> bool:
    """fused_kernels_apply, with planes of more than one element (a variance)."""
    return x.dim() == 4 and x.shape[2] * x.shape[3] > 1 and fused_kernels_apply(x)


def _loaded_library() -> ctypes.CDLL:
    """The library, loading it on first use; an error (not a null call) where it is not
    there: callers ask fused_kernels_apply first."""
    loaded, detail = torch_kernel_status()
    if not loaded or _library is None:
        raise RuntimeError(f'the fused torch CPU kernels are not loaded: {detail}')
    return _library


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def _threads() -> int:
    """The kernels' thread count: PyTorch's intra-op threads (the trial's cpus)."""
    import torch

    return torch.get_num_threads()


def _gradient_for_kernels(
    x: torch.Tensor, grad: torch.Tensor, *per_channel: torch.Tensor | None
) -> torch.Tensor:
    """grad as the kernels read it (float32, channels-last), once it and the (N, C)
    tensors are checked to fit x: the kernels read them at x's sizes, so anything else
    would be read out of bounds."""
    import torch

    images, channels = x.shape[:2]
    if grad.shape != x.shape or any(
        values is not None and values.shape != (images, channels) for values in per_channel
    ):
        shapes = [tuple(v.shape) for v in per_channel if v is not None]
        raise ValueError(
            f'fused kernel: gradient {tuple(grad.shape)} and per-channel {shapes} do not fit '
            f'x {tuple(x.shape)}'
        )
    return grad.to(torch.float32).contiguous(memory_format=torch.channels_last)


def channel_statistics(
    x: torch.Tensor, statistics: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The asked statistics of x per image and channel (N, C) (and the mean where the
    variance is asked, which its gradient needs) and, where 'max' is asked, the flat
    H x W index of each channel's first maximum (fused_kernels_apply(x))."""
    import torch

    images, channels, height, width = x.shape
    wanted = set(statistics) | ({'mean'} if 'variance' in statistics else set())
    outputs = {name: x.new_empty((images, channels)) for name in wanted}
    argmax = x.new_empty((images, channels), dtype=torch.int64) if 'max' in statistics else None
    _loaded_library().channel_statistics(
        x.data_ptr(),
        images,
        height * width,
        channels,
        _pointer(outputs.get('mean')),
        _pointer(outputs.get('max')),
        _pointer(argmax),
        _pointer(outputs.get('sum_of_squares')),
        _pointer(outputs.get('variance')),
        _threads(),
    )
    return outputs, argmax


def channel_dot(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum over H x W of grad * x, (N, C) (x as fused_kernels_apply takes it; grad in any
    layout)."""
    grad = _gradient_for_kernels(x, grad)
    images, channels, height, width = x.shape
    out = x.new_empty((images, channels))
    _loaded_library().channel_dot(
        grad.data_ptr(), x.data_ptr(), images, height * width, channels, out.data_ptr(), _threads()
    )
    return out


def relu_masked_channel_dot(
    grad: torch.Tensor, relu_out: torch.Tensor, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad through the ReLU that gave relu_out, the sum over H x W of that times x) in
    one pass: grad where relu_out > 0 else 0 (PyTorch's threshold_backward), and
    channel_dot of it with x. x as fused_kernels_apply takes it; the others of its shape
    in any layout."""
    import torch

    grad = _gradient_for_kernels(x, grad)
    relu_out = _gradient_for_kernels(x, relu_out)
    images, channels, height, width = x.shape
    masked = torch.empty_like(x)
    out = x.new_empty((images, channels))
    _loaded_library().relu_masked_channel_dot(
        grad.data_ptr(),
        relu_out.data_ptr(),
        x.data_ptr(),
        images,
        height * width,
        channels,
        masked.data_ptr(),
        out.data_ptr(),
        _threads(),
    )
    return masked, out


def channel_gate_input_gradient(
    grad: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    scale: torch.Tensor | None,
    offset: torch.Tensor | None,
) -> torch.Tensor:
    """grad * gate + x * scale + offset, the last three of shape (N, C) (None: zero)."""
    import torch

    def per_channel(values: torch.Tensor | None) -> torch.Tensor | None:
        return None if values is None else values.to(torch.float32).contiguous()

    grad = _gradient_for_kernels(x, grad, gate, scale, offset)
    return _x_gradient(
        'channel_gate_input_gradient',
        grad,
        x,
        per_channel(gate),
        per_channel(scale),
        per_channel(offset),
    )


def gated_residual(
    x: torch.Tensor, gate: torch.Tensor, shortcut: torch.Tensor, relu: bool
) -> torch.Tensor:
    """x * gate + shortcut, then ReLU where `relu`, in one pass: x as fused_kernels_apply
    takes it, gate (N, C), shortcut of x's shape (any layout; taken in channels-last)."""
    import torch

    shortcut = _gradient_for_kernels(x, shortcut, gate)
    gate = gate.to(torch.float32).contiguous()  # held: the kernel reads its memory
    images, channels, height, width = x.shape
    out = torch.empty_like(x)
    _loaded_library().gated_residual(
        x.data_ptr(),
        gate.data_ptr(),
        shortcut.data_ptr(),
        out.data_ptr(),
        images,
        height * width,
        channels,
        int(relu),
        _threads(),
    )
    return out


def _x_gradient(
    kernel: str, grad: torch.Tensor, x: torch.Tensor, *inputs: torch.Tensor | None
) -> torch.Tensor:
    """x's gradient written by `kernel`, which reads grad (as _gradient_for_kernels
    gives it), x and three more inputs (a null pointer for None): the two input-gradient
    kernels share this signature."""
    import torch

    images, channels, height, width = x.shape
    grad_x = torch.empty_like(x)
    getattr(_loaded_library(), kernel)(
        grad.data_ptr(),
        x.data_ptr(),
        *(_pointer(values) for values in inputs),
        grad_x.data_ptr(),
        images,
        height * width,
        channels,
        _threads(),
    )
    return grad_x


def simam_forward(
    x: torch.Tensor, e_lambda: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(output, weight, mean, shifted variance) of SimAM on x (fused_simam_applies(x)):
    weight = sigmoid((x - mean)^2 / (4 shifted) + 1/2), shifted = the variance over
    H x W - 1 plus lambda; mean and shifted of shape (N, C)."""
    import torch

    images, channels, height, width = x.shape
    out, weight = torch.empty_like(x), torch.empty_like(x)
    mean = x.new_empty((images, channels))
    shifted = x.new_empty((images, channels))
    _loaded_library().simam_forward(
        x.data_ptr(),
        out.data_ptr(),
        weight.data_ptr(),
        mean.data_ptr(),
        shifted.data_ptr(),
        images,
        height * width,
        channels,
        float(e_lambda),
        _threads(),
    )
    return out, weight, mean, shifted


def simam_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    shifted: torch.Tensor,
) -> torch.Tensor:
    """x's gradient given the output's (any layout; taken in channels-last)."""

    grad = _gradient_for_kernels(x, grad, mean, shifted)
    return _x_gradient('simam_backward', grad, x, weight, mean, shifted)
