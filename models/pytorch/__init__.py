"""The same networks in PyTorch: the attentions (models.registry names their classes)
and the CIFAR ResNets v1/v2, computing the Gluon networks' functions with MXNet 1.9's
semantics, so that a Gluon network's weights loaded here (`convert`) give the same
outputs, losses and gradients.

Knows nothing of training. Imports PyTorch; nothing outside the torch trial
backend and its tests imports this package.
"""

from .attention import ECA, GCT, SE
from .cifar_resnet import CIFARResNet, MXNetBatchNorm, get_model, initialize_like_mxnet
from .convert import gluon_names, load_gluon_parameters, torch_state_from_gluon

__all__ = [
    'CIFARResNet',
    'ECA',
    'GCT',
    'MXNetBatchNorm',
    'SE',
    'get_model',
    'gluon_names',
    'initialize_like_mxnet',
    'load_gluon_parameters',
    'torch_state_from_gluon',
]
