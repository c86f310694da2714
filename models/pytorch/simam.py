"""SimAM in PyTorch, the Gluon module's function (models/attention/simam.py).

Yang, Zhang, Li, Xie: "SimAM: A Simple, Parameter-Free Attention Module for
Convolutional Neural Networks", ICML 2021.
"""

from __future__ import annotations

import torch
from torch import nn


class SimAM(nn.Module):
    """Each element weighted by sigmoid((x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2), mu the
    channel's mean, sigma^2 its squared deviations summed over H x W and divided by
    H x W - 1. No parameters."""

    def __init__(self, channels: int, e_lambda: float = 1e-4):
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        deviations = (x - x.mean(dim=(2, 3), keepdim=True)).square()
        count = x.shape[2] * x.shape[3] - 1
        variance = deviations.sum(dim=(2, 3), keepdim=True) / count
        return x * torch.sigmoid(deviations / (4 * (variance + self.e_lambda)) + 0.5)
