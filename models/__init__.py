"""Gluon channel-attention modules and CIFAR ResNets that carry them.

Knows nothing of training: it builds networks and measures their size.

Importing the package itself does not import MXNet (names load on first use):
the CUDA libraries of the GPU build must be loaded first, and callers may still
need to set MXNet's thread count, which MXNet reads once at import.
"""

from __future__ import annotations

import importlib
from typing import Any

from .cuda_runtime import preload_cuda_libraries

preload_cuda_libraries()

_EXPORTS = {
    'attention_names': '.registry',
    'attention_spec': '.registry',
    'UnknownNameError': '.names',
    'create_attention': '.attention',
    'get_attention': '.attention',
    'MODELS': '.names',
    'get_model': '.cifar_resnet',
    'load_parameters': '.cifar_resnet',
    'NETWORK_REVISIONS': '.names',
    'network_revision': '.names',
    'parse_attention_name': '.registry',
    'parse_model_name': '.names',
    'ModelStats': '.stats',
    'count_macs': '.stats',
    'count_parameters': '.stats',
    'model_stats': '.stats',
    'stats_table': '.stats',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:  # noqa: ANN401 (the exports are of every kind)
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
