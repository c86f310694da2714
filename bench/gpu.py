"""Which GPUs are here, and whether the trial backend's build can run on them.

The torch backend runs on whatever the installed PyTorch build carries code for
(read from the build, see `torch_arch_list`); the gluon backend's limits follow.

`mxnet-cu112==1.9.1` carries compiled code for sm_50, sm_60, sm_70, sm_80 and
sm_86 and no PTX: it runs on Maxwell to Ampere, and on Ada (sm_89) through
binary compatibility with sm_86. On Hopper (sm_90) and Blackwell every kernel
fails with "no kernel image is available". So cards are checked before any
training, through NVML, which creates no CUDA context (CUDA does not survive the
fork that starts Ray's workers, so the driver must never create one).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

from bench.errors import DOCTOR_HINT, BenchError

if TYPE_CHECKING:
    from bench.trial.recipe import Recipe

SUPPORTED = ((5, 0), (8, 9))
SUPPORTED_TEXT = (
    'compute capability 5.0 to 8.9 (Maxwell, Pascal, Volta, Turing, Ampere, '
    'Ada: e.g. V100, T4, A100, A10, RTX 30xx/40xx, L4, L40)'
)


class GPUError(BenchError, RuntimeError):
    """A GPU setup that cannot train; the message says why and what to do."""

    hint = DOCTOR_HINT


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    capability: tuple  # (major, minor); None where NVML could not read it
    uuid: str = ''  # GPU-..., as CUDA_VISIBLE_DEVICES may name the card
    migs: tuple = ()  # MIG-... UUIDs of the card's MIG instances
    problem: str = ''  # why NVML could not read the card (e.g. no permission)

    @property
    def sm(self) -> str:
        return f'sm_{self.capability[0]}{self.capability[1]}' if self.capability else 'sm_?'

    @property
    def supported(self) -> bool:
        return bool(self.capability) and SUPPORTED[0] <= tuple(self.capability) <= SUPPORTED[1]

    def describe(self) -> str:
        if self.problem:
            return f'GPU {self.index}: unreadable ({self.problem})'
        return (
            f'GPU {self.index}: {self.name} ({self.sm}, '
            f'{"supported" if self.supported else "not supported by mxnet-cu112"})'
        )


class NVMLUnavailable(RuntimeError):
    """NVML cannot answer here; callers fall back to nvidia-smi or to no GPUs."""


# NVML's return codes that a user can act on; the rest are named by number.
NVML_ERRORS = {
    1: 'NVML not initialised',
    2: 'invalid argument',
    3: 'not supported',
    4: 'no permission',
    6: 'not found',
    9: 'driver not loaded',
    15: 'GPU is lost',
    999: 'unknown error',
}


def _nvml_error(code: int) -> str:
    return NVML_ERRORS.get(code, f'NVML error {code}')


def _load_nvml(library: str = 'libnvidia-ml.so.1') -> ctypes.CDLL:
    try:
        return ctypes.CDLL(library)
    except OSError as error:
        raise NVMLUnavailable(f'{library} cannot be loaded ({error})') from error


def _nvml_gpus(nvml: ctypes.CDLL | None = None) -> list[GPU]:
    """Every GPU NVML lists, each read as far as this process may: a card it may not
    query (NVML_ERROR_NO_PERMISSION under SLURM or cgroups) keeps its problem."""
    nvml = nvml or _load_nvml()
    if nvml.nvmlInit_v2() != 0:
        raise NVMLUnavailable('nvmlInit failed: the NVIDIA driver is not running')
    try:
        count = ctypes.c_uint()
        code = nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
        if code:
            raise NVMLUnavailable(f'NVML cannot count the GPUs ({_nvml_error(code)})')
        return [_nvml_gpu(nvml, index) for index in range(count.value)]
    finally:
        nvml.nvmlShutdown()


def driver_cuda_version(nvml: ctypes.CDLL | None = None) -> tuple[int, int] | None:
    """(major, minor) of the CUDA version the NVIDIA driver supports (NVML's
    nvmlSystemGetCudaDriverVersion_v2, e.g. 11040 -> (11, 4)); None without a driver."""
    try:
        nvml = nvml or _load_nvml()
    except NVMLUnavailable:
        return None
    if nvml.nvmlInit_v2() != 0:
        return None
    try:
        version = ctypes.c_int()
        if nvml.nvmlSystemGetCudaDriverVersion_v2(ctypes.byref(version)):
            return None
        return version.value // 1000, (version.value % 1000) // 10
    finally:
        nvml.nvmlShutdown()


# MXNet 1.9.1 fuses the pointwise operators of hybridized graphs at run time: NVRTC
# compiles them to PTX, which the driver loads. The pinned NVRTC 11.8 writes PTX ISA
# 7.8, which drivers older than CUDA 11.8 (R520) refuse with
# CUDA_ERROR_UNSUPPORTED_PTX_VERSION at the first forward pass.
FUSION_MIN_DRIVER_CUDA = (11, 8)
FUSION_ENV = 'MXNET_USE_FUSION'


class FusionSetting(NamedTuple):
    """Whether MXNet's runtime fusion stays on, and why."""

    on: bool
    why: str


def gluon_fusion_setting(
    driver_cuda: tuple[int, int] | None, environ: MutableMapping[str, str] | None = None
) -> FusionSetting:
    """(whether MXNet's runtime fusion stays on, why) for a driver supporting CUDA
    `driver_cuda`; sets MXNET_USE_FUSION=0 in `environ` (os.environ) when the driver is
    too old for the PTX it would be given. Must run before MXNet is imported."""
    environ = os.environ if environ is None else environ
    if environ.get(FUSION_ENV) == '0':
        return FusionSetting(False, f'{FUSION_ENV}=0 set by the user')
    if driver_cuda is None or driver_cuda >= FUSION_MIN_DRIVER_CUDA:
        return FusionSetting(True, 'on')
    environ[FUSION_ENV] = '0'
    return FusionSetting(
        False,
        f'off: the driver supports CUDA {driver_cuda[0]}.{driver_cuda[1]}, older '
        f'than the {FUSION_MIN_DRIVER_CUDA[0]}.{FUSION_MIN_DRIVER_CUDA[1]} (R520) '
        "that the PTX of MXNet's fused operators needs",
    )


TF32_ENV = 'NVIDIA_TF32_OVERRIDE'


def share_card(
    gpus_per_trial: float, backend: str, environ: MutableMapping[str, str] | None = None
) -> str | None:
    """Settings that keep a trial holding a fraction of a card within its share, made
    before the framework starts CUDA; returns what was set, as recorded with the trial.

    Every process holds a CUDA context of its own (a few hundred MB); CUDA loads kernels
    lazily (CUDA_MODULE_LOADING=LAZY) instead of all of cuDNN's and cuBLAS's up front;
    MXNet's memory pool keeps (1 - share) of the card in reserve
    (MXNET_GPU_MEM_POOL_RESERVE, a percentage); PyTorch's allocator is capped at the
    share by the torch backend (torch.cuda.set_per_process_memory_fraction)."""
    environ = os.environ if environ is None else environ
    if not 0 < gpus_per_trial < 1:
        return None
    environ.setdefault('CUDA_MODULE_LOADING', 'LAZY')
    if backend == 'gluon':
        environ['MXNET_GPU_MEM_POOL_RESERVE'] = str(int(round(100 * (1 - gpus_per_trial))))
    return f"{gpus_per_trial:g} of the card's memory, kernels loaded lazily"


def apply_tf32(recipe: Recipe, environ: MutableMapping[str, str] | None = None) -> str:
    """For a gluon trial: the recipe's tf32 off means NVIDIA_TF32_OVERRIDE=0, which cuDNN
    and cuBLAS read when CUDA starts (so before MXNet is imported). Returns the setting as
    recorded with the trial."""
    environ = os.environ if environ is None else environ
    if not recipe.tf32:
        environ[TF32_ENV] = '0'
        return 'off (NVIDIA_TF32_OVERRIDE=0)'
    if environ.get(TF32_ENV) == '0':
        raise GPUError(
            f'{TF32_ENV}=0 is set in the environment but the recipe has tf32 on; '
            f'unset it, or set recipe tf32: false so the results say so'
        )
    return 'on where the card has it (compute capability 8.0+)'


def _nvml_gpu(nvml: ctypes.CDLL, index: int) -> GPU:
    handle = ctypes.c_void_p()
    code = nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
    if code:
        return GPU(index, '?', None, problem=_nvml_error(code))
    name, uuid = ctypes.create_string_buffer(96), ctypes.create_string_buffer(96)
    major, minor = ctypes.c_int(), ctypes.c_int()
    name_code = nvml.nvmlDeviceGetName(handle, name, 96)
    nvml.nvmlDeviceGetUUID(handle, uuid, 96)
    code = nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor))
    card = name.value.decode(errors='replace') if not name_code else '?'
    if code:
        return GPU(index, card, None, uuid.value.decode(), problem=_nvml_error(code))
    return GPU(
        index, card, (major.value, minor.value), uuid.value.decode(), _mig_uuids(nvml, handle)
    )


def _mig_uuids(nvml: ctypes.CDLL, handle: ctypes.c_void_p) -> tuple[str, ...]:
    """UUIDs of the MIG instances of a card (none where MIG is off or unsupported)."""
    slots = ctypes.c_uint()
    if nvml.nvmlDeviceGetMaxMigDeviceCount(handle, ctypes.byref(slots)):
        return ()
    found = []
    for slot in range(slots.value):
        mig, uuid = ctypes.c_void_p(), ctypes.create_string_buffer(96)
        if (
            nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot, ctypes.byref(mig)) == 0
            and nvml.nvmlDeviceGetUUID(mig, uuid, 96) == 0
        ):
            found.append(uuid.value.decode())
    return tuple(found)


def _nvidia_smi_gpus() -> list[GPU]:
    if shutil.which('nvidia-smi') is None:
        raise NVMLUnavailable('nvidia-smi not found')
    out = subprocess.run(
        ['nvidia-smi', '--query-gpu=index,name,compute_cap', '--format=csv,noheader'],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if out.returncode:
        raise NVMLUnavailable(f'nvidia-smi failed: {out.stderr.strip()}')
    gpus = []
    for line in out.stdout.strip().splitlines():
        index, name, cap = (part.strip() for part in line.split(','))
        major, minor = cap.split('.')
        gpus.append(GPU(int(index), name, (int(major), int(minor))))
    return gpus


def physical_gpus() -> list[GPU]:
    """Every NVIDIA GPU of this machine (NVML, else nvidia-smi); [] with no driver."""
    for query in (_nvml_gpus, _nvidia_smi_gpus):
        try:
            return query()
        except NVMLUnavailable:
            continue
    return []


def visible_gpus(all_gpus: Sequence[GPU], cuda_visible_devices: str | None = None) -> list[GPU]:
    """The GPUs this process may use, in CUDA's order, as CUDA_VISIBLE_DEVICES lists them:
    by index, by GPU UUID (GPU-..., or a unique start of one), or by MIG UUID (MIG-...,
    which stands for its card here)."""
    if cuda_visible_devices is None:
        cuda_visible_devices = os.environ.get('CUDA_VISIBLE_DEVICES')
    if cuda_visible_devices is None:
        return list(all_gpus)
    chosen = []
    for item in filter(None, (p.strip() for p in cuda_visible_devices.split(','))):
        card = _card_named(all_gpus, item)
        if card is None:
            break  # CUDA stops at the first entry it cannot use
        chosen.append(card)
    return chosen


def _card_named(all_gpus: Sequence[GPU], item: str) -> GPU | None:
    if item.isdigit():
        return next((gpu for gpu in all_gpus if gpu.index == int(item)), None)
    if item.startswith('MIG-'):
        matches = [gpu for gpu in all_gpus if any(m.startswith(item) for m in gpu.migs)]
    else:
        matches = [gpu for gpu in all_gpus if gpu.uuid and gpu.uuid.startswith(item)]
    return matches[0] if len(matches) == 1 else None


class GpuAsk(NamedTuple):
    """How the user asked for GPUs, so that a message names what they typed: the sweep
    file's setting or a tool's flag."""

    asked: str  # '... is set but ...'
    on_cpu: str  # what trains on the CPU instead
    torch: str  # how to train with the torch backend instead


SWEEP_ASK = GpuAsk(
    'gpus_per_trial is set',
    'set resources.gpus_per_trial: 0',
    'recipe: {backend: torch}; sweeps/original-table-torch.yaml is the original table '
    'so, or the override recipe.backend=torch',
)


def tool_ask(num_gpus: int | None) -> GpuAsk:
    """How a tool's --num-gpus asked for GPUs (None: the default, every visible one)."""
    asked = (
        f'--num-gpus {num_gpus} asks for GPUs'
        if num_gpus is not None
        else 'the GPUs visible here are used (every one unless --num-gpus says otherwise)'
    )
    return GpuAsk(asked, 'pass --num-gpus 0', '--backend torch')


def unsupported_message(gpu: GPU, ask: GpuAsk = SWEEP_ASK) -> str:
    return (
        f'{gpu.name} (GPU {gpu.index}) has compute capability '
        f'{gpu.capability[0]}.{gpu.capability[1]} ({gpu.sm}). mxnet-cu112 1.9.1, the last '
        f'MXNet GPU release, runs on {SUPPORTED_TEXT}; it has no code for {gpu.sm} and '
        'fails there with "no kernel image is available". Train with the torch backend, '
        f'which runs on it ({ask.torch}); or on the CPU ({ask.on_cpu}), or on a '
        'supported card.'
    )


def torch_arch_list() -> list[str] | None:
    """The GPU architectures the installed PyTorch build carries code for ('sm_90',
    'compute_90', ...), or None for a build without CUDA. Imports torch: call it in a
    trial's or a node check's process, never in the sweep's driver."""
    import torch

    if torch.version.cuda is None:
        return None
    flags = getattr(torch._C, '_cuda_getArchFlags', lambda: '')()
    return flags.split() if flags else torch.cuda.get_arch_list()


def torch_supports(capability: tuple[int, int], arches: Iterable[str]) -> bool:
    """Whether a card of `capability` runs a build for `arches`: machine code for its
    major version at or below its minor (sm_80 runs on 8.6), or PTX at or below it."""
    major, minor = capability
    for arch in arches:
        kind, _, number = arch.partition('_')
        digits = ''.join(ch for ch in number if ch.isdigit())
        if len(digits) < 2:
            continue
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if (
            kind == 'sm'
            and arch_major == major
            and arch_minor <= minor
            and not number.endswith('a')
        ):
            return True
        if kind == 'compute' and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def _torch_unsupported_message(gpu: GPU, arches: Iterable[str], ask: GpuAsk) -> str:
    return (
        f'{gpu.name} (GPU {gpu.index}) has compute capability '
        f'{gpu.capability[0]}.{gpu.capability[1]} ({gpu.sm}), and the installed PyTorch '
        f'build carries code for {" ".join(arches)} only. Install a PyTorch build for '
        f'this card (see pytorch.org for the CUDA builds), or run on the CPU ({ask.on_cpu}).'
    )


def check_gpus(
    gpus_per_trial: float,
    gpus: Sequence[GPU] | None = None,
    gpu_build: bool | None = None,
    backend: str = 'gluon',
    torch_arches: Sequence[str] | None | Literal[False] = False,
    ask: GpuAsk = SWEEP_ASK,
) -> list[GPU]:
    """Raise GPUError unless trials of `backend` asking for `gpus_per_trial` GPUs can run here.

    gpus: the cards to check (default: this machine's, through NVML);
    gpu_build: whether MXNet is the CUDA build (gluon; default: look it up);
    torch_arches: the PyTorch build's architectures (torch; default: look them up,
    None meaning a build without CUDA); ask: how the user asked for the GPUs, which the
    messages name.
    Returns the cards checked.
    """
    if not gpus_per_trial:
        return []
    if backend == 'gluon' and gpu_build is None:
        from models.cuda_runtime import gpu_build_installed

        gpu_build = gpu_build_installed()
    if backend == 'torch' and torch_arches is False:
        torch_arches = torch_arch_list()
    if gpus is None:
        gpus = physical_gpus()
    if not gpus:
        raise GPUError(
            f'{ask.asked} but no NVIDIA driver or GPU was found '
            '(NVML and nvidia-smi did not answer). Install the NVIDIA driver '
            '(gluon: R450.80 or newer, R520 or newer for fused operators; torch: '
            f"what the PyTorch build's CUDA needs), or {ask.on_cpu}."
        )
    readable = [gpu for gpu in gpus if not gpu.problem]
    if not readable:
        raise GPUError(
            f'{ask.asked} but NVML could not read any GPU of this machine ('
            + '; '.join(f'GPU {gpu.index}: {gpu.problem}' for gpu in gpus)
            + '). Under '
            'SLURM or cgroups, run inside the job that holds the GPUs; otherwise check '
            f'the permissions of /dev/nvidia*, or {ask.on_cpu}.'
        )
    # Cards this process may not read are another job's (SLURM, cgroups): not ours.
    if backend == 'torch':
        if torch_arches is None:
            raise GPUError(
                f'{ask.asked} but the installed PyTorch is a build '
                'without CUDA. Install a CUDA build of PyTorch (pip install '
                'torch, or the index URL pytorch.org gives for your CUDA), or '
                f'{ask.on_cpu}.'
            )
        bad = [gpu for gpu in readable if not torch_supports(gpu.capability, torch_arches)]
        if bad:
            raise GPUError(
                '\n'.join(_torch_unsupported_message(gpu, torch_arches, ask) for gpu in bad)
            )
        return readable
    # The capability comes first: on a card no MXNet build supports, installing the
    # GPU build would not help; the torch backend would.
    bad = [gpu for gpu in readable if not gpu.supported]
    if bad:
        raise GPUError('\n'.join(unsupported_message(gpu, ask) for gpu in bad))
    if not gpu_build:
        raise GPUError(
            f'{ask.asked} but the installed MXNet is the CPU build '
            '(`mxnet`). Install the GPU build instead: pip uninstall mxnet, then '
            "pip install -c constraints.txt -e '.[gpu]' (or make MXNET_EXTRA=gpu)."
        )
    return readable


def check_local_gpus(
    num_gpus: int | None,
    backend: str,
    gpu_build: bool | None = None,
    torch_arches: Sequence[str] | None | Literal[False] = False,
) -> str | None:
    """For a tool training on this machine (bench.train, bench.benchmark) with `num_gpus`
    GPUs (None: every visible one the framework's build can use): GPUError where the
    cards cannot run the backend, before the framework touches one; for gluon, the
    fusion setting the driver allows (see gluon_fusion_setting), which is returned."""
    cards = visible_gpus(physical_gpus())
    ask = tool_ask(num_gpus)
    if num_gpus is None:
        if backend == 'gluon':
            from models.cuda_runtime import gpu_build_installed

            usable = gpu_build if gpu_build is not None else gpu_build_installed()
        else:
            usable = (torch_arch_list() if torch_arches is False else torch_arches) is not None
        num_gpus = len(cards) if usable else 0
    if not num_gpus or not cards:
        return None  # the framework's own count tells the user what is missing
    check_gpus(
        num_gpus,
        gpus=cards,
        gpu_build=gpu_build,
        backend=backend,
        torch_arches=torch_arches,
        ask=ask,
    )
    return gluon_fusion_setting(driver_cuda_version()).why if backend == 'gluon' else None


def describe_gpus(gpus: Sequence[GPU]) -> str:
    return '; '.join(gpu.describe() for gpu in gpus) if gpus else 'no GPU'
