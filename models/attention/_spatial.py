"""Per-channel spatial reductions and scaling, written as matrix products.

What every channel attention does around its small core: reduce each channel
over its H x W positions, and scale each channel by a weight. MXNet's CPU
kernels for `mean(axis=(2, 3))` and, above all, the backward pass of
`broadcast_mul(x, w[:, :, None, None])` (a broadcast-reduce over H x W) are
several times slower than a GEMM with a row of ones, which computes the same
numbers (docs/performance.md has the measurements). Both helpers work on
x viewed as an (N*C, H*W) matrix.
"""


def _flat_and_ones(F, x):
    flat = F.reshape(x, shape=(-3, -1))                                    # (N*C, H*W)
    ones = F.ones_like(F.slice_axis(flat, axis=0, begin=0, end=1))        # (1, H*W)
    return flat, ones


def spatial_sum(F, x, channels):
    """sum over H, W of x (N, C, H, W) -> (N, C)."""
    flat, ones = _flat_and_ones(F, x)
    return F.reshape(F.dot(flat, ones, transpose_b=True), shape=(-1, channels))


def spatial_mean(F, x, channels):
    """mean over H, W of x (N, C, H, W) -> (N, C); the global average pool."""
    flat, ones = _flat_and_ones(F, x)
    sums = F.dot(flat, ones, transpose_b=True)                             # (N*C, 1)
    return F.reshape(F.broadcast_div(sums, F.sum(ones)), shape=(-1, channels))


def scale_channels(F, x, weights):
    """x (N, C, H, W) with channel c of image n multiplied by weights[n, c]."""
    flat, ones = _flat_and_ones(F, x)
    per_position = F.dot(F.reshape(weights, shape=(-1, 1)), ones)         # (N*C, H*W)
    return F.reshape_like(flat * per_position, x)
