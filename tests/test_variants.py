"""Declared network variants compute their paper's networks.

cifar_resnet<depth>_simam is the CIFAR ResNet of the SimAM paper's official code
(ZjjConan/SimAM at ae98f43, networks/cifar/resnet.py and block.py):
that code's ResNet-20 is written out below as it stands there (BasicBlock only,
without its module registry), our weights are loaded into it, and both must give the
same outputs and gradients. Gluon equals PyTorch for the variant in
tests/test_torch_equivalence.py; its counts equal the built networks' in
tests/test_models.py.
"""

import dataclasses
import math

import mxnet as mx
import numpy as np
import pytest

torch = pytest.importorskip('torch', reason='the torch extra is not installed')
from torch import nn  # noqa: E402

from models.architecture import network_counts  # noqa: E402
from models.cifar_resnet import FanInUniform, network_initializer  # noqa: E402
from models.names import (  # noqa: E402
    VARIANTS,
    UnknownNameError,
    model_sort_key,
    network_revision,
    network_variant,
    parse_model_name,
)
from models.pytorch import get_model as torch_model  # noqa: E402


class PaperSimAM(nn.Module):
    """simam_module of networks/attentions/simam_module.py."""

    def __init__(self, channels=None, e_lambda=1e-4):
        super().__init__()
        self.activaton = nn.Sigmoid()
        self.e_lambda = e_lambda

    def forward(self, x):
        b, c, h, w = x.size()
        n = w * h - 1
        x_minus_mu_square = (x - x.mean(dim=[2, 3], keepdim=True)).pow(2)
        y = (
            x_minus_mu_square
            / (4 * (x_minus_mu_square.sum(dim=[2, 3], keepdim=True) / n + self.e_lambda))
            + 0.5
        )
        return x * self.activaton(y)


def conv3x3(in_channels, ou_channels, stride=1):
    return nn.Conv2d(in_channels, ou_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class PaperBasicBlock(nn.Module):
    """BasicBlock of networks/cifar/block.py: SimAM joins conv2, any other module bn2."""

    def __init__(self, in_channels, ou_channels, stride=1, attention_module=None):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = conv3x3(in_channels, ou_channels, stride=stride)
        self.bn1 = nn.BatchNorm2d(ou_channels)
        self.conv2 = conv3x3(ou_channels, ou_channels, stride=1)
        self.bn2 = nn.BatchNorm2d(ou_channels)
        if attention_module is not None:
            if attention_module is PaperSimAM:
                self.conv2 = nn.Sequential(self.conv2, attention_module(ou_channels))
            else:
                self.bn2 = nn.Sequential(self.bn2, attention_module(ou_channels))
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != ou_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, ou_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(ou_channels),
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class PaperResNet(nn.Module):
    """ResNet of networks/cifar/resnet.py (ResNet20: [3, 3, 3] BasicBlocks)."""

    def __init__(self, num_blocks, attention_module=None, num_class=10):
        super().__init__()
        self.in_channels = num_filters = 16
        self.conv1 = nn.Conv2d(3, self.in_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.in_channels)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.attention_module = attention_module
        self.layer1 = self._make_layer(self.in_channels, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(num_filters * 2, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(num_filters * 4, num_blocks[2], stride=2)
        self.linear = nn.Linear(num_filters * 4, num_class)

    def _make_layer(self, ou_channels, num_blocks, stride):
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(
                PaperBasicBlock(self.in_channels, ou_channels, block_stride, self.attention_module)
            )
            self.in_channels = ou_channels
        return nn.Sequential(*layers)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.avgpool(out)
        return self.linear(out.view(out.size(0), -1))


def _paper_state_from_ours(ours, attention):
    """Our variant's parameters and BN statistics under the paper code's names."""
    state = {}
    stem = {'features.0': 'conv1', 'features.1': 'bn1'}
    conv2 = 'conv2.0' if attention == 'simam' else 'conv2'
    block_parts = {
        'body.0': 'conv1',
        'body.1': 'bn1',
        'body.3': conv2,
        'body.4': 'bn2',
        'downsample.0': 'shortcut.0',
        'downsample.1': 'shortcut.1',
    }
    for key, value in ours.state_dict().items():
        module, _, leaf = key.rpartition('.')
        if module in stem:
            state[f'{stem[module]}.{leaf}'] = value
        elif module == 'output':
            state[f'linear.{leaf}'] = value
        else:
            # features.<3 + stage>.<block>.<part>: the stem's ReLU is features.2.
            _, stage, block, part = module.split('.', 3)
            state[f'layer{int(stage) - 2}.{block}.{block_parts[part]}.{leaf}'] = value
    return state


def _with_moved_statistics(net, seed=0):
    """BN statistics off their start values, so evaluation uses them."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for module in net.modules():
            if hasattr(module, 'running_var') and module.running_var is not None:
                module.running_var.copy_(
                    torch.from_numpy(rng.uniform(0.8, 1.25, module.num_features))
                )
                module.running_mean.copy_(torch.from_numpy(rng.normal(0, 0.2, module.num_features)))
    return net


@pytest.mark.parametrize('attention', ['none', 'simam'])
def test_the_simam_variant_computes_the_simam_papers_network(attention):
    ours = _with_moved_statistics(torch_model('cifar_resnet20_simam', attention, seed=0))
    paper = PaperResNet([3, 3, 3], PaperSimAM if attention == 'simam' else None)
    paper.load_state_dict(_paper_state_from_ours(ours, attention), strict=True)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ours.eval(), paper.eval()
    torch.testing.assert_close(ours(x), paper(x), rtol=1e-5, atol=1e-5)
    # Training mode: batch statistics, and the same gradient for every parameter, in
    # float64: in float32 the paper's autograd-differentiated SimAM strays by about 1 %
    # of the input gradient's largest value (planes of small variance amplify its
    # rounding), while ours (written-out backward, models/pytorch/simam.py) is within
    # 1e-5 of float64's.
    ours.train().double(), paper.train().double()
    x = x.double().requires_grad_(True)
    loss_ours = ours(x).square().mean()
    loss_paper = paper(x).square().mean()
    torch.testing.assert_close(loss_ours, loss_paper, rtol=1e-5, atol=1e-6)
    gradients_ours = torch.autograd.grad(loss_ours, [x, *ours.parameters()])
    gradients_paper = torch.autograd.grad(loss_paper, [x, *paper.parameters()])
    named_paper = dict(zip(['input', *dict(paper.named_parameters())], gradients_paper))
    paper_names = _paper_state_from_ours(ours, attention)
    ours_by_paper_name = dict(
        zip(
            ['input', *(k for k in paper_names if k in dict(paper.named_parameters()))],
            gradients_ours,
        )
    )
    for name, gradient in named_paper.items():
        torch.testing.assert_close(ours_by_paper_name[name], gradient, rtol=1e-4, atol=1e-7)


def test_the_original_v1_is_not_the_papers_network():
    """What the variant declares matters: v1's layout under the same weights differs
    (no stem ReLU, SimAM after the last BN)."""
    ours = torch_model('cifar_resnet20_v1', 'simam', seed=0).eval()
    variant = torch_model('cifar_resnet20_simam', 'simam', seed=0).eval()
    variant_state = variant.state_dict()
    renamed = {}
    for key, value in variant_state.items():
        parts = key.split('.')
        if parts[0] == 'features' and int(parts[1]) >= 3:
            parts[1] = str(int(parts[1]) - 1)  # no stem ReLU in v1
        renamed['.'.join(parts)] = value
    ours.load_state_dict(renamed, strict=True)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(ours(x), variant(x), atol=1e-3)


def test_variant_names_parse_sort_and_count_as_their_version():
    assert parse_model_name('cifar_resnet56_simam') == (1, 56, 'simam')
    assert parse_model_name('cifar_resnet56_simam').family == 'simam'
    assert parse_model_name('cifar_resnet56_v2').family == 'v2'
    assert network_variant('cifar_resnet20_v1') is None
    assert network_variant('cifar_resnet20_simam') is VARIANTS['simam']
    assert network_revision('cifar_resnet20_simam') == 1
    for name in ('cifar_resnet20_SimAM', 'cifar_resnet20_simam2', 'cifar_resnet21_simam', 'simam'):
        with pytest.raises(UnknownNameError, match='cifar_resnet<depth>_simam'):
            parse_model_name(name)
    names = ['cifar_resnet56_v1', 'cifar_resnet20_v2', 'cifar_resnet20_simam', 'cifar_resnet20_v1']
    assert sorted(names, key=model_sort_key) == [
        'cifar_resnet20_v1',
        'cifar_resnet20_simam',
        'cifar_resnet20_v2',
        'cifar_resnet56_v1',
    ]
    # A ReLU, a placement and initial values change no count.
    for attention in ('none', 'se', 'simam'):
        assert network_counts('cifar_resnet56_simam', attention) == network_counts(
            'cifar_resnet56_v1', attention
        )


def _fan_in_bound(shape):
    return 1 / math.sqrt(math.prod(shape[1:]))


def _assert_fan_in_uniform(weights):
    """Every weight inside +-1/sqrt(fan_in), spread as a uniform there (std = bound/sqrt(3),
    within sampling error), which Xavier's wider bound would not give."""
    for name, weight in weights.items():
        bound = _fan_in_bound(weight.shape)
        assert np.abs(weight).max() <= bound * (1 + 1e-6), name
        if weight.size >= 2000:
            assert abs(weight.std() / (bound / math.sqrt(3)) - 1) < 0.1, name


def test_the_variant_starts_from_pytorchs_default_weights_in_both_backends():
    from bench.trial.gluon.trainer import build_network
    from bench.trial.recipe import Recipe, TrialSpec

    assert isinstance(network_initializer('cifar_resnet20_simam'), FanInUniform)
    assert isinstance(network_initializer('cifar_resnet20_v1'), mx.init.Xavier)
    spec = TrialSpec(model='cifar_resnet20_simam', attention='se', seed=3, recipe=Recipe())
    net = build_network(spec, [mx.cpu()])
    net(mx.nd.zeros((1, 3, 32, 32)))
    params = {n: p.data().asnumpy() for n, p in net._collect_params_with_prefix().items()}
    _assert_fan_in_uniform({n: v for n, v in params.items() if n.endswith('weight')})
    assert not params['output.bias'].any()
    # The same seed, the same start; another seed, another.
    again = build_network(spec, [mx.cpu()])
    again(mx.nd.zeros((1, 3, 32, 32)))
    np.testing.assert_array_equal(
        again.features[0].weight.data().asnumpy(), params['features.0.weight']
    )
    other = build_network(dataclasses.replace(spec, seed=4), [mx.cpu()])
    other(mx.nd.zeros((1, 3, 32, 32)))
    assert not np.array_equal(
        other.features[0].weight.data().asnumpy(), params['features.0.weight']
    )

    torch_net = torch_model('cifar_resnet20_simam', 'eca', seed=3)
    weights = {
        n: p.detach().numpy()
        for n, p in torch_net.named_parameters()
        if n.endswith('weight') and p.dim() > 1 and '.attention.' not in n
    }
    _assert_fan_in_uniform(weights)
    assert not torch_net.output.bias.detach().any()
    # ECA's weight keeps its own initialiser (Xavier), as its Gluon parameter does.
    eca = next(m for m in torch_net.modules() if hasattr(m, 'xavier_parameters'))
    assert eca.weight.abs().max() > _fan_in_bound(eca.weight.shape)


def test_a_table_with_a_variant_says_which_network_each_row_is(tmp_path):
    from bench.store import ResultsStore
    from reports import render_all

    from .store_helpers import add_trial, record_sweep

    store = ResultsStore(tmp_path / 'store')
    models = ['cifar_resnet20_v1', 'cifar_resnet20_simam']
    for model in models:
        for attention in ('none', 'se'):
            add_trial(store, model, attention, 0, train_loss=0.1, val_acc=0.9)
    record_sweep(store, models, ['none', 'se'], overhead=False)
    readme = tmp_path / 'README.md'
    render_all(store.root, readme=readme, figures_dir=tmp_path / 'f', figures=False)
    text = readme.read_text()
    assert 'TBA' not in text  # every cell trained: no cell, and no note, says TBA
    assert text.index('<td>cifar_resnet20_v1</td>') < text.index('<td>cifar_resnet20_simam</td>')
    assert "Network definitions: v1 revision 1 (the original repository's networks)" in text
    assert (
        "Network definition simam revision 1 (the \\*\\_simam rows): the SimAM paper's CIFAR "
        'ResNet as its code builds it'
    ) in text
