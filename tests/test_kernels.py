"""The fused C++ attention kernels: built, loaded, equal to numpy and to MXNet's own operators."""

import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd

import models.kernels as kernels
from models import get_model
from models.attention import ECA, GCT, SE
from models.attention._spatial import scale_channels
from models.registry import registered

from .kernel_helpers import plant_library


@pytest.fixture(scope='module', autouse=True)
def loaded():
    loaded, detail = kernels.kernel_status()
    assert loaded, f'the fused kernels should build on the test machine: {detail}'


@pytest.fixture
def mxnet_operators(monkeypatch):
    """Make the modules take MXNet's operators, as on a GPU or without a compiler."""
    monkeypatch.setattr(kernels, '_status', (False, 'turned off by the test'))


def _with_gradients(function, *arrays):
    inputs = [mx.nd.array(a) for a in arrays]
    for array in inputs:
        array.attach_grad()
    with autograd.record():
        out = function(*inputs)
    head = mx.nd.array(np.random.default_rng(7).normal(size=out.shape))
    out.backward(head)
    return out.asnumpy(), [a.grad.asnumpy() for a in inputs], head.asnumpy()


@pytest.mark.parametrize('shape', [(3, 5, 4, 6), (2, 16, 1, 1), (1, 3, 7)])
def test_the_heads_pooling_kernel_matches_numpy_forward_and_backward(shape):
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    axes = tuple(range(2, len(shape)))
    expand = (slice(None), slice(None)) + (None,) * len(axes)
    out, (dx,), head = _with_gradients(mx.nd.cab_channel_mean, x)
    np.testing.assert_allclose(out, x.mean(axis=axes), rtol=1e-5, atol=1e-6)
    spatial = int(np.prod(shape[2:]))
    np.testing.assert_allclose(dx, np.broadcast_to(head[expand] / spatial, shape), rtol=1e-6)


ATTENTION_CASES = [
    (SE, {'reduction': 4}),
    (SE, {'reduction': 16}),
    (ECA, {'kernel_size': 1}),
    (ECA, {'kernel_size': 3}),
    (ECA, {'kernel_size': 5}),
    (GCT, {}),
]
SHAPES = [(4, 16, 8, 8), (3, 5, 4, 6), (2, 16, 1, 1), (1, 7, 3), (2, 64, 2, 3)]


def _module_step(attention_class, kwargs, shape, hybridize):
    """Output, input gradient and parameter gradients of one module, from fixed values
    (parameters far from their identity initialisation, so every path carries signal)."""
    module = attention_class(shape[1], **kwargs)
    module.initialize()
    rng = np.random.default_rng(5)
    for param in module.collect_params().values():
        param.set_data(mx.nd.array(rng.normal(0.0, 0.7, size=param.shape)))
    if hybridize:
        module.hybridize()
    data = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    out, (dx,), _ = _with_gradients(module, data)
    ops = set()
    if hybridize:
        graph = __import__('json').loads(module._cached_graph[1].tojson())
        ops = {node['op'] for node in graph['nodes']}
    grads = [p.grad().asnumpy() for p in module.collect_params().values()]
    return [out, dx] + grads, ops


@pytest.mark.parametrize('hybridize', [True, False])
@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize(
    'attention_class,kwargs', ATTENTION_CASES, ids=lambda case: getattr(case, '__name__', str(case))
)
def test_each_fused_attention_computes_what_the_mxnet_operators_compute(
    attention_class, kwargs, shape, hybridize
):
    """The whole module as one operator (pooling, core, scaling; forward and backward)
    against the same module built from MXNet's operators: the output, the input's
    gradient and every parameter's gradient."""
    fused, ops = _module_step(attention_class, kwargs, shape, hybridize)
    if hybridize:
        assert f'cab_{attention_class.__name__.lower()}' in ops, ops
    with kernels.mxnet_operators_only():
        plain, plain_ops = _module_step(attention_class, kwargs, shape, hybridize)
    assert not any(op.startswith('cab_') for op in plain_ops)
    names = ['output', 'input gradient'] + [f'gradient {i}' for i in range(len(fused) - 2)]
    for name, ours, reference in zip(names, fused, plain):
        # float32 sums in another order: relative to the tensor's scale, not elementwise.
        scale = max(float(np.abs(reference).max()), 1e-6)
        np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-5 * scale, err_msg=name)


def test_fused_gct_does_not_overflow_before_its_result_does():
    """Activations near 1e19 (a 56-layer network with random weights reaches them): their
    squares summed in float32 overflow, the statistic and the output do not. The fused
    operator against the same module from MXNet's operators in float64."""
    rng = np.random.default_rng(3)
    data = rng.standard_normal((2, 16, 8, 8)) * 1e19
    head = rng.standard_normal((2, 16, 8, 8))
    values = {name: rng.normal(0.5, 0.3, size=(1, 16, 1, 1)) for name in ('alpha', 'gamma', 'beta')}
    results = {}
    for dtype in ('float32', 'float64'):
        module = GCT(16)
        module.initialize()
        module.cast(dtype)
        for name, param in module.collect_params().items():
            param.set_data(mx.nd.array(values[name.split('_')[-1]], dtype=dtype))
        x = mx.nd.array(data, dtype=dtype)
        x.attach_grad()
        operators = (
            kernels.mxnet_operators_only()
            if dtype == 'float64'
            else __import__('contextlib').nullcontext()
        )
        with operators, autograd.record():
            out = module(x)
        out.backward(mx.nd.array(head, dtype=dtype))
        results[dtype] = [out.asnumpy(), x.grad.asnumpy()] + [
            p.grad().asnumpy() for p in module.collect_params().values()
        ]
    for ours, exact in zip(results['float32'], results['float64']):
        assert np.isfinite(ours).all()
        scale = max(float(np.abs(exact).max()), 1e-30)
        np.testing.assert_allclose(ours, exact, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize(
    'attention_class,kwargs',
    ATTENTION_CASES[1::2],
    ids=lambda case: getattr(case, '__name__', str(case)),
)
def test_fused_gradients_are_the_same_on_every_run(attention_class, kwargs):
    """The per-image parameter gradients are summed in image order, not per thread."""
    first, _ = _module_step(attention_class, kwargs, (16, 32, 4, 4), hybridize=True)
    again, _ = _module_step(attention_class, kwargs, (16, 32, 4, 4), hybridize=True)
    for ours, before in zip(again, first):
        assert np.array_equal(ours, before)


def test_kernels_refuse_bad_shapes_and_types_with_a_message():
    x = mx.nd.ones((2, 8, 4, 4))
    with pytest.raises(mx.MXNetError, match='squeeze weights \\(H, C\\)'):
        mx.nd.cab_se(x, mx.nd.ones((2, 4)), mx.nd.ones((8, 2))).wait_to_read()
    with pytest.raises(mx.MXNetError, match='odd number k'):
        mx.nd.cab_eca(x, mx.nd.ones((1, 1, 4))).wait_to_read()
    with pytest.raises(mx.MXNetError, match='C values each'):
        mx.nd.cab_gct(x, *(mx.nd.ones((1, 4, 1, 1)),) * 3, epsilon=1e-5).wait_to_read()
    with pytest.raises(mx.MXNetError, match='float32'):
        mx.nd.cab_channel_mean(mx.nd.ones((2, 3, 4, 4), dtype='float64')).wait_to_read()


def _train_step_outputs(model, attention):
    """Output, loss and every gradient of one hybridized training step, from a fixed start."""
    mx.random.seed(3)
    net = get_model(model, attention)
    net.initialize(mx.init.Xavier())
    rng = np.random.default_rng(3)
    x = mx.nd.array(rng.normal(size=(4, 3, 32, 32)))
    net(x)  # settle deferred shapes
    for name, param in net.collect_params().items():  # GCT starts as the identity; move it
        if '_gct' in name:
            param.set_data(mx.nd.array(rng.normal(0.0, 0.5, size=param.shape)))
    net.hybridize(static_alloc=True, static_shape=True)
    labels = mx.nd.array([0, 1, 2, 3])
    with autograd.record():
        out = net(x)
        loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(out, labels).mean()
    loss.backward()
    grads = {
        name.split('_', 1)[1]: p.grad().asnumpy()
        for name, p in net.collect_params().items()
        if p.grad_req != 'null'
    }
    return out.asnumpy(), grads


# How far the two implementations' gradients may be apart, as the relative norm of the
# difference of each parameter's gradient. They differ in the order of their float32
# sums (relative 1e-7..1e-6 at the attentions, depending on the CPU's vector width).
# Training-mode BN amplifies that where its backward pass cancels almost completely
# (measured: 7e-3 on one BN's beta of ResNet-20 v2 with GCT on an AVX-512 Xeon, 6e-6 on
# an AVX2 EPYC), and a pre-activation within rounding of zero can flip a ReLU's
# gradient. A wrong or unwired kernel gradient is off by a relative O(1) (see the
# test below), so 5e-2 separates the two with room on either side.
GRADIENT_RELATIVE_TOLERANCE = 5e-2


def _gradient_relative_errors(grads, reference):
    return {
        name: float(
            np.linalg.norm(grads[name] - reference[name])
            / max(np.linalg.norm(reference[name]), 1e-30)
        )
        for name in reference
    }


@pytest.mark.parametrize(
    'attention', [name for name, spec in registered().items() if spec.fused_cpu_kernel]
)
@pytest.mark.parametrize('model', ['cifar_resnet20_v1', 'cifar_resnet20_v2'])
def test_fused_network_trains_like_the_mxnet_operator_network(model, attention):
    fused_out, fused_grads = _train_step_outputs(model, attention)
    with kernels.mxnet_operators_only():
        plain_out, plain_grads = _train_step_outputs(model, attention)
    np.testing.assert_allclose(fused_out, plain_out, rtol=1e-4, atol=1e-5)
    assert fused_grads.keys() == plain_grads.keys()
    errors = _gradient_relative_errors(fused_grads, plain_grads)
    worst = max(errors, key=errors.get)
    assert errors[worst] < GRADIENT_RELATIVE_TOLERANCE, (worst, errors[worst])


@pytest.mark.parametrize('attention', ['se', 'gct'])
def test_the_network_comparison_catches_a_wrong_scaling_gradient(monkeypatch, attention):
    """A backward-only bug: the scaling passes no gradient to the attention's weights
    (the forward pass is unchanged). The criterion above must reject it."""
    import importlib

    module = importlib.import_module(f'models.attention.{attention}')
    with kernels.mxnet_operators_only():
        _, reference = _train_step_outputs('cifar_resnet20_v1', attention)
        monkeypatch.setattr(
            module,
            'scale_channels',
            lambda F, x, weights: scale_channels(F, x, F.BlockGrad(weights)),
        )
        _, broken = _train_step_outputs('cifar_resnet20_v1', attention)
    errors = _gradient_relative_errors(broken, reference)
    assert max(errors.values()) > 10 * GRADIENT_RELATIVE_TOLERANCE


class _FakeParam:
    def __init__(self, contexts):
        self.contexts = contexts

    def list_ctx(self):
        if self.contexts is None:
            raise RuntimeError('Parameter has not been initialized')
        return self.contexts


class _FakeBlock:
    def __init__(self, *contexts):
        self.params = {f'p{i}': _FakeParam(c) for i, c in enumerate(contexts)}

    def collect_params(self):
        return self.params


def test_blocks_on_a_gpu_or_without_a_device_take_mxnet_operators():
    assert kernels.use_fused_kernels(_FakeBlock([mx.cpu()], None))
    assert not kernels.use_fused_kernels(_FakeBlock([mx.cpu()], [mx.gpu(0)]))
    assert not kernels.use_fused_kernels(_FakeBlock([mx.gpu(1)]))
    assert not kernels.use_fused_kernels(_FakeBlock(None))


def test_turned_off_or_missing_kernels_leave_mxnet_operators(mxnet_operators):
    assert not kernels.use_fused_kernels(_FakeBlock([mx.cpu()]))


def test_graphs_built_inside_mxnet_operators_only_keep_mxnet_operators():
    net = get_model('cifar_resnet8_v1', 'se')
    net.initialize()
    net.hybridize()
    x = mx.nd.ones((1, 3, 32, 32))
    with kernels.mxnet_operators_only():
        assert not kernels.fused_kernels_available()
        net(x)
    assert kernels.fused_kernels_available()
    ops = {node['op'] for node in __import__('json').loads(net._cached_graph[1].tojson())['nodes']}
    assert not any(op.startswith('cab_') for op in ops) and 'dot' in ops


def _key_dir(cache):
    return cache / kernels.library_key(
        kernels.mxnet_library(), kernels._compiler(), kernels.cpu_isa()
    )


def _load_fresh(monkeypatch, cache):
    monkeypatch.setenv(kernels.CACHE_ENV, str(cache))
    monkeypatch.setattr(kernels, '_status', None)
    with pytest.warns(UserWarning) as warned:
        loaded, detail = kernels.kernel_status()
    return loaded, detail, ' '.join(str(w.message) for w in warned)


@pytest.mark.parametrize(
    'unsafe',
    [
        'cache writable by others',
        'library writable by others',
        'above it writable by others',
        'another owner',
    ],
)
def test_a_library_planted_in_a_cache_others_can_write_is_never_loaded(
    tmp_path, monkeypatch, unsafe
):
    import os

    if unsafe == 'another owner' and os.geteuid() != 0:
        pytest.skip('giving a folder to another user needs root')
    cache = tmp_path / 'shared' / 'cache'
    marker = tmp_path / 'the-planted-library-ran'
    library = _key_dir(cache) / kernels.LIBRARY_NAME.format(isa=kernels.cpu_isa())
    plant_library(library, marker, tmp_path)
    # Even with a record that matches: the folder itself is not to be trusted.
    library.with_name(library.name + '.sha256').write_text(kernels._sha256(library))
    for path in (cache, library.parent, library, library.with_name(library.name + '.sha256')):
        path.chmod(0o755 if path.is_dir() or path == library else 0o644)
    if unsafe == 'cache writable by others':
        cache.chmod(0o777)
    elif unsafe == 'library writable by others':
        library.chmod(0o777)
    elif unsafe == 'above it writable by others':
        cache.parent.chmod(0o777)
    else:
        os.chown(cache, 4321, 4321)
    loaded, detail, warning = _load_fresh(monkeypatch, cache)
    assert not loaded and not marker.exists()
    assert 'writable by others' in detail or 'another user' in detail, detail
    assert "MXNet's operators instead" in warning and 'nothing is loaded' in warning


def test_each_cpu_loads_the_widest_instruction_set_it_has_from_a_shared_cache(tmp_path):
    """One build per level, each for exactly that level: the cache may be shared by
    machines of different CPUs, and each gets its own vector width. A library in the cache
    whose content is not the one built here is rebuilt, never loaded (one test: each
    build takes ~10 s)."""
    info = tmp_path / 'cpuinfo'
    info.write_text('flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512vl avx512dq\n')
    assert kernels.cpu_isa(str(info)) == 'avx512'
    info.write_text('flags\t\t: fpu sse2 avx avx2 fma avx512f\n')  # AVX-512 foundation only
    assert kernels.cpu_isa(str(info)) == 'avx2'
    info.write_text('flags\t\t: fpu sse2\n')
    assert kernels.cpu_isa(str(info)) == 'baseline'
    assert kernels.cpu_isa(str(tmp_path / 'none')) == 'baseline'
    assert kernels.isa_flags('avx2') == ['-mavx2', '-mfma'] and kernels.isa_flags('baseline') == []
    # Two levels side by side in one cache; each loads where its level exists.
    baseline = kernels.build_library(cache_dir=tmp_path / 'cache', isa='baseline')
    assert baseline.name == 'libcab_channel_ops-baseline.so'
    marker = tmp_path / 'the-planted-library-ran'
    planted = _key_dir(tmp_path / 'cache') / kernels.LIBRARY_NAME.format(isa=kernels.cpu_isa())
    plant_library(planted, marker, tmp_path)
    planted.with_name(planted.name + '.sha256').write_text('0' * 64)  # not its hash
    assert not kernels.verified_library(planted)
    here = kernels.build_library(cache_dir=tmp_path / 'cache')
    assert here == planted and kernels.verified_library(here) and not marker.exists()
    assert b'cab_gct' in here.read_bytes()
    assert here.name == f'libcab_channel_ops-{kernels.cpu_isa()}.so'
    assert kernels.kernel_isa() == kernels.cpu_isa()  # what this process loaded
    # Built once per key, then reused (one compile less for the suite than its own test).
    built_at = here.stat().st_mtime_ns
    again = kernels.build_library(cache_dir=tmp_path / 'cache')
    assert again == here and again.stat().st_mtime_ns == built_at
    assert sorted(p.name for p in here.parent.iterdir() if p.name != '.lock') == [
        here.name,
        here.name + '.sha256',
    ]


def test_missing_compiler_is_reported_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / 'cache'))
    with pytest.raises(kernels.KernelBuildError, match='no C\\+\\+ compiler'):
        kernels.build_library()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        loaded, reason = kernels._load()
    assert not loaded and 'no C++ compiler' in reason
    assert any('Install a C++ compiler' in str(w.message) for w in caught)


def test_a_failed_compile_names_the_command_and_keeps_no_partial_file(tmp_path, monkeypatch):
    compiler = tmp_path / 'failing-cxx'
    compiler.write_text(
        '#!/bin/sh\n[ "$1" = --version ] && exit 0\n'
        'echo "channel_ops.cc:1: error: boom" >&2; exit 1\n'
    )
    compiler.chmod(0o755)
    monkeypatch.setenv('CXX', str(compiler))
    with pytest.raises(kernels.KernelBuildError, match='boom'):
        kernels.build_library(cache_dir=tmp_path / 'cache')
    assert not [p for p in (tmp_path / 'cache').rglob('*.so*')]


def test_environment_switch_turns_them_off(monkeypatch):
    monkeypatch.setenv(kernels.FUSED_ENV, '0')
    assert kernels._load() == (False, f'turned off by {kernels.FUSED_ENV}=0')


PLACEMENT_SCRIPT = """
import json, sys
import mxnet as mx
from models.kernels import _mxnet_operator_names, build_library, load_into_mxnet

own = {n: (getattr(mx.nd, n), getattr(mx.sym, n)) for n in ('Convolution', 'BatchNorm')}
before = _mxnet_operator_names()
path = build_library()
if sys.argv[1] == 'mxnet':
    mx.library.load(str(path), verbose=False)
    added = sorted(_mxnet_operator_names() - before)
else:
    added = load_into_mxnet(path)
modules = ['mxnet.ndarray', 'mxnet.ndarray.op', 'mxnet.ndarray._internal',
           'mxnet.symbol', 'mxnet.symbol.op', 'mxnet.symbol._internal']
placed = {
    name: {m: [getattr(sys.modules[m], name).__module__, name in sys.modules[m].__all__]
           for m in modules if hasattr(sys.modules[m], name)}
    for name in added
}
x = mx.nd.array([[[[1.0, 2.0], [3.0, 6.0]]]])
graph = mx.sym.cab_channel_mean(mx.sym.var('x')).bind(mx.cpu(), {'x': x})
print(json.dumps({
    'placed': placed,
    'values': [mx.nd.cab_channel_mean(x).asnumpy().tolist(),
               graph.forward()[0].asnumpy().tolist()],
    'own_kept': all(getattr(mx.nd, n) is f and getattr(mx.sym, n) is g
                    for n, (f, g) in own.items()),
}))
"""


def test_loading_the_library_places_its_operators_where_mxnets_own_load_does():
    """load_into_mxnet makes functions for the library's operators alone (MXNet's load
    remakes all ~960, a second per trial): each lands in the same modules, under the
    same names, as with mx.library.load, and computes in both NDArray and Symbol form."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    runs = {
        way: subprocess.Popen(
            [sys.executable, '-c', PLACEMENT_SCRIPT, way],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(root)),
        )
        for way in ('mxnet', 'ours')
    }
    found = {}
    for way, process in runs.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err[-3000:]
        found[way] = json.loads(out.splitlines()[-1])
    assert found['ours']['placed'] == found['mxnet']['placed']
    assert sorted(found['ours']['placed']) == [
        '_backward_cab_channel_mean',
        '_backward_cab_copy',
        '_backward_cab_eca',
        '_backward_cab_gct',
        '_backward_cab_se',
        'cab_channel_mean',
        'cab_copy',
        'cab_eca',
        'cab_gct',
        'cab_se',
    ]
    assert found['ours']['values'] == found['mxnet']['values'] == [[[3.0]], [[3.0]]]
    assert found['ours']['own_kept'] and not found['mxnet']['own_kept']


def test_the_kernels_instruction_set_can_be_capped(tmp_path, monkeypatch):
    """CHANNEL_ATTENTION_KERNEL_ISA caps the level as ONEDNN_MAX_CPU_ISA caps oneDNN's:
    never wider than the CPU has; a name it does not know is an error, not ignored."""
    info = tmp_path / 'cpuinfo'
    info.write_text('flags\t: fpu sse2 avx2 fma avx512f avx512bw avx512vl avx512dq\n')
    monkeypatch.setenv(kernels.ISA_ENV, 'avx2')
    assert kernels.cpu_isa(str(info)) == 'avx2'
    monkeypatch.setenv(kernels.ISA_ENV, 'baseline')
    assert kernels.cpu_isa(str(info)) == 'baseline'
    info.write_text('flags\t: fpu sse2 avx2 fma\n')
    monkeypatch.setenv(kernels.ISA_ENV, 'avx512')
    assert kernels.cpu_isa(str(info)) == 'avx2'
    monkeypatch.setenv(kernels.ISA_ENV, 'AVX2')
    with pytest.raises(kernels.KernelSettingError, match=r"KERNEL_ISA='AVX2' is no level") as bad:
        kernels.cpu_isa(str(info))
    # Said once where the kernels load, without a compiler's advice (none is missing).
    with pytest.warns(UserWarning) as said:
        kernels.warn_unavailable('fused kernels', bad.value, 'operators', 1)
    assert 'is no level of the kernels' in str(said[0].message)
    assert 'compiler' not in str(said[0].message)
    # The level in use is the loaded library's, whatever the variable says later.
    assert kernels.library_isa('/c/libcab_channel_ops-avx2.so', kernels.LIBRARY_NAME) == 'avx2'
    assert kernels.library_isa('/c/other.so', kernels.LIBRARY_NAME) is None
