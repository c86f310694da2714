"""Gated Channel Transformation.

Yang, Zhu, Wu, Yang: "Gated Channel Transformation for Visual Recognition",
CVPR 2020. https://arxiv.org/abs/1909.11519
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mxnet import init
from mxnet.gluon.block import HybridBlock

from ..kernels import use_fused_kernels
from ._spatial import NDArrayOrSymbol, per_element_macs, scale_channels, spatial_sum_of_squares


class GCT(HybridBlock):
    """Per-channel L2 embedding times alpha, normalised across channels, gate
    1 + tanh(gamma * n + beta).

    alpha=1, beta=0, gamma=0 at initialisation, so the gate starts as the identity.
    beta takes no weight decay, as in the paper's training recipe. Adds 3 * C parameters.
    On the CPU the whole module is one fused operator (`cab_gct`, models/kernels).
    """

    def __init__(self, channels: int, epsilon: float = 1e-5, **kwargs: Any):
        super().__init__(**kwargs)
        self.channels = channels
        self.epsilon = epsilon
        shape = (1, channels, 1, 1)
        with self.name_scope():
            self.alpha = self.params.get('alpha', shape=shape, init=init.One())
            self.gamma = self.params.get('gamma', shape=shape, init=init.Zero())
            self.beta = self.params.get('beta', shape=shape, init=init.Zero(), wd_mult=0.0)

    def macs_per_image(self, input_shape: tuple[int, ...]) -> int:
        """The sum of squares and the gating, one MAC per element each (the per-channel
        arithmetic on C values is left out, as for the other attentions' gates)."""
        return per_element_macs(input_shape, passes=2)

    def hybrid_forward(
        self,
        F: ModuleType,
        x: NDArrayOrSymbol,
        alpha: NDArrayOrSymbol,
        gamma: NDArrayOrSymbol,
        beta: NDArrayOrSymbol,
    ) -> NDArrayOrSymbol:
        if use_fused_kernels(self):
            return F.cab_gct(x, alpha, gamma, beta, epsilon=self.epsilon)
        # The per-channel parameters are (1, C, 1, 1) as in the paper's code; the
        # gate is computed on (N, C) and applied by scale_channels (see _spatial.py).
        alpha, gamma, beta = (F.reshape(p, shape=(1, -1)) for p in (alpha, gamma, beta))
        embedding = F.broadcast_mul(
            F.sqrt(spatial_sum_of_squares(F, x, self.channels) + self.epsilon), alpha
        )
        norm = F.broadcast_div(
            gamma, F.sqrt(F.mean(F.square(embedding), axis=1, keepdims=True) + self.epsilon)
        )
        gate = 1.0 + F.tanh(F.broadcast_add(F.broadcast_mul(embedding, norm), beta))
        return scale_channels(F, x, gate)
