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
from typing import Union

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


def channel_deviations(
    F: ModuleType, x: NDArrayOrSymbol
) -> tuple[NDArrayOrSymbol, NDArrayOrSymbol, NDArrayOrSymbol]:
    """(flat, mean, squared deviations) of x (N, C, H, W): x as an (N*C, H*W) matrix, each
    row's mean (N*C, 1), and (x - mean)^2 (N*C, H*W). The mean is spread over its row by a
    product with a row of ones, not a broadcast (whose backward is slow, see above)."""
    flat, ones = _flat_and_ones(F, x)
    mean = F.broadcast_div(F.dot(flat, ones, transpose_b=True), F.sum(ones))
    return flat, mean, F.square(flat - F.dot(mean, ones))


def row_sums(F: ModuleType, rows: NDArrayOrSymbol) -> NDArrayOrSymbol:
    """Each row's sum of an (M, K) matrix, as (M, 1)."""
    ones = F.ones_like(F.slice_axis(rows, axis=0, begin=0, end=1))
    return F.dot(rows, ones, transpose_b=True)


def spread_rows(F: ModuleType, values: NDArrayOrSymbol, like: NDArrayOrSymbol) -> NDArrayOrSymbol:
    """values (M, 1) repeated along each row of `like` (M, K)."""
    return F.dot(values, F.ones_like(F.slice_axis(like, axis=0, begin=0, end=1)))


def spatial_size(F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
    """H x W of x (N, C, H, W) as a (1,) array: a hybridized graph does not know the
    shape when it is built."""
    _, ones = _flat_and_ones(F, x)
    return F.sum(ones, axis=1)


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
