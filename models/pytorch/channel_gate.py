"""x times a per-channel gate computed from per-channel statistics of x (SE, ECA, GCT,
CBAM, SRM), differentiated with two passes over the activation instead of eager
autograd's six or more.

Eager PyTorch differentiates `x * gate(mean(x))` operation by operation: the product's
backward writes `grad * gate` and `grad * x`, the statistic's backward writes a
broadcast (or `2 x g`) copy, and autograd adds the gradients of x's two uses: on the
small activations of a CIFAR ResNet these activation-sized passes, not the gate's tiny
network, are an attention's cost. Each statistic's gradient is a per-channel affine
function of x (mean: g / HW; sum of squares: 2 g x; unbiased variance:
2 g (x - mean) / (HW - 1)) or a scatter to one element (max), so the whole gradient is

    grad_x = grad * gate + x * A + B            (A, B of shape (N, C, 1, 1))

after one reduction, sum(grad * x) over H x W, which is the gate's gradient. The gate's
own network (a few (N, C)-sized operations with the module's parameters) is recorded
by autograd as usual and differentiated with torch.autograd.grad inside the backward.

On the CPU in float32 channels-last (the backend's layout) the statistics, the gate's
gradient and x's gradient are fused kernels (models/kernels/torch_ops.py): one read for
the statistics, one for sum(grad * x), one write for grad_x.

Under torch.compile the plain differentiable formula runs instead (inductor fuses it
itself), under torch.func's transforms and forward-mode AD (which the custom function
does not define), and within `autograd_formulas()`; where x needs no gradient
(evaluation), the statistics and the gate without the custom function.

A channel's tied maxima: the whole gradient goes to the first (PyTorch's and MXNet's
max pooling do so); autograd's amax splits it evenly and MXNet's max reduction, which
the Gluon CBAM uses, gives each the whole. Ties of a float32 activation's maximum have
measure zero; a constant channel (all tied) is where they differ.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.nn import functional as F

from models.kernels import torch_ops

Statistic = Literal['mean', 'max', 'sum_of_squares', 'variance']
STATISTICS: tuple[Statistic, ...] = ('mean', 'max', 'sum_of_squares', 'variance')
# (statistic tensors of shape (N, C), in the order asked) -> gate of shape (N, C)
GateOf = Callable[..., torch.Tensor]

# The H x W axes that the statistics reduce (NCHW order, whatever the memory format).
SPATIAL = (2, 3)


def channel_statistics(
    x: torch.Tensor, statistics: Sequence[Statistic]
) -> tuple[dict[Statistic, torch.Tensor], torch.Tensor | None]:
    """Each asked statistic of x per sample and channel (N, C), and the flat H x W index
    of each channel's maximum where 'max' is asked (its gradient's one element).

    Formulas chosen by their speed on channels-last activations (2-core AVX2, ResNet-20's
    shapes): torch.var_mean and torch.linalg.vector_norm reduce the strided H x W axes
    4-10x slower than a mean of an elementwise product does, and amax slower than a
    max pool over the whole plane, which also gives the indices. Where the fused CPU
    kernels take x (float32 channels-last), all in one read (models/kernels/torch_ops.py)."""
    _check_statistics(statistics)
    # Alone, PyTorch's mean reduces an activation in half the kernel's time; inside a
    # training step the kernel's single read without a temporary was as fast or faster
    # for every statistic set (GCT's sum of squares: 92-96 % of vanilla against 83 %).
    if torch_ops.fused_kernels_apply(x):
        return torch_ops.channel_statistics(x, tuple(statistics))
    values: dict[Statistic, torch.Tensor] = {}
    argmax = None
    if 'mean' in statistics or 'variance' in statistics:
        values['mean'] = x.mean(dim=SPATIAL)
    if 'variance' in statistics:
        deviations = x - values['mean'][:, :, None, None]
        count = x.shape[2] * x.shape[3]  # above 1, as the Gluon module's moments need
        values['variance'] = deviations.square_().sum(dim=SPATIAL) / (count - 1)
    if 'max' in statistics:
        maximum, index = F.max_pool2d(x, x.shape[2:], return_indices=True)
        values['max'], argmax = maximum.flatten(1), index.flatten(1)
    if 'sum_of_squares' in statistics:
        values['sum_of_squares'] = (x * x).sum(dim=SPATIAL)
    return values, argmax


def _check_statistics(statistics: Sequence[str]) -> None:
    unknown = [statistic for statistic in statistics if statistic not in STATISTICS]
    if unknown or len(set(statistics)) != len(statistics):
        raise ValueError(
            f'channel statistics {tuple(statistics)!r}: each at most once, of {STATISTICS}'
        )


def _plain_statistics(x: torch.Tensor, statistics: Sequence[Statistic]) -> list[torch.Tensor]:
    """The statistics as differentiable PyTorch operations (under torch.compile and
    autograd_formulas())."""
    plain = {
        'mean': lambda: x.mean(dim=SPATIAL),
        'max': lambda: x.amax(dim=SPATIAL),
        'sum_of_squares': lambda: x.square().sum(dim=SPATIAL),
        'variance': lambda: torch.var(x, dim=SPATIAL, correction=1),
    }
    _check_statistics(statistics)
    return [plain[statistic]() for statistic in statistics]


class _ChannelGate(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        shortcut: torch.Tensor | None,
        relu: bool,
        gate_of: GateOf,
        statistics: tuple[Statistic, ...],
        *parameters: torch.Tensor,
    ) -> torch.Tensor:
        values, argmax = channel_statistics(x, statistics)
        leaves = tuple(values[statistic].detach().requires_grad_() for statistic in statistics)
        with torch.enable_grad():
            gate = gate_of(*leaves)
        _check_gate_inputs(gate, leaves, parameters, gate_of)
        out, ctx.kernel_end = _gated_end(x, gate.detach(), shortcut, relu)
        # ReLU's gradient reads its output, as PyTorch's own ReLU does.
        ctx.save_for_backward(x, out if relu else None)
        ctx.gate, ctx.leaves, ctx.parameters = gate, leaves, parameters
        ctx.statistics, ctx.argmax = statistics, argmax
        ctx.mean = values['mean'] if 'variance' in statistics else None
        ctx.relu, ctx.has_shortcut = relu, shortcut is not None
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        refuse_second_derivative('a channel-attention gate (models/pytorch/channel_gate.py)')
        x, out = ctx.saved_tensors
        gate = ctx.gate
        fused = torch_ops.fused_kernels_apply(x)
        if ctx.relu and ctx.kernel_end:  # the ReLU's gradient and the gate's in one pass
            grad, grad_gate = torch_ops.relu_masked_channel_dot(grad, out, x)
        else:
            if ctx.relu:
                grad = torch.ops.aten.threshold_backward(grad, out, 0)
            if fused:
                grad_gate = torch_ops.channel_dot(grad, x)
            else:
                grad_gate = (grad * x).sum(dim=SPATIAL, dtype=gate.dtype)
        grad_gate = grad_gate.to(gate.dtype)
        grad_shortcut = grad if ctx.has_shortcut and ctx.needs_input_grad[1] else None
        trained = [p for p in ctx.parameters if p.requires_grad]
        wanted = [*ctx.leaves, *trained]
        # Retained: the outer graph may be differentiated again (retain_graph=True), and
        # the gate's network holds only (N, C)-sized tensors.
        found = torch.autograd.grad(gate, wanted, grad_gate, retain_graph=True, allow_unused=True)
        statistic_grads = dict(zip(ctx.statistics, found[: len(ctx.leaves)], strict=True))
        trained_grads = iter(found[len(ctx.leaves) :])
        parameter_grads = [next(trained_grads) if p.requires_grad else None for p in ctx.parameters]

        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _input_gradient(ctx, x, grad, gate.detach(), statistic_grads, fused)
        return (grad_x, grad_shortcut, None, None, None, *parameter_grads)


# owner (the module of a bound method, else the function) -> its gate functions checked
_CHECKED_GATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_gate_inputs(
    gate: torch.Tensor,
    leaves: tuple[torch.Tensor, ...],
    parameters: tuple[torch.Tensor, ...],
    gate_of: GateOf,
) -> None:
    """The gate's network may use only the statistics and the module's parameters: the
    backward differentiates toward those alone, so a gradient to any other tensor (a
    closure's weight, x itself) would be dropped without a word. Checked on a gate
    function's first call (its graph is a few nodes; later calls build the same)."""
    owner = getattr(gate_of, '__self__', gate_of)
    function = getattr(gate_of, '__func__', gate_of)
    try:
        if function in _CHECKED_GATES.get(owner, ()):
            return
    except TypeError:  # not weakly referable: checked every call
        owner = None
    allowed = {id(tensor) for tensor in (*leaves, *parameters)}
    foreign = []
    seen, pending = set(), [gate.grad_fn]
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, 'variable', None)  # an AccumulateGrad: a leaf tensor
        if variable is not None:
            if id(variable) not in allowed:
                foreign.append(tuple(variable.shape))
            continue
        pending.extend(next_node for next_node, _ in node.next_functions)
    if foreign:
        raise RuntimeError(
            f'the channel gate {getattr(gate_of, "__qualname__", gate_of)!r} uses '
            f'{len(foreign)} tensor(s) that need a gradient besides its statistics and '
            f"the module's parameters (shapes {sorted(foreign)}); their gradients would "
            'be lost. Register them as parameters of the module passed to gate_channels '
            '(or of its submodules), or compute the gate from the statistics only.'
        )
    if owner is not None:
        # Weak both ways: a lambda is its own owner, and a strong set would keep it.
        _CHECKED_GATES.setdefault(owner, weakref.WeakSet()).add(function)


def _input_gradient(
    ctx: torch.autograd.function.FunctionCtx,
    x: torch.Tensor,
    grad: torch.Tensor,
    gate: torch.Tensor,
    statistic_grads: dict[Statistic, torch.Tensor | None],
    fused: bool,
) -> torch.Tensor:
    """grad * gate + x * A + B (+ the max's gradient at its element), see the module
    docstring; A and B collect each statistic's per-channel terms. `fused`: by the CPU
    kernel (the backward asked fused_kernels_apply once)."""
    count = x.shape[2] * x.shape[3]
    scale: torch.Tensor | None = None  # A
    offset: torch.Tensor | None = None  # B

    def _add(total: torch.Tensor | None, term: torch.Tensor) -> torch.Tensor:
        return term if total is None else total + term

    for statistic, g in statistic_grads.items():
        if g is None:
            continue
        if statistic == 'mean':
            offset = _add(offset, g / count)
        elif statistic == 'sum_of_squares':
            scale = _add(scale, 2 * g)
        elif statistic == 'variance':
            # d var / dx = 2 (x - mean) / (HW - 1): a scale and an offset.
            factor = 2 * g / (count - 1)
            scale = _add(scale, factor)
            offset = _add(offset, -factor * ctx.mean)
    if fused:
        grad_x = torch_ops.channel_gate_input_gradient(grad, x, gate, scale, offset)
    else:
        grad_x = _input_gradient_by_operators(grad, x, gate, scale, offset)
    if statistic_grads.get('max') is not None:
        # flatten(2) is a view for NCHW and channels-last gradients, a copy for others
        # (H fastest): the result is read back from it either way.
        flat = grad_x.flatten(2)
        flat.scatter_add_(2, ctx.argmax[:, :, None], statistic_grads['max'][:, :, None].to(flat))
        grad_x = flat.view(grad_x.shape)
    return grad_x


def _input_gradient_by_operators(
    grad: torch.Tensor,
    x: torch.Tensor,
    gate: torch.Tensor,
    scale: torch.Tensor | None,
    offset: torch.Tensor | None,
) -> torch.Tensor:
    broadcast_gate = gate[:, :, None, None].to(grad.dtype)
    if offset is None:
        grad_x = grad * broadcast_gate
    else:
        grad_x = torch.addcmul(offset[:, :, None, None].to(grad.dtype), grad, broadcast_gate)
    if scale is not None:
        grad_x.addcmul_(x, scale[:, :, None, None].to(grad.dtype))
    return grad_x


_AUTOGRAD_FORMULAS = contextvars.ContextVar('autograd_formulas', default=False)


@contextlib.contextmanager
def autograd_formulas() -> Iterator[None]:
    """Within it, the attentions compute their plain formulas and autograd differentiates
    them, as an attention written in idiomatic PyTorch does (the benchmark's reference
    row; the tests' comparison)."""
    token = _AUTOGRAD_FORMULAS.set(True)
    try:
        yield
    finally:
        _AUTOGRAD_FORMULAS.reset(token)


def plain_formula_wanted() -> bool:
    """Under torch.compile and torch.export (inductor fuses the plain formula itself),
    torch.jit.trace, autograd_formulas, torch.func's transforms (vmap, grad, jacrev) and
    forward-mode AD: the hand-written functions define neither a vmap rule nor a jvp,
    and a trace would record the fused kernels' outputs as uninitialised tensors."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()  # a trace cannot record the fused kernels' ctypes calls
        or _AUTOGRAD_FORMULAS.get()
        or torch._C._functorch.maybe_current_level() is not None
        or getattr(forward_ad, '_current_level', -1) >= 0
    )


def refuse_second_derivative(what: str) -> None:
    """In a hand-written backward: grad mode is on there only with create_graph=True,
    whose second derivatives are not written; an error, not a silently constant term
    of, say, a gradient penalty."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f'second derivatives through {what} are not written; run the forward inside '
            'models.pytorch.channel_gate.autograd_formulas() (or under torch.compile) '
            'so that autograd differentiates the plain formula'
        )


def gate_channels(
    x: torch.Tensor,
    gate_of: GateOf,
    statistics: Sequence[Statistic],
    module: nn.Module,
    shortcut: torch.Tensor | None = None,
    relu: bool = False,
) -> torch.Tensor:
    """x * gate_of(*statistics of x)[:, :, None, None], where gate_of maps the asked
    statistics (each (N, C), in the order asked) to the gate (N, C) with the parameters
    of `module` (their gradients flow through the gate's network).

    With a `shortcut`, a residual block's end comes with it: shortcut plus that product,
    then a ReLU where `relu`. On the CPU kernels (a shortcut of x's shape and dtype) one
    pass over the activation where PyTorch's operators make three (product, sum, ReLU),
    with the very same numbers: the kernel rounds the product before the sum as they do.
    Other shortcuts broadcast and promote through PyTorch's operators."""
    statistics = tuple(statistics)
    if relu and shortcut is None:
        raise ValueError('gate_channels: relu=True ends a residual block: pass its shortcut')
    if plain_formula_wanted():
        gated = x * gate_of(*_plain_statistics(x, statistics))[:, :, None, None]
        return residual_end(gated, shortcut, relu)
    if torch.is_grad_enabled() and x.requires_grad:
        return _ChannelGate.apply(x, shortcut, relu, gate_of, statistics, *module.parameters())
    # No gradient to x: autograd (where on) sees only the gate's parameters and the
    # shortcut, through PyTorch's operators; without it (evaluation) the kernels end it.
    values, _ = channel_statistics(x, statistics)
    gate = gate_of(*(values[statistic] for statistic in statistics))
    if torch.is_grad_enabled():
        return residual_end(x * gate[:, :, None, None], shortcut, relu)
    return _gated_end(x, gate, shortcut, relu)[0]


def _gated_end(
    x: torch.Tensor, gate: torch.Tensor, shortcut: torch.Tensor | None, relu: bool
) -> tuple[torch.Tensor, bool]:
    """(x * gate with the block's end where a shortcut is given, whether the kernel wrote
    it): the kernel takes x and a shortcut of x's shape and dtype; PyTorch's operators
    the rest (their broadcasting and type promotion)."""
    if (
        shortcut is not None
        and shortcut.shape == x.shape
        and shortcut.dtype == x.dtype
        and torch_ops.fused_kernels_apply(x)
    ):
        return torch_ops.gated_residual(x, gate, shortcut, relu), True
    return residual_end(x * gate[:, :, None, None], shortcut, relu), False


def residual_end(residual: torch.Tensor, shortcut: torch.Tensor | None, relu: bool) -> torch.Tensor:
    """A residual block's end as PyTorch's operators compute it: shortcut + residual, then
    ReLU where `relu` (the residual alone without a shortcut)."""
    if shortcut is None:
        return residual
    total = shortcut + residual
    return F.relu(total) if relu else total


class ChannelGate(nn.Module):
    """An attention that scales x by a gate computed from x's per-channel statistics
    (SE, ECA, GCT, CBAM, SRM): a subclass names its `statistics` and maps them to the
    gate (N, C) in `_gate`. A residual block ends through `forward_residual`
    (models/pytorch/cifar_resnet.py), unless hooks watch the module or a subclass or the
    instance has a forward of its own."""

    statistics: tuple[Statistic, ...] = ()

    def _gate(self, *statistics: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gate_channels(x, self._gate, self.statistics, self)

    def forward_residual(self, x: torch.Tensor, shortcut: torch.Tensor, relu: bool) -> torch.Tensor:
        """shortcut + self(x), then ReLU where `relu`, fused on the CPU kernels."""
        return gate_channels(x, self._gate, self.statistics, self, shortcut=shortcut, relu=relu)
