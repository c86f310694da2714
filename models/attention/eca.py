"""Efficient Channel Attention.

Wang, Wu, Zhu, Li, Zuo, Hu: "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
"""
import math

from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from ._spatial import scale_channels, spatial_mean


def eca_kernel_size(channels, gamma=2, b=1):
    """The paper's adaptive kernel size: the odd number nearest above |log2(C)/gamma + b/gamma|."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class ECA(HybridBlock):
    """Global average pool, a 1-D convolution across channels (kernel k, no bias), sigmoid, scale.

    `kernel_size=None` picks k from the channel count as the paper does; an odd
    integer fixes it. The module adds exactly k parameters.
    """

    def __init__(self, channels, kernel_size=None, gamma=2, b=1, **kwargs):
        super().__init__(**kwargs)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, b)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel_size must be a positive odd integer, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        with self.name_scope():
            self.conv = nn.Conv1D(1, kernel_size, padding=kernel_size // 2,
                                  in_channels=1, use_bias=False)

    def hybrid_forward(self, F, x):
        pooled = spatial_mean(F, x, self.channels)                     # (N, C)
        across_channels = self.conv(F.expand_dims(pooled, axis=1))     # (N, 1, C)
        return scale_channels(F, x, F.sigmoid(across_channels))
