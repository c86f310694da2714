"""The PyTorch networks and optimizers compute what the Gluon ones compute.

Gluon (MXNet 1.9) is the reference: a Gluon network's weights and BN statistics
are loaded into the PyTorch network (models.pytorch.convert), and both must give
the same outputs, loss, gradients, BN statistics and updates, in float32 on the CPU.
"""

import itertools

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

torch = pytest.importorskip('torch', reason='the torch extra is not installed')

from bench.trial.pytorch.optim import make_optimizer, set_learning_rate  # noqa: E402
from bench.trial.recipe import Recipe  # noqa: E402
from models import get_model as gluon_model  # noqa: E402
from models.architecture import network_counts  # noqa: E402
from models.pytorch import get_model as torch_model  # noqa: E402
from models.pytorch import gluon_names, load_gluon_parameters  # noqa: E402

TABLE_MODELS = ('cifar_resnet20_v1', 'cifar_resnet20_v2', 'cifar_resnet56_v1', 'cifar_resnet56_v2')
ORIGINAL_ATTENTIONS = ('none', 'se', 'eca', 'gct')
# The later attentions on ResNet-20 (every stage's shape) only: the suite's time is bounded.
CELLS = (
    list(itertools.product(TABLE_MODELS, ORIGINAL_ATTENTIONS))
    + list(itertools.product(('cifar_resnet20_v1', 'cifar_resnet20_v2'), ('cbam', 'srm', 'simam')))
    # The SimAM paper's network: SimAM sits before the last BN, SE after it.
    + [('cifar_resnet20_simam', 'simam'), ('cifar_resnet20_simam', 'se')]
)
RTOL = 1e-4


def assert_close(ours, reference, what, rtol=RTOL):
    """|ours - reference| <= rtol x the reference's largest value (float32 rounding by
    default)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    scale = max(float(np.abs(reference).max()), 1e-300)
    worst = float(np.abs(ours - reference).max()) / scale
    assert worst <= rtol, f'{what}: off by {worst:.2e} of its largest value'


def randomised_gluon(model, attention, seed=0, batch=4):
    """A Gluon network, Xavier-initialised, with its BN statistics and its attentions'
    parameters moved off their start values (GCT starts as the identity, BN statistics at
    0 and 1), and an input batch.

    BN's scale and shift keep their start values: with random ones some channels come
    out of a ReLU nearly constant, and on such channels MXNet's own float32 gradients
    stray by up to 1e-2 from a float64 computation (PyTorch's by 1e-5), so no tolerance
    could tell a wrong function from MXNet's rounding."""
    mx.random.seed(seed)
    net = gluon_model(model, attention)
    net.initialize(mx.init.Xavier())
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, size=(batch, 3, 32, 32)).astype(np.float32)
    net(mx.nd.array(x))
    for name, param in net._collect_params_with_prefix().items():
        leaf = name.rpartition('.')[2]
        value = param.data().asnumpy()
        if leaf == 'running_var':
            value = rng.uniform(0.8, 1.25, size=value.shape)
        elif leaf == 'running_mean':
            value = rng.normal(0.0, 0.2, size=value.shape)
        elif '.attention.' in name:
            value = value + rng.normal(0.0, 0.2, size=value.shape)
        else:
            continue
        param.set_data(mx.nd.array(value))
    return net, x


def converted(model, attention, gluon_net):
    return load_gluon_parameters(torch_model(model, attention), gluon_net)


@pytest.mark.parametrize('model,attention', CELLS)
def test_same_parameters_and_the_converter_uses_every_one(model, attention):
    net = torch_model(model, attention)
    assert sum(p.numel() for p in net.parameters()) == network_counts(model, attention)[0]
    gluon_net, _ = randomised_gluon(model, attention)
    gluon_params = set(gluon_net._collect_params_with_prefix())
    mapped = set(gluon_names(net).values())
    assert mapped <= gluon_params
    # Left over: only v2's fixed input-BN scale and shift.
    assert gluon_params - mapped <= {'features.0.gamma', 'features.0.beta'}


@pytest.mark.parametrize('model,attention', CELLS)
def test_converted_networks_give_the_same_outputs_in_inference_and_training(model, attention):
    gluon_net, x = randomised_gluon(model, attention)
    net = converted(model, attention, gluon_net)
    net.eval()
    with torch.no_grad():
        assert_close(
            net(torch.from_numpy(x)).numpy(),
            gluon_net(mx.nd.array(x)).asnumpy(),
            'inference output',
        )
    net.train()
    with autograd.record():
        reference = gluon_net(mx.nd.array(x))
    assert_close(
        net(torch.from_numpy(x)).detach().numpy(), reference.asnumpy(), 'training-mode output'
    )


@pytest.fixture
def mxnet_operators(monkeypatch):
    """The Gluon attentions built from MXNet's operators (the fused kernels are float32-only)."""
    from models import kernels

    monkeypatch.setattr(kernels, '_status', (False, 'turned off by the test'))


@pytest.mark.parametrize('model,attention', CELLS)
def test_one_training_step_gives_the_same_loss_gradients_statistics_and_update(
    model, attention, mxnet_operators
):
    """The loss in float32; the gradients, BN statistics and Adam's update in float64.

    In float32 the two frameworks' first-layer gradients of these deep networks differ
    by up to 1e-2 of their largest value, and MXNet is the one that strays: against a
    float64 computation its float32 gradients are off by up to 1e-2, PyTorch's by 1e-5
    (measured on this suite's networks). In float64 both compute every gradient to
    1e-13 of each other, which a different function could not."""
    gluon_net, x = randomised_gluon(model, attention)
    net = converted(model, attention, gluon_net)
    labels = np.arange(len(x)) % 10
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    net.train()
    with autograd.train_mode():  # batch statistics, as in training
        gluon_loss = loss_fn(gluon_net(mx.nd.array(x)), mx.nd.array(labels)).sum()
    assert_close(
        torch.nn.functional.cross_entropy(
            net(torch.from_numpy(x)), torch.from_numpy(labels), reduction='sum'
        ).item(),
        gluon_loss.asscalar(),
        'float32 loss',
    )

    gluon_net.cast('float64')
    net = converted(model, attention, gluon_net).double()
    trainer = gluon.Trainer(
        gluon_net.collect_params(),
        'adam',
        {'learning_rate': 0.003, 'wd': 1e-4},
        update_on_kvstore=False,
    )
    optimizer = make_optimizer(net, Recipe(lr=0.003, wd=1e-4))
    with autograd.record():
        gluon_loss = loss_fn(
            gluon_net(mx.nd.array(x, dtype='float64')), mx.nd.array(labels, dtype='float64')
        ).sum()
    gluon_loss.backward()
    loss = torch.nn.functional.cross_entropy(
        net(torch.from_numpy(x).double()), torch.from_numpy(labels), reduction='sum'
    )
    (loss / len(x)).backward()  # Trainer.step(batch) divides the sum's gradient
    gluon_params = gluon_net._collect_params_with_prefix()
    state = dict(net.named_parameters())
    names = gluon_names(net)
    for key, gluon_name in names.items():
        reference = gluon_params[gluon_name]
        if key in state:
            assert_close(
                state[key].grad.numpy() * len(x),
                reference.grad().asnumpy(),
                f'{key} gradient',
                rtol=1e-10,
            )
        else:
            # BN statistics, which MXNet updates in the backward pass; it holds its
            # momentum 0.9 as a float32 (0.899999976), hence 1e-6 here.
            assert_close(net.state_dict()[key].numpy(), reference.data().asnumpy(), key, rtol=1e-6)
    trainer.step(len(x))
    optimizer.step()
    for key, param in state.items():
        # MXNet's Adam kernel takes its betas as float32: 1 - beta2 is then 0.000999988,
        # 1.2e-5 off, which moves a first step by 6e-6 of itself.
        assert_close(
            param.detach().numpy(),
            gluon_params[names[key]].data().asnumpy(),
            f'{key} after the update',
            rtol=1e-5,
        )


def test_v2_input_batchnorm_keeps_its_statistics_as_mxnet_does():
    """MXNet updates BN statistics in the backward pass, which v2's input BN (no scale,
    no shift, on the data) never has: it stays at mean 0, variance 1."""
    net = torch_model('cifar_resnet20_v2', 'none', seed=0)
    optimizer = make_optimizer(net, Recipe())
    x = torch.randn(8, 3, 32, 32) * 3 + 1
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), torch.arange(8) % 10).backward()
        optimizer.step()
    stem = net.features[0]
    assert torch.equal(stem.running_mean, torch.zeros(3))
    assert torch.equal(stem.running_var, torch.ones(3))
    assert not torch.equal(net.features[5].running_var, torch.ones(64))  # the last BN


def test_batchnorm_statistics_use_mxnet_momentum_and_the_biased_variance():
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(4, 2, 3, 3)).astype(np.float32)
    reference = gluon.nn.BatchNorm(in_channels=2)
    reference.initialize()
    data = mx.nd.array(x)
    data.attach_grad()
    with autograd.record():
        out = reference(data)
    out.backward()
    from models.pytorch import MXNetBatchNorm

    bn = MXNetBatchNorm(2)
    bn(torch.from_numpy(x))
    assert_close(bn.running_mean.numpy(), reference.running_mean.data().asnumpy(), 'mean')
    assert_close(bn.running_var.numpy(), reference.running_var.data().asnumpy(), 'variance')
    assert_close(bn.running_var.numpy(), 0.9 + 0.1 * x.var(axis=(0, 2, 3)), 'biased variance')


# MXNet's nag_mom_update writes the weight in place and then reads it for the momentum's
# weight-decay term, which some of its compiled loops take before the write and some
# after (measured: small arrays after, large ones before), moving the momentum by
# lr * wd * (the step). Ours takes the weight before the update throughout: a
# difference of order lr^2 * wd, 3e-4 of the weights here.
NAG_RTOL = 1e-3


@pytest.mark.parametrize('optimizer', ['adam', 'sgd', 'nag'])
def test_optimizers_update_as_mxnet_does(optimizer):
    """Three steps with a learning-rate change between them, weight decay coupled into the
    gradient, and a parameter without decay (GCT's beta), against gluon.Trainer."""
    recipe = Recipe(optimizer=optimizer, lr=0.05, wd=0.01)
    rng = np.random.default_rng(0)
    net = torch_model('cifar_resnet8_v1', 'gct', seed=0)
    gluon_net = gluon_model('cifar_resnet8_v1', 'gct')
    gluon_net.initialize()
    gluon_net(mx.nd.zeros((1, 3, 32, 32)))
    load_gluon_parameters(net, gluon_net)
    options = {'learning_rate': recipe.lr, 'wd': recipe.wd}
    if optimizer != 'adam':
        options['momentum'] = recipe.momentum
    trainer = gluon.Trainer(gluon_net.collect_params(), optimizer, options, update_on_kvstore=False)
    ours = make_optimizer(net, recipe)
    gluon_params = gluon_net._collect_params_with_prefix()
    names = gluon_names(net)
    trained = dict(net.named_parameters())
    batch = 4
    for step, lr in enumerate((0.05, 0.05, 0.005)):
        trainer.set_learning_rate(lr)
        set_learning_rate(ours, lr)
        grads = {
            key: rng.normal(0, 1, size=param.shape).astype(np.float32)
            for key, param in trained.items()
        }
        for key, param in trained.items():
            param.grad = torch.from_numpy(grads[key] / batch)  # the mean loss's gradient
        with autograd.record():  # sum(w * G) has gradient G: the summed loss's
            total = mx.nd.add_n(
                *[
                    (gluon_params[names[key]].data() * mx.nd.array(grad)).sum()
                    for key, grad in grads.items()
                ]
            )
        total.backward()
        trainer.step(batch)
        ours.step()
        for key, param in trained.items():
            assert_close(
                param.detach().numpy(),
                gluon_params[names[key]].data().asnumpy(),
                f'{optimizer} step {step + 1}: {key}',
                rtol=NAG_RTOL if optimizer == 'nag' else RTOL,
            )


def _three_steps(recipe, monkeypatch=None, fused=True, old_checkpoint_after=None):
    """Parameters after three steps of our optimizer on fixed gradients (a learning-rate
    change before the third); optionally through a state dict whose step counts are plain
    numbers, as checkpoints of earlier versions hold them."""
    import bench.trial.pytorch.optim as optim

    net = torch_model('cifar_resnet8_v1', 'gct', seed=0)
    optimizer = make_optimizer(net, recipe)
    rng = np.random.default_rng(1)
    devices = optim.FUSED_ADAM_DEVICES
    try:
        if not fused:
            optim.FUSED_ADAM_DEVICES = ()
        for step, lr in enumerate((0.05, 0.05, 0.005)):
            if step == old_checkpoint_after:
                saved = optimizer.state_dict()
                for state in saved['state'].values():
                    state['step'] = int(state['step'])
                optimizer = make_optimizer(net, recipe)
                optimizer.load_state_dict(saved)
            set_learning_rate(optimizer, lr)
            for param in net.parameters():
                param.grad = torch.from_numpy(rng.normal(0, 1, size=param.shape).astype(np.float32))
            optimizer.step()
    finally:
        optim.FUSED_ADAM_DEVICES = devices
    return {name: p.detach().clone() for name, p in net.named_parameters()}


def test_the_fused_adam_kernel_computes_mxnets_update():
    """PyTorch's fused Adam with epsilon scaled by 1/sqrt(1 - beta2^t) against the update
    written out with foreach operations (MXNet's formula, checked against gluon.Trainer
    above): the same to float32 rounding."""
    recipe = Recipe(optimizer='adam', lr=0.05, wd=0.01)
    fused, written_out = _three_steps(recipe), _three_steps(recipe, fused=False)
    for name in fused:
        assert_close(fused[name].numpy(), written_out[name].numpy(), name, rtol=1e-6)


@pytest.mark.parametrize('optimizer', ['adam', 'sgd'])
def test_optimizer_state_of_an_earlier_version_resumes_exactly(optimizer):
    recipe = Recipe(optimizer=optimizer, lr=0.05, wd=0.01)
    straight = _three_steps(recipe)
    resumed = _three_steps(recipe, old_checkpoint_after=2)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
