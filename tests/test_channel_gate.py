"""The torch attentions' hand-written backward passes (models/pytorch/channel_gate.py,
simam.py) compute autograd's gradients, and the CPU session's malloc setting ends the
page faults that it exists for."""

import contextlib
import platform
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip('torch', reason='the torch extra is not installed')

from torch import nn  # noqa: E402

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
    torch.manual_seed(1)
    gate = _Gate(statistics)
    x = _input(channels_last=channels_last, shape=(4, CHANNELS, 8, 8))
    grad = torch.randn(4, CHANNELS, 8, 8)
    results = []
    for compute in (gate, lambda x: _autograd_reference(gate, x)):
        x.grad = None
        gate.zero_grad()
        out = compute(x)
        out.backward(grad)
        results.append((out, x.grad, [p.grad.clone() for p in gate.parameters()]))
    (out, x_grad, parameter_grads), (ref_out, ref_x_grad, ref_parameter_grads) = results
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(x_grad, ref_x_grad)
    for ours, reference in zip(parameter_grads, ref_parameter_grads):
        torch.testing.assert_close(ours, reference)
    # Channels-last in, channels-last out both ways: the next convolution needs no
    # reordering.
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert x_grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('attention', ['se', 'eca', 'gct', 'cbam', 'srm', 'simam'])
def test_each_attention_trains_as_under_plain_autograd(attention):
    """Each module through its hand-written backward and through the plain formula (what
    torch.compile traces) agree: outputs, input and parameter gradients."""
    torch.manual_seed(2)
    module = attention_spec(attention).module_class('torch')(16)
    for param in module.parameters():
        nn.init.normal_(param, std=0.5)
    x = _input(channels_last=True, shape=(4, 16, 8, 8))
    grad = torch.randn(4, 16, 8, 8)
    results = []
    for formulas in (contextlib.nullcontext, channel_gate.autograd_formulas):
        x.grad = None
        module.zero_grad()
        with formulas():
            out = module(x)
        out.backward(grad)
        results.append((out, x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}))
    (out, x_grad, grads), (ref_out, ref_x_grad, ref_grads) = results
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(x_grad, ref_x_grad, rtol=1e-4, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-4, atol=1e-5, msg=name)


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
    with pytest.raises(RuntimeError, match='second derivatives'):
        torch.autograd.grad(gate(x).sum(), x, create_graph=True)


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
        from bench.trial.pytorch.host_memory import keep_freed_memory_for_reuse
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
    result = subprocess.run(
        [sys.executable, '-c', script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    before, after = map(float, result.stdout.split())
    assert after < 100 and after < before / 20, (before, after)
