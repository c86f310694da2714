"""Squeeze-and-Excitation.

Hu, Shen, Sun: "Squeeze-and-Excitation Networks", CVPR 2018.
https://arxiv.org/abs/1709.01507
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mxnet.gluon import nn
from mxnet.gluon.block import HybridBlock

from ..kernels import use_fused_kernels
from ..registry import reduced_units
from ._spatial import NDArrayOrSymbol, parameter_of, per_element_macs, scale_channels, spatial_mean


class SE(HybridBlock):
    """Global average pool, FC (C -> C/r) + ReLU, FC (C/r -> C) + sigmoid, channel-wise scale.

    The FC layers carry no bias, so the module adds exactly 2 * C * hidden parameters.
    On the CPU the whole module is one fused operator (`cab_se`, models/kernels) that
    reads the activations once forward and once backward; the dense layers then only
    hold its weights.
    """

    def __init__(self, channels: int, reduction: int = 16, **kwargs: Any):
        super().__init__(**kwargs)
        self.channels = channels
        hidden = reduced_units(channels, reduction)
        with self.name_scope():
            self.squeeze = nn.Dense(hidden, in_units=channels, use_bias=False)
            self.excite = nn.Dense(channels, in_units=hidden, use_bias=False)

    def macs_per_image(self, input_shape: tuple[int, ...]) -> int:
        """The pooling and the scaling, one MAC per element each (the dense layers are
        counted as weighted layers)."""
        return per_element_macs(input_shape, passes=2)

    def hybrid_forward(self, F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
        if use_fused_kernels(self):
            return F.cab_se(
                x, parameter_of(F, self.squeeze.weight, x), parameter_of(F, self.excite.weight, x)
            )
        pooled = spatial_mean(F, x, self.channels, fused=False)
        weights = F.sigmoid(self.excite(F.relu(self.squeeze(pooled))))
        return scale_channels(F, x, weights)
