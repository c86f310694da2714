"""SE, ECA and GCT in PyTorch, with the Gluon modules' parameters (names, shapes) and
functions (models/attention/). Each scales x by a gate of per-channel statistics
(channel_gate.py: one hand-written backward pass)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..registry import eca_checked_kernel_size, reduced_units
from .channel_gate import ChannelGate


class SE(ChannelGate):
    """Global average pool, FC (C -> C/r) + ReLU, FC (C/r -> C) + sigmoid, channel-wise
    scale; no biases (2 * C * hidden parameters)."""

    statistics = ('mean',)

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = reduced_units(channels, reduction)
        self.squeeze = nn.Linear(channels, hidden, bias=False)
        self.excite = nn.Linear(hidden, channels, bias=False)

    def _gate(self, mean: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.excite(F.relu(self.squeeze(mean))))


class ECA(ChannelGate):
    """Global average pool, a 1-D convolution of kernel k across channels (no bias),
    sigmoid, scale. The weight is shaped (1, 1, k) like the Gluon module's, so its
    Xavier fans are the same; Gluon's constant shift matrices are not needed here."""

    statistics = ('mean',)

    # Initialised by MXNet's Xavier() like a conv weight (initialize_like_mxnet).
    xavier_parameters = ('weight',)

    def __init__(
        self, channels: int, kernel_size: int | None = None, gamma: float = 2, b: float = 1
    ):
        super().__init__()
        self.kernel_size = eca_checked_kernel_size(channels, kernel_size, gamma, b)
        self.weight = nn.Parameter(torch.empty(1, 1, self.kernel_size))

    def _gate(self, mean: torch.Tensor) -> torch.Tensor:
        across = F.conv1d(mean[:, None, :], self.weight, padding=self.kernel_size // 2)
        return torch.sigmoid(across[:, 0, :])


class GCT(ChannelGate):
    """Per-channel L2 embedding times alpha, normalised across channels, gate
    1 + tanh(gamma * n + beta). beta takes no weight decay (`no_weight_decay`)."""

    statistics = ('sum_of_squares',)

    no_weight_decay = ('beta',)

    def __init__(self, channels: int, epsilon: float = 1e-5):
        super().__init__()
        self.epsilon = epsilon
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def _gate(self, sum_of_squares: torch.Tensor) -> torch.Tensor:
        alpha, gamma, beta = (p.reshape(1, -1) for p in (self.alpha, self.gamma, self.beta))
        embedding = torch.sqrt(sum_of_squares + self.epsilon) * alpha
        norm = gamma / torch.sqrt(embedding.square().mean(dim=1, keepdim=True) + self.epsilon)
        return 1.0 + torch.tanh(embedding * norm + beta)
