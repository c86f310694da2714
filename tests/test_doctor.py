"""bench.doctor: every check on this CPU machine, and the GPU side with NVML, MXNet's GPU
context and Ray's resources faked."""

import pytest

import bench.gpu
from bench import doctor
from bench.gpu import GPU
from models import cuda_runtime


def by_name(checks):
    return {check.name: check for check in checks}


def test_on_this_cpu_machine_every_check_passes(capsys):
    assert doctor.main(['--no-ray']) == 0
    out = capsys.readouterr().out
    for line in (
        'gluon backend',
        'torch backend',
        'NVIDIA driver',
        'torch gct on cpu',
        'gluon = torch (CPU)',
        'fused CPU kernels',
        'fused torch CPU kernels',
        'threads',
    ):
        assert line in out
    assert 'checks: 0 failed' in out


def test_a_hopper_card_is_the_torch_backends_and_an_old_driver_a_warning(monkeypatch):
    pytest.importorskip('torch')
    monkeypatch.setattr(cuda_runtime, 'gpu_build_installed', lambda: True)
    monkeypatch.setattr(bench.gpu, 'torch_arch_list', lambda: ['sm_80', 'sm_90'])
    cards = [
        GPU(0, 'NVIDIA H100 80GB HBM3', (9, 0)),
        GPU(1, 'NVIDIA A100', (8, 0)),
        GPU(2, '?', None, problem='no permission'),
    ]
    import mxnet as mx

    checks = by_name(
        doctor.run_checks(
            with_ray=True,
            gpus=cards,
            driver_cuda=(11, 4),
            resources={'CPU': 16, 'GPU': 0},
            gluon_contexts=[mx.cpu(0)],
        )
    )
    assert checks['GPU 0'].status == doctor.OK and 'used by torch' in checks['GPU 0'].found
    assert 'used by gluon and torch' in checks['GPU 1'].found
    assert checks['GPU 2'].status == doctor.WARN and 'no permission' in checks['GPU 2'].found
    driver = checks['NVIDIA driver']
    assert driver.status == doctor.WARN and 'fusion off' in driver.found
    assert 'R520' in driver.fix
    # The forward/backward comparison runs on each GPU context MXNet offers (faked here).
    assert checks['gluon eca on cpu(0)'].status == doctor.OK
    assert checks['ray'].status == doctor.WARN and 'Ray does not see' in checks['ray'].found


def test_a_card_no_installed_backend_can_use_fails_with_the_fix(monkeypatch, capsys):
    monkeypatch.setattr(cuda_runtime, 'gpu_build_installed', lambda: False)
    monkeypatch.setattr(bench.gpu, 'torch_arch_list', lambda: None)  # CPU PyTorch
    checks = doctor.run_checks(
        with_ray=False, gpus=[GPU(0, 'NVIDIA H100', (9, 0))], driver_cuda=(12, 4)
    )
    card = by_name(checks)['GPU 0']
    assert card.status == doctor.FAIL and 'no installed backend can use it' in card.found
    assert card.fix == 'install a CUDA build of PyTorch (the torch extra)'
    text = doctor.format_checks(checks)
    assert 'fix: install a CUDA build of PyTorch' in text and '1 failed' in text
    monkeypatch.setattr(doctor, 'run_checks', lambda with_ray: checks)
    assert doctor.main(['--no-ray']) == 1


def test_kernels_not_used_get_the_fix_their_reason_needs():
    """A missing compiler is fixed by installing one; an unsafe cache folder by what its
    own message says (the doctor told users to install g++ where g++ was installed)."""
    missing = doctor._kernel_check(
        'fused CPU kernels', (False, "no C++ compiler 'g++' on PATH"), 'slower'
    )
    assert missing.status == doctor.WARN and missing.fix == 'install g++ so the kernels compile'
    unsafe = doctor._kernel_check(
        'fused CPU kernels',
        (False, '/tmp/c is writable by others (mode 777); use a cache folder of your own'),
        'slower',
    )
    assert unsafe.status == doctor.WARN and 'writable by others' in unsafe.found
    assert unsafe.fix == ''
    assert doctor._kernel_check('fused CPU kernels', (True, 'avx2'), 'slower').fix == ''
