"""The torch attentions' hand-written backward passes (models/pytorch/channel_gate.py,
simam.py) compute autograd's gradients, and the CPU session's malloc setting ends the
page faults that it exists for."""

import contextlib
import copy
import os
import platform
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip('torch', reason='the torch extra is not installed')

from torch import nn  # noqa: E402

from models.kernels import torch_ops  # noqa: E402
from models.pytorch import channel_gate  # noqa: E402
from models.pytorch.channel_gate import gate_channels  # noqa: E402
from models.registry import attention_spec  # noqa: E402

CHANNELS = 6
STATISTIC_SETS = [
    ('mean',),
    ('max',),
    ('sum_of_squares',),
    ('variance',),
    ('mean', 'max'),
    ('mean', 'variance'),
    ('variance', 'sum_of_squares', 'max', 'mean'),
]


class _Gate(nn.Module):
    """A small gate with parameters over any statistics: a linear map of each, summed,
    tanh; the parameters' gradients must flow through gate_channels."""

    def __init__(self, statistics):
        super().__init__()
        self.statistics = statistics
        self.maps = nn.ParameterList(
            nn.Parameter(torch.randn(CHANNELS, CHANNELS) / CHANNELS) for _ in statistics
        )
        self.bias = nn.Parameter(torch.randn(CHANNELS))

    def gate_of(self, *values):
        mixed = sum(value @ weight for value, weight in zip(values, self.maps))
        return torch.tanh(mixed + self.bias)

    def forward(self, x):
        return gate_channels(x, self.gate_of, self.statistics, self)


def _plain_statistic(x, statistic):
    return {
        'mean': lambda: x.mean(dim=(2, 3)),
        'max': lambda: x.amax(dim=(2, 3)),
        'sum_of_squares': lambda: (x**2).sum(dim=(2, 3)),
        'variance': lambda: x.var(dim=(2, 3), unbiased=True),
    }[statistic]()


def _autograd_reference(gate, x):
    """What eager autograd computes, written out in the test."""
    values = [_plain_statistic(x, statistic) for statistic in gate.statistics]
    return x * gate.gate_of(*values)[:, :, None, None]


def _input(dtype=torch.float32, channels_last=False, shape=(3, CHANNELS, 5, 4)):
    x = torch.randn(*shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_()


@pytest.mark.parametrize('statistics', STATISTIC_SETS, ids='+'.join)
def test_gradients_match_finite_differences_in_float64(statistics):
    torch.manual_seed(0)
    gate = _Gate(statistics).double()
    x = _input(torch.float64)
    assert torch.autograd.gradcheck(lambda x, *params: gate(x), (x, *gate.parameters()))


@pytest.mark.parametrize('channels_last', [False, True], ids=['nchw', 'channels_last'])
@pytest.mark.parametrize('statistics', STATISTIC_SETS, ids='+'.join)
def test_output_and_gradients_equal_autograds_in_float32(statistics, channels_last):
    """In float32 (NCHW: PyTorch operators; channels-last: the fused CPU kernels where
    they built) what autograd computes from the plain formulas in float64, within
    float32 rounding of each result's scale (the gate's tanh of sums of squares near 64
    cancels: float32 autograd itself strays 2.5e-5 of the scale there)."""
    torch.manual_seed(1)
    gate = _Gate(statistics)
    reference_gate = copy.deepcopy(gate).double()
    x = _input(channels_last=channels_last, shape=(4, CHANNELS, 8, 8))
    grad = torch.randn(4, CHANNELS, 8, 8)
    torch_ops.kernels_used(reset=True)
    out = gate(x)
    out.backward(grad)
    # The path under test: the kernels for channels-last where they built, else operators.
    assert torch_ops.kernels_used() == (channels_last and torch_ops.torch_kernel_status().loaded)
    x64 = x.detach().double().requires_grad_()
    ref_out = _autograd_reference(reference_gate, x64)
    ref_out.backward(grad.double())
    pairs = [('output', out, ref_out), ('x', x.grad, x64.grad)] + [
        (f'parameter {index}', ours.grad, reference.grad)
        for index, (ours, reference) in enumerate(
            zip(gate.parameters(), reference_gate.parameters())
        )
    ]
    for name, ours, expected in pairs:
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            ours.double(), expected, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, n=name: f'{n}: {m}'
        )
    # Channels-last in, channels-last out both ways: the next convolution needs no
    # reordering.
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('attention', ['se', 'eca', 'gct', 'cbam', 'srm', 'simam'])
def test_each_attention_trains_as_under_plain_autograd(attention):
    """Each module through its hand-written backward in float32 computes what autograd
    computes from the plain formula (what torch.compile traces) in float64: outputs,
    input and parameter gradients."""
    torch.manual_seed(2)
    # 64 channels: CBAM's and SE's hidden layers (C / 16) are wide enough that the ReLU
    # leaves some units alive, so the statistics' gradients (the max's scatter among
    # them) are not all zero.
    module = attention_spec(attention).module_class('torch')(64)
    for param in module.parameters():
        nn.init.normal_(param, std=0.5)
    reference = copy.deepcopy(module).double()
    x = _input(channels_last=True, shape=(4, 64, 8, 8))
    grad = torch.randn(4, 64, 8, 8)
    out = module(x)
    out.backward(grad)
    x64 = x.detach().double().requires_grad_()
    with channel_gate.autograd_formulas():
        ref_out = reference(x64)
    ref_out.backward(grad.double())
    torch.testing.assert_close(out, ref_out.float())
    # Tolerances in each gradient's own scale: SRM's BatchNorm over a batch of 4 turns
    # float32 rounding into errors of ~5e-6 of the scale (the plain formula's own, in
    # float32, reach 4e-5 for SRM's cfc).
    pairs = [('x', x.grad, x64.grad)] + [
        (name, param.grad, dict(reference.named_parameters())[name].grad)
        for name, param in module.named_parameters()
    ]
    for name, ours, expected in pairs:
        scale = expected.abs().max().item()
        torch.testing.assert_close(
            ours, expected.float(), rtol=1e-4, atol=5e-5 * scale, msg=lambda m, n=name: f'{n}: {m}'
        )
        assert ours.abs().sum() > 0, f'{name}: no gradient reached it'
    x_grad = x.grad
    if module.__class__.__name__ != 'SimAM':
        # The gate's share of x's gradient is not empty (a module whose statistics
        # received no gradient would pass the comparison trivially).
        with torch.no_grad():
            gated = module(x) / x
        assert (x_grad - grad * gated).abs().amax() > 1e-3


@pytest.mark.parametrize('attention', ['se', 'eca', 'gct', 'cbam', 'srm', 'simam'])
def test_torch_func_transforms_and_forward_mode_go_through_the_plain_formula(attention):
    """torch.func.grad, vmap and jvp, and forward-mode AD: the hand-written functions
    define no vmap rule or jvp, so these run the plain formula instead of failing."""
    from torch.autograd import forward_ad

    torch.manual_seed(8)
    module = attention_spec(attention).module_class('torch')(32)
    # Evaluation mode: SRM's BatchNorm updates its running statistics in place in
    # training, which torch.func refuses for any module (nn.BatchNorm2d too).
    module.eval()
    x = _input(shape=(3, 32, 6, 6))
    module(x).sum().backward()
    torch.testing.assert_close(
        torch.func.grad(lambda x: module(x).sum())(x), x.grad, rtol=1e-4, atol=1e-6
    )
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(torch.func.vmap(lambda one: module(one[None])[0])(x), expected)
    tangent = torch.randn_like(x)
    out, jvp = torch.func.jvp(module, (x.detach(),), (tangent,))
    with channel_gate.autograd_formulas():
        jacobian_product = torch.autograd.functional.jvp(module, x.detach(), tangent)[1]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(jvp, jacobian_product, rtol=1e-4, atol=1e-6)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x.detach(), tangent)
        torch.testing.assert_close(forward_ad.unpack_dual(module(dual)).tangent, jvp)


def test_a_gate_that_uses_tensors_outside_the_modules_parameters_is_refused():
    """The backward differentiates toward the statistics and the module's parameters
    only; a closure's weight that needs a gradient would silently get none."""
    outside = torch.randn(CHANNELS, CHANNELS, requires_grad=True)
    x = _input()
    with pytest.raises(RuntimeError, match=r'uses 1 tensor\(s\).*\(6, 6\).*Register them'):
        gate_channels(x, lambda mean: torch.sigmoid(mean @ outside), ('mean',), nn.Module())
    # x itself, used by the gate directly rather than through a statistic: refused too.
    with pytest.raises(RuntimeError, match='need a gradient besides its statistics'):
        gate_channels(x, lambda mean: torch.sigmoid(mean + x[:, :, 0, 0]), ('mean',), nn.Module())

    # A weight computed in forward from the module's own parameters (weight
    # normalisation, say) is fine: its gradient reaches those parameters.
    class _Normalised(nn.Module):
        def __init__(self):
            super().__init__()
            self.direction = nn.Parameter(torch.randn(CHANNELS, CHANNELS))

        def forward(self, x):
            weight = self.direction / self.direction.norm()
            return gate_channels(x, lambda mean: torch.sigmoid(mean @ weight), ('mean',), self)

    module = _Normalised()
    module(x).sum().backward()
    ours = module.direction.grad.clone()
    module.direction.grad = None
    with channel_gate.autograd_formulas():
        module(x).sum().backward()
    torch.testing.assert_close(ours, module.direction.grad)


def test_simams_gradient_matches_finite_differences_in_float64():
    torch.manual_seed(6)
    module = attention_spec('simam').module_class('torch')(CHANNELS)
    # Small planes (the 8 x 8 of ResNet's last stage and smaller) and large values: the
    # variance's and the mean's terms of the written-out derivative both matter there.
    for shape in [(2, CHANNELS, 3, 2), (2, CHANNELS, 4, 4)]:
        x = (torch.randn(*shape, dtype=torch.float64) * 3 + 1).requires_grad_()
        assert torch.autograd.gradcheck(module, (x,))
    with pytest.raises(RuntimeError, match='second derivatives through SimAM'):
        torch.autograd.grad(module(x).sum(), x, create_graph=True)


def test_the_maximums_gradient_lands_whatever_the_incoming_gradients_layout():
    """A gradient whose H axis is fastest (a transpose downstream) used to lose the max's
    share: its flatten(2) is a copy."""
    torch.manual_seed(7)
    gate = _Gate(('max',)).double()
    x = _input(torch.float64, shape=(2, CHANNELS, 5, 4))
    weights = torch.randn(2, CHANNELS, 4, 5, dtype=torch.float64)
    grads = []
    for compute in (gate, lambda x: _autograd_reference(gate, x)):
        x.grad = None
        (compute(x).transpose(2, 3) * weights).sum().backward()
        grads.append(x.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_without_input_gradient_only_the_parameters_are_differentiated():
    torch.manual_seed(3)
    gate = _Gate(('mean', 'variance'))
    x = _input().detach()
    gate(x).sum().backward()
    ours = [p.grad.clone() for p in gate.parameters()]
    gate.zero_grad()
    _autograd_reference(gate, x).sum().backward()
    for grad, reference in zip(ours, (p.grad for p in gate.parameters())):
        torch.testing.assert_close(grad, reference)
    with torch.no_grad():
        torch.testing.assert_close(gate(x), _autograd_reference(gate, x))


def test_a_second_backward_through_a_retained_graph_and_refused_double_backward():
    torch.manual_seed(4)
    gate = _Gate(('mean',))
    x = _input()
    out = gate(x)
    (first,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    (second,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(first, second)
    # Second derivatives are not written by hand: asking for one is an error, never a
    # silently wrong (constant) term of a gradient penalty.
    with pytest.raises(RuntimeError, match='second derivatives.*autograd_formulas'):
        torch.autograd.grad(gate(x).sum(), x, create_graph=True)
    with channel_gate.autograd_formulas():
        (gradient,) = torch.autograd.grad(gate(x).sum(), x, create_graph=True)
    assert gradient.requires_grad


def test_bfloat16_autocast_on_the_cpu_trains():
    torch.manual_seed(5)
    gate = _Gate(('mean', 'max'))
    x = _input(shape=(2, CHANNELS, 4, 4))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = gate(x.to(torch.bfloat16))
    out.float().sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in gate.parameters())


def test_unknown_or_repeated_statistics_are_refused():
    x = _input()
    with pytest.raises(ValueError, match="'median'"):
        gate_channels(x, lambda v: v, ('median',), nn.Module())
    with pytest.raises(ValueError, match='at most once'):
        gate_channels(x, lambda a, b: a, ('mean', 'mean'), nn.Module())


@pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason="the setting is glibc's malloc's",
)
def test_keeping_freed_memory_ends_the_training_steps_page_faults():
    """A training step's activations come from malloc; with glibc's defaults many of
    them are fresh pages (minor faults), with the session's setting almost none."""
    script = textwrap.dedent(
        """
        import resource, torch
        from bench.trial.host_memory import keep_freed_memory_for_reuse
        from models.pytorch import get_model
        torch.set_num_threads(1)
        torch.manual_seed(0)
        net = get_model('cifar_resnet20_v1', 'se').to(memory_format=torch.channels_last)
        x = torch.randn(32, 3, 32, 32).contiguous(memory_format=torch.channels_last)

        def faults_per_step():
            # The fewest of four steps' faults after two to settle: the heap may
            # still grow in the first steps after the setting.
            counts = []
            for step in range(6):
                start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                net(x).sum().backward()
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
            return min(counts[2:])

        before = faults_per_step()
        assert keep_freed_memory_for_reuse()
        print(before, faults_per_step())
        """
    )
    # Without a malloc setting or preloaded allocator of the caller's: the faults before
    # the setting are glibc's defaults'.
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(('MALLOC_', 'GLIBC_TUNABLES', 'LD_PRELOAD'))
    }
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=300, env=environment
    )
    assert result.returncode == 0, result.stderr
    before, after = map(float, result.stdout.split())
    assert after < 100 and after < before / 20, (before, after)


@contextlib.contextmanager
def _unfused(monkeypatch):
    """Within it, every block ends by PyTorch's operators, not through its gate."""
    from models.pytorch import cifar_resnet

    with monkeypatch.context() as patch:
        patch.setattr(cifar_resnet, '_ends_the_block', lambda _: False)
        yield


def _block_run(net, x, fuse, monkeypatch):
    """Output, parameter gradients and BN statistics of one training step's forward and
    backward, the blocks ending through their gates (`fuse`) or by PyTorch's operators."""
    with _unfused(monkeypatch) if not fuse else contextlib.nullcontext():
        out = net(x)
        out.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    return out.detach(), grads, {name: b.clone() for name, b in net.named_buffers()}


@pytest.mark.parametrize('model', ['cifar_resnet8_v1', 'cifar_resnet8_v2'])
@pytest.mark.parametrize('attention', ['se', 'eca', 'gct', 'cbam', 'srm'])
def test_a_blocks_end_through_its_channel_gate_gives_the_very_same_numbers(
    model, attention, monkeypatch
):
    """shortcut + x * gate, then ReLU (v1), in one pass of the CPU kernel instead of
    three operators: the product is rounded before the sum as PyTorch rounds it, so the
    network's output, every gradient and BN's statistics are bitwise the same."""
    from models.pytorch import get_model

    torch.manual_seed(3)
    net = get_model(model, attention, seed=0).to(memory_format=torch.channels_last)
    for name, param in net.named_parameters():
        if '.attention.' in name:  # gates away from their start (GCT's 1, SRM's 0.5)
            nn.init.normal_(param, std=0.5)
    twin = copy.deepcopy(net)
    x = torch.randn(8, 3, 16, 16).to(memory_format=torch.channels_last)
    calls = []
    for kernel in ('gated_residual', 'relu_masked_channel_dot'):
        real = getattr(torch_ops, kernel)
        monkeypatch.setattr(
            torch_ops, kernel, lambda *a, k=kernel, r=real: calls.append(k) or r(*a)
        )
    fused = _block_run(net, x, True, monkeypatch)
    if torch_ops.torch_kernel_status().loaded:  # 3 blocks; v2 has no ReLU at its end
        v1 = model.endswith('v1')
        assert sorted(calls) == ['gated_residual'] * 3 + ['relu_masked_channel_dot'] * 3 * v1
    calls.clear()
    plain = _block_run(twin, x, False, monkeypatch)
    assert not calls
    assert torch.equal(fused[0], plain[0])
    for name in fused[1]:
        assert torch.equal(fused[1][name], plain[1][name]), name
    # Not vacuous: gradients reached the gates (a narrow MLP's unit may be off).
    assert sum(g.abs().sum() for name, g in fused[1].items() if '.attention.' in name) > 0
    for name in fused[2]:
        assert torch.equal(fused[2][name], plain[2][name]), name
    with torch.no_grad():  # evaluation: the kernel alone, no backward
        net.eval(), twin.eval()
        calls.clear()
        with _unfused(monkeypatch):
            unfused = twin(x)
        assert torch.equal(net(x), unfused)
        if torch_ops.torch_kernel_status().loaded:
            assert calls == ['gated_residual'] * 3


def test_hooks_on_an_attention_see_its_own_forward():
    """A hook on the attention module (a researcher's gate maps) sees the module's input
    and output as before: the block then does not end through the gate."""
    from models.pytorch import get_model

    net = get_model('cifar_resnet8_v1', 'se', seed=0)
    seen = []
    attention = net.features[3][0].attention
    handle = attention.register_forward_hook(lambda module, inputs, out: seen.append(out))
    x = torch.randn(2, 3, 16, 16)
    net(x)
    handle.remove()
    assert len(seen) == 1 and seen[0].shape == (2, 32, 8, 8)  # stage 2's first block
    assert (seen[0] < 0).any()  # the attention's own output, before the block's ReLU


def test_the_fused_block_end_keeps_nan_and_takes_any_shortcut_layout():
    if not torch_ops.torch_kernel_status().loaded:
        pytest.skip('the fused torch CPU kernels did not build here')
    x = torch.randn(2, 5, 3, 4).contiguous(memory_format=torch.channels_last)
    x[0, 1, 2, 3] = float('nan')
    gate = torch.rand(2, 5)
    shortcut = torch.randn(2, 5, 3, 4)  # NCHW, x channels-last
    for relu in (True, False):
        expected = shortcut + x * gate[:, :, None, None]
        expected = torch.relu(expected) if relu else expected
        out = torch_ops.gated_residual(x, gate, shortcut, relu)
        torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
        assert out[0, 1, 2, 3].isnan() and out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match='do not fit'):
        torch_ops.gated_residual(x, gate, shortcut[:, :, :2], True)
    # Backward: the ReLU's gradient as PyTorch's threshold_backward gives it (a NaN
    # output passes its gradient), and the gate's from it, as channel_dot computes it.
    relu_out = torch_ops.gated_residual(x, gate, shortcut, True)
    grad = torch.randn(2, 5, 3, 4)
    masked, dot = torch_ops.relu_masked_channel_dot(grad, relu_out, x)
    expected_masked = torch.ops.aten.threshold_backward(grad, relu_out, 0)
    assert torch.equal(masked, expected_masked) and masked[0, 1, 2, 3] == grad[0, 1, 2, 3]
    torch.testing.assert_close(
        dot, torch_ops.channel_dot(expected_masked, x), rtol=0, atol=0, equal_nan=True
    )
    with pytest.raises(ValueError, match='relu=True ends a residual block'):
        gate_channels(x, lambda mean: mean, ('mean',), nn.Module(), relu=True)


def test_a_block_ends_through_its_gate_only_where_nothing_else_would_run():
    """A subclass or an instance with a forward of its own, or hooks on the module
    (forward or backward, its own or global), keep the module's forward: the block's
    fused end would skip them without a word."""
    from models.pytorch import cifar_resnet
    from models.pytorch.attention import SE

    class DoubledSE(SE):
        def forward(self, x):
            return 2 * super().forward(x)

    class OwnEnd(SE):  # a class that defines both answers for both
        def forward(self, x):
            return super().forward(x)

        def forward_residual(self, x, shortcut, relu):
            return super().forward_residual(x, shortcut, relu)

    ends = cifar_resnet._ends_the_block
    assert ends(SE(16)) and ends(OwnEnd(16)) and not ends(None) and not ends(nn.Identity())
    assert not ends(DoubledSE(16))
    patched = SE(16)
    patched.forward = lambda x: x
    assert not ends(patched)
    for register in ('register_forward_hook', 'register_full_backward_hook'):
        watched = SE(16)
        handle = getattr(watched, register)(lambda *args: None)
        assert not ends(watched), register
        handle.remove()
        assert ends(watched), register
    handle = torch.nn.modules.module.register_module_full_backward_hook(lambda *args: None)
    try:
        assert not ends(SE(16))
    finally:
        handle.remove()

    # In a network: the subclass's forward is what the block runs.
    torch.manual_seed(4)
    block = cifar_resnet.BasicBlockV1(
        cifar_resnet.stage_plans('cifar_resnet8_v1')[0][0], attention_class=DoubledSE
    ).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        expected = torch.relu(x + block.attention(block.body(x)))
        assert torch.equal(block(x), expected)


def test_a_shortcut_of_another_shape_or_type_goes_through_pytorchs_operators():
    """The kernel takes a shortcut of x's shape and dtype; a broadcast or float64 one
    gets PyTorch's broadcasting and type promotion, gradients summed to its shape."""
    gate = _Gate(('mean',))
    first_x = _input(channels_last=True).detach()
    for shortcut in (torch.randn(1, CHANNELS, 1, 1), torch.randn(3, CHANNELS, 5, 4).double()):
        outs = []
        for fused in (True, False):
            x = first_x.clone().requires_grad_()
            side = shortcut.clone().requires_grad_()
            if fused:
                out = gate_channels(x, gate.gate_of, ('mean',), gate, shortcut=side, relu=True)
            else:
                out = torch.relu(side + gate(x))
            out.sum().backward()
            outs.append((out.detach(), x.grad, side.grad))
        for ours, expected in zip(*outs):
            assert ours.dtype == expected.dtype and ours.shape == expected.shape
            torch.testing.assert_close(ours, expected)
