"""Our ResNets compute the original repository's functions, checked against numpy.

The oracle below is written from the original's `cifarresnet.py` in plain numpy
(convolution, inference-mode BatchNorm, ReLU) and shares no code with the
blocks. Its point is the v2 downsampling block: the original takes the 1x1
projection shortcut from the block's raw input, gluoncv from the pre-activated
input, and the table's v2 rows were trained with the original's.
"""

import mxnet as mx
import numpy as np
import pytest

from models import get_model
from models.cifar_resnet import BasicBlockV2
from models.gluoncv_compat import import_gluoncv

# gluoncv's own networks, the reference for the vanilla ones.
gluoncv_get_model = import_gluoncv('gluoncv.model_zoo').get_model
BN_EPS = 1e-5


def np_conv2d(x, weight, stride, padding):
    """NCHW x OIHW cross-correlation, zero padding, no bias."""
    x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    n, _, height, width = x.shape
    out_channels, in_channels, kh, kw = weight.shape
    out_h, out_w = (height - kh) // stride + 1, (width - kw) // stride + 1
    out = np.zeros((n, out_channels, out_h, out_w), dtype=np.float64)
    for i in range(kh):
        for j in range(kw):
            window = x[:, :, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            out += np.einsum('nchw,oc->nohw', window, weight[:, :, i, j])
    return out


def np_batchnorm(x, gamma, beta, mean, var):
    """Inference-mode BatchNorm over the channel axis."""
    shape = (1, -1, 1, 1)
    return gamma.reshape(shape) * (x - mean.reshape(shape)) / np.sqrt(
        var.reshape(shape) + BN_EPS
    ) + beta.reshape(shape)


def relu(x):
    return np.maximum(x, 0.0)


class Layers:
    """A network's parameters in the order its layers were created, taken layer by layer.

    Gluon keeps creation order, which follows the original's code: in a v2 block
    BN, conv, BN, conv, then the 1x1 projection when the block downsamples."""

    def __init__(self, block):
        self.arrays = [
            p.data().asnumpy().astype(np.float64) for p in block.collect_params().values()
        ]

    def batchnorm(self, x):
        gamma, beta, mean, var = self.arrays[:4]
        del self.arrays[:4]
        return np_batchnorm(x, gamma, beta, mean, var)

    def conv(self, x, stride, padding):
        weight = self.arrays.pop(0)
        assert weight.ndim == 4, 'the oracle walked the layers out of order'
        return np_conv2d(x, weight, stride, padding)

    def dense(self, x):
        weight, bias = self.arrays[:2]
        del self.arrays[:2]
        return x @ weight.T + bias


def original_v2_block(layers, x, stride, downsample):
    """The original's CIFARBasicBlockV2: BN-ReLU-conv-BN-ReLU-conv, plus the raw input
    or the 1x1 projection of the raw input."""
    residual = layers.conv(relu(layers.batchnorm(x)), stride, 1)
    residual = layers.conv(relu(layers.batchnorm(residual)), 1, 1)
    shortcut = layers.conv(x, stride, 0) if downsample else x
    return residual + shortcut


def original_v2_network(layers, x, blocks_per_stage):
    """The original's CIFARResNetV2 forward pass (inference mode)."""
    x = layers.batchnorm(x)  # scale=False, center=False: gamma 1 and beta 0 fixed
    x = layers.conv(x, 1, 1)
    in_channels = 16
    for stage, channels in enumerate((16, 32, 64)):
        for index in range(blocks_per_stage):
            first = index == 0
            x = original_v2_block(
                layers, x, 2 if first and stage else 1, downsample=first and channels != in_channels
            )
        in_channels = channels
    x = relu(layers.batchnorm(x))
    out = layers.dense(x.mean(axis=(2, 3)))
    assert not layers.arrays, 'parameters left over: the oracle missed a layer'
    return out


def _randomise_everything(block, seed):
    """Every parameter and BN statistic away from its start value, so no term vanishes."""
    rng = np.random.default_rng(seed)
    for name, param in block.collect_params().items():
        if name.endswith('running_var'):
            values = rng.uniform(0.5, 2.0, size=param.shape)
        elif name.endswith('gamma'):
            values = rng.uniform(0.5, 1.5, size=param.shape)
        else:
            values = rng.normal(0.0, 0.3, size=param.shape)
        param.set_data(mx.nd.array(values))


@pytest.mark.parametrize('hybridize', [False, True])
def test_downsampling_v2_block_takes_its_projection_from_the_raw_input(hybridize):
    block = BasicBlockV2(32, 2, downsample=True, in_channels=16, prefix='block_')
    block.initialize()
    x = np.random.default_rng(0).normal(size=(2, 16, 8, 8))
    block(mx.nd.array(x))
    _randomise_everything(block, seed=1)
    if hybridize:
        block.hybridize(static_alloc=True, static_shape=True)
    ours = block(mx.nd.array(x)).asnumpy()
    expected = original_v2_block(Layers(block), x, stride=2, downsample=True)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5 * scale)
    # The gluoncv variant (projection of the pre-activated input) is far from it,
    # so the check above could not pass by accident.
    layers = Layers(block)
    preactivated = relu(layers.batchnorm(x))
    projection = layers.arrays[-1]
    gluoncv_style = (
        expected - np_conv2d(x, projection, 2, 0) + np_conv2d(preactivated, projection, 2, 0)
    )
    assert np.abs(gluoncv_style - expected).max() > 0.1 * scale


def test_whole_v2_network_is_the_original_function():
    net = get_model('cifar_resnet14_v2')
    net.initialize(mx.init.Xavier())
    x = np.random.default_rng(2).normal(size=(2, 3, 32, 32))
    net(mx.nd.array(x))
    _randomise_everything(net, seed=3)
    for name, param in net.collect_params().items():
        if name.endswith(('_weight',)) and param.shape[0] != 10:
            # Keep activations of order one through the depth of the network.
            fan_in = int(np.prod(param.shape[1:]))
            param.set_data(param.data() / np.sqrt(fan_in * 0.09))
    ours = net(mx.nd.array(x)).asnumpy()
    expected = original_v2_network(Layers(net), x, blocks_per_stage=2)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize('model', ['cifar_resnet20_v1', 'cifar_resnet20_v2', 'cifar_resnet56_v2'])
def test_parameter_layout_is_the_original_one(model):
    """Names (below the network's prefix) and shapes in order equal gluoncv's, whose
    layout the original repository shares, so saved parameters load either way."""
    ours = get_model(model)
    theirs = gluoncv_get_model(model, classes=10)
    for net in (ours, theirs):
        net.initialize()
        net(mx.nd.zeros((1, 3, 32, 32)))
    layout = [
        [(name[len(net.prefix) :], p.shape) for name, p in net.collect_params().items()]
        for net in (ours, theirs)
    ]
    assert layout[0] == layout[1]


def test_the_v2_stem_batchnorm_keeps_its_initial_statistics_under_mxnet():
    """MXNet 1.9 updates a BatchNorm's running statistics in its backward pass, and the
    v2 stem's BN (no scale, no shift, on the input image) has none: its statistics stay
    at mean 0 and variance 1, so it evaluates as the identity. The original's v2 rows
    were trained so; the demo data are scaled to CIFAR-10's statistics because of it,
    and a port to another framework has to reproduce it."""
    from mxnet import autograd

    net = get_model('cifar_resnet8_v2')
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.random.normal(2.0, 3.0, shape=(8, 3, 32, 32))
    for _ in range(2):
        with autograd.record():
            loss = net(x).sum()
        loss.backward()
    params = net.collect_params()
    stem_mean = params[f'{net.prefix}batchnorm0_running_mean'].data().asnumpy()
    stem_var = params[f'{net.prefix}batchnorm0_running_var'].data().asnumpy()
    assert (stem_mean == 0).all() and (stem_var == 1).all()
    block_mean = params[f'{net.prefix}stage1_batchnorm0_running_mean'].data().asnumpy()
    assert np.abs(block_mean).max() > 0  # a BN inside the network does update
