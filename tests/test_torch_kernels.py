"""The torch backend's fused CPU kernel (models/kernels/torch_ops.cc, SimAM): what the
PyTorch formulas compute, on every instruction-set build, taken only where it applies,
built and trusted like the MXNet extension, and in PyTorch's OpenMP runtime."""

import ctypes
import platform
import warnings

import pytest

torch = pytest.importorskip('torch', reason='the torch extra is not installed')

from models import kernels  # noqa: E402
from models.kernels import torch_ops  # noqa: E402
from models.pytorch import channel_gate, simam  # noqa: E402

from .kernel_helpers import plant_library  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch_ops.torch_kernel_status().loaded,
    reason=f'the torch kernels did not build here: {torch_ops.torch_kernel_status().detail}',
)
E_LAMBDA = 1e-4


def _channels_last(*shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape) * scale + shift).contiguous(memory_format=torch.channels_last)


def _float64_reference(x, grad):
    """Output and input gradient of the plain formula in float64."""
    x64 = x.detach().double().requires_grad_()
    out = simam._simam_plain(x64, E_LAMBDA)
    out.backward(grad.double())
    return out, x64.grad


def _fused(x, grad):
    x = x.detach().requires_grad_()
    out = simam._FusedSimAMFunction.apply(x, E_LAMBDA)
    out.backward(grad)
    return out, x.grad


def _operators(x, grad):
    x = x.detach().requires_grad_()
    out = simam._SimAMFunction.apply(x, E_LAMBDA)
    out.backward(grad)
    return out, x.grad


@pytest.mark.parametrize(
    'shape, scale, shift',
    [
        ((4, 16, 32, 32), 1.0, 0.0),  # ResNet's first stage
        ((3, 64, 8, 8), 1.0, 0.0),  # its last
        ((2, 5, 3, 2), 3.0, 1.0),  # odd channels (the vector loops' tails), a 6-element plane
        ((2, 8, 7, 7), 100.0, -50.0),  # large values
        ((2, 8, 32, 32), 1.0, 0.0),  # and one outlier per channel, below
    ],
    ids=['stage1', 'stage3', 'odd', 'large', 'outlier'],
)
def test_the_kernel_computes_the_plain_formula_as_closely_as_pytorchs_operators(
    shape, scale, shift
):
    torch.manual_seed(0)
    x = _channels_last(*shape, scale=scale, shift=shift)
    if shape[2] == 32 and shape[0] == 2:
        # (x - mean)^2 / (4 var) reaches (HW - 1) / 4 = 256 at a lone outlier: the
        # kernel's exp takes its clamped branch (arguments below -87).
        x[:, :, 5, 7] = 1000.0
    grad = torch.randn(*shape)
    expected_out, expected_grad = _float64_reference(x, grad)
    fused_out, fused_grad = _fused(x, grad)
    operators_out, operators_grad = _operators(x, grad)
    assert fused_grad.is_contiguous(memory_format=torch.channels_last)
    for ours, theirs, expected in (
        (fused_out, operators_out, expected_out),
        (fused_grad, operators_grad, expected_grad),
    ):
        scale_of = expected.abs().max().item()
        fused_error = (ours.double() - expected).abs().max().item()
        operators_error = (theirs.double() - expected).abs().max().item()
        # float32 rounding, in the result's own scale; the kernel's exp is within 2 ulp.
        assert fused_error <= 2e-6 * scale_of, (fused_error, scale_of)
        assert fused_error <= 4 * operators_error + 1e-7 * scale_of


def test_every_instruction_set_build_gives_the_same_numbers(tmp_path):
    """Each level this CPU runs (the baseline's SSE2 among them) against the others: a
    cluster's machines of different CPUs train the same function."""
    torch.manual_seed(1)
    x = _channels_last(3, 24, 9, 9)
    grad = _channels_last(3, 24, 9, 9)
    results = []
    names = [name for name, _, _ in kernels.ISA_LEVELS]
    levels = names[names.index(kernels.cpu_isa()) :]
    for isa in levels:
        library = torch_ops._declare(
            ctypes.CDLL(
                str(
                    kernels.build_library(
                        cache_dir=tmp_path / 'cache', isa=isa, spec=torch_ops.torch_library()
                    )
                )
            )
        )
        out, weight = torch.empty_like(x), torch.empty_like(x)
        mean, shifted = torch.empty(3, 24), torch.empty(3, 24)
        library.simam_forward(
            x.data_ptr(), out.data_ptr(), weight.data_ptr(), mean.data_ptr(),
            shifted.data_ptr(), 3, 81, 24, E_LAMBDA, 2,
        )  # fmt: skip
        grad_x = torch.empty_like(x)
        library.simam_backward(
            grad.data_ptr(), x.data_ptr(), weight.data_ptr(), mean.data_ptr(),
            shifted.data_ptr(), grad_x.data_ptr(), 3, 81, 24, 2,
        )  # fmt: skip
        results.append((out, grad_x))
    for out, grad_x in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad_x, results[0][1], rtol=1e-5, atol=1e-6)
    built = sorted(p.name for p in (tmp_path / 'cache').rglob('*.so'))
    assert built == sorted(f'libcab_torch_ops-{isa}.so' for isa in levels)
    # The wider levels this CPU cannot run still compile (built, never loaded here), so
    # an AVX-512 machine gets its build, not a fallback warning.
    for isa in names[: names.index(kernels.cpu_isa())]:
        wider = kernels.build_library(
            cache_dir=tmp_path / 'wider', isa=isa, spec=torch_ops.torch_library()
        )
        assert wider.name == f'libcab_torch_ops-{isa}.so' and kernels.verified_library(wider)


def test_the_module_takes_the_kernel_only_where_it_applies(monkeypatch):
    calls = []
    real_forward = torch_ops.simam_forward

    def counting_forward(*args):
        calls.append(1)
        return real_forward(*args)

    monkeypatch.setattr(torch_ops, 'simam_forward', counting_forward)
    module = simam.SimAM(8)
    x = _channels_last(2, 8, 6, 6).requires_grad_()

    def taken(x, context=None):
        calls.clear()
        if context is None:
            module(x)
        else:
            with context:
                module(x)
        return bool(calls)

    assert taken(x)
    with torch.no_grad():
        assert taken(x)  # evaluation too
    assert not taken(x.detach().contiguous().requires_grad_())  # NCHW: PyTorch's operators
    assert not taken(x.detach().double().requires_grad_())
    assert not taken(x.detach()[:, :, :1, :1].contiguous(memory_format=torch.channels_last))
    assert not taken(x, channel_gate.autograd_formulas())
    assert not torch_ops.fused_simam_applies(x.bfloat16())


def test_any_incoming_gradient_layout_and_nan_propagation():
    torch.manual_seed(2)
    x = _channels_last(2, 8, 5, 4)
    weights = torch.randn(2, 8, 4, 5)
    results = []
    for function in (simam._FusedSimAMFunction, simam._SimAMFunction):
        leaf = x.detach().requires_grad_()
        # A transpose downstream: the gradient arrives with H fastest.
        (function.apply(leaf, E_LAMBDA).transpose(2, 3) * weights).sum().backward()
        results.append(leaf.grad)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)
    poisoned = x.clone()
    poisoned[1, 3, 2, 2] = float('nan')
    out = simam.SimAM(8)(poisoned)
    assert out[1, 3].isnan().all() and not out[0].isnan().any() and not out[1, 2].isnan().any()
    with pytest.raises(RuntimeError, match='second derivatives through SimAM'):
        leaf = x.detach().requires_grad_()
        torch.autograd.grad(simam.SimAM(8)(leaf).sum(), leaf, create_graph=True)


@pytest.mark.skipif(platform.system() != 'Linux', reason='reads /proc/self/maps')
def test_the_kernels_run_in_pytorchs_openmp_runtime():
    """A second OpenMP runtime would keep its own thread pool spinning on the cores that
    PyTorch's uses, and ignore torch.set_num_threads: the library's OpenMP entry point
    must be the one in the libgomp that torch loaded."""
    with open('/proc/self/maps') as maps:
        torch_runtimes = {
            line.split()[-1] for line in maps if 'libgomp' in line and '/torch' in line.split()[-1]
        }
    if len(torch_runtimes) != 1 or not next(iter(torch_runtimes)).endswith('/libgomp.so.1'):
        # A renamed copy (some CUDA wheels): the library links the system's libgomp, and
        # its loops take torch.get_num_threads() threads explicitly.
        pytest.skip(f"this torch build's OpenMP runtime cannot be shared: {torch_runtimes}")
    (torch_runtime,) = torch_runtimes
    library = ctypes.CDLL(torch_ops.torch_kernel_status().detail)

    def address(function):
        return ctypes.cast(function, ctypes.c_void_p).value

    assert address(library.GOMP_parallel) == address(ctypes.CDLL(torch_runtime).GOMP_parallel)


def test_without_a_compiler_simam_takes_pytorchs_operators_with_one_warning(tmp_path, monkeypatch):
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    monkeypatch.setenv(kernels.CACHE_ENV, str(tmp_path / 'cache'))
    monkeypatch.setattr(torch_ops, '_status', None)
    monkeypatch.setattr(torch_ops, '_library', None)
    x = _channels_last(2, 8, 6, 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = simam.SimAM(8)(x)
        simam.SimAM(8)(x)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and 'no C++ compiler' in messages[0], messages
    assert 'the attentions use PyTorch operators instead' in messages[0]
    torch.testing.assert_close(out, simam._simam_plain(x, E_LAMBDA))
    monkeypatch.setattr(torch_ops, '_status', None)
    monkeypatch.setenv(kernels.FUSED_ENV, '0')
    assert torch_ops.torch_kernel_status() == (False, f'turned off by {kernels.FUSED_ENV}=0')


def test_the_channel_gates_statistics_and_gradient_pieces():
    """The channel gates' kernels against PyTorch in float64: the statistics (a large
    mean, where a one-pass variance needs its double sums), the first of tied maxima
    and a NaN maximum as max pooling gives them, sum(grad * x) for any gradient layout,
    and grad * gate + x * A + B with A or B absent."""
    torch.manual_seed(3)
    x = _channels_last(3, 20, 7, 5, scale=2.0, shift=1000.0)
    x[0, 0, 1, 1] = x[0, 0, 3, 2] = x[0, 0].max() + 1  # tied: the first (1 * 5 + 1) wins
    x[1, 2, 4, 4] = x[1, 2, 5, 1] = float('nan')  # the last NaN, as max pooling keeps it
    x[2, 5] = 1000.3  # a constant channel: a variance of exactly 0, never below
    values, argmax = torch_ops.channel_statistics(x, ('max', 'sum_of_squares', 'variance'))
    assert set(values) == {'max', 'sum_of_squares', 'variance', 'mean'}  # the variance's mean
    x64 = x.double()
    finite = torch.ones(3, 20, dtype=torch.bool)
    finite[1, 2] = False
    for name, expected in (
        ('mean', x64.mean(dim=(2, 3))),
        ('sum_of_squares', (x64 * x64).sum(dim=(2, 3))),
        ('variance', x64.var(dim=(2, 3))),
    ):
        torch.testing.assert_close(
            values[name][finite].double(), expected[finite], rtol=2e-6, atol=0
        )
        assert values[name][1, 2].isnan()
    assert values['variance'][2, 5] == 0 and values['mean'][2, 5] == x[2, 5, 0, 0]
    pooled, indices = torch.nn.functional.max_pool2d(x, (7, 5), return_indices=True)
    torch.testing.assert_close(values['max'], pooled.flatten(1), equal_nan=True)
    assert torch.equal(argmax, indices.flatten(1)) and argmax[0, 0] == 6 and argmax[1, 2] == 26

    x = _channels_last(3, 20, 7, 5)
    grad = torch.randn(3, 20, 5, 7).transpose(2, 3)  # H fastest
    torch.testing.assert_close(
        torch_ops.channel_dot(grad, x).double(),
        (grad.double() * x.double()).sum(dim=(2, 3)),
        rtol=1e-6,
        atol=1e-6,
    )
    gate, scale, offset = torch.rand(3, 20), torch.randn(3, 20), torch.randn(3, 20)
    for a, b in ((scale, offset), (scale, None), (None, offset), (None, None)):
        expected = grad * gate[:, :, None, None]
        if a is not None:
            expected = expected + x * a[:, :, None, None]
        if b is not None:
            expected = expected + b[:, :, None, None]
        ours = torch_ops.channel_gate_input_gradient(grad, x, gate, a, b)
        assert ours.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('unsafe', ['cache writable by others', 'wrong hash'])
def test_a_planted_torch_library_is_never_loaded(tmp_path, monkeypatch, unsafe):
    """The torch kernels' library sits in the same cache under the same rules: in a
    folder others may write, nothing is loaded (PyTorch operators, one warning); with a
    content other than the recorded one, it is built again."""
    cache = tmp_path / 'cache'
    spec = torch_ops.torch_library()
    library = (
        cache
        / kernels.library_key(spec, kernels._compiler(), kernels.cpu_isa())
        / spec.name.format(isa=kernels.cpu_isa())
    )
    marker = tmp_path / 'the-planted-library-ran'
    plant_library(library, marker, tmp_path)
    record = library.with_name(library.name + '.sha256')
    record.write_text(kernels._sha256(library) if unsafe != 'wrong hash' else '0' * 64)
    for path in (cache, library.parent):
        path.chmod(0o755)
    if unsafe == 'cache writable by others':
        cache.chmod(0o777)
    monkeypatch.setenv(kernels.CACHE_ENV, str(cache))
    monkeypatch.setattr(torch_ops, '_status', None)
    monkeypatch.setattr(torch_ops, '_library', None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        loaded, detail = torch_ops.torch_kernel_status()
    assert not marker.exists()
    if unsafe == 'wrong hash':
        assert (
            loaded
            and kernels.verified_library(library)
            and b'simam_forward' in library.read_bytes()
        )
    else:
        assert not loaded and 'writable by others' in detail
        assert 'nothing is loaded' in str(caught[0].message)


@pytest.mark.parametrize('attention', ['se', 'cbam', 'srm', 'simam'])
def test_modules_on_odd_inputs_and_under_tracing(attention):
    """A batch slice (a storage offset), an empty batch, a default device other than the
    CPU, and torch.jit.trace (which cannot record the kernels' calls: the plain
    formulas run there) all give the plain formula's numbers."""
    from models.registry import attention_spec

    torch.manual_seed(4)
    module = attention_spec(attention).module_class('torch')(32).eval()
    whole = _channels_last(5, 32, 6, 6)
    x = whole[2:]  # channels-last contiguous, at an offset
    assert x.storage_offset() > 0 and torch_ops.fused_kernels_apply(x)
    with channel_gate.autograd_formulas(), torch.no_grad():
        expected = module(x)
    torch_ops.kernels_used(reset=True)
    with torch.no_grad():
        torch.testing.assert_close(module(x), expected)
    assert torch_ops.kernels_used()
    empty = _channels_last(0, 32, 6, 6)
    assert not torch_ops.fused_kernels_apply(empty)
    assert module(empty).shape == empty.shape
    with torch.device('meta'), torch.no_grad():
        torch.testing.assert_close(module(x), expected)
    traced = torch.jit.trace(module, (x,), check_trace=False)
    other = _channels_last(3, 32, 6, 6)
    with channel_gate.autograd_formulas(), torch.no_grad():
        torch.testing.assert_close(traced(other), module(other))


def test_the_kernels_refuse_tensors_that_do_not_fit():
    x = _channels_last(2, 8, 4, 4)
    with pytest.raises(ValueError, match='do not fit'):
        torch_ops.channel_dot(torch.randn(2, 8, 4, 3), x)
    with pytest.raises(ValueError, match='do not fit'):
        torch_ops.channel_gate_input_gradient(
            torch.randn(2, 8, 4, 4), x, torch.rand(1, 8), None, None
        )


@pytest.mark.parametrize('shape', [(2, 3, 40, 40), (2, 130, 3, 3), (1, 1, 2, 1)])
def test_statistics_and_dot_over_chunks_flushes_and_tails(shape):
    """The kernels walk the plane in chunks of positions, flush float partial sums into
    double ones every 64 positions and finish a tail that fills no chunk: 3 channels
    (42 positions a chunk, many flushes, a tail), 130 (one position a chunk), one."""
    torch.manual_seed(5)
    x = _channels_last(*shape, scale=3.0, shift=-2.0)
    grad = _channels_last(*shape)
    asked = ('mean', 'max', 'variance')
    values, argmax = torch_ops.channel_statistics(x, asked)
    x64 = x.double()
    expected = {'mean': x64.mean(dim=(2, 3)), 'variance': x64.var(dim=(2, 3))}
    for name in ('mean', 'variance'):
        torch.testing.assert_close(values[name].double(), expected[name], rtol=2e-6, atol=1e-6)
    pooled, indices = torch.nn.functional.max_pool2d(x, shape[2:], return_indices=True)
    assert torch.equal(values['max'], pooled.flatten(1)) and torch.equal(argmax, indices.flatten(1))
    assert set(values) == set(asked)
    torch.testing.assert_close(
        torch_ops.channel_dot(grad, x).double(),
        (grad.double() * x64).sum(dim=(2, 3)),
        rtol=1e-6,
        atol=1e-5,
    )


@pytest.mark.parametrize(
    'shape, plant',
    [
        ((1, 1, 2, 1), {0: 'nan'}),  # no whole chunk: a NaN first, a number after
        ((1, 16, 4, 4), {0: 'nan'}),  # a NaN at position 0 only (8 copies)
        ((1, 16, 4, 4), {9: 5.0, 2: 5.0}),  # tied: the earlier index in the higher copy
        ((1, 20, 7, 5), {33: 7.0, 4: 7.0, 34: 'nan', 1: 'nan'}),  # tail ties and a tail NaN
        ((1, 65, 9, 9), {}),  # one position a chunk, past a flush
        ((1, 1, 16, 16), {}),  # one channel: 128 positions a chunk, a flush each
    ],
)
def test_maxima_ties_nans_and_flushes_in_every_chunk_layout(shape, plant):
    """Against max pooling and float64 in the layouts where the kernel's copies, its
    tail and its flushes decide: the index of a maximum held by any copy or the tail."""
    torch.manual_seed(6)
    x = _channels_last(*shape)
    width = shape[3]
    for position, value in plant.items():
        x[:, :, position // width, position % width] = float(value)
    values, argmax = torch_ops.channel_statistics(x, ('max', 'mean', 'sum_of_squares'))
    pooled, indices = torch.nn.functional.max_pool2d(x, shape[2:], return_indices=True)
    torch.testing.assert_close(values['max'], pooled.flatten(1), equal_nan=True)
    assert torch.equal(argmax, indices.flatten(1)), (argmax, indices.flatten(1))
    finite = ~x.isnan().any(dim=3).any(dim=2)
    x64 = x.double()
    for name, expected in (
        ('mean', x64.mean(dim=(2, 3))),
        ('sum_of_squares', (x64 * x64).sum(dim=(2, 3))),
    ):
        torch.testing.assert_close(
            values[name][finite].double(), expected[finite], rtol=2e-6, atol=1e-6
        )
    # The CBAM path's scatter takes these indices: in the plane, whatever the NaNs.
    assert (argmax >= 0).all() and (argmax < shape[2] * shape[3]).all()


def test_an_infinite_x_without_a_scale_stays_out_of_the_input_gradient():
    x = _channels_last(1, 3, 43, 1)  # 42 positions a chunk: position 42 is the tail
    x[0, :, 42, 0] = float('inf')
    x[0, :, 3, 0] = float('inf')
    grad = torch.randn(1, 3, 43, 1)
    gate, offset = torch.rand(1, 3), torch.randn(1, 3)
    ours = torch_ops.channel_gate_input_gradient(grad, x, gate, None, offset)
    torch.testing.assert_close(ours, grad * gate[:, :, None, None] + offset[:, :, None, None])
