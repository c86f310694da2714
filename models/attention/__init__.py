"""The Gluon channel-attention modules. Each takes the channel count as its first
argument, then its options, so a residual block only needs the class.

What the benchmark knows of an attention (its name, options, counts, and where its
Gluon and PyTorch modules are) is its spec in models.registry; adding one is a spec
there (or in an installed package) and a module per backend.
"""

from __future__ import annotations

from typing import Any

from mxnet.gluon.block import HybridBlock

from ..names import UnknownNameError
from ..registry import attention_spec
from .cbam import CBAM
from .eca import ECA
from .gct import GCT
from .se import SE
from .simam import SimAM
from .srm import SRM


def get_attention(name: str) -> type[HybridBlock] | None:
    """The Gluon class of attention `name` (None for 'none')."""
    return attention_spec(name).module_class('gluon')


def create_attention(name: str, channels: int, **kwargs: Any) -> HybridBlock | None:
    """An instance of attention `name` for `channels` channels, or None for 'none'."""
    attention_class = get_attention(name)
    if attention_class is None:
        return None
    return attention_class(channels, **kwargs)


__all__ = [
    'CBAM',
    'ECA',
    'GCT',
    'SE',
    'SRM',
    'SimAM',
    'UnknownNameError',
    'create_attention',
    'get_attention',
]
