"""CIFAR ResNets v1 and v2 in PyTorch, laid out like the Gluon ones (models/cifar_resnet.py)
so that each parameter has the Gluon parameter's structural name and shape.

MXNet 1.9's semantics, where PyTorch's defaults differ:
- BatchNorm: momentum 0.9 in MXNet's sense (PyTorch's 0.1), eps 1e-5, and the running
  variance from the biased batch variance (PyTorch uses the unbiased one).
- MXNet updates the running statistics in the backward pass, so a BatchNorm whose
  backward never runs keeps its initial statistics: v2's input BN (no scale, no
  shift, on the data) evaluates as the identity after any training. Reproduced
  here by freezing its statistics.
- Initialisation: MXNet's Xavier() (uniform, avg, magnitude 3) on every conv and dense
  weight, which is PyTorch's xavier_uniform_ with gain 1; zero biases, BN gamma 1 and
  beta 0; GCT's alpha 1, gamma 0, beta 0.

Declared variants (models.names.VARIANTS, e.g. cifar_resnet20_simam) are built as in
models/cifar_resnet.py, with the same structural names and the same initialisation
(the _simam networks' conv and dense weights from U(+-1/sqrt(fan_in)), not Xavier()).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from ..architecture import STAGE_CHANNELS, BlockPlan, attention_options, stage_plans
from ..names import (
    attention_before_last_bn,
    fan_in_uniform_init,
    network_variant,
    parse_model_name,
)
from ..registry import attention_key, attention_spec
from .batch_norm import MXNetBatchNorm

_Module = TypeVar('_Module', bound=nn.Module)


def _conv3x3(in_channels: int, channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)


def _attention(
    attention_class: type[nn.Module] | None, channels: int, options: Mapping[str, Any]
) -> nn.Module | None:
    return attention_class(channels, **options) if attention_class is not None else None


def _ends_the_block(attention: nn.Module | None) -> bool:
    """Whether the attention computes the block's end with it (`forward_residual`: a channel
    gate, models/pytorch/channel_gate.py, which saves the activation passes of the product,
    the sum and the ReLU). Only where `forward_residual` belongs to the forward that would
    run (a subclass or an instance with a forward of its own keeps it), and not where
    hooks watch the module, forward or backward: its own forward must then run."""
    from torch.nn.modules import module as hooks

    if attention is None or 'forward' in vars(attention):
        return False
    defining = [
        next((kind for kind in type(attention).__mro__ if name in vars(kind)), None)
        for name in ('forward', 'forward_residual')
    ]
    watched = (
        attention._forward_hooks,
        attention._forward_pre_hooks,
        attention._backward_hooks,
        attention._backward_pre_hooks,
        hooks._global_forward_hooks,
        hooks._global_forward_pre_hooks,
        hooks._global_backward_hooks,
        hooks._global_backward_pre_hooks,
    )
    return defining[1] is not None and defining[0] is defining[1] and not any(watched)


class BasicBlockV1(nn.Module):
    """conv-BN-ReLU-conv-BN, attention, + shortcut, ReLU; with `attention_before_last_bn`
    conv-BN-ReLU-conv, attention, BN (a variant's placement)."""

    def __init__(
        self,
        plan: BlockPlan,
        attention_class: type[nn.Module] | None = None,
        options: Mapping[str, Any] | None = None,
        attention_before_last_bn: bool = False,
    ):
        super().__init__()
        self.attention_before_last_bn = attention_before_last_bn
        self.body = nn.Sequential(
            _conv3x3(plan.in_channels, plan.channels, plan.stride),
            MXNetBatchNorm(plan.channels),
            nn.ReLU(inplace=True),
            _conv3x3(plan.channels, plan.channels, 1),
            MXNetBatchNorm(plan.channels),
        )
        self.attention = _attention(attention_class, plan.channels, options or {})
        self.downsample = None
        if plan.downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(plan.in_channels, plan.channels, 1, stride=plan.stride, bias=False),
                MXNetBatchNorm(plan.channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        if self.attention is not None and self.attention_before_last_bn:
            *convolutions, last_bn = self.body
            residual = x
            for layer in convolutions:
                residual = layer(residual)
            residual = last_bn(self.attention(residual))
        else:
            residual = self.body(x)
            if _ends_the_block(self.attention):
                return self.attention.forward_residual(residual, shortcut, relu=True)
            if self.attention is not None:
                residual = self.attention(residual)
        return F.relu(shortcut + residual)


class BasicBlockV2(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv, attention, + shortcut: the raw input, or its 1x1
    projection taken from the raw input (the original's v2, not gluoncv's)."""

    def __init__(
        self,
        plan: BlockPlan,
        attention_class: type[nn.Module] | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.bn1 = MXNetBatchNorm(plan.in_channels)
        self.conv1 = _conv3x3(plan.in_channels, plan.channels, plan.stride)
        self.bn2 = MXNetBatchNorm(plan.channels)
        self.conv2 = _conv3x3(plan.channels, plan.channels, 1)
        self.attention = _attention(attention_class, plan.channels, options or {})
        self.downsample = None
        if plan.downsample:
            self.downsample = nn.Conv2d(
                plan.in_channels, plan.channels, 1, stride=plan.stride, bias=False
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x) if self.downsample is not None else x
        residual = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        if _ends_the_block(self.attention):
            return self.attention.forward_residual(residual, shortcut, relu=False)
        if self.attention is not None:
            residual = self.attention(residual)
        return residual + shortcut


class CIFARResNet(nn.Module):
    """A 3x3 stem, three stages of basic blocks, global average pool, dense."""

    def __init__(
        self,
        model: str,
        attention: str = 'none',
        classes: int = 10,
        attention_kwargs: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        version = parse_model_name(model).version
        variant = network_variant(model)
        options = attention_options(attention, attention_kwargs)
        attention_class = attention_spec(attention).module_class('torch')
        block_class = {1: BasicBlockV1, 2: BasicBlockV2}[version]
        block_options = (
            {'attention_before_last_bn': True}
            if attention_before_last_bn(model, attention_key(attention))
            else {}
        )
        layers = []
        if version == 2:
            layers.append(MXNetBatchNorm(3, affine=False, frozen_statistics=True))
        layers.append(nn.Conv2d(3, STAGE_CHANNELS[0], 3, padding=1, bias=False))
        if version == 1:
            layers.append(MXNetBatchNorm(STAGE_CHANNELS[0]))
        if variant is not None and variant.stem_relu:
            layers.append(nn.ReLU(inplace=True))
        for blocks in stage_plans(model):
            layers.append(
                nn.Sequential(
                    *(
                        block_class(plan, attention_class, options, **block_options)
                        for plan in blocks
                    )
                )
            )
        if version == 2:
            layers += [MXNetBatchNorm(STAGE_CHANNELS[-1]), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.output = nn.Linear(STAGE_CHANNELS[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.features(x).mean(dim=(2, 3)))


def _fan_in_uniform_(
    tensor: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    # PyTorch's own default for conv and linear weights (kaiming_uniform_, a = sqrt(5)).
    bound = 1 / math.sqrt(tensor[0].numel())
    return nn.init.uniform_(tensor, -bound, bound, generator=generator)


@torch.no_grad()
def initialize_like_mxnet(
    net: _Module, generator: torch.Generator | None = None, fan_in_uniform: bool = False
) -> _Module:
    """MXNet's Xavier() on every conv and dense weight (or, with `fan_in_uniform`, what
    models.cifar_resnet.FanInUniform draws) and on the parameters a module names in
    `xavier_parameters` (ECA's weight, Xavier in either case as in Gluon, where it has
    its own initialiser), zero biases; every other parameter (BN, GCT, SRM) keeps its
    constructor's value. Returns net."""
    layer_init = _fan_in_uniform_ if fan_in_uniform else nn.init.xavier_uniform_
    for module in net.modules():
        own = getattr(module, 'xavier_parameters', None)
        if own is None and not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        draw = layer_init if own is None else nn.init.xavier_uniform_
        for name in ('weight',) if own is None else own:
            draw(getattr(module, name), generator=generator)
        if getattr(module, 'bias', None) is not None:
            module.bias.zero_()
    return net


def get_model(
    name: str,
    attention: str = 'none',
    classes: int = 10,
    attention_kwargs: Mapping[str, Any] | None = None,
    seed: int | None = None,
) -> CIFARResNet:
    """The network `name` with `attention`, initialised as the Gluon network is (MXNet's
    Xavier(), or what its variant declares; from `seed` where given)."""
    net = CIFARResNet(name, attention, classes=classes, attention_kwargs=attention_kwargs)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return initialize_like_mxnet(net, generator, fan_in_uniform=fan_in_uniform_init(name))
