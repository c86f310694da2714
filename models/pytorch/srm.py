"""SRM in PyTorch, with the Gluon module's parameters and function
(models/attention/srm.py).

Lee, Kim, Nam: "SRM: A Style-based Recalibration Module for Convolutional Neural
Networks", ICCV 2019.
"""

from __future__ import annotations

import torch
from torch import nn

from .batch_norm import MXNetBatchNorm
from .channel_gate import ChannelGate


class SRM(ChannelGate):
    """Style pooling (mean, sqrt(unbiased variance + epsilon)), a channel-wise fully
    connected layer starting at zero, BN with MXNet's statistics, sigmoid, scale."""

    statistics = ('mean', 'variance')

    def __init__(self, channels: int, epsilon: float = 1e-5):
        super().__init__()
        self.epsilon = epsilon
        self.cfc = nn.Parameter(torch.zeros(channels, 2))
        self.bn = MXNetBatchNorm(channels)

    def _gate(self, mean: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(variance + self.epsilon)
        style = mean * self.cfc[:, 0] + std * self.cfc[:, 1]  # (N, C)
        return torch.sigmoid(self.bn(style[:, :, None, None]))[:, :, 0, 0]
