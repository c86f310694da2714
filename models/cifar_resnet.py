"""CIFAR ResNets v1 and v2 (depth 6n+2) with a channel attention on every residual branch.

He, Zhang, Ren, Sun: "Deep Residual Learning for Image Recognition" (v1),
https://arxiv.org/abs/1512.03385, and "Identity Mappings in Deep Residual
Networks" (v2), https://arxiv.org/abs/1603.05027.

The networks are the original repository's (mnikitin/channel-attention,
`cifarresnet.py`), whose table this project reproduces. Their layer structure and
parameter names follow gluoncv's `cifarresnet.py`, so the vanilla networks have
exactly gluoncv's parameters, and v1 computes gluoncv's function. v2 does not:
in the downsampling v2 block the original takes the projection shortcut from the
block's raw input, before the block's first BN-ReLU, where gluoncv takes it from
the pre-activated input. We follow the original, since the table's v2 rows were
trained with it; with the same weights the two v2 networks give different outputs.

The attention sits on the residual branch, after the block body and before the
addition to the shortcut.

Other papers' CIFAR ResNets are declared variants of these (models.names.VARIANTS,
e.g. cifar_resnet20_simam): the same blocks with the differences the variant names,
so their cells train without changing ours.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from mxnet import init, nd
from mxnet.context import Context
from mxnet.gluon import nn
from mxnet.gluon.block import Block, HybridBlock

from .architecture import STAGE_CHANNELS, attention_options, stage_plans
from .attention import get_attention
from .attention._spatial import NDArrayOrSymbol, spatial_mean
from .kernels import use_fused_kernels
from .names import (
    RETIRED_PARAMETERS,
    NetworkVariant,
    attention_before_last_bn,
    fan_in_uniform_init,
    network_variant,
    parse_model_name,
)
from .registry import attention_key


def _conv3x3(channels: int, stride: int, in_channels: int) -> nn.Conv2D:
    return nn.Conv2D(
        channels, kernel_size=3, strides=stride, padding=1, use_bias=False, in_channels=in_channels
    )


def _relu(F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
    # Activation is oneDNN's ReLU and keeps its blocked layout; F.relu is MXNet's
    # generic element-wise kernel, which converts the layout on the way in and out.
    # ResNet-20 trains 7 % (v1) to 19 % (v2) faster with it on the CPU.
    return F.Activation(x, act_type='relu')


def _attention_or_none(
    attention_class: type[HybridBlock] | None,
    channels: int,
    attention_kwargs: Mapping[str, Any] | None,
) -> HybridBlock | None:
    if attention_class is None:
        return None
    return attention_class(channels, **(attention_kwargs or {}))


class BasicBlockV1(HybridBlock):
    """conv-BN-ReLU-conv-BN, attention, + shortcut, ReLU; with `attention_before_last_bn`
    conv-BN-ReLU-conv, attention, BN (a variant's placement)."""

    def __init__(
        self,
        channels: int,
        stride: int,
        downsample: bool,
        in_channels: int,
        attention_class: type[HybridBlock] | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
        attention_before_last_bn: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.attention_before_last_bn = attention_before_last_bn
        self.body = nn.HybridSequential(prefix='')
        self.body.add(
            _conv3x3(channels, stride, in_channels),
            nn.BatchNorm(),
            nn.Activation('relu'),
            _conv3x3(channels, 1, channels),
            nn.BatchNorm(),
        )
        self.attention = _attention_or_none(attention_class, channels, attention_kwargs)
        self.downsample = None
        if downsample:
            self.downsample = nn.HybridSequential(prefix='')
            self.downsample.add(
                nn.Conv2D(
                    channels, kernel_size=1, strides=stride, use_bias=False, in_channels=in_channels
                ),
                nn.BatchNorm(),
            )

    def hybrid_forward(self, F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
        if self.attention is not None and self.attention_before_last_bn:
            residual = x
            for index in range(len(self.body) - 1):
                residual = self.body[index](residual)
            residual = self.body[len(self.body) - 1](self.attention(residual))
        else:
            residual = self.body(x)
            if self.attention is not None:
                residual = self.attention(residual)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return _relu(F, shortcut + residual)


class BasicBlockV2(HybridBlock):
    """Pre-activation: BN-ReLU-conv-BN-ReLU-conv, attention, + shortcut (the raw input,
    or its 1x1 projection when the block downsamples)."""

    def __init__(
        self,
        channels: int,
        stride: int,
        downsample: bool,
        in_channels: int,
        attention_class: type[HybridBlock] | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.bn1 = nn.BatchNorm()
        self.conv1 = _conv3x3(channels, stride, in_channels)
        self.bn2 = nn.BatchNorm()
        self.conv2 = _conv3x3(channels, 1, channels)
        self.attention = _attention_or_none(attention_class, channels, attention_kwargs)
        self.downsample = None
        if downsample:
            self.downsample = nn.Conv2D(
                channels, 1, stride, use_bias=False, in_channels=in_channels
            )

    def hybrid_forward(self, F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
        # The original's projection reads the raw input (gluoncv's reads the
        # pre-activated one): the table's v2 rows were trained this way.
        shortcut = self.downsample(x) if self.downsample is not None else x
        residual = self.conv2(_relu(F, self.bn2(self.conv1(_relu(F, self.bn1(x))))))
        if self.attention is not None:
            residual = self.attention(residual)
        return residual + shortcut


@init.register
class FanInUniform(init.Initializer):
    """Weights from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = the product of every
    axis but the first (the outputs): PyTorch's default for conv and dense layers
    (kaiming_uniform_ with a = sqrt(5)). Biases, BN and the rest as Xavier() leaves them."""

    def _init_weight(self, name: str, arr: nd.NDArray) -> None:
        fan_in = math.prod(arr.shape[1:])
        bound = 1 / math.sqrt(fan_in)
        nd.random.uniform(-bound, bound, shape=arr.shape, dtype=arr.dtype, ctx=arr.context, out=arr)


def network_initializer(name: str) -> init.Initializer:
    """The initialiser of every parameter of network `name` without one of its own:
    MXNet's Xavier() (the original's), or what a variant declares."""
    return FanInUniform() if fan_in_uniform_init(name) else init.Xavier()


class CIFARResNet(HybridBlock):
    """A CIFAR ResNet: a 3x3 stem, three stages of `blocks_per_stage` basic blocks, pool,
    dense; `variant` where it is another paper's (models.names.VARIANTS)."""

    def __init__(
        self,
        version: int,
        blocks_per_stage: int,
        classes: int = 10,
        attention_class: type[HybridBlock] | None = None,
        attention_kwargs: Mapping[str, Any] | None = None,
        variant: NetworkVariant | None = None,
        attention_before_last_bn: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        block_class = {1: BasicBlockV1, 2: BasicBlockV2}[version]
        block_options = {'attention_before_last_bn': True} if attention_before_last_bn else {}
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            if version == 2:
                self.features.add(nn.BatchNorm(scale=False, center=False))
            self.features.add(nn.Conv2D(STAGE_CHANNELS[0], 3, 1, 1, use_bias=False))
            if version == 1:
                self.features.add(nn.BatchNorm())
            if variant is not None and variant.stem_relu:
                self.features.add(nn.Activation('relu'))
            model = f'cifar_resnet{6 * blocks_per_stage + 2}_v{version}'
            for stage_index, blocks in enumerate(stage_plans(model), start=1):
                stage = nn.HybridSequential(prefix=f'stage{stage_index}_')
                with stage.name_scope():
                    for block in blocks:
                        stage.add(
                            block_class(
                                block.channels,
                                block.stride,
                                downsample=block.downsample,
                                in_channels=block.in_channels,
                                attention_class=attention_class,
                                attention_kwargs=attention_kwargs,
                                prefix='',
                                **block_options,
                            )
                        )
                self.features.add(stage)
            in_channels = STAGE_CHANNELS[-1]
            if version == 2:
                self.features.add(nn.BatchNorm(), nn.Activation('relu'))
            self.output = nn.Dense(classes, in_units=in_channels)
        self.out_channels = in_channels

    def hybrid_forward(self, F: ModuleType, x: NDArrayOrSymbol) -> NDArrayOrSymbol:
        # The attentions' spatial mean instead of GlobalAvgPool2D, whose CPU kernel is slow.
        features = self.features(x)
        return self.output(spatial_mean(F, features, self.out_channels, use_fused_kernels(self)))


def get_model(
    name: str,
    attention: str = 'none',
    classes: int = 10,
    attention_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> CIFARResNet:
    """Build `name` (e.g. 'cifar_resnet20_v1') with attention `attention` ('none', 'se', ...).

    `attention_kwargs` go to every attention module (e.g. {'reduction': 8} for SE);
    None values in them are dropped so unset options keep the module's defaults.
    """
    parts = parse_model_name(name)
    attention_class = get_attention(attention)
    attention_kwargs = attention_options(attention, attention_kwargs)
    return CIFARResNet(
        parts.version,
        (parts.depth - 2) // 6,
        classes=classes,
        attention_class=attention_class,
        attention_kwargs=attention_kwargs,
        variant=network_variant(name),
        attention_before_last_bn=attention_before_last_bn(name, attention_key(attention)),
        **kwargs,
    )


def load_parameters(
    net: Block, path: str | os.PathLike[str], ctx: Context | list[Context] | None = None
) -> None:
    """`net.load_parameters(path, ctx)`, also for files of earlier versions that hold
    parameters the networks have since dropped (models.names.RETIRED_PARAMETERS, e.g.
    ECA's constant `shifts` in a checkpoint of an unfinished trial): those are skipped.
    Any other parameter the network lacks is refused, naming it; a missing one too."""
    stored = set(nd.load(str(path)))
    # Structural names, the ones save_parameters writes.
    unknown = stored - set(net._collect_params_with_prefix())
    strangers = sorted(n for n in unknown if n.rpartition('.')[2] not in RETIRED_PARAMETERS)
    if strangers:
        shown = ', '.join(strangers[:5]) + (
            f' and {len(strangers) - 5} more' if len(strangers) > 5 else ''
        )
        raise ValueError(
            f'{path} holds parameters this network does not have ({shown}): '
            f'it was saved from another model or attention'
        )
    net.load_parameters(str(path), ctx=ctx, ignore_extra=bool(unknown))
