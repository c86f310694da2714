"""The GPU path, tested on CPU: library preload, card checks, Ray's GPU pinning and packing."""

import os
import subprocess
import time

import pytest

from bench.gpu import GPU, GPUError, check_gpus, unsupported_message, visible_gpus
from bench.trial.gluon.devices import trial_device_plan
from models import cuda_runtime


def _stub_library(path):
    """A real (empty) shared object, so loading it goes through the dynamic loader."""
    source = path.with_suffix('.c')
    source.write_text('int stub_symbol(void) { return 1; }\n')
    subprocess.run(['cc', '-shared', '-fPIC', '-o', str(path), str(source)], check=True)
    source.unlink()


@pytest.fixture
def fake_nvidia_tree(tmp_path):
    site = tmp_path / 'site-packages'
    for package, names in cuda_runtime.LOAD_ORDER:
        lib = site / 'nvidia' / package / 'lib'
        lib.mkdir(parents=True)
        for name in names:
            _stub_library(lib / name.replace('*', '8'))
    (site / 'nvidia' / 'unrelated' / 'lib').mkdir(parents=True)
    return site


def test_preload_loads_every_library_in_dependency_order(fake_nvidia_tree, monkeypatch):
    monkeypatch.setattr(cuda_runtime, '_loaded', [])
    monkeypatch.setattr(cuda_runtime, 'gpu_build_installed', lambda: True)
    order = []

    def load(path):
        import ctypes

        handle = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)  # really loadable
        assert handle.stub_symbol() == 1
        order.append(os.path.basename(path))

    loaded = cuda_runtime.preload_cuda_libraries([fake_nvidia_tree], load=load)
    expected = [name.replace('*', '8') for _, names in cuda_runtime.LOAD_ORDER for name in names]
    assert order == expected and len(loaded) == len(expected)
    assert order.index('libcudart.so.11.0') < order.index('libcudnn.so.8')
    assert order.index('libcublasLt.so.11') < order.index('libcublas.so.11')
    # A second call loads nothing again.
    assert cuda_runtime.preload_cuda_libraries([fake_nvidia_tree], load=load) == []


def test_preload_skips_what_is_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_runtime, '_loaded', [])
    lib = tmp_path / 'nvidia' / 'cuda_runtime' / 'lib'
    lib.mkdir(parents=True)
    _stub_library(lib / 'libcudart.so.11.0')
    loaded = cuda_runtime.preload_cuda_libraries([tmp_path], load=lambda path: None, force=True)
    assert [os.path.basename(p) for p in loaded] == ['libcudart.so.11.0']


def test_preload_does_nothing_on_a_cpu_install(fake_nvidia_tree, monkeypatch):
    monkeypatch.setattr(cuda_runtime, '_loaded', [])
    # A CPU install (`mxnet`), faked so that the test holds with the gpu extra too.
    monkeypatch.setattr(cuda_runtime, 'gpu_build_installed', lambda: False)
    calls = []
    assert cuda_runtime.preload_cuda_libraries([fake_nvidia_tree], load=calls.append) == []
    assert calls == []


@pytest.mark.parametrize(
    'capability,name', [((9, 0), 'NVIDIA H100 80GB HBM3'), ((10, 0), 'NVIDIA B200')]
)
def test_hopper_and_blackwell_are_refused_with_one_clear_message(capability, name):
    card = GPU(0, name, capability)
    with pytest.raises(GPUError) as error:
        check_gpus(1, gpus=[GPU(1, 'Supported Card X', (8, 0)), card], gpu_build=True)
    message = str(error.value)
    assert name in message and f'{capability[0]}.{capability[1]}' in message
    assert '5.0 to 8.9' in message and 'gpus_per_trial: 0' in message
    assert 'Supported Card X' not in message
    assert message == unsupported_message(card)


@pytest.mark.parametrize('capability', [(5, 0), (6, 1), (7, 0), (7, 5), (8, 0), (8, 6), (8, 9)])
def test_maxwell_to_ada_are_accepted(capability):
    cards = [GPU(0, 'card', capability)]
    assert check_gpus(0.5, gpus=cards, gpu_build=True) == cards


def test_missing_driver_and_cpu_build_get_their_own_messages():
    with pytest.raises(GPUError, match='no NVIDIA driver or GPU was found'):
        check_gpus(1, gpus=[], gpu_build=True)
    with pytest.raises(GPUError, match="CPU build.*pip install -c constraints.txt -e '.\\[gpu\\]'"):
        check_gpus(1, gpus=[GPU(0, 'NVIDIA A100', (8, 0))], gpu_build=False)
    assert check_gpus(0, gpus=[], gpu_build=False) == []


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    cards = [GPU(i, f'card{i}', (8, 0)) for i in range(4)]
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    assert visible_gpus(cards) == cards
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '3')
    assert visible_gpus(cards) == [cards[3]]
    assert visible_gpus(cards, '2,0') == [cards[2], cards[0]]
    assert visible_gpus(cards, '') == []
    assert visible_gpus(cards, '1,7,2') == [cards[1]]


def test_trial_device_plan_maps_what_ray_assigned_to_gpu_0_to_k():
    fake = lambda kind, index: (kind, index)  # noqa: E731
    assert trial_device_plan(0, [], fake) == [('cpu', 0)]
    assert trial_device_plan(1, ['3'], fake) == [('gpu', 0)]
    assert trial_device_plan(0.5, ['1'], fake) == [('gpu', 0)]
    assert trial_device_plan(2, ['4', '6'], fake) == [('gpu', 0), ('gpu', 1)]
    assert trial_device_plan(1, [], fake) == [('cpu', 0)]


def _fake_gpu_trial(config):
    """What run_trial does with its devices, with MXNet's context creation faked."""
    import ray
    from ray import tune

    from bench.trial.gluon.devices import trial_device_plan

    started = time.time()
    contexts = trial_device_plan(
        config['gpus'], ray.get_gpu_ids(), make_context=lambda kind, index: f'{kind}({index})'
    )
    time.sleep(config['hold'])
    tune.report(
        {
            'visible': os.environ.get('CUDA_VISIBLE_DEVICES'),
            'contexts': contexts,
            'started': started,
            'ended': time.time(),
        }
    )


def _run_fake_gpu_trials(tmp_path, gpus_per_trial, hold):
    """One trial per entry of gpus_per_trial, each asking for that share of a card."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(_fake_gpu_trial, lambda config: {'cpu': 0.5, 'gpu': config['gpus']}),
        param_space={'gpus': tune.grid_search(list(gpus_per_trial)), 'hold': hold},
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    return [r.metrics for r in tuner.fit()]


def _max_overlap(results):
    events = sorted([(r['started'], 1) for r in results] + [(r['ended'], -1) for r in results])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.slow
def test_ray_pins_fake_gpus_and_packs_fractional_trials(tmp_path):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address='local', num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # One Tuner (starting one is most of this test's time): a whole card for one
        # trial, and two halves packed onto the other card.
        results = _run_fake_gpu_trials(tmp_path, gpus_per_trial=[1, 0.5, 0.5], hold=4)
        whole = [r['visible'] for r in results if r['config']['gpus'] == 1]
        halves = [r['visible'] for r in results if r['config']['gpus'] == 0.5]
        assert len(whole) == 1 and whole[0] in ('0', '1')
        assert halves == [{'0': '1', '1': '0'}[whole[0]]] * 2
        assert all(r['contexts'] == ['gpu(0)'] for r in results)
        assert _max_overlap(results) == 3  # all three at once on two cards
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_sweep_asking_for_gpus_is_stopped_before_any_trial_without_a_driver(tmp_path):
    """Ray offers two (fake) GPUs, but this machine has no NVIDIA driver: the check on
    each GPU node refuses with its message before Ray starts a single trial."""
    import ray

    from bench.store import ResultsStore
    from bench.sweep.driver import run_sweep
    from bench.sweep.plan import load_sweep_data, plan

    from .sweep_helpers import loaded, write_sweep, write_tiny_data

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address='local', num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        path = write_sweep(
            tmp_path,
            write_tiny_data(tmp_path / 'cifar'),
            extra={'resources': {'cpus_per_trial': 1, 'gpus_per_trial': 0.5, 'max_failures': 0}},
        )
        sweep = loaded(path)
        data = load_sweep_data(sweep)
        with pytest.raises(GPUError, match='no NVIDIA driver or GPU was found'):
            run_sweep(sweep, data, plan(sweep, data.identity.to_dict()), progress=lambda _: None)
        store = ResultsStore(sweep.store_dir)
        assert store.trial_ids() and all(store.read_history(t) == [] for t in store.trial_ids())
    finally:
        ray.shutdown()


def test_a_card_no_mxnet_build_supports_is_refused_before_the_build_is_discussed():
    """A Hopper user with the CPU build is not sent to install the 2.5 GB GPU build."""
    with pytest.raises(GPUError) as error:
        check_gpus(1, gpus=[GPU(0, 'NVIDIA H100 80GB HBM3', (9, 0))], gpu_build=False)
    assert 'compute capability 9.0' in str(error.value) and 'CPU build' not in str(error.value)


class FakeNVML:
    """libnvidia-ml as ctypes sees it: functions that fill their out-arguments and
    return NVML's codes. Cards: index -> dict(name, cap, uuid, migs, denied)."""

    def __init__(self, cards):
        self.cards = cards

    @staticmethod
    def _set(pointer, value):
        pointer._obj.value = value

    def nvmlInit_v2(self):
        return 0

    def nvmlShutdown(self):
        return 0

    def nvmlDeviceGetCount_v2(self, count):
        self._set(count, len(self.cards))
        return 0

    def nvmlDeviceGetHandleByIndex_v2(self, index, handle):
        if self.cards[index].get('denied'):
            return 4  # NVML_ERROR_NO_PERMISSION
        self._set(handle, 1000 + index)
        return 0

    def _card(self, handle):
        return self.cards[handle.value - 1000] if handle.value >= 1000 else None

    def nvmlDeviceGetName(self, handle, buffer, size):
        buffer.value = self._card(handle)['name'].encode()
        return 0

    def nvmlDeviceGetUUID(self, handle, buffer, size):
        if handle.value >= 5000:  # a MIG instance
            card, slot = divmod(handle.value - 5000, 10)
            buffer.value = self.cards[card]['migs'][slot].encode()
        else:
            buffer.value = self._card(handle)['uuid'].encode()
        return 0

    def nvmlDeviceGetCudaComputeCapability(self, handle, major, minor):
        self._set(major, self._card(handle)['cap'][0])
        self._set(minor, self._card(handle)['cap'][1])
        return 0

    def nvmlDeviceGetMaxMigDeviceCount(self, handle, count):
        migs = self._card(handle).get('migs')
        if migs is None:
            return 3  # NVML_ERROR_NOT_SUPPORTED
        self._set(count, len(migs))
        return 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle, slot, mig):
        self._set(mig, 5000 + 10 * (handle.value - 1000) + slot)
        return 0

    driver_cuda = 12020  # CUDA 12.2 (an R535 driver)

    def nvmlSystemGetCudaDriverVersion_v2(self, version):
        self._set(version, self.driver_cuda)
        return 0


def test_nvml_return_codes_uuids_and_mig_instances_are_read():
    from bench.gpu import _nvml_gpus, describe_gpus

    nvml = FakeNVML(
        {
            0: {'denied': True},
            1: {'name': 'Tesla T4', 'cap': (7, 5), 'uuid': 'GPU-1111-aaaa'},
            2: {
                'name': 'NVIDIA A100',
                'cap': (8, 0),
                'uuid': 'GPU-2222-bbbb',
                'migs': ['MIG-9999-x', 'MIG-8888-y'],
            },
        }
    )
    cards = _nvml_gpus(nvml)
    assert cards[0] == GPU(0, '?', None, problem='no permission')
    assert cards[1] == GPU(1, 'Tesla T4', (7, 5), 'GPU-1111-aaaa')
    assert cards[2].migs == ('MIG-9999-x', 'MIG-8888-y')
    assert 'GPU 0: unreadable (no permission)' in describe_gpus(cards)
    # The card this job may not read is another job's: the readable ones are checked.
    assert check_gpus(1, gpus=cards, gpu_build=True) == cards[1:]
    with pytest.raises(
        GPUError,
        match=r'NVML could not read any GPU .*GPU 0: no permission'
        r'.*SLURM',
    ):
        check_gpus(1, gpus=cards[:1], gpu_build=True)
    # CUDA_VISIBLE_DEVICES by GPU UUID (or a unique start of one) and by MIG UUID.
    assert visible_gpus(cards, 'GPU-2222-bbbb,GPU-1111') == [cards[2], cards[1]]
    assert visible_gpus(cards, 'MIG-8888-y') == [cards[2]]
    assert visible_gpus(cards, 'GPU-') == []  # not unique: CUDA stops there
    assert visible_gpus(cards, '1,GPU-nope,2') == [cards[1]]


def test_the_torch_backend_is_checked_against_its_own_build():
    """The gluon backend stops at sm_89; the torch backend runs wherever its build has code
    (machine code of the card's major version at or below its minor, or PTX below it)."""
    from bench.gpu import torch_supports

    hopper = GPU(0, 'NVIDIA H100 80GB HBM3', (9, 0))
    blackwell = GPU(1, 'NVIDIA B200', (10, 0))
    ada = GPU(2, 'NVIDIA L4', (8, 9))
    build = ['sm_50', 'sm_60', 'sm_70', 'sm_75', 'sm_80', 'sm_86', 'sm_90']
    assert torch_supports((9, 0), build) and torch_supports((8, 9), build)
    assert not torch_supports((10, 0), build)
    assert torch_supports((10, 0), build + ['compute_90'])  # PTX, compiled by the driver
    assert not torch_supports((9, 0), ['sm_90a'])  # arch-specific code only
    assert check_gpus(1, gpus=[hopper, ada], backend='torch', torch_arches=build) == [hopper, ada]
    with pytest.raises(
        GPUError,
        match=r'B200 \(GPU 1\) has compute capability 10.0 \(sm_100\), '
        r'and the installed PyTorch build carries code for '
        r'sm_50 .* sm_90 only',
    ):
        check_gpus(1, gpus=[hopper, blackwell], backend='torch', torch_arches=build)
    with pytest.raises(GPUError, match='PyTorch is a build without CUDA'):
        check_gpus(0.5, gpus=[hopper], backend='torch', torch_arches=None)
    # The gluon backend refuses Hopper, and says which backend runs there.
    with pytest.raises(
        GPUError,
        match=r'Train with the torch backend, which runs on it \(recipe: \{backend: '
        r'torch\};',
    ):
        check_gpus(1, gpus=[hopper], gpu_build=True)


def test_old_drivers_turn_mxnet_fusion_off_and_say_so():
    """NVRTC 11.8's PTX needs a driver for CUDA 11.8 (R520); R470 (CUDA 11.4) refuses it
    at the first forward pass, so the gluon trial runs without runtime fusion there."""
    from bench.gpu import driver_cuda_version, gluon_fusion_setting

    nvml = FakeNVML({})
    assert driver_cuda_version(nvml) == (12, 2)
    nvml.driver_cuda = 11040
    assert driver_cuda_version(nvml) == (11, 4)
    environ = {}
    on, why = gluon_fusion_setting((11, 4), environ)
    assert not on and environ == {'MXNET_USE_FUSION': '0'}
    assert why.startswith('off: the driver supports CUDA 11.4, older than the 11.8 (R520)')
    environ = {}
    assert gluon_fusion_setting((11, 8), environ) == (True, 'on') and environ == {}
    assert gluon_fusion_setting(None, environ) == (True, 'on')
    assert gluon_fusion_setting((12, 2), {'MXNET_USE_FUSION': '0'}) == (
        False,
        'MXNET_USE_FUSION=0 set by the user',
    )


def test_a_framework_that_cannot_load_is_one_message(tmp_path, monkeypatch):
    """The GPU build of MXNet on a machine without the driver dies at import on
    libcuda.so.1; the trial says what that is and what to install."""
    from bench.trial import loop

    (tmp_path / 'broken_backend.py').write_text(
        "raise OSError('libcuda.so.1: cannot open shared object file')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(loop.BACKENDS, 'gluon', 'broken_backend')
    with pytest.raises(
        loop.BackendUnavailable,
        match=r'backend gluon: mxnet is installed but '
        r'cannot be loaded here \(libcuda.so.1: cannot open shared object '
        r'file\). This is the GPU build on a machine without the NVIDIA driver',
    ):
        loop.get_backend('gluon')


def test_the_tools_check_the_cards_before_the_framework_touches_one(
    tiny_cifar_root, monkeypatch, capsys
):
    """bench.train and bench.benchmark on a Hopper card with the gluon backend: the card
    check's message, not MXNet's "no kernel image is available"."""
    import bench.gpu
    from bench.benchmark.cli import main as benchmark_main
    from bench.train import main as train_main
    from models import cuda_runtime

    monkeypatch.setattr(
        bench.gpu, 'physical_gpus', lambda: [GPU(0, 'NVIDIA H100 80GB HBM3', (9, 0))]
    )
    monkeypatch.setattr(cuda_runtime, 'gpu_build_installed', lambda: True)
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES', raising=False)
    for main, extra in ((train_main, ['--data-root', str(tiny_cifar_root)]), (benchmark_main, [])):
        with pytest.raises(SystemExit) as exit_code:
            main(['--num-gpus', '1', *extra])
        assert exit_code.value.code == 2
        err = capsys.readouterr().err
        assert 'NVIDIA H100 80GB HBM3 (GPU 0) has compute capability 9.0' in err
        assert 'Train with the torch backend' in err
        # The flags the tools take, not the sweep file's settings.
        assert '(--backend torch); or on the CPU (pass --num-gpus 0)' in err
        assert 'gpus_per_trial' not in err and 'recipe:' not in err
    # The default (every visible GPU) with MXNet's CPU build trains on the CPU as before.
    monkeypatch.setattr(cuda_runtime, 'gpu_build_installed', lambda: False)
    assert bench.gpu.check_local_gpus(None, 'gluon') is None


def test_tf32_is_a_recipe_option_recorded_with_each_trial():
    """On by default (MXNet's default: cells from Ampere and newer differ from older cards'
    in the last digits), off as NVIDIA_TF32_OVERRIDE=0 before CUDA starts; an environment
    that turns it off behind the recipe's back is refused."""
    from bench.gpu import apply_tf32
    from bench.trial.recipe import Recipe

    assert 'tf32' not in Recipe().to_dict()  # earlier ids unchanged
    assert Recipe(tf32=False).to_dict()['tf32'] is False
    environ = {}
    assert apply_tf32(Recipe(tf32=False), environ) == 'off (NVIDIA_TF32_OVERRIDE=0)'
    assert environ == {'NVIDIA_TF32_OVERRIDE': '0'}
    assert apply_tf32(Recipe(), {}).startswith('on where the card has it')
    with pytest.raises(GPUError, match='set recipe tf32: false so the results say so'):
        apply_tf32(Recipe(), {'NVIDIA_TF32_OVERRIDE': '0'})


def test_the_environment_record_names_the_gpus_and_the_driver(monkeypatch):
    import bench.gpu
    from bench import environment

    monkeypatch.setattr(
        bench.gpu, 'physical_gpus', lambda: [GPU(0, 'NVIDIA A100-SXM4-40GB', (8, 0))]
    )
    monkeypatch.setattr(bench.gpu, 'driver_cuda_version', lambda: (12, 2))
    assert environment.describe_gpus_and_driver() == {
        'gpus': 'GPU 0: NVIDIA A100-SXM4-40GB (sm_80, supported)',
        'driver_cuda': '12.2',
    }
    from models import cuda_runtime

    monkeypatch.setattr(
        cuda_runtime,
        '_loaded',
        ['/x/libcudart.so.11.0', '/y/libcudnn.so.8', '/y/libcudnn.so.8.9.6'],
    )
    assert cuda_runtime.loaded_library_versions() == {'cuda': '11.0', 'cudnn': '8.9.6'}


def test_a_fraction_of_a_card_keeps_each_trial_within_its_share():
    from bench.gpu import share_card

    environ = {}
    assert share_card(0.25, 'gluon', environ) == "0.25 of the card's memory, kernels loaded lazily"
    assert environ == {'CUDA_MODULE_LOADING': 'LAZY', 'MXNET_GPU_MEM_POOL_RESERVE': '75'}
    environ = {}
    share_card(0.5, 'torch', environ)  # PyTorch's cap is set by its trial_devices
    assert environ == {'CUDA_MODULE_LOADING': 'LAZY'}
    assert share_card(1, 'gluon', environ := {}) is None and environ == {}
