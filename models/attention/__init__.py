"""Channel-attention modules and their registry.

Every module takes the channel count as its first argument, so a residual block
only needs the class. Adding an attention is one file here, one line in
ATTENTIONS, and its name, label and options in models/names.py (which checks
sweep files without importing MXNet).
"""

from __future__ import annotations

from typing import Any

from mxnet.gluon.block import HybridBlock

from ..names import UnknownNameError, parse_attention_name
from .eca import ECA, eca_kernel_size
from .gct import GCT
from .se import SE, se_hidden_units

ATTENTIONS = {
    'none': None,
    'se': SE,
    'eca': ECA,
    'gct': GCT,
}


def get_attention(name: str) -> type[HybridBlock] | None:
    """The attention class registered as `name` (None for 'none')."""
    return ATTENTIONS[parse_attention_name(name)]


def create_attention(name: str, channels: int, **kwargs: Any) -> HybridBlock | None:
    """An instance of attention `name` for `channels` channels, or None for 'none'."""
    attention_class = get_attention(name)
    if attention_class is None:
        return None
    return attention_class(channels, **kwargs)


__all__ = [
    'ATTENTIONS',
    'ECA',
    'GCT',
    'SE',
    'UnknownNameError',
    'create_attention',
    'eca_kernel_size',
    'get_attention',
    'se_hidden_units',
]
