"""Gluon weights into the PyTorch networks: each parameter and BN statistic by its
structural name (Gluon's `save_parameters` names, e.g. features.2.0.body.1.gamma)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from ..names import RETIRED_PARAMETERS
from .cifar_resnet import MXNetBatchNorm

if TYPE_CHECKING:
    from mxnet.gluon import Block

# Gluon's BatchNorm calls its scale and shift gamma and beta.
_BN_NAMES = {'weight': 'gamma', 'bias': 'beta'}

_Module = TypeVar('_Module', bound=torch.nn.Module)


def gluon_names(net: torch.nn.Module) -> dict[str, str]:
    """{PyTorch state_dict key: Gluon structural parameter name} of `net`."""
    bn_modules = {
        name for name, module in net.named_modules() if isinstance(module, MXNetBatchNorm)
    }
    names = {}
    for key in net.state_dict():
        module, _, leaf = key.rpartition('.')
        if leaf == 'num_batches_tracked':
            continue
        names[key] = f'{module}.{_BN_NAMES.get(leaf, leaf)}' if module in bn_modules else key
    return names


def torch_state_from_gluon(
    net: torch.nn.Module, gluon_params: Mapping[str, np.ndarray]
) -> dict[str, torch.Tensor]:
    """A state_dict for `net` from {Gluon structural name: array}; refuses a missing,
    unexpected or misshapen parameter, naming it."""
    names = gluon_names(net)
    own = net.state_dict()
    state, problems = {}, []
    for key, gluon_name in names.items():
        if gluon_name not in gluon_params:
            problems.append(f'{gluon_name} missing (for {key})')
            continue
        value = torch.from_numpy(np.ascontiguousarray(gluon_params[gluon_name], dtype=np.float32))
        if tuple(value.shape) != tuple(own[key].shape):
            problems.append(
                f'{gluon_name}: shape {tuple(value.shape)}, {key} needs {tuple(own[key].shape)}'
            )
        state[key] = value
    used = set(names.values())
    # Not converted: the fixed gamma (1) and beta (0) of v2's input BN, which has no
    # scale and no shift here, and what earlier versions' files hold that no network
    # has any more (RETIRED_PARAMETERS).
    stem_affine = {
        n
        for n in gluon_params
        if n.rpartition('.')[2] in ('gamma', 'beta')
        and n.rpartition('.')[0] + '.running_mean' in used
        and n not in used
    }
    extra = sorted(
        n
        for n in gluon_params
        if n not in used and n not in stem_affine and n.rpartition('.')[2] not in RETIRED_PARAMETERS
    )
    problems += [f'{n} has no counterpart in the PyTorch network' for n in extra]
    if problems:
        raise ValueError('the Gluon parameters do not fit this network: ' + '; '.join(problems))
    for key, value in own.items():
        state.setdefault(key, value)  # num_batches_tracked: unused, kept as is
    return state


def load_gluon_parameters(net: _Module, gluon_net: Block) -> _Module:
    """Load a built Gluon network's parameters and BN statistics into `net`; returns net."""
    params = {
        name: p.data().asnumpy() for name, p in gluon_net._collect_params_with_prefix().items()
    }
    net.load_state_dict(torch_state_from_gluon(net, params))
    return net
