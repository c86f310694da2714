"""Fused CPU kernels for the channel attentions, as an MXNet extension library.

`channel_ops.cc` beside this file defines one operator per attention (`cab_se`,
`cab_eca`, `cab_gct`: pooling, the attention's core and the channel scaling in one
pass over each image, forward and backward) and the networks' global average pool
(`cab_channel_mean`), through the custom-operator interface that the mxnet wheel
ships (`mxnet/include/mxnet/lib_api.h` and `mxnet/src/lib_api.cc`). The library is
compiled on first use with the system's C++ compiler (`$CXX`, else `g++`), cached
under a key of its sources, the MXNet version, the compiler and the instruction set,
and loaded as `mx.library.load` would (`load_into_mxnet`).

Instruction sets: one build per level (AVX-512, AVX2 + FMA, the x86-64 baseline),
each compiled for exactly that level, and each process loads the widest its CPU
has (`cpu_isa`). A cache shared by different machines (a cluster's home folder)
then holds a build that runs on each, and every CPU gets its own vector width.

Trust: loading a library runs its code, so the cache must be the user's own. A cache
folder (or a folder above it) that another user owns or may write to is refused, and
a library is loaded only when its SHA-256 equals the one recorded beside it when it
was built; a library without its record, or with another content, is built again.

Where it cannot be built, or with CHANNEL_ATTENTION_FUSED=0, the modules compute
the same numbers with MXNet's own operators (models/attention/_spatial.py),
only slower on the CPU; a warning says why once. The kernels have no GPU code:
modules whose parameters live on a GPU always take MXNet's operators.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from mxnet.gluon import Block

FUSED_ENV = 'CHANNEL_ATTENTION_FUSED'
CACHE_ENV = 'CHANNEL_ATTENTION_KERNEL_CACHE'
ISA_ENV = 'CHANNEL_ATTENTION_KERNEL_ISA'
SOURCE = Path(__file__).with_name('channel_ops.cc')
LIBRARY_NAME = 'libcab_channel_ops-{isa}.so'
# Instruction-set levels, widest first: (name, compiler flags, /proc/cpuinfo flags needed).
ISA_LEVELS = (
    (
        'avx512',
        ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx2', '-mfma'],
        {'avx512f', 'avx512bw', 'avx512vl', 'avx512dq', 'avx2', 'fma'},
    ),
    ('avx2', ['-mavx2', '-mfma'], {'avx2', 'fma'}),
    ('baseline', [], set()),
)

_lock = threading.Lock()
_status: KernelStatus | None = None  # loaded once, on first use
_switched_off = threading.local()


class KernelBuildError(RuntimeError):
    """The C++ library could not be compiled."""


class UnsafeKernelCache(KernelBuildError):
    """The kernel cache could be written by someone else: nothing in it is loaded."""


class KernelSettingError(KernelBuildError):
    """A setting of the kernels' environment variables that they cannot follow."""


def _unsafe_because(path: str | os.PathLike[str], what: str) -> str | None:
    """Why `path` may not hold code this process loads (None when it may): a link, another
    owner, or write access for others."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        return f'{what} {path} is a symbolic link'
    if info.st_uid != os.geteuid():
        return f'{what} {path} belongs to another user (uid {info.st_uid})'
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f'{what} {path} is writable by others (mode {stat.S_IMODE(info.st_mode):o})'
    return None


def _check_private_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse a cache folder that another user could change: it and its key folders must
    be ours and writable by us alone, and no folder above it may let others rename it
    away (writable by others without the sticky bit, or owned by another user than us
    or root)."""
    problem = _unsafe_because(folder, 'the kernel cache folder')
    for parent in Path(folder).resolve().parents:
        if problem:
            break
        info = os.stat(parent)
        if info.st_uid not in (0, os.geteuid()):
            problem = (
                f'the folder {parent} above the kernel cache belongs to another user '
                f'(uid {info.st_uid})'
            )
        elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not info.st_mode & stat.S_ISVTX:
            problem = (
                f'the folder {parent} above the kernel cache is writable by others '
                f'(mode {stat.S_IMODE(info.st_mode):o})'
            )
    if problem:
        raise UnsafeKernelCache(
            f"{problem}, so a library there could be another user's code; nothing is loaded "
            f'from it. Use a cache folder of your own: set {CACHE_ENV} to one, or make this '
            f'one yours alone (chmod go-w)'
        )


def _private_folder(folder: str | os.PathLike[str]) -> Path:
    """`folder`, created (mode 700) where missing, and checked to be the user's alone."""
    folder = Path(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)
    _check_private_folder(folder)
    return folder


def _record_of(library: Path) -> Path:
    return library.with_name(library.name + '.sha256')


def _sha256(path: str | os.PathLike[str]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def verified_library(library: Path) -> bool:
    """Whether `library` is one this machine built: ours alone, and its content's SHA-256
    the one recorded when it was built."""
    record = _record_of(library)
    if not (library.is_file() and record.is_file()):
        return False
    for path, what in ((library, 'the kernel library'), (record, 'its hash record')):
        problem = _unsafe_because(path, what)
        if problem:
            raise UnsafeKernelCache(
                f'{problem}; nothing is loaded from it. Delete it, and it is built again'
            )
    return record.read_text().strip() == _sha256(library)


def default_cache_dir() -> Path:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(os.environ.get(CACHE_ENV) or Path(base) / 'channel-attention-bench' / 'kernels')


def _mxnet_sources() -> tuple[Path, Path]:
    import mxnet

    root = Path(mxnet.__file__).parent
    return root / 'include', root / 'src' / 'lib_api.cc'


def _compiler() -> str:
    compiler = os.environ.get('CXX', 'g++')
    if shutil.which(compiler) is None:
        raise KernelBuildError(f'no C++ compiler {compiler!r} on PATH (install g++ or set CXX)')
    return compiler


def cpu_isa(cpuinfo: str | os.PathLike[str] = '/proc/cpuinfo') -> str:
    """The widest of ISA_LEVELS this CPU has ('baseline' where its flags cannot be read),
    at most the level that CHANNEL_ATTENTION_KERNEL_ISA names: the kernels' counterpart
    of oneDNN's ONEDNN_MAX_CPU_ISA and ATen's ATEN_CPU_CAPABILITY, to run (or measure)
    a narrower build on a wider CPU. KernelBuildError for a level it does not know."""
    names = [name for name, _, _ in ISA_LEVELS]  # widest first
    cap = os.environ.get(ISA_ENV)
    if cap and cap not in names:
        raise KernelSettingError(f'{ISA_ENV}={cap!r} is no level of the kernels: one of {names}')
    found = _widest_isa(cpuinfo)
    return names[max(names.index(found), names.index(cap))] if cap else found


def _widest_isa(cpuinfo: str | os.PathLike[str]) -> str:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return 'baseline'
    flags = set(
        next(
            (
                line.split(':', 1)[1].split()
                for line in text.splitlines()
                if line.startswith('flags')
            ),
            [],
        )
    )
    return next(name for name, _, needed in ISA_LEVELS if needed <= flags)


def isa_flags(isa: str) -> list[str]:
    return next(flags for name, flags, _ in ISA_LEVELS if name == isa)


class LibrarySpec(NamedTuple):
    """What one kernel library is built from: its file name (with `{isa}`), the sources
    compiled, include folders, compiler flags beyond the common ones, and what else its
    cache key covers (files it includes, versions)."""

    name: str
    sources: tuple[Path, ...]
    include_dirs: tuple[Path, ...] = ()
    flags: tuple[str, ...] = ()
    key_parts: tuple[bytes, ...] = ()


def mxnet_library() -> LibrarySpec:
    """The MXNet extension library (channel_ops.cc against the wheel's lib_api)."""
    import mxnet

    include_dir, lib_api_source = _mxnet_sources()
    if not lib_api_source.exists():
        raise KernelBuildError(f'this mxnet install has no {lib_api_source} to build against')
    return LibrarySpec(
        name=LIBRARY_NAME,
        sources=(SOURCE, lib_api_source),
        include_dirs=(include_dir,),
        key_parts=(
            (include_dir / 'mxnet' / 'lib_api.h').read_bytes(),
            mxnet.__version__.encode(),
        ),
    )


def _compile_command(spec: LibrarySpec, compiler: str, isa: str, output: str) -> list[str]:
    # Exactly this level's instructions (no -march=native, which would tie the build to
    # this CPU model): any CPU with the level runs it.
    return [
        compiler,
        '-shared',
        '-fPIC',
        '-std=c++17',
        '-O3',
        '-fopenmp',
        *isa_flags(isa),
        *spec.flags,
        *(part for folder in spec.include_dirs for part in ('-I', str(folder))),
        *(str(source) for source in spec.sources),
        '-o',
        output,
    ]


def library_key(spec: LibrarySpec, compiler: str, isa: str) -> str:
    """The cache folder's name for `spec` built by `compiler` for `isa`: a digest of the
    sources, the compile command's flags, the compiler's version and the key parts."""
    digest = hashlib.sha256(isa.encode())
    version = subprocess.run([compiler, '--version'], capture_output=True, text=True).stdout
    flags = [*isa_flags(isa), *spec.flags]
    for part in (
        *(source.read_bytes() for source in spec.sources),
        *spec.key_parts,
        ' '.join(flags).encode(),
        version.encode(),
    ):
        digest.update(part)
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """Serialise builds across processes (Ray starts several trials at once on a machine)."""
    import fcntl

    with open(lock_path, 'w') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_library(
    cache_dir: str | os.PathLike[str] | None = None,
    isa: str | None = None,
    spec: LibrarySpec | None = None,
) -> Path:
    """Path of the compiled library `spec` (default: the MXNet extension) for instruction
    set `isa` (default: this CPU's widest), compiling it first if its key has no verified
    build yet (see verified_library). UnsafeKernelCache where the cache could be written
    by someone else."""
    isa = isa or cpu_isa()
    compiler = _compiler()
    spec = spec or mxnet_library()
    cache = _private_folder(cache_dir or default_cache_dir())
    target_dir = _private_folder(cache / library_key(spec, compiler, isa))
    target = target_dir / spec.name.format(isa=isa)
    if verified_library(target):
        return target
    with _exclusive(target_dir / '.lock'):
        if verified_library(target):  # another process built it while we waited
            return target
        handle, partial = tempfile.mkstemp(dir=target_dir, suffix='.so.partial')
        os.close(handle)
        command = _compile_command(spec, compiler, isa, partial)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            os.unlink(partial)
            raise KernelBuildError(f'{" ".join(command)} failed:\n{result.stderr[-2000:]}')
        os.chmod(partial, 0o755)
        # The record first: a library never stands in the cache without its hash.
        record = _record_of(target)
        record_partial = record.with_name(record.name + '.partial')
        record_partial.write_text(_sha256(partial) + '\n')
        os.chmod(record_partial, 0o644)
        os.replace(record_partial, record)
        os.replace(partial, target)
    return target


def warn_unavailable(what: str, error: Exception, instead: str, stacklevel: int) -> None:
    """Once per process where a kernel library could not be loaded: why, what runs
    instead, and how to fix or silence it."""
    # A compiler is the fix only where building failed.
    settled = isinstance(error, (UnsafeKernelCache, KernelSettingError))
    fix = '' if settled else ' Install a C++ compiler to get them,'
    warnings.warn(
        f'{what} unavailable ({error}); the attentions use {instead} instead: same '
        f'results, slower on the CPU.{fix} Set {FUSED_ENV}=0 to silence this.',
        stacklevel=stacklevel,
    )


class KernelStatus(NamedTuple):
    """Whether the fused kernels are in MXNet, and their library's path or why not."""

    loaded: bool
    detail: str


def _mxnet_operator_names() -> set[str]:
    import ctypes

    from mxnet.base import _LIB, check_call, py_str

    names = ctypes.POINTER(ctypes.c_char_p)()
    count = ctypes.c_uint()
    check_call(_LIB.MXListAllOpNames(ctypes.byref(count), ctypes.byref(names)))
    return {py_str(names[index]) for index in range(count.value)}


def load_into_mxnet(path: Path) -> list[str]:
    """What `mx.library.load(path, verbose=False)` does, with Python functions made for
    the library's own operators alone: MXNet's load regenerates those of all ~960
    operators, about a second in every process that loads the kernels (each trial).
    The new operators' names; as MXNet places them: `mx.nd.X` and `mx.sym.X` (also in
    their `op` modules), underscored ones (the backward passes) in `_internal`."""
    import ctypes
    import sys

    from mxnet.base import _LIB, OpHandle, c_str, check_call, mx_uint
    from mxnet.ndarray.register import _make_ndarray_function
    from mxnet.symbol.register import _make_symbol_function

    before = _mxnet_operator_names()
    check_call(_LIB.MXLoadLib(ctypes.c_char_p(str(path).encode()), mx_uint(0)))
    added = sorted(_mxnet_operator_names() - before)
    for namespace, make_function in (
        ('ndarray', _make_ndarray_function),
        ('symbol', _make_symbol_function),
    ):
        for name in added:
            handle = OpHandle()
            check_call(_LIB.NNGetOpHandle(c_str(name), ctypes.byref(handle)))
            function = make_function(handle, name, name)
            if name.startswith('_'):
                modules = [sys.modules[f'mxnet.{namespace}._internal']]
            else:
                modules = [sys.modules[f'mxnet.{namespace}.op'], sys.modules[f'mxnet.{namespace}']]
            function.__module__ = namespace  # as MXNet's own registration names it
            for module in modules:
                setattr(module, name, function)
                module.__all__.append(name)
    return added


def _load() -> KernelStatus:
    if os.environ.get(FUSED_ENV, '1') == '0':
        return KernelStatus(False, f'turned off by {FUSED_ENV}=0')
    try:
        path = build_library()
        load_into_mxnet(path)
    except Exception as error:  # any failure leaves MXNet's own operators, which always work
        # stacklevel 6: the attention module whose graph asked for the kernels.
        warn_unavailable('fused channel-attention kernels', error, "MXNet's operators", 6)
        return KernelStatus(False, str(error))
    return KernelStatus(True, str(path))


def kernel_status() -> KernelStatus:
    """(loaded, detail): whether the fused kernels are in MXNet, and their path or why not."""
    global _status
    with _lock:
        if _status is None:
            _status = _load()
        return _status


def kernel_isa() -> str | None:
    """The instruction set of the loaded kernels (None where MXNet's operators run)."""
    loaded, detail = kernel_status()
    return library_isa(detail, LIBRARY_NAME) if loaded else None


def library_isa(path: str, name: str) -> str | None:
    """The level a library at `path` was built for, read from its file name (`name`
    with `{isa}`): what was loaded, whatever the environment says now."""
    return next(
        (level for level, _, _ in ISA_LEVELS if Path(path).name == name.format(isa=level)), None
    )


def fused_kernels_available() -> bool:
    loaded, _ = kernel_status()
    return loaded and not getattr(_switched_off, 'active', False)


@contextlib.contextmanager
def mxnet_operators_only() -> Iterator[None]:
    """Graphs built inside this block use MXNet's operators even where the kernels are
    loaded (a hybridized block keeps the graph of its first call): for comparisons."""
    before = getattr(_switched_off, 'active', False)
    _switched_off.active = True
    try:
        yield
    finally:
        _switched_off.active = before


def fused_kernels_for(device_types: Iterable[str]) -> bool:
    """Whether graphs on these device types ('cpu', 'gpu', ...) call the fused kernels:
    they are loaded, and none of the devices is a GPU (the kernels have no GPU code).
    No device at all gets MXNet's operators, which run anywhere."""
    device_types = set(device_types)
    return bool(device_types) and 'gpu' not in device_types and fused_kernels_available()


def use_fused_kernels(block: Block) -> bool:
    """Whether `block`'s graph should call the fused kernels, from where its parameters live."""
    devices = set()
    for param in block.collect_params().values():
        try:
            devices.update(ctx.device_type for ctx in param.list_ctx())
        except RuntimeError:  # not initialised: no device chosen yet
            continue
    return fused_kernels_for(devices)
