"""BatchNorm with MXNet 1.9's semantics (see models/pytorch/cifar_resnet.py)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MXNET_BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


class MXNetBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d with MXNet 1.9's running statistics (see the module docstring).
    frozen_statistics: the statistics never change (MXNet's input BN of v2)."""

    def __init__(self, channels: int, affine: bool = True, frozen_statistics: bool = False):
        super().__init__(channels, eps=BN_EPSILON, momentum=1 - MXNET_BN_MOMENTUM, affine=affine)
        self.frozen_statistics = frozen_statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        if self.frozen_statistics:
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        # One pass over x: the normalisation's own batch mean and inverse standard
        # deviation give the statistics (PyTorch's running update would take the
        # unbiased variance), so no second reduction over the activation is needed.
        out, mean, inverse_std = torch.native_batch_norm(
            x, self.weight, self.bias, None, None, True, 0.0, self.eps
        )
        with torch.no_grad():
            # 1 / (var + eps) back to var: exact to float rounding of var + eps (1e-12
            # here), and never below 0.
            variance = (inverse_std.pow(-2) - self.eps).clamp_(min=0)
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(variance.to(self.running_var.dtype), self.momentum)
        return out
