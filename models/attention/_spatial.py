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
from mxnet import symbol


def _flat_and_ones(F, x):
    flat = F.reshape(x, shape=(-3, -1))                                    # (N*C, H*W)
    ones = F.ones_like(F.slice_axis(flat, axis=0, begin=0, end=1))        # (1, H*W)
    return flat, ones


def spatial_sum_of_squares(F, x, channels):
    """sum over H, W of x**2, for x (N, C, H, W) -> (N, C)."""
    flat, ones = _flat_and_ones(F, F.square(x))
    return F.reshape(F.dot(flat, ones, transpose_b=True), shape=(-1, channels))


def spatial_mean(F, x, channels, fused):
    """mean over H, W of x (N, C, H, W) -> (N, C); the global average pool (fused: the
    kernels' `cab_channel_mean`, one pass forward and one backward)."""
    if fused:
        return F.cab_channel_mean(x)
    flat, ones = _flat_and_ones(F, x)
    sums = F.dot(flat, ones, transpose_b=True)                             # (N*C, 1)
    return F.reshape(F.broadcast_div(sums, F.sum(ones)), shape=(-1, channels))


def scale_channels(F, x, weights):
    """x (N, C, H, W) with channel c of image n multiplied by weights[n, c]."""
    flat, ones = _flat_and_ones(F, x)
    per_position = F.dot(F.reshape(weights, shape=(-1, 1)), ones)         # (N*C, H*W)
    return F.reshape_like(flat * per_position, x)


def per_element_macs(input_shape, passes):
    """Multiply-accumulates of `passes` passes over one image's C x H x W activation
    (input_shape is (N, C, H, W)): the convention for the attentions' pooling, GCT's sum
    of squares and the channel scaling, one MAC per element each."""
    _, channels, height, width = input_shape
    return passes * channels * height * width


def parameter_of(F, parameter, like):
    """`parameter` (a child block's, which hybrid_forward is not handed) as an input of
    the graph being built: its symbol when hybridizing, else its value on `like`'s device."""
    return parameter.var() if F is symbol else parameter.data(like.context)
