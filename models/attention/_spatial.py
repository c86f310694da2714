"""Per-channel spatial reductions and scaling: what every channel attention does around its core.

Each helper has two implementations that compute the same numbers:
- fused=True: the C++ kernels of models/kernels (CPU only), one pass over the
  activations forward and one backward;
- fused=False: MXNet's own operators, written as matrix products over x viewed
  as an (N*C, H*W) matrix with a row of ones. MXNet's CPU kernels for
  `mean(axis=(2, 3))` and, above all, the backward pass of
  `broadcast_mul(x, w[:, :, None, None])` (a broadcast-reduce over H x W) are
  several times slower than these GEMMs (docs/performance.md).
Modules choose with `models.kernels.use_fused_kernels(self)`.
"""


def _flat_and_ones(F, x):
    flat = F.reshape(x, shape=(-3, -1))                                    # (N*C, H*W)
    ones = F.ones_like(F.slice_axis(flat, axis=0, begin=0, end=1))        # (1, H*W)
    return flat, ones


def spatial_sum_of_squares(F, x, channels, fused):
    """sum over H, W of x**2, for x (N, C, H, W) -> (N, C)."""
    if fused:
        return F.cab_channel_sum_of_squares(x)
    flat, ones = _flat_and_ones(F, F.square(x))
    return F.reshape(F.dot(flat, ones, transpose_b=True), shape=(-1, channels))


def spatial_mean(F, x, channels, fused):
    """mean over H, W of x (N, C, H, W) -> (N, C); the global average pool."""
    if fused:
        return F.cab_channel_mean(x)
    flat, ones = _flat_and_ones(F, x)
    sums = F.dot(flat, ones, transpose_b=True)                             # (N*C, 1)
    return F.reshape(F.broadcast_div(sums, F.sum(ones)), shape=(-1, channels))


def scale_channels(F, x, weights, fused):
    """x (N, C, H, W) with channel c of image n multiplied by weights[n, c]."""
    if fused:
        return F.cab_channel_scale(x, weights)
    flat, ones = _flat_and_ones(F, x)
    per_position = F.dot(F.reshape(weights, shape=(-1, 1)), ones)         # (N*C, H*W)
    return F.reshape_like(flat * per_position, x)


def per_element_macs(input_shape, passes):
    """Multiply-accumulates of `passes` passes over one image's C x H x W activation
    (input_shape is (N, C, H, W)): the convention for the attentions' pooling, GCT's sum
    of squares and the channel scaling, one MAC per element each."""
    _, channels, height, width = input_shape
    return passes * channels * height * width
