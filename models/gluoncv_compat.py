"""gluoncv, importable beside PyTorch 2.

gluoncv 0.10 (the last release) checks at import that any installed PyTorch is
older than 2.0 and raises RuntimeError otherwise, although its MXNet half never
uses PyTorch. The torch backend and the equivalence tests need both frameworks in
one environment, so gluoncv is imported here with PyTorch hidden from that check.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_ABSENT = object()


def import_gluoncv(module: str = 'gluoncv') -> ModuleType:
    """`module` (gluoncv or one of its sub-modules), imported whatever PyTorch is installed."""
    if 'gluoncv' not in sys.modules:
        saved = sys.modules.get('torch', _ABSENT)
        sys.modules['torch'] = None  # `import torch` raises ImportError meanwhile
        try:
            importlib.import_module('gluoncv')
        finally:
            if saved is _ABSENT:
                del sys.modules['torch']
            else:
                sys.modules['torch'] = saved
    return importlib.import_module(module)
