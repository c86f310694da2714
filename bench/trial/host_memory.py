"""glibc's malloc told to keep freed memory for reuse in a process that trains on the
CPU (either backend, and the benchmark, whose rows are all timed under it).

PyTorch's CPU allocator takes every tensor from malloc. glibc serves blocks above its
mmap threshold with fresh mappings (the threshold starts at 128 KiB and rises as such
blocks are freed) and hands memory at the heap's top back to the kernel beyond its trim
threshold, so each step's activations arrive as new pages that the kernel zeroes on
their first touch. A torch ResNet-20 step at batch 128 took about 35,000 minor page
faults on the 2-core test machine (a fifth of its time, measured with getrusage around
the step); with the thresholds fixed, none. PyTorch's CPU tuning guide recommends
jemalloc or tcmalloc for the same reason; these two settings need no preloaded library.
MXNet's hybridized (static_alloc) graph keeps its own memory (no faults measured either
way); Gluon sessions take the setting too so that both backends' trials and the
benchmark's rows run under one allocator setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt's parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory_for_reuse() -> bool:
    """Set the thresholds once per process; False where the C library is not glibc
    (macOS, musl) or refuses, which only costs speed."""
    global _applied
    if _applied is None:
        _applied = _set_malloc_thresholds()
    return _applied


def _set_malloc_thresholds() -> bool:
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; fixing the mmap threshold also ends its dynamic rise.
    return (
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    )
