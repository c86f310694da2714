"""CBAM's channel attention in PyTorch, with the Gluon module's parameters and function
(models/attention/cbam.py).

Woo, Park, Lee, Kweon: "CBAM: Convolutional Block Attention Module", ECCV 2018.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import reduced_units
from .channel_gate import ChannelGate


class CBAM(ChannelGate):
    """Average- and max-pooled descriptors through one shared MLP with biases, summed,
    sigmoid, channel-wise scale."""

    statistics = ('mean', 'max')

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = reduced_units(channels, reduction)
        self.squeeze = nn.Linear(channels, hidden)
        self.excite = nn.Linear(hidden, channels)

    def _mlp(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.excite(F.relu(self.squeeze(pooled)))

    def _gate(self, mean: torch.Tensor, maximum: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._mlp(mean) + self._mlp(maximum))
