"""SimAM: a parameter-free attention from an energy function.

Yang, Zhang, Li, Xie: "SimAM: A Simple, Parameter-Free Attention Module for
Convolutional Neural Networks", ICML 2021. https://proceedings.mlr.press/v139/yang21o.html
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mxnet.gluon.block import HybridBlock

from ._spatial import NDArrayOrSymbol, channel_moments, per_element_macs


class SimAM(HybridBlock):
    """Each element weighted by sigmoid(1 / e*), its inverse minimal energy:
    (x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2, with mu the channel's mean over its H x W
    elements and sigma^2 their squared deviations summed and divided by H x W - 1 (the
    paper's closed form, as its code computes it).

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
        # On x as an (N*C, H*W) matrix: every elementwise operation on equal shapes, the
        # per-channel values spread by products with a row of ones (_spatial.py).
        moments = channel_moments(F, x)
        denominator = F.dot(4 * (moments.variance + self.e_lambda), moments.ones)
        energy = moments.deviations / denominator + 0.5
        return F.reshape_like(moments.flat * F.sigmoid(energy), x)
