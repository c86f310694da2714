"""CBAM's channel attention.

Woo, Park, Lee, Kweon: "CBAM: Convolutional Block Attention Module", ECCV 2018.
https://arxiv.org/abs/1807.06521 (its channel attention only, without the spatial gate)
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from ..registry import reduced_units
from ._spatial import NDArrayOrSymbol, per_element_macs, scale_channels, spatial_mean


class CBAM(HybridBlock):
    """Average- and max-pooled descriptors through one shared MLP (C -> C/r, ReLU,
    C/r -> C, with biases as in CBAM's code), summed, sigmoid, channel-wise scale.

    Adds 2 * C * hidden + hidden + C parameters. The MLP runs once per descriptor (not
    on the two stacked), so models.stats counts its MACs twice, as they are computed."""

    def __init__(self, channels: int, reduction: int = 16, **kwargs: Any):
        super().__init__(**kwargs)
        self.channels = channels
        hidden = reduced_units(channels, reduction)
        with self.name_scope():
            self.squeeze = nn.Dense(hidden, in_units=channels)
            self.excite = nn.Dense(channels, in_units=hidden)

    def macs_per_image(self, input_shape: tuple[int, ...]) -> int:
        """The two poolings and the scaling, one MAC per element each (the MLP is
        counted as weighted layers)."""
        return per_element_macs(input_shape, passes=3)

    def _mlp(self, F: ModuleType, pooled: NDArrayOrSymbol) -> NDArrayOrSymbol:
        return self.excite(F.relu(self.squeeze(pooled)))

    def hybrid_forward(self, F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
        average = spatial_mean(F, x, self.channels, fused=False)  # (N, C)
        # The maximum over the rows of x as an (N*C, H*W) matrix: MXNet reduces the last
        # axis of a 2-D array faster than two axes of a 4-D one.
        maximum = F.reshape(F.max(F.reshape(x, shape=(-3, -1)), axis=1), shape=(-1, self.channels))
        weights = F.sigmoid(self._mlp(F, average) + self._mlp(F, maximum))
        return scale_channels(F, x, weights)
