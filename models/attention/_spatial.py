"""Per-channel spatial reductions and scaling with MXNet's operators: what every channel
attention does around its core where the fused kernels do not run (on GPUs, without a
C++ compiler, or with CHANNEL_ATTENTION_FUSED=0).

They are written as matrix products over x viewed as an (N*C, H*W) matrix with a row
of ones: MXNet's CPU kernels for `mean(axis=(2, 3))` and, above all, the backward pass
of `broadcast_mul(x, w[:, :, None, None])` (a broadcast-reduce over H x W) are several
times slower than these GEMMs (docs/performance.md). On the CPU each attention is
otherwise one fused operator of models/kernels (`cab_se`, `cab_eca`, `cab_gct`), which
computes the same numbers; modules choose with `models.kernels.use_fused_kernels(self)`.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple, Union

from mxnet import symbol
from mxnet.gluon import Parameter
from mxnet.ndarray import NDArray
from mxnet.symbol import Symbol

# What hybrid_forward computes with: NDArrays where F is mxnet.ndarray (imperative
# calls), Symbols where F is mxnet.symbol (building a hybridized graph).
NDArrayOrSymbol = Union[NDArray, Symbol]


def _flat_and_ones(F: ModuleType, x: NDArrayOrSymbol) -> tuple[NDArrayOrSymbol, NDArrayOrSymbol]:
    flat = F.reshape(x, shape=(-3, -1))  # (N*C, H*W)
    ones = F.ones_like(F.slice_axis(flat, axis=0, begin=0, end=1))  # (1, H*W)
    return flat, ones


def spatial_sum_of_squares(F: ModuleType, x: NDArrayOrSymbol, channels: int) -> NDArrayOrSymbol:
    """sum over H, W of x**2, for x (N, C, H, W) -> (N, C)."""
    flat, ones = _flat_and_ones(F, F.square(x))
    return F.reshape(F.dot(flat, ones, transpose_b=True), shape=(-1, channels))


def spatial_mean(F: ModuleType, x: NDArrayOrSymbol, channels: int, fused: bool) -> NDArrayOrSymbol:
    """mean over H, W of x (N, C, H, W) -> (N, C); the global average pool (fused: the
    kernels' `cab_channel_mean`, one pass forward and one backward)."""
    if fused:
        return F.cab_channel_mean(x)
    flat, ones = _flat_and_ones(F, x)
    sums = F.dot(flat, ones, transpose_b=True)  # (N*C, 1)
    return F.reshape(F.broadcast_div(sums, F.sum(ones)), shape=(-1, channels))


def scale_channels(F: ModuleType, x: NDArrayOrSymbol, weights: NDArrayOrSymbol) -> NDArrayOrSymbol:
    """x (N, C, H, W) with channel c of image n multiplied by weights[n, c]."""
    flat, ones = _flat_and_ones(F, x)
    per_position = F.dot(F.reshape(weights, shape=(-1, 1)), ones)  # (N*C, H*W)
    return F.reshape_like(flat * per_position, x)


class ChannelMoments(NamedTuple):
    """x (N, C, H, W) as an (N*C, H*W) matrix (`flat`), a (1, H*W) row of ones, each row's
    mean (N*C, 1), (x - mean)^2 (N*C, H*W) and the unbiased variance (N*C, 1)."""

    flat: NDArrayOrSymbol
    ones: NDArrayOrSymbol
    mean: NDArrayOrSymbol
    deviations: NDArrayOrSymbol
    variance: NDArrayOrSymbol


def channel_moments(F: ModuleType, x: NDArrayOrSymbol) -> ChannelMoments:
    """Each channel's mean and unbiased variance over H x W (which must exceed 1), the
    per-channel values spread over their rows by products with the row of ones, not by
    broadcasts (whose backward is slow, see above). A hybridized graph does not know
    H x W when it is built: it is the sum of the ones."""
    flat, ones = _flat_and_ones(F, x)
    size = F.sum(ones, axis=1)  # (1,)
    mean = F.broadcast_div(F.dot(flat, ones, transpose_b=True), size)
    deviations = F.square(flat - F.dot(mean, ones))
    variance = F.broadcast_div(F.dot(deviations, ones, transpose_b=True), size - 1)
    return ChannelMoments(flat, ones, mean, deviations, variance)


def per_element_macs(input_shape: tuple[int, ...], passes: int) -> int:
    """Multiply-accumulates of `passes` passes over one image's C x H x W activation
    (input_shape is (N, C, H, W)): the convention for the attentions' pooling, GCT's sum
    of squares and the channel scaling, one MAC per element each."""
    _, channels, height, width = input_shape
    return passes * channels * height * width


def parameter_of(F: ModuleType, parameter: Parameter, like: NDArrayOrSymbol) -> NDArrayOrSymbol:
    """`parameter` (a child block's, which hybrid_forward is not handed) as an input of
    the graph being built: its symbol when hybridizing, else its value on `like`'s device."""
    return parameter.var() if F is symbol else parameter.data(like.context)
