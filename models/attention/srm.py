"""Style-based Recalibration Module.

Lee, Kim, Nam: "SRM: A Style-based Recalibration Module for Convolutional Neural
Networks", ICCV 2019. https://arxiv.org/abs/1903.10829
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mxnet import init
from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from ._spatial import NDArrayOrSymbol, per_element_macs, scale_channels, spatial_size


class SRM(HybridBlock):
    """Style pooling (each channel's mean and standard deviation over H x W), a
    channel-wise fully connected layer (2 weights per channel, zero at the start, no
    bias), BN, sigmoid, channel-wise scale.

    The standard deviation is sqrt(unbiased variance + epsilon), as in the paper's code;
    it needs H x W > 1. Adds 4 * C parameters (the layer's 2 C, BN's scale and shift)."""

    def __init__(self, channels: int, epsilon: float = 1e-5, **kwargs: Any):
        super().__init__(**kwargs)
        self.channels = channels
        self.epsilon = epsilon
        with self.name_scope():
            self.cfc = self.params.get('cfc', shape=(channels, 2), init=init.Zero())
            self.bn = nn.BatchNorm(in_channels=channels)

    def macs_per_image(self, input_shape: tuple[int, ...]) -> int:
        """Style pooling (the mean, then the squared deviations) and the scaling, one MAC
        per element each, and the channel-wise layer's 2 per channel."""
        return per_element_macs(input_shape, passes=3) + 2 * self.channels

    def hybrid_forward(
        self, F: ModuleType, x: NDArrayOrSymbol, cfc: NDArrayOrSymbol
    ) -> NDArrayOrSymbol:
        mean = F.mean(x, axis=(2, 3), keepdims=True)  # (N, C, 1, 1)
        squares = F.sum(F.square(F.broadcast_sub(x, mean)), axis=(2, 3))  # (N, C)
        variance = F.broadcast_div(squares, spatial_size(F, x) - 1)
        std = F.sqrt(variance + self.epsilon)
        style = F.broadcast_mul(
            F.reshape(mean, shape=(0, 0)),
            F.reshape(F.slice_axis(cfc, axis=1, begin=0, end=1), shape=(1, -1)),
        ) + F.broadcast_mul(
            std, F.reshape(F.slice_axis(cfc, axis=1, begin=1, end=2), shape=(1, -1))
        )
        normalised = self.bn(F.reshape(style, shape=(0, 0, 1, 1)))
        return scale_channels(F, x, F.sigmoid(F.reshape(normalised, shape=(0, 0))))
