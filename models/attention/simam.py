"""SimAM: a parameter-free attention from an energy function.

Yang, Zhang, Li, Xie: "SimAM: A Simple, Parameter-Free Attention Module for
Convolutional Neural Networks", ICML 2021. https://proceedings.mlr.press/v139/yang21o.html
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mxnet.gluon.block import HybridBlock

from ._spatial import NDArrayOrSymbol, per_element_macs, spatial_size


class SimAM(HybridBlock):
    """Each element weighted by sigmoid(1 / e*), its inverse minimal energy:
    (x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2, with mu and sigma^2 the channel's mean and
    variance over the other H x W - 1 elements (the paper's closed form and code).

    No parameters; needs H x W > 1. `channels` is taken (and unused) so that it is built
    like every other attention."""

    def __init__(self, channels: int, e_lambda: float = 1e-4, **kwargs: Any):
        super().__init__(**kwargs)
        self.channels = channels
        self.e_lambda = e_lambda

    def macs_per_image(self, input_shape: tuple[int, ...]) -> int:
        """The mean, the squared deviations and their sum, each element's energy, and the
        scaling: one MAC per element each."""
        return per_element_macs(input_shape, passes=4)

    def hybrid_forward(self, F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
        deviations = F.square(F.broadcast_sub(x, F.mean(x, axis=(2, 3), keepdims=True)))
        variance = F.broadcast_div(
            F.sum(deviations, axis=(2, 3), keepdims=True),
            F.reshape(spatial_size(F, x) - 1, shape=(1, 1, 1, 1)),
        )
        energy = F.broadcast_div(deviations, 4 * (variance + self.e_lambda)) + 0.5
        return x * F.sigmoid(energy)
