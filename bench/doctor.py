"""`python -m bench.doctor`: what this machine will do with a sweep, checked before one.

Prints one line per check (ok, warn or FAIL, what was found, and the fix) and exits
1 when a check fails: Python; each backend's framework and its build; the NVIDIA
driver and its CUDA version; the CUDA libraries loaded for MXNet; each GPU and
which backend can use it; a forward and backward pass of every attention on every
usable device, against the CPU (and, with both frameworks here, Gluon against
PyTorch on the same weights); a mixed-precision step on each usable GPU; the fused
CPU kernels; the threads a trial gets; what Ray sees. On a machine without a GPU it
checks the CPU path.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import mxnet as mx
    import numpy as np
    import torch

    from bench.gpu import GPU
    from models.registry import AttentionSpec

OK, WARN, FAIL = 'ok', 'warn', 'FAIL'
CHECK_MODEL = 'cifar_resnet8_v1'
# Devices agree to this relative error in float32 (TF32 and cuDNN's algorithms move
# GPU results by more than CPU rounding does).
DEVICE_RTOL = 2e-2


@dataclass
class Check:
    name: str
    status: str
    found: str
    fix: str = ''


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info < (3, 9):
        return Check('python', FAIL, version, 'use Python 3.9 or newer')
    note = '' if sys.version_info < (3, 12) else ' (MXNet 1.9 has no wheels here: torch only)'
    return Check('python', OK, version + note)


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def check_mxnet() -> Check:
    if not installed('mxnet'):
        return Check(
            'gluon backend',
            WARN,
            'MXNet not installed',
            "pip install -c constraints.txt -e '.[cpu]' (or '.[gpu]') for the reference backend",
        )
    from models.cuda_runtime import gpu_build_installed

    build = 'GPU build (mxnet-cu112)' if gpu_build_installed() else 'CPU build (mxnet)'
    try:
        import mxnet
    except (ImportError, OSError) as error:
        return Check(
            'gluon backend',
            FAIL,
            f'{build} does not load: {error}',
            'on a machine without the NVIDIA driver, install the CPU build: pip '
            "uninstall mxnet-cu112; pip install -c constraints.txt -e '.[cpu]'",
        )
    return Check('gluon backend', OK, f'MXNet {mxnet.__version__}, {build}')


def check_torch() -> Check:
    if not installed('torch'):
        return Check(
            'torch backend',
            WARN,
            'PyTorch not installed',
            "pip install -e '.[torch]' for the backend that runs on Hopper/Blackwell",
        )
    import torch

    cuda = f'CUDA {torch.version.cuda}' if torch.version.cuda else 'CPU build'
    return Check('torch backend', OK, f'PyTorch {torch.__version__}, {cuda}')


def check_driver(gpus: Sequence[GPU], driver_cuda: tuple[int, int] | None) -> Check:
    from bench.gpu import gluon_fusion_setting

    if not gpus:
        return Check('NVIDIA driver', OK, 'no NVIDIA GPU or driver: trials run on CPUs')
    if driver_cuda is None:
        return Check(
            'NVIDIA driver',
            WARN,
            'GPUs listed but the driver CUDA version unread',
            'check nvidia-smi',
        )
    _, fusion = gluon_fusion_setting(driver_cuda, environ={})
    text = f'supports CUDA {driver_cuda[0]}.{driver_cuda[1]}; gluon operator fusion {fusion}'
    if driver_cuda < (11, 0):
        return Check(
            'NVIDIA driver',
            FAIL,
            text,
            'install a driver for CUDA 11 or newer (R520+ for the gluon backend at full speed)',
        )
    return Check(
        'NVIDIA driver',
        OK if fusion == 'on' else WARN,
        text,
        '' if fusion == 'on' else 'a driver R520 or newer lets MXNet fuse operators',
    )


def check_cuda_libraries() -> Check:
    from models import cuda_runtime

    loaded = list(cuda_runtime._loaded)
    if not cuda_runtime.gpu_build_installed():
        return Check('CUDA libraries', OK, 'none needed (no MXNet GPU build)')
    if not loaded:
        return Check(
            'CUDA libraries',
            WARN,
            'none of the nvidia-*-cu11 libraries loaded',
            "pip install -c constraints.txt -e '.[gpu]', or a system CUDA 11 toolkit",
        )
    names = sorted({path.rsplit('/', 1)[-1] for path in loaded})
    return Check('CUDA libraries', OK, ', '.join(names))


def check_gpus(
    gpus: Sequence[GPU], mxnet_gpu_build: bool, torch_arches: Sequence[str] | None
) -> list[Check]:
    """One Check per GPU: which backend can use it."""
    from bench.gpu import torch_supports

    checks = []
    for gpu in gpus:
        if gpu.problem:
            checks.append(
                Check(
                    f'GPU {gpu.index}',
                    WARN,
                    f'unreadable ({gpu.problem})',
                    'another job holds it (SLURM, cgroups), or check permissions',
                )
            )
            continue
        users = []
        if gpu.supported and mxnet_gpu_build:
            users.append('gluon')
        if torch_arches and torch_supports(gpu.capability, torch_arches):
            users.append('torch')
        text = f'{gpu.name}, compute capability {gpu.capability[0]}.{gpu.capability[1]}: ' + (
            f'used by {" and ".join(users)}' if users else 'no installed backend can use it'
        )
        fix = (
            ''
            if users
            else (
                'install a CUDA build of PyTorch (the torch extra)'
                if not gpu.supported
                else "install the gluon GPU build ('.[gpu]') or a CUDA PyTorch"
            )
        )
        checks.append(Check(f'GPU {gpu.index}', OK if users else FAIL, text, fix))
    return checks


def _torch_pass(
    attention: str, device: str | torch.device, state: dict[str, torch.Tensor] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, torch.Tensor]]:
    """(output, input gradient, state_dict) of one torch network's forward and backward."""
    import torch

    from models.pytorch import get_model

    torch.manual_seed(0)
    net = get_model(CHECK_MODEL, attention, seed=0)
    if state is not None:
        net.load_state_dict(state)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net = net.to(device)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)).to(device)
    x.requires_grad_(True)
    out = net(x)
    out.square().sum().backward()
    return out.detach().cpu().numpy(), x.grad.cpu().numpy(), state


def attentions_of(*backends: str) -> list[str]:
    """The registered attentions that have a module in every one of `backends`, each of
    which imports (check_attentions reports those that do not)."""
    from models.registry import registered

    return [
        name
        for name, spec in registered().items()
        if all(b in spec.backends for b in backends) and not _import_problems(spec, backends)
    ]


def _import_problems(spec: AttentionSpec, backends: Sequence[str]) -> list[str]:
    """Why the spec's modules of `backends` do not import (built-ins are the package's own,
    so only an installed package's modules are tried)."""
    from models.registry import UnsupportedBackendError

    if spec.origin == 'built-in':
        return []
    problems = []
    for backend in backends:
        try:
            spec.module_class(backend)
        except UnsupportedBackendError as error:
            problems.append(str(error))
    return problems


def check_attentions() -> Check:
    """The attentions this installation knows, and any installed package's that it
    could not register (entry point group models.registry.ENTRY_POINT_GROUP)."""
    from models.registry import ENTRY_POINT_GROUP, plugin_problems, registered

    specs = registered()
    found = ', '.join(
        name + ('' if spec.origin == 'built-in' else f' ({spec.origin})')
        for name, spec in specs.items()
    )
    frameworks = [b for b in ('gluon', 'torch') if installed('mxnet' if b == 'gluon' else b)]
    problems = list(plugin_problems()) + [
        problem
        for spec in specs.values()
        for problem in _import_problems(spec, [b for b in spec.backends if b in frameworks])
    ]
    if problems:
        return Check(
            'attentions',
            WARN,
            f'{found}; not usable: ' + '; '.join(problems),
            f'fix or uninstall the package named (entry point group {ENTRY_POINT_GROUP})',
        )
    return Check('attentions', OK, found)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    import numpy as np

    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def check_torch_devices(devices: Sequence[str | torch.device]) -> list[Check]:
    """Every attention's forward and backward on each torch GPU against the CPU; with no
    GPU, on the CPU alone (finite numbers)."""
    import numpy as np

    checks = []
    for attention in attentions_of('torch'):
        reference = _torch_pass(attention, 'cpu')
        if not devices:
            finite = all(np.isfinite(a).all() for a in reference[:2])
            checks.append(
                Check(
                    f'torch {attention} on cpu',
                    OK if finite else FAIL,
                    'forward+backward ' + ('finite' if finite else 'NOT finite'),
                )
            )
        for device in devices:
            out, grad, _ = _torch_pass(attention, device, reference[2])
            checks.append(
                _against_cpu(f'torch {attention} on {device}', (out, grad), reference[:2])
            )
    return checks


def _against_cpu(
    name: str, results: Sequence[np.ndarray], reference: Sequence[np.ndarray]
) -> Check:
    """A device's (output, input gradient) against the CPU's, as one Check."""
    worst = max(_relative(ours, cpu) for ours, cpu in zip(results, reference))
    status = OK if worst <= DEVICE_RTOL else FAIL
    return Check(
        name,
        status,
        f'forward+backward within {worst:.1e} of the CPU',
        '' if status == OK else "report this with bench.doctor's output",
    )


def _gluon_pass(
    net: mx.gluon.Block, x: np.ndarray, ctx: mx.Context
) -> tuple[np.ndarray, np.ndarray]:
    import mxnet as mx
    from mxnet import autograd

    data = mx.nd.array(x, ctx=ctx)
    data.attach_grad()
    with autograd.record():
        out = net(data)
        loss = out.square().sum()
    loss.backward()
    return out.asnumpy(), data.grad.asnumpy()


def check_gluon_devices(contexts: Sequence[mx.Context]) -> list[Check]:
    """Every attention's forward and backward on each MXNet GPU context against the CPU."""
    import mxnet as mx
    import numpy as np

    from models import get_model

    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    checks = []
    for attention in attentions_of('gluon'):
        net = get_model(CHECK_MODEL, attention)
        net.initialize(mx.init.Xavier(), ctx=[mx.cpu()] + list(contexts))
        reference = _gluon_pass(net, x, mx.cpu())
        for ctx in contexts:
            checks.append(
                _against_cpu(f'gluon {attention} on {ctx}', _gluon_pass(net, x, ctx), reference)
            )
    return checks


def check_gluon_against_torch() -> Check:
    """On the CPU, with both frameworks: the same weights give the same outputs."""
    import mxnet as mx
    import numpy as np
    import torch

    from models import get_model
    from models.pytorch import get_model as torch_model
    from models.pytorch import load_gluon_parameters

    worst = 0.0
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)
    for attention in attentions_of('gluon', 'torch'):
        net = get_model(CHECK_MODEL, attention)
        net.initialize(mx.init.Xavier())
        reference = net(mx.nd.array(x)).asnumpy()
        twin = load_gluon_parameters(torch_model(CHECK_MODEL, attention), net).eval()
        with torch.no_grad():
            worst = max(worst, _relative(twin(torch.from_numpy(x)).numpy(), reference))
    status = OK if worst <= 1e-4 else FAIL
    return Check(
        'gluon = torch (CPU)',
        status,
        f'every attention, same weights: outputs within {worst:.1e}',
        '' if status == OK else "report this with bench.doctor's output",
    )


def check_torch_amp(devices: Sequence[str | torch.device]) -> list[Check]:
    import torch

    checks = []
    for device in devices:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        from models.pytorch import get_model

        net = get_model(CHECK_MODEL, 'se', seed=0).to(device)
        with torch.autocast('cuda', dtype=dtype):
            loss = net(torch.randn(8, 3, 32, 32, device=device)).float().square().mean()
        loss.backward()
        finite = all(torch.isfinite(p.grad).all() for p in net.parameters())
        checks.append(
            Check(
                f'torch AMP on {device}',
                OK if finite else FAIL,
                f'one {dtype} autocast step, gradients {"finite" if finite else "not finite"}',
            )
        )
    return checks


def _kernel_check(name: str, status: tuple[bool, str], instead: str) -> Check:
    loaded, detail = status
    # Other reasons (an unsafe cache folder, a failed compile) say their own fix.
    no_compiler = not loaded and 'no C++ compiler' in detail
    return Check(
        name,
        OK if loaded else WARN,
        detail if loaded else f'not used ({detail}): {instead}',
        'install g++ so the kernels compile' if no_compiler else '',
    )


def check_kernels() -> list[Check]:
    """The fused CPU kernels of each installed backend: MXNet's extension (SE, ECA, GCT)
    and the torch backend's (every attention's statistics and backward, SimAM whole)."""
    checks = []
    if installed('mxnet'):
        from models.kernels import kernel_status

        checks.append(
            _kernel_check('fused CPU kernels', kernel_status(), "MXNet's slower operators")
        )
    if installed('torch'):
        from models.kernels.torch_ops import torch_kernel_status

        checks.append(
            _kernel_check(
                'fused torch CPU kernels',
                torch_kernel_status(),
                "the torch attentions' slower PyTorch operators",
            )
        )
    return checks or [Check('fused CPU kernels', OK, 'not needed (no MXNet, no torch)')]


def check_threads() -> Check:
    import os

    from bench.trial.threads import available_cpus

    cpus = available_cpus()
    chosen = os.environ.get('OMP_NUM_THREADS')
    return Check(
        'threads',
        OK,
        f'{cpus} cores for this process; a trial gets '
        f'cpus_per_trial threads (OMP_NUM_THREADS here: {chosen or "unset"})',
    )


def ray_resources() -> dict[str, float]:
    import ray

    from bench.sweep.cluster import quiet_ray_warnings, start_ray

    quiet_ray_warnings()  # as a sweep does: Ray's start-up notices are not findings
    start_ray(num_cpus=None)
    try:
        return dict(ray.cluster_resources())
    finally:
        ray.shutdown()


def check_ray(resources: Mapping[str, float], gpus: Sequence[GPU]) -> Check:
    text = f'{resources.get("CPU", 0):g} CPUs, {resources.get("GPU", 0):g} GPUs'
    if gpus and not resources.get('GPU'):
        return Check(
            'ray',
            WARN,
            text + ' (NVML lists GPUs that Ray does not see)',
            'check CUDA_VISIBLE_DEVICES and the driver',
        )
    return Check('ray', OK, text)


def run_checks(
    with_ray: bool = True,
    gpus: Sequence[GPU] | None = None,
    driver_cuda: tuple[int, int] | None | Literal[False] = False,
    resources: Mapping[str, float] | None = None,
    gluon_contexts: Sequence[mx.Context] | None = None,
) -> list[Check]:
    """Every check, in order; `gpus`, `driver_cuda`, `resources` and `gluon_contexts` fake
    what NVML, Ray and MXNet would report (tests)."""
    from bench.gpu import driver_cuda_version, physical_gpus, torch_arch_list
    from models.cuda_runtime import gpu_build_installed

    gpus = physical_gpus() if gpus is None else gpus
    driver_cuda = driver_cuda_version() if driver_cuda is False else driver_cuda
    checks = [
        check_python(),
        check_mxnet(),
        check_torch(),
        check_driver(gpus, driver_cuda),
        check_cuda_libraries(),
        check_attentions(),
    ]
    mxnet_gpu = installed('mxnet') and gpu_build_installed()
    torch_arches = torch_arch_list() if installed('torch') else None
    checks += check_gpus(gpus, mxnet_gpu, torch_arches)
    if mxnet_gpu and checks[1].status == OK:
        import mxnet as mx

        usable = [gpu for gpu in gpus if gpu.supported and not gpu.problem]
        contexts = (
            gluon_contexts
            if gluon_contexts is not None
            else [mx.gpu(i) for i in range(min(len(usable), mx.context.num_gpus()))]
        )
        checks += check_gluon_devices(contexts)
    if installed('torch'):
        import torch

        devices = ['cuda:0'] if torch_arches and torch.cuda.is_available() and gpus else []
        checks += check_torch_devices(devices)
        checks += check_torch_amp(devices)
        if installed('mxnet') and checks[1].status == OK:
            checks.append(check_gluon_against_torch())
    checks += [*check_kernels(), check_threads()]
    if with_ray:
        checks.append(check_ray(resources if resources is not None else ray_resources(), gpus))
    return checks


def format_checks(checks: Sequence[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for check in checks:
        lines.append(f'{check.status:<4}  {check.name:<{width}}  {check.found}')
        if check.fix:
            lines.append(f'{"":<4}  {"":<{width}}  fix: {check.fix}')
    failed = sum(1 for c in checks if c.status == FAIL)
    lines.append(
        f'{len(checks)} checks: {failed} failed, '
        f'{sum(1 for c in checks if c.status == WARN)} warnings'
    )
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.trial.threads import use_cpus

    use_cpus()  # before MXNet is imported, as a trial does
    parser = argparse.ArgumentParser(
        prog='python -m bench.doctor',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('--no-ray', action='store_true', help='skip starting Ray')
    args = parser.parse_args(argv)
    checks = run_checks(with_ray=not args.no_ray)
    print(format_checks(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == '__main__':
    sys.exit(main())
