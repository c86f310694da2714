"""The networks' architecture as plain numbers: stages, blocks, attention sizes, and the
parameter and multiply-accumulate counts that follow from them. No framework.

Both builders (Gluon in `models.cifar_resnet`, PyTorch in `models.pytorch`) lay their
networks out from here, and the sweep driver records each trial's size from here
without importing either framework; tests hold both builders' measured counts to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .names import parse_attention_name, parse_model_name

STAGE_CHANNELS = (16, 16, 32, 64)  # the stem's width, then each stage's
IMAGE_SIZE = 32


def se_hidden_units(channels: int, reduction: int = 16) -> int:
    """Width of SE's bottleneck: channels // reduction, but never zero (16-channel
    stages with r=16 would otherwise have no hidden unit at all)."""
    return max(1, channels // reduction)


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """ECA's adaptive kernel size: the odd number nearest above |log2(C)/gamma + b/gamma|."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@dataclass(frozen=True)
class BlockPlan:
    """One basic block: its input and output channels, stride, and whether its shortcut
    is a 1x1 projection (the first block of a stage that widens)."""

    in_channels: int
    channels: int
    stride: int
    downsample: bool


def stage_plans(model: str) -> list[list[BlockPlan]]:
    """The blocks of each of the three stages of `model`, e.g. 'cifar_resnet20_v1'."""
    _, depth = parse_model_name(model)
    blocks_per_stage = (depth - 2) // 6
    stages, in_channels = [], STAGE_CHANNELS[0]
    for stage_index, channels in enumerate(STAGE_CHANNELS[1:], start=1):
        stride = 1 if stage_index == 1 else 2
        stages.append(
            [
                BlockPlan(
                    in_channels if b == 0 else channels,
                    channels,
                    stride if b == 0 else 1,
                    b == 0 and channels != in_channels,
                )
                for b in range(blocks_per_stage)
            ]
        )
        in_channels = channels
    return stages


def attention_options(
    attention: str, attention_kwargs: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The attention's options with None values dropped (unset options keep the
    module's defaults); ValueError names each option that does not fit its rule
    (models.names.ATTENTION_OPTION_RULES)."""
    from .names import attention_option_problems

    attention = parse_attention_name(attention)
    options = {k: v for k, v in (attention_kwargs or {}).items() if v is not None}
    problems = attention_option_problems(attention, options)
    if problems:
        raise ValueError('; '.join(problems))
    return options


def eca_checked_kernel_size(
    channels: int, kernel_size: int | None = None, gamma: float = 2, b: float = 1
) -> int:
    """The kernel size an ECA module on `channels` channels uses (None: the paper's)."""
    if kernel_size is None:
        kernel_size = eca_kernel_size(channels, gamma, b)
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f'ECA kernel_size must be a positive odd integer, got {kernel_size}')
    return kernel_size


def attention_counts(
    attention: str, channels: int, size: int, options: Mapping[str, Any]
) -> tuple[int, int]:
    """(trainable parameters, MACs per image) of one attention module on a
    channels x size x size activation.

    MACs follow models.stats's convention: weighted layers count output elements x
    filter size (SE's two dense layers), and each pass over the C x H x W activation
    (pooling or GCT's sum of squares, and the channel scaling) one MAC per element;
    ECA's channel convolution counts k per channel.
    """
    passes = 2 * channels * size * size
    if attention == 'none':
        return 0, 0
    if attention == 'se':
        hidden = se_hidden_units(channels, options.get('reduction', 16))
        return 2 * channels * hidden, 2 * channels * hidden + passes
    if attention == 'eca':
        k = eca_checked_kernel_size(
            channels, options.get('kernel_size'), options.get('gamma', 2), options.get('b', 1)
        )
        return k, channels * k + passes
    if attention == 'gct':
        return 3 * channels, passes
    raise KeyError(attention)


class NetworkCounts(NamedTuple):
    """A network's trainable parameters and the MACs of one forward pass of one 32x32
    image."""

    params: int
    macs: int


def network_counts(
    model: str,
    attention: str = 'none',
    attention_kwargs: Mapping[str, Any] | None = None,
    classes: int = 10,
) -> NetworkCounts:
    """(trainable parameters, MACs of one forward pass of one 32x32 image) of `model`
    with `attention`, as models.stats measures them on a built network."""
    version, _ = parse_model_name(model)
    attention = parse_attention_name(attention)
    options = attention_options(attention, attention_kwargs)
    params = macs = 0

    def conv(in_c: int, out_c: int, kernel: int, out_size: int) -> None:
        nonlocal params, macs
        params += out_c * in_c * kernel * kernel
        macs += out_c * out_size * out_size * in_c * kernel * kernel

    def batch_norm(channels: int) -> None:
        nonlocal params
        params += 2 * channels  # gamma and beta; running statistics are not trained

    size = IMAGE_SIZE
    conv(3, STAGE_CHANNELS[0], 3, size)  # the stem (v2's input BN has no
    if version == 1:  # trainable parameters)
        batch_norm(STAGE_CHANNELS[0])
    for stage in stage_plans(model):
        for block in stage:
            size //= block.stride
            if version == 2:
                batch_norm(block.in_channels)
            conv(block.in_channels, block.channels, 3, size)
            batch_norm(block.channels)
            conv(block.channels, block.channels, 3, size)
            if version == 1:
                batch_norm(block.channels)
            if block.downsample:
                conv(block.in_channels, block.channels, 1, size)
                if version == 1:
                    batch_norm(block.channels)
            extra_params, extra_macs = attention_counts(attention, block.channels, size, options)
            params, macs = params + extra_params, macs + extra_macs
    channels = STAGE_CHANNELS[-1]
    if version == 2:
        batch_norm(channels)
    params += classes * channels + classes  # the dense output layer
    macs += classes * channels
    return NetworkCounts(params, macs)
