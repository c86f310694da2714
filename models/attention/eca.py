"""Efficient Channel Attention.

Wang, Wu, Zhu, Li, Zuo, Hu: "ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks", CVPR 2020. https://arxiv.org/abs/1910.03151
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from mxnet import init
from mxnet.gluon.block import HybridBlock

from ..kernels import use_fused_kernels
from ..registry import eca_checked_kernel_size
from ._spatial import NDArrayOrSymbol, per_element_macs, scale_channels, spatial_mean


class ECA(HybridBlock):
    """Global average pool, a 1-D convolution across channels (kernel k, no bias), sigmoid, scale.

    `kernel_size=None` picks k from the channel count as the paper does; an odd
    integer fixes it. The module has exactly k parameters and nothing else.

    On the CPU the whole module is one fused operator (`cab_eca`, models/kernels).
    Elsewhere the convolution over the C pooled values is k shifted slices of them,
    weighted and summed: the same numbers as a Conv1D, whose MXNet CPU kernel over a
    single-channel length-C signal is slow (docs/performance.md). Earlier versions
    computed it as a product with a banded matrix built from a constant parameter,
    `shifts` (k x C x C floats in every checkpoint); loading drops it from old files
    (models.cifar_resnet.load_parameters).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        gamma: float = 2,
        b: float = 1,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        kernel_size = eca_checked_kernel_size(channels, kernel_size, gamma, b)
        self.channels = channels
        self.kernel_size = kernel_size
        with self.name_scope():
            # Shaped like a Conv1D kernel (out=1, in=1, k) so Xavier sees the same fans.
            self.weight = self.params.get('weight', shape=(1, 1, kernel_size), init=init.Xavier())

    def macs_per_image(self, input_shape: tuple[int, ...]) -> int:
        """The convolution as the paper counts it, k multiply-adds per channel, plus the
        pooling and the scaling, one MAC per element each."""
        return self.channels * self.kernel_size + per_element_macs(input_shape, passes=2)

    def _across_channels(
        self, F: ModuleType, pooled: NDArrayOrSymbol, weight: NDArrayOrSymbol
    ) -> NDArrayOrSymbol:
        """The k-tap cross-correlation of each image's C pooled values, zero-padded:
        out[:, c] = sum over j of weight[j] * pooled[:, c + j - k//2]."""
        pad = self.kernel_size // 2
        first = F.slice_axis(pooled, axis=1, begin=0, end=1)  # (N, 1)
        zeros = F.zeros_like(F.tile(first, reps=(1, pad))) if pad else None
        padded = F.concat(zeros, pooled, zeros, dim=1) if pad else pooled  # (N, C + 2 pad)
        taps = F.reshape(weight, shape=(1, -1))  # (1, k)
        return F.add_n(
            *[
                F.broadcast_mul(
                    F.slice_axis(padded, axis=1, begin=j, end=j + self.channels),
                    F.slice_axis(taps, axis=1, begin=j, end=j + 1),
                )
                for j in range(self.kernel_size)
            ]
        )

    def hybrid_forward(
        self, F: ModuleType, x: NDArrayOrSymbol, weight: NDArrayOrSymbol
    ) -> NDArrayOrSymbol:
        if use_fused_kernels(self):
            return F.cab_eca(x, weight)
        pooled = spatial_mean(F, x, self.channels, fused=False)  # (N, C)
        return scale_channels(F, x, F.sigmoid(self._across_channels(F, pooled, weight)))
