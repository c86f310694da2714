"""Efficient Channel Attention.

Wang, Wu, Zhu, Li, Zuo, Hu: "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
"""
import numpy as np
from mxnet import init
from mxnet.gluon.block import HybridBlock

from ..architecture import eca_checked_kernel_size, eca_kernel_size  # noqa: F401 (exported)
from ..kernels import use_fused_kernels
from ._spatial import per_element_macs, scale_channels, spatial_mean


def _shift_matrices(channels, kernel_size):
    """(k, C*C): matrix j has ones where output channel c reads input c + j - k//2."""
    shifts = np.zeros((kernel_size, channels, channels), dtype=np.float32)
    for j in range(kernel_size):
        offset = j - kernel_size // 2
        rows = np.arange(max(0, -offset), min(channels, channels - offset))
        shifts[j, rows, rows + offset] = 1.0
    return shifts.reshape(kernel_size, channels * channels)


class ECA(HybridBlock):
    """Global average pool, a 1-D convolution across channels (kernel k, no bias), sigmoid, scale.

    `kernel_size=None` picks k from the channel count as the paper does; an odd
    integer fixes it. The module adds exactly k trainable parameters.

    Beyond the paper, as implementation only: the convolution over the C pooled
    values is computed as a product with the banded C x C matrix its k weights
    span (built from constant shift matrices). Same numbers, but on MXNet's CPU
    path a Conv1D over a single-channel length-C signal cost a third of the
    module's time (docs/performance.md).
    """

    def __init__(self, channels, kernel_size=None, gamma=2, b=1, **kwargs):
        super().__init__(**kwargs)
        kernel_size = eca_checked_kernel_size(channels, kernel_size, gamma, b)
        self.channels = channels
        self.kernel_size = kernel_size
        with self.name_scope():
            # Shaped like a Conv1D kernel (out=1, in=1, k) so Xavier sees the same fans.
            self.weight = self.params.get('weight', shape=(1, 1, kernel_size),
                                          init=init.Xavier())
            self.shifts = self.params.get_constant(
                'shifts', _shift_matrices(channels, kernel_size))

    def macs_per_image(self, input_shape):
        """The convolution as the paper counts it, k multiply-adds per channel (the dense
        product is an implementation detail), plus the pooling and the scaling, one MAC
        per element each."""
        return self.channels * self.kernel_size + per_element_macs(input_shape, passes=2)

    def hybrid_forward(self, F, x, weight, shifts):
        fused = use_fused_kernels(self)
        pooled = spatial_mean(F, x, self.channels, fused)                       # (N, C)
        band = F.reshape(F.dot(F.reshape(weight, shape=(1, -1)), shifts),
                         shape=(self.channels, self.channels))                  # (C, C)
        across_channels = F.FullyConnected(pooled, band, no_bias=True,
                                           num_hidden=self.channels)            # (N, C)
        return scale_channels(F, x, F.sigmoid(across_channels), fused)
