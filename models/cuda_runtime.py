"""Make the CUDA 11 libraries of the `gpu` extra loadable before MXNet is imported.

`mxnet-cu112` links libcudart.so.11.0, libcudnn.so.8, libcublas.so.11 and more
but does not bundle them. The `gpu` extra installs them from PyPI as the
`nvidia-*-cu11` wheels, under site-packages/nvidia/<name>/lib, where the
dynamic loader does not look. Loading them here with RTLD_GLOBAL, in dependency
order, lets `import mxnet` resolve its links against them.

Standard library only, so it runs before anything imports MXNet. On a CPU
install (no mxnet-cu112) it does nothing.
"""

from __future__ import annotations

import ctypes
import glob
import os
import site
import sys
from collections.abc import Callable, Iterable
from importlib import metadata

GPU_DISTRIBUTION = 'mxnet-cu112'
# Dependency order: each library's own links are loaded before it. Names may be
# glob patterns where the file name carries the toolkit's minor version.
LOAD_ORDER = (
    ('cuda_runtime', ('libcudart.so.11.0',)),
    ('cublas', ('libcublasLt.so.11', 'libcublas.so.11')),
    ('cufft', ('libcufft.so.10',)),
    ('curand', ('libcurand.so.10',)),
    ('cusolver', ('libcusolver.so.11',)),
    ('cuda_nvrtc', ('libnvrtc-builtins.so.11.*', 'libnvrtc.so.11.2')),
    (
        'cudnn',
        (
            'libcudnn_ops_infer.so.8',
            'libcudnn_ops_train.so.8',
            'libcudnn_cnn_infer.so.8',
            'libcudnn_cnn_train.so.8',
            'libcudnn_adv_infer.so.8',
            'libcudnn_adv_train.so.8',
            'libcudnn.so.8',
        ),
    ),
    ('nccl', ('libnccl.so.2',)),
    ('nvtx', ('libnvToolsExt.so.1',)),
)
_loaded = []


def gpu_build_installed() -> bool:
    """Whether the installed MXNet is the CUDA build (mxnet-cu112)."""
    try:
        metadata.distribution(GPU_DISTRIBUTION)
        return True
    except metadata.PackageNotFoundError:
        return False


def nvidia_library_dirs(
    search_paths: Iterable[str | os.PathLike[str]] | None = None,
) -> dict[str, str]:
    """{'cudnn': '.../site-packages/nvidia/cudnn/lib', ...} for every nvidia wheel found."""
    if search_paths is None:
        search_paths = list(sys.path) + site.getsitepackages() + [site.getusersitepackages()]
    found = {}
    for base in search_paths:
        for lib_dir in sorted(glob.glob(os.path.join(str(base), 'nvidia', '*', 'lib'))):
            found.setdefault(os.path.basename(os.path.dirname(lib_dir)), lib_dir)
    return found


def preload_cuda_libraries(
    search_paths: Iterable[str | os.PathLike[str]] | None = None,
    load: Callable[[str], object] | None = None,
    force: bool = False,
) -> list[str]:
    """Load the nvidia-*-cu11 libraries in dependency order; return the paths loaded.

    Does nothing (returns []) when MXNet is the CPU build, unless `force`; a library
    that is not installed is skipped, since a system CUDA 11 toolkit may provide it.
    """
    if not (force or gpu_build_installed()):
        return []
    load = load or (lambda path: ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL))
    dirs = nvidia_library_dirs(search_paths)
    loaded = []
    for package, names in LOAD_ORDER:
        lib_dir = dirs.get(package)
        if lib_dir is None:
            continue
        for name in names:
            for path in sorted(glob.glob(os.path.join(lib_dir, name))):
                if os.path.isfile(path) and path not in _loaded:
                    load(path)
                    _loaded.append(path)
                    loaded.append(path)
    return loaded


def loaded_library_versions() -> dict[str, str]:
    """{'cuda': ..., 'cudnn': ...}: the versions of the CUDA runtime and cuDNN loaded for
    MXNet, read from their file names (libcudnn.so.8.9.6 -> 8.9.6); {} where none."""
    found = {}
    for key, stem in (('cuda', 'libcudart.so.'), ('cudnn', 'libcudnn.so.')):
        versions = [
            os.path.basename(path)[len(stem) :]
            for path in _loaded
            if os.path.basename(path).startswith(stem)
        ]
        if versions:
            found[key] = max(versions, key=len)
    return found
