"""The same networks in PyTorch: SE, ECA, GCT and the CIFAR ResNets v1/v2, computing the
Gluon networks' functions with MXNet 1.9's semantics, so that a Gluon network's
weights loaded here (`convert`) give the same outputs, losses and gradients.

Knows nothing of training. Imports PyTorch; nothing outside the torch trial
backend and its tests imports this package.
"""

from .attention import ECA, GCT, SE, TORCH_ATTENTIONS
from .cifar_resnet import CIFARResNet, MXNetBatchNorm, get_model, initialize_like_mxnet
from .convert import gluon_names, load_gluon_parameters, torch_state_from_gluon

__all__ = [
    'CIFARResNet',
    'ECA',
    'GCT',
    'MXNetBatchNorm',
    'SE',
    'TORCH_ATTENTIONS',
    'get_model',
    'gluon_names',
    'initialize_like_mxnet',
    'load_gluon_parameters',
    'torch_state_from_gluon',
]
