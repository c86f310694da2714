"""Model statistics: trainable parameters and multiply-accumulates of a forward pass."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import mxnet as mx
from mxnet.gluon import nn

from .cifar_resnet import get_model
from .kernels import mxnet_operators_only
from .names import MODELS
from .registry import attention_names

CIFAR_INPUT_SHAPE = (1, 3, 32, 32)
# Multiply-accumulates are counted for the layers that carry weights (convolutions
# and dense layers), the convention of the ResNet, SE and ECA papers, plus each
# channel attention's passes over its C x H x W input (its pooling or other reductions,
# and the scaling: one MAC per element each, declared by the module), which the papers
# leave out but which is where an attention's time goes. BN and ReLU are counted
# for no network.
_WEIGHTED_LAYERS = (nn.Conv1D, nn.Conv2D, nn.Dense)


@dataclass(frozen=True)
class ModelStats:
    model: str
    attention: str
    params: int
    macs: int


def count_parameters(net: nn.Block) -> int:
    """Trainable parameters (BN running statistics excluded) of a network whose shapes are known."""
    return sum(int(p.data().size) for p in net.collect_params().values() if p.grad_req != 'null')


def count_macs(net: nn.Block, input_shape: tuple[int, ...] = CIFAR_INPUT_SHAPE) -> int:
    """Multiply-accumulates of one forward pass for one image of `input_shape`.

    Every weighted layer computes, per output element, a dot product as long as
    one filter (weight.shape[1:]), so MACs = output elements x filter size.
    A block with a `macs_per_image(input_shape)` method adds what it declares for
    the work its weighted children do not cover.
    """
    counts = []

    def hook(block: nn.Block, _inputs: tuple[mx.nd.NDArray, ...], output: mx.nd.NDArray) -> None:
        filter_size = int(block.weight.data().size // block.weight.shape[0])
        counts.append(int(output[0].size) * filter_size)

    def declared(
        block: nn.Block, inputs: tuple[mx.nd.NDArray, ...], _output: mx.nd.NDArray
    ) -> None:
        counts.append(int(block.macs_per_image(inputs[0].shape)))

    handles = [
        block.register_forward_hook(hook)
        for block in _iter_blocks(net)
        if isinstance(block, _WEIGHTED_LAYERS)
    ]
    # Modules whose arithmetic is not in weighted layers declare their own count.
    handles += [
        block.register_forward_hook(declared)
        for block in _iter_blocks(net)
        if hasattr(block, 'macs_per_image')
    ]
    try:
        # MXNet's operators call every weighted layer; the fused attention kernels
        # compute a whole module in one operator, past the layers' hooks.
        with mxnet_operators_only():
            net(mx.nd.zeros(input_shape))
    finally:
        for handle in handles:
            handle.detach()
    return sum(counts)


def _iter_blocks(block: nn.Block) -> Iterator[nn.Block]:
    yield block
    for child in block._children.values():
        yield from _iter_blocks(child)


def model_stats(
    model: str,
    attention: str = 'none',
    attention_kwargs: Mapping[str, Any] | None = None,
    classes: int = 10,
) -> ModelStats:
    """ModelStats for one model x attention, computed on a freshly initialised CPU copy."""
    net = get_model(model, attention, classes=classes, attention_kwargs=attention_kwargs)
    net.initialize(ctx=mx.cpu())
    macs = count_macs(net)  # the forward pass also settles deferred parameter shapes
    return ModelStats(model, attention, count_parameters(net), macs)


def stats_table(
    models: Iterable[str] = MODELS, attentions: Sequence[str] | None = None
) -> list[dict[str, str | int | float]]:
    """Rows of model, attention, params, MACs and the overhead of each against vanilla."""
    rows = []
    for model in models:
        attentions = attentions or attention_names()
        vanilla = model_stats(model, 'none')
        for attention in attentions:
            stats = vanilla if attention == 'none' else model_stats(model, attention)
            rows.append(
                {
                    'model': model,
                    'attention': attention,
                    'params': stats.params,
                    'macs': stats.macs,
                    'extra_params': stats.params - vanilla.params,
                    'extra_macs': stats.macs - vanilla.macs,
                    'params_overhead_pct': 100.0 * (stats.params - vanilla.params) / vanilla.params,
                    'macs_overhead_pct': 100.0 * (stats.macs - vanilla.macs) / vanilla.macs,
                }
            )
    return rows
