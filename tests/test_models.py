"""The attention zoo and the CIFAR ResNets, parametrised over both registries."""

import itertools

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd
from mxnet.gluon import nn

from models import (
    MODELS,
    UnknownNameError,
    count_macs,
    count_parameters,
    create_attention,
    get_attention,
    get_model,
    load_parameters,
    model_stats,
)
from models.__main__ import main as models_main
from models.architecture import network_counts
from models.attention import ECA, GCT, SE
from models.gluoncv_compat import import_gluoncv
from models.registry import attention_names, attention_spec, eca_kernel_size, reduced_units

# gluoncv's own networks, the reference for the vanilla ones.
gluoncv_get_model = import_gluoncv('gluoncv.model_zoo').get_model

ATTENTION_NAMES = list(attention_names())
WITH_PARAMETERS = [name for name in ATTENTION_NAMES if name != 'none']
# The original's attentions on the table's depths; the later ones on ResNet-20, whose
# blocks hold every stage's shape. ResNet-110 adds only more of the same blocks: its
# counts are checked against the architecture below (the suite's time is bounded).
ORIGINAL_ATTENTIONS = ('none', 'se', 'eca', 'gct')
TABLE_MODELS = [m for m in MODELS if not m.startswith('cifar_resnet110')]
CELLS = (
    list(itertools.product(TABLE_MODELS, ORIGINAL_ATTENTIONS))
    + list(
        itertools.product(
            ('cifar_resnet20_v1', 'cifar_resnet20_v2'),
            [a for a in ATTENTION_NAMES if a not in ORIGINAL_ATTENTIONS],
        )
    )
    # The SimAM paper's network (tests/test_variants.py): SimAM before the last BN.
    + [('cifar_resnet20_simam', 'simam'), ('cifar_resnet20_simam', 'se')]
)


def _built(model, attention, batch=2, seed=0):
    mx.random.seed(seed)
    net = get_model(model, attention)
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.normal(shape=(batch, 3, 32, 32))
    net(x)  # settle deferred shapes
    return net, x


def _attention_params(net):
    """Trainable attention parameters."""
    return {
        name: p
        for name, p in net.collect_params().items()
        if any(f'_{kind}' in name for kind in WITH_PARAMETERS) and p.grad_req != 'null'
    }


def _trainable(block):
    return {name: p for name, p in block.collect_params().items() if p.grad_req != 'null'}


def _randomise(params, seed=1):
    """Move attention parameters off their start values (GCT starts as the identity)."""
    rng = np.random.default_rng(seed)
    for param in params.values():
        param.set_data(mx.nd.array(rng.normal(0.0, 0.5, size=param.shape)))


@pytest.mark.parametrize('model,attention', CELLS)
def test_forward_shape_and_finite(model, attention):
    net, x = _built(model, attention)
    out = net(x)
    assert out.shape == (2, 10)
    assert np.isfinite(out.asnumpy()).all()


@pytest.mark.parametrize('model,attention', CELLS)
def test_hybridized_output_equals_imperative(model, attention):
    net, x = _built(model, attention)
    _randomise(_attention_params(net))
    imperative = net(x).asnumpy()
    net.hybridize(static_alloc=True, static_shape=True)
    hybrid = net(x).asnumpy()
    np.testing.assert_allclose(hybrid, imperative, rtol=1e-4, atol=1e-5)


def _revive_dead_se_units(net, x, passes=5):
    """Negate SE bottleneck rows whose ReLU is off for every image.

    The residual branches' pooled values barely vary across images, so a random
    row can be off for the whole batch; it then rightly gets no gradient, which
    would hide whether the parameter is wired in at all. Negating the row turns it on.
    """
    modules = [b for b in _iter_blocks(net) if isinstance(b, SE)]
    for _ in range(passes):
        seen = []
        # The module's input, not its squeeze layer's: on the CPU the fused operator
        # computes the whole module and never calls the layer.
        handles = [
            se.register_forward_pre_hook(
                lambda block, inputs: seen.append((block, inputs[0].asnumpy()))  # noqa: B023
            )
            for se in modules
        ]
        with autograd.train_mode():  # BN on batch statistics, as in the backward pass
            net(x)
        for handle in handles:
            handle.detach()
        dead_any = False
        for module, branch in seen:
            weight = module.squeeze.weight.data().asnumpy()
            pre_activation = branch.mean(axis=(2, 3)) @ weight.T
            dead = (pre_activation <= 0).all(axis=0)
            if dead.any():
                dead_any = True
                weight[dead] *= -1
                module.squeeze.weight.set_data(mx.nd.array(weight))
        if not dead_any:
            return
    raise AssertionError('could not revive every SE unit')


def _open_cbam_units(net):
    """CBAM's MLP has one hidden unit at 16 channels (r = 16): a random one that is off
    for every image passes no gradient, which would hide whether the rest is wired in. A
    large bias keeps each unit on; every parameter still gets its gradient."""
    for block in _iter_blocks(net):
        if type(block).__name__ == 'CBAM':
            block.squeeze.bias.set_data(mx.nd.full(block.squeeze.bias.shape, 10.0))


def _iter_blocks(block):
    yield block
    for child in block._children.values():
        yield from _iter_blocks(child)


@pytest.mark.parametrize('model,attention', CELLS)
def test_gradients_reach_every_attention_parameter(model, attention):
    net, x = _built(model, attention, batch=8)
    params = _attention_params(net)
    assert bool(params) == (network_counts(model, attention).params > network_counts(model).params)
    _randomise(params)
    _revive_dead_se_units(net, x)
    _open_cbam_units(net)
    labels = mx.nd.array(np.arange(x.shape[0]) % 10)
    with autograd.record():
        loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(x), labels).mean()
    loss.backward()
    for name, param in params.items():
        grad = param.grad().asnumpy()
        assert np.isfinite(grad).all(), name
        assert np.abs(grad).sum() > 0, f'no gradient reaches {name}'


@pytest.mark.parametrize('model', MODELS)
def test_vanilla_parameters_equal_gluoncv(model):
    ours, x = _built(model, 'none')
    theirs = gluoncv_get_model(model, classes=10)
    theirs.initialize()
    theirs(x)
    assert count_parameters(ours) == count_parameters(theirs)
    all_ours = sum(p.data().size for p in ours.collect_params().values())
    all_theirs = sum(p.data().size for p in theirs.collect_params().values())
    assert all_ours == all_theirs
    assert sorted(p.shape for p in ours.collect_params().values()) == sorted(
        p.shape for p in theirs.collect_params().values()
    )


# The attention's blocks are the same in v1 and v2 (their counts are checked against the
# built networks in test_counts_from_the_architecture_equal_the_built_networks).
@pytest.mark.parametrize('model', ['cifar_resnet20_v1', 'cifar_resnet56_v1'])
@pytest.mark.parametrize('attention', WITH_PARAMETERS)
def test_whole_network_overhead_is_the_module_formula_summed_over_blocks(model, attention):
    depth = int(model.split('resnet')[1].split('_')[0])
    blocks = (depth - 2) // 6
    per_module = {
        'se': lambda c: 2 * c * reduced_units(c, 16),
        'eca': lambda c: eca_kernel_size(c),
        'gct': lambda c: 3 * c,
        # CBAM's MLP has biases; SRM: its channel-wise layer and BN's scale and shift.
        'cbam': lambda c: 2 * c * reduced_units(c, 16) + reduced_units(c, 16) + c,
        'srm': lambda c: 4 * c,
        'simam': lambda c: 0,
    }[attention]
    expected = sum(blocks * per_module(c) for c in (16, 32, 64))
    assert model_stats(model, attention).params - model_stats(model, 'none').params == expected


def _module(attention_class, channels, **kwargs):
    block = attention_class(channels, **kwargs)
    block.initialize()
    block(mx.nd.ones((1, channels, 4, 4)))
    return block


@pytest.mark.parametrize('channels,reduction', [(64, 16), (32, 4), (16, 16), (8, 16)])
def test_se_parameter_count(channels, reduction):
    hidden = max(1, channels // reduction)
    assert count_parameters(_module(SE, channels, reduction=reduction)) == 2 * channels * hidden
    if channels >= reduction:
        assert (
            count_parameters(_module(SE, channels, reduction=reduction))
            == 2 * channels * channels // reduction
        )


@pytest.mark.parametrize('channels,kernel', [(16, 3), (32, 3), (64, 3), (128, 5), (512, 5)])
def test_eca_adaptive_kernel_and_parameter_count(channels, kernel):
    assert eca_kernel_size(channels) == kernel
    assert count_parameters(_module(ECA, channels)) == kernel


def test_eca_fixed_kernel_and_bad_kernel():
    assert count_parameters(_module(ECA, 64, kernel_size=7)) == 7
    with pytest.raises(ValueError, match='odd'):
        ECA(64, kernel_size=4)


@pytest.mark.parametrize('channels', [16, 64])
def test_gct_parameter_count_and_no_weight_decay_on_beta(channels):
    block = _module(GCT, channels)
    assert count_parameters(block) == 3 * channels
    wd = {name.rsplit('_', 1)[-1]: p.wd_mult for name, p in block.collect_params().items()}
    assert wd == {'alpha': 1.0, 'gamma': 1.0, 'beta': 0.0}


def test_gct_is_identity_at_initialisation():
    block = GCT(32)
    block.initialize()
    x = mx.nd.random.normal(shape=(4, 32, 8, 8))
    np.testing.assert_array_equal(block(x).asnumpy(), x.asnumpy())


# Plain numpy formulas of each paper, against which the Gluon modules are checked.
def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _reference_se(x, w_squeeze, w_excite):
    pooled = x.mean(axis=(2, 3))
    weights = _sigmoid(np.maximum(pooled @ w_squeeze.T, 0.0) @ w_excite.T)
    return x * weights[:, :, None, None]


def _reference_eca(x, kernel):
    pooled = x.mean(axis=(2, 3))
    k = kernel.size
    padded = np.pad(pooled, ((0, 0), (k // 2, k // 2)))
    mixed = np.stack([padded[:, i : i + k] @ kernel for i in range(pooled.shape[1])], axis=1)
    return x * _sigmoid(mixed)[:, :, None, None]


def _reference_gct(x, alpha, gamma, beta, eps=1e-5):
    embedding = np.sqrt((x**2).sum(axis=(2, 3), keepdims=True) + eps) * alpha
    norm = gamma / np.sqrt((embedding**2).mean(axis=1, keepdims=True) + eps)
    return x * (1.0 + np.tanh(embedding * norm + beta))


@pytest.mark.parametrize('implementation', ['fused kernels', 'mxnet operators'])
def test_modules_compute_their_papers_formulas(implementation, monkeypatch):
    import models.kernels

    if implementation == 'mxnet operators':
        monkeypatch.setattr(models.kernels, '_status', (False, 'turned off by the test'))
    else:
        assert models.kernels.fused_kernels_available()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 32, 5, 5)).astype(np.float32)

    se = _module(SE, 32, reduction=4)
    _randomise(_trainable(se))
    w_squeeze, w_excite = (p.data().asnumpy() for p in _trainable(se).values())
    assert len(_trainable(se)) == 2
    np.testing.assert_allclose(
        se(mx.nd.array(x)).asnumpy(), _reference_se(x, w_squeeze, w_excite), rtol=1e-5, atol=1e-6
    )

    eca = _module(ECA, 32, kernel_size=5)
    _randomise(_trainable(eca))
    kernel = eca.weight.data().asnumpy().reshape(-1)
    np.testing.assert_allclose(
        eca(mx.nd.array(x)).asnumpy(), _reference_eca(x, kernel), rtol=1e-5, atol=1e-6
    )

    gct = _module(GCT, 32)
    _randomise(_trainable(gct))
    values = {
        name.rsplit('_', 1)[-1]: p.data().asnumpy() for name, p in gct.collect_params().items()
    }
    np.testing.assert_allclose(
        gct(mx.nd.array(x)).asnumpy(),
        _reference_gct(x, values['alpha'], values['gamma'], values['beta']),
        rtol=1e-4,
        atol=1e-5,
    )


def test_attention_sits_on_the_residual_branch_before_the_addition():
    """With an attention that zeroes its input, a v1 block reduces to relu(shortcut)."""

    class Zero(nn.HybridBlock):
        def __init__(self, channels, **kwargs):
            super().__init__(**kwargs)

        def hybrid_forward(self, F, x):
            return x * 0

    from models.cifar_resnet import BasicBlockV1, BasicBlockV2

    x = mx.nd.random.normal(shape=(2, 16, 8, 8))
    for block_class, expected in ((BasicBlockV1, mx.nd.relu(x)), (BasicBlockV2, x)):
        block = block_class(16, 1, downsample=False, in_channels=16, attention_class=Zero)
        block.initialize()
        np.testing.assert_allclose(block(x).asnumpy(), expected.asnumpy())


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError) as error:
        get_attention('coord')
    assert all(name in str(error.value) for name in ATTENTION_NAMES)
    with pytest.raises(UnknownNameError) as error:
        get_model('cifar_resnet21_v1')
    assert all(name in str(error.value) for name in MODELS)
    with pytest.raises(UnknownNameError):
        get_model('resnet18_v1')
    with pytest.raises(UnknownNameError):
        get_model('cifar_resnet20_v1', attention='SE-Net')


def test_any_depth_6n_plus_2_builds():
    net, _ = _built('cifar_resnet8_v2', 'eca')
    assert sum(1 for name in net.collect_params() if '_eca' in name and 'weight' in name) == 3


def test_registry_factory_and_options():
    assert create_attention('none', 16) is None
    assert isinstance(create_attention('se', 16, reduction=4), SE)
    net = get_model('cifar_resnet20_v1', 'se', attention_kwargs={'reduction': 4, 'unused': None})
    net.initialize()
    net(mx.nd.zeros((1, 3, 32, 32)))
    assert count_parameters(net) - model_stats('cifar_resnet20_v1').params == 3 * sum(
        2 * c * (c // 4) for c in (16, 32, 64)
    )
    with pytest.raises(ValueError, match='none'):
        get_model('cifar_resnet20_v1', 'none', attention_kwargs={'reduction': 4})


def test_count_macs_of_single_layers():
    conv = nn.Conv2D(8, 3, padding=1, in_channels=4)
    conv.initialize()
    assert count_macs(conv, (1, 4, 10, 10)) == 8 * 10 * 10 * 4 * 3 * 3
    dense = nn.Dense(5, in_units=7)
    dense.initialize()
    assert count_macs(dense, (1, 7)) == 35


def test_resnet20_macs_match_the_known_figure():
    # 40.8 M multiply-adds is the figure usually quoted for CIFAR ResNet-20.
    assert model_stats('cifar_resnet20_v1').macs == 40_813_184


@pytest.mark.parametrize('attention', WITH_PARAMETERS)
def test_attention_macs_count_their_weights_and_their_passes_over_the_activation(attention):
    """One convention for all three: weighted work as the papers count it, plus two passes
    (pooling or sum of squares, and the scaling) over each block's C x H x W output."""
    extra = model_stats('cifar_resnet20_v1', attention).macs - model_stats('cifar_resnet20_v1').macs
    stages = ((16, 32), (32, 16), (64, 8))  # channels, side of the block's output
    weights = {
        'se': lambda c: 2 * c * reduced_units(c, 16),
        'eca': lambda c: c * eca_kernel_size(c),
        'gct': lambda c: 0,
        'cbam': lambda c: 4 * c * reduced_units(c, 16),  # the MLP on both descriptors
        'srm': lambda c: 2 * c,
        'simam': lambda c: 0,
    }[attention]
    # Passes over C x H x W: pooling (CBAM: average and max; SRM: the mean and the
    # squared deviations; SimAM: mean, deviations, energy) and the scaling.
    passes = {'cbam': 3, 'srm': 3, 'simam': 4}.get(attention, 2)
    assert extra == 3 * sum(weights(c) + passes * c * side * side for c, side in stages)


@pytest.mark.parametrize(
    'model,attention,options',
    [
        *[(m, a, {}) for m, a in CELLS],
        ('cifar_resnet110_v1', 'gct', {}),
        ('cifar_resnet110_v2', 'se', {}),
        ('cifar_resnet8_v2', 'se', {'reduction': 4}),
        ('cifar_resnet8_v1', 'eca', {'kernel_size': 5}),
        ('cifar_resnet14_v2', 'gct', {}),
    ],
)
def test_counts_from_the_architecture_equal_the_built_networks(model, attention, options):
    """What the sweep records without a framework is what the built network measures."""
    stats = model_stats(model, attention, attention_kwargs=options)
    assert network_counts(model, attention, options) == (stats.params, stats.macs)


def test_models_command_prints_every_cell(capsys):
    assert models_main(['--models', 'cifar_resnet20_v1', 'cifar_resnet20_v2']) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == list(
        itertools.product(['cifar_resnet20_v1', 'cifar_resnet20_v2'], ATTENTION_NAMES)
    )
    assert rows[0][2] == '272,474'


def test_each_spec_names_the_options_its_modules_take():
    """The registry (plain Python) lists exactly the options each backend's constructor
    takes after the channel count, with the constructor's defaults."""
    import inspect

    for name in ATTENTION_NAMES:
        spec = attention_spec(name)
        for backend in ('gluon', 'torch'):
            module_class = spec.module_class(backend)
            if module_class is None:
                assert name == 'none' and spec.options == ()
                continue
            parameters = {
                p.name: p.default
                for p in inspect.signature(module_class.__init__).parameters.values()
                if p.name not in ('self', 'channels', 'kwargs')
            }
            assert parameters == {o.name: o.default for o in spec.options}, (name, backend)


def test_attention_names_ignore_case_in_both_backends():
    import torch

    import models.pytorch

    for spelling in ('SE', 'Se', ' se', 'SimAM'):
        assert attention_spec(spelling).name == spelling.strip().lower()
    net = models.pytorch.get_model('cifar_resnet8_v1', attention='SE')
    assert any(isinstance(m, models.pytorch.SE) for m in net.modules())
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert get_attention('ECA') is ECA


def test_eca_holds_its_kernel_and_nothing_else():
    """No constant parameter: ResNet-20 once carried 48,411 floats of shift matrices in
    every checkpoint, counted by any tool that walks collect_params()."""
    net, _ = _built('cifar_resnet20_v1', 'eca')
    attention = {
        name: p for name, p in net._collect_params_with_prefix().items() if '.attention.' in name
    }
    assert {name.rpartition('.')[2] for name in attention} == {'weight'}
    assert all(p.grad_req == 'write' for p in attention.values())


def test_weights_saved_by_earlier_versions_load_without_their_retired_constants(tmp_path):
    """A checkpoint of an unfinished ECA trial saved before the shift matrices were
    retired still resumes; any other stranger in a file is refused, naming it."""
    net, x = _built('cifar_resnet20_v1', 'eca')
    saved = {name: p.data() for name, p in net._collect_params_with_prefix().items()}
    old = dict(saved)
    for name in saved:
        if name.endswith('.attention.weight'):
            old[name.replace('.weight', '.shifts')] = mx.nd.ones((3, 16 * 16))
    mx.nd.save(str(tmp_path / 'old.params'), old)
    fresh, _ = _built('cifar_resnet20_v1', 'eca', seed=1)
    load_parameters(fresh, tmp_path / 'old.params')
    np.testing.assert_array_equal(fresh(x).asnumpy(), net(x).asnumpy())

    stranger = dict(old, **{'features.1.0.attention.bias': mx.nd.ones((1,))})
    mx.nd.save(str(tmp_path / 'stranger.params'), stranger)
    with pytest.raises(ValueError, match='attention.bias'):
        load_parameters(fresh, tmp_path / 'stranger.params')
    missing = {k: v for k, v in saved.items() if not k.endswith('.attention.weight')}
    mx.nd.save(str(tmp_path / 'missing.params'), missing)
    with pytest.raises(AssertionError, match='is missing'):
        load_parameters(fresh, tmp_path / 'missing.params')
