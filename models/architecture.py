"""The networks' architecture as plain numbers: stages, blocks, attention sizes, and the
parameter and multiply-accumulate counts that follow from them. No framework.

Both builders (Gluon in `models.cifar_resnet`, PyTorch in `models.pytorch`) lay their
networks out from here, and the sweep driver records each trial's size from here
without importing either framework; tests hold both builders' measured counts to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from .names import parse_model_name
from .registry import attention_spec

STAGE_CHANNELS = (16, 16, 32, 64)  # the stem's width, then each stage's
IMAGE_SIZE = 32


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
    depth = parse_model_name(model).depth
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
    module's defaults); ValueError names each option that does not fit its spec."""
    return attention_spec(attention).checked_options(attention_kwargs)


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
    # A variant's differences (a ReLU, where an attention sits, initial values) change
    # no count: it counts as the version it is built of.
    version = parse_model_name(model).version
    spec = attention_spec(attention)
    options = spec.checked_options(attention_kwargs)
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
            extra_params, extra_macs = spec.module_counts(block.channels, size, options)
            params, macs = params + extra_params, macs + extra_macs
    channels = STAGE_CHANNELS[-1]
    if version == 2:
        batch_norm(channels)
    params += classes * channels + classes  # the dense output layer
    macs += classes * channels
    return NetworkCounts(params, macs)
