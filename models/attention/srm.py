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

from ._spatial import NDArrayOrSymbol, channel_moments, per_element_macs, scale_channels


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
        moments = channel_moments(F, x)
        mean = F.reshape(moments.mean, shape=(-1, self.channels))  # (N, C)
        std = F.reshape(F.sqrt(moments.variance + self.epsilon), shape=(-1, self.channels))
        weights = [
            F.reshape(F.slice_axis(cfc, axis=1, begin=j, end=j + 1), shape=(1, -1)) for j in (0, 1)
        ]
        style = F.broadcast_mul(mean, weights[0]) + F.broadcast_mul(std, weights[1])
        normalised = self.bn(F.reshape(style, shape=(0, 0, 1, 1)))
        return scale_channels(F, x, F.sigmoid(F.reshape(normalised, shape=(0, 0))))
