"""SimAM in PyTorch, the Gluon module's function (models/attention/simam.py).

Yang, Zhang, Li, Xie: "SimAM: A Simple, Parameter-Free Attention Module for
Convolutional Neural Networks", ICML 2021.

Its gate is per element, so eager autograd makes a dozen activation-sized passes each
way. On the CPU in float32 channels-last (the backend's layout) a fused kernel computes
forward and backward (models/kernels/torch_ops.py, 4-5x faster than the PyTorch
operators on ResNet-20's shapes); elsewhere the backward below is written out with
PyTorch operators (about 1.6x faster than autograd's on the CPU). With u = x - mean,
d = u^2, v = sum(d) / (HW - 1), k = 1 / (4 (v + lambda)), s = sigmoid(d k + 1/2),
out = x s, and q = grad x s (1 - s), the derivative of the loss through the gate's
input (both ways compute it):

    grad_x = grad s + 2 u (q k + c) - 2 k sum(q u) / HW,
    c = -k sum(q d) / ((v + lambda) (HW - 1))

(the mean's term through the variance vanishes: sum(u) = 0; its term through d is
the last one).
"""

from __future__ import annotations

import torch
from torch import nn

from models.kernels import torch_ops

from . import channel_gate
from .channel_gate import SPATIAL


def _simam_plain(x: torch.Tensor, e_lambda: float) -> torch.Tensor:
    deviations = (x - x.mean(dim=SPATIAL, keepdim=True)).square()
    count = x.shape[2] * x.shape[3] - 1
    variance = deviations.sum(dim=SPATIAL, keepdim=True) / count
    return x * torch.sigmoid(deviations / (4 * (variance + e_lambda)) + 0.5)


class _SimAMFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, e_lambda: float
    ) -> torch.Tensor:
        count = x.shape[2] * x.shape[3]
        mean = x.mean(dim=SPATIAL, keepdim=True)
        squared = (x - mean).square_()
        shifted_variance = squared.sum(dim=SPATIAL, keepdim=True) / (count - 1) + e_lambda
        k = 0.25 / shifted_variance
        weight = torch.addcmul(torch.full_like(k, 0.5), squared, k).sigmoid_()
        ctx.save_for_backward(x, weight, mean, shifted_variance)
        return x * weight

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        channel_gate.refuse_second_derivative('SimAM (models/pytorch/simam.py)')
        x, weight, mean, shifted_variance = ctx.saved_tensors
        count = x.shape[2] * x.shape[3]
        k = 0.25 / shifted_variance
        q = (grad * x).mul_(weight)
        q = torch.addcmul(q, q, weight, value=-1)  # grad x s (1 - s)
        deviations = x - mean
        q_u = q * deviations
        sum_q_u = q_u.sum(dim=SPATIAL, keepdim=True)
        sum_q_d = q_u.mul_(deviations).sum(dim=SPATIAL, keepdim=True)
        c = -k * sum_q_d / (shifted_variance * (count - 1))
        twice_q_k_c = torch.addcmul(2 * c, q, 2 * k)
        grad_x = torch.addcmul(-2 * k * sum_q_u / count, grad, weight)
        return grad_x.addcmul_(twice_q_k_c, deviations), None


class _FusedSimAMFunction(torch.autograd.Function):
    """The same function and gradient as _SimAMFunction, by the fused CPU kernel."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, e_lambda: float
    ) -> torch.Tensor:
        out, weight, mean, shifted_variance = torch_ops.simam_forward(x, e_lambda)
        ctx.save_for_backward(x, weight, mean, shifted_variance)
        return out

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        channel_gate.refuse_second_derivative('SimAM (models/pytorch/simam.py)')
        return torch_ops.simam_backward(grad, *ctx.saved_tensors), None


class SimAM(nn.Module):
    """Each element weighted by sigmoid((x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2), mu the
    channel's mean, sigma^2 its squared deviations summed over H x W and divided by
    H x W - 1. No parameters."""

    def __init__(self, channels: int, e_lambda: float = 1e-4):
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if channel_gate.plain_formula_wanted():
            return _simam_plain(x, self.e_lambda)
        if torch_ops.fused_simam_applies(x):
            if torch.is_grad_enabled() and x.requires_grad:
                return _FusedSimAMFunction.apply(x, self.e_lambda)
            return torch_ops.simam_forward(x, self.e_lambda)[0]
        if torch.is_grad_enabled() and x.requires_grad:
            return _SimAMFunction.apply(x, self.e_lambda)
        return _simam_plain(x, self.e_lambda)
