"""Which GPUs are here, and whether MXNet's GPU build can run on them.

`mxnet-cu112==1.9.1` carries compiled code for sm_50, sm_60, sm_70, sm_80 and
sm_86 and no PTX: it runs on Maxwell to Ampere, and on Ada (sm_89) through
binary compatibility with sm_86. On Hopper (sm_90) and Blackwell every kernel
fails with "no kernel image is available". So cards are checked before any
training, through NVML, which creates no CUDA context (CUDA does not survive the
fork that starts Ray's workers, so the driver must never create one).
"""
import ctypes
import os
import shutil
import subprocess
from dataclasses import dataclass

SUPPORTED = ((5, 0), (8, 9))
SUPPORTED_TEXT = ('compute capability 5.0 to 8.9 (Maxwell, Pascal, Volta, Turing, Ampere, '
                  'Ada: e.g. V100, T4, A100, A10, RTX 30xx/40xx, L4, L40)')


class GPUError(RuntimeError):
    """A GPU setup that cannot train; the message says why and what to do."""


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    capability: tuple

    @property
    def sm(self):
        return f'sm_{self.capability[0]}{self.capability[1]}'

    @property
    def supported(self):
        return SUPPORTED[0] <= tuple(self.capability) <= SUPPORTED[1]

    def describe(self):
        return (f'GPU {self.index}: {self.name} ({self.sm}, '
                f"{'supported' if self.supported else 'not supported by mxnet-cu112'})")


class NVMLUnavailable(RuntimeError):
    pass


def _nvml_gpus(library='libnvidia-ml.so.1'):
    try:
        nvml = ctypes.CDLL(library)
    except OSError as error:
        raise NVMLUnavailable(f'{library} cannot be loaded ({error})') from error
    if nvml.nvmlInit_v2() != 0:
        raise NVMLUnavailable('nvmlInit failed: the NVIDIA driver is not running')
    try:
        count = ctypes.c_uint()
        nvml.nvmlDeviceGetCount_v2(ctypes.byref(count))
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle))
            name = ctypes.create_string_buffer(96)
            nvml.nvmlDeviceGetName(handle, name, 96)
            major, minor = ctypes.c_int(), ctypes.c_int()
            nvml.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major),
                                                    ctypes.byref(minor))
            gpus.append(GPU(index, name.value.decode(errors='replace'),
                            (major.value, minor.value)))
        return gpus
    finally:
        nvml.nvmlShutdown()


def _nvidia_smi_gpus():
    if shutil.which('nvidia-smi') is None:
        raise NVMLUnavailable('nvidia-smi not found')
    out = subprocess.run(['nvidia-smi', '--query-gpu=index,name,compute_cap',
                          '--format=csv,noheader'], capture_output=True, text=True, timeout=30)
    if out.returncode:
        raise NVMLUnavailable(f'nvidia-smi failed: {out.stderr.strip()}')
    gpus = []
    for line in out.stdout.strip().splitlines():
        index, name, cap = (part.strip() for part in line.split(','))
        major, minor = cap.split('.')
        gpus.append(GPU(int(index), name, (int(major), int(minor))))
    return gpus


def physical_gpus():
    """Every NVIDIA GPU of this machine (NVML, else nvidia-smi); [] with no driver."""
    for query in (_nvml_gpus, _nvidia_smi_gpus):
        try:
            return query()
        except NVMLUnavailable:
            continue
    return []


def visible_gpus(all_gpus, cuda_visible_devices=None):
    """The GPUs this process may use, in CUDA's order, as CUDA_VISIBLE_DEVICES lists them."""
    if cuda_visible_devices is None:
        cuda_visible_devices = os.environ.get('CUDA_VISIBLE_DEVICES')
    if cuda_visible_devices is None:
        return list(all_gpus)
    by_index = {gpu.index: gpu for gpu in all_gpus}
    chosen = []
    for item in filter(None, (p.strip() for p in cuda_visible_devices.split(','))):
        if not item.isdigit() or int(item) not in by_index:
            break    # CUDA stops at the first entry it cannot use
        chosen.append(by_index[int(item)])
    return chosen


def unsupported_message(gpu):
    return (f'{gpu.name} (GPU {gpu.index}) has compute capability '
            f'{gpu.capability[0]}.{gpu.capability[1]} ({gpu.sm}). mxnet-cu112 1.9.1, the last '
            f'MXNet GPU release, runs on {SUPPORTED_TEXT}; it has no code for {gpu.sm} and '
            'fails there with "no kernel image is available". Run on CPU '
            '(resources.gpus_per_trial: 0) or on a supported card.')


def check_gpus(gpus_per_trial, gpus=None, gpu_build=None):
    """Raise GPUError unless trials asking for `gpus_per_trial` GPUs can run here.

    gpus: the cards to check (default: this machine's, through NVML);
    gpu_build: whether MXNet is the CUDA build (default: look it up).
    Returns the cards checked.
    """
    if not gpus_per_trial:
        return []
    if gpu_build is None:
        from models.cuda_runtime import gpu_build_installed
        gpu_build = gpu_build_installed()
    if gpus is None:
        gpus = physical_gpus()
    if not gpus:
        raise GPUError('gpus_per_trial is set but no NVIDIA driver or GPU was found '
                       '(NVML and nvidia-smi did not answer). Install the NVIDIA driver '
                       '(R450.80 or newer; CUDA 11 needs it), or set resources.gpus_per_trial: 0.')
    if not gpu_build:
        raise GPUError('gpus_per_trial is set but the installed MXNet is the CPU build '
                       '(`mxnet`). Install the GPU build instead: pip uninstall mxnet, then '
                       "pip install -c constraints.txt -e '.[gpu]' (or make MXNET_EXTRA=gpu).")
    bad = [gpu for gpu in gpus if not gpu.supported]
    if bad:
        raise GPUError('\n'.join(unsupported_message(gpu) for gpu in bad))
    return gpus


def describe_gpus(gpus):
    return '; '.join(gpu.describe() for gpu in gpus) if gpus else 'no GPU'
